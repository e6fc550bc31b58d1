"""bertcli init: a freshly initialised model (for pretraining from scratch or for tests)."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import SeedOpt, cli_command, err_console

NAME = "init"
ORDER = 25
EPILOG = """[bold]Examples[/]

  bertcli init --preset tiny --tokenizer runs/vocab --out runs/tiny-init

  bertcli init --config model.yaml --tokenizer runs/vocab --out runs/custom --no-nsp
"""


@cli_command
def command(
    out: Annotated[str, typer.Option("--out", "-o", help="Checkpoint directory to write.")] = ...,
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="Tokenizer directory (train-vocab output or a checkpoint).")] = ...,
    preset: Annotated[str, typer.Option("--preset", help="tiny|mini|small|medium|base|large")] = "tiny",
    config: Annotated[str | None, typer.Option("--config", help="YAML file with model fields (overrides --preset).")] = None,
    nsp: Annotated[bool, typer.Option("--nsp/--no-nsp", help="Include the next-sentence-prediction head.")] = True,
    seed: SeedOpt = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out directory.")] = False,
) -> None:
    """Write a randomly initialised BERT (encoder + MLM head, NSP optional) with BERT initialisation."""
    from pathlib import Path

    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig, load_yaml
    from bertcli.errors import ConfigError
    from bertcli.heads import BertForPreTraining
    from bertcli.model import count_parameters
    from bertcli.paths import check_outputs
    from bertcli.tokenizer import Tokenizer

    check_outputs({"--out": out}, {"--tokenizer": tokenizer, "--config": config})
    if Path(out).exists() and not force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
    tok = Tokenizer.load(tokenizer)
    if config is not None:
        data = load_yaml(config)
        data = data.get("model", data)
        data.setdefault("vocab_size", tok.vocab_size)
        cfg = BertConfig.from_dict(data, source=config)
    else:
        cfg = BertConfig.preset(preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id)
    if cfg.vocab_size < tok.vocab_size:
        raise ConfigError(f"vocab_size {cfg.vocab_size} is smaller than the tokenizer's {tok.vocab_size} tokens")
    torch.manual_seed(seed)
    model = BertForPreTraining(cfg, nsp=nsp)
    save_checkpoint(out, model.state_dict(), cfg, tok, task="pretraining", bertcli={"initialised": True, "seed": seed})
    err_console.print(f"wrote {out}: {count_parameters(model):,} parameters "
                      f"({cfg.num_layers} layers, hidden {cfg.hidden_size})")
