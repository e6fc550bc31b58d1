"""Model configuration: one dataclass, presets, YAML and Hugging Face ``config.json`` mapping.

``BertConfig`` is the single source of truth for the model's shape. YAML files, CLI flags and
Hugging Face ``config.json`` files all load into it, and ``__post_init__`` validates it with
messages that name the field and its valid values.

This module imports no torch: it is safe to use from ``--help`` paths.
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from bertcli.errors import ConfigError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")
HEAD_ACTIVATIONS = ("tanh", *ACTIVATIONS)
POSITION_SCHEMES = ("absolute", "padding_offset", "relative", "rotary")
POS_ATT_TYPES = ("c2p", "p2c")  # DeBERTa's disentangled terms: content-to-position, position-to-content
CLS_HEADS = ("pooler", "dense", "prediction")
NORM_PLACEMENTS = ("post", "pre")
MLP_KINDS = ("plain", "glu")
CLASSIFIER_POOLINGS = ("cls", "mean")
# Hugging Face spellings of the activations we implement.
_HF_ACT_IN = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
_HF_ACT_OUT = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


@dataclass
class BertConfig:
    """The shape of a BERT encoder (field names are bertcli's; see ``to_hf``)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    initializer_range: float = 0.02
    # --- what tells the members of the family apart (BERT's values by default; see FAMILIES)
    family: str = "bert"  # the Hugging Face model_type, kept on export
    position_scheme: str = "absolute"  # or "padding_offset": RoBERTa's ids, counted from pad_token_id + 1
    embedding_size: int | None = None  # ALBERT / ELECTRA factorised embeddings (projected to hidden); None = hidden
    num_hidden_groups: int | None = None  # ALBERT layer sharing: distinct layer groups; None = one per layer
    inner_group_num: int = 1  # ALBERT: layers in each group
    cls_head: str = "pooler"  # sequence classifier on the pooler (BERT, ALBERT) or a dense head on <s>
    cls_head_activation: str = "tanh"  # the dense head's activation (RoBERTa tanh, ELECTRA gelu, DistilBERT relu)
    mlm_activation: str | None = None  # the MLM head's activation; None = activation
    classifier_dropout: float | None = None  # classifier heads' dropout; None = hidden_dropout
    cls_head_input_dropout: bool = True  # dropout before the dense head too (RoBERTa, ELECTRA; not DistilBERT)
    # DeBERTa (position_scheme "relative"): relative-position attention over log buckets
    position_buckets: int = 0  # buckets each side (S); <= 0: one per distance up to max_relative_positions
    max_relative_positions: int = -1  # the farthest distance told apart; < 1: max_positions
    pos_att_type: tuple[str, ...] = ()  # disentangled terms, from POS_ATT_TYPES
    share_att_key: bool = False  # project relative embeddings with the content query/key weights
    norm_rel_ebd: bool = False  # LayerNorm on the relative-position table
    position_biased_input: bool = True  # absolute position embeddings added to the input (DeBERTa-v3: false)
    # --- ModernBERT: pre-norm, GeGLU, rotary positions, local attention, no biases (BERT's values by default)
    norm_placement: str = "post"  # post-LN (BERT) or "pre": LayerNorm before each block, a final norm after
    mlp_kind: str = "plain"  # up/act/down, or "glu": a fused up projection to 2I, act(input) * gate, down
    attention_bias: bool = True  # biases of the qkv and output projections
    mlp_bias: bool = True  # biases of the feed-forward projections
    norm_bias: bool = True  # LayerNorm biases
    head_bias: bool = True  # bias of ModernBERT's head dense layer (classifier_bias)
    decoder_bias: bool = True  # the MLM decoder's output bias
    local_attention: int | None = None  # sliding window (tokens, both sides together) of the local layers
    global_attn_every_n_layers: int = 1  # layer i is global when i % n == 0, local (windowed) otherwise
    rope_theta: float = 10000.0  # rotary base of the global layers
    local_rope_theta: float | None = None  # rotary base of the local layers; None = rope_theta
    classifier_pooling: str = "cls"  # ModernBERT's sequence head on the first token or the mean of the tokens

    def __post_init__(self) -> None:
        _check_types(self, "BertConfig")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_positions", "inner_group_num"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be a positive integer, got {getattr(self, name)}")
        for name in ("embedding_size", "num_hidden_groups"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be a positive integer or null, got {getattr(self, name)}")
        if self.type_vocab_size < 0:
            raise ConfigError(f"config field 'type_vocab_size' must be 0 (no token types) or more, got {self.type_vocab_size}")
        for name, valid in (("family", tuple(FAMILIES)), ("position_scheme", POSITION_SCHEMES),
                            ("cls_head", CLS_HEADS), ("cls_head_activation", HEAD_ACTIVATIONS),
                            ("mlm_activation", (None, *ACTIVATIONS)), ("norm_placement", NORM_PLACEMENTS),
                            ("mlp_kind", MLP_KINDS), ("classifier_pooling", CLASSIFIER_POOLINGS)):
            if getattr(self, name) not in valid:
                raise ConfigError(f"config field '{name}' is {getattr(self, name)!r}; valid values: "
                                  f"{', '.join(str(v) for v in valid)}")
        if not all(isinstance(t, str) and t in POS_ATT_TYPES for t in self.pos_att_type):
            raise ConfigError(f"config field 'pos_att_type' is {list(self.pos_att_type)}; valid entries: "
                              f"{', '.join(POS_ATT_TYPES)}")
        object.__setattr__(self, "pos_att_type", tuple(t for t in POS_ATT_TYPES if t in self.pos_att_type))
        if self.embedding_size == self.hidden_size and not FAMILIES[self.family]["always_project"]:
            object.__setattr__(self, "embedding_size", None)  # ELECTRA projects only when the sizes differ
        if self.hidden_size % self.num_heads != 0:
            divisors = [h for h in range(1, min(self.hidden_size, 64) + 1) if self.hidden_size % h == 0]
            raise ConfigError(
                f"config field 'hidden_size' ({self.hidden_size}) must be divisible by 'num_heads' "
                f"({self.num_heads}); valid num_heads for this hidden size include {divisors}"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"config field 'activation' is '{self.activation}'; valid values: {', '.join(ACTIVATIONS)}"
            )
        for name in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"config field '{name}' must be in [0, 1), got {value}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(
                f"config field 'pad_token_id' ({self.pad_token_id}) must be in [0, vocab_size={self.vocab_size})"
            )
        if self.layer_norm_eps <= 0:
            raise ConfigError(f"config field 'layer_norm_eps' must be positive, got {self.layer_norm_eps}")
        if self.local_attention is not None and self.local_attention < 2:
            raise ConfigError(f"config field 'local_attention' must be at least 2 (or null), got {self.local_attention}")
        if self.global_attn_every_n_layers < 1:
            raise ConfigError("config field 'global_attn_every_n_layers' must be a positive integer, "
                              f"got {self.global_attn_every_n_layers}")
        for name in ("rope_theta", "local_rope_theta"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"config field '{name}' must be positive, got {getattr(self, name)}")
        if self.position_scheme == "rotary" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head size; hidden_size / num_heads = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def word_size(self) -> int:
        """Width of the word embeddings (E): ``embedding_size`` or the hidden size."""
        return self.embedding_size or self.hidden_size

    @property
    def layer_schedule(self) -> tuple[int, ...]:
        """Which built layer runs at each depth: ALBERT's group rule, else one layer per depth."""
        groups = self.num_hidden_groups or self.num_layers
        return tuple(int(i / (self.num_layers / groups)) * self.inner_group_num + j
                     for i in range(self.num_layers) for j in range(self.inner_group_num))

    @property
    def num_built_layers(self) -> int:
        return (self.num_hidden_groups or self.num_layers) * self.inner_group_num

    def layer_window(self, i: int) -> int | None:
        """Layer i's attention reach (|query - key| <= reach), or None for a global layer."""
        if self.local_attention is None or i % self.global_attn_every_n_layers == 0:
            return None
        return self.local_attention // 2

    @property
    def relative_span(self) -> int:
        """DeBERTa's S: the relative-position table has 2S rows (buckets, else distances)."""
        return self.position_buckets if self.position_buckets > 0 else self.relative_max_distance

    @property
    def relative_max_distance(self) -> int:
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_positions

    @property
    def max_length(self) -> int:
        """The longest token sequence the position table holds (RoBERTa's ids start past the pad id)."""
        if self.position_scheme == "padding_offset":
            return self.max_positions - self.pad_token_id - 1
        return self.max_positions

    # ----------------------------------------------------------------- presets
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> BertConfig:
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
        layers, hidden = PRESETS[name]
        values = dict(hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64),
                      intermediate_size=4 * hidden)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_family(cls, family: str, **values: Any) -> BertConfig:
        """A config of ``family`` (a Hugging Face model_type) with the fields that family fixes."""
        if family not in FAMILIES:
            raise ConfigError(f"unknown model family '{family}'; valid families: {', '.join(FAMILIES)}")
        return cls(**{**FAMILIES[family]["fixed"], "family": family, **values})

    # ----------------------------------------------------------------- dict / YAML
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> BertConfig:
        """Build from bertcli field names (Hugging Face names are accepted as aliases)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of config fields, got {type(data).__name__}")
        data = dict(data)
        preset = data.pop("preset", None)
        arch = data.pop("arch", None)
        translated: dict[str, Any] = {}
        valid = {f.name for f in fields(cls)}
        for key, value in data.items():
            name = _HF_ALIASES.get(key, key) if key not in valid else key
            if name == "activation" and key == "hidden_act" and isinstance(value, str):
                value = _HF_ACT_IN.get(value, value)
            if name not in valid:
                raise ConfigError(
                    f"{source}: unknown key '{key}'; valid keys: arch, preset, {', '.join(sorted(valid))}"
                )
            translated[name] = value
        try:
            if arch is not None:
                translated = arch_values(str(arch), preset, translated)
                preset = None
            if preset is not None:
                return cls.preset(str(preset), **translated)
            return cls(**translated)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ----------------------------------------------------------------- Hugging Face
    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json") -> BertConfig:
        """Read a Hugging Face ``config.json`` dict of any supported family (other keys are ignored)."""
        model_type = hf.get("model_type", "bert")
        if not isinstance(model_type, str) or model_type not in FAMILIES:
            raise ConfigError(
                f"{source}: model_type is '{model_type}'; bertcli reads model_type {', '.join(FAMILIES)}"
            )
        fam = FAMILIES[model_type]
        pet = hf.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ConfigError(f"{source}: position_embedding_type '{pet}' is not supported; only 'absolute'")
        if hf.get("sinusoidal_pos_embds"):
            raise ConfigError(f"{source}: sinusoidal_pos_embds true is not supported; only learned positions")
        act_key = fam["act_key"]
        act = hf.get(act_key, "gelu")
        if not isinstance(act, str) or act not in _HF_ACT_IN:
            raise ConfigError(
                f"{source}: {act_key} '{act}' is not supported; valid values: {', '.join(_HF_ACT_IN)}"
            )
        if "prepare" in fam:  # a family's own config.json shapes, normalised before the name table
            hf = fam["prepare"](hf, source)
        values: dict[str, Any] = dict(fam["fixed"])
        for hf_key, name in fam["names"].items():
            if hf_key in hf and hf[hf_key] is not None:
                values[name] = hf[hf_key]
        values["activation"] = _HF_ACT_IN[act]
        if "read" in fam:
            fam["read"](hf, values, source)
        if values.get("pad_token_id") is None:
            values["pad_token_id"] = 0
        try:
            return cls(**values)
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``config.json`` fields for this shape, in the family's own names."""
        fam = FAMILIES[self.family]
        ours = asdict(self)
        ours["activation"] = _HF_ACT_OUT[self.activation]
        if "embedding_size" in fam["names"].values():
            ours["embedding_size"] = self.word_size
        if "num_hidden_groups" in fam["names"].values():
            ours["num_hidden_groups"] = self.num_hidden_groups or self.num_layers
        out: dict[str, Any] = {"model_type": self.family}
        out.update({hf_key: ours[name] for hf_key, name in fam["names"].items() if ours[name] is not None})
        out[fam["act_key"]] = ours["activation"]
        out.update(fam["hf_fixed"])
        if "write" in fam:
            fam["write"](self, out)
        if "extra" in fam:
            out.update(fam["extra"](self))
        out["tie_word_embeddings"] = True  # the MLM decoder is the word-embedding matrix
        return out


