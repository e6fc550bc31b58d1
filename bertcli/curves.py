"""Pictures and event files of training runs: ``curves.png`` and ``--report-to tensorboard``.

Both read what the training loop writes to ``RUN/metrics.jsonl`` (one JSON object a line):

- ``{"step", "epoch", "loss", "lr", "tokens_per_s", "tokens"}``  every ``log_every`` steps,
- ``{"step", "epoch", "eval": {metric: value}}``                  each evaluation,
- ``{"step", "test": {metric: value}}``                           fine-tuning's test split,
- ``{"step", "summary": {...}}``                                  the end of a session (best metric and step).

:func:`plot_runs` draws one panel per series (training loss, learning rate, each dev metric)
against optimizer steps, one line per run, the best point of each run marked; matplotlib with the
Agg backend (no display needed). :class:`TensorBoardReporter` writes the same scalars as
TensorBoard event files under ``RUN/tensorboard`` (the ``tensorboard`` extra).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, DataError

CURVES_NAME = "curves.png"
TENSORBOARD_DIR = "tensorboard"
REPORT_TO = ("none", "tensorboard")
TRAIN_SERIES = ("train_loss", "lr")  # the panel keys of the training records; the rest are dev metrics


# ============================================================ reading metrics.jsonl
@dataclass
class RunCurves:
    """The series of one run: panel key -> (steps, values); the best dev point, if any."""

    name: str
    path: Path
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    best_metric: str | None = None
    best_step: int | None = None
    best_value: float | None = None

    def add(self, key: str, step: int, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return
        steps, values = self.series.setdefault(key, ([], []))
        steps.append(int(step))
        values.append(float(value))


def metrics_file(run: str | Path) -> Path:
    """``RUN/metrics.jsonl`` (``run`` may name the file itself); a DataError when there is none."""
    path = Path(run)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run}: no metrics.jsonl; give a run directory written by bertcli pretrain or finetune")
    return path


def read_records(run: str | Path) -> list[dict]:
    """The JSON objects of a run's ``metrics.jsonl`` (a line that is not one is a located DataError)."""
    path = metrics_file(run)
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {lineno}: not JSON ({exc.msg})") from None
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
    return records


def read_curves(run: str | Path, name: str | None = None) -> RunCurves:
    """The training loss, learning rate and dev metrics of one run, and its best point."""
    path = metrics_file(run)
    curves = RunCurves(name=name or (path.parent.name if Path(run).is_dir() else path.stem), path=path)
    for rec in read_records(path):
        step = rec["step"]
        if "loss" in rec and "lr" in rec:
            curves.add("train_loss", step, rec["loss"])
            curves.add("lr", step, rec["lr"])
        elif isinstance(rec.get("eval"), dict):
            for k, v in rec["eval"].items():
                curves.add(str(k), step, v)
        elif isinstance(rec.get("summary"), dict):
            s = rec["summary"]
            curves.best_metric, curves.best_step, curves.best_value = (
                s.get("best_metric"), s.get("best_step"), s.get("best_value"))
    return curves


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one ``metrics.jsonl`` record (``train/``, ``eval/``, ``test/``)."""
    out: dict[str, float] = {}

    def put(tag: str, value: Any) -> None:
        if not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value):
            out[tag] = float(value)

    if "loss" in record and "lr" in record:
        for k in ("loss", "lr", "tokens_per_s", "tokens"):
            if k in record:
                put(f"train/{k}", record[k])
    for section in ("eval", "test"):
        if isinstance(record.get(section), dict):
            for k, v in record[section].items():
                put(f"{section}/{k}", v)
    return out


# ============================================================ the picture
def _panel_title(key: str) -> str:
    return {"train_loss": "training loss", "lr": "learning rate"}.get(key, f"dev {key}")


def panel_keys(runs: list[RunCurves], metrics: list[str] | None = None) -> list[str]:
    """The panels to draw: training loss, learning rate, then each dev metric (or the chosen ``metrics``)."""
    found: list[str] = []
    for key in TRAIN_SERIES:
        if any(key in r.series for r in runs):
            found.append(key)
    for r in runs:
        for key in r.series:
            if key not in found:
                found.append(key)
    if not metrics:
        return found
    missing = [m for m in metrics if m not in found]
    if missing:
        raise ConfigError(f"--metric {missing[0]}: not in these runs; valid values: {', '.join(found) or '(none)'}")
    return list(dict.fromkeys(metrics))


def build_figure(runs: list[RunCurves], metrics: list[str] | None = None, title: str | None = None):
    """A matplotlib Figure (Agg): one panel per series, one line per run, the best point of each run marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = panel_keys(runs, metrics)
    if not keys:
        raise DataError("nothing to plot: the runs' metrics.jsonl hold no training or evaluation records yet")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows + (0.5 if len(runs) > 1 else 0.0)), dpi=100,
                 layout="constrained")
    FigureCanvasAgg(fig)  # the headless Agg canvas: no display, no pyplot state
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for i, key in enumerate(keys):
        ax = axes[i // cols][i % cols]
        for run, color in zip(runs, colors, strict=True):
            if key not in run.series:
                continue
            steps, values = run.series[key]
            ax.plot(steps, values, color=color, marker="o" if len(steps) <= 30 else None,
                    markersize=3, linewidth=1.4, label=run.name)
            if run.best_step is not None and key == run.best_metric and run.best_step in steps:
                j = steps.index(run.best_step)
                ax.plot([steps[j]], [values[j]], marker="*", markersize=13, color=color, markeredgecolor="black",
                        linestyle="none", label="_best")
                if len(runs) > 1:  # overlaid runs: the stars alone (labels of equal bests would overprint)
                    continue
                right = steps[j] > (steps[0] + steps[-1]) / 2  # the label inside the panel
                ax.annotate(f"best {values[j]:.4g}\nstep {steps[j]}", (steps[j], values[j]), fontsize=7,
                            textcoords="offset points", xytext=(-8 if right else 8, -16),
                            ha="right" if right else "left")
        ax.set_title(_panel_title(key), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if len(runs) > 1:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, label=r.name) for r, c in zip(runs, colors, strict=True)]
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(runs), 6), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_figure(fig, out: str | Path) -> Path:
    """Write ``fig`` as a PNG via a temporary file renamed into place."""
    import os

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the picture is a PNG; give a file name ending in .png")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"--out {out}: cannot write the picture ({exc.strerror})") from None
    return out


