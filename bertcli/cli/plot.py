"""bertcli plot: the curves of one or more training runs in one PNG."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import JsonOpt, cli_command, emit_json, err_console

NAME = "plot"
ORDER = 45
EPILOG = """[bold]Examples[/]

  bertcli plot runs/mrpc --out mrpc.png

  bertcli plot runs/mrpc5/seed-0 runs/mrpc5/seed-1 runs/mrpc5/seed-2 --out seeds.png --metric accuracy

  bertcli plot runs/bert runs/roberta --out families.png --metric train_loss --metric mlm_accuracy

Every training run also writes RUN/curves.png when it ends. Panels: train_loss, lr and each dev
metric of metrics.jsonl, against optimizer steps; one line per run; a star marks each run's best point.
"""


@cli_command
def command(
    runs: Annotated[list[str], typer.Argument(help="Run directories (pretrain or finetune --out) or metrics.jsonl files.", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="The PNG to write.", show_default=False)] = ...,
    metric: Annotated[list[str] | None, typer.Option("--metric", help="Panels to draw (repeat, or comma-separated): train_loss, lr or a dev metric name (default: all).", show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="A name per run for the legend (repeat, in order; default: the directory names).", show_default=False)] = None,
    title: Annotated[str | None, typer.Option("--title", help="A title above the panels.", show_default=False)] = None,
    json_out: JsonOpt = False,
) -> None:
    """Plot training loss, learning rate and dev metrics against steps for one or more runs (overlaid)."""
    from bertcli.curves import plot_runs
    from bertcli.errors import ConfigError
    from bertcli.paths import check_outputs

    check_outputs({"--out": out}, {"RUN": runs})
    metrics = [m.strip() for item in (metric or []) for m in item.split(",") if m.strip()] or None
    if label and len(label) != len(runs):
        raise ConfigError(f"--label given {len(label)} time(s) for {len(runs)} run(s); give one per run or none")
    result = plot_runs(runs, out, metrics=metrics, names=label, title=title)
    if json_out:
        emit_json(result)
    else:
        err_console.print(f"{result['out']}: {len(result['runs'])} run(s), panels {', '.join(result['panels'])}")
