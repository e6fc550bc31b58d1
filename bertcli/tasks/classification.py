"""Sequence classification and regression on CSV/TSV/JSONL tables (single texts or pairs), and
cross-encoders for reranking.

The task supplies the training loop (``bertcli.train.fit``) with a model (encoder + pooler +
linear head), length-grouped batches of pre-tokenized examples, the loss (cross-entropy with
optional class weights, or mean squared error), dev metrics, and the checkpoint payload
(``id2label``/``label2id``/``problem_type`` in ``config.json`` so transformers
``BertForSequenceClassification`` loads it; the training columns in the ``bertcli`` block so
``predict`` knows which columns to read).

``--task cross-encoder`` is the same model with one output trained with binary cross-entropy on the
logit (sentence-transformers' ``CrossEncoder`` ``BinaryCrossEntropyLoss``), from (query, positive,
negative) triples (``--text-column``, ``--text-pair-column``, ``--negative-column``: each row gives the
pairs (query, positive) labelled 1 and (query, negative) labelled 0) or from scored pairs
(``--label-column``, scores in [0, 1]). Its checkpoint names the sigmoid as its activation and the
training length as the tokenizer's ``model_max_length``, so that sentence-transformers ``CrossEncoder``
loads it and scores as ``bertcli rerank`` does.

``finetune(FinetuneOptions(...))`` is the library entry point behind ``bertcli finetune``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.config import check_options
from bertcli.errors import CheckpointError, ConfigError, DataError
from bertcli.metrics import classification_metrics, regression_metrics
from bertcli.train import Task

TASKS = ("classification", "regression", "cross-encoder")
METRICS = {  # the first is the default --metric
    "classification": ("accuracy", "macro_f1", "mcc", "loss"),
    "regression": ("spearman", "pearson", "mse", "loss"),
    "cross-encoder": ("loss", "accuracy"),  # binary cross-entropy; accuracy of logit > 0 against label >= 0.5
}
LOWER_IS_BETTER = ("loss", "mse")
REQUIRED = {"classification": ("text_column", "label_column"), "regression": ("text_column", "label_column"),
            "cross-encoder": ("text_column", "text_pair_column")}
CROSS_ACTIVATION = "torch.nn.modules.activation.Sigmoid"  # what CrossEncoder applies to the logit
GROUP_FACTOR = 50  # length grouping: sort within windows of 50 batches, then shuffle the batches


# ============================================================ options
@dataclass
class FinetuneOptions:
    """Options of ``bertcli finetune``; the YAML keys of ``--config`` are these names."""

    model: str = ""
    task: str = "classification"
    train: str = ""
    dev: str | None = None
    test: str | None = None
    text_column: str = ""
    text_pair_column: str | None = None
    label_column: str = ""
    out: str = ""
    epochs: int = 3
    lr: float = 2e-5
    batch_size: int = 32
    max_length: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    patience: int | None = None
    class_weights: str = "none"
    seed: int = 0
    metric: str | None = None
    delimiter: str | None = None
    no_quoting: bool = False
    no_header: bool = False
    encoding: str = "utf-8"
    device: str = "auto"
    precision: str = "auto"
    quiet: bool = False
    resume: str | None = None
    skip_nonfinite: int = 0
    auto_batch_size: bool = False
    group_by_length: bool = True
    # --task question-answering
    doc_stride: int = 128
    max_query_length: int = 64
    max_answer_length: int = 30
    n_best: int = 20
    null_threshold: float = 0.0
    # --task sentence-embedding
    loss: str | None = None
    pooling: str = "mean"
    negative_column: str | None = None
    label_scale: float | None = None
    # ---- run control (bertcli.restarts): steps, evaluation, restarts, reporting, cached model revision
    max_steps: int | None = None    # optimizer steps; wins over epochs
    eval_every: int = 0             # 0: at the end of each epoch
    save_every: int = 0             # 0: at each evaluation
    log_every: int = 10             # training loss / lr records in metrics.jsonl
    seeds: str | None = None        # "0,1,2,3,4": one run per seed in OUT/seed-K, the best on dev kept as OUT
    restarts: int | None = None     # N runs, seeds --seed .. --seed+N-1
    report_to: str = "none"         # none | tensorboard
    revision: str | None = None     # --model from the Hugging Face cache: a branch, tag or commit
    # --teacher: distillation (bertcli.tasks.distillation)
    teacher: str | None = None
    alpha: float = 0.5           # weight of the teacher's term; 1 - alpha on the labels
    temperature: float = 2.0
    unlabelled: str | None = None
    teacher_cache: str | None = None  # sentence-embedding: the teacher's embeddings, safetensors
    # frozen layers and LoRA (bertcli.lora); long inputs (bertcli.windows)
    freeze_embeddings: bool = False
    freeze_layers: int = 0
    freeze_encoder: bool = False
    lora_rank: int = 0  # 0: no LoRA
    lora_alpha: float | None = None  # None: 2 x rank
    lora_dropout: float = 0.1
    lora_targets: str = "qkv,out,up,down"
    long_input: str = "truncate"
    stride: int = 128
    window_pooling: str = "mean"

    def __post_init__(self) -> None:
        check_options(self)

    def validate(self) -> None:
        """Required options present and every value in range (names the option)."""
        from bertcli.tasks import task_module
        from bertcli.tasks.distillation import required_options, validate_distillation

        module = task_module(self.task)
        validate_distillation(self)
        for name in ("model", "train", "out", *required_options(self, module.REQUIRED[self.task])):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} is required for --task {self.task} "
                                  "(on the command line or in --config)")
        metric = self.best_metric
        if metric not in module.METRICS[self.task]:
            raise ConfigError(f"--metric '{metric}' for {self.task}: valid values: "
                              f"{', '.join(module.METRICS[self.task])}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}")
        if self.warmup < 0 or self.weight_decay < 0:
            raise ConfigError("--warmup and --weight-decay must not be negative")
        if self.skip_nonfinite < 0:
            raise ConfigError(f"--skip-nonfinite must be zero or positive, got {self.skip_nonfinite}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"--patience must be at least 1, got {self.patience}")
        if self.patience is not None and not self.dev:
            raise ConfigError("--patience needs --dev (early stopping watches the dev metric)")
        if self.class_weights not in ("auto", "none"):
            raise ConfigError(f"--class-weights '{self.class_weights}': valid values: auto, none")
        if self.class_weights == "auto" and self.task not in ("classification", "token-classification"):
            raise ConfigError(f"--class-weights auto does not apply to --task {self.task}")
        from bertcli.restarts import validate_run_options

        validate_run_options(self)
        check = getattr(module, "validate_options", None)
        if check is not None and not (self.teacher and self.task == "sentence-embedding"):
            check(self)
        from bertcli.lora import validate_options as check_adaptation
        from bertcli.windows import validate_options as check_windows

        check_adaptation(self)
        check_windows(self)

    @property
    def lower_is_better(self) -> bool:
        from bertcli.tasks import task_module

        return self.best_metric in task_module(self.task).LOWER_IS_BETTER

    @property
    def best_metric(self) -> str:
        from bertcli.tasks import task_module

        return self.metric or task_module(self.task).METRICS[self.task][0]


def options_from_yaml(path: str) -> FinetuneOptions:
    """Options from a ``--config`` YAML file (keys: the option names, ``-`` or ``_``); unknown keys named."""
    from bertcli.config import load_yaml, options_from_dict

    data = {str(k).replace("-", "_"): v for k, v in load_yaml(path).items()}
    for key in ("lr", "warmup", "weight_decay"):  # YAML 1.1 reads 2e-5 (no dot) as a string
        if isinstance(data.get(key), str):
            try:
                data[key] = float(data[key])
            except ValueError:
                pass
    return options_from_dict(FinetuneOptions, data, str(path))


def validate_options(opts: FinetuneOptions) -> None:
    """--task cross-encoder takes triples (--negative-column) or scored pairs (--label-column)."""
    if opts.task == "cross-encoder":
        if bool(opts.label_column) == bool(opts.negative_column):
            raise ConfigError("--task cross-encoder trains on (query, positive, negative) triples: give "
                              "--negative-column; or on scored pairs (scores in [0, 1]): give --label-column "
                              "(one of the two)")
    elif opts.negative_column:
        raise ConfigError(f"--negative-column applies to --task cross-encoder or sentence-embedding, "
                          f"not --task {opts.task}")


# ============================================================ data
@dataclass
class Split:
    """One tokenized file: token ids, segment ids, labels (class ids or floats) and source lines."""

    name: str
    path: str
    ids: list[list[int]]
    type_ids: list[list[int]]
    labels: np.ndarray | None
    lines: list[int]
    truncated: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    doc: np.ndarray | None = None  # --long-input window: the text of each window (rows are windows)
    doc_labels: np.ndarray | None = None  # ... and the texts' labels
    windowed: int = 0

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)


def label_sort_key(labels: list[str]):
    """Numeric labels sort by value (``2`` before ``10``), others as strings."""
    try:
        values = {lab: float(lab) for lab in labels}
        return lambda lab: (values[lab], lab)
    except ValueError:
        return lambda lab: lab


def build_label_map(labels: list[str]) -> dict[str, int]:
    """Sorted, deterministic label -> id map of the training labels."""
    unique = sorted(set(labels), key=label_sort_key(list(set(labels))))
    return {lab: i for i, lab in enumerate(unique)}


def _read_split_table(name: str, path: str, opts: FinetuneOptions):
    """The table of the ``--name`` file, with located errors for a missing or empty file."""
    from bertcli.data.tables import read_table

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (--{name})")
    table = read_table(path, delimiter=opts.delimiter, quoting=not opts.no_quoting,
                       header=not opts.no_header, encoding=opts.encoding)
    if len(table) == 0:
        raise DataError(f"{path}: no data rows (--{name})")
    return table


def read_split(name: str, path: str, opts: FinetuneOptions, *, labelled: bool = True):
    """(texts, pairs or None, raw labels or None, lines) of one file, with located errors."""
    table = _read_split_table(name, path, opts)
    texts = table.column(opts.text_column)
    pairs = table.column(opts.text_pair_column) if opts.text_pair_column else None
    labels = None
    if labelled:
        labels = table.labels(opts.label_column)
    return texts, pairs, labels, table.lines


def read_cross_split(name: str, path: str, opts: FinetuneOptions):
    """(queries, documents, float labels, lines) of a cross-encoder file: triples expanded to a
    (query, positive, 1) and a (query, negative, 0) pair per row, or scored pairs (scores in [0, 1])."""
    if not opts.negative_column:
        texts, pairs, raw, lines = read_split(name, path, opts)
        labels = encode_labels(raw, lines, path, "regression", None)
        for value, line in zip(labels, lines, strict=True):
            if not 0.0 <= value <= 1.0:
                raise DataError(f"{path}, line {line}: score {value:g} is outside [0, 1]; --task cross-encoder "
                                "learns probabilities (binary cross-entropy): rescale the scores")
        return texts, pairs, labels, lines
    table = _read_split_table(name, path, opts)
    queries, positives, negatives = (table.column(c) for c in
                                     (opts.text_column, opts.text_pair_column, opts.negative_column))
    n = len(queries)
    labels = np.tile(np.array([1.0, 0.0], dtype=np.float32), n)  # positive, negative, positive, ...
    return ([q for q in queries for _ in (0, 1)], [d for pair in zip(positives, negatives, strict=True) for d in pair],
            labels, [line for line in table.lines for _ in (0, 1)])


def encode_labels(raw: list[str], lines: list[int], path: str, task: str,
                  label2id: dict[str, int] | None, train_path: str = "") -> np.ndarray:
    if task == "regression":
        out = np.empty(len(raw), dtype=np.float32)
        for i, (value, line) in enumerate(zip(raw, lines, strict=True)):
            try:
                out[i] = float(value)
            except ValueError:
                raise DataError(
                    f"{path}, line {line}: label '{value}' is not a number; --task regression needs numeric labels"
                ) from None
            if not math.isfinite(out[i]):
                raise DataError(f"{path}, line {line}: label '{value}' is not a finite number")
        return out
    assert label2id is not None
    out = np.empty(len(raw), dtype=np.int64)
    for i, (value, line) in enumerate(zip(raw, lines, strict=True)):
        idx = label2id.get(value)
        if idx is None:
            known = ", ".join(repr(k) for k in list(label2id)[:20])
            raise DataError(
                f"{path}, line {line}: label '{value}' never occurs in the training file {train_path} "
                f"(training labels: {known}); fix the label or add training examples for it"
            )
        out[i] = idx
    return out


# ============================================================ batching
def pad(ids: list[list[int]], type_ids: list[list[int]], pad_id: int):
    """Right-padded (input_ids, attention_mask, token_type_ids) int64 tensors."""
    import torch

    n, T = len(ids), max((len(x) for x in ids), default=0)
    arr = np.full((n, T), pad_id, dtype=np.int64)
    types = np.zeros((n, T), dtype=np.int64)
    mask = np.zeros((n, T), dtype=np.int64)
    for i, (row, trow) in enumerate(zip(ids, type_ids, strict=True)):
        arr[i, : len(row)] = row
        types[i, : len(row)] = trow
        mask[i, : len(row)] = 1
    return torch.from_numpy(arr), torch.from_numpy(mask), torch.from_numpy(types)


def length_grouped_order(lengths: np.ndarray, batch_size: int, generator, group: bool = True) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples (little padding, still random).

    A random permutation is cut into windows of ``GROUP_FACTOR`` batches; each window is sorted by
    length and cut into batches; the batches are shuffled. Deterministic for a generator state.
    With ``group=False`` (``--no-group-by-length``) the window is one batch: plain random batches
    (each sorted inside, which changes nothing but the padding layout), from the same draws.
    """
    import torch

    n = len(lengths)
    perm = torch.randperm(n, generator=generator).numpy()
    window = batch_size * (GROUP_FACTOR if group else 1)
    batches: list[np.ndarray] = []
    for start in range(0, n, window):
        chunk = perm[start:start + window]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Evaluation order: longest first, in batches of ``batch_size``; the last rows (fewer than
    ``batch_size``) in batches of powers of two, so that over many calls (chunks of a large input) batch
    shapes come from a small set and per-shape kernel caches (oneDNN's) stay bounded."""
    order = np.argsort(-lengths, kind="stable")
    out, i, n = [], 0, len(order)
    while i < n:
        size = batch_size if n - i >= batch_size else 1 << ((n - i).bit_length() - 1)
        out.append(order[i:i + size])
        i += size
    return out


def batched_logits(model, ids: list[list[int]], type_ids: list[list[int]], *, pad_id: int, batch_size: int,
                   device, precision: str = "fp32", progress=None, batch_tokens: int | None = None) -> np.ndarray:
    """Logits (N, num_labels) float32 for pre-tokenized inputs, in the input order.

    Batches of ``batch_size`` inputs, longest first; with ``batch_tokens``, length-sorted batches of at
    most that many padded tokens instead (:func:`bertcli.embed.plan_batches`, as ``embed`` batches).
    ``progress(n, total)`` is called after each batch of ``n`` inputs.
    """
    import torch

    from bertcli.inference import forward_context

    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    if batch_tokens is not None:
        from bertcli.embed import plan_batches

        if batch_tokens < 1:
            raise ConfigError(f"--batch-tokens must be positive, got {batch_tokens}")
        plan = [np.asarray(b, dtype=np.int64) for b in plan_batches(lengths.tolist(), batch_tokens)]
    else:
        plan = sorted_batches(lengths, batch_size)
    out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), forward_context(model, device, precision):
            for idx in plan:
                x, m, t = pad([ids[i] for i in idx], [type_ids[i] for i in idx], pad_id)
                logits = model(x.to(device), m.to(device), t.to(device)).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(ids), logits.shape[1]), dtype=np.float32)
                out[idx] = logits
                if progress is not None:
                    progress(len(idx), len(ids))
    finally:
        model.train(was_training)
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ============================================================ the task
class FinetuneTask(Task):
    """What every fine-tuning task shares: the starting checkpoint, its tokenizer and the checked
    ``--max-length`` (mismatches are caught here, before any forward pass), and the splits:
    ``train_split``, ``dev_split`` (or None), ``test_split`` (or None), set by the subclass; each
    split has a ``name``, a length and a ``truncated`` count."""

    def __init__(self, opts: FinetuneOptions):
        from bertcli.checkpoint import load_checkpoint, load_tokenizer
        from bertcli.tokenizer import check_max_length

        opts.validate()
        self.opts = opts
        self.name = opts.task
        self.checkpoint = load_checkpoint(opts.model)
        self.config = self.checkpoint.config
        self.tokenizer = load_tokenizer(self.checkpoint.path, self.config.vocab_size)
        self.max_length = check_max_length(opts.max_length, self.config.max_length)
        self.precision = "fp32"  # evaluation precision; finetune() sets the resolved one
        self.run_config = {"finetune": dataclasses.asdict(opts)}

    @property
    def splits(self) -> list:
        return [s for s in (self.train_split, self.dev_split, self.test_split) if s is not None]

    @property
    def truncated(self) -> dict[str, int]:
        """Split name -> inputs truncated to ``--max-length``."""
        return {s.name: s.truncated for s in self.splits}

    @property
    def examples(self) -> dict[str, int]:
        return {s.name: len(s) for s in self.splits}

    @property
    def has_test(self) -> bool:
        return self.test_split is not None

    def batch_order(self, lengths: np.ndarray, batch_size: int, generator, rank: int, world_size: int) -> list:
        """This rank's training batches (index arrays) for an epoch: length-grouped unless
        ``--no-group-by-length``; under DDP every rank gets the same number of batches."""
        groups = length_grouped_order(lengths, batch_size, generator, self.opts.group_by_length)
        if world_size > 1:
            groups = groups[: len(groups) - len(groups) % world_size][rank::world_size]
        return groups

    def same_labels(self) -> bool:
        """The starting checkpoint's id2label names this task's labels, in the same order."""
        old = self.checkpoint.id2label or {}
        return [old.get(i) for i in range(self.num_labels)] == [self.id2label[i] for i in range(self.num_labels)]

    def load_start(self, model, *, keep_head: bool, allow_missing: tuple[str, ...],
                   head_prefixes: tuple[str, ...] = ("classifier.",)):
        """``model`` with the starting checkpoint's weights; its head (the weights under ``head_prefixes``)
        only when ``keep_head`` (else the head stays newly initialised)."""
        from bertcli.checkpoint import load_into

        state = dict(self.checkpoint.state)
        if not keep_head:
            state = {k: v for k, v in state.items() if not k.startswith(head_prefixes)}
        load_into(model, state, str(self.checkpoint.path), allow_missing=allow_missing)
        return model


