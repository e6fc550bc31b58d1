"""The model behind the server: which task it serves, how a request is prepared, how a batch runs.

One checkpoint is loaded once. Its task decides the live routes:

* an encoder without a task head (pretraining, sentence-embedding, a Hugging Face base model):
  ``/v1/embeddings``, ``/embed``, ``/similarity``;
* a sequence classifier or regressor: ``/predict``, and ``/rerank`` when it reads text pairs (a
  cross-encoder: fine-tuned with a text pair column, or a Hugging Face classifier with one output);
* a token classifier: ``/predict`` (entity spans with character offsets);
* a question-answering model: ``/answer``.

``prepare`` runs in a request thread (tokenization, length checks) and returns a :class:`Job`;
``run`` runs in the batcher's one inference thread on the jobs of one dynamic batch and calls
the library code once for all of them (``bertcli.embed.embed_token_ids``,
``bertcli.tasks.classification.batched_logits``, ``Tagger.entities``, ``QuestionAnswerer.answer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

EMBED_ROUTES = ("/v1/embeddings", "/embed", "/similarity")


class TooLong(Exception):
    """A text over the model's length with --no-truncate: the server answers 413."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class Job:
    """One request's share of a dynamic batch."""

    payload: Any            # what ``run`` needs (token ids, texts, ...)
    cost: int               # tokens (exact where tokenized here, else estimated from characters)
    texts: int              # inputs in the request
    truncated: int = 0
    extra: dict = field(default_factory=dict)


def detect_task(ckpt) -> str:
    """'embedding' | 'classification' | 'regression' | 'token-classification' | 'question-answering'."""
    task = (ckpt.bertcli or {}).get("task")
    heads = ckpt.heads
    if task == "question-answering" or "qa" in heads:
        return "question-answering"
    if "classifier" in heads:
        arch = " ".join(ckpt.hf_config.get("architectures") or [])
        token = task == "token-classification" or "TokenClassification" in arch or (
            task is None and not heads & {"pooler", "pre_classifier"})
        if token:
            return "token-classification"
        regression = task == "regression" or ckpt.hf_config.get("problem_type") == "regression"
        return "regression" if regression else "classification"
    return "embedding"


def _estimate(text: str) -> int:
    return len(text) // 4 + 2


class Runtime:
    task: str
    routes: tuple[str, ...]
    max_length: int
    model_name: str
    truncate: bool

    def info(self) -> dict:
        return {}


class EmbeddingRuntime(Runtime):
    routes = EMBED_ROUTES

    def __init__(self, model: str, device: str, precision: str, truncate: bool, batch_tokens: int | None):
        from bertcli.embed import DEFAULT_BATCH_TOKENS, load

        self.enc = load(model, device=device, precision=precision)
        self.task = "embedding"
        self.max_length = self.enc.max_length
        self.truncate = truncate
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(self.enc.device.type, 4096)
        self.dim = self.enc.dim

    def info(self) -> dict:
        e = self.enc
        return {"dim": e.dim, "pooling": e.pooling, "normalize": e.normalize, "device": str(e.device),
                "precision": e.precision}

    def prepare(self, texts: list[str], param: str) -> Job:
        tok = self.enc.tokenizer
        ids, _, truncated = tok.encode_ids(texts, max_length=self.max_length)
        if truncated and not self.truncate:
            _refuse(tok, texts, None, self.max_length, param)
        return Job(ids, sum(len(x) for x in ids), len(texts), truncated)

    def run(self, jobs: list[Job]) -> list[Any]:
        from bertcli.embed import embed_token_ids

        ids = [x for j in jobs for x in j.payload]
        out, _ = embed_token_ids(ids, self.enc, [self.enc.pooling], normalize=self.enc.normalize,
                                 batch_tokens=self.batch_tokens)
        vectors = out[self.enc.pooling].cpu().numpy()
        return _split(vectors, jobs)


