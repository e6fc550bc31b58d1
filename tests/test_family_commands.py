"""Every family through the commands: info, embed, similarity, fill-mask, finetune, predict.

A tiny random model of each family (made by bertcli with a WordPiece tokenizer: the model side only
needs token ids) is fine-tuned on a few ../shared/data/sst2 rows through the CLI, and the result
reloads in transformers' AutoModelForSequenceClassification with the probabilities ``bertcli predict``
prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")

FAMILIES = ["roberta", "xlm-roberta", "distilbert", "albert", "electra"]
CLASSES = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "distilbert": "DistilBert", "albert": "Albert",
           "electra": "Electra"}
SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=130)
EXTRA = {"albert": dict(embedding_size=16, num_layers=3, num_hidden_groups=1),
         "electra": dict(embedding_size=16), "distilbert": dict(type_vocab_size=0),
         "roberta": dict(type_vocab_size=1), "xlm-roberta": dict(type_vocab_size=1)}


def make_family_model(out: Path, tokenizer_dir: Path, family: str) -> Path:
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import BertForPreTraining
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig.for_family(family, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                **{**SHAPE, **EXTRA[family]})
    torch.manual_seed(0)
    model = BertForPreTraining(cfg, nsp=family == "albert")  # ALBERT pretrains with SOP on the pooler
    return save_checkpoint(out, model.state_dict(), cfg, tok, task="pretraining")


@pytest.fixture(scope="module")
def sst2_rows(shared_data, tmp_path_factory) -> Path:
    lines = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("sst2") / "train.tsv"
    path.write_text("\n".join(lines[:41]) + "\n", encoding="utf-8")  # header + 40 rows
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_family_through_the_commands(family, tmp_path, minilm_dir, sst2_rows, cli):
    import torch

    model = make_family_model(tmp_path / "model", minilm_dir, family)
    info = json.loads(cli("info", "--model", model, "--json").stdout)
    assert info["family"] == family
    assert info["architecture"] == CLASSES[family] + ("ForPreTraining" if family == "albert" else "ForMaskedLM")
    assert cli("embed", "--model", model, "--json", "a lovely film").exit_code == 0
    assert cli("similarity", "--model", model, "--json", "a lovely film", "a great movie").exit_code == 0
    result = cli("fill-mask", "--model", model, "--json", "a [MASK] film")
    assert result.exit_code == 0, result.output

    out = tmp_path / "run"
    result = cli("finetune", "--model", model, "--train", sst2_rows, "--dev", sst2_rows, "--text-column",
                 "sentence", "--label-column", "label", "--out", out, "--epochs", "1", "--batch-size", "8",
                 "--lr", "1e-3", "--max-length", "64", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == family
    assert cfg["architectures"] == [CLASSES[family] + "ForSequenceClassification"]

    result = cli("predict", "--model", out, sst2_rows, "--json", "--quiet", "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    ours = torch.tensor([[row["prob_0"], row["prob_1"]] for row in rows])

    from bertcli.tokenizer import Tokenizer, pad_batch

    tok = Tokenizer.load(out)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == CLASSES[family] + "ForSequenceClassification"
    texts = [row["sentence"] for row in rows]
    enc = tok.encode_batch(texts, max_length=64)
    ids, mask, types = pad_batch([e.ids for e in enc], [e.type_ids for e in enc], tok.pad_id)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if hf.config.model_type in ("albert", "electra"):
        kwargs["token_type_ids"] = types
    with torch.no_grad():
        theirs = hf(**kwargs).logits.softmax(-1)
    assert (ours - theirs).abs().max().item() <= 1e-5


def _conll(path: Path, n: int) -> Path:
    people, places = ["anna", "boris", "clara"], ["paris", "rome", "oslo"]
    lines = []
    for i in range(n):
        who, where = people[i % 3], places[(i // 3) % 3]
        lines += [f"yesterday\tO\n{who}\tB-person\nflew\tO\nto\tO\n{where}\tB-location\n.\tO\n\n"]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _squad(path: Path, n: int) -> Path:
    names, cities = ["anna", "boris", "clara", "david"], ["paris", "london", "berlin", "rome"]
    paragraphs = []
    for i in range(n):
        who, where = names[i % 4], cities[(i // 4) % 4]
        context = f"The weather was mild. {who.capitalize()} moved to {where.capitalize()} in spring."
        start = context.index(where.capitalize())
        paragraphs.append({"context": context, "qas": [{"id": f"q{i}", "question": f"Where did {who} move?",
                                                        "answers": [{"text": where.capitalize(), "answer_start": start}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "syn", "paragraphs": paragraphs}]}))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_family_token_classification_qa_and_sentence_embeddings(family, tmp_path, minilm_dir, cli):
    """finetune's other tasks on each family; transformers / sentence-transformers load the results."""
    import torch

    from bertcli.tokenizer import Tokenizer, pad_batch

    model = make_family_model(tmp_path / "model", minilm_dir, family)
    tok = Tokenizer.load(model)
    common = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32",
              "--quiet"]
    texts = ["anna flew to rome .", "where did boris move ?"]
    enc = tok.encode_batch(texts, max_length=32)
    ids, mask, types = pad_batch([e.ids for e in enc], [e.type_ids for e in enc], tok.pad_id)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if family in ("albert", "electra"):
        kwargs["token_type_ids"] = types

    ner = tmp_path / "ner"
    conll = _conll(tmp_path / "train.conll", 12)
    result = cli("finetune", "--task", "token-classification", "--model", model, "--train", conll, "--dev", conll,
                 "--out", ner, *common)
    assert result.exit_code == 0, result.output
    assert json.loads((ner / "config.json").read_text())["architectures"] == [CLASSES[family] + "ForTokenClassification"]
    from bertcli.tasks.token_classification import load_token_model

    ours = load_token_model(ner).eval()
    hf = transformers.AutoModelForTokenClassification.from_pretrained(ner).eval()
    with torch.no_grad():
        diff = (ours(ids, mask, types if family in ("albert", "electra") else None) - hf(**kwargs).logits)
    assert diff[mask.bool()].abs().max().item() <= 1e-5

    qa = tmp_path / "qa"
    squad = _squad(tmp_path / "train.json", 16)
    result = cli("finetune", "--task", "question-answering", "--model", model, "--train", squad, "--dev", squad,
                 "--out", qa, "--max-length", "48", "--doc-stride", "8", "--max-query-length", "12", *common)
    assert result.exit_code == 0, result.output
    result = cli("answer", "--model", qa, "--question", "Where did anna move?", "--context",
                 "Anna moved to Paris in spring.", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(qa).eval()
    assert type(hf).__name__ == CLASSES[family] + "ForQuestionAnswering"
    from bertcli.tasks.question_answering import load_qa_model

    ours = load_qa_model(qa).eval()
    with torch.no_grad():
        start, end = ours(ids, mask, types if family in ("albert", "electra") else None)
        theirs = hf(**kwargs)
    assert (start - theirs.start_logits)[mask.bool()].abs().max().item() <= 1e-5
    assert (end - theirs.end_logits)[mask.bool()].abs().max().item() <= 1e-5

    sbert = tmp_path / "sbert"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("a,b,score\n" + "".join(f"a lovely film {i},a great movie {i},0.9\n"
                                             f"a lovely film {i},awful acting {i},0.1\n" for i in range(8)))
    result = cli("finetune", "--task", "sentence-embedding", "--loss", "cosine", "--model", model, "--train", pairs,
                 "--dev", pairs, "--text-column", "a", "--text-pair-column", "b", "--label-column", "score",
                 "--out", sbert, *common)
    assert result.exit_code == 0, result.output
    st = pytest.importorskip("sentence_transformers")
    from bertcli.embed import embed, load

    want = st.SentenceTransformer(str(sbert), device="cpu").encode(texts, convert_to_tensor=True)
    got = torch.as_tensor(embed(texts, load(str(sbert), device="cpu", precision="fp32")).vectors)
    assert (got - want).abs().max().item() <= 1e-5
    assert cli("similarity", "--model", sbert, "--json", *texts).exit_code == 0