_HF_ALIASES = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_positions",
    "type_vocab_size": "type_vocab_size",
    "hidden_act": "activation",
    "layer_norm_eps": "layer_norm_eps",
    "hidden_dropout_prob": "hidden_dropout",
    "attention_probs_dropout_prob": "attention_dropout",
    "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range",
}

_DISTILBERT_NAMES = {
    "vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_layers", "n_heads": "num_heads",
    "hidden_dim": "intermediate_size", "max_position_embeddings": "max_positions", "dropout": "hidden_dropout",
    "attention_dropout": "attention_dropout", "pad_token_id": "pad_token_id",
    "initializer_range": "initializer_range", "seq_classif_dropout": "classifier_dropout",
}
_BERT_NAMES = {**{k: v for k, v in _HF_ALIASES.items() if k != "hidden_act"}, "classifier_dropout": "classifier_dropout"}
_ROBERTA_FIXED = {"position_scheme": "padding_offset", "cls_head": "dense", "cls_head_activation": "tanh",
                  "mlm_activation": "gelu"}
# model_type -> the family's config.json names (HF -> ours), its activation key, the fields it fixes,
# whether its factorised embeddings are projected even at E == H (ALBERT), and what to_hf adds.
_BERT_LIKE = {"act_key": "hidden_act", "always_project": False, "hf_fixed": {"position_embedding_type": "absolute"}}
FAMILIES: dict[str, dict[str, Any]] = {
    "bert": {**_BERT_LIKE, "names": _BERT_NAMES, "fixed": {}},
    "roberta": {**_BERT_LIKE, "names": _BERT_NAMES, "fixed": {"family": "roberta", **_ROBERTA_FIXED}},
    "xlm-roberta": {**_BERT_LIKE, "names": _BERT_NAMES, "fixed": {"family": "xlm-roberta", **_ROBERTA_FIXED}},
    "distilbert": {"names": _DISTILBERT_NAMES, "act_key": "activation", "always_project": False,
                   "fixed": {"family": "distilbert", "type_vocab_size": 0, "layer_norm_eps": 1e-12,
                             "cls_head": "dense", "cls_head_activation": "relu", "cls_head_input_dropout": False},
                   "hf_fixed": {"sinusoidal_pos_embds": False, "tie_weights_": True}},
    "albert": {**_BERT_LIKE, "always_project": True, "fixed": {"family": "albert"},
               "names": {**_BERT_NAMES, "classifier_dropout_prob": "classifier_dropout", "embedding_size": "embedding_size",
                         "num_hidden_groups": "num_hidden_groups", "inner_group_num": "inner_group_num"}},
    "electra": {**_BERT_LIKE, "names": {**_BERT_NAMES, "embedding_size": "embedding_size"},
                "fixed": {"family": "electra", "cls_head": "dense", "cls_head_activation": "gelu",
                          "mlm_activation": "gelu"}},
}



