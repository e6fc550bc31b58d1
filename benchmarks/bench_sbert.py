"""Sentence-BERT training side by side: bertcli finetune --task sentence-embedding vs sentence-transformers.

The same initial weights (a checkpoint directory), the same data (STS-B train, scores / 5), the same
loss (CosineSimilarityLoss), pooling, epochs, batch size, learning rate, warmup, weight decay,
gradient clipping, maximum length and seed. Each trainer runs in its own subprocess (same threads,
same memory conditions), one after the other; the order alternates between repetitions.

* bertcli: the real CLI, ``bertcli finetune --task sentence-embedding --loss cosine ...``.
* sentence-transformers: ``SentenceTransformer(Transformer(model_dir) + Pooling)`` trained with
  ``CosineSimilarityLoss`` through ``SentenceTransformer.old_fit`` (sentence-transformers' own
  training loop: AdamW, WarmupLinear schedule, weight decay 0.01 off biases and LayerNorm,
  gradient norm 1; ``fit``/``SentenceTransformerTrainer`` need the ``datasets`` package, which
  is not installed here).

Both trained models are scored the same way, with sentence-transformers' ``encode`` and the
cosine similarity against the gold scores (what ``EmbeddingSimilarityEvaluator`` does): the
Spearman correlation on STS-B dev, before and after training. bertcli's own dev Spearman
(from its training summary) is printed too. Prints a markdown table; the machine is shared, so
wall times are indicative only.

    python benchmarks/bench_sbert.py --model runs/pretrained --epochs 1 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STSB = Path(os.environ.get("BERTCLI_SHARED_DATA", ROOT.parent / "shared" / "data")) / "stsb"


def read_sts(path: Path) -> tuple[list[str], list[str], list[float]]:
    a, b, s = [], [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        if len(cols) < 7:
            continue
        s.append(float(cols[4]))
        a.append(cols[5])
        b.append(cols[6])
    return a, b, s


def st_spearman(model_dir: str, dev: Path, max_length: int, pooling: str | None = None) -> float:
    """Spearman of cos(u, v) against gold on ``dev`` with sentence-transformers' encode."""
    import numpy as np
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    st = build_st(model_dir, max_length, pooling) if pooling else SentenceTransformer(model_dir, device="cpu")
    st.max_seq_length = max_length
    a, b, gold = read_sts(dev)
    u = st.encode(a, batch_size=64, convert_to_numpy=True)
    v = st.encode(b, batch_size=64, convert_to_numpy=True)
    cos = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1) + 1e-12)
    return float(spearmanr(cos, gold)[0])


def build_st(model_dir: str, max_length: int, pooling: str):
    """The model sentence-transformers trains: the checkpoint's modules, or Transformer + Pooling."""
    from sentence_transformers import SentenceTransformer, models

    if (Path(model_dir) / "modules.json").is_file():
        st = SentenceTransformer(model_dir, device="cpu")
        pool = st[1]
        if pool.get_config_dict().get("pooling_mode") not in (pooling, f"{pooling}_tokens"):
            st[1] = models.Pooling(st[0].get_embedding_dimension(), pooling_mode=pooling)
    else:
        word = models.Transformer(model_dir, max_seq_length=max_length)
        st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), pooling_mode=pooling)],
                                 device="cpu")
    st.max_seq_length = max_length
    return st


def st_worker(args) -> None:
    """Train with sentence-transformers (in a subprocess); print one JSON line."""
    import random

    import numpy as np
    import torch
    from sentence_transformers import InputExample, losses
    from torch.utils.data import DataLoader

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    st = build_st(args.model, args.max_length, args.pooling)
    a, b, s = read_sts(Path(args.train))
    examples = [InputExample(texts=[x, y], label=z / 5.0) for x, y, z in zip(a, b, s, strict=True)]
    loader = DataLoader(examples, shuffle=True, batch_size=args.batch_size)
    total = len(loader) * args.epochs
    warmup = int(args.warmup * total) if args.warmup < 1 else int(args.warmup)
    t0 = time.perf_counter()
    st.old_fit(train_objectives=[(loader, losses.CosineSimilarityLoss(st))], epochs=args.epochs,
               warmup_steps=warmup, optimizer_params={"lr": args.lr}, weight_decay=0.01, max_grad_norm=1.0,
               show_progress_bar=False)
    train_s = time.perf_counter() - t0
    st.save(args.out)
    print(json.dumps({"train_s": train_s, "steps": total, "warmup_steps": warmup}))