class SequenceClassificationTask(FinetuneTask):
    """Classification (cross-entropy) or regression (MSE) on the pooled [CLS] vector."""

    def __init__(self, opts: FinetuneOptions):
        super().__init__(opts)
        self.regression = opts.task == "regression"
        self.cross = opts.task == "cross-encoder"

        texts, pairs, raw, lines = self._read("train", opts.train)
        if self.regression or self.cross:
            self.label2id: dict[str, int] = {"LABEL_0": 0}
            self.num_labels = 1
        else:
            self.label2id = build_label_map(raw)
            self.num_labels = len(self.label2id)
            if self.num_labels < 2:
                only = next(iter(self.label2id))
                raise DataError(
                    f"{opts.train}: every training label is '{only}'; classification needs at least two labels"
                )
        self.id2label = {i: lab for lab, i in self.label2id.items()}
        self.train_split = self._encode("train", opts.train, texts, pairs, raw, lines)
        self.dev_split = self._load("dev", opts.dev) if opts.dev else None
        self.test_split = self._load("test", opts.test) if opts.test else None
        self.class_weight = None
        if opts.class_weights == "auto":
            counts = np.bincount(self.train_split.labels, minlength=self.num_labels).astype(np.float64)
            self.class_weight = (counts.sum() / (self.num_labels * np.maximum(counts, 1))).astype(np.float32)

    # ------------------------------------------------------------ data
    def _read(self, name: str, path: str):
        """(texts, pairs, raw labels, lines); a cross-encoder's labels are floats already (triples expanded)."""
        if self.cross:
            return read_cross_split(name, path, self.opts)
        return read_split(name, path, self.opts)

    def _load(self, name: str, path: str) -> Split:
        texts, pairs, raw, lines = self._read(name, path)
        return self._encode(name, path, texts, pairs, raw, lines)

    def _encode(self, name, path, texts, pairs, raw, lines) -> Split:
        from bertcli.windows import encode_texts

        labels = raw if self.cross else encode_labels(raw, lines, path, self.opts.task, self.label2id,
                                                      self.opts.train)
        enc = encode_texts(self.tokenizer, texts, pairs, self.max_length, self.opts.long_input, self.opts.stride)
        if self.opts.long_input == "truncate":
            return Split(name, path, enc.ids, enc.type_ids, labels, lines, enc.truncated)
        # every window carries its text's label; evaluation pools the windows back per text
        return Split(name, path, enc.ids, enc.type_ids, labels[enc.doc], [lines[i] for i in enc.doc], 0,
                     doc=enc.doc, doc_labels=labels, windowed=enc.windowed)

    @property
    def window_summary(self) -> dict[str, dict[str, int]]:
        """--long-input window: split name -> texts split into windows, and the window counts."""
        if self.opts.long_input != "window":
            return {}
        return {"windowed": {s.name: s.windowed for s in self.splits},
                "texts": {s.name: len(s.doc_labels) for s in self.splits},
                "windows": {s.name: len(s) for s in self.splits}}

    def test_metrics(self, path: str, device) -> dict[str, float]:
        """Metrics of the saved checkpoint at ``path`` on the test split."""
        from bertcli.checkpoint import load_checkpoint, load_into
        from bertcli.heads import BertForSequenceClassification

        ckpt = load_checkpoint(path)
        head = ckpt.state.get("classifier.weight")
        if head is None or head.shape[0] != self.num_labels:
            raise CheckpointError(f"{path}: no classifier head with {self.num_labels} outputs after training")
        model = BertForSequenceClassification(ckpt.config, self.num_labels)
        load_into(model, ckpt.state, str(path))
        model.to(device)
        return self.evaluate_split(model, self.test_split, device)

    # ------------------------------------------------------------ Task interface
    def build_model(self):
        from bertcli.heads import BertForSequenceClassification

        model = BertForSequenceClassification(self.config, self.num_labels)
        head = self.checkpoint.state.get("classifier.weight")
        keep = head is not None and head.shape[0] == self.num_labels and (self.regression or self.same_labels())
        return self.load_start(model, keep_head=keep, head_prefixes=("classifier.", "pre_classifier.", "head."),
                               allow_missing=("classifier.", "pre_classifier.", "bert.pooler.", "head."))

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
        split = self.train_split
        return [self.collate(idx) for idx in self.batch_order(split.lengths, batch_size, generator, rank, world_size)]

    def collate(self, idx: np.ndarray) -> dict:
        """The training batch of the train split's examples ``idx``."""
        import torch

        split = self.train_split
        x, m, t = pad([split.ids[i] for i in idx], [split.type_ids[i] for i in idx], self.tokenizer.pad_id)
        return {"input_ids": x, "attention_mask": m, "token_type_ids": t, "labels": torch.from_numpy(split.labels[idx])}

    def forward(self, model, batch, device):
        """(float logits (B, num_labels), the batch on ``device``)."""
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).float(), b

    def label_loss(self, logits, labels, device):
        """Cross-entropy (with the class weights), MSE, or a cross-encoder's binary cross-entropy on the logit."""
        import torch.nn.functional as F

        if self.cross:
            return F.binary_cross_entropy_with_logits(logits.squeeze(-1), labels.float())
        if self.regression:
            return F.mse_loss(logits.squeeze(-1), labels.float())
        weight = None
        if self.class_weight is not None:
            import torch

            weight = torch.from_numpy(self.class_weight).to(device)
        return F.cross_entropy(logits, labels, weight=weight)

    def compute_loss(self, model, batch, generator, device):
        logits, b = self.forward(model, batch, device)
        return self.label_loss(logits, b["labels"], device), {"tokens": int(batch["attention_mask"].sum())}

    def evaluate(self, model, device) -> dict[str, float]:
        if self.dev_split is None:
            return {}
        return self.evaluate_split(model, self.dev_split, device)

    def evaluate_split(self, model, split: Split, device) -> dict[str, float]:
        logits = batched_logits(model, split.ids, split.type_ids, pad_id=self.tokenizer.pad_id,
                                batch_size=max(self.opts.batch_size * 2, 8), device=device,
                                precision=self.precision)
        labels = split.labels
        if split.doc is not None:  # --long-input window: one prediction per text
            from bertcli.windows import combine

            labels = split.doc_labels
            logits = combine(logits, split.doc, len(labels), self.opts.window_pooling)
        if self.cross:  # binary cross-entropy with logits (stable form) and the accuracy at probability 0.5
            x, y = logits[:, 0].astype(np.float64), labels.astype(np.float64)
            bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
            return {"loss": float(bce.mean()), "accuracy": float(((x > 0) == (y >= 0.5)).mean())}
        if self.regression:
            preds = logits[:, 0].astype(np.float64)
            metrics = regression_metrics(labels, preds)
            metrics["loss"] = metrics["mse"]
            return metrics
        metrics = classification_metrics(labels, logits.argmax(1), self.num_labels)
        z = logits - logits.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        metrics["loss"] = float(-logp[np.arange(len(labels)), labels].mean())
        return metrics

    def checkpoint_payload(self, model) -> dict:
        model = getattr(model, "module", model)  # DDP
        labels = {str(i): lab for i, lab in self.id2label.items()}
        hf_extra = {
            "id2label": labels,
            "label2id": {lab: i for i, lab in self.id2label.items()},
            "problem_type": "regression" if self.regression else "single_label_classification",
        }
        if self.cross:  # sentence-transformers CrossEncoder: the sigmoid of the one logit, truncated as trained
            del hf_extra["problem_type"]
            hf_extra["sentence_transformers"] = {"activation_fn": CROSS_ACTIVATION}
            self.tokenizer.model_max_length = self.max_length
        bertcli = {
            "text_column": self.opts.text_column,
            "text_pair_column": self.opts.text_pair_column,
            "label_column": self.opts.label_column,
            **({"negative_column": self.opts.negative_column} if self.cross else {}),
            "max_length": self.max_length,
            "delimiter": self.opts.delimiter,
            "no_quoting": self.opts.no_quoting,
            "no_header": self.opts.no_header,
        }
        if self.opts.long_input == "window":  # predict windows the same way by default
            bertcli.update(long_input="window", stride=self.opts.stride, window_pooling=self.opts.window_pooling)
        return {"state": model.state_dict(), "config": self.config, "tokenizer": self.tokenizer,
                "task": self.name, "hf_extra": hf_extra, "bertcli": bertcli}


