"""Parity with transformers for every family member, both ways through checkpoints.

Per family (RoBERTa, XLM-R, DistilBERT, ALBERT with shared groups, ELECTRA; ALBERT and ELECTRA with
embedding size 16 != hidden 32), tiny random transformers models saved with ``save_pretrained`` load
in bertcli with the same last hidden states and head logits on a padded mixed-length batch, and
checkpoints bertcli writes load in the family's own transformers classes with the same outputs.
"""

from __future__ import annotations

import json

import pytest
import torch

from bertcli.checkpoint import load_checkpoint, load_into, save_checkpoint
from bertcli.config import BertConfig
from bertcli.errors import ConfigError
from bertcli.heads import (
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForReplacedTokenDetection,
    BertForSequenceClassification,
    BertForTokenClassification,
)
from bertcli.model import BertModel

transformers = pytest.importorskip("transformers")

SHAPE = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=40)
FAMILIES = {
    "roberta": ("Roberta", dict(SHAPE, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "xlm-roberta": ("XLMRoberta", dict(SHAPE, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "distilbert": ("DistilBert", dict(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                                      max_position_embeddings=40, pad_token_id=0)),
    "albert": ("Albert", dict(SHAPE, num_hidden_layers=3, embedding_size=16, num_hidden_groups=2, inner_group_num=2,
                              hidden_act="gelu_new", pad_token_id=0)),
    "electra": ("Electra", dict(SHAPE, embedding_size=16, pad_token_id=0)),
}
HEADS = {  # transformers class suffix -> the heads each family has
    "roberta": ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"],
    "distilbert": ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification",
                   "ForQuestionAnswering"],
    "albert": ["Model", "ForMaskedLM", "ForPreTraining", "ForSequenceClassification", "ForTokenClassification",
               "ForQuestionAnswering"],
    "electra": ["Model", "ForMaskedLM", "ForPreTraining", "ForSequenceClassification", "ForTokenClassification",
                "ForQuestionAnswering"],
}
HEADS["xlm-roberta"] = HEADS["roberta"]
CASES = [(family, kind) for family in FAMILIES for kind in HEADS[family]]


def _hf_config(family: str, kind: str = "Model"):
    cls, values = FAMILIES[family]
    labels = 3 if kind.endswith("Classification") else 2  # QA and ALBERT's SOP read num_labels too
    return getattr(transformers, f"{cls}Config")(**values, num_labels=labels)


def _hf_class(family: str, kind: str):
    return getattr(transformers, FAMILIES[family][0] + kind)


def _ours(config: BertConfig, kind: str) -> torch.nn.Module:
    if kind == "Model":
        return BertModel(config, with_pooler=config.family in ("roberta", "xlm-roberta", "albert"))
    if kind == "ForMaskedLM":
        return BertForPreTraining(config, nsp=False)
    if kind == "ForPreTraining":
        return BertForReplacedTokenDetection(config) if config.family == "electra" else BertForPreTraining(config)
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
    """Padded mixed-length rows (ids avoid the pad id), the mask, and token types where the family has 2."""
    g = torch.Generator().manual_seed(0)
    lengths = [12, 5, 9, 3]
    T, pad = max(lengths), config.pad_token_id
    ids = torch.full((len(lengths), T), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), T), dtype=torch.long)
    types = torch.zeros((len(lengths), T), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(3, config.vocab_size, (n,), generator=g)
        mask[r, :n] = 1
        types[r, n // 2:n] = 1
    return ids, mask, (types if config.type_vocab_size == 2 else None)


def _outputs_hf(model, kind: str, ids, mask, types) -> list[torch.Tensor]:
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        kwargs["token_type_ids"] = types
    out = model(**kwargs)
    if kind == "Model":
        return [out.last_hidden_state]
    if kind == "ForPreTraining" and hasattr(out, "sop_logits"):
        return [out.prediction_logits, out.sop_logits]
    if kind == "ForQuestionAnswering":
        return [out.start_logits, out.end_logits]
    return [out.logits]


def _outputs_ours(model, kind: str, ids, mask, types) -> list[torch.Tensor]:
    out = model(ids, mask, types)
    if kind == "ForMaskedLM":
        return [out[0]]
    if kind == "ForPreTraining" and isinstance(out, tuple):
        return list(out)
    return list(out) if isinstance(out, tuple) else [out]


def _max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    d = (a - b).abs()
    if d.dim() >= 2 and d.shape[:2] == mask.shape:
        d = d[mask.bool()]  # token-level outputs: real tokens only
    return d.max().item()


@pytest.mark.parametrize(("family", "kind"), CASES)
def test_transformers_to_bertcli(tmp_path, family, kind):
    torch.manual_seed(0)
    ref = _hf_class(family, kind)(_hf_config(family, kind)).eval()
    _perturb(ref)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.config.family == family
    model = _ours(ckpt.config, kind)
    state = ckpt.state if kind != "Model" else {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}
    assert load_into(model, state, str(tmp_path)) == []
    model.eval()
    ids, mask, types = _batch(ckpt.config)
    with torch.no_grad():
        want = _outputs_hf(ref, kind, ids, mask, types)
        got = _outputs_ours(model, kind, ids, mask, types)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert _max_diff(a, b, mask) <= 1e-5


@pytest.mark.parametrize(("family", "kind"), [c for c in CASES if c[1] != "Model"])
def test_bertcli_to_transformers(tmp_path, family, kind):
    config = BertConfig.from_hf(_hf_config(family).to_dict())
    torch.manual_seed(0)
    model = _ours(config, kind).eval()
    _perturb(model)
    task = "token-classification" if kind == "ForTokenClassification" else None
    save_checkpoint(tmp_path, model.state_dict(), config, task=task,
                    hf_extra={"num_labels": 3} if "Classification" in kind else None)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == family
    assert written["architectures"] == [FAMILIES[family][0] + kind]
    ref, info = _hf_class(family, kind).from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ref.eval()
    ids, mask, types = _batch(config)
    with torch.no_grad():
        want = _outputs_hf(ref, kind, ids, mask, types)
        got = _outputs_ours(model, kind, ids, mask, types)
    for a, b in zip(got, want, strict=True):
        assert _max_diff(a, b, mask) <= 1e-5


def test_family_fields_round_trip():
    for family in FAMILIES:
        config = BertConfig.from_hf(_hf_config(family).to_dict())
        assert BertConfig.from_hf(config.to_hf()) == config
    albert = BertConfig.from_hf(_hf_config("albert").to_dict())
    assert albert.layer_schedule == (0, 1, 0, 1, 2, 3)  # 3 depths over 2 groups of 2 layers
    assert BertConfig.from_hf(_hf_config("roberta").to_dict()).max_length == 38  # ids start past pad id 1


def test_unsupported_model_type_lists_the_supported_ones():
    with pytest.raises(ConfigError, match="model_type is 'gpt2'; bertcli reads model_type bert, roberta, "
                                          "xlm-roberta, distilbert, albert, electra"):
        BertConfig.from_hf({"model_type": "gpt2"})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sentence_transformers_directory_of_each_family(tmp_path, family, minilm_dir):
    """A sentence-embedding directory bertcli writes loads in sentence-transformers with the same vectors."""
    st = pytest.importorskip("sentence_transformers")
    from bertcli.embed import embed, load
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(minilm_dir)
    values = {**_hf_config(family).to_dict(), "vocab_size": tok.vocab_size, "pad_token_id": tok.pad_id}
    config = BertConfig.from_hf(values)
    torch.manual_seed(0)
    model = BertModel(config, with_pooler=family in ("roberta", "xlm-roberta", "albert"))
    _perturb(model)
    save_checkpoint(tmp_path, {f"bert.{k}": v for k, v in model.state_dict().items()}, config, tok,
                    task="sentence-embedding", sentence={"pooling": "mean", "normalize": True, "max_seq_length": 32})
    texts = ["a lovely film", "the quick brown fox jumps over the lazy dog", "hi"]
    theirs = st.SentenceTransformer(str(tmp_path), device="cpu").encode(texts, convert_to_tensor=True)
    ours = torch.as_tensor(embed(texts, load(str(tmp_path), device="cpu", precision="fp32")).vectors)
    assert (ours - theirs).abs().max().item() <= 1e-5
