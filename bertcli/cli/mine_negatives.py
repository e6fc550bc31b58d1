"""bertcli mine-negatives: (query, positive, hard negative) rows from an index, for MNRL fine-tuning."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import (
    BatchTokensOpt,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    QuietOpt,
    cli_command,
    emit_json,
    err_console,
)
from bertcli.cli.search import IndexModelOpt, IndexOpt, QueryIdColumnOpt, QueryTextColumnOpt

NAME = "mine-negatives"
ORDER = 65
EPILOG = """[bold]Examples[/]

  bertcli mine-negatives --index idx --queries queries.jsonl --qrels qrels/train.tsv --out triples.csv

  bertcli finetune --model MODEL --task sentence-embedding --loss mnrl --train triples.csv --text-column query --text-pair-column positive --negative-column negative --out runs/mnrl

Known positives (relevance > 0) never become negatives; --skip-top N also skips the N best of the
rest (likely unjudged positives).
"""


@cli_command
def command(
    index: IndexOpt = ...,
    queries: Annotated[str, typer.Option("--queries", help="Queries file: BEIR queries.jsonl or a CSV/TSV/JSONL table.")] = ...,
    qrels: Annotated[str, typer.Option("--qrels", help="Relevance judgements (BEIR qrels TSV or TREC); their positives are the rows' positives.")] = ...,
    out: Annotated[str, typer.Option("--out", "-o", help="Output table: .csv, .tsv or .jsonl (columns query, positive, negative, query_id, positive_id, negative_id).")] = ...,
    per_query: Annotated[int, typer.Option("--per-query", help="Hard negatives (rows) per query.")] = 5,
    skip_top: Annotated[int, typer.Option("--skip-top", help="Skip the N best-ranked non-positive documents first.")] = 0,
    model: IndexModelOpt = None,
    query_id_column: QueryIdColumnOpt = None,
    query_text_column: QueryTextColumnOpt = None,
    batch_tokens: BatchTokensOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Mine hard negatives from an index for (query, positive, negative) training rows."""
    from bertcli.data.tables import write_table
    from bertcli.errors import DataError
    from bertcli.paths import check_outputs
    from bertcli.retrieval.beir import load_qrels, load_queries
    from bertcli.retrieval.index import open_index
    from bertcli.retrieval.negatives import COLUMNS, mine_negatives
    from bertcli.retrieval.search import check_qrels

    check_outputs({"--out": out}, {"--index": index, "--queries": queries, "--qrels": qrels})
    if not out.endswith((".csv", ".tsv", ".jsonl")):
        raise DataError(f"--out {out}: use a .csv, .tsv or .jsonl file")
    idx = open_index(index)
    qs = load_queries(queries, id_column=query_id_column, text_column=query_text_column)
    judged = load_qrels(qrels)
    check_qrels(idx, judged, qs, qrels, queries)
    rows = mine_negatives(idx, qs, judged, per_query=per_query, skip_top=skip_top, model=model, device=device,
                          precision=precision, batch_tokens=batch_tokens)
    write_table(out, COLUMNS, rows)
    n_q = len({r["query_id"] for r in rows})
    if json_out:
        emit_json({"out": out, "rows": len(rows), "queries": n_q})
    elif not quiet:
        err_console.print(f"{len(rows)} (query, positive, negative) rows for {n_q} queries -> {out}")
