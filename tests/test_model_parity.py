"""Numerical parity of the encoder and heads with transformers, both ways through checkpoints."""

from __future__ import annotations

import pytest
import torch

from bertcli.checkpoint import (
    WEIGHTS_NAME,
    load_checkpoint,
    load_encoder,
    load_into,
    read_weights,
    save_checkpoint,
    write_weights,
)
from bertcli.config import BertConfig
from bertcli.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    pool,
)
from bertcli.model import BertModel, count_parameters, init_weights

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "A man is playing a guitar.",
    "Hi!",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch of his old house.",
    "Two women are dancing in the rain, laughing, as a crowd gathers to watch them.",
    "Stocks fell sharply on Monday after the central bank raised interest rates by half a percentage point, "
    "the largest increase in more than two decades, sending bond yields to their highest level since 2008.",
    "Café naïve résumé.",
    "A cat sits.",
    "北京是中国的首都。",
]
PAIRS = [
    ("A man is playing a flute.", "A man is playing a bamboo flute."),
    ("Is it raining?", "The weather service predicts heavy rain across the region tonight and tomorrow."),
]

TINY = dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
            max_positions=40, type_vocab_size=2, pad_token_id=0)


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Make biases and LayerNorm weights non-trivial so that a mis-mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _batch(ids_rows, type_rows=None, pad=0):
    from bertcli.tokenizer import pad_batch

    return pad_batch(ids_rows, type_rows, pad)


