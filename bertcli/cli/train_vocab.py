"""bertcli train-vocab: train a WordPiece, byte-level BPE or Unigram vocabulary on plain text."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import (
    EncodingOpt,
    JsonOpt,
    QuietOpt,
    SeedOpt,
    cli_command,
    console,
    emit_json,
    err_console,
)

NAME = "train-vocab"
ORDER = 5
EPILOG = """[bold]Examples[/]

  bertcli train-vocab examples/corpus --out runs/vocab --vocab-size 2000

  bertcli train-vocab ../shared/data/corpus --out runs/vocab30k --encoding auto

  bertcli train-vocab book.txt notes/ --out runs/cased --cased --keep-accents --json

  bertcli train-vocab ../shared/data/corpus --out runs/bpe --model-type bpe --vocab-size 8000

  bertcli train-vocab ../shared/data/corpus --out runs/spm --model-type unigram --style xlm-roberta

Special tokens come first, with fixed ids: wordpiece (bert) [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; bpe (roberta) and unigram --style xlm-roberta <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4; unigram (albert) <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4; unigram --style deberta (DeBERTa-v3, cased) [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 [MASK]=4. The output directory loads in transformers' AutoTokenizer and works as --model for tokenize and mask-preview and as --tokenizer for init and pretrain.
"""


@cli_command
def command(
    paths: Annotated[list[str], typer.Argument(help="Text files or directories (searched recursively).",
                                               show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write the tokenizer to.")] = ...,
    model_type: Annotated[str, typer.Option(
        "--model-type", help="wordpiece (BERT), bpe (byte-level, RoBERTa) or unigram (SentencePiece: ALBERT, XLM-R).",
    )] = "wordpiece",
    style: Annotated[str | None, typer.Option(
        "--style", help="Special tokens and pair template: bert, roberta, albert, xlm-roberta or deberta "
                        "(default: bert / roberta / albert for wordpiece / bpe / unigram).", show_default=False,
    )] = None,
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary size, special tokens included.")] = 30522,
    min_frequency: Annotated[int, typer.Option("--min-frequency", help="Keep merges seen at least this often.")] = 2,
    lowercase: Annotated[bool | None, typer.Option(
        "--lowercase/--cased", help="Lower-case text (default: lower-case for bert and albert, cased for roberta "
                                    "and xlm-roberta).", show_default=False,
    )] = None,
    strip_accents: Annotated[bool | None, typer.Option(
        "--strip-accents/--keep-accents", help="Strip accents (default: when lower-casing).", show_default=False,
    )] = None,
    limit_alphabet: Annotated[int, typer.Option("--limit-alphabet", help="Keep at most this many characters (wordpiece).")] = 1000,
    held_out: Annotated[float, typer.Option(
        "--held-out", help="Fraction of lines held out of training to measure the vocabulary on.")] = 0.02,
    encoding: EncodingOpt = "utf-8",
    encoding_errors: Annotated[str, typer.Option(
        "--encoding-errors", help="strict: undecodable bytes are an error; replace: U+FFFD, files reported.",
    )] = "strict",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --out directory.")] = False,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a WordPiece, BPE or Unigram vocabulary; write tokenizer.json and configs; check and measure it."""
    from bertcli.paths import check_outputs
    from bertcli.vocab import train_vocab

    check_outputs({"--out": out}, {"PATHS": paths})
    options = dict(model_type=model_type, style=style, vocab_size=vocab_size, min_frequency=min_frequency,
                   lowercase=lowercase, strip_accents=strip_accents, limit_alphabet=limit_alphabet, encoding=encoding,
                   errors=encoding_errors, held_out=held_out, seed=seed, force=force)
    if not quiet and err_console.is_terminal:
        with err_console.status("reading the corpus") as st:
            stats = train_vocab(paths, out, show_progress=True, status=st.update, **options)
    else:
        stats = train_vocab(paths, out, **options)
    if not quiet:
        for fb in stats["fallback_files"]:
            err_console.print(f"[yellow]note:[/] {fb['file']}: not UTF-8, read as {fb['encoding']}", soft_wrap=True)
        for f in stats["replaced_files"]:
            err_console.print(f"[yellow]note:[/] {f}: undecodable bytes replaced by U+FFFD", soft_wrap=True)
    if json_out:
        emit_json(stats)
        return
    if quiet:
        return
    from rich.table import Table

    ho = stats["held_out"]
    where = "training text (too little text to hold out)" if ho["is_training_text"] else "held-out lines"
    table = Table(title=f"vocabulary written to {stats['out']}", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("tokenizer", f"{stats['model_type']} ({stats['style']}, {stats['tokenizer_class']})")
    table.add_row("vocabulary size", f"{stats['vocab_size']:,} (asked {stats['requested_vocab_size']:,})")
    table.add_row("alphabet", f"{stats['alphabet']} characters, {stats['continuations']:,} word-continuing tokens in all")
    table.add_row("special ids", "  ".join(f"{k}={v}" for k, v in stats["special_ids"].items()))
    table.add_row("corpus", f"{stats['files']} file(s), {stats['characters']:,} characters, "
                            f"{stats['train_lines']:,} training lines")
    table.add_row("fallback encodings", str(len(stats["fallback_files"])))
    table.add_row("measured on", f"{ho['lines']:,} {where}: {ho['words']:,} words")
    table.add_row("unknown-token rate", f"{stats['unk_rate']:.4%}")
    table.add_row("tokens per word", f"{stats['wordpieces_per_word']:.3f}")
    table.add_row("self-check", f"{' and '.join(stats['self_check']['files'])} agree(s) on {stats['self_check']['texts']:,} texts")
    t = stats["time_s"]
    table.add_row("time", f"{t['total']:.1f} s (training {t['train']:.1f} s)")
    console.print(table)
