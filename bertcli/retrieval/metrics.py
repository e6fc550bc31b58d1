"""Information-retrieval metrics with sentence-transformers' ``InformationRetrievalEvaluator`` definitions
(equal to BEIR's / trec_eval's for binary judgements; see the notes).

For each query with at least one relevant document (relevance > 0) in ``qrels``, the ranking is the run's
documents ordered by score descending, ties by document id ascending (sentence-transformers' order), cut at k:

* ``ndcg@k``: DCG / ideal DCG with gain = relevance and discount 1 / log2(rank + 1); for binary judgements this
  is sentence-transformers' nDCG, for graded ones trec_eval's (BEIR's) linear-gain nDCG.
* ``mrr@k``: 1 / rank of the first relevant document in the top k (0 if none).
* ``map@k``: sum over the relevant documents in the top k of precision at their rank, divided by
  min(k, number relevant) (sentence-transformers; trec_eval divides by the number relevant: the same whenever
  a query has at most k relevant documents).
* ``recall@k``: relevant documents in the top k / number relevant. ``precision@k``: relevant in the top k / k.
* ``accuracy@k``: 1 if any relevant document is in the top k.

Documents without a judgement are not relevant; a query of ``qrels`` absent from the run scores 0; queries with
no relevant document are left out (as both tools do). Aggregates are means over the evaluated queries.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

K_VALUES = (1, 3, 5, 10, 100)
METRICS = ("ndcg", "mrr", "map", "recall", "precision", "accuracy")


def rank(docs: dict[str, float]) -> list[str]:
    """Document ids by score descending, ties by id ascending."""
    return [d for d, _ in sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))]


def query_metrics(judged: dict[str, int], ranking: Sequence[str], k_values: Sequence[int] = K_VALUES) -> dict[str, float]:
    """Every metric at every k for one query (``judged``: {doc_id: relevance}, ``ranking``: ids best first)."""
    relevant = {d: r for d, r in judged.items() if r > 0}
    n_rel = len(relevant)
    ideal = sorted(relevant.values(), reverse=True)
    out: dict[str, float] = {}
    for k in k_values:
        top = ranking[:k]
        grades = [relevant.get(d, 0) for d in top]
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(grades))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        hits, ap, rr = 0, 0.0, 0.0
        for i, g in enumerate(grades):
            if g > 0:
                hits += 1
                ap += hits / (i + 1)
                if rr == 0.0:
                    rr = 1.0 / (i + 1)
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"mrr@{k}"] = rr
        out[f"map@{k}"] = ap / min(k, n_rel)
        out[f"recall@{k}"] = hits / n_rel
        out[f"precision@{k}"] = hits / k
        out[f"accuracy@{k}"] = 1.0 if hits else 0.0
    return out


def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], *,
             k_values: Sequence[int] = K_VALUES) -> dict[str, Any]:
    """Aggregate metrics ``{"ndcg@10": ..., "mrr@10": ..., ...}`` (every metric of :data:`METRICS` at every k),
    ``"queries"`` (how many were evaluated) and ``"per_query"`` (``{qid: {metric: value}}``).

    ``qrels``: ``{qid: {doc_id: relevance}}`` (:func:`bertcli.retrieval.beir.load_qrels`); ``run``:
    ``{qid: {doc_id: score}}`` (:func:`bertcli.retrieval.search.search`)."""
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be positive integers, got {list(k_values)}")
    per_query: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not any(r > 0 for r in judged.values()):
            continue
        per_query[qid] = query_metrics(judged, rank(run.get(qid, {})), ks)
    n = len(per_query)
    names = [f"{m}@{k}" for m in METRICS for k in ks]
    out: dict[str, Any] = {"queries": n}
    for name in names:
        out[name] = (math.fsum(q[name] for q in per_query.values()) / n) if n else 0.0
    out["per_query"] = per_query
    return out
