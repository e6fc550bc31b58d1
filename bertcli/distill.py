"""Knowledge distillation: the losses, a student cut out of a teacher, and the teacher checks.

The losses are DistilBERT's (Sanh et al., 2019) and sentence-transformers' model distillation:

* :func:`kd_loss` -- the soft-target loss at temperature ``T``: ``T^2 * KL(softmax(t / T) ||
  softmax(s / T))`` averaged over rows (examples, or tokens). It differs from the soft-target
  cross-entropy ``-sum softmax(t / T) log softmax(s / T)`` by the teacher's entropy, a constant, so
  the gradients are the same; the KL is 0 when the student matches the teacher, which makes it
  readable in logs. ``T^2`` keeps the gradients' size independent of ``T`` (Hinton et al., 2015).
* :func:`cosine_loss` -- ``1 - cos(student_h, teacher_h)`` averaged over the real (non-padding)
  tokens: DistilBERT's ``CosineEmbeddingLoss`` on the last hidden states.
* :func:`mse_loss` -- the mean squared error of sentence-transformers' ``MSELoss`` (embeddings)
  and of regression scores.
* :func:`mix` -- ``alpha * teacher_term + (1 - alpha) * label_term`` (fine-tuning's ``--alpha``).

:func:`cut_student` (``bertcli init --from DIR --layers 0,2,4``) copies the embeddings, the chosen
layers (renumbered 0..k-1) and every head of a checkpoint into a shallower one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bertcli.errors import CheckpointError, ConfigError, TokenizerError


# ============================================================ losses
def kd_loss(student_logits, teacher_logits, temperature: float = 1.0, mask=None):
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, the mean over the rows of ``(..., C)`` logits.

    ``mask`` (the logits' leading shape, boolean) keeps only some rows (tokens); no row kept: 0.
    """
    import torch.nn.functional as F

    s = student_logits.float()
    t = teacher_logits.float().detach()
    if mask is not None:
        s, t = s[mask], t[mask]
    s = s.reshape(-1, s.shape[-1])
    t = t.reshape(-1, t.shape[-1])
    if s.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (rows,)
    return kl.mean() * (temperature ** 2)


def cosine_loss(student_hidden, teacher_hidden, attention_mask=None):
    """Mean of ``1 - cos(student_h, teacher_h)`` over the tokens with ``attention_mask`` 1 (all without it)."""
    import torch

    s = student_hidden.float()
    t = teacher_hidden.float().detach()
    if attention_mask is not None:
        keep = attention_mask.bool()
        s, t = s[keep], t[keep]
    s = s.reshape(-1, s.shape[-1])
    t = t.reshape(-1, t.shape[-1])
    if s.shape[0] == 0:
        return student_hidden.float().sum() * 0.0
    return (1.0 - torch.cosine_similarity(s, t, dim=-1)).mean()


def mse_loss(student, teacher):
    """Mean squared error over every element (sentence-transformers' MSELoss; regression scores)."""
    import torch.nn.functional as F

    return F.mse_loss(student.float(), teacher.float().detach())


def mix(teacher_term, label_term, alpha: float):
    """``alpha * teacher_term + (1 - alpha) * label_term``; ``label_term`` None (no labels): the teacher term."""
    if label_term is None:
        return teacher_term
    return alpha * teacher_term + (1.0 - alpha) * label_term


# ============================================================ students
def default_layers(num_layers: int) -> tuple[int, ...]:
    """Every other layer, from the first: 0, 2, 4 of 6 (DistilBERT's choice)."""
    return tuple(range(0, num_layers, 2))


def parse_layers(text: str | list | tuple | None, num_layers: int, option: str = "--layers") -> tuple[int, ...]:
    """``"0,2,4"`` -> (0, 2, 4), checked against the teacher's ``num_layers``; None: :func:`default_layers`."""
    if text is None:
        return default_layers(num_layers)
    parts = [str(p).strip() for p in (text.split(",") if isinstance(text, str) else text)]
    if not parts or any(p == "" for p in parts):
        raise ConfigError(f"{option} '{text}': give comma-separated layer numbers, e.g. {option} 0,2,4")
    try:
        layers = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"{option} '{text}': layer numbers must be integers, e.g. {option} 0,2,4") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"{option} '{text}': layer {bad[0]} does not exist; the teacher has {num_layers} layers "
                          f"(0 to {num_layers - 1})")
    if any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise ConfigError(f"{option} '{text}': list each layer once, in increasing order (e.g. 0,2,4)")
    return layers