# ---- DeBERTa-v2 / v3 (model_type "deberta-v2"): its config.json spellings, read and written
_DEBERTA_NAMES = {**{k: v for k, v in _BERT_NAMES.items() if k != "classifier_dropout"},
                  "cls_dropout": "classifier_dropout", "embedding_size": "embedding_size",
                  "position_buckets": "position_buckets", "max_relative_positions": "max_relative_positions",
                  "share_att_key": "share_att_key", "position_biased_input": "position_biased_input"}
# DeBERTa-v3's shape of attention (the family's fields when built from scratch; config.json wins on load)
_DEBERTA_V3 = {"position_buckets": 256, "max_relative_positions": -1, "pos_att_type": ("c2p", "p2c"),
               "share_att_key": True, "norm_rel_ebd": True, "position_biased_input": False}


def _deberta_read(hf: dict[str, Any], values: dict[str, Any], source: str) -> None:
    """DeBERTa's config.json -> our fields, with transformers' defaults for absent keys."""
    if not hf.get("relative_attention", False):
        raise ConfigError(f"{source}: relative_attention false is not supported; bertcli reads DeBERTa-v2/v3 "
                          f"models with relative attention (every published one has it)")
    if (hf.get("conv_kernel_size") or 0) > 0:
        raise ConfigError(f"{source}: conv_kernel_size {hf['conv_kernel_size']} (DeBERTa-v2's convolution "
                          f"layer) is not supported; DeBERTa-v3 models have none")
    head = hf.get("attention_head_size")
    if head is not None and head * hf.get("num_attention_heads", 1) != hf.get("hidden_size"):
        raise ConfigError(f"{source}: attention_head_size {head} is not supported; only hidden_size / heads")
    if hf.get("pooler_hidden_size", hf.get("hidden_size")) != hf.get("hidden_size"):
        raise ConfigError(f"{source}: pooler_hidden_size != hidden_size is not supported")
    pat = hf.get("pos_att_type") or []
    if isinstance(pat, str):
        pat = [t.strip() for t in pat.lower().split("|") if t.strip()]
    if not isinstance(pat, list | tuple) or not all(t in POS_ATT_TYPES for t in pat):
        raise ConfigError(f"{source}: pos_att_type {pat!r} is not supported; valid entries: {', '.join(POS_ATT_TYPES)}")
    norm = [t.strip() for t in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
    act = hf.get("pooler_hidden_act", "gelu")
    if act not in _HF_ACT_IN and act != "tanh":
        raise ConfigError(f"{source}: pooler_hidden_act '{act}' is not supported; valid values: tanh, "
                          f"{', '.join(_HF_ACT_IN)}")
    values.update(pos_att_type=tuple(pat), norm_rel_ebd="layer_norm" in norm,
                  cls_head_activation=_HF_ACT_IN.get(act, act),
                  share_att_key=hf.get("share_att_key", False), position_buckets=hf.get("position_buckets", -1),
                  max_relative_positions=hf.get("max_relative_positions", -1),
                  position_biased_input=hf.get("position_biased_input", True))


def _deberta_write(config: BertConfig, out: dict[str, Any]) -> None:
    out.update(pos_att_type=list(config.pos_att_type), norm_rel_ebd="layer_norm" if config.norm_rel_ebd else "none",
               pooler_hidden_act=_HF_ACT_OUT.get(config.cls_head_activation, config.cls_head_activation),
               pooler_hidden_size=config.hidden_size, pooler_dropout=0.0)


FAMILIES["deberta-v2"] = {
    "names": _DEBERTA_NAMES, "act_key": "hidden_act", "always_project": False,
    "fixed": {"family": "deberta-v2", "position_scheme": "relative", "type_vocab_size": 0, "layer_norm_eps": 1e-7,
              "cls_head": "dense", "cls_head_activation": "gelu", "cls_head_input_dropout": False, **_DEBERTA_V3},
    # legacy: the MLM head transformers builds from cls.predictions.* (the names bertcli writes)
    "hf_fixed": {"relative_attention": True, "legacy": True},
    "read": _deberta_read, "write": _deberta_write,
}


# --- ModernBERT: its config.json names, its defaults (transformers' ModernBertConfig), and the two shapes
# transformers writes for the layer pattern and rotary bases (5.x: layer_types / rope_parameters; 4.x:
# global_attn_every_n_layers / global_rope_theta / local_rope_theta).
def _modernbert_read(hf: dict[str, Any], source: str) -> dict[str, Any]:
    hf = dict(hf)
    types_ = hf.get("layer_types")
    if isinstance(types_, list) and types_:
        n_layers = len(types_)
        every = next((n for n in range(1, n_layers + 1) if all(
            t == ("full_attention" if i % n == 0 else "sliding_attention") for i, t in enumerate(types_))), None)
        if every is None and all(t == "full_attention" for t in types_):
            every = 1
        if every is None:
            raise ConfigError(f"{source}: layer_types {types_} is not 'every n-th layer global' (the pattern "
                              f"bertcli runs: full_attention at layers 0, n, 2n, ...)")
        hf["global_attn_every_n_layers"] = every
    rope = hf.get("rope_parameters")
    if isinstance(rope, dict):
        for kind, key in (("full_attention", "global_rope_theta"), ("sliding_attention", "local_rope_theta")):
            params = rope.get(kind) or {}
            if params.get("rope_type", "default") != "default":
                raise ConfigError(f"{source}: rope_type '{params['rope_type']}' ({kind}) is not supported; "
                                  f"only 'default' rotary embeddings")
            if params.get("rope_theta") is not None:
                hf[key] = params["rope_theta"]
    if hf.get("rope_scaling"):
        raise ConfigError(f"{source}: rope_scaling is not supported; only 'default' rotary embeddings")
    act = hf.get("classifier_activation")
    if isinstance(act, str):
        hf["classifier_activation"] = _HF_ACT_IN.get(act, act)
    return hf


def _modernbert_write(config: BertConfig) -> dict[str, Any]:
    local = config.local_rope_theta or config.rope_theta
    return {
        "layer_types": ["full_attention" if config.layer_window(i) is None else "sliding_attention"
                        for i in range(config.num_layers)],
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": config.rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": local}},
        "global_attn_every_n_layers": config.global_attn_every_n_layers,
        "global_rope_theta": config.rope_theta, "local_rope_theta": local,
        "local_attention": config.local_attention or 2 * config.max_positions,
        "classifier_activation": _HF_ACT_OUT.get(config.cls_head_activation, config.cls_head_activation),
        "cls_token_id": None, "sep_token_id": None, "bos_token_id": None, "eos_token_id": None,
    }


