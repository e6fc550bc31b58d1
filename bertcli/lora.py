"""Parameter-efficient fine-tuning: frozen layers and LoRA adapters in the PEFT format.

``finetune --freeze-embeddings / --freeze-layers K / --freeze-encoder`` turn ``requires_grad`` off on
the starting checkpoint's encoder weights (the optimizer gets only the rest); the task's head, and a
pooler the starting checkpoint lacks, always train.

``finetune --lora-rank R`` freezes the whole encoder and wraps the chosen linear maps of every layer
(``--lora-targets``: ``qkv`` attention query/key/value, ``out`` attention output, ``up`` / ``down``
feed-forward) in :class:`LoRALinear`: ``y = W x + b + (alpha / R) * B A dropout(x)``, A (R, in) kaiming-
uniform, B (out, R) zeros, as in PEFT. The core's fused ``qkv`` projection gets three adapters (one per
query, key, value, a block-diagonal B), so each maps onto PEFT's per-projection ``lora_A`` / ``lora_B``.

The run writes a PEFT adapter directory (``adapter_config.json`` + ``adapter_model.safetensors`` with
PEFT's tensor names ``base_model.model.<HF module>.lora_A.weight``, the head as ``modules_to_save``),
plus the tokenizer and ``bertcli_adapter.json`` (labels, task, training columns). ``peft`` loads it onto
the transformers base model named in ``base_model_name_or_path``. bertcli loads any LoRA adapter
directory as a checkpoint (:func:`load_adapter`: base weights + B A merged, in Hugging Face names, then
the family's name table), so ``predict``, ``embed`` and ``merge-lora`` take one as ``--model``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertcli.errors import CheckpointError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_META = "bertcli_adapter.json"
PEFT_PREFIX = "base_model.model."
# --lora-targets -> (module path inside a core Layer, number of fused projections)
TARGETS = {"qkv": ("attn.qkv", 3), "out": ("attn.out", 1), "up": ("ffn.up", 1), "down": ("ffn.down", 1)}
# bertcli task -> PEFT task_type
PEFT_TASKS = {"classification": "SEQ_CLS", "regression": "SEQ_CLS", "token-classification": "TOKEN_CLS",
              "question-answering": "QUESTION_ANS"}


# ============================================================ options
def lora_targets(opts) -> list[str]:
    names = [t.strip() for t in str(opts.lora_targets).split(",") if t.strip()]
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise ConfigError(f"--lora-targets '{opts.lora_targets}': a comma-separated list of {', '.join(TARGETS)}")
    return list(dict.fromkeys(names))


def validate_options(opts) -> None:
    """The frozen-layer and LoRA options of ``FinetuneOptions`` (called by its ``validate``)."""
    if opts.freeze_layers < 0:
        raise ConfigError(f"--freeze-layers must be zero or positive, got {opts.freeze_layers}")
    if opts.lora_rank < 0:
        raise ConfigError(f"--lora-rank must be zero (no LoRA) or positive, got {opts.lora_rank}")
    if not opts.lora_rank:
        return
    if opts.freeze_embeddings or opts.freeze_layers or opts.freeze_encoder:
        raise ConfigError("--lora-rank already freezes the whole encoder; drop --freeze-embeddings, "
                          "--freeze-layers and --freeze-encoder")
    if opts.task not in PEFT_TASKS:
        raise ConfigError(f"--lora-rank works with --task {', '.join(dict.fromkeys(PEFT_TASKS))}, "
                          f"not {opts.task}")
    if opts.lora_alpha is not None and not opts.lora_alpha > 0:
        raise ConfigError(f"--lora-alpha must be positive, got {opts.lora_alpha}")
    if not 0 <= opts.lora_dropout < 1:
        raise ConfigError(f"--lora-dropout must be in [0, 1), got {opts.lora_dropout}")
    lora_targets(opts)


# ============================================================ LoRA on a linear map
class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus ``parts`` low-rank adapters, one per block of ``parts`` equal output slices.

    ``parts`` = 3 for the fused qkv projection: adapter p changes only output slice p, exactly as PEFT's
    separate query / key / value adapters do.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, parts: int = 1):
        super().__init__()
        self.base = base
        self.parts, self.rank, self.scale = parts, rank, alpha / rank
        self.out_part = base.out_features // parts
        self.lora_A = nn.Parameter(torch.empty(parts * rank, base.in_features))  # P x (R, in), stacked
        self.lora_B = nn.Parameter(torch.zeros(parts, self.out_part, rank))  # P x (out / P, R)
        for p in range(parts):  # PEFT's initialisation, per adapter
            nn.init.kaiming_uniform_(self.lora_A.data[p * rank:(p + 1) * rank], a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        a = F.linear(self.dropout(x), self.lora_A)  # (..., P * R)
        a = a.view(*a.shape[:-1], self.parts, self.rank)  # (..., P, R)
        delta = torch.einsum("...pr,por->...po", a, self.lora_B.to(a.dtype))  # (..., P, out / P)
        return y + self.scale * delta.reshape(y.shape)

    def delta_weight(self) -> torch.Tensor:
        """scale * B A as one (out, in) matrix (the merge)."""
        blocks = [self.lora_B[p] @ self.lora_A[p * self.rank:(p + 1) * self.rank] for p in range(self.parts)]
        return self.scale * torch.cat(blocks, dim=0)


def inject_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> list[str]:
    """Wrap ``targets`` of every built layer of ``model.bert`` in LoRALinear; returns the wrapped paths."""
    wrapped = []
    for i, layer in enumerate(model.bert.layers):
        for t in targets:
            path, parts = TARGETS[t]
            owner_name, attr = path.split(".")
            owner = getattr(layer, owner_name)
            setattr(owner, attr, LoRALinear(getattr(owner, attr), rank, alpha, dropout, parts))
            wrapped.append(f"bert.layers.{i}.{path}")
    return wrapped


# ============================================================ names: ours <-> PEFT
def _hf_modules(config, ours_module: str, prefix: bool) -> list[str]:
    """The Hugging Face module names of one of our linear maps (three for the fused qkv)."""
    from bertcli.checkpoint import ours_to_hf

    dummy = torch.zeros(3, 1)
    names = ours_to_hf({f"{ours_module}.weight": dummy}, prefix=prefix, config=config)
    return [n[: -len(".weight")] for n in names]


def _head_modules(hf_names: list[str], family_prefix: str) -> list[str]:
    """PEFT ``modules_to_save`` entries for the head's Hugging Face parameter names: the top module
    (``classifier``, ``pre_classifier``, ``qa_outputs``) or, inside the encoder, ``bert.pooler``."""
    out = []
    for name in hf_names:
        parts = name.split(".")
        out.append(".".join(parts[:2]) if parts[0] == family_prefix else parts[0])
    return list(dict.fromkeys(out))


# ============================================================ the task, adapted
def adapt_task(task, opts):
    """``task`` unchanged, or wrapped so that its model has frozen layers or LoRA adapters."""
    if not (opts.lora_rank or opts.freeze_embeddings or opts.freeze_layers or opts.freeze_encoder):
        return task
    return AdaptedTask(task, opts)


class AdaptedTask:
    """A fine-tuning task whose model is partly frozen or LoRA-adapted; everything else is the task's.

    With LoRA the training checkpoints (and the final OUT) are PEFT adapter directories.
    """

    _own = ("inner", "opts", "head", "wrapped", "adaptation_summary")

    def __init__(self, task, opts):
        object.__setattr__(self, "inner", task)
        object.__setattr__(self, "opts", opts)
        object.__setattr__(self, "head", [])
        object.__setattr__(self, "wrapped", [])
        object.__setattr__(self, "adaptation_summary", {})
        if opts.lora_rank:
            task.run_config = {**task.run_config, "lora": {"rank": opts.lora_rank, "alpha": self.alpha,
                                                           "dropout": opts.lora_dropout,
                                                           "targets": lora_targets(opts)}}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        if name in self._own:
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)

    @property
    def alpha(self) -> float:
        return float(self.opts.lora_alpha) if self.opts.lora_alpha is not None else 2.0 * self.opts.lora_rank

    def build_model(self):
        model = self.inner.build_model()
        start = self.inner.checkpoint.state
        # the head: every weight outside the encoder, and encoder weights the checkpoint lacks (a new pooler)
        head = [n for n, _ in model.named_parameters() if not n.startswith("bert.") or n not in start]
        object.__setattr__(self, "head", head)
        if self.opts.lora_rank:
            for p in model.bert.parameters():
                p.requires_grad_(False)
            for n, p in model.named_parameters():
                if n in head:
                    p.requires_grad_(True)
            wrapped = inject_lora(model, self.opts.lora_rank, self.alpha, self.opts.lora_dropout,
                                  lora_targets(self.opts))
            object.__setattr__(self, "wrapped", wrapped)
        else:
            freeze(model, self.opts, keep=set(head))
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.adaptation_summary.update(parameters=total, trainable_parameters=trainable)
        return model

    # ------------------------------------------------------------ LoRA checkpoints
    def write_checkpoint(self, path, payload: dict, before_commit) -> None:
        if not self.opts.lora_rank:
            return self.inner.write_checkpoint(path, payload, before_commit)
        write_adapter(Path(path), payload, self, before_commit)

    def load_weights(self, model, path) -> None:
        if not self.opts.lora_rank:
            return self.inner.load_weights(model, path)
        from bertcli.checkpoint import hf_to_ours, read_weights

        path = Path(path)
        config = self.inner.config
        tensors = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v
                   for k, v in read_weights(path / ADAPTER_WEIGHTS).items()}
        own = dict(model.named_parameters())
        state: dict[str, torch.Tensor] = {}
        for module in self.wrapped:
            hf = _hf_modules(config, module, True)
            try:
                state[module + ".lora_A"] = torch.cat([tensors.pop(h + ".lora_A.weight") for h in hf], dim=0)
                state[module + ".lora_B"] = torch.stack([tensors.pop(h + ".lora_B.weight") for h in hf], dim=0)
            except KeyError as exc:
                raise CheckpointError(f"{path / ADAPTER_WEIGHTS}: lacks {exc.args[0]}; not this run's adapter") from None
        head = hf_to_ours(tensors, source=str(path / ADAPTER_WEIGHTS), config=config)
        state.update(head)
        missing = [n for n, p in own.items() if p.requires_grad and n not in state]
        if missing:
            raise CheckpointError(f"{path / ADAPTER_WEIGHTS}: lacks {len(missing)} trained tensors, e.g. {missing[0]}")
        with torch.no_grad():
            for n, t in state.items():
                if n not in own or tuple(own[n].shape) != tuple(t.shape):
                    raise CheckpointError(f"{path / ADAPTER_WEIGHTS}: {n} does not fit this model")
                own[n].copy_(t)


def freeze(model: nn.Module, opts, keep: set[str]) -> None:
    """``requires_grad`` off for the frozen parts of ``model.bert`` (never the names in ``keep``)."""
    config = model.bert.config
    frozen: list[str] = []
    if opts.freeze_encoder:
        frozen.append("bert.")
    if opts.freeze_embeddings:
        frozen.append("bert.embeddings.")
    if opts.freeze_layers:
        schedule = list(model.bert.schedule)
        if opts.freeze_layers > len(schedule):
            raise ConfigError(f"--freeze-layers {opts.freeze_layers}: the model has {len(schedule)} layers")
        below, above = set(schedule[:opts.freeze_layers]), set(schedule[opts.freeze_layers:])
        if below & above:
            raise ConfigError(f"--freeze-layers {opts.freeze_layers}: this {config.family} model shares layer "
                              "weights between the bottom and the top layers; use --freeze-encoder or "
                              "--freeze-embeddings")
        frozen.extend(f"bert.layers.{i}." for i in sorted(below))
    for name, p in model.named_parameters():
        if name.startswith(tuple(frozen)) and name not in keep:
            p.requires_grad_(False)


# ============================================================ writing an adapter directory
def _base_ref(model: str) -> str:
    p = Path(model)
    return str(p.resolve()) if p.is_dir() else model


def adapter_config(task: AdaptedTask, head_modules: list[str]) -> dict[str, Any]:
    """PEFT's LoraConfig fields for this run (the ones PEFT reads; the rest keep PEFT's defaults)."""
    config = task.inner.config
    targets = [h for module in task.wrapped for h in _hf_modules(config, module, True)]
    return {
        "peft_type": "LORA", "task_type": PEFT_TASKS[task.opts.task],
        "base_model_name_or_path": _base_ref(task.opts.model), "revision": None, "inference_mode": True,
        "r": task.opts.lora_rank, "lora_alpha": task.alpha, "lora_dropout": task.opts.lora_dropout,
        "target_modules": targets, "modules_to_save": head_modules, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "init_lora_weights": True, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }


def write_adapter(path: Path, payload: dict, task: AdaptedTask, before_commit=None) -> Path:
    """Write a PEFT adapter directory atomically from a LoRA model's ``checkpoint_payload``."""
    from bertcli.checkpoint import _fsync_dir, ours_to_hf, replace_dir, temp_dir_for, write_weights

    config = task.inner.config
    fam_prefix = _family_prefix(config)
    state = payload["state"]
    tensors: dict[str, torch.Tensor] = {}
    for module in task.wrapped:
        hf = _hf_modules(config, module, True)
        A, B = state[module + ".lora_A"], state[module + ".lora_B"]
        rank = task.opts.lora_rank
        for p, name in enumerate(hf):
            tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = A[p * rank:(p + 1) * rank]
            tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = B[p]
    head_hf = ours_to_hf({n: state[n] for n in task.head}, prefix=True, config=config)
    tensors.update({PEFT_PREFIX + n: t for n, t in head_hf.items()})
    meta = {"format_version": 1, "task": payload.get("task"), "hf_extra": payload.get("hf_extra") or {},
            "bertcli": payload.get("bertcli") or {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_for(path)
    try:
        write_weights({k: v.detach().float().cpu() for k, v in tensors.items()}, tmp / ADAPTER_WEIGHTS)
        cfg = adapter_config(task, _head_modules(list(head_hf), fam_prefix))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2) + "\n")
        if payload.get("tokenizer") is not None:
            payload["tokenizer"].save(tmp)
        if before_commit is not None:
            before_commit(tmp)
        _fsync_dir(tmp)
        replace_dir(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"{path}: adapter write failed ({exc.strerror or exc})") from None
        raise
    return path