class ClassifierRuntime(Runtime):
    def __init__(self, model: str, device: str, precision: str, truncate: bool, batch_size: int):
        from bertcli.predict import load_classifier

        self.clf = load_classifier(model, device, precision)
        self.task = "regression" if self.clf.regression else "classification"
        self.max_length = self.clf.max_length
        self.truncate = truncate
        self.batch_size = batch_size
        saved = self.clf.checkpoint.bertcli or {}
        rows = 1 if self.clf.regression else len(self.clf.id2label)
        # a cross-encoder: fine-tuned on text pairs, or a Hugging Face classifier with one output
        self.pairs = bool(saved.get("text_pair_column")) or (not saved.get("text_column") and rows == 1)
        self.routes = ("/predict", "/rerank") if self.pairs else ("/predict",)

    def info(self) -> dict:
        labels = None if self.clf.regression else [self.clf.id2label[i] for i in range(len(self.clf.id2label))]
        return {"labels": labels, "pairs": self.pairs, "device": str(self.clf.device),
                "precision": self.clf.precision}

    def prepare(self, texts: list[str], pairs: list[str] | None, param: str) -> Job:
        tok = self.clf.tokenizer
        ids, type_ids, truncated = tok.encode_ids(texts, pairs, max_length=self.max_length)
        if truncated and not self.truncate:
            _refuse(tok, texts, pairs, self.max_length, param)
        return Job((ids, type_ids), sum(len(x) for x in ids), len(texts), truncated)

    def run(self, jobs: list[Job]) -> list[Any]:
        from bertcli.tasks.classification import batched_logits

        ids = [x for j in jobs for x in j.payload[0]]
        type_ids = [x for j in jobs for x in j.payload[1]]
        logits = batched_logits(self.clf.model, ids, type_ids, pad_id=self.clf.tokenizer.pad_id,
                                batch_size=self.batch_size, device=self.clf.device, precision=self.clf.precision)
        return _split(logits, jobs)


class TaggerRuntime(Runtime):
    task = "token-classification"
    routes = ("/predict",)
    truncate = True  # long texts are read in windows, never cut

    def __init__(self, model: str, device: str, precision: str, batch_size: int):
        from bertcli.tasks.token_classification import load_tagger

        self.tagger = load_tagger(model, device, precision)
        self.max_length = self.tagger.max_length
        self.batch_size = batch_size

    def info(self) -> dict:
        t = self.tagger
        return {"labels": [t.id2label[i] for i in range(len(t.id2label))], "device": str(t.device),
                "precision": t.precision}

    def prepare(self, texts: list[str], param: str) -> Job:
        return Job(texts, sum(_estimate(t) for t in texts), len(texts))

    def run(self, jobs: list[Job]) -> list[Any]:
        texts = [t for j in jobs for t in j.payload]
        entities, _ = self.tagger.entities(texts, self.batch_size)
        return _split(entities, jobs)


class AnswerRuntime(Runtime):
    task = "question-answering"
    routes = ("/answer",)
    truncate = True  # long contexts are read in overlapping windows

    def __init__(self, model: str, device: str, precision: str, batch_size: int):
        from bertcli.tasks.question_answering import QuestionAnswerer

        self.qa = QuestionAnswerer(model, device=device, precision=precision)
        self.max_length = self.qa.max_length
        self.batch_size = batch_size

    def info(self) -> dict:
        return {"max_answer_length": self.qa.max_answer_length, "doc_stride": self.qa.doc_stride,
                "unanswerable": self.qa.with_null, "device": str(self.qa.device), "precision": self.qa.precision}

    def prepare(self, question: str, context: str, top_k: int) -> Job:
        return Job((question, context, top_k), _estimate(question) + _estimate(context), 1)

    def run(self, jobs: list[Job]) -> list[Any]:
        out: list[Any] = [None] * len(jobs)
        for k in sorted({j.payload[2] for j in jobs}):  # one library call per distinct top_k
            group = [i for i, j in enumerate(jobs) if j.payload[2] == k]
            spans = self.qa.answer([jobs[i].payload[0] for i in group], [jobs[i].payload[1] for i in group],
                                   top_k=k, batch_size=self.batch_size)
            for i, s in zip(group, spans, strict=True):
                out[i] = s
        return out


def _split(rows, jobs: list[Job]) -> list[Any]:
    out, start = [], 0
    for j in jobs:
        out.append(rows[start:start + j.texts])
        start += j.texts
    return out


def _refuse(tok, texts, pairs, limit: int, param: str) -> None:
    # encode_batch at the same max_length: other request threads share the tokenizer's truncation setting
    encs = tok.encode_batch(texts, pairs, max_length=limit)
    first = next(i for i, e in enumerate(encs) if e.truncated)
    where = f"{param}[{first}]"
    raise TooLong(f"{where} is longer than the model's limit of {limit} tokens (the server runs with "
                  f"--no-truncate; shorten the text)", where)


def load_runtime(model: str, *, device: str = "auto", precision: str = "auto", truncate: bool = True,
                 batch_tokens: int | None = None, batch_size: int = 64) -> Runtime:
    """Load ``model`` once and wrap it for its task."""
    from bertcli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)  # the weight names tell the head; freed before the model loads
    task = detect_task(ckpt)
    name = ckpt.path.name
    del ckpt
    if task == "embedding":
        rt: Runtime = EmbeddingRuntime(model, device, precision, truncate, batch_tokens)
    elif task in ("classification", "regression"):
        rt = ClassifierRuntime(model, device, precision, truncate, batch_size)
    elif task == "token-classification":
        rt = TaggerRuntime(model, device, precision, batch_size)
    else:
        rt = AnswerRuntime(model, device, precision, batch_size)
    rt.model_name = name
    return rt


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
