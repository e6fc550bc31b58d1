"""bertcli similarity: cosine similarity of two texts or of every pair in a file."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bertcli.cli._common import (
    BatchTokensOpt,
    ChunkSizeOpt,
    DeviceOpt,
    EncodingOpt,
    InferencePrecisionOpt,
    JsonOpt,
    ModelOpt,
    QuietOpt,
    cli_command,
    console,
    emit_json,
    err_console,
    table_file_options,
)

DelimiterOpt, NoQuotingOpt, NoHeaderOpt = table_file_options("--pairs")

NAME = "similarity"
ORDER = 61
EPILOG = """[bold]Examples[/]

  bertcli similarity --model MODEL "A man is playing a guitar." "A man plays the guitar."

  bertcli similarity --model MODEL --pairs pairs.csv --a-column s1 --b-column s2 --output scored.csv

  STS-B (tab-separated, no header, bare quotes), scored against the gold column, three poolings:

  bertcli similarity --model MODEL --pairs sts-dev.csv --no-header --no-quoting --a-column 5 --b-column 6 --gold-column 4 --pooling cls,mean,max
"""


def parse_poolings(spec: str | None) -> list[str] | None:
    from bertcli.embed import check_pooling

    if spec is None:
        return None
    out = [check_pooling(p.strip()) for p in spec.split(",") if p.strip()]
    if not out:
        from bertcli.errors import ConfigError

        raise ConfigError("--pooling: give one or more of cls, mean, max separated by commas")
    return list(dict.fromkeys(out))


def parse_gold(table, column: str) -> list[float]:
    import math

    from bertcli.errors import DataError

    values = table.column(column, numbers=True)
    out = []
    for v, line in zip(values, table.lines, strict=True):
        try:
            x = float(v)
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            raise DataError(f"{table.path}, line {line}: gold score {v!r} in column '{column}' is not a number")
        out.append(x)
    return out


@cli_command
def command(
    texts: Annotated[list[str] | None, typer.Argument(help="Two texts to compare.", show_default=False)] = None,
    model: ModelOpt = ...,
    pairs: Annotated[str | None, typer.Option("--pairs", help="CSV/TSV/JSONL file of text pairs (- for stdin).")] = None,
    a_column: Annotated[str | None, typer.Option("--a-column", help="Column of --pairs with the first texts.")] = None,
    b_column: Annotated[str | None, typer.Option("--b-column", help="Column of --pairs with the second texts.")] = None,
    gold_column: Annotated[str | None, typer.Option("--gold-column", help="Column of gold scores: report Pearson and Spearman.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="Write every pair with its score(s): FILE.csv/.tsv/.jsonl, or - for JSON lines on stdout.")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls|mean|max, or several separated by commas to compare them (one encoder pass).")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Truncate texts to N tokens (default: the checkpoint's).")] = None,
    batch_tokens: BatchTokensOpt = None,
    chunk_size: ChunkSizeOpt = None,
    delimiter: DelimiterOpt = None,
    no_quoting: NoQuotingOpt = False,
    no_header: NoHeaderOpt = False,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: InferencePrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Cosine similarity of two texts, or of every pair in a file (with Pearson/Spearman against gold scores)."""
    from bertcli.errors import DataError
    from bertcli.paths import check_outputs

    check_outputs({"--output": output}, {"--pairs": pairs, "--model": model})
    poolings = parse_poolings(pooling)
    if pairs is None:
        for name, value in (("--a-column", a_column), ("--b-column", b_column), ("--gold-column", gold_column),
                            ("--output", output)):
            if value is not None:
                raise DataError(f"{name} needs --pairs FILE")
        if not texts or len(texts) != 2:
            raise DataError(f"give exactly two texts to compare (got {len(texts or [])}), or --pairs FILE")
        _two_texts(texts, model, poolings, max_length, batch_tokens, device, precision, json_out)
        return
    if texts:
        raise DataError("give two texts or --pairs FILE, not both")
    if a_column is None or b_column is None:
        raise DataError("--pairs needs --a-column and --b-column (names, or 0-based indexes with --no-header)")
    _pairs(model, pairs, a_column, b_column, gold_column, output, poolings, max_length, batch_tokens, chunk_size,
           delimiter, not no_quoting, not no_header, encoding, device, precision, json_out, quiet)


def _two_texts(texts, model, poolings, max_length, batch_tokens, device, precision, json_out):
    from bertcli.embed import load, score_pairs

    enc = load(model, device=device, precision=precision)
    res = score_pairs([texts[0]], [texts[1]], enc, poolings=poolings, max_length=max_length,
                      batch_tokens=batch_tokens)
    if json_out:
        for p, s in res.scores.items():
            emit_json({"a": texts[0], "b": texts[1], "pooling": p, "cosine": float(s[0])})
    elif len(res.scores) == 1:
        console.print(f"{float(next(iter(res.scores.values()))[0]):.4f}")
    else:
        for p, s in res.scores.items():
            console.print(f"{p}\t{float(s[0]):.4f}")