def _family_prefix(config) -> str:
    from bertcli.checkpoint import family_names

    return family_names(config).prefix


# ============================================================ reading an adapter directory
def is_adapter_dir(path) -> bool:
    p = Path(path)
    return (p / ADAPTER_CONFIG).is_file() and not (p / "config.json").is_file()


def _base_dir(ref: Any, adapter: Path) -> Path:
    where = adapter / ADAPTER_CONFIG
    if not isinstance(ref, str) or not ref:
        raise CheckpointError(f"{where}: 'base_model_name_or_path' must name the base model's directory")
    for candidate in (Path(ref), adapter / ref):
        if (candidate / "config.json").is_file() or is_adapter_dir(candidate):  # a plain checkpoint or an adapter
            if candidate.resolve() == adapter.resolve():
                break
            return candidate
    raise CheckpointError(f"{where}: the base model '{ref}' is not a checkpoint directory here; put the base "
                          f"model there or edit base_model_name_or_path to its directory")


def _scale(cfg: dict, where: Path) -> float:
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False), ("lora_bias", False)):
        if cfg.get(key, ok) != ok:
            raise CheckpointError(f"{where}: '{key}': {cfg[key]!r} is not supported (bertcli merges plain LoRA)")
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise CheckpointError(f"{where}: '{key}' is not supported; bertcli merges one rank and alpha")
    if cfg.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: 'bias': {cfg['bias']!r} is not supported; only 'none'")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if type(r) is not int or r < 1 or not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise CheckpointError(f"{where}: 'r' must be a positive integer and 'lora_alpha' a number")
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def merge_hf(base: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor], scale: float, prefix: str,
             source: str) -> dict[str, torch.Tensor]:
    """Base + adapter in Hugging Face names (the encoder prefix dropped): W += scale * B A; saved modules replace."""
    def bare(name: str) -> str:
        name = name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name
        return name[len(prefix) + 1:] if name.startswith(prefix + ".") else name

    merged = {bare(k): v.float() for k, v in base.items()}
    loras: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in adapter.items():
        name = bare(key)
        for part in ("lora_A", "lora_B"):
            if name.endswith(f".{part}.weight"):
                loras.setdefault(name[: -len(f".{part}.weight")], {})[part] = tensor.float()
                break
        else:
            merged[name] = tensor.float()  # modules_to_save (the head)
    for module, ab in loras.items():
        target = module + ".weight"
        if set(ab) != {"lora_A", "lora_B"} or target not in merged:
            raise CheckpointError(f"{source}: adapter for '{module}' does not match the base model")
        delta = ab["lora_B"] @ ab["lora_A"]
        if delta.shape != merged[target].shape:
            raise CheckpointError(f"{source}: adapter for '{module}' has shape {tuple(delta.shape)}, "
                                  f"the base weight {tuple(merged[target].shape)}")
        merged[target] = merged[target] + scale * delta
    return merged


