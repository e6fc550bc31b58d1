"""Shared CLI pieces: error handling, consoles, common options.

Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from bertcli.errors import BertcliError

# stderr: progress, tables meant for people when stdout carries data, and errors.
err_console = Console(stderr=True, highlight=False)
console = Console(highlight=False)

STATE = {"debug": bool(os.environ.get("BERTCLI_DEBUG"))}


def cli_command(fn):
    """Run a command body: a BertcliError becomes one red line on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BertcliError as exc:
            if STATE["debug"]:
                raise
            # the message is plain text: paths and texts may hold "[...]", which is not rich markup
            # one line, whatever the message quotes from the input (a label or path with a newline)
            message = str(exc).replace("\r", "\\r").replace("\n", "\\n")
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True,
                              highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            if STATE["debug"]:
                raise
            err_console.print("[red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def emit_json(obj: Any) -> None:
    """One JSON line on stdout."""
    line = json.dumps(obj, ensure_ascii=False)
    try:
        sys.stdout.write(line + "\n")
    except UnicodeEncodeError:  # a lone surrogate (from a JSON input): keep it as a \\udXXX escape
        sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Checkpoint directory (bertcli's or Hugging Face's).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N|mps (auto: CUDA, then MPS, then CPU).")]
PrecisionOpt = Annotated[
    str, typer.Option("--precision", help="auto|fp32|bf16|fp16 (auto: the fastest precision safe on the device).")
]
# inference commands (embed, similarity, predict, answer, serve) also take int8; the bounds are measured
# (benchmarks/results/inference.md) and checked in tests/test_inference.py
InferencePrecisionOpt = Annotated[
    str, typer.Option("--precision", help="auto|fp32|bf16|fp16|int8. auto: the fastest precision safe on the device "
                      "(on a CPU with bf16 units: bf16 weights, fp32 LayerNorm and pooling; min cosine to fp32 >= 0.999 "
                      "on MiniLM). int8: CPU-only dynamic int8 quantisation of the linear layers (min cosine to fp32 "
                      ">= 0.92 on MiniLM, STS-B Spearman -0.002); for CPUs without bf16 units.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write JSON lines to stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
EncodingOpt = Annotated[
    str, typer.Option("--encoding", help="Input encoding: utf-8 (default), a codec name such as latin-1, or auto.")
]

# ---- the options of the embedding commands (embed, similarity) that read a table
BatchTokensOpt = Annotated[
    int | None, typer.Option("--batch-tokens", help="Padded tokens per batch (default: 2048 on CPU, 32768 on CUDA).")
]

ChunkSizeOpt = Annotated[
    int | None, typer.Option("--chunk-size", help="Rows read, encoded and written at a time; memory depends on it, "
                             "not on the input size (default: 10000).", show_default=False)
]


def table_file_options(flag: str):
    """(delimiter, no-quoting, no-header) option types for the table a command reads with ``flag``."""
    return (
        Annotated[str | None, typer.Option(
            "--delimiter", help=f"Field delimiter of {flag} (default: from the extension; 'tab' for a tab).")],
        Annotated[bool, typer.Option("--no-quoting", help=f"Fields of {flag} hold bare double quotes (STS-B).")],
        Annotated[bool, typer.Option("--no-header", help=f"{flag} has no header row; columns are 0, 1, ...")],
    )
