"""Long inputs: ``--long-input truncate|window`` with ``--stride`` for finetune, predict and embed.

:func:`encode_texts` is the one per-text encoding step: ``truncate`` keeps the first ``max_length``
tokens (the tokenizer's truncation); ``window`` cuts a longer text into overlapping windows of
``max_length`` tokens (special tokens included), consecutive windows sharing ``stride`` tokens, the
last window ending at the text's last token, so every token is in some window. ``doc[k]`` names the
text of window k; :func:`combine` pools per-window rows (logits: mean or max; embeddings: mean) back
into one row per text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bertcli.errors import ConfigError

LONG_INPUTS = ("truncate", "window")
WINDOW_POOLINGS = ("mean", "max")
WINDOW_TASKS = ("classification", "regression")


def check(long_input: str, stride: int, window_pooling: str = "mean") -> None:
    if long_input not in LONG_INPUTS:
        raise ConfigError(f"--long-input '{long_input}': valid values: {', '.join(LONG_INPUTS)}")
    if window_pooling not in WINDOW_POOLINGS:
        raise ConfigError(f"--window-pooling '{window_pooling}': valid values: {', '.join(WINDOW_POOLINGS)}")
    if stride < 0:
        raise ConfigError(f"--stride must be zero or positive, got {stride}")


def validate_options(opts) -> None:
    """The long-input options of ``FinetuneOptions`` (called by its ``validate``)."""
    check(opts.long_input, opts.stride, opts.window_pooling)
    if opts.long_input == "window":
        if opts.task not in WINDOW_TASKS:
            raise ConfigError(f"--long-input window works with --task {', '.join(WINDOW_TASKS)}; "
                              f"{opts.task} has its own windows (--doc-stride) or none")
        if opts.text_pair_column:
            raise ConfigError("--long-input window takes single texts; drop --text-pair-column")


@dataclass
class Encoded:
    """Token ids of every window (one per text when nothing is windowed) and the text each belongs to."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    doc: np.ndarray  # (windows,) index of the text of each row
    truncated: int  # texts cut at max_length (truncate)
    windowed: int  # texts split into more than one window (window)


def window_starts(n: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` tokens over ``n`` tokens sharing ``stride`` tokens; the last
    window ends at ``n``."""
    if n <= size:
        return [0]
    step = size - stride
    starts = list(range(0, n - size + 1, step))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


def encode_texts(tokenizer, texts: list[str], pairs: list[str] | None, max_length: int,
                 long_input: str = "truncate", stride: int = 128) -> Encoded:
    """Encode ``texts`` (and ``pairs``) for a sequence model: truncated, or split into windows."""
    if long_input == "truncate":
        ids, type_ids, truncated = tokenizer.encode_ids(texts, pairs, max_length=max_length)
        return Encoded(ids, type_ids, np.arange(len(ids), dtype=np.int64), truncated, 0)
    if pairs is not None:
        raise ConfigError("--long-input window takes single texts, not pairs; drop the pair column")
    size = max_length - 2  # [CLS] window [SEP]
    if not 0 <= stride < size:
        raise ConfigError(f"--stride {stride} must be smaller than the window's {size} text tokens "
                          f"(--max-length {max_length} minus 2 special tokens)")
    ids: list[list[int]] = []
    doc: list[int] = []
    windowed = 0
    for i, body in enumerate(tokenizer.encode_untruncated(texts)):
        starts = window_starts(len(body), size, stride)
        windowed += len(starts) > 1
        for s in starts:
            ids.append([tokenizer.cls_id, *body[s:s + size], tokenizer.sep_id])
            doc.append(i)
    return Encoded(ids, [[0] * len(x) for x in ids], np.asarray(doc, dtype=np.int64), 0, windowed)


def combine(rows, doc: np.ndarray, n: int, pooling: str = "mean"):
    """One row per text from per-window rows (numpy array or torch tensor, (windows, K)): mean or max."""
    if len(doc) == n and (n == 0 or bool((doc == np.arange(n)).all())):
        return rows
    if isinstance(rows, np.ndarray):
        out = np.full((n, rows.shape[1]), -np.inf if pooling == "max" else 0.0, dtype=rows.dtype)
        if pooling == "max":
            np.maximum.at(out, doc, rows)
            return out
        np.add.at(out, doc, rows)
        return out / np.bincount(doc, minlength=n)[:, None].astype(rows.dtype)
    import torch

    index = torch.from_numpy(doc).to(rows.device)
    if pooling == "max":
        out = torch.full((n, rows.shape[1]), float("-inf"), dtype=rows.dtype, device=rows.device)
        return out.index_reduce_(0, index, rows, "amax")
    out = torch.zeros((n, rows.shape[1]), dtype=rows.dtype, device=rows.device).index_add_(0, index, rows)
    return out / torch.bincount(index, minlength=n).unsqueeze(1).to(rows.dtype)
