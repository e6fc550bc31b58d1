"""Random restarts: ``finetune --seeds 0,1,2,3,4`` (or ``--restarts N``), the best seed on dev kept.

BERT fine-tuning on small data sets varies a lot from seed to seed (Devlin et al. ran several
restarts and kept the best on dev). :func:`finetune_restarts` trains one ordinary run per seed::

    OUT/seed-K/          a complete run directory (checkpoints, metrics.jsonl, curves.png);
                         resumable on its own (--resume auto, here or on OUT/seed-K directly)
    OUT/                 the best seed's best checkpoint (config.json, model.safetensors, tokenizer, ...)
    OUT/seeds.json       per seed: dev metric, best step, steps, time; mean, spread, the best seed
    OUT/seeds.md         the same as a Markdown table
    OUT/curves.png       the seeds' curves overlaid

The best seed is the one with the best dev metric (``--metric``); ties go to the earlier seed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, TrainingError

SEEDS_JSON = "seeds.json"
SEEDS_MD = "seeds.md"


def validate_run_options(opts) -> None:
    """The run-control options of ``FinetuneOptions`` (steps, evaluation, restarts, reporting)."""
    from bertcli.curves import REPORT_TO

    if opts.max_steps is not None and opts.max_steps < 1:
        raise ConfigError(f"--max-steps must be at least 1, got {opts.max_steps}")
    for name in ("eval_every", "save_every"):
        if getattr(opts, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(opts, name)}")
    if opts.log_every < 1:
        raise ConfigError(f"--log-every must be at least 1, got {opts.log_every}")
    if opts.report_to not in REPORT_TO:
        raise ConfigError(f"--report-to {opts.report_to!r}: valid values: {', '.join(REPORT_TO)}")
    if opts.seeds is not None or opts.restarts is not None:
        seed_list(opts)  # checks the values
        if not opts.dev:
            raise ConfigError("--seeds / --restarts need --dev: the best seed is chosen on the dev metric")
        if opts.resume not in (None, "auto"):
            raise ConfigError("with --seeds / --restarts, --resume takes 'auto' (each seed resumes from OUT/seed-K)")


def seed_list(opts) -> list[int]:
    """The seeds of ``--seeds 0,1,2`` or ``--restarts N`` (``--seed`` .. ``--seed``+N-1)."""
    if opts.seeds is not None and opts.restarts is not None:
        raise ConfigError("give --seeds or --restarts, not both")
    if opts.restarts is not None:
        if opts.restarts < 1:
            raise ConfigError(f"--restarts must be at least 1, got {opts.restarts}")
        return [opts.seed + i for i in range(opts.restarts)]
    text = str(opts.seeds)
    seeds = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: '{part}' is not an integer; give seeds like 0,1,2,3,4") from None
        if value < 0:
            raise ConfigError(f"--seeds {text!r}: seeds are zero or positive, got {value}")
        seeds.append(value)
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: a seed is repeated")
    return seeds


def seed_dir(out: str | Path, seed: int) -> Path:
    return Path(out) / f"seed-{seed}"


def finetune_restarts(opts, *, log=None) -> dict[str, Any]:
    """One fine-tuning run per seed under ``OUT/seed-K``; the best on dev copied to ``OUT``; the table.

    ``log(message)`` receives one line per seed as it ends. Returns the table (``seeds.json``) with
    the best seed's summary under ``"best"``.
    """
    from bertcli.hub import resolve_model
    from bertcli.locks import run_lock
    from bertcli.tasks.classification import finetune

    opts.validate()
    seeds = seed_list(opts)
    out = Path(opts.out)
    model = str(resolve_model(opts.model, opts.revision)) if opts.revision else opts.model
    rows, summaries = [], {}
    with run_lock(out):
        for seed in seeds:
            child = dataclasses.replace(opts, out=str(seed_dir(out, seed)), seed=seed, seeds=None, restarts=None,
                                        model=model, revision=None)
            summary = finetune(child)
            if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 keeps the table and the best
                continue
            summaries[seed] = summary
            rows.append(_row(seed, child.out, summary))
            if log is not None:
                r = rows[-1]
                log(f"seed {seed}: dev {summary.get('best_metric')} {r['dev']:.4f} at step {r['best_step']} "
                    f"({r['time_s']:.1f} s)")
        if not rows:
            return {"runs": [], "seeds": seeds}
        table = seed_table(rows, opts.best_metric, not opts.lower_is_better)
        best = table["best_seed"]
        _keep_best(out, seed_dir(out, best), summaries[best])
        table["best"] = {k: v for k, v in summaries[best].items() if k not in ("checkpoint",)}
        write_table(out, table)
        _write_overlay(out, seeds)
    return table


def _row(seed: int, run_dir: str, summary: dict) -> dict:
    value = summary.get("best_value")
    if value is None:
        raise TrainingError(f"{run_dir}: the run has no dev metric (no evaluation ran); cannot compare seeds")
    row = {"seed": seed, "dir": str(run_dir), "dev": float(value), "best_step": summary.get("best_step"),
           "steps": summary.get("steps"), "time_s": float(summary.get("time_total_s", summary.get("time_s", 0.0))),
           "status": summary.get("status")}
    if summary.get("test"):
        row["test"] = summary["test"]
    return row


def seed_table(rows: list[dict], metric: str, greater_is_better: bool) -> dict:
    """The per-seed rows with the best seed, mean, standard deviation (n-1), min and max of the dev metric."""
    values = [r["dev"] for r in rows]
    best = rows[0]
    for r in rows[1:]:
        if (r["dev"] > best["dev"]) if greater_is_better else (r["dev"] < best["dev"]):
            best = r
    return {
        "metric": metric, "greater_is_better": greater_is_better, "runs": rows, "best_seed": best["seed"],
        "best_dev": best["dev"], "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values),
        "n": len(values),
    }


def format_markdown(table: dict) -> str:
    metric = table["metric"]
    lines = [f"| seed | dev {metric} | best step | steps | time (s) |", "|---:|---:|---:|---:|---:|"]
    for r in table["runs"]:
        mark = " (best)" if r["seed"] == table["best_seed"] else ""
        lines.append(f"| {r['seed']}{mark} | {r['dev']:.4f} | {r['best_step']} | {r['steps']} | {r['time_s']:.1f} |")
    lines.append("")
    lines.append(f"{table['n']} seeds: mean {table['mean']:.4f}, std {table['std']:.4f}, min {table['min']:.4f}, "
                 f"max {table['max']:.4f}; kept seed {table['best_seed']} (dev {metric} {table['best_dev']:.4f}).")
    return "\n".join(lines) + "\n"


def write_table(out: Path, table: dict) -> None:
    for name, text in ((SEEDS_JSON, json.dumps(table, indent=1, default=float) + "\n"), (SEEDS_MD, format_markdown(table))):
        tmp = out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)


def _keep_best(out: Path, run_dir: Path, summary: dict) -> None:
    """Copy the best seed's best training checkpoint (without trainer state) into ``OUT`` (temp + rename)."""
    from bertcli.train import checkpoint_steps, export_checkpoint

    step = summary.get("best_step")
    found = dict(checkpoint_steps(run_dir))
    if step not in found:
        raise TrainingError(f"{run_dir}: the best checkpoint (step {step}) is missing; rerun with --resume auto")
    export_checkpoint(found[step], out)


def _write_overlay(out: Path, seeds: list[int]) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return  # each seed's run already gave the notice
    from bertcli.curves import CURVES_NAME, plot_runs

    plot_runs([seed_dir(out, s) for s in seeds], out / CURVES_NAME, names=[f"seed {s}" for s in seeds],
              title=f"{out.name}: {len(seeds)} seeds")
