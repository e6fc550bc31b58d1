"""Sentence-BERT: siamese (bi-encoder) training of sentence embeddings.

One encoder embeds every text column of a batch in a single forward pass (the columns are
stacked, as sentence-transformers does), the token vectors are pooled (``--pooling mean|cls|max``)
and one of four losses, defined exactly as in sentence-transformers, is applied:

* ``cosine``  -- CosineSimilarityLoss: MSE between cos(u, v) and the gold score (divided by
  ``--label-scale``, e.g. 5 for STS-B's 0-5 scores; scaled scores must lie in [-1, 1]).
* ``mnrl``    -- MultipleNegativesRankingLoss: cross-entropy over 20 x the cosine similarities of
  each anchor to every positive of the batch (the other rows are the negatives), plus each row's
  ``--negative-column`` text as a hard negative when given.
* ``triplet`` -- TripletLoss: mean of relu(|a - p| - |a - n| + 5) with Euclidean distances.
* ``softmax`` -- SoftmaxLoss: a linear classifier on [u, v, |u - v|] with cross-entropy over the
  training labels (NLI style). The classifier is used for training only: it lives in the training
  checkpoints' ``trainer_state/`` (so ``--resume`` is exact) and is not part of the final model.

Dev / test evaluation is that of sentence-transformers' EmbeddingSimilarityEvaluator: Spearman
and Pearson correlation between the cosine similarity of each (text, pair) and its gold score
(``--label-column``), plus ``loss``, the cosine loss on those pairs (MSE between the cosine and
the score divided by ``--label-scale``), whatever the training loss.

The saved model is the encoder alone plus ``modules.json``, ``1_Pooling/config.json`` and
``sentence_bert_config.json``: ``bertcli embed``, ``bertcli similarity`` and
sentence-transformers use the trained pooling. Normalisation follows the starting checkpoint,
as in sentence-transformers: a model with a ``Normalize`` module (all-MiniLM-L6-v2, say) is
trained on unit vectors and keeps the module; any other model (a bertcli-pretrained one) is
trained and saved without it, so its embeddings come out as trained. Cosine similarity does not
depend on it, and ``bertcli embed --normalize`` gives unit vectors either way.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import ConfigError, DataError
from bertcli.tasks.classification import (
    FinetuneOptions,
    FinetuneTask,
    build_label_map,
    encode_labels,
    pad,
    read_split,
    sorted_batches,
)

TASKS = ("sentence-embedding",)
METRICS = {"sentence-embedding": ("spearman", "pearson", "loss")}
LOWER_IS_BETTER = ("loss",)
REQUIRED = {"sentence-embedding": ("loss", "text_column", "text_pair_column")}

LOSSES = ("cosine", "mnrl", "triplet", "softmax")
MNRL_SCALE = 20.0     # sentence-transformers MultipleNegativesRankingLoss(scale=20)
TRIPLET_MARGIN = 5.0  # sentence-transformers TripletLoss(triplet_margin=5), Euclidean distance
HEAD_FILE = "trainer_state/softmax_head.safetensors"


# ============================================================ options
def validate_options(opts: FinetuneOptions) -> None:
    """Per-loss requirements, each error naming the option to add or remove."""
    from bertcli.heads import POOLINGS

    if opts.loss not in LOSSES:
        raise ConfigError(f"--loss '{opts.loss}': valid values: {', '.join(LOSSES)}")
    if opts.pooling not in POOLINGS:
        raise ConfigError(f"--pooling '{opts.pooling}': valid values: {', '.join(POOLINGS)}")
    if opts.loss in ("cosine", "softmax") and not opts.label_column:
        what = "the similarity score" if opts.loss == "cosine" else "the pair's class (e.g. NLI labels)"
        raise ConfigError(f"--loss {opts.loss} needs --label-column ({what})")
    if opts.loss == "triplet" and not opts.negative_column:
        raise ConfigError("--loss triplet needs --negative-column (the text that must lie farther from "
                          "--text-column than --text-pair-column does)")
    if opts.negative_column and opts.loss not in ("triplet", "mnrl"):
        raise ConfigError(f"--negative-column applies to --loss triplet or mnrl, not --loss {opts.loss}")
    if (opts.dev or opts.test) and not opts.label_column:
        raise ConfigError("--dev/--test are scored by Spearman against gold similarity scores: give "
                          "--label-column (the score column of the --dev/--test file)")
    if opts.label_scale is not None and not (opts.label_scale > 0 and math.isfinite(opts.label_scale)):
        raise ConfigError(f"--label-scale must be a positive number, got {opts.label_scale}")
    if opts.auto_batch_size and opts.loss == "mnrl":
        raise ConfigError("--auto-batch-size cannot be used with --loss mnrl: splitting a batch would change its "
                          "in-batch negatives and so the loss; choose a --batch-size that fits")


# ============================================================ data
@dataclass
class PairSplit:
    """One tokenized file: token ids per text column, labels (float scores or class ids) and lines."""

    name: str
    path: str
    columns: list[list[list[int]]]  # column -> row -> ids
    labels: np.ndarray | None
    lines: list[int]
    truncated: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        n = len(self.columns[0])
        self.lengths = np.zeros(n, dtype=np.int64)
        for col in self.columns:
            self.lengths = np.maximum(self.lengths, np.fromiter((len(x) for x in col), dtype=np.int64, count=n))

    def __len__(self) -> int:
        return len(self.columns[0])


def scores(raw: list[str], lines: list[int], path: str, scale: float | None, option: str) -> np.ndarray:
    """Numeric gold scores (errors name the file, line and option), divided by ``scale``."""
    out = np.empty(len(raw), dtype=np.float32)
    for i, (value, line) in enumerate(zip(raw, lines, strict=True)):
        try:
            out[i] = float(value)
        except ValueError:
            out[i] = math.nan
        if not math.isfinite(out[i]):
            raise DataError(f"{path}, line {line}: '{value}' in --label-column is not a finite number; {option}")
    return out / np.float32(scale) if scale else out


# ============================================================ losses (sentence-transformers' definitions)
def cosine_loss(u, v, labels):
    """CosineSimilarityLoss: MSE between cos(u_i, v_i) and labels_i."""
    import torch
    import torch.nn.functional as F

    return F.mse_loss(torch.cosine_similarity(u, v), labels.float().view(-1))


def mnrl_loss(anchors, positives, negatives=None, scale: float = MNRL_SCALE):
    """MultipleNegativesRankingLoss: cross-entropy of scale x cos(anchor_i, every candidate), target i.

    Candidates: every positive of the batch, then every hard negative (when given).
    """
    import torch
    import torch.nn.functional as F

    candidates = positives if negatives is None else torch.cat([positives, negatives], dim=0)
    sims = F.normalize(anchors, p=2, dim=-1) @ F.normalize(candidates, p=2, dim=-1).T  # (B, B or 2B)
    target = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(sims * scale, target)


def triplet_loss(anchors, positives, negatives, margin: float = TRIPLET_MARGIN):
    """TripletLoss (Euclidean): mean of relu(|a - p| - |a - n| + margin)."""
    import torch
    import torch.nn.functional as F

    d_pos = torch.linalg.vector_norm(anchors - positives, dim=-1)
    d_neg = torch.linalg.vector_norm(anchors - negatives, dim=-1)
    return F.relu(d_pos - d_neg + margin).mean()


def softmax_loss(u, v, labels, classifier):
    """SoftmaxLoss: cross-entropy of classifier([u, v, |u - v|])."""
    import torch
    import torch.nn.functional as F

    features = torch.cat([u, v, torch.abs(u - v)], dim=1).to(classifier.weight.dtype)
    return F.cross_entropy(classifier(features), labels.view(-1))


# ============================================================ the model
def _encoder_class():
    import torch
    import torch.nn.functional as F
    from torch import nn

    from bertcli.heads import pool
    from bertcli.model import BertModel

    class SentenceEncoder(nn.Module):
        """BertModel + pooling; ``softmax_head`` (training only) is excluded from ``state_dict``."""

        def __init__(self, config, pooling: str, num_labels: int = 0, normalize: bool = False):
            super().__init__()
            self.pooling = pooling
            self.normalize = normalize
            self.bert = BertModel(config, with_pooler=False)
            self.softmax_head = nn.Linear(3 * config.hidden_size, num_labels) if num_labels else None

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids, attention_mask)  # (N, T, H)
            vec = pool(hidden, attention_mask, self.pooling)  # (N, H)
            return F.normalize(vec, p=2, dim=1) if self.normalize else vec

        def state_dict(self, *args, **kwargs):
            state = super().state_dict(*args, **kwargs)
            for key in [k for k in state if ".softmax_head." in f".{k}"]:
                del state[key]
            return state

    return SentenceEncoder


def build_encoder(config, pooling: str, num_labels: int = 0, normalize: bool = False):
    return _encoder_class()(config, pooling, num_labels, normalize)


def embed_ids(encoder, ids: list[list[int]], *, pad_id: int, batch_size: int, device,
              precision: str = "fp32") -> np.ndarray:
    """Pooled vectors (N, H) float32 of pre-tokenized texts, in input order (eval mode, no grad)."""
    import torch

    from bertcli.device import autocast

    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    out = np.zeros((len(ids), encoder.bert.config.hidden_size), dtype=np.float32)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode(), autocast(device, precision):
            for idx in sorted_batches(lengths, batch_size):
                rows = [ids[i] for i in idx]
                x, m, _ = pad(rows, [[0] * len(r) for r in rows], pad_id)
                out[idx] = encoder(x.to(device), m.to(device)).float().cpu().numpy()
    finally:
        encoder.train(was_training)
    return out


def similarity_metrics(a: np.ndarray, b: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Spearman / Pearson of cos(a_i, b_i) against gold, and the cosine loss (MSE) against gold."""
    from bertcli.metrics import pearson, spearman

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a64, axis=1), 1e-8) * np.maximum(np.linalg.norm(b64, axis=1), 1e-8)
    cos = (a64 * b64).sum(1) / norms
    g = gold.astype(np.float64)
    return {"spearman": spearman(cos, g), "pearson": pearson(cos, g), "loss": float(((cos - g) ** 2).mean())}


