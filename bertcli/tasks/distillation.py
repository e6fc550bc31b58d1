"""``finetune --teacher DIR``: the fine-tuning tasks, with a teacher's outputs in the loss.

Not a task of its own (no ``build_task``): :func:`build_finetune_task` wraps the task that
``--task`` names, and the one training loop runs it as it runs any other.

* classification, pairs, regression, token classification -- :class:`LogitDistillTask` wraps the
  task: its model, batches, dev metrics and checkpoint stay the task's; the loss becomes
  ``alpha * teacher_term + (1 - alpha) * label_loss`` with the teacher term the KL at
  ``--temperature`` (``bertcli.distill.kd_loss``; per token, at the words' first wordpieces, for
  token classification) or the MSE to the teacher's scores (regression). ``--unlabelled FILE``
  adds rows (same text columns, no label column) that learn from the teacher term alone.
* sentence embeddings -- :class:`EmbeddingDistillTask`: the student learns the teacher's sentence
  embeddings with MSE (sentence-transformers' model distillation) from a text file (one sentence a
  line, or ``--text-column`` of a table); no labels. ``--dev`` / ``--test`` are scored as for
  ``--task sentence-embedding`` (Spearman on scored pairs). ``--teacher-cache FILE.safetensors``
  keeps the teacher's embeddings between runs (keyed by the token ids, the teacher and its pooling;
  a stale file is recomputed and rewritten).

The teacher runs once, before training: its logits / embeddings for every training row are kept in
memory (float32 arrays) and gathered into the batches, so no epoch pays for a teacher forward pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import CheckpointError, ConfigError, DataError
from bertcli.tasks.classification import FinetuneOptions, FinetuneTask, Split, batched_logits, read_split
from bertcli.tasks.sentence_embedding import PairSplit, SentenceEmbeddingTask, build_encoder, embed_ids
from bertcli.train import Task

TEACHER_TASKS = ("classification", "regression", "token-classification", "sentence-embedding")
TEXT_SUFFIXES = (".txt", ".text")


# ============================================================ options
def validate_distillation(opts: FinetuneOptions) -> None:
    """The distillation options, checked together (each error names the option)."""
    from bertcli.distill import check_alpha, check_temperature

    if opts.teacher is None:
        for name in ("unlabelled", "teacher_cache"):
            if getattr(opts, name):
                raise ConfigError(f"--{name.replace('_', '-')} belongs to distillation: give --teacher DIR")
        return
    if opts.task not in TEACHER_TASKS:
        raise ConfigError(f"--teacher applies to --task {', '.join(TEACHER_TASKS)}; not to --task {opts.task}")
    check_alpha(opts.alpha)
    check_temperature(opts.temperature)
    if opts.unlabelled and opts.task not in ("classification", "regression"):
        what = ("its --train text file has no labels already" if opts.task == "sentence-embedding"
                else "CoNLL files without tags are not read")
        raise ConfigError(f"--unlabelled applies to --task classification or regression ({opts.task}: {what})")
    if opts.teacher_cache and opts.task != "sentence-embedding":
        raise ConfigError("--teacher-cache applies to --task sentence-embedding (the teacher's embeddings)")
    if opts.teacher_cache and not opts.teacher_cache.endswith(".safetensors"):
        raise ConfigError(f"--teacher-cache {opts.teacher_cache}: name a .safetensors file")
    if opts.task == "sentence-embedding":
        from bertcli.heads import POOLINGS

        if opts.loss not in (None, "mse"):
            raise ConfigError(f"--teacher with --task sentence-embedding trains on the MSE to the teacher's "
                              f"embeddings; drop --loss {opts.loss}")
        if opts.pooling not in POOLINGS:
            raise ConfigError(f"--pooling '{opts.pooling}': valid values: {', '.join(POOLINGS)}")
        if (opts.dev or opts.test) and not (opts.text_column and opts.text_pair_column and opts.label_column):
            raise ConfigError("--dev/--test are scored by Spearman on scored pairs: give --text-column, "
                              "--text-pair-column and --label-column (the columns of the --dev/--test file)")


def required_options(opts: FinetuneOptions, required: tuple[str, ...]) -> tuple[str, ...]:
    """The options ``--task`` needs; sentence-embedding distillation needs only a text file."""
    if opts.teacher and opts.task == "sentence-embedding":
        return ()
    return required


def build_finetune_task(opts: FinetuneOptions) -> Task:
    """The task for ``opts``: ``--task``'s own, or wrapped for ``--teacher``."""
    from bertcli.tasks import task_module

    if not opts.teacher:
        return task_module(opts.task).build_task(opts)
    if opts.task == "sentence-embedding":
        return EmbeddingDistillTask(opts)
    return LogitDistillTask(task_module(opts.task).build_task(opts), opts)


