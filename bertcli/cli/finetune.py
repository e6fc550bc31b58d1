"""bertcli finetune: classification, sentence pairs, regression, NER, extractive QA and sentence embeddings."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import cli_command, emit_json, err_console

NAME = "finetune"
ORDER = 40
_RUN = "Steps, restarts and reporting"
EPILOG = """[bold]Examples[/]

  bertcli finetune --model runs/pretrained --task classification --train examples/data/sentiment_train.csv --dev examples/data/sentiment_dev.csv --text-column text --label-column label --out runs/sentiment

  bertcli finetune --model runs/pretrained --train mrpc_train.tsv --dev mrpc_dev.tsv --no-quoting --text-column "#1 String" --text-pair-column "#2 String" --label-column Quality --out runs/mrpc

  bertcli finetune --model runs/pretrained --task regression --train sts-train.csv --dev sts-dev.csv --delimiter tab --no-header --no-quoting --text-column 5 --text-pair-column 6 --label-column 4 --out runs/stsb

  bertcli finetune --model runs/pretrained --task sentence-embedding --loss cosine --label-scale 5 --pooling mean --train sts-train.csv --dev sts-dev.csv --delimiter tab --no-header --no-quoting --text-column 5 --text-pair-column 6 --label-column 4 --out runs/sbert  [dim](then bertcli embed / similarity --model runs/sbert)[/]

  bertcli finetune --model runs/pretrained --task token-classification --train examples/data/ner_train.conll --dev examples/data/ner_dev.conll --lr 5e-5 --out runs/ner  [dim](CoNLL token<TAB>tag files; then bertcli predict --model runs/ner texts.txt)[/]

  bertcli finetune --model runs/pretrained --task question-answering --train examples/data/qa_train.json --dev examples/data/qa_dev.json --max-length 384 --doc-stride 128 --lr 5e-5 --out runs/qa  [dim](SQuAD JSON; then bertcli predict --model runs/qa questions.json / bertcli answer)[/]

  bertcli finetune --model runs/pretrained --task cross-encoder --train triples.jsonl --text-column query --text-pair-column positive --negative-column negative --out runs/cross  [dim](a reranker: BCE on one logit; bertcli rerank / sentence-transformers CrossEncoder load it; scored pairs: --label-column with scores in [0, 1])[/]

  bertcli finetune --model runs/student --teacher runs/sst2-teacher --alpha 0.5 --temperature 2 --unlabelled more.tsv --train sst2.tsv --text-column sentence --label-column label --out runs/distilled  [dim](distillation: KL to the teacher + labels)[/]

  bertcli finetune --model runs/minilm-l3 --teacher all-MiniLM-L6-v2 --task sentence-embedding --train sentences.txt --out runs/minilm-l3-distilled  [dim](learn the teacher's embeddings, MSE; no labels)[/]
  bertcli finetune --model models/all-MiniLM-L6-v2 --train sst2_train.tsv --dev sst2_dev.tsv --text-column sentence --label-column label --lora-rank 8 --out runs/sst2-lora  [dim](a PEFT adapter directory; bertcli predict --model runs/sst2-lora, bertcli merge-lora)[/]

  bertcli finetune --model runs/pretrained --train docs.csv --text-column text --label-column label --long-input window --stride 128 --max-length 512 --out runs/docs

  bertcli finetune --config finetune.yaml --epochs 5     [dim](YAML keys are the option names; the command line wins)[/]

  bertcli finetune --config finetune.yaml --resume auto  [dim](continue an interrupted run)[/]

  bertcli finetune --config finetune.yaml --seeds 0,1,2,3,4 --out runs/mrpc5  [dim](5 restarts, the best on dev kept; runs/mrpc5/seeds.md)[/]

  bertcli finetune --model sentence-transformers/all-MiniLM-L6-v2 ...  [dim](a model in the local Hugging Face cache, offline)[/]
"""


@cli_command
def command(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Checkpoint to start from (bertcli's or Hugging Face's).", show_default=False)] = None,
    task: Annotated[str | None, typer.Option("--task", help="classification | regression | cross-encoder | token-classification | question-answering | sentence-embedding (default: classification)", show_default=False)] = None,
    train: Annotated[str | None, typer.Option("--train", help="Training file (.csv, .tsv, .jsonl; CoNLL token<TAB>tag for token-classification; SQuAD JSON for question-answering).", show_default=False)] = None,
    dev: Annotated[str | None, typer.Option("--dev", help="Dev file: evaluated each epoch; picks the best model.", show_default=False)] = None,
    test: Annotated[str | None, typer.Option("--test", help="Test file: evaluated once with the best model.", show_default=False)] = None,
    text_column: Annotated[str | None, typer.Option("--text-column", help="Column with the text (name, or 0-based index with --no-header).", show_default=False)] = None,
    text_pair_column: Annotated[str | None, typer.Option("--text-pair-column", help="Column with the second text of a pair.", show_default=False)] = None,
    label_column: Annotated[str | None, typer.Option("--label-column", help="Column with the label (a number for regression).", show_default=False)] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="Run directory; ends up a checkpoint of the best model.", show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Passes over the training data. (default: 3)", show_default=False)] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak learning rate. (default: 2e-5)", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Examples per step. (default: 32)", show_default=False)] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", help="Tokens per example (pairs included); longer inputs are truncated longest-first. (default: 128)", show_default=False)] = None,
    warmup: Annotated[float | None, typer.Option("--warmup", help="Warmup: a fraction of the steps (< 1) or steps. (default: 0.1)", show_default=False)] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="AdamW weight decay. (default: 0.01)", show_default=False)] = None,
    patience: Annotated[int | None, typer.Option("--patience", help="Stop after N evaluations without improvement.", show_default=False)] = None,
    class_weights: Annotated[str | None, typer.Option("--class-weights", help="auto (inverse class frequency) | none (default: none)", show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for every random choice. (default: 0)", show_default=False)] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Dev metric for the best model: accuracy, macro_f1, mcc, loss (classification); spearman, pearson, mse, loss (regression); loss, accuracy (cross-encoder); spearman, pearson, loss (sentence-embedding); f1, precision, recall, loss (token-classification: entity-level, seqeval); f1, exact_match, loss (question-answering: official SQuAD, 0-100).", show_default=False)] = None,
    delimiter: Annotated[str | None, typer.Option("--delimiter", help="Field delimiter (',', 'tab', ...); default: by file extension.", show_default=False)] = None,
    no_quoting: Annotated[bool | None, typer.Option("--no-quoting", help="Treat double quotes as text (STS-B, MRPC).", show_default=False)] = None,
    no_header: Annotated[bool | None, typer.Option("--no-header", help="Files have no header row; name columns by index.", show_default=False)] = None,
    encoding: Annotated[str | None, typer.Option("--encoding", help="Input encoding: utf-8 (default), latin-1, auto, ...", show_default=False)] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto|cpu|cuda|cuda:N|mps", show_default=False)] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="auto|fp32|bf16|fp16", show_default=False)] = None,
    resume: Annotated[str | None, typer.Option("--resume", help="auto (latest checkpoint in --out) or a checkpoint directory.", show_default=False)] = None,
    skip_nonfinite: Annotated[int | None, typer.Option("--skip-nonfinite", help="Skip up to N steps whose loss or gradient is not finite, then stop. (default: 0)", show_default=False)] = None,
    auto_batch_size: Annotated[bool | None, typer.Option("--auto-batch-size", help="On out-of-memory, split batches into smaller micro-batches (same effective batch); kept on resume.", show_default=False)] = None,
    group_by_length: Annotated[bool | None, typer.Option("--group-by-length/--no-group-by-length", help="Batch examples of similar length together (less padding, faster); off: plain random batches, for data whose length goes with the label. (default: on)", show_default=False)] = None,
    doc_stride: Annotated[int | None, typer.Option("--doc-stride", help="QA: tokens shared by consecutive windows of a long context. (default: 128)", show_default=False, rich_help_panel="Question answering")] = None,
    max_query_length: Annotated[int | None, typer.Option("--max-query-length", help="QA: question tokens kept. (default: 64)", show_default=False, rich_help_panel="Question answering")] = None,
    max_answer_length: Annotated[int | None, typer.Option("--max-answer-length", help="QA: longest answer in tokens. (default: 30)", show_default=False, rich_help_panel="Question answering")] = None,
    n_best: Annotated[int | None, typer.Option("--n-best", help="QA: start and end candidates searched per window. (default: 20)", show_default=False, rich_help_panel="Question answering")] = None,
    null_threshold: Annotated[float | None, typer.Option("--null-threshold", help="QA (SQuAD 2.0): answer 'no answer' when the [CLS] score beats the best span by more than this. (default: 0.0)", show_default=False, rich_help_panel="Question answering")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="Sentence embeddings: cosine (scored pairs) | mnrl (pairs, in-batch negatives) | triplet | softmax (NLI labels).", show_default=False, rich_help_panel="Sentence embeddings")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="Sentence embeddings: mean | cls | max, saved with the model. (default: mean)", show_default=False, rich_help_panel="Sentence embeddings")] = None,
    negative_column: Annotated[str | None, typer.Option("--negative-column", help="Sentence embeddings: column with the negative text (triplet; optional hard negatives for mnrl). Cross-encoder: the negative document of (query, positive, negative) triples.", show_default=False, rich_help_panel="Sentence embeddings")] = None,
    label_scale: Annotated[float | None, typer.Option("--label-scale", help="Sentence embeddings: divide scores by this (e.g. 5 for STS-B's 0-5 scores).", show_default=False, rich_help_panel="Sentence embeddings")] = None,
    # ---- run control (issue 19a: steps, restarts, reporting, cached models; bertcli.restarts) ----
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Optimizer steps (wins over --epochs).", show_default=False, rich_help_panel=_RUN)] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Evaluate on --dev every N steps (default 0: at the end of each epoch).", show_default=False, rich_help_panel=_RUN)] = None,
    save_every: Annotated[int | None, typer.Option("--save-every", help="Checkpoint every N steps (default 0: at each evaluation).", show_default=False, rich_help_panel=_RUN)] = None,
    log_every: Annotated[int | None, typer.Option("--log-every", help="Write the training loss and learning rate to metrics.jsonl every N steps (default 10).", show_default=False, rich_help_panel=_RUN)] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="Restarts: one run per seed (e.g. 0,1,2,3,4) in OUT/seed-K; the best on --dev is kept as OUT, with a per-seed table (seeds.json, seeds.md).", show_default=False, rich_help_panel=_RUN)] = None,
    restarts: Annotated[int | None, typer.Option("--restarts", help="Restarts: N runs with seeds --seed .. --seed+N-1 (as --seeds).", show_default=False, rich_help_panel=_RUN)] = None,
    report_to: Annotated[str | None, typer.Option("--report-to", help="none (default) or tensorboard: also write metrics.jsonl's scalars as TensorBoard event files in OUT/tensorboard.", show_default=False, rich_help_panel=_RUN)] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="With a --model name from the Hugging Face cache: the branch, tag or commit (default: main).", show_default=False, rich_help_panel=_RUN)] = None,
    # ---- end of run control ----
    # ---- distillation (bertcli.tasks.distillation)
    teacher: Annotated[str | None, typer.Option("--teacher", help="Distil from this fine-tuned checkpoint (same vocabulary): its logits (classification, regression, token-classification) or its sentence embeddings (sentence-embedding: --train is then a text file, no labels).", show_default=False, rich_help_panel="Distillation")] = None,
    alpha: Annotated[float | None, typer.Option("--alpha", help="Weight of the teacher's term (KL at --temperature; MSE for regression); 1 - alpha on the labels. (default: 0.5)", show_default=False, rich_help_panel="Distillation")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Softmax temperature of the KL term (scaled by T^2). (default: 2.0)", show_default=False, rich_help_panel="Distillation")] = None,
    unlabelled: Annotated[str | None, typer.Option("--unlabelled", help="Table of extra rows (the same text columns, no labels) trained on the teacher's outputs only.", show_default=False, rich_help_panel="Distillation")] = None,
    teacher_cache: Annotated[str | None, typer.Option("--teacher-cache", help="Sentence embeddings: keep the teacher's embeddings of --train in this .safetensors file (reused while the sentences and the teacher are the same).", show_default=False, rich_help_panel="Distillation")] = None,
    # ---- frozen layers, LoRA, long inputs (bertcli.lora, bertcli.windows)
    freeze_embeddings: Annotated[bool | None, typer.Option("--freeze-embeddings", help="Do not train the embeddings.", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    freeze_layers: Annotated[int | None, typer.Option("--freeze-layers", help="Do not train the bottom K layers.", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    freeze_encoder: Annotated[bool | None, typer.Option("--freeze-encoder", help="Train the head only (a linear probe).", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", help="Train rank-R LoRA adapters on the frozen encoder (and the head in full); OUT is a PEFT adapter directory. (default: 0, off)", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    lora_alpha: Annotated[float | None, typer.Option("--lora-alpha", help="LoRA scaling alpha (the update is alpha / R * B A). (default: 2 x rank)", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    lora_dropout: Annotated[float | None, typer.Option("--lora-dropout", help="Dropout on the adapters' input. (default: 0.1)", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    lora_targets: Annotated[str | None, typer.Option("--lora-targets", help="Linear maps that get adapters: qkv, out (attention), up, down (feed-forward). (default: qkv,out,up,down)", show_default=False, rich_help_panel="Frozen layers and LoRA")] = None,
    long_input: Annotated[str | None, typer.Option("--long-input", help="truncate | window: split a long text into overlapping windows labelled with its label; dev metrics per text. (default: truncate)", show_default=False, rich_help_panel="Long inputs")] = None,
    stride: Annotated[int | None, typer.Option("--stride", help="Tokens shared by consecutive windows. (default: 128)", show_default=False, rich_help_panel="Long inputs")] = None,
    window_pooling: Annotated[str | None, typer.Option("--window-pooling", help="mean | max of the windows' logits, for dev and test. (default: mean)", show_default=False, rich_help_panel="Long inputs")] = None,
    # ----
    config: Annotated[str | None, typer.Option("--config", help="YAML file of options (keys: the option names).", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Fine-tune a checkpoint: text or pair classification, regression, cross-encoders, NER, extractive QA, sentence embeddings."""
    from bertcli.config import merge_options
    from bertcli.paths import check_outputs
    from bertcli.tasks.classification import FinetuneOptions, finetune, options_from_yaml

    cli_values = {
        "model": model, "task": task, "train": train, "dev": dev, "test": test, "text_column": text_column,
        "text_pair_column": text_pair_column, "label_column": label_column, "out": out, "epochs": epochs,
        "lr": lr, "batch_size": batch_size, "max_length": max_length, "warmup": warmup,
        "weight_decay": weight_decay, "patience": patience, "class_weights": class_weights, "seed": seed,
        "metric": metric, "delimiter": delimiter, "no_quoting": no_quoting, "no_header": no_header,
        "encoding": encoding, "device": device, "precision": precision, "resume": resume,
        "skip_nonfinite": skip_nonfinite, "auto_batch_size": auto_batch_size, "group_by_length": group_by_length,
        "doc_stride": doc_stride, "max_query_length": max_query_length, "max_answer_length": max_answer_length,
        "n_best": n_best, "null_threshold": null_threshold, "loss": loss, "pooling": pooling,
        "negative_column": negative_column, "label_scale": label_scale,
        # run control (issue 19a)
        "max_steps": max_steps, "eval_every": eval_every, "save_every": save_every, "log_every": log_every,
        "seeds": seeds,
        "restarts": restarts, "report_to": report_to, "revision": revision,
        "teacher": teacher, "alpha": alpha, "temperature": temperature, "unlabelled": unlabelled,
        "teacher_cache": teacher_cache,
        "freeze_embeddings": freeze_embeddings, "freeze_layers": freeze_layers, "freeze_encoder": freeze_encoder,
        "lora_rank": lora_rank, "lora_alpha": lora_alpha, "lora_dropout": lora_dropout, "lora_targets": lora_targets,
        "long_input": long_input, "stride": stride, "window_pooling": window_pooling,
        "quiet": True if quiet else None,
    }
    base = options_from_yaml(config) if config else FinetuneOptions()
    opts = merge_options(base, cli_values)
    check_outputs({"--out": opts.out}, {"--model": opts.model, "--train": opts.train, "--dev": opts.dev, "--test": opts.test,
                                        "--teacher": opts.teacher, "--unlabelled": opts.unlabelled})
    check_outputs({"--teacher-cache": opts.teacher_cache}, {"--model": opts.model, "--teacher": opts.teacher, "--train": opts.train})
    summary = finetune(opts)
    if json_out:
        emit_json(summary)
        return
    if opts.quiet:
        return
    if "runs" in summary:  # --seeds / --restarts
        _render_seeds(summary, opts.out)
        return
    from rich.table import Table

    table = Table(title="fine-tuning", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for split, n in summary["examples"].items():
        cut = summary["truncated"].get(split, 0)
        if "windowed" in summary:  # --long-input window
            table.add_row(split, f"{summary['texts'][split]} texts, {summary['windowed'][split]} split into "
                                 f"windows of {summary['max_length']} tokens ({n} windows)")
            continue
        table.add_row(split, f"{n} examples, {cut} truncated to {summary['max_length']} tokens")
    if "trainable_parameters" in summary:
        table.add_row("trainable", f"{summary['trainable_parameters']:,} of {summary['parameters']:,} parameters")
    for k, v in (summary.get("test") or {}).items():
        table.add_row(f"test {k}", f"{v:.4f}")
    table.add_row("model", str(opts.out))
    err_console.print(table)


def _render_seeds(table: dict, out: str) -> None:
    """The per-seed table of --seeds / --restarts (seeds.md holds the same)."""
    from rich.table import Table

    t = Table(title=f"restarts: dev {table['metric']}", title_justify="left")
    for col in ("seed", f"dev {table['metric']}", "best step", "steps", "time (s)"):
        t.add_column(col, justify="right")
    for r in table["runs"]:
        best = r["seed"] == table["best_seed"]
        t.add_row(f"{r['seed']}{' *' if best else ''}", f"{r['dev']:.4f}", str(r["best_step"]), str(r["steps"]),
                  f"{r['time_s']:.1f}", style="bold" if best else None)
    err_console.print(t)
    err_console.print(f"mean {table['mean']:.4f}  std {table['std']:.4f}  min {table['min']:.4f}  "
                      f"max {table['max']:.4f}; kept seed {table['best_seed']} as {out} "
                      f"(table: {out}/seeds.md, curves: {out}/curves.png)")
