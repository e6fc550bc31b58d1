"""bertcli tokenize: show how a tokenizer splits text."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import JsonOpt, cli_command, console, emit_json, err_console

NAME = "tokenize"
ORDER = 10
EPILOG = """[bold]Examples[/]

  bertcli tokenize --model runs/vocab "Hello, world!"

  bertcli tokenize --model runs/vocab "A question?" --pair "A context." --json

  cat texts.txt | bertcli tokenize --model runs/vocab --input - --json
"""


@cli_command
def command(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to tokenize.", show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Checkpoint or tokenizer (train-vocab) directory.")] = ...,
    pair: Annotated[str | None, typer.Option("--pair", help="Second segment, paired with every text.")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="File with one text per line, or - for stdin.")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Truncate to N tokens (default: the model's max positions).")] = None,
    encoding: Annotated[str, typer.Option("--encoding", help="Encoding of --input: utf-8, latin-1, auto, ...")] = "utf-8",
    json_out: JsonOpt = False,
) -> None:
    """Show tokens, ids, segment ids and character offsets for each text."""
    from bertcli.checkpoint import load_checkpoint
    from bertcli.data.text import read_lines
    from bertcli.errors import DataError
    from bertcli.hub import resolve_model
    from bertcli.tokenizer import Tokenizer, check_max_length, check_vocab

    path = resolve_model(model)  # a directory, or a name in the Hugging Face cache
    tok = Tokenizer.load(path)
    max_positions = tok.model_max_length
    if (path / "config.json").is_file():  # a model checkpoint: its ids must fit its embeddings
        config = load_checkpoint(path, weights=False).config
        check_vocab(tok, config.vocab_size, str(path))
        max_positions = config.max_positions
    limit = check_max_length(max_length, max_positions) if max_length is not None else max_positions

    items = list(texts or [])
    if input is not None:
        items.extend(read_lines(input, encoding))
    if not items:
        raise DataError("no input: give texts as arguments or --input FILE (- for stdin)")
    encs = tok.encode_batch(items, [pair] * len(items) if pair is not None else None, max_length=limit)
    truncated = sum(e.truncated for e in encs)
    for text, e in zip(items, encs, strict=True):
        if json_out:
            emit_json({
                "text": text, "pair": pair, "tokens": e.tokens, "ids": e.ids, "type_ids": e.type_ids,
                "attention_mask": [1] * len(e.ids), "offsets": [list(o) for o in e.offsets],
                "truncated": e.truncated,
            })
            continue
        from rich.table import Table
        from rich.text import Text

        title = (text if len(text) <= 80 else text[:77] + "...") or "(empty text)"
        table = Table(title=Text(title), title_justify="left")  # Text: user input is never markup
        for col in ("#", "token", "id", "segment", "offsets"):
            table.add_column(col, justify="right" if col in ("#", "id", "segment") else "left")
        for i, (t, tid, seg, off) in enumerate(zip(e.tokens, e.ids, e.type_ids, e.offsets, strict=True)):
            style = "cyan" if tid in tok.special_ids else ("yellow" if not tok.starts_word(t) else None)
            table.add_row(str(i), Text(t), str(tid), str(seg), f"{off[0]}-{off[1]}", style=style)
        console.print(table)
    if not json_out or truncated:
        err_console.print(
            f"{len(items)} input(s), {sum(len(e.ids) for e in encs)} tokens; "
            f"{truncated} truncated to {limit} tokens"
        )
