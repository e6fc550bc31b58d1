"""Token classification (named-entity recognition) on CoNLL files; entities with offsets on raw text.

Training data: CoNLL ``token<TAB>tag`` files (:mod:`bertcli.data.conll`), BIO (or IOBES) tags.
The tag map is built from the training tags (``O`` first) and saved as ``id2label``/``label2id``
in ``config.json``, so transformers ``BertForTokenClassification`` loads the checkpoint as it is.

Alignment: the words of a sentence are tokenized as pre-tokenized input (the ``tokenizers``
library keeps each word's boundaries and maps every wordpiece back to its word); the first
wordpiece of each word carries the word's tag, the other pieces get ``-100`` and are ignored by
the loss. A word that yields no wordpiece at all (a lone zero-width or control character) cannot
be tagged: it is scored as ``O`` in evaluation.

Long sentences: a sentence with more wordpieces than ``--max-length`` (minus ``[CLS]`` and
``[SEP]``) is split into consecutive windows of whole words, so no word is lost from training or
evaluation; ``truncated`` counts the sentences that were split. (Only a single word longer than a
whole window loses pieces, never its first one.)

Metrics: entity-level precision, recall and F1 (seqeval, CoNLL evaluation rules), overall
(micro-averaged) and per entity type (``<type>_f1``, ``<type>_precision``, ``<type>_recall``), plus the
mean token loss.

Prediction (``bertcli predict --model NER_DIR INPUT``): raw texts are split into words by the
BERT pre-tokenizer (whitespace and punctuation), tagged the same way, and decoded into entities
``{"type", "text", "start", "end", "score"}`` whose ``start``/``end`` are character offsets into
the original text (``text[start:end]`` is the entity), and whose score is the mean probability of
the predicted tags of its words.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import CheckpointError, ConfigError, DataError
from bertcli.tasks.classification import FinetuneOptions, FinetuneTask, sorted_batches

TASKS = ("token-classification",)
METRICS = {"token-classification": ("f1", "precision", "recall", "loss")}  # the first is the default --metric
LOWER_IS_BETTER = ("loss",)
REQUIRED: dict[str, tuple[str, ...]] = {"token-classification": ()}
IGNORE = -100  # label of the wordpieces that are not the first of a word (and of [CLS], [SEP], padding)

# Options of bertcli finetune that do not apply to CoNLL files (checked when set).
_NOT_FOR_CONLL = ("text_column", "text_pair_column", "label_column", "delimiter", "no_quoting", "no_header",
                  "loss", "negative_column", "label_scale")


def validate_options(opts: FinetuneOptions) -> None:
    for name in _NOT_FOR_CONLL:
        if getattr(opts, name):
            raise ConfigError(
                f"--{name.replace('_', '-')} does not apply to --task token-classification (its files are CoNLL: "
                f"one 'token<TAB>tag' per line, empty lines between sentences); remove it"
            )


# ============================================================ alignment and windows
def _pieces(tokenizer, inputs: list, pretokenized: bool) -> list:
    """``tokenizers`` encodings of ``inputs`` without special tokens and without truncation."""
    from bertcli.tokenizer import clean_text

    backend = tokenizer.backend
    if pretokenized:
        inputs = [tokenizer.as_running_text([clean_text(w) for w in words]) for words in inputs]
    else:
        inputs = [clean_text(t) for t in inputs]
    saved = backend.truncation
    backend.no_truncation()
    try:
        return backend.encode_batch(inputs, is_pretokenized=pretokenized, add_special_tokens=False)
    finally:
        if saved:
            backend.enable_truncation(**saved)


@dataclass
class Window:
    """One model input: ``[CLS]`` + the wordpieces of some whole words + ``[SEP]``."""

    ids: list[int]
    positions: np.ndarray  # token position of the first wordpiece of each word in the window
    words: np.ndarray      # the sentence's word index of each of those words
    sentence: int          # index of the sentence (or text)


def windows_of(ids: list[int], word_ids: list[int | None], sentence: int, budget: int, cls_id: int,
               sep_id: int) -> tuple[list[Window], bool]:
    """Cut one sentence's wordpieces into windows of whole words of at most ``budget`` pieces.

    Returns (windows, whether the sentence needed more than one window or lost pieces).
    """
    # group the pieces by word (pieces of a word are contiguous)
    groups: list[tuple[int, list[int]]] = []
    for tid, w in zip(ids, word_ids, strict=True):
        if w is None:
            continue
        if groups and groups[-1][0] == w:
            groups[-1][1].append(tid)
        else:
            groups.append((w, [tid]))
    out: list[Window] = []
    cut = False
    cur: list[int] = []
    pos: list[int] = []
    words: list[int] = []

    def flush() -> None:
        if words:
            out.append(Window([cls_id, *cur, sep_id], np.asarray(pos, dtype=np.int64),
                              np.asarray(words, dtype=np.int64), sentence))
            cur.clear()
            pos.clear()
            words.clear()

    for w, pieces in groups:
        if len(pieces) > budget:  # one word longer than a window: keep its first pieces
            pieces = pieces[:budget]
            cut = True
        if len(cur) + len(pieces) > budget:
            flush()
        pos.append(len(cur) + 1)  # +1 for [CLS]
        words.append(w)
        cur.extend(pieces)
    flush()
    return out, cut or len(out) > 1


def word_windows(tokenizer, sentences: list[list[str]], max_length: int) -> tuple[list[Window], int]:
    """Windows of pre-tokenized sentences and the number of sentences split (or cut)."""
    encs = _pieces(tokenizer, sentences, pretokenized=True)
    out: list[Window] = []
    split = 0
    for s, enc in enumerate(encs):
        ws, was_split = windows_of(enc.ids, enc.word_ids, s, max_length - 2, tokenizer.cls_id, tokenizer.sep_id)
        out.extend(ws)
        split += was_split
    return out, split


# ============================================================ data
@dataclass
class NerSplit:
    """One CoNLL file as windows with the first-piece tags, plus the gold tags per sentence."""

    name: str
    path: str
    sentences: list[list[str]]   # words
    gold: list[list[str]]        # tags
    windows: list[Window]
    labels: list[np.ndarray]     # tag id of each window's words
    truncated: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(w.ids) for w in self.windows), dtype=np.int64, count=len(self.windows))

    def __len__(self) -> int:
        return len(self.sentences)


def load_split(name: str, path: str, encoding: str, label2id: dict[str, int] | None, train_path: str = ""):
    """A CoNLL file (``--name``); a tag missing from ``label2id`` (the training tags) names its line."""
    from bertcli.data.conll import read_conll

    if str(path) != "-" and not Path(path).is_file():
        raise DataError(f"{path}: no such file (--{name})")
    conll = read_conll(path, encoding)
    if label2id is not None:
        for sent in conll.sentences:
            for tag, line in zip(sent.tags, sent.lines, strict=True):
                if tag not in label2id:
                    known = ", ".join(label2id)
                    raise DataError(
                        f"{conll.path}, line {line}: tag '{tag}' never occurs in the training file {train_path} "
                        f"(training tags: {known}); fix the tag or add training sentences with it"
                    )
    return conll


def make_split(name: str, conll, label2id: dict[str, int], tokenizer, max_length: int) -> NerSplit:
    sentences = [s.words for s in conll.sentences]
    gold = [s.tags for s in conll.sentences]
    windows, split = word_windows(tokenizer, sentences, max_length)
    labels = [np.asarray([label2id[gold[w.sentence][i]] for i in w.words], dtype=np.int64) for w in windows]
    return NerSplit(name, conll.path, sentences, gold, windows, labels, split)


def pad_windows(windows: list[Window], pad_id: int, labels: list[np.ndarray] | None = None):
    """(input_ids, attention_mask, token_type_ids, labels or None) tensors, right-padded."""
    import torch

    n, T = len(windows), max((len(w.ids) for w in windows), default=0)
    arr = np.full((n, T), pad_id, dtype=np.int64)
    mask = np.zeros((n, T), dtype=np.int64)
    lab = np.full((n, T), IGNORE, dtype=np.int64) if labels is not None else None
    for i, w in enumerate(windows):
        arr[i, : len(w.ids)] = w.ids
        mask[i, : len(w.ids)] = 1
        if lab is not None:
            lab[i, w.positions] = labels[i]
    x, m = torch.from_numpy(arr), torch.from_numpy(mask)
    return x, m, torch.zeros_like(x), (torch.from_numpy(lab) if lab is not None else None)


def window_logits(model, windows: list[Window], *, pad_id: int, batch_size: int, device, precision: str = "fp32",
                  progress=None) -> list[np.ndarray]:
    """For every window, the (words, num_labels) float32 logits at its words' first wordpieces."""
    import torch

    from bertcli.inference import forward_context

    lengths = np.fromiter((len(w.ids) for w in windows), dtype=np.int64, count=len(windows))
    out: list[np.ndarray | None] = [None] * len(windows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), forward_context(model, device, precision):
            for idx in sorted_batches(lengths, batch_size):
                batch = [windows[i] for i in idx]
                x, m, t, _ = pad_windows(batch, pad_id)
                logits = model(x.to(device), m.to(device), t.to(device)).float().cpu().numpy()  # (B, T, K)
                for row, (i, w) in enumerate(zip(idx, batch, strict=True)):
                    out[i] = logits[row, w.positions]
                if progress is not None:
                    progress(len(idx), len(windows))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def entity_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level precision / recall / F1 (seqeval, CoNLL rules), overall (micro) and per type."""
    import warnings

    from seqeval.metrics import classification_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns when a type has no prediction (scored 0)
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {})
    out = {"f1": float(micro.get("f1-score", 0.0)), "precision": float(micro.get("precision", 0.0)),
           "recall": float(micro.get("recall", 0.0))}
    for kind, row in sorted(report.items()):
        if kind.endswith(" avg"):
            continue
        out[f"{kind}_f1"] = float(row["f1-score"])
        out[f"{kind}_precision"] = float(row["precision"])
        out[f"{kind}_recall"] = float(row["recall"])
    return out


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ============================================================ the task
class TokenClassificationTask(FinetuneTask):
    """Per-token cross-entropy on the first wordpiece of each word; entity-level dev metrics.

    ``examples`` counts sentences; ``truncated`` the sentences split into several windows (no word
    is dropped)."""

    def __init__(self, opts: FinetuneOptions):
        from bertcli.data.conll import build_tag_map

        super().__init__(opts)

        train = load_split("train", opts.train, opts.encoding, None)
        self.label2id = build_tag_map(train.tags)
        if len(self.label2id) < 2:
            raise DataError(f"{opts.train}: every training tag is '{next(iter(self.label2id))}'; "
                            f"token classification needs at least two tags (e.g. O and B-PER)")
        self.id2label = {i: t for t, i in self.label2id.items()}
        self.num_labels = len(self.label2id)
        self.train_split = make_split("train", train, self.label2id, self.tokenizer, self.max_length)
        self.dev_split = self._load("dev", opts.dev) if opts.dev else None
        self.test_split = self._load("test", opts.test) if opts.test else None
        self.class_weight = None
        if opts.class_weights == "auto":
            ids = np.concatenate(self.train_split.labels) if self.train_split.labels else np.zeros(0, np.int64)
            counts = np.bincount(ids, minlength=self.num_labels).astype(np.float64)
            self.class_weight = (counts.sum() / (self.num_labels * np.maximum(counts, 1))).astype(np.float32)

    def _load(self, name: str, path: str) -> NerSplit:
        conll = load_split(name, path, self.opts.encoding, self.label2id, self.opts.train)
        return make_split(name, conll, self.label2id, self.tokenizer, self.max_length)

    # ------------------------------------------------------------ contract with finetune()
    def test_metrics(self, path: str, device) -> dict[str, float]:
        model = load_token_model(path, self.num_labels)
        model.to(device)
        return self.evaluate_split(model, self.test_split, device)

    # ------------------------------------------------------------ Task interface
    def build_model(self):
        from bertcli.heads import BertForTokenClassification

        model = BertForTokenClassification(self.config, self.num_labels)
        head = self.checkpoint.state.get("classifier.weight")
        same = (head is not None and head.shape[0] == self.num_labels
                and self.checkpoint.bertcli.get("task", "token-classification") == "token-classification"
                and "pooler" not in self.checkpoint.heads and self.same_labels())
        # else a new head (another task's head, or other tags)
        # ModernBERT's head (head.*) goes with its classifier
        return self.load_start(model, keep_head=same, head_prefixes=("classifier.", "head."),
                               allow_missing=("classifier.", "head."))

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
        split = self.train_split
        return [self.collate(idx) for idx in self.batch_order(split.lengths, batch_size, generator, rank, world_size)]

    def collate(self, idx) -> dict:
        """The training batch of the train split's windows ``idx``."""
        split = self.train_split
        x, m, t, y = pad_windows([split.windows[i] for i in idx], self.tokenizer.pad_id, [split.labels[i] for i in idx])
        return {"input_ids": x, "attention_mask": m, "token_type_ids": t, "labels": y}

    def forward(self, model, batch, device):
        """(float logits (B, T, K), the batch on ``device``)."""
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        return model(b["input_ids"], b["attention_mask"], b["token_type_ids"]).float(), b

    def label_loss(self, logits, labels, device):
        """Cross-entropy at the words' first wordpieces (the other positions carry IGNORE)."""
        import torch
        import torch.nn.functional as F

        weight = torch.from_numpy(self.class_weight).to(device) if self.class_weight is not None else None
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), weight=weight,
                               ignore_index=IGNORE)

    def compute_loss(self, model, batch, generator, device):
        logits, b = self.forward(model, batch, device)
        return self.label_loss(logits, b["labels"], device), {"tokens": int(batch["attention_mask"].sum())}

    def evaluate(self, model, device) -> dict[str, float]:
        if self.dev_split is None:
            return {}
        return self.evaluate_split(model, self.dev_split, device)

    def predict_split(self, model, split: NerSplit, device) -> tuple[list[list[str]], float]:
        """(predicted tags per sentence, mean token loss); words without a wordpiece are ``O``."""
        logits = window_logits(model, split.windows, pad_id=self.tokenizer.pad_id,
                               batch_size=max(self.opts.batch_size * 2, 8), device=device, precision=self.precision)
        pred = [["O"] * len(words) for words in split.sentences]
        nll, count = 0.0, 0
        for w, z, y in zip(split.windows, logits, split.labels, strict=True):
            best = z.argmax(-1)
            for i, k in zip(w.words, best, strict=True):
                pred[w.sentence][i] = self.id2label[int(k)]
            if len(y):
                nll -= float(log_softmax(z)[np.arange(len(y)), y].sum())
                count += len(y)
        return pred, nll / max(count, 1)

    def evaluate_split(self, model, split: NerSplit, device) -> dict[str, float]:
        pred, loss = self.predict_split(model, split, device)
        metrics = entity_metrics(split.gold, pred)
        metrics["loss"] = loss
        return metrics

    def checkpoint_payload(self, model) -> dict:
        model = getattr(model, "module", model)  # DDP
        hf_extra = {
            "id2label": {str(i): t for i, t in self.id2label.items()},
            "label2id": dict(self.label2id),
        }
        scheme = "IOBES" if any(t[:2] in ("E-", "S-") for t in self.label2id) else "BIO"
        bertcli = {"max_length": self.max_length, "tags": scheme}
        return {"state": model.state_dict(), "config": self.config, "tokenizer": self.tokenizer,
                "task": self.name, "hf_extra": hf_extra, "bertcli": bertcli}