def _device_and_precision(opts: FinetuneOptions):
    from bertcli.device import resolve_device, resolve_precision

    device = resolve_device(opts.device)
    return device, resolve_precision(opts.precision, device)


# ============================================================ logits: classification, regression, tokens
class LogitDistillTask(Task):
    """A fine-tuning task whose loss also pulls the student's logits towards a teacher's."""

    def __init__(self, inner, opts: FinetuneOptions):
        from bertcli.checkpoint import load_into
        from bertcli.distill import load_teacher
        from bertcli.tokenizer import check_max_length

        self.inner, self.opts = inner, opts
        self.name = inner.name
        self.run_config = inner.run_config
        self.token = opts.task == "token-classification"
        self.regression = opts.task == "regression"
        teacher, _ = load_teacher(opts.teacher, inner.tokenizer, opts.model)
        check_max_length(inner.max_length, teacher.config.max_length, f"--max-length (for the teacher {opts.teacher})")
        model = self._teacher_model(teacher)
        load_into(model, teacher.state, f"--teacher {opts.teacher}", allow_missing=("bert.pooler.",))
        self.unlabelled = self._add_unlabelled() if opts.unlabelled else 0
        self.targets = self._teacher_outputs(model)

    # ------------------------------------------------------------ the teacher
    def _teacher_model(self, teacher):
        from bertcli.heads import BertForSequenceClassification, BertForTokenClassification

        inner, k = self.inner, self.inner.num_labels
        head = teacher.state.get("classifier.weight")
        kind = "token classifier" if self.token else "regressor" if self.regression else "classifier"
        if head is None or head.shape[0] != k:
            got = "no classifier head" if head is None else f"a head with {head.shape[0]} outputs"
            raise CheckpointError(
                f"--teacher {self.opts.teacher}: has {got}; a {kind} teacher needs {k} output(s): fine-tune it "
                f"first (bertcli finetune --task {self.opts.task} --train ... --out TEACHER)"
            )
        token_head = teacher.bertcli.get("task") == "token-classification" or (
            not teacher.bertcli.get("task") and not ({"pooler", "pre_classifier"} & teacher.heads))
        if token_head != self.token:
            raise CheckpointError(f"--teacher {self.opts.teacher}: is a {'token' if token_head else 'sequence'} "
                                  f"classifier; --task {self.opts.task} needs a "
                                  f"{'token' if self.token else 'sequence'} classifier as teacher")
        if not self.regression:
            names = teacher.id2label or {}
            theirs = [names.get(i) for i in range(k)]
            ours = [inner.id2label[i] for i in range(k)]
            if theirs != ours:
                raise CheckpointError(
                    f"--teacher {self.opts.teacher}: its labels {theirs} are not the training labels {ours} (in "
                    f"this order); the teacher's probabilities must be over the same classes"
                )
        cls = BertForTokenClassification if self.token else BertForSequenceClassification
        return cls(teacher.config, k)

    def _add_unlabelled(self) -> int:
        """Append the ``--unlabelled`` rows to the train split, with no label (-100, or NaN for regression)."""
        inner, opts = self.inner, self.opts
        texts, pairs, _, lines = read_split("unlabelled", opts.unlabelled, opts, labelled=False)
        ids, type_ids, cut = inner.tokenizer.encode_ids(texts, pairs, max_length=inner.max_length)
        split = inner.train_split
        none = np.full(len(ids), np.nan if self.regression else -100, dtype=split.labels.dtype)
        inner.train_split = Split(split.name, split.path, split.ids + ids, split.type_ids + type_ids,
                                  np.concatenate([split.labels, none]), split.lines + lines, split.truncated + cut)
        self.unlabelled_truncated = cut
        return len(ids)

    def _teacher_outputs(self, model):
        """The teacher's logits for every training row: (N, K) float32, or per window (words, K)."""
        from bertcli.tasks.token_classification import window_logits

        device, precision = _device_and_precision(self.opts)
        model.to(device)
        split, pad_id = self.inner.train_split, self.inner.tokenizer.pad_id
        size = max(self.opts.batch_size * 2, 8)
        if self.token:
            return window_logits(model, split.windows, pad_id=pad_id, batch_size=size, device=device,
                                 precision=precision)
        return batched_logits(model, split.ids, split.type_ids, pad_id=pad_id, batch_size=size, device=device,
                              precision=precision)

    # ------------------------------------------------------------ Task interface
    def build_model(self):
        return self.inner.build_model()

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
        import torch

        split = self.inner.train_split
        out = []
        for idx in self.inner.batch_order(split.lengths, batch_size, generator, rank, world_size):
            batch = self.inner.collate(idx)
            if self.token:
                B, T = batch["input_ids"].shape
                target = np.zeros((B, T, self.inner.num_labels), dtype=np.float32)
                keep = np.zeros((B, T), dtype=bool)
                for row, i in enumerate(idx):
                    pos = split.windows[i].positions
                    target[row, pos] = self.targets[i]
                    keep[row, pos] = True
                batch["teacher"], batch["teacher_mask"] = torch.from_numpy(target), torch.from_numpy(keep)
            else:
                batch["teacher"] = torch.from_numpy(self.targets[idx])
            out.append(batch)
        return out

    def compute_loss(self, model, batch, generator, device):
        import torch

        from bertcli.distill import kd_loss, mix, mse_loss

        batch = dict(batch)
        teacher = batch.pop("teacher").to(device, non_blocking=True)
        keep = batch.pop("teacher_mask", None)
        logits, b = self.inner.forward(model, batch, device)
        labels = b["labels"]
        if self.regression:
            teacher_term = mse_loss(logits.squeeze(-1), teacher.squeeze(-1))
            labelled = ~torch.isnan(labels)
        elif self.token:
            teacher_term = kd_loss(logits, teacher, self.opts.temperature, mask=keep.to(device))
            labelled = None
        else:
            teacher_term = kd_loss(logits, teacher, self.opts.temperature)
            labelled = labels != -100
        label_term = None
        if self.opts.alpha < 1.0:
            if labelled is None:
                label_term = self.inner.label_loss(logits, labels, device)
            elif bool(labelled.any()):
                label_term = self.inner.label_loss(logits[labelled], labels[labelled], device)
        return mix(teacher_term, label_term, self.opts.alpha), {"tokens": int(batch["attention_mask"].sum())}

    def evaluate(self, model, device) -> dict[str, float]:
        return self.inner.evaluate(model, device)

    def checkpoint_payload(self, model) -> dict:
        payload = self.inner.checkpoint_payload(model)
        payload["bertcli"] = {**(payload.get("bertcli") or {}), **_teacher_block(self.opts)}
        return payload

    # ------------------------------------------------------------ contract with finetune()
    @property
    def precision(self) -> str:
        return self.inner.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.inner.precision = value

    @property
    def examples(self) -> dict[str, int]:
        out = dict(self.inner.examples)
        if self.unlabelled:
            out["train"] -= self.unlabelled
            out["unlabelled"] = self.unlabelled
        return out

    @property
    def truncated(self) -> dict[str, int]:
        out = dict(self.inner.truncated)
        if self.unlabelled:
            out["train"] -= self.unlabelled_truncated
            out["unlabelled"] = self.unlabelled_truncated
        return out

    def __getattr__(self, name: str) -> Any:  # max_length, has_test, test_metrics, ...
        if name in ("inner", "opts"):
            raise AttributeError(name)
        return getattr(self.inner, name)