def _pairs(model, path, a_column, b_column, gold_column, output, poolings, max_length, batch_tokens, chunk_size,
           delimiter, quoting, header, encoding, device, precision, json_out, quiet):
    import numpy as np
    from rich.table import Table as RichTable

    from bertcli.data.tables import TableWriter
    from bertcli.embed import correlations, load, merge_stats, score_pair_chunks
    from bertcli.errors import DataError
    from bertcli.streaming import TableInput, check_chunk_size, progress_bar

    if output not in (None, "-") and not output.lower().endswith((".csv", ".tsv", ".txt", ".jsonl", ".json")):
        raise DataError(f"{output}: unknown output format; use .csv, .tsv, .jsonl, or - for JSON lines on stdout")
    size = check_chunk_size(chunk_size)
    with TableInput(path, delimiter=delimiter, quoting=quoting, header=header, encoding=encoding) as source:
        for name in (a_column, b_column, gold_column):
            if name is not None:
                source.check_column(name)
        if not source.total:
            raise DataError(f"{source.name}: no rows")
        enc = load(model, device=device, precision=precision)
        names = poolings or [enc.pooling]
        col = {p: ("score" if len(names) == 1 else f"score_{p}") for p in names}
        columns = list(source.columns) + [col[p] for p in names]
        writer = TableWriter(output, columns) if output not in (None, "-") else None
        scores: dict[str, list] = {p: [] for p in names}  # gathered per pair: a few bytes each, never the vectors
        gold: list[float] = []
        parts = []
        tables = []

        def pairs():
            for table in source.chunks(size):
                if gold_column is not None:
                    gold.extend(parse_gold(table, gold_column))
                tables.append(table)
                yield table.column(a_column), table.column(b_column)

        try:
            show = not quiet and sys.stderr.isatty() and source.total >= 1000
            with progress_bar("similarity", source.total, enabled=show, unit="pairs") as progress:
                for res in score_pair_chunks(pairs(), enc, poolings=names, total=source.total, progress=progress,
                                             max_length=max_length, batch_tokens=batch_tokens):
                    table = tables.pop(0)
                    parts.append(res.stats)
                    for p in names:
                        scores[p].append(res.scores[p])
                    if output is not None:
                        records = table.records()
                        for i, r in enumerate(records):
                            for p in names:
                                r[col[p]] = round(float(res.scores[p][i]), 6)
                        if writer is None:
                            for r in records:
                                emit_json({c: r.get(c) for c in columns})
                        else:
                            writer.write(records)
            if writer is not None:
                writer.close()
        except OSError as exc:
            if writer is not None:
                writer.abort()
            raise DataError(f"{output}: cannot write ({exc.strerror or exc})") from None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        n_pairs, table_name = source.total, source.name
    all_scores = {p: np.concatenate(v) for p, v in scores.items()}
    corr = {p: correlations(v, gold) for p, v in all_scores.items()} if gold_column is not None else None
    s = merge_stats(parts)
    rows = []
    for p in names:
        row = {"pooling": p, "pairs": n_pairs, "mean_cosine": float(all_scores[p].mean())}
        if corr:
            row.update(corr[p])
        rows.append(row)
    if json_out and output != "-":
        for row in rows:
            emit_json({**row, "texts": s.count, "truncated": s.truncated, "precision": s.precision,
                       "seconds": round(s.seconds, 3)})
        return
    if quiet and output is not None:
        return
    out_console = err_console if output == "-" else console
    t = RichTable(title=f"{table_name}: {n_pairs} pairs, {s.count} distinct texts"
                  + (f" (distinct within each chunk of {size})" if n_pairs > size else ""), title_justify="left")
    t.add_column("pooling")
    t.add_column("mean cosine", justify="right")
    if corr:
        t.add_column("Pearson", justify="right")
        t.add_column("Spearman", justify="right")
    for row in rows:
        cells = [row["pooling"], f"{row['mean_cosine']:.4f}"]
        if corr:
            cells += [f"{row['pearson']:.4f}", f"{row['spearman']:.4f}"]
        t.add_row(*cells)
    out_console.print(t)
    if not quiet:
        err_console.print(
            f"{s.count} texts encoded in {s.seconds:.2f}s ({s.count / max(s.seconds, 1e-9):.0f} texts/s, "
            f"{s.precision} on {s.device}); "
            f"{s.truncated} truncated to {s.max_length} tokens"
            + (f"; scores written to {output}" if output not in (None, "-") else ""),
            soft_wrap=True,
        )