def build_task(opts: FinetuneOptions) -> TokenClassificationTask:
    return TokenClassificationTask(opts)


def load_token_model(path, num_labels: int | None = None):
    """A ``BertForTokenClassification`` with the weights of checkpoint ``path`` (head size checked)."""
    from bertcli.checkpoint import load_checkpoint, load_into
    from bertcli.heads import BertForTokenClassification

    ckpt = load_checkpoint(path)
    head = ckpt.state.get("classifier.weight")
    if head is None or (num_labels is not None and head.shape[0] != num_labels):
        want = f" with {num_labels} outputs" if num_labels is not None else ""
        raise CheckpointError(f"{ckpt.path}: no token classification head{want}; fine-tune it first with "
                              f"bertcli finetune --task token-classification")
    model = BertForTokenClassification(ckpt.config, int(head.shape[0]))
    load_into(model, ckpt.state, str(ckpt.path))
    return model


# ============================================================ prediction on raw text
@dataclass
class Tagger:
    """A loaded token-classification checkpoint, ready to find entities in raw text."""

    model: Any
    tokenizer: Any
    id2label: dict[int, str]
    max_length: int
    device: Any
    precision: str
    path: Path

    def entities(self, texts: list[str], batch_size: int = 64, progress=None) -> tuple[list[list[dict]], int]:
        """Entities of every text and the number of texts split into windows.

        Each entity is ``{"type", "text", "start", "end", "score"}``; ``texts[i][start:end] == text``.
        """
        from seqeval.metrics.sequence_labeling import get_entities

        encs = _pieces(self.tokenizer, texts, pretokenized=False)
        windows: list[Window] = []
        spans: list[list[tuple[int, int]]] = []
        split = 0
        for t, enc in enumerate(encs):
            # one word per pre-tokenizer word: its character span in the original text
            starts: dict[int, int] = {}
            ends: dict[int, int] = {}
            for w, (a, b) in zip(enc.word_ids, enc.offsets, strict=True):
                if w is None:
                    continue
                starts[w] = min(a, starts.get(w, a))
                ends[w] = max(b, ends.get(w, b))
            order = sorted(starts)
            index = {w: i for i, w in enumerate(order)}  # words numbered 0.. in text order
            spans.append([(starts[w], ends[w]) for w in order])
            word_ids = [None if w is None else index[w] for w in enc.word_ids]
            ws, was_split = windows_of(enc.ids, word_ids, t, self.max_length - 2, self.tokenizer.cls_id,
                                       self.tokenizer.sep_id)
            windows.extend(ws)
            split += was_split
        logits = window_logits(self.model, windows, pad_id=self.tokenizer.pad_id, batch_size=batch_size,
                               device=self.device, precision=self.precision, progress=progress)
        tags = [["O"] * len(s) for s in spans]
        probs = [np.zeros(len(s), dtype=np.float64) for s in spans]
        for w, z in zip(windows, logits, strict=True):
            p = np.exp(log_softmax(z))
            best = p.argmax(-1)
            for i, k, row in zip(w.words, best, p, strict=True):
                tags[w.sentence][i] = self.id2label[int(k)]
                probs[w.sentence][i] = float(row[k])
        out: list[list[dict]] = []
        for text, words, tag, prob in zip(texts, spans, tags, probs, strict=True):
            found = []
            for kind, first, last in get_entities(tag):
                start, end = words[first][0], words[last][1]
                found.append({"type": kind, "text": text[start:end], "start": int(start), "end": int(end),
                              "score": round(float(prob[first:last + 1].mean()), 4)})
            out.append(found)
        return out, split


