"""Reranking: rescore (query, document) candidates with a cross-encoder.

A cross-encoder is any sequence-pair classifier or regressor: what ``bertcli finetune --task
cross-encoder`` (or ``classification`` / ``regression`` on pairs) writes, or a sentence-transformers
``CrossEncoder`` checkpoint (a Hugging Face ``*ForSequenceClassification`` directory).
:func:`load_cross_encoder` loads one (through :func:`bertcli.predict.load_classifier`), :func:`score`
scores pairs, :func:`rerank` orders one query's documents and :func:`rerank_run` rescores a whole
retrieval run (``qid -> {doc_id: score}``, the format of :mod:`bertcli.retrieval.search`).

Scores are those of sentence-transformers ``CrossEncoder.predict``:

* one output (``num_labels=1``): the activation applied to the logit, as ``CrossEncoder`` resolves
  it: ``activation_fn`` in ``config_sentence_transformers.json``, else ``sentence_transformers.
  activation_fn`` (or the older ``sbert_ce_default_activation_function``) in ``config.json``, else
  the sigmoid. Only ``torch.*`` activations are read, as ``CrossEncoder`` without
  ``trust_remote_code``; Sigmoid, Identity and Tanh are supported.
* two or more outputs (a classifier): the softmax probability of the positive class
  (``CrossEncoder.predict(..., apply_softmax=True)[:, positive]``); the positive class is label 1 of
  a two-label model unless ``positive_label`` names another (required with three or more labels).

Pairs are tokenized once (query first, longest-first truncation to the model's length) and run in
length-sorted batches of at most ``batch_tokens`` padded tokens, the batching of ``bertcli embed``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.errors import CheckpointError, ConfigError, DataError

# the torch.nn activations a CrossEncoder config may name, by their dotted path
ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
}
CHUNK_PAIRS = 8192  # pairs tokenized and scored at a time by rerank_run (bounded memory)


@dataclass
class CrossEncoder:
    """A loaded cross-encoder: the classifier, the activation of a one-output model and the positive class."""

    classifier: Any  # bertcli.predict.Classifier
    activation: str  # sigmoid | identity | tanh (one output), or "softmax" (K >= 2 outputs)
    positive: int | None  # the class whose probability is the score (K >= 2)
    batch_tokens: int
    truncated: int = 0  # pairs cut to max_length by the last score() call

    @property
    def num_labels(self) -> int:
        return len(self.classifier.id2label) if not self.classifier.regression else 1

    @property
    def max_length(self) -> int:
        return self.classifier.max_length

    @property
    def path(self) -> Path:
        return self.classifier.checkpoint.path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def activation_of(path: Path, hf_config: dict[str, Any]) -> str:
    """The activation ``CrossEncoder`` applies to a one-output model's logit (see the module doc)."""
    names: list[tuple[str, Any]] = []
    st_file = path / "config_sentence_transformers.json"
    if st_file.is_file():
        names.append((f"{st_file}: activation_fn", _read_json(st_file).get("activation_fn")))
    block = hf_config.get("sentence_transformers")
    if isinstance(block, dict) and "activation_fn" in block:
        names.append((f"{path / 'config.json'}: sentence_transformers.activation_fn", block.get("activation_fn")))
    elif hf_config.get("sbert_ce_default_activation_function") is not None:
        names.append((f"{path / 'config.json'}: sbert_ce_default_activation_function",
                      hf_config["sbert_ce_default_activation_function"]))
    for where, name in names:
        if not isinstance(name, str) or not name.startswith("torch."):
            continue  # CrossEncoder ignores it too (untrusted code), falling back to the next
        if name not in ACTIVATIONS:
            raise CheckpointError(f"{where} is '{name}'; bertcli rerank supports "
                                  f"{', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[name]
    return "sigmoid"


def load_cross_encoder(model: str | Path, *, device: str = "auto", precision: str = "auto",
                       max_length: int | None = None, positive_label: str | None = None,
                       batch_tokens: int | None = None) -> CrossEncoder:
    """Load a sequence-pair classifier / regressor or a sentence-transformers CrossEncoder for reranking."""
    from bertcli.embed import DEFAULT_BATCH_TOKENS
    from bertcli.predict import load_classifier

    clf = load_classifier(model, device, precision, max_length)
    budget = batch_tokens if batch_tokens is not None else DEFAULT_BATCH_TOKENS.get(clf.device.type, 4096)
    if budget < 1:
        raise ConfigError(f"--batch-tokens must be positive, got {budget}")
    clf.long_input = "truncate"  # a pair is scored as one input, never in windows
    labels = {0: "score"} if clf.regression else clf.id2label
    if len(labels) == 1:
        if positive_label is not None:
            raise ConfigError(f"--positive-label applies to classifiers with two or more labels; {clf.checkpoint.path} "
                              "has one output (its score is used)")
        return CrossEncoder(clf, activation_of(clf.checkpoint.path, clf.checkpoint.hf_config), None, budget)
    if positive_label is None:
        if len(labels) > 2:
            raise ConfigError(f"{clf.checkpoint.path}: a classifier with {len(labels)} labels "
                              f"({', '.join(labels.values())}); name the relevant one with --positive-label")
        positive = 1
    else:
        found = [i for i, name in labels.items() if name == positive_label]
        if not found:
            raise ConfigError(f"--positive-label '{positive_label}': {clf.checkpoint.path} has the labels "
                              f"{', '.join(labels.values())}")
        positive = found[0]
    return CrossEncoder(clf, "softmax", positive, budget)


def _activate(logits: np.ndarray, cross: CrossEncoder) -> np.ndarray:
    if cross.positive is not None:
        from bertcli.tasks.classification import softmax

        return softmax(logits)[:, cross.positive].astype(np.float32) if len(logits) else np.zeros(0, np.float32)
    x = logits[:, 0].astype(np.float32)
    if cross.activation == "sigmoid":
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    if cross.activation == "tanh":
        return np.tanh(x)
    return x


def score(cross: CrossEncoder, queries: Sequence[str], documents: Sequence[str], progress=None) -> np.ndarray:
    """The cross-encoder's score of each (query, document) pair: (N,) float32, in input order."""
    if len(queries) != len(documents):
        raise ValueError(f"{len(queries)} queries but {len(documents)} documents")
    for what, texts in (("query", queries), ("document", documents)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"{what} {i} is a {type(t).__name__}, not a string")
    if not queries:
        cross.truncated = 0
        return np.zeros(0, dtype=np.float32)
    logits, truncated = cross.classifier.logits(list(queries), list(documents), batch_tokens=cross.batch_tokens,
                                                progress=progress)
    cross.truncated = truncated
    return _activate(logits, cross)


def order(scores: Sequence[float]) -> list[int]:
    """Indices by score, highest first; ties keep the input order."""
    return sorted(range(len(scores)), key=lambda i: -float(scores[i]))


def rerank(cross: CrossEncoder, query: str, documents: Sequence[str], *, top_k: int | None = None
           ) -> list[tuple[int, float]]:
    """``(index into documents, score)`` of the ``top_k`` best documents for ``query``, best first."""
    scores = score(cross, [query] * len(documents), documents)
    ranked = order(scores)
    return [(i, float(scores[i])) for i in ranked[: top_k if top_k is not None else len(ranked)]]


def first_stage_top(candidates: Mapping[str, float], top: int) -> list[str]:
    """The ``top`` best document ids of one query's run entry (ties: the run's order)."""
    items = list(candidates.items())
    ranked = sorted(range(len(items)), key=lambda i: -float(items[i][1]))
    return [items[i][0] for i in ranked[:top]]


def rerank_run(cross: CrossEncoder, queries: Mapping[str, str], run: Mapping[str, Mapping[str, float]],
               doc_text: Mapping[str, str] | Callable[[str], str], *, top: int = 100, keep_rest: bool = False,
               progress: Callable[[int, int], None] | None = None) -> dict[str, dict[str, float]]:
    """Rescore the ``top`` first-stage documents of each query of ``run`` with ``cross``.

    ``queries``: qid -> query text; ``run``: qid -> {doc_id: first-stage score}; ``doc_text``: doc id ->
    the text the cross-encoder reads (a mapping or a function, e.g. ``Index.text``). Returns the same
    format holding, per query, its ``top`` documents with the cross-encoder's scores, best first. The
    documents below ``top`` are dropped, or with ``keep_rest`` follow in their first-stage order, scored
    ``m - 1``, ``m - 2``, ... below the lowest cross-encoder score ``m`` (so that any ranking of the run by
    score keeps them under the reranked ones). ``progress(pairs_done, total)``.
    """
    if top < 1:
        raise ConfigError(f"--rerank-top must be at least 1, got {top}")
    lookup = doc_text.__getitem__ if isinstance(doc_text, Mapping) else doc_text
    pairs: list[tuple[str, str]] = []
    for qid, candidates in run.items():
        if qid not in queries:
            raise DataError(f"query '{qid}' of the run has no text in the queries; pass the queries file the run "
                            "was made from")
        pairs.extend((qid, doc) for doc in first_stage_top(candidates, top))
    texts: dict[str, str] = {}
    for _, doc in pairs:
        if doc not in texts:
            try:
                texts[doc] = lookup(doc)
            except KeyError:
                raise DataError(f"document '{doc}' of the run is not in the corpus / index; rerank with the "
                                "corpus the run was searched in") from None
    scores = np.zeros(len(pairs), dtype=np.float32)
    truncated = 0
    for start in range(0, len(pairs), CHUNK_PAIRS):
        part = pairs[start:start + CHUNK_PAIRS]
        scores[start:start + len(part)] = score(cross, [queries[q] for q, _ in part], [texts[d] for _, d in part])
        truncated += cross.truncated
        if progress is not None:
            progress(start + len(part), len(pairs))
    cross.truncated = truncated
    out: dict[str, dict[str, float]] = {qid: {} for qid in run}
    for (qid, doc), s in zip(pairs, scores, strict=True):
        out[qid][doc] = float(s)
    ranked = {qid: {d: docs[d] for d in first_stage_top(docs, len(docs))} for qid, docs in out.items()}
    if keep_rest:
        for qid, candidates in run.items():
            floor = min(ranked[qid].values(), default=0.0)
            rest = [d for d in first_stage_top(candidates, len(candidates)) if d not in ranked[qid]]
            ranked[qid].update({d: floor - 1.0 - k for k, d in enumerate(rest)})
    return ranked


# ============================================================ candidates files
@dataclass
class Candidates:
    """One query and the documents to rerank for it (a line of a candidates JSONL file)."""

    qid: str
    query: str
    documents: list[str]
    doc_ids: list[str | None]
    line: int = 0


def _doc_entry(value: Any, where: str) -> tuple[str | None, str]:
    if isinstance(value, str):
        return None, value
    if isinstance(value, dict):
        text = value.get("text")
        if not isinstance(text, str):
            raise DataError(f"{where}: a document object needs a string 'text' field"
                            f"{'' if 'text' not in value else f', got {type(text).__name__}'}")
        title = value.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(f"{where}: 'title' must be a string, got {type(title).__name__}")
        doc_id = value.get("_id", value.get("id"))
        if doc_id is not None and not isinstance(doc_id, (str, int)):
            raise DataError(f"{where}: 'id' must be a string or a number, got {type(doc_id).__name__}")
        from bertcli.retrieval.beir import doc_text

        return (None if doc_id is None else str(doc_id)), doc_text({"title": title or "", "text": text})
    raise DataError(f"{where}: a document is a string or an object with 'text' (and 'id', 'title'), "
                    f"got {type(value).__name__}")


def read_candidates(path: str | Path, encoding: str = "utf-8") -> list[Candidates]:
    """The queries of a candidates JSONL file (``-``: stdin): one object per line with ``query`` (the
    text), ``documents`` (a list of texts, or of objects with ``text`` and optional ``id`` / ``_id`` /
    ``title``: the title is read before the text, ``title + " " + text`` as BEIR's rerankers do) and
    optional ``qid``. The JSON lines of ``bertcli search --json`` (``query_id``, ``query``, ``results``)
    are candidates files too."""
    from bertcli.data.tables import jsonl_records
    from bertcli.data.text import read_text

    name = "<stdin>" if str(path) == "-" else str(path)
    out: list[Candidates] = []
    for obj, line in jsonl_records(name, read_text(path, encoding).text.splitlines()):
        where = f"{name}, line {line}"
        if "documents" not in obj and "results" in obj:  # bertcli search --json
            obj = {**obj, "documents": obj["results"]}
        for key in ("query", "documents"):
            if key not in obj:
                raise DataError(f"{where}: no '{key}' field (a candidates line is {{\"qid\": ..., \"query\": "
                                f"\"...\", \"documents\": [\"...\", ...]}}); fields here: {', '.join(obj) or 'none'}")
        if not isinstance(obj["query"], str):
            raise DataError(f"{where}: 'query' must be a string, got {type(obj['query']).__name__}")
        if not isinstance(obj["documents"], list):
            raise DataError(f"{where}: 'documents' must be a list, got {type(obj['documents']).__name__}")
        qid = next((obj[k] for k in ("qid", "query_id", "_id", "id") if k in obj), str(line))
        if not isinstance(qid, (str, int)):
            raise DataError(f"{where}: 'qid' must be a string or a number, got {type(qid).__name__}")
        entries = [_doc_entry(d, f"{where}, documents[{k}]") for k, d in enumerate(obj["documents"])]
        out.append(Candidates(str(qid), obj["query"], [t for _, t in entries], [i for i, _ in entries], line))
    if not out:
        raise DataError(f"{name}: no candidates (one JSON object per line with 'query' and 'documents')")
    return out


def rerank_candidates(cross: CrossEncoder, items: Sequence[Candidates], *, top_k: int | None = None,
                      ) -> list[list[tuple[int, float]]]:
    """``rerank`` of every query of ``items`` (all pairs scored in one length-sorted pass per chunk)."""
    queries = [c.query for c in items for _ in c.documents]
    docs = [d for c in items for d in c.documents]
    scores = np.zeros(len(docs), dtype=np.float32)
    truncated = 0
    for start in range(0, len(docs), CHUNK_PAIRS):
        scores[start:start + CHUNK_PAIRS] = score(cross, queries[start:start + CHUNK_PAIRS],
                                                  docs[start:start + CHUNK_PAIRS])
        truncated += cross.truncated
    cross.truncated = truncated
    out, at = [], 0
    for c in items:
        mine = scores[at:at + len(c.documents)]
        at += len(c.documents)
        ranked = order(mine)[: top_k if top_k is not None else len(mine)]
        out.append([(i, float(mine[i])) for i in ranked])
    return out
