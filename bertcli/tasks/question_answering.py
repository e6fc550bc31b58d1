"""Extractive question answering (SQuAD v1.1 / v2.0) with a start / end span head.

Features. Every question is paired with windows of its context: ``[CLS] question [SEP] context
window [SEP]``, at most ``--max-length`` tokens, the question cut to ``--max-query-length``
tokens. A context longer than one window is covered by several windows, consecutive windows
sharing ``--doc-stride`` tokens (the meaning of ``stride`` in Hugging Face tokenizers and
``run_qa.py``). The context is tokenized once with character offsets, so every context token of
every window maps back to exact characters of the original context.

Labels. A window's training target is the token span of the answer when the answer lies wholly
inside the window, else ``[CLS]`` (index 0) for both start and end, the usual recipe (BERT,
``run_qa.py``). Unanswerable questions (SQuAD 2.0 ``is_impossible``) point at ``[CLS]`` everywhere.

Post-processing. For each window the ``--n-best`` start and end logits among the context tokens
are paired; a span is valid when end >= start and it holds at most ``--max-answer-length``
tokens; its score is start logit + end logit, and the example's answer is the best span over all
its windows, cut from the context by the offsets. For models trained with unanswerable questions
the null score (``[CLS]`` start + end, the smallest over the windows) is compared with the best
span: the answer is empty when null > best + ``--null-threshold``.

``predict_command`` is ``bertcli predict`` for a QA checkpoint; :class:`QuestionAnswerer` is the
library entry point behind it and ``bertcli answer``.
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertcli.errors import CheckpointError, ConfigError, DataError
from bertcli.tasks.classification import (
    FinetuneOptions,
    FinetuneTask,
    pad,
    sorted_batches,
)

TASKS = ("question-answering",)
METRICS = {"question-answering": ("f1", "exact_match", "loss")}  # the first is the default --metric
LOWER_IS_BETTER = ("loss",)
REQUIRED = {"question-answering": ()}

# Options of the table tasks that mean nothing for SQuAD JSON files.
_NOT_FOR_SQUAD = ("text_column", "text_pair_column", "label_column", "delimiter", "no_quoting", "no_header")
DEFAULTS = {"max_length": 384, "doc_stride": 128, "max_query_length": 64, "max_answer_length": 30, "n_best": 20,
            "null_threshold": 0.0}


def check_window_options(max_length: int, doc_stride: int, max_query_length: int, max_answer_length: int,
                         n_best: int, n_special: int = 3) -> None:
    """Window and search options in range (``n_special``: the special tokens of a pair, 3 for BERT,
    4 for RoBERTa); each error names the option and what to use."""
    if max_query_length < 1:
        raise ConfigError(f"--max-query-length must be at least 1, got {max_query_length}")
    if doc_stride < 0:
        raise ConfigError(f"--doc-stride must be zero or positive, got {doc_stride}")
    if max_answer_length < 1:
        raise ConfigError(f"--max-answer-length must be at least 1, got {max_answer_length}")
    if n_best < 1:
        raise ConfigError(f"--n-best must be at least 1, got {n_best}")
    room = max_length - max_query_length - n_special
    if room <= doc_stride:
        raise ConfigError(
            f"--max-length {max_length} leaves {max(room, 0)} context tokens per window beside a "
            f"--max-query-length {max_query_length} question, not more than --doc-stride {doc_stride} "
            f"(the tokens consecutive windows share); use --max-length 384 (the usual for SQuAD), "
            f"or a smaller --doc-stride or --max-query-length"
        )


def validate_options(opts: FinetuneOptions) -> None:
    for name in _NOT_FOR_SQUAD:
        if getattr(opts, name):
            raise ConfigError(f"--{name.replace('_', '-')} does not apply to --task question-answering "
                              "(the training and dev files are SQuAD JSON)")
    check_window_options(opts.max_length, opts.doc_stride, opts.max_query_length, opts.max_answer_length,
                         opts.n_best)


# ============================================================ windows
@dataclass
class Window:
    """One model input: ``[CLS] question [SEP] context[a:b] [SEP]``."""

    example: int                   # index of the question in its split
    ids: list[int]
    type_ids: list[int]
    context_pos: int               # position in ``ids`` of the window's first context token
    offsets: list[tuple[int, int]]  # character offsets (into the context) of the window's context tokens
    start: int = 0                 # training target (token positions in ``ids``; 0 = [CLS])
    end: int = 0


@dataclass
class Features:
    windows: list[Window]
    truncated_questions: int = 0   # questions cut to --max-query-length
    split_contexts: int = 0        # examples whose context needed more than one window
    unlabelled: list[int] = field(default_factory=list)  # examples whose answer covers no token
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.lengths = np.fromiter((len(w.ids) for w in self.windows), dtype=np.int64, count=len(self.windows))


def _context_tokens(tokenizer, contexts: list[str]) -> dict[str, tuple[list[int], list[tuple[int, int]]]]:
    """Each distinct context tokenized once: (ids, character offsets), no special tokens."""
    unique = list(dict.fromkeys(contexts))
    out: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}
    step = 2048
    for i in range(0, len(unique), step):
        chunk = unique[i:i + step]
        # A huge max length: no truncation; [CLS] and [SEP] are dropped below.
        for text, enc in zip(chunk, tokenizer.encode_batch(chunk, max_length=1 << 30), strict=True):
            out[text] = (enc.ids[1:-1], [tuple(o) for o in enc.offsets[1:-1]])
    return out


def token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """Context tokens (first, last) covering characters [char_start, char_end), or None when none does."""
    ends = [e for _, e in offsets]
    starts = [s for s, _ in offsets]
    first = bisect_right(ends, char_start)       # first token ending after the answer's first character
    last = bisect_left(starts, char_end) - 1     # last token starting before the answer's end
    if first >= len(offsets) or last < first:
        return None
    return first, last


def make_windows(tokenizer, questions: list[str], contexts: list[str], *, max_length: int, doc_stride: int,
                 max_query_length: int, answers: list[tuple[int, int] | None] | None = None) -> Features:
    """Windows of every (question, context); ``answers`` (character spans, None = no answer) sets targets."""
    before, between, after, b_type = tokenizer.pair_layout()  # [CLS] q [SEP] c [SEP]; <s> q </s></s> c </s>
    check_window_options(max_length, doc_stride, max_query_length, 1, 1, len(before) + len(between) + len(after))
    ctx = _context_tokens(tokenizer, contexts)
    q_encs = tokenizer.encode_batch(list(questions), max_length=max_query_length + 2)
    windows: list[Window] = []
    truncated = split = 0
    unlabelled: list[int] = []
    for i, (q_enc, context) in enumerate(zip(q_encs, contexts, strict=True)):
        q_ids = q_enc.ids[1:-1]
        truncated += int(q_enc.truncated)
        c_ids, c_offsets = ctx[context]
        room = max_length - len(q_ids) - len(before) - len(between) - len(after)
        span = None
        if answers is not None and answers[i] is not None:
            span = token_span(c_offsets, *answers[i])
            if span is None:
                unlabelled.append(i)
        head = [*before, *q_ids, *between]
        pos = len(head)
        n = len(c_ids)
        begin = 0
        count = 0
        while True:
            stop = min(begin + room, n)
            start = end = 0
            if span is not None and begin <= span[0] and span[1] < stop:
                start, end = pos + span[0] - begin, pos + span[1] - begin
            ids = head + c_ids[begin:stop] + after
            windows.append(Window(i, ids, [0] * pos + [b_type] * (len(ids) - pos), pos, c_offsets[begin:stop],
                                  start, end))
            count += 1
            if stop >= n:
                break
            begin += room - doc_stride
        split += int(count > 1)
    return Features(windows, truncated, split, unlabelled)


def pad_windows(windows: list[Window], pad_id: int):
    return pad([w.ids for w in windows], [w.type_ids for w in windows], pad_id)


def window_logits(model, windows: list[Window], *, pad_id: int, batch_size: int, device, precision: str = "fp32",
                  progress=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, end) float32 logits of every window (its own length), in the input order."""
    import torch

    from bertcli.inference import forward_context

    lengths = np.fromiter((len(w.ids) for w in windows), dtype=np.int64, count=len(windows))
    out: list = [None] * len(windows)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), forward_context(model, device, precision):
            for idx in sorted_batches(lengths, batch_size):
                x, m, t = pad_windows([windows[i] for i in idx], pad_id)
                start, end = model(x.to(device), m.to(device), t.to(device))
                start, end = start.float().cpu().numpy(), end.float().cpu().numpy()
                for row, i in enumerate(idx):
                    n = len(windows[i].ids)
                    out[i] = (start[row, :n], end[row, :n])
                if progress is not None:
                    progress(len(idx), len(windows))
    finally:
        model.train(was_training)
    return out


