"""The table of benchmarks/rerank_squad.sh: runs/rr/eval-*.json -> stdout (and --out FILE).

    python benchmarks/rerank_squad_table.py [--work runs/rr] [--out FILE]

(benchmarks/results/rerank_squad.md is its output with the setup and the reading around it.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("ndcg@10", "mrr@10", "recall@10", "recall@1", "recall@100")
ROWS = [  # (eval name, label, baseline eval name for the deltas)
    ("minilm-test", "all-MiniLM-L6-v2 (bi-encoder)", None),
    ("mnrl-test", "MiniLM fine-tuned, MNRL + mined negatives", "minilm-test"),
    ("minilm-sub", "all-MiniLM-L6-v2 (bi-encoder)", None),
    ("minilm-cross-lr2e-4-sub", "+ cross-encoder from MiniLM (batch 16, lr 2e-4, 125 steps), top 20", "minilm-sub"),
    ("minilm-cross-sub", "+ cross-encoder from MiniLM (batch 8, lr 1e-4, 250 steps), top 20", "minilm-sub"),
    ("minilm-cross-mixed-lr5e-5-sub", "+ cross-encoder from MiniLM, mined + random negatives (batch 8, lr 5e-5, "
     "500 steps), top 20", "minilm-sub"),
    ("minilm-cross-mixed-lr1e-4-sub", "+ cross-encoder from MiniLM, mined + random negatives (batch 8, lr 1e-4, "
     "500 steps), top 20", "minilm-sub"),
    ("minilm-cross-hard-2ep-sub", "+ cross-encoder from MiniLM, mined negatives only (batch 8, lr 5e-5, "
     "2 epochs = 500 steps), top 20", "minilm-sub"),
    ("mnrl-sub", "MiniLM fine-tuned, MNRL + mined negatives", "minilm-sub"),
    ("mnrl-cross-sub", "MNRL model + cross-encoder, top 20", "minilm-sub"),
    ("mnrl-cross-mixed-lr5e-5-sub", "MNRL model + cross-encoder (mined + random negatives, lr 5e-5), top 20",
     "minilm-sub"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "rr")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    found = {p.stem[5:]: json.loads(p.read_text()) for p in sorted(args.work.glob("eval-*.json")) if p.stat().st_size}
    lines = ["| test queries | retriever | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---:|" * len(METRICS)]
    for name, label, base in ROWS:
        if name not in found:
            continue
        r = found[name]
        cells = []
        for m in METRICS:
            cell = f"{r[m]:.4f}"
            if base and base in found:
                cell += f" ({r[m] - found[base][m]:+.4f})"
            cells.append(cell)
        split = "all 1,971" if name.endswith("-test") else f"subset of {r['queries']}"
        lines.append(f"| {split} | {label} | " + " | ".join(cells) + " |")
    times = (args.work / "times.log")
    if times.is_file():
        lines += ["", "CPU seconds (user+sys) and wall seconds per step:", "", "```",
                  *[t for t in times.read_text().splitlines() if "cpu_s=" in t], "```"]
    text = "\n".join(lines) + "\n"
    if args.out is not None:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