FAMILIES["modernbert"] = {
    "act_key": "hidden_activation", "always_project": False, "hf_fixed": {}, "prepare": _modernbert_read,
    "extra": _modernbert_write,
    "names": {"vocab_size": "vocab_size", "hidden_size": "hidden_size", "num_hidden_layers": "num_layers",
              "num_attention_heads": "num_heads", "intermediate_size": "intermediate_size",
              "max_position_embeddings": "max_positions", "norm_eps": "layer_norm_eps",
              "embedding_dropout": "hidden_dropout", "mlp_dropout": "hidden_dropout",
              "attention_dropout": "attention_dropout", "classifier_dropout": "classifier_dropout",
              "pad_token_id": "pad_token_id", "initializer_range": "initializer_range",
              "norm_bias": "norm_bias", "attention_bias": "attention_bias", "mlp_bias": "mlp_bias",
              "classifier_bias": "head_bias", "decoder_bias": "decoder_bias",
              "classifier_activation": "cls_head_activation", "classifier_pooling": "classifier_pooling",
              "local_attention": "local_attention", "global_attn_every_n_layers": "global_attn_every_n_layers",
              "global_rope_theta": "rope_theta", "local_rope_theta": "local_rope_theta"},
    "fixed": {"family": "modernbert", "position_scheme": "rotary", "type_vocab_size": 0, "norm_placement": "pre",
              "mlp_kind": "glu", "cls_head": "prediction", "cls_head_activation": "gelu", "layer_norm_eps": 1e-5,
              "hidden_dropout": 0.0, "attention_dropout": 0.0, "classifier_dropout": 0.0,
              "attention_bias": False, "mlp_bias": False, "norm_bias": False, "head_bias": False,
              "decoder_bias": True, "local_attention": 128, "global_attn_every_n_layers": 3,
              "rope_theta": 160000.0, "local_rope_theta": 10000.0, "max_positions": 8192},
}

