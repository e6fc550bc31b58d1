"""ModernBERT in the one core: parity with transformers both ways, unpadded == padded, the commands.

Tiny random transformers ``ModernBertModel`` and its heads (a local window of 4 tokens, smaller than the
test rows, and every 2nd or 3rd layer global, so local and global layers both matter; SDPA and eager
attention) load in bertcli with the same last hidden states and logits on a padded mixed-length batch;
bertcli's checkpoints load in transformers' ModernBert* classes with the same outputs; unpadded execution
(packed tokens, per-sequence loop or block-diagonal mask) equals the padded path. A tiny ModernBERT
fine-tuned by bertcli reloads in transformers with the probabilities ``bertcli predict`` prints, and
``pretrain --arch modernbert`` trains one from scratch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertcli.checkpoint import load_checkpoint, load_into, save_checkpoint
from bertcli.config import BertConfig
from bertcli.errors import ConfigError
from bertcli.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertcli.model import BertModel

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
             max_position_embeddings=64, local_attention=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
             cls_token_id=1, sep_token_id=2)
KINDS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]
LENGTHS = [12, 5, 9, 3, 1]


def _hf_config(kind: str = "Model", every: int = 2, attn: str = "sdpa", **extra):
    labels = 3 if kind.endswith("Classification") else 2
    return transformers.ModernBertConfig(**{**SHAPE, **extra}, global_attn_every_n_layers=every, num_labels=labels,
                                         attn_implementation=attn)


def _ours(config: BertConfig, kind: str) -> torch.nn.Module:
    if kind == "Model":
        return BertModel(config, with_pooler=False)
    if kind == "ForMaskedLM":
        return BertForPreTraining(config, nsp=False)
    if kind == "ForSequenceClassification":
        return BertForSequenceClassification(config, 3)
    if kind == "ForTokenClassification":
        return BertForTokenClassification(config, 3)
    return BertForQuestionAnswering(config)


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _batch(lengths=LENGTHS, vocab: int = 99):
    g = torch.Generator().manual_seed(0)
    T = max(lengths)
    ids = torch.zeros((len(lengths), T), dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[r, :n] = 1
    return ids, mask


def _hf_out(model, kind, ids, mask):
    out = model(input_ids=ids, attention_mask=mask)
    if kind == "Model":
        return [out.last_hidden_state]
    if kind == "ForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def _our_out(model, kind, ids, mask):
    out = model(ids, mask)
    if kind == "ForMaskedLM":
        return [out[0]]
    return list(out) if isinstance(out, tuple) else [out]


def _diff(a, b, mask) -> float:
    d = (a - b).abs()
    if d.dim() >= 2 and d.shape[:2] == mask.shape:
        d = d[mask.bool()]
    return d.max().item()


def _encoder(model):
    return model if isinstance(model, BertModel) else model.bert


def _all_paths(model, kind, ids, mask):
    """Outputs of the padded path and of both unpadded modes."""
    enc = _encoder(model)
    outs = {}
    for name, unpad, mode in (("padded", False, "auto"), ("loop", True, "loop"), ("block", True, "block")):
        enc.unpad, enc.packed_attention = unpad, mode
        with torch.no_grad():
            outs[name] = _our_out(model, kind, ids, mask)
    enc.unpad, enc.packed_attention = True, "auto"
    return outs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("every", "attn", "pooling"), [(2, "sdpa", "cls"), (3, "eager", "mean")])
def test_transformers_to_bertcli(tmp_path, kind, every, attn, pooling):
    torch.manual_seed(0)
    ref = getattr(transformers, "ModernBert" + kind)(_hf_config(kind, every, attn, classifier_pooling=pooling)).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.family == "modernbert" and ckpt.config.global_attn_every_n_layers == every
    assert ckpt.config.classifier_pooling == pooling and ckpt.config.local_attention == 4
    model = _ours(ckpt.config, kind)
    state = ckpt.state if kind != "Model" else {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}
    assert load_into(model, state, str(tmp_path)) == []
    model.eval()
    ids, mask = _batch()
    with torch.no_grad():
        want = _hf_out(ref, kind, ids, mask)
    outs = _all_paths(model, kind, ids, mask)
    for name, got in outs.items():
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            assert _diff(a, b, mask) <= 1e-5, name
    for a, b in zip(outs["loop"], outs["padded"], strict=True):  # unpadded == padded
        assert _diff(a, b, mask) <= 1e-5


@pytest.mark.parametrize("kind", KINDS[1:])
def test_bertcli_to_transformers(tmp_path, kind):
    config = BertConfig.from_hf(_hf_config(every=3, classifier_pooling="mean").to_dict())
    torch.manual_seed(0)
    model = _ours(config, kind).eval()
    _perturb(model)
    task = {"ForTokenClassification": "token-classification", "ForSequenceClassification": "classification",
            "ForQuestionAnswering": "question-answering"}.get(kind)
    save_checkpoint(tmp_path, model.state_dict(), config, task=task,
                    hf_extra={"num_labels": 3} if "Classification" in kind else None)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "modernbert" and written["architectures"] == ["ModernBert" + kind]
    ref, info = getattr(transformers, "ModernBert" + kind).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert ref.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    ref.eval()
    ids, mask = _batch()
    with torch.no_grad():
        want = _hf_out(ref, kind, ids, mask)
        got = _our_out(model, kind, ids, mask)
    for a, b in zip(got, want, strict=True):
        assert _diff(a, b, mask) <= 1e-5
    # and back: what bertcli wrote reads in bertcli as the same model
    again = _ours(load_checkpoint(tmp_path).config, kind).eval()
    assert load_into(again, load_checkpoint(tmp_path).state, str(tmp_path)) == []
    with torch.no_grad():
        for a, b in zip(_our_out(again, kind, ids, mask), got, strict=True):
            assert _diff(a, b, mask) == 0.0


@pytest.mark.parametrize("group", [512, 16])
def test_long_rows_local_and_global_layers_and_no_padding(tmp_path, monkeypatch, group):
    """Rows much longer than the window (window 8 of 40 tokens) and a batch without padding; with groups
    of 16 tokens, block mode groups the short rows and runs the long ones alone (windowed)."""
    from bertcli.model import Packed

    monkeypatch.setattr(Packed, "GROUP", group)
    torch.manual_seed(0)
    ref = transformers.ModernBertModel(_hf_config(every=3, local_attention=8)).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    model = BertModel(ckpt.config, with_pooler=False)
    load_into(model, {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}, str(tmp_path))
    model.eval()
    for lengths in ([40, 17, 33, 2, 7, 9], [40, 40]):
        ids, mask = _batch(lengths)
        with torch.no_grad():
            want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        for name, (got,) in _all_paths(model, "Model", ids, mask).items():
            assert _diff(got, want, mask) <= 1e-5, (lengths, name)
    # a local window that matters: the global-only model differs
    wide = BertModel(BertConfig.from_hf({**ckpt.hf_config, "local_attention": 128}), with_pooler=False).eval()
    wide.load_state_dict(model.state_dict())
    ids, mask = _batch([40, 17])
    with torch.no_grad():
        assert _diff(wide(ids, mask), model(ids, mask), mask) > 1e-3


@pytest.mark.parametrize(("L", "reach"), [(40, 4), (41, 4), (17, 4), (300, 64), (9, 2)])
def test_windowed_local_attention_equals_the_band_mask(L, reach):
    import torch.nn.functional as F

    from bertcli.model import band, local_attention

    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(2, L, 8, generator=g) for _ in range(3))
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=band(torch.arange(L), reach))
    assert (local_attention(q, k, v, reach) - want).abs().max().item() <= 1e-5


def test_config_round_trip_and_refusals():
    hf = _hf_config(every=3).to_dict()
    config = BertConfig.from_hf(hf)
    assert config.rope_theta == 160000.0 and config.local_rope_theta == 10000.0
    assert [config.layer_window(i) for i in range(3)] == [None, 2, 2]  # local_attention 4: |i - j| <= 2
    assert BertConfig.from_hf(config.to_hf()) == config
    legacy = {k: v for k, v in hf.items() if k not in ("layer_types", "rope_parameters")}  # a 4.x config.json
    legacy.update(global_attn_every_n_layers=3, global_rope_theta=5000.0, local_rope_theta=100.0)
    old = BertConfig.from_hf(legacy)
    assert (old.global_attn_every_n_layers, old.rope_theta, old.local_rope_theta) == (3, 5000.0, 100.0)
    with pytest.raises(ConfigError, match="layer_types"):
        BertConfig.from_hf({**hf, "layer_types": ["sliding_attention", "full_attention", "full_attention"]})
    with pytest.raises(ConfigError, match="rope_type 'linear'"):
        BertConfig.from_hf({**hf, "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 2.0}}})
    assert BertConfig.from_hf(hf).max_length == 64


def test_sentence_transformers_directory(tmp_path, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    from bertcli.embed import embed, load
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(minilm_dir)
    config = BertConfig.from_hf({**_hf_config().to_dict(), "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id})
    torch.manual_seed(0)
    model = BertModel(config, with_pooler=False)
    _perturb(model)
    save_checkpoint(tmp_path, {f"bert.{k}": v for k, v in model.state_dict().items()}, config, tok,
                    task="sentence-embedding", sentence={"pooling": "mean", "normalize": True, "max_seq_length": 32})
    texts = ["a lovely film", "the quick brown fox jumps over the lazy dog again and again", "hi"]
    theirs = st.SentenceTransformer(str(tmp_path), device="cpu").encode(texts, convert_to_tensor=True)
    ours = torch.as_tensor(embed(texts, load(str(tmp_path), device="cpu", precision="fp32")).vectors)
    assert (ours - theirs).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- the commands
def _make_model(out: Path, tokenizer_dir: Path) -> Path:
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig.for_family("modernbert", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, hidden_size=32,
                                num_layers=3, num_heads=2, intermediate_size=48, local_attention=8,
                                global_attn_every_n_layers=2, max_positions=2048)
    torch.manual_seed(0)
    return save_checkpoint(out, BertForPreTraining(cfg, nsp=False).state_dict(), cfg, tok, task="pretraining")


@pytest.fixture(scope="module")
def sst2_rows(shared_data, tmp_path_factory) -> Path:
    lines = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("sst2") / "train.tsv"
    path.write_text("\n".join(lines[:41]) + "\n", encoding="utf-8")
    return path


def test_finetune_predict_reload_in_transformers(tmp_path, minilm_dir, sst2_rows, cli):
    from bertcli.tokenizer import Tokenizer, pad_batch

    model = _make_model(tmp_path / "model", minilm_dir)
    info = json.loads(cli("info", "--model", model, "--json").stdout)
    assert info["family"] == "modernbert" and info["architecture"] == "ModernBertForMaskedLM"
    result = cli("fill-mask", "--model", model, "--json", "a [MASK] film")
    assert result.exit_code == 0, result.output
    long_text = " ".join(["a lovely film with a long plot"] * 120)  # ~840 tokens, past BERT's 512
    result = cli("embed", "--model", model, "--json", "--max-length", "1024", long_text)
    assert result.exit_code == 0, result.output
    result = cli("similarity", "--model", model, "--json", "--max-length", "1024", long_text, "a great movie")
    assert result.exit_code == 0, result.output
    result = cli("embed", "--model", model, "--json", "--max-length", "4096", "hi")
    assert result.exit_code != 0 and "2048" in result.output  # the model's max_position_embeddings

    out = tmp_path / "run"
    result = cli("finetune", "--model", model, "--train", sst2_rows, "--dev", sst2_rows, "--text-column",
                 "sentence", "--label-column", "label", "--out", out, "--epochs", "1", "--batch-size", "8",
                 "--lr", "1e-3", "--max-length", "1024", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "modernbert" and cfg["architectures"] == ["ModernBertForSequenceClassification"]
    rows_in = tmp_path / "predict.tsv"  # the training rows and one long text (~840 tokens)
    rows_in.write_text(sst2_rows.read_text(encoding="utf-8") + f"{long_text}\t1\n", encoding="utf-8")
    result = cli("predict", "--model", out, rows_in, "--json", "--quiet", "--device", "cpu", "--precision", "fp32",
                 "--max-length", "2048")
    assert result.exit_code == 0, result.output
    result_too_long = cli("predict", "--model", out, rows_in, "--json", "--max-length", "4096")
    assert result_too_long.exit_code == 1 and "2048" in result_too_long.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    ours = torch.tensor([[row["prob_0"], row["prob_1"]] for row in rows])
    tok = Tokenizer.load(out)
    enc = tok.encode_batch([row["sentence"] for row in rows], max_length=2048)
    assert len(enc[-1].ids) > 512
    ids, mask, _ = pad_batch([e.ids for e in enc], [e.type_ids for e in enc], tok.pad_id)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "ModernBertForSequenceClassification"
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits.softmax(-1)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_token_classification_and_qa(tmp_path, minilm_dir, cli):
    from bertcli.tasks.question_answering import load_qa_model
    from bertcli.tasks.token_classification import load_token_model
    from bertcli.tokenizer import Tokenizer, pad_batch

    model = _make_model(tmp_path / "model", minilm_dir)
    common = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32",
              "--quiet"]
    conll = tmp_path / "train.conll"
    conll.write_text("".join(f"yesterday\tO\n{w}\tB-person\nflew\tO\nto\tO\nrome\tB-location\n.\tO\n\n"
                             for w in ["anna", "boris", "clara"] * 4), encoding="utf-8")
    ner = tmp_path / "ner"
    result = cli("finetune", "--task", "token-classification", "--model", model, "--train", conll, "--dev", conll,
                 "--out", ner, *common)
    assert result.exit_code == 0, result.output
    squad = tmp_path / "train.json"
    ctx = "The weather was mild. Anna moved to Paris in spring."
    qas = [{"id": f"q{i}", "question": "Where did anna move?",
            "answers": [{"text": "Paris", "answer_start": ctx.index("Paris")}]} for i in range(8)]
    squad.write_text(json.dumps({"version": "1.1", "data": [{"title": "s", "paragraphs": [{"context": ctx,
                                                                                           "qas": qas}]}]}))
    qa = tmp_path / "qa"
    result = cli("finetune", "--task", "question-answering", "--model", model, "--train", squad, "--dev", squad,
                 "--out", qa, "--max-length", "48", "--doc-stride", "8", "--max-query-length", "12", *common)
    assert result.exit_code == 0, result.output
    tok = Tokenizer.load(model)
    enc = tok.encode_batch(["anna flew to rome .", "where did boris move ?"], max_length=32)
    ids, mask, _ = pad_batch([e.ids for e in enc], [e.type_ids for e in enc], tok.pad_id)
    hf = transformers.AutoModelForTokenClassification.from_pretrained(ner).eval()
    assert type(hf).__name__ == "ModernBertForTokenClassification"
    ours = load_token_model(ner).eval()
    with torch.no_grad():
        assert (ours(ids, mask) - hf(input_ids=ids, attention_mask=mask).logits)[mask.bool()].abs().max() <= 1e-5
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(qa).eval()
    assert type(hf).__name__ == "ModernBertForQuestionAnswering"
    ours = load_qa_model(qa).eval()
    with torch.no_grad():
        start, end = ours(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask)
    assert (start - theirs.start_logits)[mask.bool()].abs().max().item() <= 1e-5
    assert (end - theirs.end_logits)[mask.bool()].abs().max().item() <= 1e-5
    result = cli("answer", "--model", qa, "--question", "Where did anna move?", "--context", ctx, "--json",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output


def test_pretrain_arch_modernbert(tmp_path):
    from bertcli.tasks.pretraining import PretrainConfig, pretrain
    from bertcli.vocab import train_vocab

    corpus = Path(__file__).resolve().parents[1] / "examples" / "corpus"
    vocab = tmp_path / "vocab"
    train_vocab([corpus], vocab, vocab_size=600, held_out=0.0)
    out = tmp_path / "run"
    pretrain([str(corpus)], str(out), tokenizer=str(vocab), arch="modernbert",
             config=PretrainConfig(model={"hidden_size": 32, "num_layers": 3, "num_heads": 2,
                                          "intermediate_size": 48, "local_attention": 8}),
             data_overrides={"max_seq_length": 32, "eval_fraction": 0.1},
             train_overrides={"max_steps": 16, "batch_size": 8, "lr": 2e-3, "warmup": 0.1, "eval_every": 8,
                              "log_every": 1, "device": "cpu", "precision": "fp32", "quiet": True})
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "modernbert" and cfg["architectures"] == ["ModernBertForMaskedLM"]
    assert cfg["bertcli"]["objective"] == "mlm"
    import yaml

    assert yaml.safe_load((out / "run.yaml").read_text())["masking"]["mask_prob"] == 0.3  # ModernBERT's recipe
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    held = [r["eval"]["mlm_loss"] if "eval" in r else r["eval_mlm_loss"] for r in evals
            if "eval" in r or "eval_mlm_loss" in r]
    assert len(held) >= 2 and held[-1] < held[0], held

    ckpt = load_checkpoint(out)
    ours = BertForPreTraining(ckpt.config, nsp=False)
    load_into(ours, ckpt.state, str(out))
    ref, info = transformers.ModernBertForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"], info
    ids, mask = _batch([8, 4], vocab=ckpt.config.vocab_size)
    with torch.no_grad():
        got, _ = ours.eval()(ids, mask)
        want = ref.eval()(input_ids=ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() <= 1e-5


def test_arch_preset_shape():
    from bertcli.config import arch_values

    small = BertConfig.from_dict({"arch": "modernbert", "vocab_size": 100})
    assert (small.num_layers, small.hidden_size, small.num_heads, small.intermediate_size) == (10, 384, 6, 576)
    assert small.max_positions == 8192 and small.local_attention == 128 and small.global_attn_every_n_layers == 3
    tiny = arch_values("modernbert", "tiny", {})
    assert (tiny["num_layers"], tiny["hidden_size"], tiny["intermediate_size"]) == (2, 128, 192)