def load_tagger(model_dir, device: str = "auto", precision: str = "auto") -> Tagger:
    """Load a checkpoint fine-tuned with ``--task token-classification`` (label map checked)."""
    from bertcli.checkpoint import load_checkpoint, load_into, load_tokenizer
    from bertcli.device import resolve_device, resolve_precision
    from bertcli.heads import BertForTokenClassification

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev, inference=True)
    ckpt = load_checkpoint(model_dir)
    head = ckpt.state.get("classifier.weight")
    if head is None:
        raise CheckpointError(f"{ckpt.path}: has no token classification head; fine-tune it first with "
                              f"bertcli finetune --task token-classification")
    rows = int(head.shape[0])
    id2label = ckpt.id2label or {}
    if sorted(id2label) != list(range(rows)):
        raise CheckpointError(
            f"{ckpt.path}: config.json maps {len(id2label)} tags (id2label) but the classifier head has {rows} "
            f"outputs; the checkpoint is inconsistent"
        )
    tok = load_tokenizer(ckpt.path, ckpt.config.vocab_size)
    max_length = int(ckpt.bertcli.get("max_length") or min(ckpt.config.max_length, tok.model_max_length))
    max_length = max(3, min(max_length, ckpt.config.max_length))
    model = BertForTokenClassification(ckpt.config, rows)
    load_into(model, ckpt.state, str(ckpt.path))
    model.to(dev).eval()
    from bertcli.inference import prepare

    prepare(model, dev, prec)
    return Tagger(model, tok, id2label, max_length, dev, prec, ckpt.path)