# pretrain --arch: the family and its preset shape (a --preset / model: fields win over the shape)
ARCHS: dict[str, dict[str, Any]] = {
    "bert": {"family": "bert"},
    "roberta": {"family": "roberta", "type_vocab_size": 1, "layer_norm_eps": 1e-5},
    "albert": {"family": "albert", "embedding_size": 128, "num_hidden_groups": 1, "activation": "gelu_tanh"},
    # ELECTRA-small's shape (discriminator): 12 layers, hidden 256, 4 heads, embeddings 128
    "electra": {"family": "electra", "embedding_size": 128, "num_layers": 12, "hidden_size": 256, "num_heads": 4,
                "intermediate_size": 1024},
    "distilbert": {"family": "distilbert"},
    # DeBERTa-v3-small's shape: 6 layers, hidden 768, 12 heads, 256 position buckets
    "deberta": {"family": "deberta-v2", "num_layers": 6, "hidden_size": 768, "num_heads": 12,
                "intermediate_size": 3072},
    # a small ModernBERT (ModernBERT-base's proportions: GeGLU intermediate 1.5 x hidden, every 3rd layer
    # global, a 128-token window, 8,192 positions) at 10 layers x hidden 384
    "modernbert": {"family": "modernbert", "num_layers": 10, "hidden_size": 384, "num_heads": 6,
                   "intermediate_size": 576},
}
# hidden -> intermediate for a --preset shape, per family (4 x hidden otherwise)
_INTERMEDIATE_RATIO = {"modernbert": 1.5}
_SHAPE_FIELDS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


