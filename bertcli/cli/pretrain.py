"""bertcli pretrain: masked-language-model (+ next-sentence) pretraining on a text corpus."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import (
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    QuietOpt,
    cli_command,
    emit_json,
    err_console,
)

NAME = "pretrain"
ORDER = 40
EPILOG = """[bold]Examples[/]

  bertcli pretrain examples/corpus --tokenizer runs/vocab --config examples/configs/tiny.yaml --out runs/tiny

  bertcli pretrain corpus/ --tokenizer runs/vocab --preset mini --objective mlm --whole-word \\
      --max-time 1200 --encoding auto --out runs/mini

  bertcli pretrain corpus/ --out runs/mini --resume auto          # continue a stopped run

  bertcli pretrain corpus/ --tokenizer runs/vocab --objective electra --preset mini --out runs/electra
      # runs/electra: the discriminator (ElectraForPreTraining), runs/electra/generator: ElectraForMaskedLM

  bertcli pretrain more-text/ --init-from runs/mini --max-steps 2000 --out runs/mini-more

  bertcli pretrain corpus/ --teacher runs/bert-base --student-layers 0,2,4,6,8,10 --max-time 3600 --out runs/distil  [dim](DistilBERT)[/]

  torchrun --nproc-per-node 2 -m bertcli pretrain corpus/ --tokenizer runs/vocab --out runs/ddp

