"""bertcli predict: label (or score) every row of a table with a fine-tuned model."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bertcli.cli._common import (
    ChunkSizeOpt,
    DeviceOpt,
    EncodingOpt,
    InferencePrecisionOpt,
    JsonOpt,
    ModelOpt,
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

Adds [bold]label[/] and one [bold]prob_<label>[/] column per class (classification) or [bold]score[/] (regression) to each input row; an input column of that name is kept and the new one is called predicted_<name>. The text columns default to the ones the model was fine-tuned on. Output CSV cells that begin with = + - @ are escaped against spreadsheet formula injection. Rows are read, predicted and written --chunk-size at a time (memory stays bounded); an output file appears only when complete.
"""


@cli_command
def command(
    input: Annotated[str, typer.Argument(help="CSV, TSV or JSONL file of texts (- for stdin).", show_default=False)],
    model: ModelOpt = ...,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Column with the text (default: the training column).", show_default=False)] = None,
    text_pair_column: Annotated[str | None, typer.Option("--text-pair-column", help="Column with the second text of a pair (default: the training column).", show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="Output file (.csv, .tsv, .jsonl) or - for stdout (the input's format).")] = "-",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per forward pass.")] = 64,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Truncate texts to N tokens, up to the model's max_position_embeddings (classification and regression models; default: the fine-tuned length).", show_default=False)] = None,
    chunk_size: ChunkSizeOpt = None,
    delimiter: Annotated[str | None, typer.Option("--delimiter", help="Input field delimiter (default: by extension).", show_default=False)] = None,
    no_quoting: Annotated[bool | None, typer.Option("--no-quoting/--quoting", help="Treat double quotes as text (default: as in training).", show_default=False)] = None,
    no_header: Annotated[bool | None, typer.Option("--no-header/--header", help="The input has no header row (default: as in training).", show_default=False)] = None,
    long_input: Annotated[str | None, typer.Option("--long-input", help="truncate | window: a long text's prediction pools its overlapping windows' logits (default: as trained, else truncate).", show_default=False)] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="With --long-input window: tokens shared by consecutive windows (default: as trained, else 128).", show_default=False)] = None,
    window_pooling: Annotated[str | None, typer.Option("--window-pooling", help="mean | max of the windows' logits (default: as trained, else mean).", show_default=False)] = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: InferencePrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict with a fine-tuned model: labels or scores per table row, entities per text, answers per question."""
    from bertcli.checkpoint import load_checkpoint
    from bertcli.paths import check_outputs
    from bertcli.tasks import finetune_tasks

    check_outputs({"--output": output}, {"INPUT": input, "--model": model})
    task = load_checkpoint(model, weights=False).bertcli.get("task")
    module = finetune_tasks().get(task or "")
    if module is not None and callable(getattr(module, "predict_command", None)):
        if max_length is not None:
            from bertcli.errors import ConfigError

            raise ConfigError(f"--max-length applies to classification and regression models; {model} is a {task} "
                              "model, which predicts with the windows it was fine-tuned with")
        # Tasks whose output is not one row per input row (entities, answers) predict themselves.
        module.predict_command(model=model, input=input, output=output, json_out=json_out, quiet=quiet,
                               text_column=text_column, batch_size=batch_size, delimiter=delimiter,
                               no_quoting=no_quoting, no_header=no_header, encoding=encoding,
                               device=device, precision=precision, emit_json=emit_json, err_console=err_console,
                               chunk_size=chunk_size)
        return

    from bertcli.data.tables import TableWriter
    from bertcli.errors import DataError
    from bertcli.predict import (
        added_columns,
        configure_windows,
        load_classifier,
        open_input,
        predict_chunks,
        resolve_text_columns,
    )
    from bertcli.streaming import check_chunk_size, progress_bar

    check_chunk_size(chunk_size)
    clf = load_classifier(model, device, precision, max_length)
    configure_windows(clf, long_input, stride, window_pooling)
    rows = truncated = windowed = 0
    started = time.perf_counter()
    with open_input(clf, input, delimiter=delimiter, no_quoting=no_quoting, no_header=no_header,
                    encoding=encoding) as source:
        for name in resolve_text_columns(clf, text_column, text_pair_column):
            if name:
                source.check_column(name)  # before any output, even the header row on stdout
        columns = list(source.columns)
        added = added_columns(clf, columns)
        if json_out or output == "-":
            fmt = Path(input).suffix.lower() if input != "-" else ".csv"
            name = "stdout" + (fmt if fmt in (".csv", ".tsv", ".jsonl") else ".csv")
            writer = None if json_out else TableWriter(name, columns + added, stream=sys.stdout)
        else:
            try:
                writer = TableWriter(output, columns + added)
            except OSError as exc:
                raise DataError(f"{output}: cannot write the predictions ({exc.strerror})") from None
        try:
            with progress_bar("predict", source.total, enabled=not quiet) as progress:
                for part in predict_chunks(clf, source, text_column=text_column, text_pair_column=text_pair_column,
                                           batch_size=batch_size, chunk_size=chunk_size, progress=progress):
                    if writer is None:
                        for row in part.rows:
                            emit_json(row)
                    else:
                        writer.write(part.rows)
                    rows += len(part.rows)
                    truncated += part.truncated
                    windowed += part.windowed
            if writer is not None:
                writer.close()
        except OSError as exc:
            if writer is not None:
                writer.abort()
            raise DataError(f"{output}: cannot write the predictions ({exc.strerror})") from None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    if not quiet:
        where = "" if output == "-" or json_out else f" -> {output}"
        from bertcli.inference import rate

        err_console.print(
            f"{rows} rows predicted{where} ({rate(rows, time.perf_counter() - started, 'rows')}, "
            f"{clf.precision} on {clf.device}); added {', '.join(added)}"
            + (f"; {truncated} truncated" if truncated else "")
            + (f"; {windowed} split into windows" if windowed else ""),
            soft_wrap=True,
        )
