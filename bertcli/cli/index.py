"""bertcli index: embed documents into an index directory (safetensors shards, JSONL documents, a manifest)."""

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
)

NAME = "index"
ORDER = 62
EPILOG = """[bold]Examples[/]

  bertcli index --model MODEL docs/ --out idx  [dim](every file of docs/: one document per line)[/]

  bertcli index --model MODEL beir/scifact/corpus.jsonl --out idx --dtype fp16

  bertcli index --model MODEL faq.csv --id-column id --text-column answer --title-column question --out idx

  bertcli index --model e5-small news.jsonl --query-prefix "query: " --doc-prefix "passage: " --out idx

Text files give one document per non-blank line (id FILE:LINE); CSV/TSV/JSONL tables take the columns
(defaults: _id or id, text, title). Building into an existing index appends; a killed build resumes after
its last committed shard when the same command runs again. Duplicate ids are an error before any work.
"""

PROGRESS_MIN = 2000


@cli_command
def command(
    docs: Annotated[list[str], typer.Argument(help="Document files (text: one per line; CSV/TSV/JSONL tables; BEIR corpus.jsonl) or directories of them.", show_default=False)],
    model: ModelOpt = ...,
    out: Annotated[str, typer.Option("--out", "-o", help="Index directory (created; an existing index is appended to).")] = ...,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Table column with the document id (default: _id or id when present, else FILE:LINE).")] = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Table column with the document text (default: text).")] = None,
    title_column: Annotated[str | None, typer.Option("--title-column", help="Table column with a title, embedded as 'title text' (default: title when present).")] = None,
    query_prefix: Annotated[str | None, typer.Option("--query-prefix", help="Prepended to every query at search time (stored in the manifest), e.g. 'query: '.")] = None,
    doc_prefix: Annotated[str | None, typer.Option("--doc-prefix", help="Prepended to every document before embedding, e.g. 'passage: '.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32 | fp16: how vectors are stored (default: fp32).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls|mean|max (default: the checkpoint's, else mean).")] = None,
    normalize: Annotated[bool | None, typer.Option("--normalize/--no-normalize", help="L2-normalise vectors (default: the checkpoint's).", show_default=False)] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Truncate documents to N tokens (default: the checkpoint's max_seq_length).")] = None,
    batch_tokens: BatchTokensOpt = None,
    chunk_size: ChunkSizeOpt = None,
    delimiter: Annotated[str | None, typer.Option("--delimiter", help="Field delimiter of CSV/TSV inputs (default: from the extension).")] = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Embed documents into a searchable index (vectors as safetensors shards, documents as JSONL)."""
    from bertcli.cli._dist import distributed
    from bertcli.paths import check_outputs
    from bertcli.retrieval.index import build_index
    from bertcli.streaming import progress_bar

    check_outputs({"--out": out}, {"DOCS": docs, "--model": model})
    with distributed() as rank:
        show = not quiet and rank == 0 and sys.stderr.isatty()
        with progress_bar("indexing", None, enabled=show, unit="docs") as progress:
            s = build_index(docs, model, out, id_column=id_column, text_column=text_column, title_column=title_column,
                            delimiter=delimiter, encoding=encoding, query_prefix=query_prefix, doc_prefix=doc_prefix,
                            dtype=dtype, pooling=pooling, normalize=normalize, max_length=max_length,
                            batch_tokens=batch_tokens, chunk_size=chunk_size, device=device, precision=precision,
                            progress=progress)
    if rank != 0:
        return
    if json_out:
        emit_json({"index": out, **s.to_dict()})
    elif not quiet:
        rate = s.added / s.seconds if s.seconds > 0 else float("inf")
        resumed = f" (resumed: {s.resumed} were already indexed)" if s.resumed else ""
        err_console.print(
            f"{s.added} document(s) embedded{resumed} -> {out}: {s.count} documents, {s.dim}-dim {s.dtype} vectors "
            f"({s.pooling} pooling, {'normalised' if s.normalize else 'not normalised'}, {s.precision} on {s.device}), "
            f"{s.shards} shard(s); {s.truncated} truncated; {s.seconds:.2f}s ({rate:.0f} docs/s)",
            soft_wrap=True,
        )
