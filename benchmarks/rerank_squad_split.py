"""Subsets of the SQuAD-BEIR qrels for the reranking benchmark (benchmarks/rerank_squad.sh).

    python benchmarks/rerank_squad_split.py BEIR_DIR OUT_DIR [--train 1000] [--test-every 10]

OUT_DIR/train-N.tsv: N training questions drawn with seed 0 (random.Random(0).sample, in qrels order);
OUT_DIR/test-sub.tsv: every k-th question of qrels/test.tsv (the reranked evaluation set).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("beir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--test-every", type=int, default=10)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        header, *rows = (args.beir / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        if split == "train":
            keep = sorted(random.Random(0).sample(range(len(rows)), args.train))
            name = f"train-{args.train}.tsv"
        else:
            keep = range(0, len(rows), args.test_every)
            name = "test-sub.tsv"
        (args.out / name).write_text(header + "".join(rows[i] for i in keep), encoding="utf-8")
        print(name, len(keep))


if __name__ == "__main__":
    main()
