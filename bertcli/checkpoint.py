"""Checkpoint directories: the Hugging Face layout, read and written safely.

A checkpoint directory holds ``config.json`` (Hugging Face BERT config plus a ``bertcli``
block), ``model.safetensors`` (Hugging Face parameter names), the tokenizer files, and for
sentence-embedding models ``modules.json`` + ``1_Pooling/config.json``. Nothing is read or
written with pickle. Every ``model.safetensors`` header is validated before any tensor is
touched, so a hostile or corrupt file is refused quickly and without large allocations.

Writes go to a temporary sibling directory that is renamed into place; an existing directory
is replaced only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertcli.config import BertConfig, read_json
from bertcli.errors import CheckpointError

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_TENSORS = 10_000  # a BERT has a few hundred; the cap bounds the memory a hostile header costs

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


# ============================================================ safetensors, validated
def read_safetensors_header(path: Path) -> dict[str, Any]:
    """Validate a safetensors file's header and return it (without ``__metadata__``).

    Refuses: impossible header lengths, truncated or non-JSON headers, invalid UTF-8, duplicate
    names, unknown dtypes, bad shapes, offsets outside the data, overlapping or gapped tensors,
    sizes that do not match shape x dtype, and trailing bytes.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes); the file is truncated")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: corrupt safetensors header: it claims {n} bytes but the file has {size - 8} "
                    f"after the length field; the file is truncated or not a safetensors file"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc.strerror})") from None
    if not raw.startswith(b"{"):
        raise CheckpointError(f"{path}: corrupt safetensors header: it does not start with '{{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header: invalid UTF-8 at byte {8 + exc.start}") from None

    # Refuse huge headers before building Python objects for them (bounded memory): a cheap count
    # first, then a hard cap while parsing (the count can be dodged with JSON escapes).
    if raw.count(b'"data_offsets"') > MAX_TENSORS:
        raise CheckpointError(f"{path}: safetensors header lists more than {MAX_TENSORS} tensors")
    objects = 0

    def no_duplicates(pairs):
        nonlocal objects
        objects += 1
        if objects > MAX_TENSORS + 2:  # the tensor entries, __metadata__ and the header itself
            raise CheckpointError(f"{path}: safetensors header lists more than {MAX_TENSORS} tensors")
        out = {}
        for k, v in pairs:
            if k in out:
                raise CheckpointError(f"{path}: corrupt safetensors header: tensor '{k}' appears twice")
            out[k] = v
        return out

    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: corrupt safetensors header: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: corrupt safetensors header: nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise CheckpointError(f"{path}: corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{path}: safetensors header lists {len(header)} tensors (limit {MAX_TENSORS})")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor '{name}'"
        if not isinstance(info, dict) or set(info) - {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: malformed header entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPE_SIZES:  # a list or object: not a dtype
            raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**40 for d in shape):
            raise CheckpointError(f"{where}: invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_len):
            raise CheckpointError(f"{where}: data offsets {offsets!r} lie outside the {data_len}-byte data block")
        numel = 0 if 0 in shape else 1  # an empty tensor, whatever its other dimensions
        for d in shape:
            if numel * _DTYPE_SIZES[dtype] > data_len:
                break  # already too large for the file: stop before the product grows without bound
            numel *= d
        if numel * _DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
            raise CheckpointError(
                f"{where}: shape {shape} x {dtype} needs {numel * _DTYPE_SIZES[dtype]} bytes "
                f"but its offsets span {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    end = 0
    for start, stop, name in spans:
        if start != end:
            kind = "overlaps the previous tensor" if start < end else "leaves a gap before it"
            raise CheckpointError(f"{path}: corrupt safetensors file: tensor '{name}' {kind}")
        end = stop
    if end != data_len:
        raise CheckpointError(
            f"{path}: corrupt safetensors file: {data_len - end} trailing bytes after the last tensor"
        )
    return header


def read_weights(path: Path) -> dict[str, Any]:
    """Load tensors from a validated safetensors file (never pickle)."""
    from safetensors.torch import load_file

    read_safetensors_header(path)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: cannot load weights: {exc}") from None


def write_weights(tensors: dict[str, Any], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    try:
        save_file(tensors, str(path), metadata=metadata or {"format": "pt"})
    except OSError:
        raise
    except Exception as exc:  # safetensors wraps I/O failures (disk full, ...) in its own error type
        m = re.search(r"os error (\d+)", str(exc))
        if m is None:
            raise
        code = int(m.group(1))
        raise OSError(code, os.strerror(code), str(path)) from None


# ============================================================ name mapping
# One table per family: ours <-> Hugging Face, read both ways. Our names are the same for every
# family (``bert.`` encoder, ``layers.{k}`` for the k-th built layer, heads by attribute name).
def _wb(ours: str, hf: str) -> list[tuple[str, str]]:
    return [(f"{ours}.weight", f"{hf}.weight"), (f"{ours}.bias", f"{hf}.bias")]


def _pairs(*modules: tuple[str, str]) -> list[tuple[str, str]]:
    return [pair for ours, hf in modules for pair in _wb(ours, hf)]


@dataclass(frozen=True)
class FamilyNames:
    """A family's Hugging Face names: prefix, embeddings/pooler, one layer, heads, architectures."""

    prefix: str  # the encoder's attribute in *For* models: bert., roberta., ...
    classes: str  # architectures prefix: Bert -> BertForMaskedLM, ...
    encoder: list[tuple[str, str]]  # (ours under bert., HF under the prefix)
    layer: str  # HF path of built layer {i} (ALBERT: {g} group, {j} layer in it)
    qkv: tuple[str, str, str]  # HF query, key, value module names inside a layer
    layer_map: list[tuple[str, str]]
    heads: list[tuple[str, str]]  # (ours, HF) at the top level; several HF names may read into one of ours
    dense_heads: list[tuple[str, str]] = field(default_factory=list)  # written instead when pre_classifier exists
    decoder: str = ""  # the tied MLM decoder weight (not ours to keep: it is the word embeddings)
    pretraining: tuple[str, ...] = ("mlm", "nsp")  # heads of *ForPreTraining; () = the family has none
    ignored: tuple[str, ...] = ()  # HF names (prefixes) the family's checkpoints may carry that bertcli drops
    # where one HF name means different heads by task (ModernBERT's head.* / classifier.*): the heads read
    # for each architecture suffix (ForMaskedLM, ...) instead of ``heads``
    heads_by_architecture: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def layer_name(self, i: int, inner: int) -> str:
        return self.layer.format(i=i, g=i // inner, j=i % inner)


_EMBEDDINGS = _pairs(("embeddings.norm", "embeddings.LayerNorm")) + [
    ("embeddings.word.weight", "embeddings.word_embeddings.weight"),
    ("embeddings.position.weight", "embeddings.position_embeddings.weight"),
    ("embeddings.token_type.weight", "embeddings.token_type_embeddings.weight"),
]
_POOLER = _pairs(("pooler.dense", "pooler.dense"))
_BERT_LAYER = _pairs(("attn.out", "attention.output.dense"), ("attn.norm", "attention.output.LayerNorm"),
                     ("ffn.up", "intermediate.dense"), ("ffn.down", "output.dense"),
                     ("ffn.norm", "output.LayerNorm"))
_SPAN = _pairs(("classifier", "classifier"), ("qa", "qa_outputs"))
_DENSE_CLS = _pairs(("pre_classifier", "classifier.dense"), ("classifier", "classifier.out_proj"))
_ROBERTA = dict(
    prefix="roberta", encoder=_EMBEDDINGS + _POOLER, layer="encoder.layer.{i}.",
    qkv=("attention.self.query", "attention.self.key", "attention.self.value"), layer_map=_BERT_LAYER,
    heads=_pairs(("mlm.dense", "lm_head.dense"), ("mlm.norm", "lm_head.layer_norm")) + [
        ("mlm.bias", "lm_head.bias"), ("mlm.bias", "lm_head.decoder.bias")] + _SPAN + _DENSE_CLS,
    dense_heads=_DENSE_CLS, decoder="lm_head.decoder.weight", pretraining=(),
)
FAMILY_NAMES: dict[str, FamilyNames] = {
    "bert": FamilyNames(
        prefix="bert", classes="Bert", encoder=_EMBEDDINGS + _POOLER, layer="encoder.layer.{i}.",
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"), layer_map=_BERT_LAYER,
        heads=_pairs(("mlm.dense", "cls.predictions.transform.dense"),
                     ("mlm.norm", "cls.predictions.transform.LayerNorm"), ("nsp", "cls.seq_relationship"))
        + [("mlm.bias", "cls.predictions.bias"), ("mlm.bias", "cls.predictions.decoder.bias")] + _SPAN,
        decoder="cls.predictions.decoder.weight",
    ),
    "roberta": FamilyNames(classes="Roberta", **_ROBERTA),
    "xlm-roberta": FamilyNames(classes="XLMRoberta", **_ROBERTA),
    "distilbert": FamilyNames(
        prefix="distilbert", classes="DistilBert", layer="transformer.layer.{i}.",
        encoder=[p for p in _EMBEDDINGS if "token_type" not in p[0]],
        qkv=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        layer_map=_pairs(("attn.out", "attention.out_lin"), ("attn.norm", "sa_layer_norm"), ("ffn.up", "ffn.lin1"),
                         ("ffn.down", "ffn.lin2"), ("ffn.norm", "output_layer_norm")),
        heads=_pairs(("mlm.dense", "vocab_transform"), ("mlm.norm", "vocab_layer_norm"),
                     ("pre_classifier", "pre_classifier")) + [("mlm.bias", "vocab_projector.bias")] + _SPAN,
        decoder="vocab_projector.weight", pretraining=(),
    ),
    "albert": FamilyNames(
        prefix="albert", classes="Albert", layer="encoder.albert_layer_groups.{g}.albert_layers.{j}.",
        encoder=_EMBEDDINGS + _pairs(("pooler.dense", "pooler"),
                                     ("embeddings.project", "encoder.embedding_hidden_mapping_in")),
        qkv=("attention.query", "attention.key", "attention.value"),
        layer_map=_pairs(("attn.out", "attention.dense"), ("attn.norm", "attention.LayerNorm"), ("ffn.up", "ffn"),
                         ("ffn.down", "ffn_output"), ("ffn.norm", "full_layer_layer_norm")),
        heads=_pairs(("mlm.dense", "predictions.dense"), ("mlm.norm", "predictions.LayerNorm"),
                     ("nsp", "sop_classifier.classifier"))
        + [("mlm.bias", "predictions.bias"), ("mlm.bias", "predictions.decoder.bias")] + _SPAN,
        decoder="predictions.decoder.weight",
    ),
    "electra": FamilyNames(
        prefix="electra", classes="Electra", layer="encoder.layer.{i}.",
        encoder=_EMBEDDINGS + _pairs(("embeddings.project", "embeddings_project")),
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"), layer_map=_BERT_LAYER,
        heads=_pairs(("mlm.dense", "generator_predictions.dense"), ("mlm.norm", "generator_predictions.LayerNorm"),
                     ("rtd.dense", "discriminator_predictions.dense"),
                     ("rtd.out", "discriminator_predictions.dense_prediction"))
        + [("mlm.bias", "generator_lm_head.bias")] + _SPAN + _DENSE_CLS,
        dense_heads=_DENSE_CLS, decoder="generator_lm_head.weight", pretraining=("rtd",),
    ),
}
# DeBERTa-v2/v3: separate q/k/v projections (fused here), the relative table in the encoder, the
# pos_key / pos_query projections when share_att_key is false, the context pooler as pre_classifier,
# and both MLM heads transformers has (legacy cls.predictions.*, written; lm_predictions.lm_head.*, read).
_DEBERTA_CLS = _pairs(("pre_classifier", "pooler.dense"), ("classifier", "classifier"))
FAMILY_NAMES["deberta-v2"] = FamilyNames(
    prefix="deberta", classes="DebertaV2", layer="encoder.layer.{i}.",
    encoder=_EMBEDDINGS + [
        ("embeddings.project.weight", "embeddings.embed_proj.weight"),
        ("relative.embeddings.weight", "encoder.rel_embeddings.weight")] + _pairs(("relative.norm", "encoder.LayerNorm")),
    qkv=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
    layer_map=_BERT_LAYER + _pairs(("attn.pos_key", "attention.self.pos_key_proj"),
                                   ("attn.pos_query", "attention.self.pos_query_proj")),
    heads=_pairs(("mlm.dense", "cls.predictions.transform.dense"), ("mlm.norm", "cls.predictions.transform.LayerNorm"),
                 ("mlm.dense", "lm_predictions.lm_head.dense"), ("mlm.norm", "lm_predictions.lm_head.LayerNorm"))
    + [("mlm.bias", "cls.predictions.bias"), ("mlm.bias", "cls.predictions.decoder.bias"),
       ("mlm.bias", "lm_predictions.lm_head.bias")] + _SPAN + _DEBERTA_CLS,
    dense_heads=_DEBERTA_CLS, decoder="cls.predictions.decoder.weight", pretraining=(),
    ignored=("mask_predictions.",),  # the replaced-token head of microsoft's v3 checkpoints
)
# ModernBERT: fused Wqkv, pre-norm layers, a final norm, no biases (the bias rows match nothing then);
# its head.dense / head.norm are the MLM head's in ForMaskedLM and the classifier head's otherwise, and
# its span classifier is named classifier too.
_MODERN_HEAD = _pairs(("head.dense", "head.dense"), ("head.norm", "head.norm"))
_MODERN_MLM = _pairs(("mlm.dense", "head.dense"), ("mlm.norm", "head.norm")) + [("mlm.bias", "decoder.bias")]
FAMILY_NAMES["modernbert"] = FamilyNames(
    prefix="model", classes="ModernBert", layer="layers.{i}.", qkv=(),
    encoder=[("embeddings.word.weight", "embeddings.tok_embeddings.weight")]
    + _pairs(("embeddings.norm", "embeddings.norm"), ("final_norm", "final_norm")),
    layer_map=_pairs(("attn_norm", "attn_norm"), ("attn.qkv", "attn.Wqkv"), ("attn.out", "attn.Wo"),
                     ("ffn_norm", "mlp_norm"), ("ffn.up", "mlp.Wi"), ("ffn.down", "mlp.Wo")),
    heads=_MODERN_MLM + _MODERN_HEAD + _pairs(("classifier", "classifier"), ("qa", "classifier")),
    decoder="decoder.weight", pretraining=(),
    heads_by_architecture={
        "ForMaskedLM": _MODERN_MLM, "Model": [],
        "ForSequenceClassification": _MODERN_HEAD + _pairs(("classifier", "classifier")),
        "ForTokenClassification": _MODERN_HEAD + _pairs(("classifier", "classifier")),
        "ForQuestionAnswering": _MODERN_HEAD + _pairs(("qa", "classifier")),
    },
)
_QKV = ("query", "key", "value")
# Hugging Face names that carry no weights we need (buffers).
_IGNORED_HF = re.compile(r"(^|\.)(position_ids|token_type_ids)$")


def family_names(config: BertConfig | None) -> FamilyNames:
    return FAMILY_NAMES[config.family if config is not None else "bert"]


def hf_to_ours(hf_state: dict[str, Any], source: str = "weights", config: BertConfig | None = None,
               architecture: str | None = None) -> dict[str, Any]:
    """Map a Hugging Face state dict of ``config``'s family (any head, with or without the encoder
    prefix) to bertcli names. ``architecture`` (config.json's) tells the heads apart where the family
    names them alike.

    Encoder tensors land under ``bert.``; heads under ``mlm.``, ``nsp.``, ``pre_classifier.``,
    ``classifier.``, ``qa.``, ``rtd.``. Separate query/key/value projections are fused into ``qkv``.
    """
    import torch

    fam = family_names(config)
    inner_n = config.inner_group_num if config is not None else 1
    heads = {hf: ours for ours, hf in fam.heads}
    if fam.heads_by_architecture:
        kind = next((k for k in fam.heads_by_architecture if architecture and architecture == fam.classes + k), None)
        if kind is None:  # no (known) architecture: classifier weights mean a sequence classifier
            kind = ("ForSequenceClassification" if any(n.startswith("classifier.") for n in hf_state)
                    else "ForMaskedLM")
        heads = {hf: ours for ours, hf in fam.heads_by_architecture[kind]}
    encoder = {hf: ours for ours, hf in fam.encoder}
    layer_re = re.compile(re.escape(fam.layer).replace(r"\{i\}", r"(?P<i>\d+)")
                          .replace(r"\{g\}", r"(?P<g>\d+)").replace(r"\{j\}", r"(?P<j>\d+)") + "(.+)")
    layer_map = {hf: ours for ours, hf in fam.layer_map}
    qkv_re = re.compile("(" + "|".join(re.escape(q) for q in fam.qkv) + r")\.(weight|bias)" if fam.qkv else "(?!)")
    ours: dict[str, Any] = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    unknown = []
    decoder = None
    for name in hf_state:
        tensor = hf_state[name]
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if _IGNORED_HF.search(name) or name.startswith(fam.ignored):
            continue
        if name == fam.decoder:
            decoder = tensor
            continue
        if name in heads:
            ours.setdefault(heads[name], tensor)
            continue
        inner = name[len(fam.prefix) + 1:] if name.startswith(fam.prefix + ".") else name
        if inner in encoder:
            ours["bert." + encoder[inner]] = tensor
            continue
        m = layer_re.fullmatch(inner)
        if m:
            d = m.groupdict()
            i = int(d["i"]) if d.get("i") is not None else int(d["g"]) * inner_n + int(d["j"])
            rest = m.group(m.lastindex)
            q = qkv_re.fullmatch(rest)
            if q:
                qkv.setdefault((i, q.group(2)), {})[_QKV[fam.qkv.index(q.group(1))]] = tensor
                continue
            if rest in layer_map:
                ours[f"bert.layers.{i}.{layer_map[rest]}"] = tensor
                continue
        unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise CheckpointError(f"{source}: unexpected tensor names (not a {fam.classes} checkpoint?): {shown}")
    for (i, kind), parts in qkv.items():
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise CheckpointError(f"{source}: layer {i} lacks {fam.qkv[_QKV.index(missing[0])]}.{kind}")
        ours[f"bert.layers.{i}.attn.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    words = ours.get("bert.embeddings.word.weight")
    if decoder is not None and words is not None and not (
        decoder.shape == words.shape and torch.equal(decoder.to(words.dtype), words)
    ):
        # An untied MLM decoder (tie_word_embeddings false): bertcli's MLM head is always tied, so
        # using it would give wrong logits. Keep the encoder; treat the checkpoint as having no MLM head.
        for key in [k for k in ours if k.startswith("mlm.")]:
            del ours[key]
    return ours


def ours_to_hf(state: dict[str, Any], prefix: bool, config: BertConfig | None = None) -> dict[str, Any]:
    """Map bertcli names to ``config``'s family's Hugging Face names; ``prefix`` puts the encoder
    under the family's prefix (``bert.``, ``roberta.``, ...)."""
    fam = family_names(config)
    inner_n = config.inner_group_num if config is not None else 1
    heads: dict[str, str] = {}
    if "pre_classifier.weight" in state:
        heads.update(dict(fam.dense_heads))
    for ours_name, hf in fam.heads:
        heads.setdefault(ours_name, hf)
    encoder = dict(fam.encoder)
    layer_map = dict(fam.layer_map)
    out: dict[str, Any] = {}
    pre = fam.prefix + "." if prefix else ""
    for name, tensor in state.items():
        if name in heads:
            out[heads[name]] = tensor
            continue
        inner = name[5:] if name.startswith("bert.") else None
        if inner in encoder:
            out[pre + encoder[inner]] = tensor
            continue
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", inner or "")
        if not m or (m.group(2) not in layer_map and not m.group(2).startswith("attn.qkv.")):
            raise CheckpointError(f"internal: no {fam.classes} name for parameter '{name}'")
        layer = pre + fam.layer_name(int(m.group(1)), inner_n)
        q = re.fullmatch(r"attn\.qkv\.(weight|bias)", m.group(2)) if fam.qkv else None
        if q:
            for part, chunk in zip(fam.qkv, tensor.chunk(3, dim=0), strict=True):
                out[f"{layer}{part}.{q.group(1)}"] = chunk
        else:
            out[layer + layer_map[m.group(2)]] = tensor
    return out


def heads_in(state: dict[str, Any]) -> set[str]:
    """Which parts a bertcli-named state holds: 'pooler', 'mlm', 'nsp', 'pre_classifier', 'classifier',
    'qa', 'rtd'."""
    parts = {n.split(".")[0] for n in state if not n.startswith("bert.")}
    if "bert.pooler.dense.weight" in state:
        parts.add("pooler")
    return parts


def architecture_for(state: dict[str, Any], task: str | None = None, family: str = "bert") -> str:
    """The family's transformers class for these weights (``RobertaForSequenceClassification``, ...)."""
    fam = FAMILY_NAMES[family]
    parts = heads_in(state)
    if "qa" in parts:
        kind = "ForQuestionAnswering"
    elif "classifier" in parts:
        token = task == "token-classification" or (task is None and not parts & {"pooler", "pre_classifier"})
        kind = "ForTokenClassification" if token else "ForSequenceClassification"
    elif fam.pretraining and set(fam.pretraining) <= parts:
        kind = "ForPreTraining"
    elif "mlm" in parts:
        kind = "ForMaskedLM"
    else:
        kind = "Model"
    return fam.classes + kind


# ============================================================ checkpoint directories
@dataclass
class Checkpoint:
    """What ``load_checkpoint`` read: config, weights under bertcli names, and metadata."""

    path: Path
    config: BertConfig
    hf_config: dict[str, Any]
    state: dict[str, Any]
    bertcli: dict[str, Any] = field(default_factory=dict)
    sentence: dict[str, Any] | None = None  # {"pooling": ..., "normalize": ..., "max_seq_length": ...}

    @property
    def heads(self) -> set[str]:
        return heads_in(self.state)

    @property
    def id2label(self) -> dict[int, str] | None:
        raw = self.hf_config.get("id2label")
        if not raw:
            return None
        return {int(k): v for k, v in raw.items()}


def _refuse_pickle(path: Path) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path}: has {pickles[0]} but no {WEIGHTS_NAME}; bertcli never loads pickle files (unpickling "
            f"can run code). Convert it once, in an environment you trust: python -c \"from transformers "
            f"import AutoModel as M; M.from_pretrained('{path}').save_pretrained('{path}')\""
        )


def check_model_dir(path: str | Path) -> Path:
    """The checkpoint directory ``--model`` names: a path, or a name in the Hugging Face cache (bertcli.hub)."""
    from bertcli.hub import resolve_model

    path = resolve_model(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not path.is_dir():
        raise CheckpointError(f"{path}: is a file; --model takes a checkpoint directory")
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"{path}: no config.json; a checkpoint directory holds config.json, {WEIGHTS_NAME} and the tokenizer"
        )
    return path


def load_checkpoint(path: str | Path, weights: bool = True) -> Checkpoint:
    """Read a checkpoint directory (bertcli's or Hugging Face's) and check it for consistency.

    A PEFT LoRA adapter directory reads as its base model with the adapter merged (``bertcli.lora``)."""
    if (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file():
        from bertcli.lora import load_adapter

        return load_adapter(path, weights=weights)
    path = check_model_dir(path)
    hf = read_json(path / "config.json", CheckpointError)
    if not isinstance(hf, dict):
        raise CheckpointError(f"{path / 'config.json'}: expected a JSON object")
    try:
        config = BertConfig.from_hf(hf, source=str(path / "config.json"))
    except Exception as exc:
        raise CheckpointError(str(exc)) from None
    for key in ("bertcli", "id2label"):
        if hf.get(key) is not None and not isinstance(hf[key], dict):
            raise CheckpointError(f"{path / 'config.json'}: '{key}' must be a JSON object")
    if isinstance(hf.get("id2label"), dict) and not all(str(k).lstrip("-").isdigit() for k in hf["id2label"]):
        raise CheckpointError(f"{path / 'config.json'}: the keys of 'id2label' must be label numbers (\"0\", \"1\", ...)")
    state: dict[str, Any] = {}
    if weights:
        wfile = path / WEIGHTS_NAME
        if not wfile.is_file():
            _refuse_pickle(path)
            raise CheckpointError(f"{path}: no {WEIGHTS_NAME}; is this a checkpoint directory?")
        arch = (hf.get("architectures") or [None])[0] if isinstance(hf.get("architectures"), list) else None
        state = hf_to_ours(read_weights(wfile), source=str(wfile), config=config, architecture=arch)
        check_shapes(state, config, str(wfile))
    return Checkpoint(
        path=path, config=config, hf_config=hf, state=state,
        bertcli=hf.get("bertcli") or {}, sentence=read_sentence_config(path),
    )


def _built_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of the modules bertcli builds for ``config`` (on the meta device: no memory)."""
    import torch

    from bertcli.heads import BertForPreTraining, BertForSequenceClassification

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in BertForPreTraining(config, nsp=False).state_dict().items()}
        shapes.update({k: tuple(v.shape) for k, v in BertForSequenceClassification(config, 2).state_dict().items()
                       if not k.startswith("classifier.")})
    shapes.update({"qa.weight": (2, config.hidden_size), "qa.bias": (2,)})
    return shapes


def expected_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    if config.norm_placement == "pre":  # ModernBERT's modules: read the shapes off the built model
        return _built_shapes(config)
    H, inter, E = config.hidden_size, config.intermediate_size, config.word_size
    shapes: dict[str, tuple[int, ...]] = {
        "bert.embeddings.word.weight": (config.vocab_size, E),
        "bert.embeddings.position.weight": (config.max_positions, E),
        "bert.embeddings.norm.weight": (E,), "bert.embeddings.norm.bias": (E,),
        "bert.pooler.dense.weight": (H, H), "bert.pooler.dense.bias": (H,),
        "mlm.dense.weight": (E, H), "mlm.dense.bias": (E,), "mlm.norm.weight": (E,), "mlm.norm.bias": (E,),
        "mlm.bias": (config.vocab_size,), "nsp.weight": (2, H), "nsp.bias": (2,),
        "qa.weight": (2, H), "qa.bias": (2,), "pre_classifier.weight": (H, H), "pre_classifier.bias": (H,),
        "rtd.dense.weight": (H, H), "rtd.dense.bias": (H,), "rtd.out.weight": (1, H), "rtd.out.bias": (1,),
    }
    if config.type_vocab_size:
        shapes["bert.embeddings.token_type.weight"] = (config.type_vocab_size, E)
    if config.embedding_size is not None:
        shapes["bert.embeddings.project.weight"] = (H, E)
        shapes["bert.embeddings.project.bias"] = (H,)
    if config.position_scheme == "relative":
        _relative_shapes(config, shapes)
    for i in range(config.num_built_layers):
        p = f"bert.layers.{i}."
        if config.position_scheme == "relative" and not config.share_att_key:
            for term, name in (("c2p", "pos_key"), ("p2c", "pos_query")):
                if term in config.pos_att_type:
                    shapes.update({f"{p}attn.{name}.weight": (H, H), f"{p}attn.{name}.bias": (H,)})
        shapes.update({
            p + "attn.qkv.weight": (3 * H, H), p + "attn.qkv.bias": (3 * H,),
            p + "attn.out.weight": (H, H), p + "attn.out.bias": (H,),
            p + "attn.norm.weight": (H,), p + "attn.norm.bias": (H,),
            p + "ffn.up.weight": (inter, H), p + "ffn.up.bias": (inter,),
            p + "ffn.down.weight": (H, inter), p + "ffn.down.bias": (H,),
            p + "ffn.norm.weight": (H,), p + "ffn.norm.bias": (H,),
        })
    return shapes


def _relative_shapes(config: BertConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """DeBERTa: the embedding LayerNorm is on H, the projection has no bias, no absolute table unless
    position_biased_input, and the relative table (2S, H) with its LayerNorm (norm_rel_ebd)."""
    H, E = config.hidden_size, config.word_size
    shapes.update({"bert.embeddings.norm.weight": (H,), "bert.embeddings.norm.bias": (H,),
                   "bert.relative.embeddings.weight": (2 * config.relative_span, H)})
    shapes.pop("bert.embeddings.project.bias", None)
    if config.embedding_size is not None:
        shapes["bert.embeddings.project.weight"] = (H, E)
    if not config.position_biased_input:
        del shapes["bert.embeddings.position.weight"]
    if config.norm_rel_ebd:
        shapes.update({"bert.relative.norm.weight": (H,), "bert.relative.norm.bias": (H,)})


_FRIENDLY = {
    "bert.embeddings.word.weight": ("vocab_size", 0),
    "bert.embeddings.position.weight": ("max_position_embeddings", 0),
    "bert.embeddings.token_type.weight": ("type_vocab_size", 0),
}


def check_shapes(state: dict[str, Any], config: BertConfig, source: str) -> None:
    """Every tensor has the shape config.json implies; the encoder is complete. All problems listed."""
    shapes = expected_shapes(config)
    problems = []
    for name, tensor in state.items():
        if name.startswith("classifier."):
            continue  # size depends on the label count; checked by the task
        if name.startswith("bert.layers.") and int(name.split(".")[2]) >= config.num_built_layers:
            problems.append(f"{name} is beyond num_hidden_layers={config.num_built_layers}")
            continue
        want = shapes.get(name)
        if want is not None and tuple(tensor.shape) != want:
            if name in _FRIENDLY:
                key, dim = _FRIENDLY[name]
                problems.append(
                    f"config.json says {key}={want[dim]} but {name} has {tensor.shape[dim]} rows"
                )
            else:
                problems.append(f"{name} has shape {tuple(tensor.shape)}, config.json implies {want}")
    missing = [n for n in shapes if n.startswith("bert.") and "pooler" not in n and n not in state]
    if missing:
        problems.append(f"missing {len(missing)} encoder tensors, e.g. {missing[0]}")
    if problems:
        raise CheckpointError(f"{source}: weights do not match config.json: " + "; ".join(problems))


def load_into(module, state: dict[str, Any], source: str, allow_missing: tuple[str, ...] = ()) -> list[str]:
    """Load a bertcli-named state into ``module``; return names initialised fresh (e.g. a new head).

    Parameters absent from ``state`` whose names start with one of ``allow_missing`` keep their
    initialisation; any other missing or unexpected tensor is an error naming it.
    """
    own = module.state_dict()
    extra = sorted(k for k in state if k not in own)
    fresh = [k for k in own if k not in state]
    problems = [k for k in fresh if not k.startswith(allow_missing)]
    if problems:
        raise CheckpointError(f"{source}: checkpoint lacks {len(problems)} tensors this model needs, e.g. {problems[0]}")
    for k in state:
        if k in own and tuple(own[k].shape) != tuple(state[k].shape):
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(state[k].shape)} but the model expects {tuple(own[k].shape)}"
            )
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    del extra  # heads the task does not use (e.g. MLM head when fine-tuning) are dropped
    return fresh


# ------------------------------------------------------------ sentence-transformers files
def read_sentence_config(path: Path) -> dict[str, Any] | None:
    """Pooling / normalisation / max length from sentence-transformers files, if present."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return None
    modules = read_json(modules_file, CheckpointError)
    if not isinstance(modules, list):
        raise CheckpointError(f"{modules_file}: expected a JSON list of modules")
    result: dict[str, Any] = {"pooling": "mean", "normalize": False, "max_seq_length": None}
    for mod in modules:
        if not isinstance(mod, dict):
            raise CheckpointError(f"{modules_file}: each module must be a JSON object")
        kind = str(mod.get("type", ""))
        if kind.endswith("Pooling"):
            pcfg = read_json(path / str(mod.get("path", "1_Pooling")) / "config.json", CheckpointError)
            if pcfg.get("pooling_mode_cls_token"):
                result["pooling"] = "cls"
            elif pcfg.get("pooling_mode_max_tokens"):
                result["pooling"] = "max"
            elif pcfg.get("pooling_mode_mean_tokens"):
                result["pooling"] = "mean"
            else:
                modes = [k for k, v in pcfg.items() if k.startswith("pooling_mode") and v]
                raise CheckpointError(
                    f"{path}: pooling {modes} is not supported; bertcli pools by cls, mean or max"
                )
        elif kind.endswith("Normalize"):
            result["normalize"] = True
        elif not kind.endswith("Transformer"):
            raise CheckpointError(f"{modules_file}: module type '{kind}' is not supported by bertcli")
    sbert = path / "sentence_bert_config.json"
    if sbert.is_file():
        result["max_seq_length"] = read_json(sbert, CheckpointError).get("max_seq_length")
    return result


def write_sentence_config(path: Path, hidden: int, pooling: str, normalize: bool, max_seq_length: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (path / "2_Normalize").mkdir(exist_ok=True)
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    (path / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}, indent=2)
    )


# ------------------------------------------------------------ writing
def save_checkpoint(
    path: str | Path,
    state: dict[str, Any],
    config: BertConfig,
    tokenizer=None,
    *,
    task: str | None = None,
    hf_extra: dict[str, Any] | None = None,
    bertcli: dict[str, Any] | None = None,
    sentence: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    before_commit=None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``state`` uses bertcli names (``module.state_dict()``). ``tokenizer`` is a
    ``bertcli.tokenizer.Tokenizer`` (its files are written too). ``sentence`` =
    ``{"pooling", "normalize", "max_seq_length"}`` writes the sentence-transformers files.
    ``extra_files`` maps relative paths (e.g. ``trainer_state/state.json``) to bytes.
    ``before_commit(tmpdir)`` may write more files before the rename (e.g. trainer state).
    """
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"{parent}: cannot create the output directory ({exc.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise CheckpointError(f"{parent}: output directory is not writable")
    arch = architecture_for(state, task, config.family)
    tmp = temp_dir_for(path)
    try:
        hf_state = ours_to_hf(state, prefix=not arch.endswith("Model"), config=config)
        write_weights(hf_state, tmp / WEIGHTS_NAME)
        hf = config.to_hf()
        hf["architectures"] = [arch]
        if tokenizer is not None and "cls_token_id" in hf:  # ModernBERT's config names its special tokens
            hf.update(cls_token_id=tokenizer.cls_id, sep_token_id=tokenizer.sep_id, bos_token_id=tokenizer.cls_id,
                      eos_token_id=tokenizer.sep_id)
        if hf_extra:
            hf.update(hf_extra)
        block = {"format_version": FORMAT_VERSION}
        if task:
            block["task"] = task
        block.update(bertcli or {})
        if sentence:
            block["pooling"] = sentence["pooling"]
        hf["bertcli"] = block
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=False) + "\n")
        if tokenizer is not None:
            tokenizer.save(tmp)
        if sentence:
            write_sentence_config(tmp, config.hidden_size, sentence["pooling"], sentence["normalize"],
                                  sentence.get("max_seq_length") or config.max_length)
        for rel, data in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        if before_commit is not None:
            before_commit(tmp)
        _fsync_dir(tmp)
        replace_dir(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"{path}: checkpoint write failed ({exc.strerror or exc}); the previous checkpoint is intact"
            ) from None
        raise
    return path


def temp_dir_for(path: Path) -> Path:
    """A temporary sibling ``.NAME.tmp-*`` of ``path`` with ordinary (umask) permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary directory
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is removed only after the rename."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def clean_leftovers(parent: Path) -> list[Path]:
    """Remove temporary directories of interrupted writes (``.NAME.tmp-*``, ``.NAME.old-*``)."""
    removed = []
    if not parent.is_dir():
        return removed
    for p in sorted(parent.iterdir()):
        m = re.fullmatch(r"\.(.+)\.(tmp|old)-[^/]+", p.name)
        if not m or not p.is_dir():
            continue
        target = parent / m.group(1)
        if m.group(2) == "old" and not target.exists():
            os.replace(p, target)  # killed between the two renames: the old checkpoint is complete
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _fsync_dir(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


# ------------------------------------------------------------ convenience loaders
def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """The tokenizer of a checkpoint or train-vocab directory, checked against the embedding rows."""
    from bertcli.tokenizer import Tokenizer, check_vocab

    tok = Tokenizer.load(path)
    if vocab_size is not None:
        check_vocab(tok, vocab_size, str(path))
    return tok


def load_encoder(path: str | Path, device=None, with_pooler: bool = False):
    """(BertModel in eval mode, Tokenizer, Checkpoint) for inference from any BERT checkpoint."""
    from bertcli.model import BertModel

    ckpt = load_checkpoint(path)
    tok = load_tokenizer(ckpt.path, ckpt.config.vocab_size)
    model = BertModel(ckpt.config, with_pooler=with_pooler and "pooler" in ckpt.heads)
    encoder_state = {k[5:]: v for k, v in ckpt.state.items() if k.startswith("bert.")}
    load_into(model, encoder_state, str(ckpt.path / WEIGHTS_NAME))
    model.eval()
    if device is not None:
        model.to(device)
    return model, tok, ckpt