def _teacher_block(opts: FinetuneOptions) -> dict[str, Any]:
    """What the saved model's ``bertcli`` block records about its distillation."""
    block: dict[str, Any] = {"teacher": str(opts.teacher)}
    if opts.task != "sentence-embedding":
        block.update(alpha=opts.alpha, temperature=None if opts.task == "regression" else opts.temperature)
    return block


# ============================================================ sentence embeddings
def read_sentences(opts: FinetuneOptions) -> tuple[list[str], list[int]]:
    """(sentences, line numbers) of ``--train``: one a line for .txt files (blank lines skipped), else
    ``--text-column`` (and ``--text-pair-column``) of a table."""
    path = opts.train
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file (--train)")
    if Path(path).suffix.lower() in TEXT_SUFFIXES or not opts.text_column:
        from bertcli.data.text import read_lines

        raw = read_lines(path, "utf-8" if opts.encoding in (None, "") else opts.encoding)
        kept = [(s.strip(), i + 1) for i, s in enumerate(raw) if s.strip()]
        if not kept:
            raise DataError(f"{path}: no sentences (every line is blank)")
        return [s for s, _ in kept], [n for _, n in kept]
    texts, pairs, _, lines = read_split("train", path, opts, labelled=False)
    if pairs is not None:
        return texts + pairs, lines + lines
    return texts, lines