def predict_entities(model_dir, texts: list[str], *, batch_size: int = 64, device: str = "auto",
                     precision: str = "auto") -> list[list[dict]]:
    """Entities of each text (library entry point; see :meth:`Tagger.entities`)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    return load_tagger(model_dir, device, precision).entities(texts, batch_size)[0]


# ------------------------------------------------------------ bertcli predict
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".ndjson")
ENTITY_COLUMNS = ["line", "type", "entity", "start", "end", "score"]


def open_entity_input(input: str, *, text_column: str | None, delimiter: str | None, no_quoting: bool | None,
                      no_header: bool | None, encoding: str):
    """``(source, text_column)`` for streaming: a :class:`~bertcli.streaming.LinesInput` of a plain text file
    (one text per line; ``text_column`` None) or a :class:`~bertcli.streaming.TableInput` with its checked
    text column (default ``text``)."""
    from bertcli.streaming import LinesInput, TableInput

    is_table = text_column is not None or str(input).lower().endswith(TABLE_SUFFIXES)
    if not is_table:
        for name, value in (("--delimiter", delimiter), ("--no-quoting", no_quoting), ("--no-header", no_header)):
            if value:
                raise ConfigError(f"{name} applies to CSV/TSV input; {input} is read as plain text (one text per "
                                  f"line); pass --text-column to read it as a table")
        return LinesInput(input, encoding), None
    source = TableInput(input, delimiter=delimiter, quoting=not no_quoting, header=not no_header, encoding=encoding)
    try:
        if text_column is None:
            if "text" not in source.columns:
                shown = ", ".join(repr(c) for c in source.columns[:30])
                raise ConfigError(f"{source.name}: no column 'text'; pass --text-column (columns found: {shown})")
            text_column = "text"
        source.check_column(text_column)
    except BaseException:
        source.close()
        raise
    return source, text_column


def entity_chunks(tagger: Tagger, source: Any, text_column: str | None, *, batch_size: int = 64,
                  chunk_size: int | None = None, progress=None):
    """``(texts, lines, records or None, entities, split)`` for each chunk of ``chunk_size`` rows of
    ``source`` (from :func:`open_entity_input`), in input order: the texts (blank lines of a plain text
    file skipped), their line numbers, the table records, each text's entities (:meth:`Tagger.entities`)
    and how many texts were split into windows. ``progress(rows_done, total)``."""
    from bertcli.streaming import check_chunk_size, run_chunks

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    size = check_chunk_size(chunk_size)
    if text_column is None:
        def numbered():  # (line number, text) of every line, in chunks
            base = 0
            for chunk in source.chunks(size):
                yield [(base + k, line) for k, line in enumerate(chunk, start=1)]
                base += len(chunk)

        def parts(chunk):
            kept = [(n, t) for n, t in chunk if t.strip()]
            return [t for _, t in kept], [n for n, _ in kept], None

        chunks = numbered()
    else:
        chunks = source.chunks(size)

        def parts(table):
            return table.column(text_column), list(table.lines), table.records()

    def step(chunk, report):
        texts, lines, records = parts(chunk)
        n = len(chunk)
        seen = [0]

        def advance(k: int, windows: int) -> None:  # windows done -> rows done in this chunk
            seen[0] += k
            report(n * seen[0] // max(windows, 1))

        found, split = tagger.entities(texts, batch_size, progress=advance if progress is not None else None)
        return texts, lines, records, found, split

    for _, result in run_chunks(chunks, step, total=source.total, progress=progress):
        yield result


def predict_command(*, model, input, output, json_out, quiet, text_column, batch_size, delimiter, no_quoting,
                    no_header, encoding, device, precision, emit_json, err_console, chunk_size=None) -> None:
    """``bertcli predict`` for a token-classification checkpoint: entities of every input text.

    ``--json`` prints one JSON object per text on stdout (the input record, or ``line`` and
    ``text`` for plain text, plus ``entities``). ``--output FILE``: ``.jsonl`` the same objects,
    ``.csv``/``.tsv`` one row per entity (``line, type, entity, start, end, score``). Without
    either, stdout gets the rows (TSV; CSV or JSON lines for a .csv or .jsonl input).
    Texts are read, tagged and written ``chunk_size`` rows at a time (bounded memory); an output
    file is renamed into place only when complete.
    The command passes the screen in: ``emit_json(obj)`` writes one JSON line, ``err_console`` is
    the rich console for the progress bar and summary (the library does not import the CLI).
    """
    from collections import Counter

    from bertcli.data.tables import TableWriter
    from bertcli.streaming import check_chunk_size, progress_bar

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    check_chunk_size(chunk_size)
    tagger = load_tagger(model, device, precision)
    started = time.perf_counter()
    source, column = open_entity_input(input, text_column=text_column, delimiter=delimiter, no_quoting=no_quoting,
                                       no_header=no_header, encoding=encoding)
    with source:
        if column is None:
            key, obj_columns = "entities", ["line", "text", "entities"]
        else:  # a table's every column, then the entities (predicted_entities if the table has "entities")
            key = "entities" if "entities" not in source.columns else "predicted_entities"
            obj_columns = [*source.columns, key]

        def writer_for(name: str, stream=None) -> tuple[TableWriter, bool]:
            objects = name.lower().endswith((".jsonl", ".json", ".ndjson"))
            try:
                return TableWriter(name, obj_columns if objects else ENTITY_COLUMNS, stream=stream), objects
            except OSError as exc:
                raise DataError(f"{name}: cannot write the predictions ({exc.strerror})") from None

        writers: list[tuple[TableWriter, bool]] = []
        try:
            if output != "-":
                writers.append(writer_for(output))
            elif not json_out:
                suffix = Path(input).suffix.lower() if input != "-" else ""
                writers.append(writer_for("stdout" + (suffix if suffix in (".csv", ".jsonl") else ".tsv"),
                                          sys.stdout))
            texts_n, split, kinds = 0, 0, Counter()
            with progress_bar("predict", source.total, enabled=not quiet) as progress:
                for texts, lines, records, found, chunk_split in entity_chunks(
                        tagger, source, column, batch_size=batch_size, chunk_size=chunk_size, progress=progress):
                    objects = [{"line": line, "text": text, key: ents} if records is None else {**records[i], key: ents}
                               for i, (text, line, ents) in enumerate(zip(texts, lines, found, strict=True))]
                    if json_out:
                        for obj in objects:
                            emit_json(obj)
                    if writers:
                        rows = [{"line": line, "type": e["type"], "entity": e["text"], "start": e["start"],
                                 "end": e["end"], "score": e["score"]}
                                for line, ents in zip(lines, found, strict=True) for e in ents]
                        for writer, as_objects in writers:
                            try:
                                writer.write(objects if as_objects else rows)
                            except OSError as exc:
                                raise DataError(f"{output}: cannot write the predictions ({exc.strerror})") from None
                    texts_n += len(texts)
                    split += chunk_split
                    kinds.update(e["type"] for ents in found for e in ents)
            for writer, _ in writers:
                try:
                    writer.close()
                except OSError as exc:
                    raise DataError(f"{output}: cannot write the predictions ({exc.strerror})") from None
        except BaseException:
            for writer, _ in writers:
                writer.abort()
            raise
    if not quiet:
        per = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
        where = f" -> {output}" if output != "-" else ""
        from bertcli.inference import rate

        seconds = time.perf_counter() - started
        err_console.print(f"{texts_n} texts, {sum(kinds.values())} entities" + (f" ({per})" if per else "")
                          + f" ({rate(texts_n, seconds, 'texts')}, {tagger.precision} on {tagger.device})"
                          + where + (f"; {split} long texts tagged in several windows" if split else ""),
                          soft_wrap=True)
