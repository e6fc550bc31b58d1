"""bertcli fill-mask: predict the tokens behind [MASK]."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import DeviceOpt, EncodingOpt, JsonOpt, ModelOpt, cli_command, console, emit_json

NAME = "fill-mask"
ORDER = 45
EPILOG = """[bold]Examples[/]

  bertcli fill-mask --model runs/tiny "The capital of France is [MASK]."

  bertcli fill-mask --model runs/tiny "I [MASK] this [MASK]." --top-k 3 --json

  bertcli fill-mask --model runs/tiny --input sentences.txt --json > predictions.jsonl
"""


@cli_command
def command(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts with one or more [MASK].", show_default=False)] = None,
    model: ModelOpt = ...,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Candidates per [MASK].")] = 5,
    input: Annotated[str | None, typer.Option("--input", "-i", help="File with one text per line, or - for stdin.")] = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Show the top-k tokens and their probabilities for every [MASK] in each text."""
    from bertcli.data.text import read_lines
    from bertcli.errors import DataError
    from bertcli.fill_mask import FillMask

    items = list(texts or [])
    if input is not None:
        items.extend(t for t in read_lines(input, encoding) if t.strip())
    if not items:
        raise DataError("no input: give texts as arguments or --input FILE (- for stdin)")
    fm = FillMask(model, device=device)
    results = fm.predict(items, top_k=top_k)
    for text, masks in zip(items, results, strict=True):
        if json_out:
            emit_json({"text": text, "filled": fm.fill(text, masks), "masks": [
                {"position": m.position, "candidates": [{"token": c.token, "id": c.id, "score": c.score}
                                                        for c in m.candidates]} for m in masks]})
            continue
        from rich.table import Table
        from rich.text import Text

        table = Table(title=Text(text), title_justify="left")  # user text is never rich markup
        table.add_column("mask", justify="right")
        table.add_column("rank", justify="right")
        table.add_column("token")
        table.add_column("probability", justify="right")
        for i, m in enumerate(masks):
            for rank, c in enumerate(m.candidates, 1):
                table.add_row(str(i + 1) if rank == 1 else "", str(rank), Text(c.token), f"{c.score:.4f}",
                              style="bold" if rank == 1 else None)
        console.print(table)
