"""bertcli rerank: rescore (query, document) candidates with a cross-encoder."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bertcli.cli._common import (
    BatchTokensOpt,
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

NAME = "rerank"
ORDER = 63.5  # after search (63), before evaluate-retrieval (64)
EPILOG = """[bold]Examples[/]

  bertcli rerank --model cross-encoder/ms-marco-MiniLM-L6-v2 --query "who wrote hamlet" "Hamlet is a tragedy by Shakespeare." "Paris is in France."

  bertcli rerank --model runs/cross --input candidates.jsonl --top-k 10 --json

  cat docs.txt | bertcli rerank --model runs/cross --query "how do vaccines work" -   [dim](documents one per line on stdin)[/]

--model is a cross-encoder: what [bold]bertcli finetune --task cross-encoder[/] writes, any sentence-pair classifier or regressor it makes, or a sentence-transformers CrossEncoder checkpoint. Scores equal CrossEncoder.predict's: a one-output model's logit through its activation (sigmoid unless the checkpoint names another); for a classifier, the softmax probability of the positive class (label 1 of two, or --positive-label).
A candidates file has one JSON object per line: {"qid": "q1", "query": "...", "documents": ["...", {"id": "d7", "title": "...", "text": "..."}]}.
"""


@cli_command
def command(
    documents: Annotated[list[str] | None, typer.Argument(help="Documents to rerank for --query (- reads them from stdin, one per line).", show_default=False)] = None,
    model: ModelOpt = ...,
    query: Annotated[str | None, typer.Option("--query", help="The query the DOCUMENTS are ranked for.", show_default=False)] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="Candidates JSONL file (- for stdin): query, documents (and qid) per line.", show_default=False)] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", "-k", help="Keep the K best documents per query (default: all).", show_default=False)] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per (query, document) pair, truncated longest-first (default: the model's).", show_default=False)] = None,
    positive_label: Annotated[str | None, typer.Option("--positive-label", help="A classifier's label whose probability is the score (default: label 1 of a two-label model).", show_default=False)] = None,
    batch_tokens: BatchTokensOpt = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rerank documents for a query with a cross-encoder (a sentence-pair classifier or CrossEncoder)."""
    from bertcli.errors import ConfigError
    from bertcli.retrieval.rerank import Candidates, load_cross_encoder, read_candidates, rerank_candidates

    docs = list(documents or [])
    if (query is None) == (input is None):
        raise ConfigError("give --query with DOCUMENTS, or --input with a candidates file (not both)")
    if input is not None and docs:
        raise ConfigError("DOCUMENTS go with --query; a candidates file (--input) holds its own documents")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if input is not None:
        items = read_candidates(input, encoding)
    else:
        if not docs:
            raise ConfigError("--query needs DOCUMENTS to rerank (or - to read them from stdin)")
        if docs == ["-"]:
            docs = [line for line in sys.stdin.read().splitlines() if line.strip()]
        items = [Candidates("0", query, docs, [None] * len(docs))]
    cross = load_cross_encoder(model, device=device, precision=precision, max_length=max_length,
                               positive_label=positive_label, batch_tokens=batch_tokens)
    ranked = rerank_candidates(cross, items, top_k=top_k)
    if json_out:
        for c, results in zip(items, ranked, strict=True):
            emit_json({"qid": c.qid, "query": c.query, "results": [
                {"rank": r, "score": round(s, 6), "index": i,
                 **({"id": c.doc_ids[i]} if c.doc_ids[i] is not None else {}), "text": c.documents[i]}
                for r, (i, s) in enumerate(results, start=1)]})
        return
    from rich.markup import escape
    from rich.table import Table

    from bertcli.cli._common import console

    for c, results in zip(items, ranked, strict=True):
        table = Table(title=f"{c.qid}: {escape(c.query)}" if input is not None else escape(c.query),
                      title_justify="left")
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        table.add_column("document")
        for r, (i, s) in enumerate(results, start=1):
            label = c.doc_ids[i] if c.doc_ids[i] is not None else str(i)
            text = c.documents[i] if len(c.documents[i]) <= 200 else c.documents[i][:197] + "..."
            table.add_row(str(r), f"{s:.4f}", f"[dim]{escape(label)}[/] {escape(text)}")
        console.print(table)
    if not quiet and cross.truncated:
        err_console.print(f"[yellow]{cross.truncated} pairs were truncated to {cross.max_length} tokens[/]")