def arch_values(arch: str, preset: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """Config fields for ``pretrain --arch``: the family's fixed fields, then the arch preset, then
    ``preset`` (its shape replaces the arch's), then ``values``."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch '{arch}'; valid: {', '.join(ARCHS)}")
    out = {**FAMILIES[ARCHS[arch]["family"]]["fixed"], **ARCHS[arch]}
    if preset is None and not any(k in out or k in values for k in _SHAPE_FIELDS):
        preset = "mini"  # as pretrain without --arch
    if preset is not None or any(k in values for k in _SHAPE_FIELDS):
        out = {k: v for k, v in out.items() if k not in _SHAPE_FIELDS}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset '{preset}'; valid presets: {', '.join(PRESETS)}")
        layers, hidden = PRESETS[preset]
        ratio = _INTERMEDIATE_RATIO.get(ARCHS[arch]["family"], 4)
        out.update(num_layers=layers, hidden_size=hidden, num_heads=max(1, hidden // 64),
                   intermediate_size=int(ratio * hidden))
    out.update(values)
    if out.get("position_scheme") == "padding_offset" and "max_positions" not in values:
        out["max_positions"] = 512 + int(out.get("pad_token_id", 0)) + 1  # 512 tokens past the pad id
    return out


# name -> (layers, hidden); heads = hidden / 64, intermediate = 4 * hidden
PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
    "large": (24, 1024),
}


# --------------------------------------------------------------------- type checks
def _check_types(obj: Any, where: str) -> None:
    """Check dataclass field values against their annotations, naming the field on error.

    ints are accepted for float fields (and converted); bools are not accepted as numbers.
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        expected = hints.get(f.name, Any)
        ok, converted = _conforms(value, expected)
        if not ok:
            raise ConfigError(
                f"{where} field '{f.name}' must be {_type_name(expected)}, got {_short_repr(value)} "
                f"({type(value).__name__})"
            )
        if converted is not value:
            object.__setattr__(obj, f.name, converted)


def _short_repr(value: Any) -> str:
    """A bounded repr: a hostile YAML value (nested aliases, 'billion laughs') must not be expanded."""
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 2, 4, 4, 4, 80, 80
    return r.repr(value)


def _conforms(value: Any, expected: Any) -> tuple[bool, Any]:
    if expected is Any:
        return True, value
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(expected):
            ok, conv = _conforms(value, arg)
            if ok:
                return True, conv
        return False, value
    if origin is typing.Literal:
        return (value in typing.get_args(expected)), value
    if expected is type(None):
        return value is None, value
    if expected is bool:
        return isinstance(value, bool), value
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if expected is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, int | float):
            return True, float(value)
        return False, value
    if expected is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        return isinstance(value, list | tuple), value
    if origin is dict or expected is dict:
        return isinstance(value, dict), value
    if isinstance(expected, type):
        return isinstance(value, expected), value
    return True, value


