"""Approximate search with FAISS (``pip install 'bertcli[ann]'``, the ``faiss-cpu`` package).

Two kinds, both on inner products of L2-normalised vectors (= cosine, the exact search's score):

* ``hnsw`` (``faiss.IndexHNSWFlat``): a graph; ``m`` links per vector (default 32; more: better recall, more
  memory), ``ef_construction`` (default 200: the build's search width), ``ef_search`` (default 128: the query's
  search width; raise it for recall, lower it for speed). No training; the best recall for the latency.
* ``ivf`` (``faiss.IndexIVFFlat``): k-means cells; ``nlist`` cells (default 4 * sqrt(N), at most N / 39 so that
  every cell has training points), ``nprobe`` cells visited per query (default 16). Trained on up to 256 vectors
  per cell, sampled with a fixed seed. Quicker to build than HNSW, less recall at the same speed.

The FAISS index is built from the shards (one in memory at a time, plus the FAISS index itself) on first use and
cached in the index directory as ``ann-<kind>-<parameters>-<count>.faiss`` (FAISS's own binary format, no
pickle) and held by the opened :class:`~bertcli.retrieval.index.Index` for its next searches; appending documents changes the count, so the next search builds it anew. :func:`ann_recall` measures
recall@k against exact search on a sample of queries.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError

KINDS = ("hnsw", "ivf")
DEFAULTS = {"hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128}, "ivf": {"nlist": None, "nprobe": 16}}


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError("--ann needs FAISS: pip install 'bertcli[ann]' (the faiss-cpu package)") from None
    return faiss


def resolve(kind: str, count: int, **params: Any) -> dict[str, int]:
    """The full parameter set of ``kind`` (defaults filled in; unknown or non-positive values are errors)."""
    if kind not in KINDS:
        raise ConfigError(f"--ann {kind}: valid values: {', '.join(KINDS)}")
    given = {k: v for k, v in params.items() if v is not None}
    unknown = set(given) - set(DEFAULTS[kind])
    if unknown:
        raise ConfigError(f"--ann {kind} takes {', '.join(DEFAULTS[kind])}, not {', '.join(sorted(unknown))}")
    out = {**DEFAULTS[kind], **given}
    if kind == "ivf" and out["nlist"] is None:
        out["nlist"] = max(1, min(int(4 * math.sqrt(count)), count // 39))
    for k, v in out.items():
        if not isinstance(v, int) or v < 1:
            raise ConfigError(f"--{k.replace('_', '-')} must be a positive integer, got {v}")
    return out


def _normalized_shards(index):
    import torch.nn.functional as F

    for _, block in index.iter_vectors():
        yield (block if index.manifest["normalize"] else F.normalize(block, dim=-1)).numpy()


def build_ann(index, kind: str, **params: Any):
    """The FAISS index of ``kind`` over ``index`` (from the cache in the index directory when there is one)."""
    faiss = _faiss()
    p = resolve(kind, index.count, **params)
    d = index.dim
    tag = "-".join(f"{k}{v}" for k, v in p.items() if k not in ("ef_search", "nprobe"))
    cache = Path(index.path) / f"ann-{kind}-{tag}-{index.count}.faiss"
    held = index.__dict__.setdefault("_ann", {})  # built or read once per opened Index
    if cache.name in held:
        ann = held[cache.name]
    elif cache.is_file():
        ann = faiss.read_index(str(cache))
    elif kind == "hnsw":
        ann = faiss.IndexHNSWFlat(d, p["m"], faiss.METRIC_INNER_PRODUCT)
        ann.hnsw.efConstruction = p["ef_construction"]
        for block in _normalized_shards(index):
            ann.add(block)
    else:
        import numpy as np

        quantizer = faiss.IndexFlatIP(d)
        ann = faiss.IndexIVFFlat(quantizer, d, p["nlist"], faiss.METRIC_INNER_PRODUCT)
        want = min(index.count, 256 * p["nlist"])
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(index.count, size=want, replace=False))
        sample, start = [], 0
        for block in _normalized_shards(index):
            take = rows[(rows >= start) & (rows < start + len(block))] - start
            sample.append(block[take])
            start += len(block)
        ann.train(np.concatenate(sample))
        for block in _normalized_shards(index):
            ann.add(block)
    held[cache.name] = ann
    if not cache.is_file():
        try:
            for old in Path(index.path).glob(f"ann-{kind}-*.faiss"):
                old.unlink()
            tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
            faiss.write_index(ann, str(tmp))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only index still searches; it only builds again next time
    if kind == "hnsw":
        ann.hnsw.efSearch = p["ef_search"]
    else:
        ann.nprobe = p["nprobe"]
    return ann


def ann_search(index, queries, top_k: int, kind: str, **params: Any):
    """Approximate top-k: ``(scores [Q, k], rows [Q, k])`` like :func:`bertcli.retrieval.search.search_vectors`
    (a row of -1 where FAISS found fewer than k)."""
    import torch
    import torch.nn.functional as F

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    ann = build_ann(index, kind, **params)
    q = F.normalize(queries.float().cpu(), dim=-1).numpy()
    scores, rows = ann.search(q, min(top_k, index.count))
    return torch.from_numpy(scores), torch.from_numpy(rows).long()


def ann_recall(index, queries, kind: str, *, top_k: int = 10, sample: int = 100, **params: Any) -> float:
    """Mean recall@k of the approximate top-k against the exact top-k, over up to ``sample`` of the query vectors
    (evenly spaced)."""
    from bertcli.retrieval.search import search_vectors

    n = queries.shape[0]
    pick = sorted({int(i * n / min(sample, n)) for i in range(min(sample, n))})
    q = queries[pick]
    _, exact = search_vectors(index, q, top_k)
    _, approx = ann_search(index, q, top_k, kind, **params)
    hits = [len(set(a) & set(e)) / len(e) for a, e in zip(approx.tolist(), exact.tolist(), strict=True)]
    return sum(hits) / len(hits)
