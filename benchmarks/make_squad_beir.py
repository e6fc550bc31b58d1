"""Build a BEIR-format retrieval set from ../shared/data/squad (SQuAD v1.1 dev, articles 00-39).

    python benchmarks/make_squad_beir.py [--squad FILE] [--out DIR]

Writes DIR/corpus.jsonl (every paragraph of every article: ``_id`` "<article>-<paragraph>", e.g. "03-017",
``title`` the article title with spaces, ``text`` the paragraph), DIR/queries.jsonl (every question: ``_id`` the
SQuAD question id, ``text``), DIR/qrels/train.tsv (the questions of articles 00-29) and DIR/qrels/test.tsv
(articles 30-39), in BEIR's TSV format (``query-id<TAB>corpus-id<TAB>score`` with a header; each question
judges its own paragraph relevant, score 1). The corpus is the whole set for both splits.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SQUAD = ROOT.parent / "shared" / "data" / "squad" / "squad-v1.1-dev-articles-00-39.json"
TRAIN_ARTICLES = range(0, 30)


def build(squad: Path, out: Path) -> dict[str, int]:
    data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    counts = {"docs": 0, "queries": 0, "train": 0, "test": 0}
    qrels = {"train": [], "test": []}
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as corpus, \
            open(out / "queries.jsonl", "w", encoding="utf-8") as queries:
        for a, article in enumerate(data):
            title = article["title"].replace("_", " ")
            split = "train" if a in TRAIN_ARTICLES else "test"
            for p, para in enumerate(article["paragraphs"]):
                doc_id = f"{a:02d}-{p:03d}"
                corpus.write(json.dumps({"_id": doc_id, "title": title, "text": para["context"]},
                                        ensure_ascii=False) + "\n")
                counts["docs"] += 1
                for qa in para["qas"]:
                    queries.write(json.dumps({"_id": qa["id"], "text": qa["question"]}, ensure_ascii=False) + "\n")
                    qrels[split].append(f"{qa['id']}\t{doc_id}\t1\n")
                    counts["queries"] += 1
                    counts[split] += 1
    for split, rows in qrels.items():
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows), encoding="utf-8")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "squad-beir")
    args = ap.parse_args()
    counts = build(args.squad, args.out)
    print(json.dumps({"out": str(args.out), **counts}))


if __name__ == "__main__":
    main()
