"""Predictions of a fine-tuned sequence classifier or regressor on a table of texts.

``predict_table(model_dir, input)`` reads a CSV/TSV/JSONL file, runs the model and returns every
input row with the predicted ``label`` and one ``prob_<label>`` column per class (classification)
or a ``score`` column (regression). When the input already has a column of that name, the new
one is called ``predicted_label`` / ``predicted_score``. The text columns default to the ones
the model was fine-tuned on (saved in the checkpoint's ``bertcli`` block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import CheckpointError, ConfigError


@dataclass
class Classifier:
    """A loaded sequence classification / regression checkpoint, ready for inference."""

    model: Any
    tokenizer: Any
    checkpoint: Any
    regression: bool
    id2label: dict[int, str]
    max_length: int
    device: Any
    precision: str
    long_input: str = "truncate"  # or "window" (bertcli.windows): the windows' logits pooled per text
    stride: int = 128
    window_pooling: str = "mean"
    windowed: int = 0  # texts split into windows by the last logits() call

    def logits(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64,
               progress=None, batch_tokens: int | None = None) -> tuple[np.ndarray, int]:
        """(logits (N, K), number of truncated inputs); ``batch_tokens``: token-budget batches instead of
        ``batch_size`` inputs (see :func:`bertcli.tasks.classification.batched_logits`)."""
        from bertcli.tasks.classification import batched_logits
        from bertcli.windows import combine, encode_texts

        enc = encode_texts(self.tokenizer, texts, pairs, self.max_length, self.long_input, self.stride)
        out = batched_logits(self.model, enc.ids, enc.type_ids, pad_id=self.tokenizer.pad_id,
                             batch_size=batch_size, device=self.device, precision=self.precision, progress=progress,
                             batch_tokens=batch_tokens)
        self.windowed = enc.windowed
        return combine(out, enc.doc, len(texts), self.window_pooling), enc.truncated


def load_classifier(model_dir: str | Path, device: str = "auto", precision: str = "auto",
                    max_length: int | None = None) -> Classifier:
    """Load a checkpoint with a sequence classification head; head size vs label map checked.
    ``max_length`` (up to the model's positions) replaces the fine-tuned truncation length."""
    from bertcli.checkpoint import load_checkpoint, load_into, load_tokenizer
    from bertcli.device import resolve_device, resolve_precision
    from bertcli.heads import BertForSequenceClassification

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev, inference=True)
    ckpt = load_checkpoint(model_dir)
    head = ckpt.state.get("classifier.weight")
    task = ckpt.bertcli.get("task")
    archs = ckpt.hf_config.get("architectures")
    token_arch = isinstance(archs, list) and str(archs[0] if archs else "").endswith("ForTokenClassification")
    # ModernBERT's sequence and token classifiers both have head.*: its architecture tells them apart
    if head is None or not ckpt.heads & {"pooler", "pre_classifier", "head"} or task in ("token-classification",) \
            or token_arch:
        raise CheckpointError(
            f"{ckpt.path}: has no sequence classification head; fine-tune it first with "
            f"bertcli finetune --task classification|regression"
        )
    rows = int(head.shape[0])
    # a cross-encoder's one output is a score (bertcli rerank applies its activation)
    regression = ckpt.hf_config.get("problem_type") == "regression" or task in ("regression", "cross-encoder")
    id2label = ckpt.id2label or {i: f"LABEL_{i}" for i in range(rows)}
    if regression and rows != 1:
        raise CheckpointError(f"{ckpt.path}: a regression model needs 1 output but the classifier head has {rows}")
    if not regression and len(id2label) != rows:
        raise CheckpointError(
            f"{ckpt.path}: config.json maps {len(id2label)} labels (id2label) but the classifier head has "
            f"{rows} outputs; the checkpoint is inconsistent"
        )
    if not regression and sorted(id2label) != list(range(rows)):
        raise CheckpointError(f"{ckpt.path}: id2label keys must be 0..{rows - 1}, got {sorted(id2label)}")
    tok = load_tokenizer(ckpt.path, ckpt.config.vocab_size)
    if max_length is not None:
        from bertcli.tokenizer import check_max_length

        max_length = check_max_length(max_length, ckpt.config.max_length)
    else:
        max_length = int(ckpt.bertcli.get("max_length") or min(ckpt.config.max_length, tok.model_max_length))
        max_length = min(max_length, ckpt.config.max_length)
    model = BertForSequenceClassification(ckpt.config, rows)
    load_into(model, ckpt.state, str(ckpt.path))
    model.to(dev).eval()
    from bertcli.inference import prepare

    prepare(model, dev, prec)
    saved = ckpt.bertcli  # a model trained on windows predicts on windows unless told otherwise
    return Classifier(model, tok, ckpt, regression, id2label, max_length, dev, prec,
                      long_input=saved.get("long_input") or "truncate", stride=int(saved.get("stride") or 128),
                      window_pooling=saved.get("window_pooling") or "mean")


@dataclass
class Predictions:
    columns: list[str]                 # input columns then the added ones
    rows: list[dict[str, Any]]
    added: list[str] = field(default_factory=list)
    truncated: int = 0
    regression: bool = False
    windowed: int = 0


def _free_name(name: str, taken: list[str]) -> str:
    return name if name not in taken else f"predicted_{name}"


def resolve_text_columns(clf: Classifier, text_column: str | None, text_pair_column: str | None) -> tuple[str, str | None]:
    """The text (and pair) columns: as given, else the ones the model was fine-tuned on."""
    saved = clf.checkpoint.bertcli
    text_column = text_column or saved.get("text_column")
    if text_pair_column is None:
        text_pair_column = saved.get("text_pair_column")
    if not text_column:
        raise ConfigError(f"{clf.checkpoint.path}: the checkpoint names no text column; pass --text-column")
    return text_column, text_pair_column


