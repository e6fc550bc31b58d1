#!/usr/bin/env bash
# Install bertcli into .venv and run the main job on the bundled example data (a few minutes on a CPU):
# train a WordPiece vocabulary, pretrain a tiny BERT, ask it to fill a mask, fine-tune it for sentiment,
# predict, embed sentences and score sentence similarity. Everything lands in runs/quickstart/.
# On a machine without an NVIDIA GPU the CPU build of torch is installed first, so pip never pulls a
# multi-GB CUDA build; users with a GPU keep their own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BERTCLI_SKIP_INSTALL:-}" ]; then
    python3 -m venv .venv
    . .venv/bin/activate
    python -m pip install -q --upgrade pip
    if ! command -v nvidia-smi >/dev/null 2>&1 && ! python -c "import torch" >/dev/null 2>&1; then
        python -m pip install -q torch==2.13.0
    fi
    python -m pip install -q -e .
else
    . .venv/bin/activate
fi
OUT=runs/quickstart
rm -rf "$OUT"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "1. Train a 2,000-token WordPiece vocabulary on examples/corpus"
bertcli train-vocab examples/corpus --vocab-size 2000 --out "$OUT/vocab"
bertcli tokenize --model "$OUT/vocab" "The loaf is done when it sounds hollow."
bertcli mask-preview --model "$OUT/vocab" --seed 1 "Knead the dough on a floured table for ten minutes."

step "2. Pretrain a tiny BERT (MLM + NSP) on examples/corpus"
bertcli pretrain examples/corpus --tokenizer "$OUT/vocab" --config examples/configs/tiny.yaml --out "$OUT/pretrained"
bertcli info --model "$OUT/pretrained"
bertcli fill-mask --model "$OUT/pretrained" "Knead the [MASK] on a floured table."

step "3. Fine-tune it for sentiment and predict"
bertcli finetune --config examples/data/sentiment.yaml --model "$OUT/pretrained" --out "$OUT/sentiment"
bertcli predict --model "$OUT/sentiment" examples/data/sentiment_dev.csv --output "$OUT/predictions.csv"
head -n 4 "$OUT/predictions.csv"

step "4. Sentence embeddings and similarity"
bertcli embed --model "$OUT/pretrained" --input examples/data/pairs.csv --column sentence1 --output "$OUT/embeddings.npy"
bertcli similarity --model "$OUT/pretrained" "A man is playing a guitar." "A man plays the guitar."
bertcli similarity --model "$OUT/pretrained" --pairs examples/data/pairs.csv --a-column sentence1 --b-column sentence2 --gold-column score --pooling cls,mean,max

step "Done: everything is in $OUT/"