def _random_batch(vocab: int = 99, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = [12, 5, 9, 3]
    rows = [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]
    types = [[0] * (n // 2) + [1] * (n - n // 2) for n in lengths]
    return _batch(rows, types)


def _hf_loaded(cls, path):
    model, info = cls.from_pretrained(str(path), output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    assert not info.get("mismatched_keys"), info["mismatched_keys"]
    return model.eval()


def _max_diff(a, b, mask=None):
    d = (a - b).abs()
    if mask is not None:
        d = d[mask.bool()]
    return d.max().item()


def _assert_pretraining_outputs_match(ref, model):
    """Our BertForPreTraining's MLM and NSP logits equal the transformers reference's on a random batch."""
    input_ids, mask, types = _random_batch()
    with torch.no_grad():
        want = ref(input_ids=input_ids, attention_mask=mask, token_type_ids=types)
        mlm, nsp = model(input_ids, mask, types)
    assert _max_diff(mlm, want.prediction_logits, mask) < 1e-5
    assert _max_diff(nsp, want.seq_relationship_logits) < 1e-5


# --------------------------------------------------------------------------- real weights


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    ours, tok, ckpt = load_encoder(minilm_dir, with_pooler=True)
    ref = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    return ours, tok, ref


def test_minilm_hidden_states_match_transformers(minilm, minilm_dir):
    ours, tok, ref = minilm
    ref_tok = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir))
    batch = ref_tok(SENTENCES, padding=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all())  # mixed lengths: padding is exercised
    with torch.no_grad():
        want = ref(**batch)
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    diff = _max_diff(got, want.last_hidden_state, batch["attention_mask"])
    print(f"MiniLM last hidden state max abs diff (fp32): {diff:.3g}")
    assert diff < 1e-5
    assert _max_diff(ours.pooler(got), want.pooler_output) < 1e-5
    # mean pooling over real tokens matches sentence-transformers' formula
    mask = batch["attention_mask"]
    ref_mean = (want.last_hidden_state * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert _max_diff(pool(got, mask, "mean"), ref_mean) < 1e-5


def test_minilm_pairs_through_our_tokenizer(minilm):
    ours, tok, ref = minilm
    ids, types, _ = tok.encode_ids([a for a, _ in PAIRS], [b for _, b in PAIRS])
    input_ids, mask, token_types = _batch(ids, types, tok.pad_id)
    with torch.no_grad():
        want = ref(input_ids=input_ids, attention_mask=mask, token_type_ids=token_types).last_hidden_state
        got = ours(input_ids, mask, token_types)
    assert _max_diff(got, want, mask) < 1e-5


def test_padding_does_not_change_real_positions(minilm):
    ours, tok, _ = minilm
    ids, types, _ = tok.encode_ids(SENTENCES[:3])
    input_ids, mask, token_types = _batch(ids, types, tok.pad_id)
    with torch.no_grad():
        batched = ours(input_ids, mask, token_types)
        alone = ours(torch.tensor([ids[1]]), torch.ones(1, len(ids[1]), dtype=torch.long))
    assert _max_diff(batched[1, : len(ids[1])], alone[0]) < 1e-5


# --------------------------------------------------------------------------- tiny: bertcli -> transformers


@pytest.fixture(scope="module")
def tiny_pretraining(tmp_path_factory):
    cfg = BertConfig(**TINY)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).eval()
    _perturb(model)
    path = save_checkpoint(tmp_path_factory.mktemp("pt") / "ckpt", model.state_dict(), cfg, task="pretraining")
    return model, path


def test_bertcli_pretraining_checkpoint_loads_in_transformers(tiny_pretraining):
    model, path = tiny_pretraining
    ref = _hf_loaded(transformers.BertForPreTraining, path)
    # the MLM decoder is tied to the word embeddings in transformers too
    assert ref.cls.predictions.decoder.weight.data_ptr() == ref.bert.embeddings.word_embeddings.weight.data_ptr()
    input_ids, mask, types = _random_batch()
    with torch.no_grad():
        want = ref(input_ids=input_ids, attention_mask=mask, token_type_ids=types)
        want_hidden = ref.bert(input_ids=input_ids, attention_mask=mask, token_type_ids=types)
        hidden = model.bert(input_ids, mask, types)
        mlm, nsp = model(input_ids, mask, types)
        mlm_sel, _ = model(input_ids, mask, types, mlm_positions=mask.bool())
    assert _max_diff(hidden, want_hidden.last_hidden_state, mask) < 1e-5
    assert _max_diff(model.bert.pooler(hidden), want_hidden.pooler_output) < 1e-5
    assert _max_diff(mlm, want.prediction_logits, mask) < 1e-5
    assert _max_diff(nsp, want.seq_relationship_logits) < 1e-5
    assert torch.allclose(mlm_sel, mlm[mask.bool()], atol=1e-6)
    # the encoder alone: BertModel reads the bert.-prefixed checkpoint
    base = _hf_loaded(transformers.BertModel, path)
    with torch.no_grad():
        out = base(input_ids=input_ids, attention_mask=mask, token_type_ids=types)
    assert _max_diff(out.last_hidden_state, hidden, mask) < 1e-5
    assert _max_diff(out.pooler_output, model.bert.pooler(hidden)) < 1e-5


def test_bertcli_masked_lm_checkpoint_loads_in_transformers(tmp_path):
    cfg = BertConfig(**TINY)
    torch.manual_seed(3)
    model = BertForPreTraining(cfg, nsp=False).eval()
    _perturb(model, 3)
    path = save_checkpoint(tmp_path / "mlm", model.state_dict(), cfg)
    ref = _hf_loaded(transformers.BertForMaskedLM, path)
    input_ids, mask, types = _random_batch()
    with torch.no_grad():
        want = ref(input_ids=input_ids, attention_mask=mask, token_type_ids=types).logits
        got, nsp = model(input_ids, mask, types)
    assert nsp is None
    assert _max_diff(got, want, mask) < 1e-5


# --------------------------------------------------------------------------- tiny: transformers -> bertcli


def _hf_tiny_config(**extra):
    return transformers.BertConfig(**{**BertConfig(**TINY).to_hf(), **extra})


def test_transformers_pretraining_checkpoint_loads_in_bertcli(tmp_path):
    torch.manual_seed(1)
    ref = transformers.BertForPreTraining(_hf_tiny_config()).eval()
    _perturb(ref, 5)
    ref.save_pretrained(str(tmp_path), safe_serialization=True)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.heads == {"pooler", "mlm", "nsp"}
    model = BertForPreTraining(ckpt.config).eval()
    assert load_into(model, ckpt.state, "test") == []
    _assert_pretraining_outputs_match(ref, model)


@pytest.mark.parametrize("old_names", [False, True])
def test_old_style_names_and_decoder_bias(tmp_path, old_names):
    """Checkpoints with LayerNorm.gamma/beta and cls.predictions.decoder.{weight,bias} load correctly."""
    torch.manual_seed(2)
    ref = transformers.BertForPreTraining(_hf_tiny_config()).eval()
    _perturb(ref, 7)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"].clone()
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"].clone()
    if old_names:
        state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
                 for k, v in state.items()}
        del state["cls.predictions.bias"]  # only the decoder's copy
    ref.config.save_pretrained(str(tmp_path))
    write_weights(state, tmp_path / WEIGHTS_NAME)
    ckpt = load_checkpoint(tmp_path)
    model = BertForPreTraining(ckpt.config).eval()
    load_into(model, ckpt.state, "test")
    _assert_pretraining_outputs_match(ref, model)


def test_untied_decoder_is_not_silently_used_as_tied(tmp_path):
    torch.manual_seed(4)
    ref = transformers.BertForMaskedLM(_hf_tiny_config(tie_word_embeddings=False)).eval()
    _perturb(ref, 9)
    assert ref.cls.predictions.decoder.weight.data_ptr() != ref.bert.embeddings.word_embeddings.weight.data_ptr()
    ref.save_pretrained(str(tmp_path), safe_serialization=True)
    ckpt = load_checkpoint(tmp_path)
    # the encoder is usable; the untied MLM head is not taken for a tied one
    assert "mlm" not in ckpt.heads
    assert "bert.embeddings.word.weight" in ckpt.state


def test_fp16_weights_load_as_fp32(tmp_path):
    torch.manual_seed(5)
    ref = transformers.BertModel(_hf_tiny_config()).eval()
    _perturb(ref, 11)
    ref.half().save_pretrained(str(tmp_path), safe_serialization=True)
    ref.float()
    model, _, ckpt = _encoder_without_tokenizer(tmp_path)
    assert ckpt.state["bert.embeddings.word.weight"].dtype == torch.float16
    assert model.embeddings.word.weight.dtype == torch.float32
    input_ids, mask, types = _random_batch()
    with torch.no_grad():
        want = ref(input_ids=input_ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = model(input_ids, mask, types)
    assert _max_diff(got, want, mask) < 1e-5


def _encoder_without_tokenizer(path):
    ckpt = load_checkpoint(path)
    model = BertModel(ckpt.config, with_pooler="pooler" in ckpt.heads).eval()
    load_into(model, {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}, "test")
    return model, None, ckpt


# --------------------------------------------------------------------------- task heads, both ways

HEADS = [
    ("sequence-classification", BertForSequenceClassification, "BertForSequenceClassification", 3),
    ("token-classification", BertForTokenClassification, "BertForTokenClassification", 5),
    ("question-answering", BertForQuestionAnswering, "BertForQuestionAnswering", None),
]


def _make_head(cls, cfg, num_labels):
    return cls(cfg) if num_labels is None else cls(cfg, num_labels)


def _outputs(model, hf_out=None, batch=None):
    if hf_out is not None:
        if hasattr(hf_out, "start_logits"):
            return torch.stack([hf_out.start_logits, hf_out.end_logits], -1)
        return hf_out.logits
    out = model(*batch)
    return torch.stack(out, -1) if isinstance(out, tuple) else out


@pytest.mark.parametrize("task, cls, hf_name, num_labels", HEADS)
def test_task_heads_round_trip_through_transformers(tmp_path, task, cls, hf_name, num_labels):
    cfg = BertConfig(**TINY)
    torch.manual_seed(6)
    model = _make_head(cls, cfg, num_labels).eval()
    _perturb(model, 13)
    extra = None
    if num_labels:
        labels = {str(i): f"L{i}" for i in range(num_labels)}
        extra = {"id2label": labels, "label2id": {v: int(k) for k, v in labels.items()}}
    path = save_checkpoint(tmp_path / "ours", model.state_dict(), cfg, task=task, hf_extra=extra)
    assert load_checkpoint(path).hf_config["architectures"] == [hf_name]
    ref = _hf_loaded(getattr(transformers, hf_name), path)
    batch = _random_batch()
    input_ids, mask, types = batch
    with torch.no_grad():
        want = _outputs(None, ref(input_ids=input_ids, attention_mask=mask, token_type_ids=types))
        got = _outputs(model, batch=batch)
    assert got.shape == want.shape
    tol_mask = mask if got.dim() == 3 else None
    assert _max_diff(got, want, tol_mask) < 1e-5

    # and back: transformers save_pretrained -> bertcli
    ref.save_pretrained(str(tmp_path / "theirs"), safe_serialization=True)
    ckpt = load_checkpoint(tmp_path / "theirs")
    back = _make_head(cls, ckpt.config, num_labels).eval()
    assert load_into(back, ckpt.state, "test") == []
    if num_labels:
        assert ckpt.id2label == {i: f"L{i}" for i in range(num_labels)}
    with torch.no_grad():
        again = _outputs(back, batch=batch)
    assert torch.equal(again, got)


# --------------------------------------------------------------------------- the model itself


def test_init_and_parameter_count():
    cfg = BertConfig(**TINY)
    model = BertForPreTraining(cfg)
    ref = transformers.BertForPreTraining(_hf_tiny_config())
    assert count_parameters(model) == sum(p.numel() for p in ref.parameters())  # tied decoder counted once
    init_weights(model, 0.02)
    assert torch.equal(model.bert.embeddings.norm.weight, torch.ones(32))
    assert torch.equal(model.bert.layers[0].attn.qkv.bias, torch.zeros(96))
    assert torch.equal(model.bert.embeddings.word.weight[cfg.pad_token_id], torch.zeros(32))
    std = model.bert.layers[0].ffn.up.weight.std().item()
    assert 0.015 < std < 0.025


def test_dropout_only_in_training_and_no_mask_equals_full_mask():
    cfg = BertConfig(**TINY)
    torch.manual_seed(0)
    model = BertModel(cfg).eval()
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        a = model(ids)
        b = model(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(ids), a)


def test_read_weights_round_trip_is_bit_identical(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.randn(5).half(), "c": torch.arange(4)}
    write_weights(t, tmp_path / "w.safetensors")
    back = read_weights(tmp_path / "w.safetensors")
    assert set(back) == set(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and torch.equal(back[k], t[k])
