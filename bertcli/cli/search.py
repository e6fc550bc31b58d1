"""bertcli search: the nearest documents of an index for each query."""

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
    console,
    emit_json,
    err_console,
)

NAME = "search"
ORDER = 63
EPILOG = """[bold]Examples[/]

  bertcli search --index idx "how do I reset my password?"

  bertcli search --index idx --queries queries.jsonl --top-k 100 --json > run.jsonl

  bertcli search --index idx "how do vaccines work" --rerank runs/cross --rerank-top 100 --top-k 10  [dim](cross-encoder rescoring)[/]

The model, pooling and query prefix come from the index's manifest (--model must name the same model).
Scores are cosine similarities; exact search by default.
"""

IndexOpt = Annotated[str, typer.Option("--index", help="Index directory (from bertcli index).")]
QueriesOpt = Annotated[str | None, typer.Option("--queries", help="Queries file: BEIR queries.jsonl, a CSV/TSV/JSONL table, or one query per line.")]
QueryIdColumnOpt = Annotated[str | None, typer.Option("--query-id-column", help="Column of --queries with the query id (default: _id, id, query-id or qid).")]
QueryTextColumnOpt = Annotated[str | None, typer.Option("--query-text-column", help="Column of --queries with the query text (default: text, query or question).")]
AnnOpt = Annotated[str | None, typer.Option("--ann", help="hnsw | ivf: approximate search with FAISS (pip install 'bertcli\\[ann]'), built once and cached in the index.", rich_help_panel="Approximate search")]
IndexModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Query encoder (default: the index's model; another model is an error).")]
RerankOpt = Annotated[str | None, typer.Option("--rerank", help="Cross-encoder that rescores the first-stage results (see bertcli rerank).", show_default=False, rich_help_panel="Reranking")]
RerankTopOpt = Annotated[int, typer.Option("--rerank-top", help="With --rerank: first-stage documents rescored per query; the rest follow in first-stage order.", rich_help_panel="Reranking")]


def read_queries(texts, queries, id_column, text_column) -> dict[str, str]:
    from bertcli.errors import DataError
    from bertcli.retrieval.beir import load_queries

    if texts and queries:
        raise DataError("give queries as arguments or --queries FILE, not both")
    if queries:
        return load_queries(queries, id_column=id_column, text_column=text_column)
    if not texts:
        raise DataError("no queries: give them as arguments or --queries FILE")
    return {str(i): t for i, t in enumerate(texts, 1)}


@cli_command
def command(
    texts: Annotated[list[str] | None, typer.Argument(help="Query texts.", show_default=False)] = None,
    index: IndexOpt = ...,
    queries: QueriesOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Documents returned per query.")] = 10,
    model: IndexModelOpt = None,
    query_id_column: QueryIdColumnOpt = None,
    query_text_column: QueryTextColumnOpt = None,
    batch_tokens: BatchTokensOpt = None,
    rerank: RerankOpt = None,
    rerank_top: RerankTopOpt = 100,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    ann: AnnOpt = None,
    m: Annotated[int | None, typer.Option("--m", help="--ann hnsw: links per vector (default 32).", rich_help_panel="Approximate search")] = None,
    ef_construction: Annotated[int | None, typer.Option("--ef-construction", help="--ann hnsw: build search width (default 200).", rich_help_panel="Approximate search")] = None,
    ef_search: Annotated[int | None, typer.Option("--ef-search", help="--ann hnsw: query search width (default 128).", rich_help_panel="Approximate search")] = None,
    nlist: Annotated[int | None, typer.Option("--nlist", help="--ann ivf: k-means cells (default 4 x sqrt(N)).", rich_help_panel="Approximate search")] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", help="--ann ivf: cells visited per query (default 16).", rich_help_panel="Approximate search")] = None,
    recall_sample: Annotated[int, typer.Option("--recall-sample", help="--ann: queries (at most) on which recall@10 against exact search is measured and reported; 0: none.", rich_help_panel="Approximate search")] = 100,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find the documents of an index nearest to each query (cosine similarity), optionally reranked."""
    from bertcli.errors import ConfigError
    from bertcli.retrieval.index import open_index
    from bertcli.retrieval.search import encode_queries, rank_vectors

    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    idx = open_index(index)
    options = ann_options(ann, m=m, ef_construction=ef_construction, ef_search=ef_search, nlist=nlist, nprobe=nprobe)
    qs = read_queries(texts, queries, query_id_column, query_text_column)
    cross = load_reranker(rerank, rerank_top, device, precision)  # before the search: errors come first
    depth = max(top_k, rerank_top) if cross else top_k
    qids = list(qs)
    vectors = encode_queries(idx, [qs[q] for q in qids], model=model, device=device, precision=precision,
                             batch_tokens=batch_tokens)
    run = rank_vectors(idx, qids, vectors, depth, ann=ann, ann_options=options, device=device)
    if ann is not None and recall_sample > 0:
        from bertcli.retrieval.ann import ann_recall, resolve

        recall = ann_recall(idx, vectors, ann, top_k=10, sample=recall_sample, **options)
        shown = ", ".join(f"{k}={v}" for k, v in resolve(ann, idx.count, **options).items())
        err_console.print(f"--ann {ann} ({shown}): recall@10 against exact search {recall:.4f} on "
                          f"{min(recall_sample, len(qids))} queries", soft_wrap=True)
    if cross:
        from bertcli.retrieval.rerank import rerank_run

        run = rerank_run(cross, qs, run, idx.text, top=rerank_top, keep_rest=True)
        run = {q: dict(list(hits.items())[:top_k]) for q, hits in run.items()}
    render(idx, qs, run, json_out, quiet)


def load_reranker(rerank: str | None, rerank_top: int, device: str, precision: str):
    """The ``--rerank`` cross-encoder (None without one), ``--rerank-top`` checked."""
    if rerank is None:
        return None
    from bertcli.errors import ConfigError
    from bertcli.retrieval.rerank import load_cross_encoder

    if rerank_top < 1:
        raise ConfigError(f"--rerank-top must be at least 1, got {rerank_top}")
    return load_cross_encoder(rerank, device=device, precision=precision)


def ann_options(ann: str | None, **given) -> dict:
    """The FAISS parameters given for ``ann`` (a parameter of the other kind is an error)."""
    from bertcli.errors import ConfigError

    given = {k: v for k, v in given.items() if v is not None}
    if ann is None:
        if given:
            raise ConfigError(f"--{next(iter(given)).replace('_', '-')} needs --ann hnsw|ivf")
        return {}
    from bertcli.retrieval.ann import resolve

    resolve(ann, 1, **given)  # names the wrong option now
    return given


def render(idx, qs: dict[str, str], run: dict[str, dict[str, float]], json_out: bool, quiet: bool) -> None:
    """JSON lines ``{"query_id", "query", "results": [{"rank", "_id", "score", "title", "text"}]}`` or a table
    per query."""
    for qid, hits in run.items():
        if json_out:
            results = []
            for r, (d, s) in enumerate(hits.items(), 1):
                doc = idx.document(d)
                results.append({"rank": r, "_id": d, "score": s, "title": doc["title"], "text": doc["text"]})
            emit_json({"query_id": qid, "query": qs[qid], "results": results})
            continue
        if quiet:
            continue
        from rich.table import Table

        table = Table(title=f"{qid}: {qs[qid]}", title_justify="left", show_edge=False)
        for col, kw in (("rank", {"justify": "right"}), ("score", {"justify": "right"}), ("id", {}),
                        ("document", {"overflow": "fold"})):
            table.add_column(col, **kw)
        for r, (d, s) in enumerate(hits.items(), 1):
            text = idx.text(d)
            table.add_row(str(r), f"{s:.4f}", d, text if len(text) <= 200 else text[:197] + "...")
        console.print(table)
