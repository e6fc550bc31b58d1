"""bertcli merge-lora: a LoRA adapter directory merged into its base, written as a plain checkpoint."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import JsonOpt, QuietOpt, cli_command, emit_json, err_console

NAME = "merge-lora"
ORDER = 42
EPILOG = """[bold]Examples[/]

  bertcli merge-lora --adapter runs/sst2-lora --out runs/sst2-merged

The adapter directory (made by bertcli finetune --lora-rank, or by peft) names its base model in
adapter_config.json (base_model_name_or_path). The output loads in bertcli and in transformers like any
checkpoint: the base's weights with scale * B A added to each adapted matrix, and the trained head.
"""


@cli_command
def command(
    adapter: Annotated[str, typer.Option("--adapter", help="PEFT LoRA adapter directory.", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Checkpoint directory to write.", show_default=False)],
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Merge a LoRA adapter into its base model and write a plain checkpoint."""
    from bertcli.lora import merge_lora
    from bertcli.paths import check_outputs

    check_outputs({"--out": out}, {"--adapter": adapter})
    summary = merge_lora(adapter, out)
    if json_out:
        emit_json(summary)
    elif not quiet:
        err_console.print(f"merged {summary['adapter']} into {summary['base']} -> {summary['out']}")
