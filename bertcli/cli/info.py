"""bertcli info: what a checkpoint is and what it can be used for."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import JsonOpt, ModelOpt, cli_command, console, emit_json

NAME = "info"
ORDER = 90
EPILOG = """[bold]Examples[/]

  bertcli info --model runs/tiny

  bertcli info --model runs/tiny --json
"""

# (command, needed part, description); only commands this install has are listed.
_USES = [
    ("embed", "encoder", "sentence embeddings (bertcli embed)"),
    ("similarity", "encoder", "cosine similarity of sentences (bertcli similarity)"),
    ("fill-mask", "mlm", "masked-token prediction (bertcli fill-mask)"),
    ("pretrain", "mlm", "continued pretraining (bertcli pretrain --init-from)"),
    ("finetune", "encoder", "fine-tuning a task head (bertcli finetune)"),
    ("predict", "classifier", "predictions with its fine-tuned head (bertcli predict)"),
]


def uses_for(heads: set[str], registered: set[str]) -> list[str]:
    have = heads | {"encoder"}
    return [desc for cmd, part, desc in _USES if cmd in registered and part in have]


@cli_command
def command(
    model: ModelOpt = ...,
    json_out: JsonOpt = False,
    weights: Annotated[bool, typer.Option("--weights/--no-weights", help="Read the weights too (parameter count, heads).")] = True,
) -> None:
    """Show a checkpoint's configuration, size, heads, tokenizer and uses."""
    from bertcli.checkpoint import architecture_for, load_checkpoint
    from bertcli.cli.app import app
    from bertcli.tokenizer import Tokenizer, check_vocab

    ckpt = load_checkpoint(model, weights=weights)
    tok = None  # a Hugging Face model saved without its tokenizer is still described
    if (ckpt.path / "tokenizer.json").is_file() or (ckpt.path / "vocab.txt").is_file():
        tok = Tokenizer.load(ckpt.path)
        check_vocab(tok, ckpt.config.vocab_size, str(ckpt.path))
    n_params = sum(int(t.numel()) for t in ckpt.state.values()) if weights else None
    heads = sorted(ckpt.heads) if weights else []
    registered = {c.name for c in app.registered_commands}
    info = {
        "path": str(ckpt.path),
        "family": ckpt.config.family,
        "architecture": architecture_for(ckpt.state, ckpt.bertcli.get("task"), ckpt.config.family) if weights else
        (ckpt.hf_config.get("architectures") or ["?"])[0],
        "config": ckpt.config.to_dict(),
        "parameters": n_params,
        "heads": heads,
        "labels": ckpt.id2label,
        "tokenizer": None if tok is None else
        {"kind": tok.kind, "vocab_size": tok.vocab_size, "lowercase": tok.lowercase,
         "strip_accents": tok.strip_accents},
        "sentence_embedding": ckpt.sentence,
        "bertcli": ckpt.bertcli,
        "uses": uses_for(set(heads), registered),
    }
    if json_out:
        emit_json(info)
        return
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(str(ckpt.path)), show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("family", info["family"])
    t.add_row("architecture", info["architecture"])
    if n_params is not None:
        t.add_row("parameters", f"{n_params:,}")
    c = ckpt.config
    t.add_row("shape", f"{c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
                       f"intermediate {c.intermediate_size}, {c.max_positions} positions, vocab {c.vocab_size}")
    t.add_row("heads", ", ".join(heads) or "(encoder only)")
    if ckpt.id2label:
        t.add_row("labels", escape(", ".join(f"{k}={v}" for k, v in sorted(ckpt.id2label.items()))))
    if tok is None:
        t.add_row("tokenizer", "none: no tokenizer.json or vocab.txt (copy the tokenizer files in to use it)")
    else:
        kind = {"wordpiece": "WordPiece", "bpe": "byte-level BPE", "unigram": "Unigram"}[tok.kind]
        t.add_row("tokenizer", f"{kind}, {tok.vocab_size} tokens, "
                               f"{'lower-cased' if tok.lowercase else 'cased'}")
    if ckpt.sentence:
        s = ckpt.sentence
        t.add_row("sentence embedding", f"{s['pooling']} pooling{', normalised' if s['normalize'] else ''}")
    if ckpt.bertcli:
        t.add_row("bertcli", escape(", ".join(f"{k}={v}" for k, v in ckpt.bertcli.items()
                                             if not isinstance(v, dict))))
    t.add_row("uses", "\n".join(info["uses"]) or "-")
    console.print(t)
