#!/usr/bin/env bash
# ELECTRA against MLM at equal compute (issue 15): pretrain an ELECTRA discriminator of the `mini` shape
# (4 layers, hidden 256, embeddings 128; generator 0.25 of its width) on ../shared/data/corpus with the
# options of benchmarks/pretrain_quality.sh, for the recorded MLM run's 1,650 steps divided by the measured
# CPU-time ratio of an ELECTRA step to an MLM step (benchmarks/electra_cost.py; STEPS overrides), then
# fine-tune it on SST-2 (1,000 and 8,000 rows, seeds 0 1 2) with exactly the MLM table's options. The
# MLM and random-init rows of BENCHMARKS.md "Pretraining quality" used the same splits and options.
#
#   bash benchmarks/electra_quality.sh [WORKDIR]        # SEEDS="0 1 2" ROWS="1000 8000" STEPS=N LR=3e-4 TEMPERATURE=1
#
# ELECTRA's own pretraining lr: 3e-4 (ELECTRA-Small's 5e-4 at batch 128, scaled by sqrt(32/128) for batch 32).
# At the MLM run's lr 1e-3 the generator learns the unigram distribution within ~50 steps, before the
# discriminator has learnt anything; from then on samples at temperature 1 can be told only by context and
# the discriminator stays at the prior (BENCHMARKS.md, "ELECTRA at the MLM run's budget").
#
# Set PRETRAINED=DIR to skip pretraining. One torch thread per process (OMP_NUM_THREADS=1): on a loaded
# 2-core machine a second thread mostly spins (benchmarks/electra_cost.py: 4.0 vs 0.62 CPU-s per MLM step).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-runs/electra-quality}
DATA=../shared/data
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$W"
VOCAB=${VOCAB:-$W/vocab}  # a tokenizer directory; made here (the MLM run's command) unless it exists
[ -f "$VOCAB/tokenizer.json" ] || \
    bertcli train-vocab "$DATA/corpus" --out "$VOCAB" --vocab-size 16000 --encoding auto --force

if [ -z "${PRETRAINED:-}" ]; then
    if [ -z "${STEPS:-}" ]; then
        python benchmarks/electra_cost.py --corpus "$DATA/corpus" --tokenizer "$VOCAB" --encoding auto \
            --steps 2 --reps 3 > "$W/cost.json"
        STEPS=$(python -c "import json; print(round(1650 / json.load(open('$W/cost.json'))['ratio']))")
    fi
    echo "ELECTRA steps: $STEPS" >&2
    TIMEFORMAT="pretrain CPU seconds: %U user + %S sys, %R wall"
    time bertcli pretrain "$DATA/corpus" --tokenizer "$VOCAB" --preset mini --objective electra --encoding auto \
        --max-seq-length 128 --batch-size 32 --lr "${LR:-3e-4}" --max-steps "$STEPS" --eval-every $((STEPS / 5)) --seed 0 \
        --generator-size 0.25 --rtd-weight 50 --generator-temperature "${TEMPERATURE:-1}" --out "$W/electra" --resume auto --quiet --json > "$W/pretrain.json"
    PRETRAINED="$W/electra"
fi
SEEDS=${SEEDS:-0 1 2}
ROWS=${ROWS:-1000 8000}

# SST-2: the seeded shuffle of pretrain_quality.sh (2,000 held-out rows, then the first N of the rest)
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
for seed in $SEEDS; do
    for n in $(echo $ROWS | tr ' ' '\n' | sort -rn); do  # 8,000 rows first: the issue's question
        [ -f "$W/sst2-$n-electra-$seed.json" ] && continue
        bertcli finetune --model "$PRETRAINED" --train "$W/sst2-train$n.tsv" --dev "$W/sst2-dev.tsv" --no-quoting \
            --text-column sentence --label-column label --epochs 3 --lr 1e-4 --batch-size 32 --max-length 64 \
            --seed "$seed" --out "$W/sst2-$n-electra-$seed" --quiet --json > "$W/sst2-$n-electra-$seed.json.tmp"
        mv "$W/sst2-$n-electra-$seed.json.tmp" "$W/sst2-$n-electra-$seed.json"
    done
done
python - "$W" "$SEEDS" "$ROWS" <<'PY'
import json, os, statistics, sys
w, seeds, rows = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
print("| training rows | initial weights | dev accuracy per seed | mean | macro-F1 (mean) |")
print("|---|---|---|---|---|")
for n in rows:
    runs = [json.load(open(f"{w}/sst2-{n}-electra-{s}.json")) for s in seeds
            if os.path.exists(f"{w}/sst2-{n}-electra-{s}.json")]
    if not runs:
        continue
    acc = [r["best_value"] for r in runs]
    f1 = [r["final_metrics"]["macro_f1"] for r in runs]
    print(f"| {int(n):,} | ELECTRA-pretrained mini discriminator | {' / '.join(f'{a:.4f}' for a in acc)} | "
          f"**{statistics.mean(acc):.4f}** | {statistics.mean(f1):.4f} |")
PY
