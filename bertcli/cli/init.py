"""bertcli init: a freshly initialised model, or a student cut out of a teacher (``--from DIR --layers``)."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import SeedOpt, cli_command, err_console

NAME = "init"
ORDER = 25
EPILOG = """[bold]Examples[/]

  bertcli init --preset tiny --tokenizer runs/vocab --out runs/tiny-init

  bertcli init --config model.yaml --tokenizer runs/vocab --out runs/custom --no-nsp

  bertcli init --from all-MiniLM-L6-v2 --layers 0,2,4 --out runs/minilm-l3   [dim](a 3-layer student: embeddings, layers 0, 2, 4 and the heads copied)[/]
"""


@cli_command
def command(
    out: Annotated[str, typer.Option("--out", "-o", help="Checkpoint directory to write.")] = ...,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer directory (train-vocab output or a checkpoint).")] = None,
    preset: Annotated[str, typer.Option("--preset", help="tiny|mini|small|medium|base|large")] = "tiny",
    config: Annotated[str | None, typer.Option("--config", help="YAML file with model fields (overrides --preset).")] = None,
    nsp: Annotated[bool, typer.Option("--nsp/--no-nsp", help="Include the next-sentence-prediction head.")] = True,
    seed: SeedOpt = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out directory.")] = False,
    # ---- students (bertcli.distill)
    from_dir: Annotated[str | None, typer.Option("--from", help="Cut a student out of this checkpoint (any family) instead of initialising randomly.", rich_help_panel="Student")] = None,
    layers: Annotated[str | None, typer.Option("--layers", "--student-layers", help="With --from: the teacher layers to keep, e.g. 0,2,4 (default: every other layer).", rich_help_panel="Student")] = None,
) -> None:
    """Write a randomly initialised BERT (encoder + MLM head, NSP optional), or a student cut out of a checkpoint (--from --layers)."""
    from pathlib import Path

    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig, load_yaml
    from bertcli.errors import ConfigError
    from bertcli.heads import BertForPreTraining
    from bertcli.model import count_parameters
    from bertcli.paths import check_outputs
    from bertcli.tokenizer import Tokenizer

    check_outputs({"--out": out}, {"--tokenizer": tokenizer, "--config": config, "--from": from_dir})
    if Path(out).exists() and not force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
    if from_dir is not None:
        if tokenizer is not None or config is not None:
            raise typer.BadParameter("--from copies the teacher's shape and tokenizer; drop --tokenizer / --config",
                                     param_hint="--from")
        from bertcli.distill import cut_student

        info = cut_student(from_dir, out, layers)
        err_console.print(f"wrote {out}: layers {','.join(map(str, info['layers']))} of {info['teacher_layers']}, "
                          f"{info['parameters']:,} parameters ({info['teacher_parameters']:,} in {from_dir})")
        return
    if layers is not None:
        raise typer.BadParameter("--layers picks the layers of a teacher: give --from DIR", param_hint="--layers")
    if tokenizer is None:
        raise typer.BadParameter("--tokenizer DIR is required (a train-vocab output or a checkpoint), or --from DIR",
                                 param_hint="--tokenizer")
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
