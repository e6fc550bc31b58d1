"""Easier negatives for the cross-encoder of the reranking benchmark (benchmarks/rerank_squad.sh).

    python benchmarks/rerank_squad_mix.py BEIR_DIR TRIPLES OUT [--seed 0] [--train-articles 30]

OUT: for each (query, positive, negative) row of TRIPLES (mined by ``bertcli mine-negatives``), the row
itself and a row with a random paragraph as the negative (drawn with ``random.Random(seed)`` from the
training articles' paragraphs, never the row's positive), the two interleaved: twice the rows, half the
negatives easy. The paragraphs are written as ``mine-negatives`` writes them (title, space, text).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("beir", type=Path)
    ap.add_argument("triples", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-articles", type=int, default=30, help="paragraphs of articles 00..N-1 (qrels/train)")
    args = ap.parse_args()
    paragraphs = []
    with (args.beir / "corpus.jsonl").open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if int(doc["_id"].split("-")[0]) < args.train_articles:
                paragraphs.append(f"{doc['title']} {doc['text']}".strip())
    rng = random.Random(args.seed)
    rows = [json.loads(line) for line in args.triples.read_text(encoding="utf-8").splitlines() if line.strip()]
    with args.out.open("w", encoding="utf-8") as out:
        for row in rows:
            easy = rng.choice(paragraphs)
            while easy == row["positive"]:
                easy = rng.choice(paragraphs)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.write(json.dumps({**row, "negative": easy}, ensure_ascii=False) + "\n")
    print(args.out, 2 * len(rows))


if __name__ == "__main__":
    main()
