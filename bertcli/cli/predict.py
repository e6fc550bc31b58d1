"""bertcli predict: label (or score) every row of a table with a fine-tuned model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bertcli.cli._common import (
    DeviceOpt,
    EncodingOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    cli_command,
    emit_json,
    err_console,
)

NAME = "predict"
ORDER = 45
EPILOG = """[bold]Examples[/]

  bertcli predict --model runs/sentiment examples/data/sentiment_dev.csv --output predictions.csv

  bertcli predict --model runs/sentiment reviews.jsonl --text-column body --json

  bertcli predict --model runs/mrpc pairs.tsv --text-column "#1 String" --text-pair-column "#2 String" --output -

  cat texts.csv | bertcli predict --model runs/sentiment - --output out.tsv

Adds [bold]label[/] and one [bold]prob_<label>[/] column per class (classification) or [bold]score[/] (regression) to each input row; an input column of that name is kept and the new one is called predicted_<name>. The text columns default to the ones the model was fine-tuned on. Output CSV cells that begin with = + - @ are escaped against spreadsheet formula injection.
"""


@cli_command
def command(
    input: Annotated[str, typer.Argument(help="CSV, TSV or JSONL file of texts (- for stdin).", show_default=False)],
    model: ModelOpt = ...,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Column with the text (default: the training column).", show_default=False)] = None,
    text_pair_column: Annotated[str | None, typer.Option("--text-pair-column", help="Column with the second text of a pair (default: the training column).", show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Output file (.csv, .tsv, .jsonl) or - for stdout (the input's format).")] = "-",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")] = 64,
    delimiter: Annotated[str | None, typer.Option("--delimiter", help="Input field delimiter (default: by extension).", show_default=False)] = None,
    no_quoting: Annotated[bool | None, typer.Option("--no-quoting/--quoting", help="Treat double quotes as text (default: as in training).", show_default=False)] = None,
    no_header: Annotated[bool | None, typer.Option("--no-header/--header", help="The input has no header row (default: as in training).", show_default=False)] = None,
    long_input: Annotated[str | None, typer.Option("--long-input", help="truncate | window: a long text's prediction pools its overlapping windows' logits (default: as trained, else truncate).", show_default=False)] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="With --long-input window: tokens shared by consecutive windows (default: as trained, else 128).", show_default=False)] = None,
    window_pooling: Annotated[str | None, typer.Option("--window-pooling", help="mean | max of the windows' logits (default: as trained, else mean).", show_default=False)] = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict with a fine-tuned model: labels or scores per table row, entities per text, answers per question."""
    from bertcli.checkpoint import load_checkpoint
    from bertcli.data.tables import write_table
    from bertcli.paths import check_outputs
    from bertcli.predict import predict_table
    from bertcli.tasks import finetune_tasks

    check_outputs({"--output": output}, {"INPUT": input, "--model": model})
    task = load_checkpoint(model, weights=False).bertcli.get("task")
    module = finetune_tasks().get(task or "")
    if module is not None and callable(getattr(module, "predict_command", None)):
        # Tasks whose output is not one row per input row (entities, answers) predict themselves.
        module.predict_command(model=model, input=input, output=output, json_out=json_out, quiet=quiet,
                               text_column=text_column, batch_size=batch_size, delimiter=delimiter,
                               no_quoting=no_quoting, no_header=no_header, encoding=encoding,
                               device=device, precision=precision, emit_json=emit_json, err_console=err_console)
        return

    kwargs = dict(text_column=text_column, text_pair_column=text_pair_column, batch_size=batch_size,
                  device=device, precision=precision, delimiter=delimiter, no_quoting=no_quoting,
                  no_header=no_header, encoding=encoding, long_input=long_input, stride=stride,
                  window_pooling=window_pooling)
    if quiet:
        result = predict_table(model, input, **kwargs)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=err_console, transient=True) as bar:
            job = bar.add_task("predict", total=None)

            def advance(n: int, total: int | None = None) -> None:
                bar.update(job, advance=n, total=total)

            result = predict_table(model, input, progress=advance, **kwargs)
    if json_out:
        for row in result.rows:
            emit_json(row)
    elif output == "-":
        fmt = Path(input).suffix.lower() if input != "-" else ".csv"
        name = "stdout" + (fmt if fmt in (".csv", ".tsv", ".jsonl") else ".csv")
        write_table(name, result.columns, result.rows, stream=sys.stdout)
        sys.stdout.flush()
    else:
        from bertcli.errors import DataError

        try:
            write_table(output, result.columns, result.rows)
        except OSError as exc:
            raise DataError(f"{output}: cannot write the predictions ({exc.strerror})") from None
    if not quiet:
        where = "" if output == "-" or json_out else f" -> {output}"
        err_console.print(
            f"{len(result.rows)} rows predicted{where}; added {', '.join(result.added)}"
            + (f"; {result.truncated} truncated" if result.truncated else "")
            + (f"; {result.windowed} split into windows" if result.windowed else "")
        )