def open_input(clf: Classifier, input: str | Path, *, delimiter: str | None = None, no_quoting: bool | None = None,
               no_header: bool | None = None, encoding: str = "utf-8"):
    """A :class:`bertcli.streaming.TableInput` over ``input`` (``-``: stdin), read as in training where
    the options are not given (delimiter, quoting, header saved in the checkpoint)."""
    from bertcli.streaming import TableInput

    saved = clf.checkpoint.bertcli
    if delimiter is None and not str(input).lower().endswith((".jsonl", ".json", ".ndjson")):
        delimiter = saved.get("delimiter")  # as in training (e.g. tab-separated .csv files)
    return TableInput(
        input,
        delimiter=delimiter,
        quoting=not (no_quoting if no_quoting is not None else saved.get("no_quoting", False)),
        header=not (no_header if no_header is not None else saved.get("no_header", False)),
        encoding=encoding,
    )


def added_columns(clf: Classifier, columns: list[str]) -> list[str]:
    """The columns prediction adds to ``columns``: ``score``, or ``label`` and ``prob_<label>`` per class."""
    if clf.regression:
        return [_free_name("score", columns)]
    return [_free_name("label", columns),
            *(_free_name(f"prob_{clf.id2label[i]}", columns) for i in range(len(clf.id2label)))]


def predict_chunks(
    clf: Classifier,
    source: Any,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    batch_size: int = 64,
    chunk_size: int | None = None,
    progress=None,
):
    """:class:`Predictions` for each chunk of ``chunk_size`` rows of ``source`` (a ``TableInput``), in order.

    Rows are sorted and batched by length within a chunk; ``progress(rows_done, total)``.
    """
    from bertcli.streaming import check_chunk_size, run_chunks

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    size = check_chunk_size(chunk_size)
    text_column, text_pair_column = resolve_text_columns(clf, text_column, text_pair_column)
    for name in (text_column, text_pair_column):
        if name:
            source.check_column(name)  # before any row is read, even in an empty file
    columns = list(source.columns)
    added = added_columns(clf, columns)

    def step(table, report):
        texts = table.column(text_column)
        pairs = table.column(text_pair_column) if text_pair_column else None
        logits, truncated = clf.logits(texts, pairs, batch_size=batch_size,
                                       progress=_counter(report) if progress is not None else None)
        return _label(clf, table.records(), logits, added), truncated, clf.windowed

    for _, (records, truncated, windowed) in run_chunks(source.chunks(size), step, total=source.total,
                                                        progress=progress):
        yield Predictions(columns + added, records, added, truncated, clf.regression, windowed)


def _counter(report):
    done = [0]

    def advance(n: int, _total=None) -> None:
        done[0] += n
        report(done[0])

    return advance


def _label(clf: Classifier, records: list[dict], logits: np.ndarray, added: list[str]) -> list[dict]:
    if clf.regression:
        for rec, value in zip(records, logits[:, 0], strict=True):
            rec[added[0]] = round(float(value), 6)
        return records
    from bertcli.tasks.classification import softmax

    probs = softmax(logits) if len(records) else logits
    best = probs.argmax(1) if len(records) else []
    label_col, prob_cols = added[0], added[1:]
    for rec, p, k in zip(records, probs, best, strict=True):
        rec[label_col] = clf.id2label[int(k)]
        for col, value in zip(prob_cols, p, strict=True):
            rec[col] = round(float(value), 6)
    return records


def predict_table(
    model_dir: str | Path,
    input: str | Path,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    batch_size: int = 64,
    device: str = "auto",
    precision: str = "auto",
    delimiter: str | None = None,
    no_quoting: bool | None = None,
    no_header: bool | None = None,
    encoding: str = "utf-8",
    classifier: Classifier | None = None,
    progress=None,
    max_length: int | None = None,
    chunk_size: int | None = None,
    long_input: str | None = None,
    stride: int | None = None,
    window_pooling: str | None = None,
) -> Predictions:
    """Predict every row of ``input`` (``-`` for stdin); returns the rows with the added columns.

    ``long_input`` / ``stride`` / ``window_pooling`` default to the checkpoint's (as trained), else truncate.

    Everything is kept in memory; :func:`predict_chunks` streams instead (as ``bertcli predict`` does).
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    clf = classifier or load_classifier(model_dir, device, precision, max_length)
    configure_windows(clf, long_input, stride, window_pooling)
    resolve_text_columns(clf, text_column, text_pair_column)
    with open_input(clf, input, delimiter=delimiter, no_quoting=no_quoting, no_header=no_header,
                    encoding=encoding) as source:
        rows, truncated, windowed = [], 0, 0
        added = added_columns(clf, list(source.columns))
        columns = list(source.columns) + added
        for part in predict_chunks(clf, source, text_column=text_column, text_pair_column=text_pair_column,
                                   batch_size=batch_size, chunk_size=chunk_size, progress=progress):
            rows.extend(part.rows)
            truncated += part.truncated
            windowed += part.windowed
    return Predictions(columns, rows, added, truncated, clf.regression, windowed)


def configure_windows(clf: Classifier, long_input: str | None, stride: int | None,
                      window_pooling: str | None) -> None:
    """Override the checkpoint's long-input settings (as trained) where given; checked."""
    from bertcli.windows import check as check_windows

    for name, value in (("long_input", long_input), ("stride", stride), ("window_pooling", window_pooling)):
        if value is not None:
            setattr(clf, name, value)
    check_windows(clf.long_input, clf.stride, clf.window_pooling)
