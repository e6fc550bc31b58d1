"""bertcli evaluate-retrieval: nDCG@10, MRR@10, MAP@100, recall and precision of an index on judged queries."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import (
    BatchTokensOpt,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    cli_command,
    console,
    emit_json,
)
from bertcli.cli.search import (
    IndexModelOpt,
    IndexOpt,
    QueryIdColumnOpt,
    QueryTextColumnOpt,
    RerankOpt,
    RerankTopOpt,
    load_reranker,
)

NAME = "evaluate-retrieval"
ORDER = 64
EPILOG = """[bold]Examples[/]

  bertcli evaluate-retrieval --index idx --queries beir/scifact/queries.jsonl --qrels beir/scifact/qrels/test.tsv

  bertcli evaluate-retrieval --index idx --queries q.jsonl --qrels qrels.tsv --json  [dim](per query too)[/]

  bertcli evaluate-retrieval --index idx --queries q.jsonl --qrels qrels.tsv --rerank runs/cross --rerank-top 100

Metrics as sentence-transformers' InformationRetrievalEvaluator defines them (BEIR's for binary
judgements): ties ranked by document id; unjudged documents are not relevant; queries without a
relevant document are left out.
"""

SHOWN = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100", "precision@1", "precision@10")


@cli_command
def command(
    index: IndexOpt = ...,
    queries: Annotated[str, typer.Option("--queries", help="Queries file: BEIR queries.jsonl or a CSV/TSV/JSONL table.")] = ...,
    qrels: Annotated[str, typer.Option("--qrels", help="Relevance judgements: BEIR qrels TSV (query-id corpus-id score) or TREC qrels.")] = ...,
    model: IndexModelOpt = None,
    query_id_column: QueryIdColumnOpt = None,
    query_text_column: QueryTextColumnOpt = None,
    batch_tokens: BatchTokensOpt = None,
    rerank: RerankOpt = None,
    rerank_top: RerankTopOpt = 100,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Score retrieval from an index against relevance judgements (BEIR format)."""
    from bertcli.retrieval.beir import load_qrels, load_queries
    from bertcli.retrieval.index import open_index
    from bertcli.retrieval.metrics import K_VALUES, evaluate
    from bertcli.retrieval.search import check_qrels, search

    idx = open_index(index)
    qs = load_queries(queries, id_column=query_id_column, text_column=query_text_column)
    judged = load_qrels(qrels)
    check_qrels(idx, judged, qs, qrels, queries)
    wanted = {q: qs[q] for q in judged}
    cross = load_reranker(rerank, rerank_top, device, precision)
    run = search(idx, wanted, model=model, top_k=max(max(K_VALUES), rerank_top if cross else 0), device=device,
                 precision=precision, batch_tokens=batch_tokens)
    if cross:  # the top --rerank-top rescored; the rest keep their first-stage order below them
        from bertcli.retrieval.rerank import rerank_run

        run = rerank_run(cross, wanted, run, idx.text, top=rerank_top, keep_rest=True)
    result = evaluate(judged, run)
    if json_out:
        emit_json(result)
        return
    from rich.table import Table

    title = f"{index}: {result['queries']} queries" + (f", top {rerank_top} reranked by {rerank}" if cross else "")
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in SHOWN:
        table.add_row(name, f"{result[name]:.4f}")
    console.print(table)
