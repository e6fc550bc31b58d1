"""DeBERTa-v2/v3 (model_type ``deberta-v2``): parity with transformers both ways, the commands, pretraining.

Tiny random transformers models (relative attention, c2p + p2c, log buckets fewer than the input length,
``share_att_key`` on and off, ``norm_rel_ebd``, no absolute positions in the input; and a v2-like variant
with absolute positions too, token types, factorised embeddings, c2p only and no buckets) are the
reference: their checkpoints load in bertcli with the same last hidden states and head logits on a
padded mixed-length batch, and what bertcli writes loads in the DebertaV2 classes with the same outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertcli.checkpoint import load_checkpoint, load_into, save_checkpoint
from bertcli.config import BertConfig
from bertcli.errors import CheckpointError, ConfigError
from bertcli.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertcli.model import BertModel, log_buckets

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples" / "corpus"
SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=40, relative_attention=True, pad_token_id=0)
V3 = dict(SHAPE, pos_att_type=["p2c", "c2p"], position_buckets=4, max_relative_positions=16, norm_rel_ebd="layer_norm",
          position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7)
VARIANTS = {
    "v3-shared": dict(V3, share_att_key=True),
    "v3-separate": dict(V3, share_att_key=False),
    # absolute positions in the input too, two token types, embeddings 16 != hidden 32, c2p alone, no buckets
    "v2-like": dict(SHAPE, pos_att_type="c2p", max_relative_positions=6, position_biased_input=True,
                    type_vocab_size=2, embedding_size=16, share_att_key=False),
}
KINDS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]
CASES = [(v, k) for v in VARIANTS for k in KINDS]


def _hf_config(variant: str, kind: str = "Model", **extra):
    labels = 2 if kind == "ForQuestionAnswering" else 3  # QA reads num_labels as its two span logits
    return transformers.DebertaV2Config(**VARIANTS[variant], num_labels=labels, **extra)


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
    """Non-trivial biases and LayerNorm weights, so that a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _batch(config: BertConfig):
    """Padded mixed-length rows longer than the buckets reach exactly (ids avoid the pad id), mask, types."""
    g = torch.Generator().manual_seed(0)
    lengths = [14, 5, 9, 3]
    T = max(lengths)
    ids = torch.full((len(lengths), T), config.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    types = torch.zeros((len(lengths), T), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, config.vocab_size, (n,), generator=g)
        mask[r, :n] = 1
        types[r, n // 2:n] = 1
    return ids, mask, (types if config.type_vocab_size == 2 else None)


def _hf_outputs(model, kind, ids, mask, types):
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        kwargs["token_type_ids"] = types
    out = model(**kwargs)
    if kind == "Model":
        return [out.last_hidden_state]
    if kind == "ForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def _our_outputs(model, kind, ids, mask, types):
    out = model(ids, mask, types)
    if kind == "ForMaskedLM":
        return [out[0]]
    return list(out) if isinstance(out, tuple) else [out]


def _max_diff(a, b, mask) -> float:
    d = (a - b).abs()
    if d.dim() >= 2 and d.shape[:2] == mask.shape:
        d = d[mask.bool()]  # token-level outputs: real tokens only
    return d.max().item()


@pytest.mark.parametrize(("variant", "kind"), CASES)
def test_transformers_to_bertcli(tmp_path, variant, kind):
    torch.manual_seed(0)
    ref = getattr(transformers, "DebertaV2" + kind)(_hf_config(variant, kind)).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.family == "deberta-v2" and ckpt.config.position_scheme == "relative"
    model = _ours(ckpt.config, kind)
    state = ckpt.state if kind != "Model" else {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}
    assert load_into(model, state, str(tmp_path)) == []
    model.eval()
    ids, mask, types = _batch(ckpt.config)
    with torch.no_grad():
        want = _hf_outputs(ref, kind, ids, mask, types)
        got = _our_outputs(model, kind, ids, mask, types)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert _max_diff(a, b, mask) <= 1e-5


@pytest.mark.parametrize(("variant", "kind"), [c for c in CASES if c[1] != "Model"])
def test_bertcli_to_transformers(tmp_path, variant, kind):
    config = BertConfig.from_hf(_hf_config(variant).to_dict())
    torch.manual_seed(0)
    model = _ours(config, kind).eval()
    _perturb(model)
    task = "token-classification" if kind == "ForTokenClassification" else None
    save_checkpoint(tmp_path, model.state_dict(), config, task=task,
                    hf_extra={"num_labels": 3} if "Classification" in kind else None)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "deberta-v2" and written["architectures"] == ["DebertaV2" + kind]
    ref, info = getattr(transformers, "DebertaV2" + kind).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref.eval()
    ids, mask, types = _batch(config)
    with torch.no_grad():
        want = _hf_outputs(ref, kind, ids, mask, types)
        got = _our_outputs(model, kind, ids, mask, types)
    for a, b in zip(got, want, strict=True):
        assert _max_diff(a, b, mask) <= 1e-5


def test_the_new_mlm_head_and_microsofts_extra_tensors_load(tmp_path):
    """legacy false (lm_predictions.lm_head.*) reads into the same MLM head; mask_predictions.* (the
    replaced-token head of microsoft's v3 checkpoints) and an unused absolute table are dropped."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    ref = transformers.DebertaV2ForMaskedLM(_hf_config("v3-shared", legacy=False)).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    weights = load_file(str(tmp_path / "model.safetensors"))
    weights["mask_predictions.dense.weight"] = torch.zeros(32, 32)
    weights["deberta.embeddings.position_embeddings.weight"] = torch.zeros(40, 32)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    ckpt = load_checkpoint(tmp_path)
    model = BertForPreTraining(ckpt.config, nsp=False)
    assert load_into(model, ckpt.state, str(tmp_path)) == []
    ids, mask, _ = _batch(ckpt.config)
    with torch.no_grad():
        assert _max_diff(model.eval()(ids, mask)[0], ref(input_ids=ids, attention_mask=mask).logits, mask) <= 1e-5


def test_log_buckets_and_relative_index_match_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    x = torch.zeros(1, 300, 8)
    for buckets, max_pos in ((4, 16), (256, 512), (32, 128)):
        want = build_relative_position(x, x, bucket_size=buckets, max_position=max_pos)[0]
        ids = torch.arange(300)
        assert torch.equal(log_buckets(ids[:, None] - ids[None, :], buckets, max_pos), want)


def test_config_round_trip_and_refusals():
    for variant in VARIANTS:
        config = BertConfig.from_hf(_hf_config(variant).to_dict())
        assert BertConfig.from_hf(config.to_hf()) == config
    v3 = BertConfig.from_hf(_hf_config("v3-shared").to_dict())
    assert (v3.pos_att_type, v3.relative_span, v3.share_att_key, v3.norm_rel_ebd) == (("c2p", "p2c"), 4, True, True)
    assert BertConfig.from_hf(_hf_config("v2-like").to_dict()).relative_span == 6  # no buckets: distances
    with pytest.raises(ConfigError, match="relative_attention false is not supported"):
        BertConfig.from_hf({**_hf_config("v3-shared").to_dict(), "relative_attention": False})
    with pytest.raises(ConfigError, match="conv_kernel_size 3 .* is not supported"):
        BertConfig.from_hf({**_hf_config("v3-shared").to_dict(), "conv_kernel_size": 3})
    with pytest.raises(ConfigError, match="pos_att_type .*p2p.* valid entries: c2p, p2c"):
        BertConfig.from_hf({**_hf_config("v3-shared").to_dict(), "pos_att_type": ["p2p"]})


def test_weights_that_do_not_fit_the_relative_table_are_refused(tmp_path):
    torch.manual_seed(0)
    transformers.DebertaV2Model(_hf_config("v3-shared")).save_pretrained(tmp_path, safe_serialization=True)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "position_buckets": 8}))
    with pytest.raises(CheckpointError, match=r"bert.relative.embeddings.weight has shape \(8, 32\), "
                                              r"config.json implies \(16, 32\)"):
        load_checkpoint(tmp_path)


def test_bf16_autocast_runs_close_to_fp32():
    config = BertConfig.from_hf(_hf_config("v3-shared").to_dict())
    torch.manual_seed(0)
    model = BertModel(config, with_pooler=False).eval()
    ids, mask, _ = _batch(config)
    with torch.no_grad():
        full = model(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(ids, mask)
    assert torch.isfinite(half).all()  # the bf16 position bias and mask went through SDPA
    assert _max_diff(half.float(), full, mask) < 0.1


def test_sentence_transformers_directory(tmp_path, minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    from bertcli.embed import embed, load
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(minilm_dir)
    config = BertConfig.from_hf({**_hf_config("v3-separate").to_dict(), "vocab_size": tok.vocab_size,
                                 "pad_token_id": tok.pad_id})
    torch.manual_seed(0)
    model = BertModel(config, with_pooler=False)
    _perturb(model)
    save_checkpoint(tmp_path, {f"bert.{k}": v for k, v in model.state_dict().items()}, config, tok,
                    task="sentence-embedding", sentence={"pooling": "mean", "normalize": True, "max_seq_length": 32})
    texts = ["a lovely film", "the quick brown fox jumps over the lazy dog", "hi"]
    theirs = st.SentenceTransformer(str(tmp_path), device="cpu").encode(texts, convert_to_tensor=True)
    ours = torch.as_tensor(embed(texts, load(str(tmp_path), device="cpu", precision="fp32")).vectors)
    assert (ours - theirs).abs().max().item() <= 1e-5


# ------------------------------------------------------------------ the commands and pretraining
@pytest.fixture(scope="module")
def deberta_vocab(tmp_path_factory) -> Path:
    """A tiny DeBERTa-v3-style SentencePiece (Unigram) tokenizer: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 [MASK]=4."""
    from bertcli.vocab import train_vocab

    out = tmp_path_factory.mktemp("vocab") / "vocab"
    train_vocab([CORPUS], out, model_type="unigram", style="deberta", vocab_size=800, held_out=0.0)
    return out


@pytest.fixture(scope="module")
def tiny_deberta(deberta_vocab, tmp_path_factory) -> Path:
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(deberta_vocab)
    cfg = BertConfig.for_family("deberta-v2", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, hidden_size=32,
                                num_layers=2, num_heads=2, intermediate_size=64, max_positions=128,
                                position_buckets=8, max_relative_positions=64)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg, nsp=False)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model", model.state_dict(), cfg, tok,
                           task="pretraining")


def test_the_tokenizer_is_transformers_own(deberta_vocab):
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(deberta_vocab)
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.unk_id, tok.mask_id) == (0, 1, 2, 3, 4)
    hf = transformers.AutoTokenizer.from_pretrained(deberta_vocab)
    assert type(hf).__name__ == "DebertaV2Tokenizer"
    texts = ["The house  stood by the River.\tNaïve café", "It rained"]
    ids, _, _ = tok.encode_ids(texts, None, max_length=64)
    assert [list(r) for r in ids] == hf(texts)["input_ids"]


def test_finetune_and_predict_match_transformers(tiny_deberta, tmp_path, shared_data, cli):
    lines = (shared_data / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    rows = tmp_path / "train.tsv"
    rows.write_text("\n".join(lines[:41]) + "\n", encoding="utf-8")
    info = json.loads(cli("info", "--model", tiny_deberta, "--json").stdout)
    assert info["family"] == "deberta-v2" and info["architecture"] == "DebertaV2ForMaskedLM"
    assert cli("fill-mask", "--model", tiny_deberta, "--json", "a [MASK] film").exit_code == 0
    assert cli("similarity", "--model", tiny_deberta, "--json", "a lovely film", "a great movie").exit_code == 0
    out = tmp_path / "run"
    result = cli("finetune", "--model", tiny_deberta, "--train", rows, "--dev", rows, "--text-column", "sentence",
                 "--label-column", "label", "--out", out, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3",
                 "--max-length", "64", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "deberta-v2" and cfg["architectures"] == ["DebertaV2ForSequenceClassification"]
    result = cli("predict", "--model", out, rows, "--json", "--quiet", "--device", "cpu", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in result.stdout.splitlines()]
    ours = torch.tensor([[row["prob_0"], row["prob_1"]] for row in preds])

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf).__name__ == "DebertaV2ForSequenceClassification"
    batch = hf_tok([row["sentence"] for row in preds], padding=True, truncation=True, max_length=64,
                   return_tensors="pt")
    with torch.no_grad():
        theirs = hf(**batch).logits.softmax(-1)
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_token_classification_and_qa_load_in_transformers(tiny_deberta, tmp_path, cli):
    from test_family_commands import _conll, _squad

    from bertcli.tasks.question_answering import load_qa_model
    from bertcli.tasks.token_classification import load_token_model

    common = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32", "--quiet"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(tiny_deberta)
    batch = hf_tok(["anna flew to rome .", "where did boris move ?"], padding=True, return_tensors="pt")
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    ner = tmp_path / "ner"
    result = cli("finetune", "--task", "token-classification", "--model", tiny_deberta, "--train",
                 _conll(tmp_path / "train.conll", 12), "--out", ner, *common)
    assert result.exit_code == 0, result.output
    hf = transformers.AutoModelForTokenClassification.from_pretrained(ner).eval()
    assert type(hf).__name__ == "DebertaV2ForTokenClassification"
    with torch.no_grad():
        diff = load_token_model(ner).eval()(ids, batch["attention_mask"]) - hf(**batch).logits
    assert diff[mask].abs().max().item() <= 1e-5

    qa = tmp_path / "qa"
    result = cli("finetune", "--task", "question-answering", "--model", tiny_deberta, "--train",
                 _squad(tmp_path / "train.json", 16), "--out", qa, "--max-length", "48", "--doc-stride", "8",
                 "--max-query-length", "12", *common)
    assert result.exit_code == 0, result.output
    result = cli("answer", "--model", qa, "--question", "Where did anna move?", "--context",
                 "Anna moved to Paris in spring.", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(qa).eval()
    with torch.no_grad():
        start, end = load_qa_model(qa).eval()(ids, batch["attention_mask"])
        theirs = hf(**batch)
    assert (start - theirs.start_logits)[mask].abs().max().item() <= 1e-5
    assert (end - theirs.end_logits)[mask].abs().max().item() <= 1e-5


def test_pretrain_arch_deberta(deberta_vocab, tmp_path, cli):
    """pretrain --arch deberta (tiny), then the run loads in DebertaV2ForMaskedLM with the same logits."""
    import yaml

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2,
                                             "intermediate_size": 64, "position_buckets": 8}}))
    out = tmp_path / "run"
    result = cli("pretrain", CORPUS, "--tokenizer", deberta_vocab, "--arch", "deberta", "--config", cfg, "--out", out,
                 "--max-seq-length", "32", "--max-steps", "16", "--batch-size", "8", "--lr", "2e-3",
                 "--eval-every", "8", "--eval-fraction", "0.1", "--device", "cpu", "--precision", "fp32", "--quiet")
    assert result.exit_code == 0, result.output
    written = json.loads((out / "config.json").read_text())
    assert written["model_type"] == "deberta-v2" and written["architectures"] == ["DebertaV2ForMaskedLM"]
    assert written["bertcli"]["objective"] == "mlm"
    assert (written["position_buckets"], written["share_att_key"], written["position_biased_input"],
            written["norm_rel_ebd"], sorted(written["pos_att_type"])) == (8, True, False, "layer_norm", ["c2p", "p2c"])
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    held = [r["eval"]["mlm_loss"] if "eval" in r else r["eval_mlm_loss"] for r in evals
            if "eval" in r or "eval_mlm_loss" in r]
    assert len(held) >= 2 and all(x == x for x in held)  # finite held-out losses at each evaluation

    ckpt = load_checkpoint(out)
    ours = BertForPreTraining(ckpt.config, nsp=False).eval()
    load_into(ours, ckpt.state, str(out))
    ref, info = transformers.DebertaV2ForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    batch = transformers.AutoTokenizer.from_pretrained(out)(["The house stood by the river.", "It rained"],
                                                            padding=True, return_tensors="pt")
    with torch.no_grad():
        mlm, _ = ours(batch["input_ids"], batch["attention_mask"])
        theirs = ref.eval()(**batch).logits
    assert (mlm - theirs)[batch["attention_mask"].bool()].abs().max().item() <= 1e-5


def test_arch_deberta_preset_is_v3_small_shaped():
    from bertcli.config import arch_values

    cfg = BertConfig(**arch_values("deberta", None, {"vocab_size": 128100}))
    assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.intermediate_size) == \
        ("deberta-v2", 6, 768, 12, 3072)
    assert (cfg.position_buckets, cfg.relative_span, cfg.share_att_key, cfg.position_biased_input) == (256, 256, True, False)
    tiny = BertConfig(**arch_values("deberta", "tiny", {"vocab_size": 100}))
    assert (tiny.num_layers, tiny.hidden_size, tiny.position_scheme) == (2, 128, "relative")


def test_shorter_inputs_after_longer_ones_reuse_the_relative_index(tmp_path):
    """The relative index is built for the longest input seen; shorter ones read its top-left block."""
    torch.manual_seed(0)
    ref = transformers.DebertaV2Model(_hf_config("v3-separate")).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ckpt = load_checkpoint(tmp_path)
    model = BertModel(ckpt.config, with_pooler=False)
    load_into(model, {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}, str(tmp_path))
    model.eval()
    ids, mask, _ = _batch(ckpt.config)
    with torch.no_grad():
        for T in (14, 5, 30, 9):  # 30: longer than any before, past the buckets' exact range
            x = ids[:, :T] if T <= ids.shape[1] else torch.randint(3, 99, (2, T), generator=torch.Generator().manual_seed(T))
            m = mask[:, :T] if T <= ids.shape[1] else torch.ones_like(x)
            want = ref(input_ids=x, attention_mask=m).last_hidden_state
            assert _max_diff(model(x, m), want, m) <= 1e-5