def _cache_key(ids: list[list[int]], teacher: str, pooling: str, normalize: bool, precision: str) -> str:
    """What the cached teacher embeddings depend on: the token ids, the teacher and how it embeds."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((str(Path(teacher).resolve()), pooling, normalize, precision)).encode())
    for row in ids:
        h.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
    return h.hexdigest()


def _read_cache(path: str, key: str, n: int, hidden: int):
    """The cached (n, hidden) embeddings when ``path`` was written for ``key``; None when it is stale."""
    from safetensors import safe_open

    from bertcli.checkpoint import read_safetensors_header

    read_safetensors_header(Path(path))  # validated before use
    with safe_open(path, framework="pt") as fh:
        if (fh.metadata() or {}).get("key") != key or "embeddings" not in fh.keys():
            return None  # other sentences, another teacher: recomputed and rewritten
        vectors = fh.get_tensor("embeddings")
    if tuple(vectors.shape) != (n, hidden):
        return None
    return vectors.float()


class EmbeddingDistillTask(SentenceEmbeddingTask):
    """The student's sentence embeddings regress onto the teacher's (MSE); dev as ``sentence-embedding``."""

    def __init__(self, opts: FinetuneOptions):
        FinetuneTask.__init__(self, opts)
        self.loss = "mse"
        self.label2id: dict[str, int] = {}
        self.normalize = bool((self.checkpoint.sentence or {}).get("normalize", False))
        sentences, lines = read_sentences(opts)
        ids, _, cut = self.tokenizer.encode_ids(sentences, max_length=self.max_length)
        self.train_split = PairSplit("train", opts.train, [ids], None, lines, cut)
        self.dev_split = self._load_eval("dev", opts.dev) if opts.dev else None
        self.test_split = self._load_eval("test", opts.test) if opts.test else None
        self.targets = self._teacher_embeddings(ids)

    def _teacher_embeddings(self, ids: list[list[int]]):
        """The teacher's embedding of every training sentence, once: (N, H) float32, in memory."""
        import torch

        from bertcli.checkpoint import load_into
        from bertcli.distill import load_teacher
        from bertcli.tokenizer import check_max_length

        opts = self.opts
        teacher, _ = load_teacher(opts.teacher, self.tokenizer, opts.model)
        check_max_length(self.max_length, teacher.config.max_length, f"--max-length (for the teacher {opts.teacher})")
        if teacher.config.hidden_size != self.config.hidden_size:
            raise ConfigError(
                f"--teacher {opts.teacher}: its embeddings have {teacher.config.hidden_size} dimensions, the "
                f"student's {self.config.hidden_size}; MSE distillation needs equal widths (cut the student out "
                f"of the teacher: bertcli init --from {opts.teacher} --layers ...)"
            )
        sentence = teacher.sentence or {}
        model = build_encoder(teacher.config, sentence.get("pooling") or opts.pooling, 0,
                              bool(sentence.get("normalize", False)))
        state = {k: v for k, v in teacher.state.items() if k.startswith("bert.") and not k.startswith("bert.pooler.")}
        load_into(model, state, f"--teacher {opts.teacher}")
        device, precision = _device_and_precision(opts)
        key = _cache_key(ids, opts.teacher, model.pooling, model.normalize, precision)
        if opts.teacher_cache and Path(opts.teacher_cache).is_file():
            cached = _read_cache(opts.teacher_cache, key, len(ids), teacher.config.hidden_size)
            if cached is not None:
                return cached
        model.to(device)
        vectors = torch.from_numpy(embed_ids(model, ids, pad_id=self.tokenizer.pad_id,
                                             batch_size=max(opts.batch_size * 2, 8), device=device,
                                             precision=precision))
        if opts.teacher_cache:
            import os

            from bertcli.checkpoint import write_weights

            tmp = Path(f"{opts.teacher_cache}.tmp-{os.getpid()}")
            try:
                write_weights({"embeddings": vectors}, tmp, metadata={"key": key})
                os.replace(tmp, opts.teacher_cache)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise DataError(f"{opts.teacher_cache}: cannot write the --teacher-cache ({exc.strerror})") from None
        return vectors

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
        from bertcli.tasks.classification import pad

        split = self.train_split
        out = []
        for idx in self.batch_order(split.lengths, batch_size, generator, rank, world_size):
            rows = [split.columns[0][i] for i in idx]
            x, m, _ = pad(rows, [[0] * len(r) for r in rows], self.tokenizer.pad_id)
            out.append({"input_ids": x, "attention_mask": m, "target": self.targets[idx]})
        return out

    def compute_loss(self, model, batch, generator, device):
        from bertcli.distill import mse_loss

        emb = model(batch["input_ids"].to(device, non_blocking=True),
                    batch["attention_mask"].to(device, non_blocking=True)).float()  # (B, H)
        loss = mse_loss(emb, batch["target"].to(device, non_blocking=True))
        return loss, {"tokens": int(batch["attention_mask"].sum())}

    def checkpoint_payload(self, model) -> dict:
        payload = super().checkpoint_payload(model)
        payload["bertcli"] = {**payload["bertcli"], **_teacher_block(self.opts)}
        return payload