def cut_state(state: dict[str, Any], config, layers: tuple[int, ...], source: str = "teacher"):
    """(state, config) of a student with the teacher's embeddings, ``layers`` (renumbered) and heads.

    ALBERT's shared layer groups have no per-depth weights to choose from: refused.
    """
    if config.num_built_layers != config.num_layers or config.inner_group_num != 1:
        raise ConfigError(
            f"{source}: its {config.num_layers} layers share {config.num_built_layers} set(s) of weights "
            f"(ALBERT layer groups), so there are no per-layer weights to pick with --layers; a shallower ALBERT "
            f"runs the same shared group fewer times: pretrain one with --arch albert and num_hidden_layers in "
            f"--config, or distil into it with pretrain --teacher {source} --config"
        )
    index = {old: new for new, old in enumerate(layers)}
    out: dict[str, Any] = {}
    prefix = "bert.layers."
    for name, tensor in state.items():
        if name.startswith(prefix):
            num, rest = name[len(prefix):].split(".", 1)
            if int(num) not in index:
                continue
            name = f"{prefix}{index[int(num)]}.{rest}"
        out[name] = tensor.clone()
    groups = None if config.num_hidden_groups is None else len(layers)
    return out, dataclasses.replace(config, num_layers=len(layers), num_hidden_groups=groups)


def cut_student(source: str | Path, out: str | Path, layers: str | tuple[int, ...] | None = None) -> dict[str, Any]:
    """Write a student of ``source`` with only ``layers`` (default every other) to ``out``; return a summary.

    Everything else is kept: embeddings, heads (MLM, pooler, classifier, ...), labels, the tokenizer
    and the sentence-transformers pooling / normalisation.
    """
    from bertcli.checkpoint import load_checkpoint, load_tokenizer, save_checkpoint

    ckpt = load_checkpoint(source)
    chosen = parse_layers(layers, ckpt.config.num_layers, "--layers")
    state, config = cut_state(ckpt.state, ckpt.config, chosen, str(source))
    tok = load_tokenizer(ckpt.path, config.vocab_size)
    hf_extra = {k: ckpt.hf_config[k] for k in ("id2label", "label2id", "problem_type") if k in ckpt.hf_config}
    block = {k: v for k, v in ckpt.bertcli.items() if k not in ("format_version", "task", "pooling")}
    block.update({"student_of": str(source), "student_layers": list(chosen)})
    sentence = None
    if ckpt.sentence:
        sentence = {"pooling": ckpt.sentence["pooling"], "normalize": ckpt.sentence["normalize"],
                    "max_seq_length": ckpt.sentence.get("max_seq_length") or config.max_length}
    save_checkpoint(out, state, config, tok, task=ckpt.bertcli.get("task"), hf_extra=hf_extra, bertcli=block,
                    sentence=sentence)
    return {"out": str(out), "layers": list(chosen), "teacher_layers": ckpt.config.num_layers,
            "parameters": sum(int(t.numel()) for t in state.values()),
            "teacher_parameters": sum(int(t.numel()) for t in ckpt.state.values())}


# ============================================================ teacher checks
def check_same_vocab(student_tok, teacher_tok, student_src: str, teacher_src: str) -> None:
    """The student must read the teacher's token ids: the two vocabularies must be identical."""
    a, b = student_tok.get_vocab(), teacher_tok.get_vocab()
    if a == b:
        return
    only_s = sorted(set(a) - set(b))
    only_t = sorted(set(b) - set(a))
    moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    if only_s or only_t:
        example = f"'{(only_s or only_t)[0]}' is only in {student_src if only_s else teacher_src}"
    else:
        example = f"'{moved[0]}' is id {a[moved[0]]} in {student_src} but {b[moved[0]]} in {teacher_src}"
    raise TokenizerError(
        f"{student_src} and the teacher {teacher_src} have different vocabularies ({len(a):,} vs {len(b):,} "
        f"tokens; {example}); distillation compares outputs token by token: start the student from the teacher "
        f"(bertcli init --from {teacher_src} --layers ...) or use a teacher with the same tokenizer"
    )


def check_alpha(alpha: float, option: str = "--alpha") -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{option} must be between 0 (labels only) and 1 (teacher only), got {alpha}")


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ConfigError(f"--temperature must be positive, got {temperature}")


def load_teacher(path: str | Path, student_tok, student_src: str):
    """(Checkpoint, Tokenizer) of ``--teacher``, its vocabulary checked against the student's."""
    from bertcli.checkpoint import load_checkpoint, load_tokenizer

    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--teacher: {exc}") from None
    tok = load_tokenizer(ckpt.path, ckpt.config.vocab_size)
    check_same_vocab(student_tok, tok, student_src, str(path))
    return ckpt, tok
