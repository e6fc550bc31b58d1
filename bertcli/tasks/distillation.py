"""``finetune --teacher DIR``: the fine-tuning tasks, with a teacher's outputs in the loss.

Not a task of its own (no ``build_task``): :func:`build_finetune_task` wraps the task that
``--task`` names, and the one training loop runs it as it runs any other.

* classification, pairs, regression, token classification -- :class:`LogitDistillTask` wraps the
  task: its model, batches, dev metrics and checkpoint stay the task's; the loss becomes
  ``alpha * teacher_term + (1 - alpha) * label_loss`` with the teacher term the KL at
  ``--temperature`` (``bertcli.distill.kd_loss``; per token, at the words' first wordpieces, for
  token classification) or the MSE to the teacher's scores (regression). ``--unlabelled FILE``
  adds rows (same text columns, no label column) that learn from the teacher term alone.
* pretraining (``pretrain --teacher``) -- :class:`PretrainDistillTask` wraps the pretraining task with
  DistilBERT's loss; :func:`build_distill_pretraining` cuts the student out of the teacher.
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

import dataclasses
from dataclasses import dataclass
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


# ============================================================ pretraining: DistilBERT's triple loss
@dataclass
class PretrainDistillOptions:
    """``pretrain --teacher``: DistilBERT's loss weights (its defaults: 5, 2, 1 at temperature 2)."""

    teacher: str
    student_layers: str | None = None  # None: every other teacher layer (unless the student has a shape of its own)
    temperature: float = 2.0
    alpha_ce: float = 5.0     # the KL to the teacher's MLM distribution at the masked positions
    alpha_mlm: float = 2.0    # the student's own MLM loss
    alpha_cos: float = 1.0    # 1 - cos between the last hidden states, every real token

    def __post_init__(self) -> None:
        from bertcli.config import check_options
        from bertcli.distill import check_temperature

        check_options(self)
        check_temperature(self.temperature)
        for name in ("alpha_ce", "alpha_mlm", "alpha_cos"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(self, name)}")
        if self.alpha_ce + self.alpha_mlm + self.alpha_cos == 0:
            raise ConfigError("--alpha-ce, --alpha-mlm and --alpha-cos are all 0: nothing to train on")


def build_distill_pretraining(corpus: list[str], out: str, distill: PretrainDistillOptions, *,
                              tokenizer: str | None = None, preset: str | None = None, arch: str | None = None,
                              config=None, init_from: str | None = None, log=None, **overrides):
    """(task, TrainArgs) for ``pretrain --teacher``: the student is cut out of the teacher (``--student-layers``,
    every other layer by default) unless ``--init-from`` / ``--preset`` / ``--arch`` / a ``model:`` section
    gives it a shape of its own; either way its vocabulary must be the teacher's."""
    from bertcli.checkpoint import load_checkpoint
    from bertcli.distill import cut_state, parse_layers
    from bertcli.tasks.pretraining import PretrainConfig, build_pretraining

    config = config or PretrainConfig()
    try:
        teacher = load_checkpoint(distill.teacher)
    except CheckpointError as exc:
        raise CheckpointError(f"--teacher: {exc}") from None
    own_shape = bool(preset or arch or config.model or init_from)
    if own_shape and distill.student_layers is not None:
        raise ConfigError("--student-layers cuts the student out of the teacher; drop --init-from / --preset / "
                          "--arch / the model: section, or drop --student-layers")
    if own_shape:
        task, args = build_pretraining(corpus, out, tokenizer=tokenizer or (None if init_from else distill.teacher),
                                       preset=preset, arch=arch, config=config, init_from=init_from, log=log,
                                       **overrides)
    else:
        if tokenizer is not None:
            raise ConfigError("a student cut out of the teacher reads the teacher's tokenizer; drop --tokenizer")
        layers = parse_layers(distill.student_layers, teacher.config.num_layers, "--student-layers")
        state, student_config = cut_state(teacher.state, teacher.config, layers, distill.teacher)
        task, args = build_pretraining(corpus, out, init_from=distill.teacher, config=config, log=log, **overrides)
        task.config, task.init_state = student_config, state
        task.init_source = f"--teacher {distill.teacher} (layers {','.join(map(str, layers))})"
        task.run_config["model"] = student_config.to_dict()
        task.run_config["student_layers"] = list(layers)
    return PretrainDistillTask(task, teacher, distill), args


