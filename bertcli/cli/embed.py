"""bertcli embed: sentence embeddings to .npy, .safetensors, .jsonl or stdout."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bertcli.cli._common import (
    BatchTokensOpt,
    ChunkSizeOpt,
    DeviceOpt,
    EncodingOpt,
    JsonOpt,
    ModelOpt,
    PrecisionOpt,
    QuietOpt,
    cli_command,
    emit_json,
    err_console,
    table_file_options,
)

DelimiterOpt, NoQuotingOpt, NoHeaderOpt = table_file_options("--input")

NAME = "embed"
ORDER = 60
EPILOG = """[bold]Examples[/]

  bertcli embed --model MODEL "A man is playing a guitar." "A dog runs."

  bertcli embed --model MODEL --input sentences.txt --output vectors.npy

  bertcli embed --model MODEL --input data.csv --column text --output vectors.safetensors

  cat sentences.txt | bertcli embed --model MODEL - --pooling cls --no-normalize > vectors.jsonl

Empty texts are encoded as [CLS] [SEP] and get an ordinary vector; texts longer than
--max-length tokens are truncated and counted in the summary. Large inputs are read and written
--chunk-size texts at a time (memory stays bounded); the output file appears only when complete.
"""

PROGRESS_MIN = 2000  # show a progress bar from this many texts on


def open_inputs(texts, input, column, delimiter, quoting, header, encoding):
    """A streaming input (bertcli.streaming) over texts given as arguments, stdin (a lone '-'), a text
    file (one per line) or a table column; the rows are counted, nothing is held but the count."""
    from bertcli.errors import DataError
    from bertcli.streaming import ColumnInput, LinesInput, ListInput, TableInput

    items = list(texts or [])
    if items == ["-"]:
        if input is not None:
            raise DataError("give either - (stdin) or --input, not both")
        items, input = [], "-"
    if input is not None:
        if items:
            raise DataError("give texts as arguments or --input FILE, not both")
        if column is not None:
            table = TableInput(input, delimiter=delimiter, quoting=quoting, header=header, encoding=encoding)
            try:
                source = ColumnInput(table, column)
            except BaseException:
                table.close()
                raise
        else:
            source = LinesInput(input, encoding)
    elif column is not None:
        raise DataError("--column needs --input FILE (a CSV, TSV or JSONL file)")
    else:
        source = ListInput(items)
    if not source.total:
        source.close()
        raise DataError("no input: give texts as arguments, --input FILE, or - for stdin")
    return source


@cli_command
def command(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to embed, or - to read one text per line from stdin.",
                                                      show_default=False)] = None,
    model: ModelOpt = ...,
    input: Annotated[str | None, typer.Option("--input", "-i", help="Text file (one text per line), or CSV/TSV/JSONL with --column; - for stdin.")] = None,
    column: Annotated[str | None, typer.Option("--column", "-c", help="Column of --input holding the texts (name, or 0-based index with --no-header).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls|mean|max (default: the checkpoint's, else mean).")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise vectors (default: the checkpoint's, else normalise).", show_default=False)] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="FILE.npy, FILE.safetensors, FILE.jsonl, or - for JSON lines on stdout.")] = "-",
    max_length: Annotated[int | None, typer.Option("--max-length", help="Truncate texts to N tokens (default: the checkpoint's max_seq_length, else max positions).")] = None,
    batch_tokens: BatchTokensOpt = None,
    chunk_size: ChunkSizeOpt = None,
    long_input: Annotated[str, typer.Option("--long-input", help="truncate | window: a text longer than --max-length becomes the mean of its overlapping windows' vectors.")] = "truncate",
    stride: Annotated[int, typer.Option("--stride", help="With --long-input window: tokens shared by consecutive windows.")] = 128,
    delimiter: DelimiterOpt = None,
    no_quoting: NoQuotingOpt = False,
    no_header: NoHeaderOpt = False,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed texts into sentence vectors (rows in input order)."""
    from bertcli.embed import check_output, check_pooling, embed_file, load
    from bertcli.paths import check_outputs
    from bertcli.streaming import check_chunk_size, progress_bar

    check_outputs({"--output": output}, {"--input": input, "--model": model})
    kind = check_output(output)
    if pooling is not None:
        check_pooling(pooling)
    check_chunk_size(chunk_size)
    import os

    from bertcli.cli._dist import distributed

    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and (input == "-" or list(texts or []) == ["-"]):
        from bertcli.errors import DataError

        raise DataError("under torchrun every rank reads the input itself: give --input FILE, not stdin")
    with distributed() as rank, open_inputs(texts, input, column, delimiter, not no_quoting, not no_header,
                                            encoding) as source:
        enc = load(model, device=device, precision=precision)
        show = not quiet and rank == 0 and source.total >= PROGRESS_MIN and sys.stderr.isatty()
        with progress_bar("embedding", source.total, enabled=show, unit="texts") as progress:
            s = embed_file(source, enc, output, pooling=pooling, normalize=normalize, max_length=max_length,
                           batch_tokens=batch_tokens, chunk_size=chunk_size, long_input=long_input, stride=stride, progress=progress,
                           metadata={"model": model})
    if rank != 0:
        return
    summary = {"output": output, **s.to_dict()}
    if json_out and kind != "-":
        emit_json(summary)
    elif not quiet:
        rate = s.count / s.seconds if s.seconds > 0 else float("inf")
        err_console.print(
            f"{s.count} text(s) -> {s.dim}-dim vectors ({s.pooling} pooling, "
            f"{'normalised' if s.normalize else 'not normalised'}, {s.precision} on {s.device}); "
            + (f"{s.windowed} split into windows of" if long_input == "window" else f"{s.truncated} truncated to")
            + f" {s.max_length} tokens; {s.seconds:.2f}s ({rate:.0f} texts/s)"
            + ("" if kind == "-" else f"; written to {output}"),
            soft_wrap=True,
        )
