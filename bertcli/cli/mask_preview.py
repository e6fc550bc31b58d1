"""bertcli mask-preview: show what MLM masking does to a text with a seed."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import EncodingOpt, JsonOpt, SeedOpt, cli_command, console, emit_json, err_console

NAME = "mask-preview"
ORDER = 12
EPILOG = """[bold]Examples[/]

  bertcli mask-preview --model runs/vocab "The quick brown fox jumps over the lazy dog."

  bertcli mask-preview --model runs/vocab --whole-word --seed 3 "Tokenization of unbelievable words"

  bertcli mask-preview --model runs/vocab --input examples/corpus/stories.txt --stats

  bertcli mask-preview --model runs/tiny --input texts.txt --json > masks.jsonl

Texts are masked in batches of --batch-size, padded to the longest, by bertcli.masking.mask_tokens (the function pretraining calls) with one torch.Generator seeded with --seed.
"""

STYLES = {
    "masked": "bold white on red",
    "random": "bold black on yellow",
    "kept": "bold black on green",
    "not selected": "",
    "special": "dim cyan",
}


def _legend(mask_token: str):
    from rich.text import Text

    t = Text("legend: ")
    for label, name in ((mask_token, "masked"), ("original->random", "random"), ("kept", "kept"),
                        ("not selected", "not selected"), ("special", "special")):
        t.append(label, style=STYLES[name])
        t.append("  ")
    return t


@cli_command
def command(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to mask.", show_default=False)] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Checkpoint or tokenizer (train-vocab) directory.")] = ...,
    input: Annotated[str | None, typer.Option("--input", "-i",
                                              help="File with one text per line (blank lines skipped), - for stdin.")] = None,
    seed: SeedOpt = 0,
    mask_prob: Annotated[float, typer.Option("--mask-prob", help="Fraction of tokens (words with --whole-word) selected.")] = 0.15,
    whole_word: Annotated[bool, typer.Option("--whole-word", help="Select whole words (a token and the pieces that continue it: ##, or no \u0120 / \u2581 before them).")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Only report realised rates against the expected ones.")] = False,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Truncate to N tokens (default: the model's max positions).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Texts per masking batch.")] = 32,
    encoding: EncodingOpt = "utf-8",
    json_out: JsonOpt = False,
) -> None:
    """Show exactly which tokens MLM masking selects and what it replaces them with."""
    from bertcli.config import read_json
    from bertcli.data.text import read_lines
    from bertcli.errors import DataError, TokenizerError
    from bertcli.hub import resolve_model
    from bertcli.masking import preview, preview_stats
    from bertcli.tokenizer import Tokenizer, check_max_length

    path = resolve_model(model)  # a directory, or a name in the Hugging Face cache
    tok = Tokenizer.load(path)
    max_positions = tok.model_max_length
    vocab_size = None  # a checkpoint: random tokens come from its embedding rows, as in pretraining
    if (path / "config.json").is_file():
        cfg = read_json(path / "config.json", TokenizerError)
        max_positions = int(cfg.get("max_position_embeddings", 512))
        vocab_size = int(cfg.get("vocab_size", tok.vocab_size))
    limit = check_max_length(max_length, max_positions) if max_length is not None else max_positions

    items = list(texts or [])
    if input is not None:
        items.extend(line for line in read_lines(input, encoding) if line.strip())
    if not items:
        raise DataError("no input: give texts as arguments or --input FILE (- for stdin)")

    rows, counts = preview(tok, items, seed=seed, mask_prob=mask_prob, whole_word=whole_word, max_length=limit,
                           batch_size=batch_size, keep_rows=not stats, vocab_size=vocab_size)
    if stats:
        table_rows = preview_stats(counts, mask_prob, whole_word=whole_word)
        if json_out:
            emit_json({"texts": counts.texts, "eligible_tokens": counts.eligible, "truncated": counts.truncated,
                       "seed": seed, "mask_prob": mask_prob, "whole_word": whole_word, "rates": table_rows})
            return
        from rich.table import Table

        table = Table(title=f"masking {counts.texts:,} text(s), {counts.eligible:,} maskable tokens, seed {seed}"
                            + (", whole words" if whole_word else ""), title_justify="left")
        for col in ("", "count", "of", "realised", "expected", "z"):
            table.add_column(col, justify="left" if not col else "right")
        for r in table_rows:
            z = "-" if r["z"] is None else f"{r['z']:+.2f}"
            table.add_row(r["what"], f"{r['count']:,}", f"{r['of']:,}", f"{r['realised']:.4f}",
                          f"{r['expected']:.4f}", z, style="red" if r["z"] is not None and abs(r["z"]) > 5 else None)
        console.print(table)
        err_console.print("z: binomial z-score of the realised count; |z| > 5 would point at a bug")
        if counts.truncated:
            err_console.print(f"{counts.truncated} text(s) truncated to {limit} tokens")
        return

    if json_out:
        for r in rows:
            emit_json({"text": r.text, "tokens": r.tokens, "ids": r.ids, "masked_ids": r.masked_ids,
                       "masked_tokens": r.masked_tokens, "labels": r.labels, "outcome": r.outcome,
                       "truncated": r.truncated, "seed": seed})
        return
    from rich.text import Text

    console.print(_legend(tok.special_tokens["mask"]))
    for r in rows:
        line = Text()
        for tok_s, new_s, what in zip(r.tokens, r.masked_tokens, r.outcome, strict=True):
            if line:
                line.append(" ")
            if what == "random":
                line.append(f"{tok_s}->{new_s}", style=STYLES[what])
            else:
                line.append(new_s if what == "masked" else tok_s, style=STYLES[what])
        console.print(line)
    n = sum(len(r.ids) for r in rows)
    sel = counts.selected
    err_console.print(f"{counts.texts} text(s), {n} tokens, {sel} selected ({counts.masked} {tok.special_tokens['mask']}, "
                      f"{counts.random} random, {counts.kept} kept); seed {seed}"
                      + (f"; {counts.truncated} truncated to {limit} tokens" if counts.truncated else ""))