# ============================================================ the task
class SentenceEmbeddingTask(FinetuneTask):
    """Siamese training of a BertModel + pooling with a sentence-transformers loss.

    ``truncated`` counts the texts truncated to ``max_length``, every column counted."""

    def __init__(self, opts: FinetuneOptions):
        super().__init__(opts)
        self.loss = opts.loss
        # A sentence-transformers model with a Normalize module keeps it (in training too, as there).
        self.normalize = bool((self.checkpoint.sentence or {}).get("normalize", False))

        from bertcli.data.tables import read_table

        if not Path(opts.train).is_file():
            raise DataError(f"{opts.train}: no such file (--train)")
        table = read_table(opts.train, delimiter=opts.delimiter, quoting=not opts.no_quoting,
                           header=not opts.no_header, encoding=opts.encoding)
        if len(table) == 0:
            raise DataError(f"{opts.train}: no data rows (--train)")
        names = [opts.text_column, opts.text_pair_column]
        if opts.negative_column:
            names.append(opts.negative_column)
        texts = [table.column(c) for c in names]
        self.label2id: dict[str, int] = {}
        labels = None
        if self.loss in ("cosine", "softmax"):
            raw = table.labels(opts.label_column)
            if self.loss == "cosine":
                labels = scores(raw, table.lines, opts.train, opts.label_scale,
                                "--loss cosine trains on similarity scores")
                bad = np.flatnonzero(np.abs(labels) > 1.0)
                if bad.size:
                    i = int(bad[0])
                    raise DataError(
                        f"{opts.train}, line {table.lines[i]}: score '{raw[i]}' is outside [-1, 1] after "
                        f"--label-scale {opts.label_scale or 1:g}; --loss cosine compares scores with cosine "
                        f"similarities: divide them, e.g. --label-scale 5 for STS-B's 0-5 scores"
                    )
            else:
                self.label2id = build_label_map(raw)
                if len(self.label2id) < 2:
                    raise DataError(f"{opts.train}: every training label is '{raw[0]}'; --loss softmax needs "
                                    f"at least two labels")
                labels = encode_labels(raw, table.lines, opts.train, "classification", self.label2id, opts.train)
        self.train_split = self._encode("train", opts.train, texts, labels, table.lines)
        self.dev_split = self._load_eval("dev", opts.dev) if opts.dev else None
        self.test_split = self._load_eval("test", opts.test) if opts.test else None

    # ------------------------------------------------------------ data
    def _encode(self, name: str, path: str, texts: list[list[str]], labels, lines) -> PairSplit:
        columns, truncated = [], 0
        for col in texts:
            ids, _, cut = self.tokenizer.encode_ids(col, max_length=self.max_length)
            columns.append(ids)
            truncated += cut
        return PairSplit(name, path, columns, labels, lines, truncated)

    def _load_eval(self, name: str, path: str) -> PairSplit:
        opts = dataclasses.replace(self.opts, negative_column=None)
        texts, pairs, raw, lines = read_split(name, path, opts)
        gold = scores(raw, lines, path, opts.label_scale,
                      f"--{name} is scored by Spearman against similarity scores in the same columns as --train")
        return self._encode(name, path, [texts, pairs], gold, lines)

    def test_metrics(self, path: str, device) -> dict[str, float]:
        """Metrics of the saved model at ``path`` (with its saved pooling) on the test split."""
        from bertcli.checkpoint import load_checkpoint, load_into

        ckpt = load_checkpoint(path)
        sentence = ckpt.sentence or {}
        encoder = build_encoder(ckpt.config, sentence.get("pooling") or self.opts.pooling, 0,
                                bool(sentence.get("normalize", False)))
        load_into(encoder, {k: v for k, v in ckpt.state.items() if not k.startswith("bert.pooler.")}, str(path))
        encoder.to(device)
        return self.evaluate_split(encoder, self.test_split, device)

    # ------------------------------------------------------------ Task interface
    def build_model(self):
        from bertcli.checkpoint import load_into

        model = build_encoder(self.config, self.opts.pooling, len(self.label2id) if self.loss == "softmax" else 0,
                              self.normalize)
        state = {k: v for k, v in self.checkpoint.state.items()
                 if k.startswith("bert.") and not k.startswith("bert.pooler.")}
        load_into(model, state, str(self.checkpoint.path))
        if model.softmax_head is not None:
            self._restore_head(model)
        return model

    def _restore_head(self, model) -> None:
        """On --resume: the softmax classifier from the training checkpoint's trainer_state/."""
        import torch

        from bertcli.checkpoint import read_weights
        from bertcli.train import checkpoint_steps

        if self.opts.resume is None:
            return
        if self.opts.resume == "auto":
            found = checkpoint_steps(Path(self.opts.out))
            if not found:
                return
            where = found[-1][1]
        else:
            where = Path(self.opts.resume)
        head = where / HEAD_FILE
        if not head.is_file():
            from bertcli.errors import CheckpointError

            raise CheckpointError(f"{where}: no {HEAD_FILE}; it was not written by --loss softmax training")
        tensors = read_weights(head)
        with torch.no_grad():
            for name, param in model.softmax_head.named_parameters():
                if name not in tensors or tensors[name].shape != param.shape:
                    from bertcli.errors import CheckpointError

                    raise CheckpointError(f"{head}: '{name}' is missing or has another shape (other training labels?)")
                param.copy_(tensors[name])

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int = 0, world_size: int = 1) -> list:
        import torch

        split = self.train_split
        groups = self.batch_order(split.lengths, batch_size, generator, rank, world_size)
        k = len(split.columns)
        out = []
        for idx in groups:
            rows = [split.columns[c][i] for i in idx for c in range(k)]  # row-major: example i, column c
            x, m, _ = pad(rows, [[0] * len(r) for r in rows], self.tokenizer.pad_id)
            batch = {"input_ids": x.view(len(idx), k, -1), "attention_mask": m.view(len(idx), k, -1)}
            if split.labels is not None:
                batch["labels"] = torch.from_numpy(split.labels[idx])
            out.append(batch)
        return out

    def compute_loss(self, model, batch, generator, device):
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, k, T)
        B, k, T = ids.shape
        tokens = int(mask.sum())
        # column-major (all first texts, then all second texts, ...), one forward pass
        flat_ids = ids.transpose(0, 1).reshape(k * B, T).to(device, non_blocking=True)
        flat_mask = mask.transpose(0, 1).reshape(k * B, T).to(device, non_blocking=True)
        emb = model(flat_ids, flat_mask).float()  # (k*B, H)
        cols = emb.split(B, dim=0)
        labels = batch["labels"].to(device) if "labels" in batch else None
        if self.loss == "cosine":
            loss = cosine_loss(cols[0], cols[1], labels)
        elif self.loss == "mnrl":
            loss = mnrl_loss(cols[0], cols[1], cols[2] if k > 2 else None)
        elif self.loss == "triplet":
            loss = triplet_loss(cols[0], cols[1], cols[2])
        else:
            head = getattr(model, "module", model).softmax_head
            loss = softmax_loss(cols[0], cols[1], labels, head)
        return loss, {"tokens": tokens}

    def evaluate(self, model, device) -> dict[str, float]:
        if self.dev_split is None:
            return {}
        return self.evaluate_split(model, self.dev_split, device)

    def evaluate_split(self, model, split: PairSplit, device) -> dict[str, float]:
        model = getattr(model, "module", model)
        size = max(self.opts.batch_size * 2, 8)
        a = embed_ids(model, split.columns[0], pad_id=self.tokenizer.pad_id, batch_size=size, device=device,
                      precision=self.precision)
        b = embed_ids(model, split.columns[1], pad_id=self.tokenizer.pad_id, batch_size=size, device=device,
                      precision=self.precision)
        return similarity_metrics(a, b, split.labels)

    def checkpoint_payload(self, model) -> dict:
        from safetensors.torch import save as save_tensors

        model = getattr(model, "module", model)  # DDP
        bertcli: dict[str, Any] = {
            "loss": self.loss,
            "text_column": self.opts.text_column,
            "text_pair_column": self.opts.text_pair_column,
            "label_column": self.opts.label_column or None,
            "negative_column": self.opts.negative_column,
            "label_scale": self.opts.label_scale,
            "max_length": self.max_length,
        }
        extra_files = {}
        if model.softmax_head is not None:
            bertcli["softmax_labels"] = list(self.label2id)
            head = {k: v.detach().cpu().contiguous() for k, v in model.softmax_head.state_dict().items()}
            extra_files[HEAD_FILE] = save_tensors(head)
        state = model.state_dict()
        # The pooler is not used for sentence embeddings; the pretrained one is kept unchanged so that
        # transformers' BertModel (sentence-transformers) loads every weight it expects.
        state.update({k: v for k, v in self.checkpoint.state.items() if k.startswith("bert.pooler.")})
        return {
            "state": state, "config": self.config, "tokenizer": self.tokenizer, "task": self.name,
            "bertcli": bertcli, "extra_files": extra_files,
            "sentence": {"pooling": self.opts.pooling, "normalize": self.normalize, "max_seq_length": self.max_length},
        }


# ============================================================ entry points
def build_task(opts: FinetuneOptions) -> SentenceEmbeddingTask:
    return SentenceEmbeddingTask(opts)


def predict_command(*, model, **_: Any) -> None:
    """``bertcli predict`` on a sentence-embedding model: point to the commands that use it."""
    raise ConfigError(
        f"{model}: is a sentence-embedding model (no labels to predict); use "
        f"bertcli embed --model {model} ... for vectors, or bertcli similarity --model {model} ... for scores"
    )