class PretrainDistillTask(Task):
    """The pretraining task with DistilBERT's loss:
    ``alpha_ce * T^2 KL(teacher || student) + alpha_mlm * MLM + alpha_cos * (1 - cos)`` (+ NSP / SOP when the
    objective has it). The teacher sees the same masked inputs as the student."""

    name = "pretraining"

    def __init__(self, inner, teacher, opts: PretrainDistillOptions):
        from bertcli.checkpoint import load_into, load_tokenizer
        from bertcli.distill import check_same_vocab
        from bertcli.heads import BertForPreTraining
        from bertcli.tokenizer import check_max_length

        self.inner, self.opts = inner, opts
        src = f"--teacher {opts.teacher}"
        check_same_vocab(inner.tok, load_tokenizer(teacher.path, teacher.config.vocab_size), "the student",
                         str(opts.teacher))
        if teacher.config.vocab_size != inner.config.vocab_size:
            raise ConfigError(f"{src}: has {teacher.config.vocab_size} embedding rows, the student "
                              f"{inner.config.vocab_size}; the MLM distributions must cover the same tokens")
        check_max_length(inner.data.max_seq_length, teacher.config.max_length, f"--max-seq-length (for {src})")
        if opts.alpha_ce > 0 and "mlm" not in teacher.heads:
            raise CheckpointError(f"{src}: has no MLM head (a {teacher.hf_config.get('architectures', ['?'])[0]}); "
                                  f"--alpha-ce needs the teacher's token predictions: use an MLM checkpoint, or "
                                  f"--alpha-ce 0 to distil the hidden states only")
        if opts.alpha_cos > 0 and teacher.config.hidden_size != inner.config.hidden_size:
            raise ConfigError(f"{src}: hidden size {teacher.config.hidden_size}, the student's "
                              f"{inner.config.hidden_size}; the cosine loss compares the two: use --alpha-cos 0 or a "
                              f"student as wide as the teacher")
        self.teacher = BertForPreTraining(teacher.config, nsp=False)
        load_into(self.teacher, teacher.state, src, allow_missing=() if opts.alpha_ce > 0 else ("mlm.",))
        self.teacher.eval().requires_grad_(False)
        self.teacher_types = teacher.config.type_vocab_size >= 2
        self.run_config = {**inner.run_config, "distillation": dataclasses.asdict(opts)}
        self._hidden = None

    def _capture(self, module, inputs, output) -> None:
        self._hidden = output

    def build_model(self):
        model = self.inner.build_model()
        model.bert.register_forward_hook(self._capture)  # the student's last hidden states, also under DDP
        return model

    def train_batches(self, epoch, generator, batch_size, rank, world_size):
        return self.inner.train_batches(epoch, generator, batch_size, rank, world_size)

    def compute_loss(self, model, batch, generator, device):
        import torch

        from bertcli.distill import cosine_loss, kd_loss

        if self.teacher.bert.device != device:
            self.teacher.to(device)
        replay = torch.Generator(device=generator.device)
        replay.set_state(generator.get_state())  # the masks the student's forward is about to draw
        mlm_logits, _, targets, mlm_loss, nsp_loss = self.inner._forward(model, batch, generator, device)
        hidden, self._hidden = self._hidden, None
        inputs, labels = self.inner._mask(batch["input_ids"], replay)
        positions = (labels != -100).to(device)
        att = batch["attention_mask"].to(device)
        with torch.no_grad():
            types = batch["token_type_ids"].to(device) if self.teacher_types else None
            t_hidden = self.teacher.bert(inputs.to(device), att, types)  # (B, T, H)
            loss = self.opts.alpha_mlm * mlm_loss
            if self.opts.alpha_ce > 0:
                t_logits = self.teacher.mlm(t_hidden[positions], self.teacher.bert.embeddings.word.weight)  # (M, V)
        if self.opts.alpha_ce > 0:
            loss = loss + self.opts.alpha_ce * kd_loss(mlm_logits, t_logits, self.opts.temperature)
        if self.opts.alpha_cos > 0:
            loss = loss + self.opts.alpha_cos * cosine_loss(hidden, t_hidden, att)
        if nsp_loss is not None:
            loss = loss + nsp_loss
        return loss, {"tokens": int(batch["attention_mask"].sum()), "masked": int(targets.numel())}

    def evaluate(self, model, device) -> dict[str, float]:
        out = self.inner.evaluate(model, device)
        self._hidden = None
        return out

    def checkpoint_payload(self, model) -> dict:
        payload = self.inner.checkpoint_payload(model)
        payload["bertcli"] = {**payload["bertcli"], "teacher": str(self.opts.teacher)}
        return payload

    def __getattr__(self, name: str) -> Any:  # summary, data, config, tok, ...
        if name in ("inner", "opts"):
            raise AttributeError(name)
        return getattr(self.inner, name)