def load_adapter(path: str | Path, weights: bool = True):
    """A PEFT LoRA adapter directory as a ``Checkpoint``: the base named in adapter_config.json with the
    adapter merged in (and the head of ``modules_to_save``), bertcli names, labels from bertcli_adapter.json."""
    from bertcli.checkpoint import (
        Checkpoint,
        check_shapes,
        hf_to_ours,
        load_checkpoint,
        ours_to_hf,
        read_weights,
    )
    from bertcli.config import read_json

    path = Path(path)
    cfg = read_json(path / ADAPTER_CONFIG, CheckpointError)
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: not a LoRA adapter (peft_type must be \"LORA\")")
    scale = _scale(cfg, path / ADAPTER_CONFIG)
    base_dir = _base_dir(cfg.get("base_model_name_or_path"), path)
    base = load_checkpoint(base_dir, weights=weights)
    meta = read_json(path / ADAPTER_META, CheckpointError) if (path / ADAPTER_META).is_file() else {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / ADAPTER_META}: expected a JSON object")
    hf_config = {**base.hf_config, **(meta.get("hf_extra") or {})}
    state: dict[str, Any] = {}
    if weights:
        wfile = path / ADAPTER_WEIGHTS
        base_hf = ours_to_hf(base.state, prefix=True, config=base.config)  # the base, checked, in HF names
        merged = merge_hf(base_hf, read_weights(wfile), scale, _family_prefix(base.config), str(wfile))
        state = hf_to_ours(merged, source=str(wfile), config=base.config)
        check_shapes(state, base.config, str(wfile))
    bertcli = {**(meta.get("bertcli") or {}), "task": meta.get("task"), "adapter_of": str(base_dir)}
    if not meta.get("task"):
        bertcli.pop("task")
        rows = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
        if rows is not None and len(hf_config.get("id2label") or {}) != rows:  # the base's (or no) label map
            hf_config["id2label"] = {str(i): f"LABEL_{i}" for i in range(rows)}
            hf_config["label2id"] = {f"LABEL_{i}": i for i in range(rows)}
    home = path if (path / "tokenizer.json").is_file() else base_dir
    return Checkpoint(path=home, config=base.config, hf_config=hf_config, state=state, bertcli=bertcli,
                      sentence=base.sentence)


