"""Hard negatives: for each judged query, the best-ranked documents of the index that are not known positives.

:func:`mine_negatives` searches the index for every query of ``qrels`` that has a relevant document (relevance
> 0) and a text in ``queries``, drops every known positive from the ranking, skips the ``skip_top`` best of the
rest (near-duplicates of a positive and unjudged positives often sit there) and keeps the next ``per_query``.
Each negative becomes a row ``(query, positive, negative)`` (texts: ``title + " " + text`` as the index holds
them; ids in ``query_id``, ``positive_id``, ``negative_id``), the positives taken in turn (highest relevance
first), ready for ``bertcli finetune --task sentence-embedding --loss mnrl --text-column query
--text-pair-column positive --negative-column negative``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bertcli.errors import ConfigError, DataError

COLUMNS = ["query", "positive", "negative", "query_id", "positive_id", "negative_id"]


def mine_negatives(index: Any, queries: dict[str, str], qrels: dict[str, dict[str, int]], *, per_query: int = 5,
                   skip_top: int = 0, model: Any = None, device: str = "auto", precision: str = "auto",
                   batch_tokens: int | None = None,
                   progress: bool | Callable[[int, int], None] = False) -> list[dict[str, str]]:
    """Rows ``{"query", "positive", "negative", "query_id", "positive_id", "negative_id"}``, per query in
    ``qrels`` order, its negatives in rank order (see the module docstring)."""
    from bertcli.retrieval.search import _as_index, search

    if per_query < 1:
        raise ConfigError(f"--per-query must be at least 1, got {per_query}")
    if skip_top < 0:
        raise ConfigError(f"--skip-top must be 0 or more, got {skip_top}")
    index = _as_index(index)
    positives = {q: [d for d, _ in sorted(((d, r) for d, r in j.items() if r > 0), key=lambda x: (-x[1], x[0]))]
                 for q, j in qrels.items()}
    wanted = {q: queries[q] for q, pos in positives.items() if pos and q in queries}
    if not wanted:
        raise DataError("no query has both a text and a relevant document; check that the queries and qrels belong "
                        "together")
    longest = max(len(positives[q]) for q in wanted)
    run = search(index, wanted, model=model, top_k=skip_top + per_query + longest, device=device,
                 precision=precision, batch_tokens=batch_tokens, progress=progress)
    rows: list[dict[str, str]] = []
    for qid, hits in run.items():
        pos = positives[qid]
        known = set(pos)
        negatives = [d for d in hits if d not in known][skip_top:skip_top + per_query]
        for j, neg in enumerate(negatives):
            p = pos[j % len(pos)]
            rows.append({"query": wanted[qid], "positive": index.text(p), "negative": index.text(neg),
                         "query_id": qid, "positive_id": p, "negative_id": neg})
    return rows