Ctrl-C (SIGINT) or SIGTERM finishes the step, saves a checkpoint and exits 130 / 143;
a second Ctrl-C stops at once.
"""

_T = "Training"
_D = "Data"
_M = "Model"
_K = "Distillation"


@cli_command
def command(
    corpus: Annotated[list[str], typer.Argument(help="Text files or directories (searched recursively).",
                                                show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory.", rich_help_panel=_M)] = ...,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer directory (train-vocab output or a checkpoint).", rich_help_panel=_M)] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="tiny|mini|small|medium|base|large (default mini).", rich_help_panel=_M)] = None,
    config: Annotated[str | None, typer.Option("--config", help="YAML with model:, data:, masking:, train: sections; flags win.", rich_help_panel=_M)] = None,
    init_from: Annotated[str | None, typer.Option("--init-from", help="Continue pretraining from this checkpoint.", rich_help_panel=_M)] = None,
    arch: Annotated[str | None, typer.Option("--arch", help="bert (default), roberta, albert, electra, distilbert, deberta or modernbert: the family of the model built from scratch (ALBERT: embeddings 128, one shared layer group; ELECTRA: ELECTRA-small's shape; DeBERTa: DeBERTa-v3-small's (6 layers, hidden 768, 256 relative buckets); ModernBERT: 10 layers x 384, GeGLU, rotary, local attention, unpadded, 30% masking; a --preset wins).", rich_help_panel=_M)] = None,
    objective: Annotated[str | None, typer.Option("--objective", help="mlm+nsp (BERT's default), mlm+sop (ALBERT's sentence order, its default), mlm (RoBERTa-style packed sentences; the other families' default) or electra (replaced-token detection: a small generator fills the masks, the ELECTRA discriminator finds them; implies --arch electra).", rich_help_panel=_D)] = None,
    generator_size: Annotated[float | None, typer.Option("--generator-size", help="electra: the generator's width as a share of the discriminator's (default 0.25; the paper: 1/4 to 1/3).", rich_help_panel=_D)] = None,
    rtd_weight: Annotated[float | None, typer.Option("--rtd-weight", help="electra: weight of the replaced-token-detection loss against the generator's MLM loss (default 50).", rich_help_panel=_D)] = None,
    generator_temperature: Annotated[float | None, typer.Option("--generator-temperature", help="electra: the temperature the replacements are sampled at from the generator's softmax (default 1, as the paper; above 1 the replacements are rarer tokens, which a discriminator can find from the token alone).", rich_help_panel=_D)] = None,
    max_seq_length: Annotated[int | None, typer.Option("--max-seq-length", help="Tokens per example (default 128).", rich_help_panel=_D)] = None,
    short_seq_prob: Annotated[float | None, typer.Option("--short-seq-prob", help="Share of shorter NSP examples (default 0.1).", rich_help_panel=_D)] = None,
    eval_fraction: Annotated[float | None, typer.Option("--eval-fraction", help="Share of documents held out for evaluation (default 0.02).", rich_help_panel=_D)] = None,
    documents: Annotated[str | None, typer.Option("--documents", help="blank-line (documents separated by blank lines, default) or file (one per file).", rich_help_panel=_D)] = None,
    encoding: Annotated[str | None, typer.Option("--encoding", help="utf-8 (default), a codec such as latin-1, or auto.", rich_help_panel=_D)] = None,
    encoding_errors: Annotated[str | None, typer.Option("--encoding-errors", help="strict (default) or replace.", rich_help_panel=_D)] = None,
    cache_dir: Annotated[str | None, typer.Option("--cache-dir", help="Where token ids are cached (default OUT/cache).", rich_help_panel=_D)] = None,
    mask_prob: Annotated[float | None, typer.Option("--mask-prob", help="Share of tokens masked (default 0.15; ModernBERT 0.30).", rich_help_panel=_D)] = None,
    whole_word: Annotated[bool | None, typer.Option("--whole-word/--no-whole-word", help="Mask whole words.", show_default=False, rich_help_panel=_D)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the corpus (default 1).", rich_help_panel=_T)] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (wins over --epochs).", rich_help_panel=_T)] = None,
    max_time: Annotated[float | None, typer.Option("--max-time", help="Stop after this many seconds (then save).", rich_help_panel=_T)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per micro-batch per process (default 32).", rich_help_panel=_T)] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Micro-batches per optimizer step (default 1).", rich_help_panel=_T)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate (default 1e-4).", rich_help_panel=_T)] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="AdamW weight decay (default 0.01; none on biases/LayerNorm).", rich_help_panel=_T)] = None,
    warmup: Annotated[float | None, typer.Option("--warmup", help="Warmup: < 1 a share of the steps, >= 1 steps (default 0.06).", rich_help_panel=_T)] = None,
    schedule: Annotated[str | None, typer.Option("--schedule", help="linear (default), cosine or constant decay.", rich_help_panel=_T)] = None,
    max_grad_norm: Annotated[float | None, typer.Option("--max-grad-norm", help="Gradient clipping (default 1.0; 0 = off).", rich_help_panel=_T)] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Evaluate every N steps (default 500; 0 = each epoch).", rich_help_panel=_T)] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="Checkpoint every N steps (default 0 = at each evaluation).", rich_help_panel=_T)] = None,
    keep_last: Annotated[int | None, typer.Option("--keep-last", help="Training checkpoints kept besides the best (default 2).", rich_help_panel=_T)] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", help="Write metrics.jsonl every N steps (default 10).", rich_help_panel=_T)] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="auto (the latest checkpoint in --out) or a RUN/checkpoints/step-N directory.", rich_help_panel=_T)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for every random choice (default 0).", rich_help_panel=_T)] = None,
    skip_nonfinite: Annotated[int | None, typer.Option("--skip-nonfinite", help="Skip up to N steps whose loss or gradient is not finite, then stop (default 0).", rich_help_panel=_T)] = None,
    auto_batch_size: Annotated[bool | None, typer.Option("--auto-batch-size", help="On out-of-memory, split batches into smaller micro-batches (same effective batch); kept on resume.", rich_help_panel=_T)] = None,
    report_to: Annotated[str | None, typer.Option("--report-to", help="none (default) or tensorboard: also write metrics.jsonl's scalars as TensorBoard event files in OUT/tensorboard.", rich_help_panel=_T)] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    # ---- distillation (bertcli.tasks.distillation)
    teacher: Annotated[str | None, typer.Option("--teacher", help="Distil this MLM checkpoint (any family, same vocabulary) into the student: DistilBERT's loss.", rich_help_panel=_K)] = None,
    student_layers: Annotated[str | None, typer.Option("--student-layers", help="Teacher layers the student starts from, e.g. 0,2,4 (default: every other; --init-from / --preset / --config give a student of another shape).", rich_help_panel=_K)] = None,
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature of the soft-target loss (scaled by T^2).", rich_help_panel=_K)] = 2.0,
    alpha_ce: Annotated[float, typer.Option("--alpha-ce", help="Weight of the soft-target loss (KL to the teacher's MLM distribution).", rich_help_panel=_K)] = 5.0,
    alpha_mlm: Annotated[float, typer.Option("--alpha-mlm", help="Weight of the student's MLM loss.", rich_help_panel=_K)] = 2.0,
    alpha_cos: Annotated[float, typer.Option("--alpha-cos", help="Weight of the cosine loss between the last hidden states.", rich_help_panel=_K)] = 1.0,
) -> None:
    """Pretrain a BERT-family encoder with masked-language modelling (and next-sentence or sentence-order prediction) or ELECTRA's replaced-token detection on text files."""
    from bertcli.locks import run_lock
    from bertcli.paths import check_outputs
    from bertcli.tasks.pretraining import PretrainConfig, build_pretraining
    from bertcli.train import fit

    cfg = PretrainConfig.from_yaml(config) if config else PretrainConfig()
    check_outputs({"--out": out, "--cache-dir": cache_dir}, {"corpus": corpus, "--tokenizer": tokenizer, "--init-from": init_from,
                                                            "--teacher": teacher})
    data = dict(objective=objective, max_seq_length=max_seq_length, short_seq_prob=short_seq_prob,
                eval_fraction=eval_fraction, documents=documents, encoding=encoding,
                encoding_errors=encoding_errors, cache_dir=cache_dir)
    masking = dict(mask_prob=mask_prob, whole_word=whole_word)
    train = dict(epochs=epochs, max_steps=max_steps, max_time=max_time, batch_size=batch_size,
                 grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, warmup=warmup, schedule=schedule,
                 max_grad_norm=max_grad_norm, eval_every=eval_every, save_every=save_every, keep_last=keep_last,
                 log_every=log_every, resume=resume, seed=seed, device=device, precision=precision,
                 skip_nonfinite=skip_nonfinite, auto_batch_size=auto_batch_size, report_to=report_to,
                 quiet=quiet or None)

    def log(msg: str) -> None:
        if not quiet:
            err_console.print(msg, highlight=False)

    with run_lock(out):
        if teacher is not None:
            from bertcli.tasks.distillation import PretrainDistillOptions, build_distill_pretraining

            distill = PretrainDistillOptions(teacher=teacher, student_layers=student_layers, temperature=temperature,
                                             alpha_ce=alpha_ce, alpha_mlm=alpha_mlm, alpha_cos=alpha_cos)
            task, args = build_distill_pretraining(corpus, out, distill, tokenizer=tokenizer, preset=preset, arch=arch,
                                                   config=cfg, init_from=init_from, data_overrides=data,
                                                   masking_overrides=masking, train_overrides=train, log=log)
        else:
            if student_layers is not None:
                from bertcli.errors import ConfigError

                raise ConfigError("--student-layers picks the teacher layers a student starts from: give --teacher DIR")
            task, args = build_pretraining(corpus, out, tokenizer=tokenizer, preset=preset, arch=arch, config=cfg,
                                           init_from=init_from, data_overrides=data, masking_overrides=masking,
                                           train_overrides=train, log=log,
                                           electra_overrides=dict(generator_size=generator_size, rtd_weight=rtd_weight,
                                                                  temperature=generator_temperature))
        s = task.summary
        log(f"corpus: {s['files']} file(s), {s['documents']:,} documents ({s['heldout_documents']:,} held out), "
            f"{s['tokens']:,} tokens; objective {task.data.objective}; model {task.config.num_layers} layers, "
            f"hidden {task.config.hidden_size}, vocab {task.config.vocab_size}")
        summary = fit(task, args)
    summary["corpus"] = task.summary
    if json_out:
        emit_json(summary)