def _type_name(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(expected))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(expected))
    if expected is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        expected, getattr(expected, "__name__", str(expected))
    )


def check_options(obj: Any) -> None:
    """Validate a training-option dataclass's field types (call from ``__post_init__``)."""
    _check_types(obj, type(obj).__name__)


def options_from_dict(cls: type, data: dict[str, Any], source: str) -> Any:
    """Build an option dataclass from a mapping, naming unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(data).__name__}")
    valid = {f.name for f in fields(cls)}
    for key in data:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key '{key}'; valid keys: {', '.join(sorted(valid))}")
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def merge_options(obj: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of ``obj`` with the non-None ``overrides`` applied (CLI flags win over YAML)."""
    return dataclasses.replace(obj, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------- YAML
class _StrictSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also refuses duplicate keys."""


def _construct_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):  # unhashable: a sequence or mapping used as a key
            mark = key_node.start_mark
            raise ConfigError(f"{mark.name}, line {mark.line + 1}: a key must be a plain name, not a "
                              f"{'list' if isinstance(key, list) else 'mapping'}")
        if key in mapping:
            mark = key_node.start_mark
            raise ConfigError(
                f"{mark.name}, line {mark.line + 1}: duplicate key '{key}'; each key may appear once"
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 reads 1e-4 (no dot) as a string; read it as the number everyone means (as YAML 1.2 does).
_StrictSafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping safely (no Python tags, no duplicate keys) with located errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {exc.start}; save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        # A SafeLoader subclass: only plain YAML types are ever constructed.
        data = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("<unicode string>", str(path))) from None
    except RecursionError:
        raise ConfigError(f"{path}: the YAML is nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark else "somewhere"
        raise ConfigError(
            f"{path}, {where}: {exc.problem}; bertcli reads plain YAML only (no Python tags)"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}, {where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def read_json(path: Path, error: type = ConfigError) -> Any:
    """Read a JSON file with a located error message."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise error(f"{path}: the JSON is nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise error(f"{path}: invalid JSON: {exc}") from None
