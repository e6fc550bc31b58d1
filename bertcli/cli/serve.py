"""bertcli serve: an HTTP inference server for a checkpoint (FastAPI on uvicorn, the serve extra)."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import DeviceOpt, InferencePrecisionOpt, ModelOpt, cli_command, err_console

NAME = "serve"
ORDER = 70
EPILOG = """[bold]Examples[/]

  bertcli serve --model runs/sbert --port 8000

  curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' -d '{"input": ["A dog runs."], "model": "m"}'

  BERTCLI_API_KEY=secret bertcli serve --model runs/sentiment --host 0.0.0.0 --workers 2

The model's task decides the live routes (GET /info lists them; /docs documents them):
embedding models POST /v1/embeddings (OpenAI), /embed, /similarity; classifiers and regressors
/predict and, for pair models, /rerank; token classifiers /predict (entities with offsets);
question answering /answer. Always: GET /health, /info, /metrics (Prometheus).
Requests from concurrent clients are batched (--max-batch-tokens, --max-wait-ms). SIGTERM stops
accepting, finishes the requests in flight and exits 0 within --grace seconds.
Needs the serve extra: pip install 'bertcli[serve]'.
"""


@cli_command
def command(
    model: ModelOpt = ...,
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port (0: any free port, printed at start).")] = 8000,
    max_batch_tokens: Annotated[int | None, typer.Option("--max-batch-tokens", help="Tokens per dynamic batch (default: embed's, 2048 on CPU, 32768 on CUDA).", show_default=False)] = None,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", help="Longest wait for more requests to batch with the first.")] = 5.0,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Texts waiting for the model; beyond, 503 with Retry-After.")] = 1024,
    max_request_texts: Annotated[int, typer.Option("--max-request-texts", help="Texts in one request; beyond, 413.")] = 256,
    max_request_bytes: Annotated[int, typer.Option("--max-request-bytes", help="Bytes in one request body; beyond, 413.")] = 1_000_000,
    truncate: Annotated[bool, typer.Option("--truncate/--no-truncate", help="Cut texts over the model's length (counted in X-Truncated-Texts and /metrics), or refuse them with 413.")] = True,
    allow_dimensions: Annotated[bool, typer.Option("--allow-dimensions", help="Let /v1/embeddings 'dimensions' keep the first N dimensions (renormalised): only for Matryoshka-trained models.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Inputs per forward pass for classifiers, taggers and QA.")] = 64,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="BERTCLI_API_KEY", help="Require Authorization: Bearer KEY (except GET /health).", show_default=False)] = None,
    grace: Annotated[float, typer.Option("--grace", help="Seconds to finish in-flight requests after SIGTERM.")] = 30.0,
    workers: Annotated[int, typer.Option("--workers", help="Server processes on one port, each with its own copy of the model.")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", help="Torch threads per process (default: the cores / --workers).", show_default=False)] = None,
    served_name: Annotated[str | None, typer.Option("--served-name", help="Model name in /info and responses (default: the directory name).", show_default=False)] = None,
    no_access_log: Annotated[bool, typer.Option("--no-access-log", help="No JSON access log lines on stderr.")] = False,
    device: DeviceOpt = "auto",
    precision: InferencePrecisionOpt = "auto",
) -> None:
    """Serve a model over HTTP: embeddings (OpenAI-compatible), similarity, predictions, answers, reranking."""
    from bertcli.serve import require_extra, serve
    from bertcli.serve.options import ServeOptions

    require_extra()
    options = ServeOptions(
        model=model, host=host, port=port, device=device, precision=precision, max_batch_tokens=max_batch_tokens,
        max_wait_ms=max_wait_ms, max_queue=max_queue, max_request_texts=max_request_texts,
        max_request_bytes=max_request_bytes, truncate=truncate, allow_dimensions=allow_dimensions,
        batch_size=batch_size, api_key=api_key, grace=grace, workers=workers, threads=threads,
        access_log=not no_access_log, served_name=served_name,
    )

    def ready(bound_host: str, bound_port: int) -> None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        err_console.print(f"serving {model} on http://{shown}:{bound_port} (docs: /docs); SIGTERM or Ctrl-C stops",
                          soft_wrap=True, markup=False)

    raise typer.Exit(serve(options, ready=ready))