def plot_runs(runs: list[str | Path], out: str | Path, metrics: list[str] | None = None,
              names: list[str] | None = None, title: str | None = None) -> dict:
    """Overlay the curves of ``runs`` (run directories or metrics.jsonl files) in one PNG at ``out``.

    Returns ``{"out", "runs", "panels"}``; a run is named by its directory unless ``names`` are given.
    """
    if not runs:
        raise ConfigError("give at least one run directory")
    labels = list(names) if names else _unique_names([Path(r) for r in runs])
    curves = [read_curves(r, name) for r, name in zip(runs, labels, strict=True)]
    fig = build_figure(curves, metrics, title)
    path = save_figure(fig, out)
    return {"out": str(path), "runs": [c.name for c in curves], "panels": panel_keys(curves, metrics)}


def _unique_names(paths: list[Path]) -> list[str]:
    """Run labels: the directory names, with their parents where two share a name."""
    names = [p.name if p.is_dir() else p.parent.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [str(p if p.is_dir() else p.parent) for p in paths]


def write_run_curves(run_dir: str | Path, notice=None) -> Path | None:
    """``RUN/curves.png`` at the end of a training run; a notice and None when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        (notice or (lambda m: sys.stderr.write(m + "\n")))(
            "curves.png skipped: matplotlib is not installed (pip install matplotlib)")
        return None
    run_dir = Path(run_dir)
    curves = read_curves(run_dir, run_dir.name)
    if not curves.series:
        return None
    fig = build_figure([curves], title=str(run_dir.name))
    return save_figure(fig, run_dir / CURVES_NAME)


# ============================================================ TensorBoard
def check_report_to(value: str) -> str:
    if value not in REPORT_TO:
        raise ConfigError(f"--report-to {value!r}: valid values: {', '.join(REPORT_TO)}")
    if value == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("--report-to tensorboard needs the tensorboard package: "
                              "pip install 'bertcli[tensorboard]' (or pip install tensorboard)") from None
    return value


class TensorBoardReporter:
    """Writes the scalars of each ``metrics.jsonl`` record as TensorBoard events under ``RUN/tensorboard``.

    ``purge_step``: on resume, the events at or after this step (written after the checkpoint) are
    dropped by TensorBoard, as the records of ``metrics.jsonl`` are.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def add(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["step"]))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_tensorboard(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the event files under ``RUN/tensorboard`` (what TensorBoard shows)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / TENSORBOARD_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def append_record(run_dir: str | Path, record: dict, report_to: str = "none") -> None:
    """One more ``metrics.jsonl`` record after training (fine-tuning's test metrics), reported alike."""
    with open(Path(run_dir) / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=float) + "\n")
    if report_to == "tensorboard":
        reporter = TensorBoardReporter(run_dir)
        reporter.add(record)
        reporter.close()
