"""pretrain --arch: each family from scratch (tiny, CPU), ALBERT's mlm+sop, the result in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bertcli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "corpus"
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
ARCHS = {  # arch -> (extra model fields, default objective, transformers class)
    "roberta": ({}, "mlm", "RobertaForMaskedLM"),
    "albert": ({"embedding_size": 16, "num_layers": 3}, "mlm+sop", "AlbertForPreTraining"),
    "electra": ({"embedding_size": 16}, "mlm", "ElectraForMaskedLM"),
    "distilbert": ({}, "mlm", "DistilBertForMaskedLM"),
}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    from bertcli.vocab import train_vocab

    out = tmp_path_factory.mktemp("vocab") / "vocab"
    train_vocab([CORPUS], out, vocab_size=600, held_out=0.0)
    return out


def _pretrain(vocab, out, arch, **data):
    from bertcli.tasks.pretraining import PretrainConfig, pretrain

    extra = ARCHS[arch][0]
    return pretrain([str(CORPUS)], str(out), tokenizer=str(vocab), arch=arch,
                    config=PretrainConfig(model={**TINY, **extra}),
                    data_overrides={"max_seq_length": 32, "eval_fraction": 0.1, **data},
                    train_overrides={"max_steps": 24, "batch_size": 8, "lr": 2e-3, "warmup": 0.1, "eval_every": 8,
                                     "log_every": 1, "device": "cpu", "precision": "fp32", "quiet": True})


def test_sop_examples_are_ordered_or_swapped_halves(vocab, tmp_path):
    from bertcli.data import corpus as C
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(vocab)
    corpus = C.load_corpus([CORPUS], tok, tmp_path)
    docs = np.arange(corpus.num_docs)
    examples = C.nsp_examples(corpus, docs, 48, 0.0, 0, tok.cls_id, tok.sep_id, sop=True)
    labels = [e.nsp for e in examples]
    assert 0.35 < np.mean(labels) < 0.65
    # every example is two runs of consecutive segments of one document, in order (0) or swapped (1)
    text = {tuple(int(t) for s in corpus.document(d) for t in s) for d in docs}
    for e in examples[:40]:
        ids = [int(t) for t in e.ids]
        sep = ids.index(tok.sep_id)
        a, b = ids[1:sep], ids[sep + 1:-1]
        first, second = (a, b) if e.nsp == 0 else (b, a)
        joined = tuple(first + second)
        assert any(_contains(doc, joined) for doc in text if len(doc) >= len(joined)) or \
            _truncated(first, second, text)


def _contains(doc, part):
    n = len(part)
    return any(doc[i:i + n] == part for i in range(len(doc) - n + 1))


def _truncated(first, second, docs):
    """A truncated pair (tokens dropped at either end of A or B) still has A before B in one document."""
    for doc in docs:
        s = "," + ",".join(map(str, doc)) + ","
        fa, sb = "," + ",".join(map(str, first)) + ",", "," + ",".join(map(str, second)) + ","
        if fa in s and sb in s and s.index(fa) < s.index(sb):
            return True
    return False


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pretrain_arch_lowers_heldout_loss_and_loads_in_transformers(vocab, tmp_path, arch):
    summary = _pretrain(vocab, tmp_path / "run", arch)
    out = tmp_path / "run"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["architectures"] == [ARCHS[arch][2]]
    assert cfg["bertcli"]["objective"] == ARCHS[arch][1]
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    held = [r["eval"]["mlm_loss"] if "eval" in r else r["eval_mlm_loss"] for r in evals
            if "eval" in r or "eval_mlm_loss" in r]
    assert len(held) >= 2 and held[-1] < held[0], (held, summary)
    if arch == "albert":
        assert cfg["embedding_size"] == 16 and cfg["num_hidden_groups"] == 1

    from bertcli.checkpoint import load_checkpoint, load_into
    from bertcli.heads import BertForPreTraining

    ckpt = load_checkpoint(out)
    ours = BertForPreTraining(ckpt.config, nsp=arch == "albert")
    load_into(ours, ckpt.state, str(out))
    ours.eval()
    ref, info = getattr(transformers, ARCHS[arch][2]).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"], info
    ids = torch.tensor([[2, 40, 41, 42, 3, 50, 51, 3], [2, 60, 61, 3, 0, 0, 0, 0]])
    ids[ids == 0] = ckpt.config.pad_token_id
    mask = (torch.arange(8) < torch.tensor([[8], [4]])).long()
    with torch.no_grad():
        mlm, sop = ours(ids, mask)
        theirs = ref.eval()(input_ids=ids, attention_mask=mask)
    got = theirs.prediction_logits if arch == "albert" else theirs.logits
    assert (mlm - got)[mask.bool()].abs().max().item() <= 1e-5
    if arch == "albert":
        assert (sop - theirs.sop_logits).abs().max().item() <= 1e-5


def test_pair_objective_needs_a_pair_head(vocab, tmp_path):
    with pytest.raises(ConfigError, match="--objective mlm\\+nsp needs a sentence-pair head, which roberta has not"):
        _pretrain(vocab, tmp_path / "run", "roberta", objective="mlm+nsp")


def test_arch_through_the_cli(vocab, tmp_path, cli):
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"arch": "albert", **TINY, "embedding_size": 16}}))
    result = cli("pretrain", CORPUS, "--tokenizer", vocab, "--config", cfg, "--out", tmp_path / "run",
                 "--max-seq-length", "32", "--max-steps", "2", "--batch-size", "4", "--device", "cpu",
                 "--precision", "fp32", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["model_type"] == "albert" and written["architectures"] == ["AlbertForPreTraining"]
    result = cli("pretrain", CORPUS, "--tokenizer", vocab, "--arch", "gpt", "--out", tmp_path / "r2", "--quiet")
    assert result.exit_code == 1 and "unknown arch 'gpt'; valid: bert, roberta, albert, electra, distilbert" in \
        result.stderr


@pytest.mark.parametrize(("family", "cls"), [("roberta", "RobertaForMaskedLM"), ("albert", "AlbertForPreTraining")])
def test_pretrain_init_from_a_transformers_checkpoint(vocab, tmp_path, family, cls):
    """--init-from a checkpoint transformers wrote: the family, its heads and its objective carry on."""
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(vocab)
    config_cls = getattr(transformers, cls.replace("ForMaskedLM", "Config").replace("ForPreTraining", "Config"))
    extra = {"embedding_size": 16} if family == "albert" else {"type_vocab_size": 1}
    hf_cfg = config_cls(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_id, **extra)
    getattr(transformers, cls)(hf_cfg).save_pretrained(tmp_path / "init", safe_serialization=True)
    tok.save(tmp_path / "init")
    from bertcli.tasks.pretraining import pretrain

    pretrain([str(CORPUS)], str(tmp_path / "run"), init_from=str(tmp_path / "init"),
             data_overrides={"max_seq_length": 32},
             train_overrides={"max_steps": 2, "batch_size": 4, "device": "cpu", "precision": "fp32", "quiet": True})
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model_type"] == family and cfg["architectures"] == [cls]
    assert cfg["bertcli"]["objective"] == ("mlm+sop" if family == "albert" else "mlm")
    _, info = getattr(transformers, cls).from_pretrained(tmp_path / "run", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


@pytest.mark.parametrize(("arch", "model_type", "style"), [("roberta", "bpe", "roberta"), ("albert", "unigram", "albert")])
def test_pretrain_with_the_familys_own_tokenizer(tmp_path, arch, model_type, style):
    """train-vocab --model-type bpe|unigram, then pretrain --arch on it: held-out loss falls, and transformers
    loads the run directory with its own tokenizer (AutoTokenizer) and model class, with the same logits."""
    from bertcli.tokenizer import Tokenizer
    from bertcli.vocab import train_vocab

    vocab = tmp_path / "vocab"
    train_vocab([CORPUS], vocab, model_type=model_type, style=style, vocab_size=800, held_out=0.0)
    tok = Tokenizer.load(vocab)
    _pretrain(vocab, tmp_path / "run", arch)
    out = tmp_path / "run"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == arch and cfg["pad_token_id"] == tok.pad_id
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    held = [r["eval"]["mlm_loss"] if "eval" in r else r["eval_mlm_loss"] for r in evals
            if "eval" in r or "eval_mlm_loss" in r]
    assert len(held) >= 2 and held[-1] < held[0], held

    from bertcli.checkpoint import load_checkpoint, load_into
    from bertcli.heads import BertForPreTraining

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = ["The house stood by the river.", "It rained"]
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    ids, mask, _ = Tokenizer.load(out).encode_ids(texts, None, max_length=32)
    assert [row[:len(r)] for row, r in zip(batch["input_ids"].tolist(), ids, strict=True)] == [list(r) for r in ids]
    ckpt = load_checkpoint(out)
    ours = BertForPreTraining(ckpt.config, nsp=arch == "albert").eval()
    load_into(ours, ckpt.state, str(out))
    ref = getattr(transformers, ARCHS[arch][2]).from_pretrained(out).eval()
    with torch.no_grad():
        mlm, _ = ours(batch["input_ids"], batch["attention_mask"])
        theirs = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    got = theirs.prediction_logits if arch == "albert" else theirs.logits
    assert (mlm - got)[batch["attention_mask"].bool()].abs().max().item() <= 1e-5
