"""Search an index: queries are embedded with the index's model and prefix, documents ranked by cosine similarity.

Exact search (the default) multiplies a block of queries (``query_block``, 1024) by one shard of the index at a
time and keeps a running top-k per query, so memory is ``query_block x shard rows`` scores plus one shard,
whatever the index size; on a GPU the products run there. Within the returned top k, ties are ranked by
document id (ascending), as sentence-transformers' ``InformationRetrievalEvaluator`` ranks them; which of
several documents tied exactly at the k-th score make the cut is up to ``torch.topk`` (sentence-transformers
reselects those by id).

Approximate search (``ann="hnsw"`` or ``"ivf"``, FAISS, the optional extra ``bertcli[ann]``): see
:mod:`bertcli.retrieval.ann`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, DataError

QUERY_BLOCK = 1024


def _as_index(index: Any):
    from bertcli.retrieval.index import Index, open_index

    return index if isinstance(index, Index) else open_index(index)


def encode_queries(index: Any, texts: Sequence[str], *, model: Any = None, device: str = "auto",
                   precision: str = "auto", batch_tokens: int | None = None,
                   progress: bool | Callable[[int, int], None] = False):
    """The queries' vectors ``[Q, D]`` (float32, CPU), embedded as the index's documents were (its model,
    pooling, normalisation, max length) with its ``query_prefix``. ``model``: a checkpoint directory (checked
    against the index's fingerprint), an :class:`~bertcli.embed.Encoder`, or ``None`` for the manifest's."""
    from bertcli.embed import Encoder, embed, load
    from bertcli.retrieval.index import check_model

    index = _as_index(index)
    m = index.manifest
    enc = model if isinstance(model, Encoder) else load(check_model(index, model), device=device,
                                                        precision=precision)
    if enc.dim != m["dim"]:
        raise ConfigError(f"the model's vectors have {enc.dim} dimensions, the index's {m['dim']}")
    prefix = m["query_prefix"]
    return embed([prefix + t for t in texts], enc, pooling=m["pooling"], normalize=m["normalize"],
                 max_length=m["max_length"], batch_tokens=batch_tokens, progress=progress).vectors


def search_vectors(index: Any, queries, top_k: int = 10, *, device: str | None = None,
                   query_block: int = QUERY_BLOCK):
    """Exact cosine top-k of query vectors ``[Q, D]`` against the index: ``(scores [Q, k], rows [Q, k])`` (float32
    and int64 CPU tensors, best first; ``k = min(top_k, N)``; ``rows`` index :attr:`Index.ids`)."""
    import torch
    import torch.nn.functional as F

    index = _as_index(index)
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    dev = torch.device(device) if device else queries.device
    q_all = F.normalize(queries.float(), dim=-1)
    k = min(top_k, index.count)
    n_q = q_all.shape[0]
    best_s = torch.full((n_q, 0), float("-inf"))
    best_i = torch.zeros((n_q, 0), dtype=torch.long)
    normalized = index.manifest["normalize"]
    for start, block in index.iter_vectors():
        block = block.to(dev)
        if not normalized:
            block = F.normalize(block, dim=-1)
        new_s, new_i = [], []
        for q0 in range(0, n_q, query_block):
            q = q_all[q0:q0 + query_block].to(dev)
            scores = q @ block.T  # (q, n)
            kk = min(k, scores.shape[1])
            s, i = torch.topk(scores, kk, dim=1)
            new_s.append(s.cpu())
            new_i.append(i.cpu() + start)
        s = torch.cat([best_s, torch.cat(new_s)], dim=1)
        i = torch.cat([best_i, torch.cat(new_i)], dim=1)
        top_s, where = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_s, best_i = top_s, torch.gather(i, 1, where)
    return best_s, best_i


def to_run(qids: Sequence[str], scores, rows, ids: Sequence[str]) -> dict[str, dict[str, float]]:
    """BEIR's run format ``{qid: {doc_id: score}}``, each query's documents in rank order: score descending,
    ties by document id ascending."""
    run: dict[str, dict[str, float]] = {}
    for qid, s_row, i_row in zip(qids, scores.tolist(), rows.tolist(), strict=True):
        hits = sorted(((s, ids[i]) for s, i in zip(s_row, i_row, strict=True) if i >= 0), key=lambda h: (-h[0], h[1]))
        run[qid] = {doc: score for score, doc in hits}
    return run


def search(index: Any, queries: dict[str, str], *, model: Any = None, top_k: int = 10, device: str = "auto",
           precision: str = "auto", batch_tokens: int | None = None, ann: str | None = None,
           ann_options: dict[str, Any] | None = None,
           progress: bool | Callable[[int, int], None] = False) -> dict[str, dict[str, float]]:
    """Rank the documents of ``index`` (an :class:`~bertcli.retrieval.index.Index` or its directory) for each
    query of ``queries`` (``{qid: text}``): ``{qid: {doc_id: cosine}}``, BEIR's run format, the ``top_k`` best
    per query in rank order. ``model`` defaults to the manifest's (a different one is an error); ``ann``
    ("hnsw" | "ivf") searches a FAISS index instead of exactly (``ann_options``: see
    :mod:`bertcli.retrieval.ann`)."""
    if not isinstance(queries, dict):
        raise TypeError("queries must be a dict {query_id: text}")
    index = _as_index(index)
    if not queries:
        return {}
    qids = list(queries)
    vectors = encode_queries(index, [queries[q] for q in qids], model=model, device=device, precision=precision,
                             batch_tokens=batch_tokens, progress=progress)
    return rank_vectors(index, qids, vectors, top_k, ann=ann, ann_options=ann_options, device=device)


def rank_vectors(index: Any, qids: Sequence[str], vectors, top_k: int, *, ann: str | None = None,
                 ann_options: dict[str, Any] | None = None, device: str = "auto") -> dict[str, dict[str, float]]:
    """:func:`search` for query vectors already embedded (:func:`encode_queries`): the run ``{qid: {doc: score}}``."""
    index = _as_index(index)
    if ann is not None:
        from bertcli.retrieval.ann import ann_search

        scores, rows = ann_search(index, vectors, top_k, ann, **(ann_options or {}))
    else:
        from bertcli.device import resolve_device

        scores, rows = search_vectors(index, vectors, top_k, device=str(resolve_device(device)))
    return to_run(qids, scores, rows, index.ids)


def check_qrels(index: Any, qrels: dict[str, dict[str, int]], queries: dict[str, str], qrels_path: str | Path,
                queries_path: str | Path) -> None:
    """Qrels naming a document that is not in the index, or a query missing from the queries, is a DataError."""
    index = _as_index(index)
    known = set(index.ids)
    missing_docs = list(dict.fromkeys(d for judged in qrels.values() for d in judged if d not in known))
    if missing_docs:
        shown = ", ".join(repr(d) for d in missing_docs[:10])
        more = f" and {len(missing_docs) - 10} more" if len(missing_docs) > 10 else ""
        raise DataError(f"{qrels_path}: judges document(s) {shown}{more} that are not in the index {index.path}; "
                        f"index the whole corpus, or use the qrels that belong to it")
    missing_q = [q for q in qrels if q not in queries]
    if missing_q:
        shown = ", ".join(repr(q) for q in missing_q[:10])
        more = f" and {len(missing_q) - 10} more" if len(missing_q) > 10 else ""
        raise DataError(f"{qrels_path}: judges query id(s) {shown}{more} that are not in {queries_path}")