# ============================================================ post-processing
@dataclass
class Span:
    answer: str
    score: float        # start logit + end logit
    start: int | None   # character offsets into the context (None for the empty answer)
    end: int | None
    probability: float = 0.0

    def as_dict(self) -> dict:
        return {"answer": self.answer, "score": round(self.score, 4), "probability": round(self.probability, 4),
                "start": self.start, "end": self.end}


def _top(values: np.ndarray, k: int) -> np.ndarray:
    if len(values) <= k:
        return np.arange(len(values))
    return np.argpartition(-values, k - 1)[:k]


def best_spans(context: str, windows: list[Window], logits: list[tuple[np.ndarray, np.ndarray]], *, n_best: int,
               max_answer_length: int, with_null: bool = False, null_threshold: float = 0.0,
               top_k: int = 1) -> list[Span]:
    """The ``top_k`` best answers of one example from its windows' logits, best first.

    Only spans inside the context part of a window are candidates; the same character span found
    in two windows counts once (its best score). With ``with_null`` the empty answer competes: it
    ranks first when the null score ([CLS] start + end, smallest over the windows) exceeds the best
    span's score by more than ``null_threshold``. ``probability`` is a softmax over the candidates.
    """
    found: dict[tuple[int, int], float] = {}
    null = None
    for w, (s, e) in zip(windows, logits, strict=True):
        null_w = float(s[0] + e[0])
        null = null_w if null is None else min(null, null_w)
        n = len(w.offsets)
        if n == 0:
            continue
        cs, ce = s[w.context_pos:w.context_pos + n], e[w.context_pos:w.context_pos + n]
        si, ei = _top(cs, n_best), _top(ce, n_best)
        scores = cs[si][:, None] + ce[ei][None, :]                     # (starts, ends)
        length = ei[None, :] - si[:, None]
        valid = (length >= 0) & (length < max_answer_length)
        for a, b in zip(*np.nonzero(valid), strict=True):
            key = (w.offsets[si[a]][0], w.offsets[ei[b]][1])
            score = float(scores[a, b])
            if score > found.get(key, -np.inf):
                found[key] = score
    ranked = sorted(found.items(), key=lambda kv: -kv[1])[:max(top_k, n_best)]
    spans = [Span(context[a:b], score, a, b) for (a, b), score in ranked]
    if with_null and null is not None:
        empty = Span("", null, None, None)
        if not spans or null > spans[0].score + null_threshold:
            spans.insert(0, empty)
        else:
            where = next((i for i, sp in enumerate(spans) if null - null_threshold > sp.score), len(spans))
            spans.insert(where, empty)
    if spans:
        z = np.array([sp.score for sp in spans], dtype=np.float64)
        p = np.exp(z - z.max())
        p /= p.sum()
        for sp, prob in zip(spans, p, strict=True):
            sp.probability = float(prob)
    if not spans:
        spans = [Span("", 0.0, None, None, 1.0)]  # a context with no tokens
    return spans[:top_k]


