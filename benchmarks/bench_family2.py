"""The BERT family, part 2: DeBERTa-v3 (and ModernBERT) against transformers, in one interleaved run.

DeBERTa: a fine-tuning step of a DeBERTa-v3-small-shaped sequence classifier (``--deberta-shape``,
random weights: speed only; 256 log buckets, c2p + p2c, shared keys, the relative table layer-normed,
no absolute positions; the 128,100-row vocabulary) written by bertcli and loaded by transformers
``DebertaV2ForSequenceClassification``. Both train on the same batches (``--batch-size`` rows of random
token ids with real lengths from ``--max-length`` / 4 to ``--max-length``, padded to ``--max-length``;
labels 0/1) in the same precision with AdamW. A step is forward + cross-entropy + backward + optimizer
step, in train mode (dropout on); repetitions are interleaved (ours, theirs, theirs, ours, ...) and the
table reports median examples/s and the median per-rep ratio. Before timing, the two models' logits on
one batch (eval mode, fp32) are compared.

    python benchmarks/bench_family2.py --only deberta --precision fp32      # full size
    python benchmarks/bench_family2.py --only deberta --deberta-shape 2,64 --steps 1 --reps 2  # smoke test
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _shape(text: str) -> tuple[int, int]:
    layers, hidden = (int(x) for x in text.split(","))
    return layers, hidden


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved(steps: dict, chunks: list, count, sync) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run each step function over each chunk, alternating the order: items per wall second and items per
    CPU second (process time, all threads: what a loaded machine gave the process) per rep."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    cpu_rates: dict[str, list[float]] = {name: [] for name in steps}
    for rep, chunk in enumerate(chunks):
        order = list(steps.items())
        if rep % 2:
            order.reverse()
        for name, fn in order:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            for item in chunk:
                fn(item)
            sync()
            rates[name].append(count(chunk) / (time.perf_counter() - t0))
            cpu_rates[name].append(count(chunk) / (time.process_time() - c0))
    return rates, cpu_rates


# ------------------------------------------------------------------ DeBERTa
def bench_deberta(a, tmp: Path, device) -> list[str]:
    from transformers import DebertaV2ForSequenceClassification

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.device import autocast
    from bertcli.heads import BertForSequenceClassification
    from bertcli.model import count_parameters

    layers, hidden = a.deberta_shape
    cfg = BertConfig.for_family("deberta-v2", vocab_size=a.deberta_vocab, num_layers=layers, hidden_size=hidden,
                                num_heads=max(1, hidden // 64), intermediate_size=4 * hidden)
    g = torch.Generator().manual_seed(0)
    n_batches = a.steps * a.reps + 1
    T = a.max_length
    batches = []
    for _ in range(n_batches):
        lengths = torch.randint(T // 4, T + 1, (a.batch_size,), generator=g)
        x = torch.randint(5, cfg.vocab_size, (a.batch_size, T), generator=g)
        m = (torch.arange(T)[None, :] < lengths[:, None]).long()
        x = x * m  # pad id 0
        y = torch.randint(0, 2, (a.batch_size,), generator=g)
        batches.append((x.to(device), m.to(device), y.to(device)))

    torch.manual_seed(0)
    ours = BertForSequenceClassification(cfg, 2)
    save_checkpoint(tmp / "deberta", ours.state_dict(), cfg, None, task="classification", hf_extra={"num_labels": 2})
    theirs = DebertaV2ForSequenceClassification.from_pretrained(tmp / "deberta")
    ours.to(device).eval()
    theirs.to(device).eval()
    x, m, _ = batches[-1]
    with torch.no_grad():
        diff = (ours(x, m) - theirs(input_ids=x, attention_mask=m).logits).abs().max().item()
    ours.train()
    theirs.train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-5)

    def step_ours(batch):
        x, m, y = batch
        with autocast(device, a.precision):
            logits = ours(x, m)
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_theirs(batch):
        x, m, y = batch
        with autocast(device, a.precision):
            logits = theirs(input_ids=x, attention_mask=m).logits
        torch.nn.functional.cross_entropy(logits.float(), y).backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)

    step_ours(batches[-1])  # warm-up (allocations, optimizer state)
    step_theirs(batches[-1])
    chunks = [batches[r * a.steps:(r + 1) * a.steps] for r in range(a.reps)]
    rates, cpu_rates = _interleaved({"bertcli": step_ours, "transformers": step_theirs}, chunks,
                                    lambda chunk: sum(int(b[0].shape[0]) for b in chunk), lambda: _sync(device))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [o / t for o, t in zip(rates["bertcli"], rates["transformers"], strict=True)]
    cpu_ratios = [o / t for o, t in zip(cpu_rates["bertcli"], cpu_rates["transformers"], strict=True)]
    return [
        "| fine-tuning step (DebertaV2ForSequenceClassification) | params | batch | precision | device | "
        "bertcli ex/s | transformers ex/s | ratio (wall) | ratio (CPU time) | max logit diff (fp32 eval) |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
        f"| {layers} layers x {hidden}, 256 buckets, c2p+p2c | {count_parameters(ours) / 1e6:.1f}M | "
        f"{a.batch_size} x {T} (real {T // 4}-{T}) | {a.precision} | {device.type} | {med['bertcli']:,.2f} | "
        f"{med['transformers']:,.2f} | **{statistics.median(ratios):.2f}x** (min {min(ratios):.2f}, "
        f"max {max(ratios):.2f}) | {statistics.median(cpu_ratios):.2f}x | {diff:.1e} |",
    ]


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deberta-shape", type=_shape, default=(6, 768), help="layers,hidden (default deberta-v3-small)")
    ap.add_argument("--deberta-vocab", type=int, default=128100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed fine-tuning steps per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", choices=["deberta"], default=None)
    ap.add_argument("--note", default="", help="appended to the header line (e.g. '(loaded)')")
    ap.add_argument("--out", default=None, help="append the markdown tables to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    from bertcli.device import resolve_device

    device = resolve_device(a.device)
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} {a.note}".rstrip(), ""]
    with tempfile.TemporaryDirectory() as tmp:
        if a.only in (None, "deberta"):
            lines += bench_deberta(a, Path(tmp), device) + [""]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