# ============================================================ entry point
def build_task(opts: FinetuneOptions) -> SequenceClassificationTask:
    return SequenceClassificationTask(opts)


def train_args(opts: FinetuneOptions):
    from bertcli.train import TrainArgs

    metric = opts.best_metric if opts.dev else None
    return TrainArgs(
        out=opts.out, epochs=opts.epochs, batch_size=opts.batch_size, lr=opts.lr,
        weight_decay=opts.weight_decay, warmup=opts.warmup, precision=opts.precision, device=opts.device,
        seed=opts.seed, best_metric=metric, greater_is_better=not opts.lower_is_better,
        patience=opts.patience, quiet=opts.quiet, resume=opts.resume,
        skip_nonfinite=opts.skip_nonfinite, auto_batch_size=opts.auto_batch_size,
        max_steps=opts.max_steps, eval_every=opts.eval_every, save_every=opts.save_every, log_every=opts.log_every,
        report_to=opts.report_to,
    )


def finetune(opts: FinetuneOptions) -> dict[str, Any]:
    """Fine-tune ``opts.model`` for ``opts.task``; the loop's summary plus test metrics and counts.

    Every fine-tuning task (``bertcli.tasks.finetune_tasks()``) goes through here. The task object
    provides ``precision`` (set here), ``examples`` and ``truncated`` (split -> count),
    ``max_length``, ``has_test`` and ``test_metrics(path, device)``. ``opts.out`` ends up a
    checkpoint of the best model by the dev metric (the final one without ``--dev``);
    ``metrics.jsonl`` gets one more line with the test metrics when ``--test`` is given.
    ``opts.out`` is locked for the run (:func:`bertcli.locks.run_lock`).
    """
    from bertcli.locks import run_lock

    opts.validate()
    if opts.seeds is not None or opts.restarts is not None:
        from bertcli.restarts import finetune_restarts

        return finetune_restarts(opts)
    if opts.revision is not None:
        from bertcli.hub import resolve_model

        opts = dataclasses.replace(opts, model=str(resolve_model(opts.model, opts.revision)), revision=None)
    with run_lock(opts.out):
        return _finetune(opts)


def _finetune(opts: FinetuneOptions) -> dict[str, Any]:
    from bertcli.device import resolve_device, resolve_precision
    from bertcli.lora import adapt_task
    from bertcli.tasks.distillation import build_finetune_task
    from bertcli.train import fit

    task = adapt_task(build_finetune_task(opts), opts)  # a teacher, frozen layers / LoRA, if asked
    device = resolve_device(opts.device)
    task.precision = resolve_precision(opts.precision, device)
    summary = dict(fit(task, train_args(opts)) or {})
    summary.update(getattr(task, "adaptation_summary", {}))
    summary.update(getattr(task, "window_summary", {}))
    summary["truncated"] = dict(task.truncated)
    summary["max_length"] = task.max_length
    summary["examples"] = {k: n for k, n in task.examples.items() if n}
    if task.has_test and int(os.environ.get("RANK", "0")) == 0:
        summary["test"] = task.test_metrics(opts.out, device)
        from bertcli.curves import append_record

        append_record(opts.out, {"step": summary.get("steps", 0), "test": summary["test"]}, opts.report_to)
    return summary