def group_windows(windows: list[Window], n_examples: int) -> list[list[int]]:
    groups: list[list[int]] = [[] for _ in range(n_examples)]
    for j, w in enumerate(windows):
        groups[w.example].append(j)
    return groups


def window_loss(windows: list[Window], logits: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean of the start and end cross-entropy over windows (padding excluded)."""
    if not windows:
        return 0.0
    total = 0.0
    for w, (s, e) in zip(windows, logits, strict=True):
        for z, target in ((s, w.start), (e, w.end)):
            m = z.max()
            total += float(m + np.log(np.exp(z - m).sum()) - z[target]) / 2
    return total / len(windows)


# ============================================================ the task
@dataclass
class QASplit:
    name: str
    path: str
    squad: object                  # bertcli.data.squad.SquadFile
    features: Features

    def __len__(self) -> int:
        return len(self.squad.questions)


class QuestionAnsweringTask(FinetuneTask):
    """Start / end span head on every token; SQuAD exact match and F1 on the dev file."""

    def __init__(self, opts: FinetuneOptions):
        super().__init__(opts)
        self.train_split = self._load("train", opts.train, training=True)
        self.with_null = self.train_split.squad.has_impossible
        if self.with_null is False and not any(w.start for w in self.train_split.features.windows):
            raise DataError(f"{opts.train}: no answer of any question lies inside a window; "
                            "check the answers or use a larger --max-length")
        self.dev_split = self._load("dev", opts.dev) if opts.dev else None
        self.test_split = self._load("test", opts.test) if opts.test else None

    # ------------------------------------------------------------ data
    def _load(self, name: str, path: str, training: bool = False) -> QASplit:
        from bertcli.data.squad import read_squad

        if not Path(path).is_file():
            raise DataError(f"{path}: no such file (--{name})")
        squad = read_squad(path, labelled=True, encoding=self.opts.encoding)
        spans = []
        for q in squad.questions:
            a = q.train_answer
            spans.append(None if a is None else (a.start, a.start + len(a.text)))
        if training and squad.mismatched and len(squad.mismatched) == sum(len(q.answers) for q in squad.questions):
            raise DataError(f"{path}: no answer_start matches its answer text (first: {squad.mismatched[0]}); "
                            "answer_start must be the character offset of the answer in the context")
        features = make_windows(self.tokenizer, [q.question for q in squad.questions],
                                [q.context for q in squad.questions], max_length=self.max_length,
                                doc_stride=self.opts.doc_stride, max_query_length=self.opts.max_query_length,
                                answers=spans)
        if training:
            # An answerable question without a usable answer would teach "no answer": leave it out.
            drop = {i for i, (q, sp) in enumerate(zip(squad.questions, spans, strict=True))
                    if not q.impossible and sp is None} | set(features.unlabelled)
            if drop:
                features = Features([w for w in features.windows if w.example not in drop],
                                    features.truncated_questions, features.split_contexts, features.unlabelled)
        if not self.opts.quiet:
            notes = [f"{name}: {len(squad)} questions, {len(features.windows)} windows"]
            if features.split_contexts:
                notes.append(f"{features.split_contexts} contexts longer than one window "
                             f"(--max-length {self.max_length}, --doc-stride {self.opts.doc_stride})")
            if squad.mismatched:
                notes.append(f"{len(squad.mismatched)} answers whose answer_start does not match their text "
                             f"(first: {squad.mismatched[0]}) are not used as training targets"
                             + ("; the question is left out when it has no other answer" if training else ""))
            if features.unlabelled:
                notes.append(f"{len(features.unlabelled)} answers cover no token"
                             + (" (left out)" if training else ""))
            sys.stderr.write("; ".join(notes) + "\n")
        return QASplit(name, path, squad, features)

    @property
    def truncated(self) -> dict[str, int]:
        """Questions cut to --max-query-length (contexts are never cut: they get more windows)."""
        return {s.name: s.features.truncated_questions for s in self.splits}

    def test_metrics(self, path: str, device) -> dict[str, float]:
        model = load_qa_model(path)
        model.to(device)
        return self.evaluate_split(model, self.test_split, device)

    # ------------------------------------------------------------ Task interface
    def build_model(self):
        from bertcli.checkpoint import load_into
        from bertcli.heads import BertForQuestionAnswering

        model = BertForQuestionAnswering(self.config)
        load_into(model, self.checkpoint.state, str(self.checkpoint.path), allow_missing=("qa.", "head."))
        return model

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
        import torch

        feats = self.train_split.features
        groups = self.batch_order(feats.lengths, batch_size, generator, rank, world_size)
        out = []
        for idx in groups:
            ws = [feats.windows[i] for i in idx]
            x, m, t = pad_windows(ws, self.tokenizer.pad_id)
            out.append({"input_ids": x, "attention_mask": m, "token_type_ids": t,
                        "start_positions": torch.tensor([w.start for w in ws], dtype=torch.long),
                        "end_positions": torch.tensor([w.end for w in ws], dtype=torch.long)})
        return out

    def compute_loss(self, model, batch, generator, device):
        import torch.nn.functional as F

        tokens = int(batch["attention_mask"].sum())
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        start, end = model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
        padding = b["attention_mask"] == 0
        start = start.float().masked_fill(padding, -1e4)
        end = end.float().masked_fill(padding, -1e4)
        loss = (F.cross_entropy(start, b["start_positions"]) + F.cross_entropy(end, b["end_positions"])) / 2
        return loss, {"tokens": tokens}

    def evaluate(self, model, device) -> dict[str, float]:
        if self.dev_split is None:
            return {}
        return self.evaluate_split(model, self.dev_split, device)

    def evaluate_split(self, model, split: QASplit, device) -> dict[str, float]:
        from bertcli.data.squad import squad_metrics

        windows = split.features.windows
        logits = window_logits(model, windows, pad_id=self.tokenizer.pad_id,
                               batch_size=max(self.opts.batch_size * 2, 8), device=device, precision=self.precision)
        predictions = {}
        for q, group in zip(split.squad.questions, group_windows(windows, len(split)), strict=True):
            best = best_spans(q.context, [windows[j] for j in group], [logits[j] for j in group],
                              n_best=self.opts.n_best, max_answer_length=self.opts.max_answer_length,
                              with_null=self.with_null, null_threshold=self.opts.null_threshold)
            predictions[q.id] = best[0].answer
        metrics = squad_metrics(predictions, split.squad.questions)
        metrics["loss"] = window_loss(windows, logits)
        return {"f1": metrics["f1"], "exact_match": metrics["exact_match"], "loss": metrics["loss"]}

    def checkpoint_payload(self, model) -> dict:
        model = getattr(model, "module", model)  # DDP
        bertcli = {
            "max_length": self.max_length,
            "doc_stride": self.opts.doc_stride,
            "max_query_length": self.opts.max_query_length,
            "max_answer_length": self.opts.max_answer_length,
            "n_best": self.opts.n_best,
            "null_threshold": self.opts.null_threshold,
            "version_2_with_negative": self.with_null,
        }
        return {"state": model.state_dict(), "config": self.config, "tokenizer": self.tokenizer,
                "task": self.name, "bertcli": bertcli}


def build_task(opts: FinetuneOptions) -> QuestionAnsweringTask:
    return QuestionAnsweringTask(opts)


# ============================================================ prediction
def load_qa_model(path, ckpt=None):
    """A BertForQuestionAnswering from a checkpoint with a span head (bertcli's or Hugging Face's)."""
    from bertcli.checkpoint import load_checkpoint, load_into
    from bertcli.heads import BertForQuestionAnswering

    ckpt = ckpt or load_checkpoint(path)
    if "qa" not in ckpt.heads:
        raise CheckpointError(f"{path}: no question-answering head (qa_outputs); fine-tune one with "
                              "bertcli finetune --task question-answering")
    model = BertForQuestionAnswering(ckpt.config)
    load_into(model, ckpt.state, str(path))
    return model


def window_settings(block: dict, max_positions: int, **overrides) -> dict:
    """Window and search settings: the overrides, else the checkpoint's, else defaults that fit the model."""
    settings = {k: block.get(k, v) for k, v in DEFAULTS.items()}
    settings["max_length"] = min(int(settings["max_length"]), max_positions)
    if "max_query_length" not in block:  # a Hugging Face checkpoint: fit the defaults to a short model
        settings["max_query_length"] = min(64, settings["max_length"] // 4)
    if "doc_stride" not in block:
        settings["doc_stride"] = min(128, (settings["max_length"] - settings["max_query_length"] - 3) // 2)
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


class QuestionAnswerer:
    """Answers questions about contexts with a question-answering checkpoint.

    Window and search settings default to the ones the model was fine-tuned with (other
    checkpoints: max length 384 or the model's limit, stride 128, question 64, answer 30, n-best 20,
    made smaller where they do not fit a short model).
    """

    def __init__(self, model_dir, device: str = "auto", precision: str = "auto", **overrides):
        from bertcli.checkpoint import load_checkpoint, load_tokenizer
        from bertcli.device import resolve_device, resolve_precision

        ckpt = load_checkpoint(model_dir)
        model = load_qa_model(model_dir, ckpt)
        block = ckpt.bertcli or {}
        settings = window_settings(block, ckpt.config.max_length, **overrides)
        self.max_length = int(settings["max_length"])
        self.doc_stride = int(settings["doc_stride"])
        self.max_query_length = int(settings["max_query_length"])
        self.max_answer_length = int(settings["max_answer_length"])
        self.n_best = int(settings["n_best"])
        self.null_threshold = float(settings["null_threshold"])
        self.with_null = bool(block.get("version_2_with_negative", False))
        check_window_options(self.max_length, self.doc_stride, self.max_query_length, self.max_answer_length,
                             self.n_best)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, inference=True)
        self.tokenizer = load_tokenizer(model_dir, ckpt.config.vocab_size)
        from bertcli.inference import prepare

        self.model = prepare(model.to(self.device), self.device, self.precision)

    def answer(self, questions: list[str], contexts: list[str], *, top_k: int = 1, batch_size: int = 64,
               progress=None) -> list[list[Span]]:
        """The ``top_k`` best answers of every (question, context), best first."""
        if top_k < 1:
            raise ConfigError(f"--top-k must be at least 1, got {top_k}")
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        feats = make_windows(self.tokenizer, questions, contexts, max_length=self.max_length,
                             doc_stride=self.doc_stride, max_query_length=self.max_query_length)
        windows = feats.windows
        logits = window_logits(self.model, windows, pad_id=self.tokenizer.pad_id, batch_size=batch_size,
                               device=self.device, precision=self.precision, progress=progress)
        out = []
        for context, group in zip(contexts, group_windows(windows, len(questions)), strict=True):
            out.append(best_spans(context, [windows[j] for j in group], [logits[j] for j in group],
                                  n_best=max(self.n_best, top_k), max_answer_length=self.max_answer_length,
                                  with_null=self.with_null, null_threshold=self.null_threshold, top_k=top_k))
        return out


def answer_chunks(qa: QuestionAnswerer, questions: list[str], contexts: list[str], *, top_k: int = 1,
                  batch_size: int = 64, chunk_size: int | None = None, progress=None):
    """:meth:`QuestionAnswerer.answer` ``chunk_size`` questions at a time: yields each chunk's answers
    (one list of spans per question, best first), in input order, so that the windows and logits held at
    once depend on the chunk, not on the number of questions. ``progress(questions_done, total)``."""
    from bertcli.streaming import check_chunk_size, run_chunks

    if len(questions) != len(contexts):
        raise ValueError("questions and contexts differ in length")
    size = check_chunk_size(chunk_size)
    starts = range(0, len(questions), size)

    def step(start, report):
        q, c = questions[start:start + size], contexts[start:start + size]
        seen = [0]

        def advance(k: int, windows: int) -> None:  # windows done -> questions done in this chunk
            seen[0] += k
            report(len(q) * seen[0] // max(windows, 1))

        return qa.answer(q, c, top_k=top_k, batch_size=batch_size, progress=advance if progress else None)

    for _, spans in run_chunks(starts, step, total=len(questions), progress=progress,
                               size=lambda start: min(size, len(questions) - start)):
        yield spans


def predict_command(*, model, input, output, json_out, quiet, text_column, batch_size, delimiter, no_quoting,
                    no_header, encoding, device, precision, emit_json, err_console, chunk_size=None) -> None:
    """``bertcli predict`` for a question-answering checkpoint: answer every question of a SQuAD file.

    Writes the official predictions file ``{question_id: answer_text}`` (to ``--output``, else
    stdout); ``--json`` prints one JSON line per question (``id, answer, score, probability,
    start, end``) on stdout instead, as each chunk of ``chunk_size`` questions is answered. When the
    file has gold answers, exact match and F1 go to stderr. The output file is written under a
    temporary name and renamed into place. The command passes the screen in: ``emit_json(obj)``
    writes one JSON line, ``err_console`` is the rich console for the progress bar and summary (the
    library does not import the CLI).
    """
    import json
    import os
    import tempfile

    from bertcli.data.squad import read_squad, squad_metrics
    from bertcli.streaming import check_chunk_size, progress_bar

    given = {"--text-column": text_column, "--delimiter": delimiter, "--quoting/--no-quoting": no_quoting,
             "--header/--no-header": no_header}
    for flag, value in given.items():
        if value is not None:
            raise ConfigError(f"{flag} does not apply to a question-answering model (its input is a SQuAD JSON file)")
    check_chunk_size(chunk_size)
    qa = QuestionAnswerer(model, device=device, precision=precision)
    squad = read_squad(input, labelled=False, encoding=encoding)
    questions = [q.question for q in squad.questions]
    contexts = [q.context for q in squad.questions]
    started = time.perf_counter()
    predictions: dict[str, str] = {}  # the answers' text only: the windows and logits go chunk by chunk
    done = 0
    with progress_bar("answer", len(questions), enabled=not quiet, unit="questions") as progress:
        for spans in answer_chunks(qa, questions, contexts, batch_size=batch_size, chunk_size=chunk_size,
                                   progress=progress):
            for q, best in zip(squad.questions[done:done + len(spans)], spans, strict=True):
                predictions[q.id] = best[0].answer
                if json_out:
                    emit_json({"id": q.id, **best[0].as_dict()})
            done += len(spans)
    seconds = time.perf_counter() - started
    text = json.dumps(predictions, ensure_ascii=False, indent=1) + "\n"
    if output != "-":
        target = Path(output)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except OSError as exc:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise DataError(f"{output}: cannot write the predictions ({exc.strerror})") from None
    elif not json_out:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not quiet:
        where = f" -> {output}" if output != "-" else ""
        from bertcli.inference import rate

        line = (f"{len(predictions)} questions answered{where} ({rate(len(predictions), seconds, 'questions')}, "
                f"{qa.precision} on {qa.device})")
        if squad.has_answers:
            scored = [q for q in squad.questions if q.answers or q.impossible]
            m = squad_metrics(predictions, scored)
            line += f"; exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f} on {len(scored)} questions with answers"
        err_console.print(line, soft_wrap=True)