def timed_json_run(cmd: list[str], tool: str) -> tuple[dict, float]:
    """Run ``cmd``; (the JSON object on its last stdout line, wall seconds). Exit with its stderr if it fails."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{tool} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1]), wall


def run_bertcli(args, out: str) -> dict:
    cmd = [sys.executable, "-m", "bertcli", "finetune", "--task", "sentence-embedding", "--loss", "cosine",
           "--label-scale", "5", "--pooling", args.pooling, "--model", args.model, "--train", args.train,
           "--dev", args.dev, "--delimiter", "tab", "--no-header", "--no-quoting", "--text-column", "5",
           "--text-pair-column", "6", "--label-column", "4", "--epochs", str(args.epochs), "--batch-size",
           str(args.batch_size), "--lr", str(args.lr), "--warmup", str(args.warmup), "--weight-decay", "0.01",
           "--max-length", str(args.max_length), "--seed", str(args.seed), "--device", "cpu", "--precision",
           args.precision, "--out", out, "--json", "--quiet"]
    summary, wall = timed_json_run(cmd, "bertcli")
    return {"wall_s": wall, "train_s": summary["time_s"], "steps": summary["steps"],
            "dev_spearman_bertcli": summary["final_metrics"]["spearman"]}


def run_st(args, out: str) -> dict:
    cmd = [sys.executable, __file__, "--_st-worker", "--model", args.model, "--train", args.train,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
           "--warmup", str(args.warmup), "--max-length", str(args.max_length), "--seed", str(args.seed),
           "--pooling", args.pooling, "--out", out]
    info, wall = timed_json_run(cmd, "sentence-transformers")
    return {"wall_s": wall, "train_s": info["train_s"], "steps": info["steps"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="initial weights (checkpoint directory)")
    p.add_argument("--train", default=str(STSB / "sts-train.csv"))
    p.add_argument("--dev", default=str(STSB / "sts-dev.csv"))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--warmup", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--precision", default="fp32", help="bertcli --precision (sentence-transformers runs fp32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", help="where the trained models go (default: a temporary directory)")
    p.add_argument("--_st-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._st_worker:
        st_worker(args)
        return

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-sbert-"))
    root.mkdir(parents=True, exist_ok=True)
    before = st_spearman(args.model, Path(args.dev), args.max_length, args.pooling)
    rows = []
    for rep in range(args.reps):
        order = ("bertcli", "sentence-transformers") if rep % 2 == 0 else ("sentence-transformers", "bertcli")
        for tool in order:
            out = str(root / f"{tool}-{rep}")
            r = run_bertcli(args, out) if tool == "bertcli" else run_st(args, out)
            r["tool"], r["rep"] = tool, rep
            r["dev_spearman"] = st_spearman(out, Path(args.dev), args.max_length)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)

    print(f"\nmodel: {args.model}  |  epochs {args.epochs}, batch {args.batch_size}, lr {args.lr:g}, warmup "
          f"{args.warmup:g}, max length {args.max_length}, pooling {args.pooling}, seed {args.seed}, "
          f"bertcli precision {args.precision}  |  torch threads {_threads()}\n")
    print(f"STS-B dev Spearman before training: {100 * before:.2f}\n")
    print("| tool | rep | steps | train s | wall s | dev Spearman (ST encode) | dev Spearman (bertcli eval) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        own = f"{100 * r['dev_spearman_bertcli']:.2f}" if "dev_spearman_bertcli" in r else "-"
        print(f"| {r['tool']} | {r['rep']} | {r['steps']} | {r['train_s']:.1f} | {r['wall_s']:.1f} | "
              f"{100 * r['dev_spearman']:.2f} | {own} |")
    by = {t: [r for r in rows if r["tool"] == t] for t in ("bertcli", "sentence-transformers")}
    mean = {t: sum(r["dev_spearman"] for r in v) / len(v) for t, v in by.items()}
    speed = {t: sum(r["train_s"] for r in v) / len(v) for t, v in by.items()}
    diff = 100 * (mean["bertcli"] - mean["sentence-transformers"])
    print(f"\nSpearman difference (bertcli - sentence-transformers): {diff:+.2f} points "
          f"({'within' if abs(diff) <= 0.5 else 'NOT within'} 0.5)")
    print(f"training time ratio (sentence-transformers / bertcli): {speed['sentence-transformers'] / speed['bertcli']:.2f}x")
    print(f"models in {root}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
