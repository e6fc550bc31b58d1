#!/usr/bin/env bash
# Quality evidence for `bertcli pretrain`: pretrain the `mini` preset on ../shared/data/corpus for a
# fixed CPU budget, report held-out MLM accuracy and perplexity, then fine-tune it and the same
# architecture from random initialisation on SST-2 subsets (1,000 and 8,000 rows) with the same options,
# over three seeds (SEEDS, ROWS override), and compare.
#
#   bash benchmarks/pretrain_quality.sh [WORKDIR] [PRETRAIN_SECONDS]
#
# Set PRETRAINED=DIR to skip pretraining and use an existing run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/pretrain-quality}
BUDGET=${2:-1260}
DATA=../shared/data
mkdir -p "$W"

if [ -z "${PRETRAINED:-}" ]; then
    bertcli train-vocab "$DATA/corpus" --out "$W/vocab" --vocab-size 16000 --encoding auto --force
    bertcli pretrain "$DATA/corpus" --tokenizer "$W/vocab" --preset mini --objective mlm --encoding auto \
        --max-seq-length 128 --batch-size 32 --lr 1e-3 --max-steps 1650 --max-time "$BUDGET" --eval-every 275 --seed 0 \
        --out "$W/mini" --json > "$W/pretrain.json"
    PRETRAINED="$W/mini"
fi
SEEDS=${SEEDS:-0 1 2}
ROWS=${ROWS:-1000 8000}

# SST-2: a seeded shuffle; 2,000 held-out rows, then the first N of the rest for training
python - "$DATA/sst2/train.tsv" "$W" $ROWS <<'PY'
import random, sys
rows = open(sys.argv[1], encoding="utf-8").read().splitlines()
header, rows = rows[0], rows[1:]
random.Random(0).shuffle(rows)
parts = {"dev": rows[:2000], **{f"train{n}": rows[2000:2000 + int(n)] for n in sys.argv[3:]}}
for name, part in parts.items():
    with open(f"{sys.argv[2]}/sst2-{name}.tsv", "w", encoding="utf-8") as fh:
        fh.write("\n".join([header, *part]) + "\n")
PY
# the same options for both initialisations; the seed changes the head, the data order, the dropout
# (and the random initialisation)
for seed in $SEEDS; do
    bertcli init --preset mini --tokenizer "$PRETRAINED" --nsp --seed "$seed" --out "$W/random-$seed" --force
    for n in $ROWS; do
        for init in pretrained random; do
            src=$PRETRAINED; [ "$init" = random ] && src="$W/random-$seed"
            bertcli finetune --model "$src" --train "$W/sst2-train$n.tsv" --dev "$W/sst2-dev.tsv" --no-quoting \
                --text-column sentence --label-column label --epochs 3 --lr 1e-4 --batch-size 32 --max-length 64 \
                --seed "$seed" --out "$W/sst2-$n-$init-$seed" --quiet --json > "$W/sst2-$n-$init-$seed.json"
        done
    done
done
python - "$W" "$SEEDS" "$ROWS" <<'PY'
import json, statistics, sys
w, seeds, rows = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| training rows | initial weights | dev accuracy per seed | mean | macro-F1 (mean) |")
print("|---|---|---|---|---|")
for n in rows:
    for init in ("pretrained", "random"):
        runs = [json.load(open(f"{w}/sst2-{n}-{init}-{s}.json")) for s in seeds]
        acc = [r["best_value"] for r in runs]
        f1 = [r["final_metrics"]["macro_f1"] for r in runs]
        name = "bertcli-pretrained mini" if init == "pretrained" else "random init (bertcli init, same shape)"
        print(f"| {int(n):,} | {name} | {' / '.join(f'{a:.4f}' for a in acc)} | **{statistics.mean(acc):.4f}** | "
              f"{statistics.mean(f1):.4f} |")
PY