def merge_lora(adapter: str | Path, out: str | Path) -> dict[str, Any]:
    """``bertcli merge-lora``: write the adapter merged into its base as a plain checkpoint at ``out``."""
    from bertcli.checkpoint import load_tokenizer, save_checkpoint

    adapter = Path(adapter)
    if not is_adapter_dir(adapter):
        raise CheckpointError(f"{adapter}: not an adapter directory (no {ADAPTER_CONFIG}, or it has a config.json)")
    ckpt = load_adapter(adapter)
    state, sentence = dict(ckpt.state), ckpt.sentence
    if {"classifier", "qa"} & ckpt.heads:  # a task model: drop the base's pretraining heads and pooling files
        state = {k: v for k, v in state.items() if not k.startswith(("mlm.", "nsp.", "rtd."))}
        sentence = None
    tok = load_tokenizer(ckpt.path, ckpt.config.vocab_size)
    hf_extra = {k: ckpt.hf_config[k] for k in ("id2label", "label2id", "problem_type") if k in ckpt.hf_config}
    bertcli = {k: v for k, v in ckpt.bertcli.items() if k not in ("task", "adapter_of", "format_version")}
    save_checkpoint(out, state, ckpt.config, tok, task=ckpt.bertcli.get("task"), hf_extra=hf_extra,
                    bertcli=bertcli, sentence=sentence)
    return {"adapter": str(adapter), "base": ckpt.bertcli["adapter_of"], "out": str(out), "tensors": len(state)}
