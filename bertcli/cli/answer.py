"""bertcli answer: answer one question about one context with a question-answering model."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import (
    DeviceOpt,
    EncodingOpt,
    InferencePrecisionOpt,
    JsonOpt,
    ModelOpt,
    cli_command,
    console,
    emit_json,
)

NAME = "answer"
ORDER = 46
EPILOG = """[bold]Examples[/]

  bertcli answer --model runs/squad --question "Who wrote Hamlet?" --context "Hamlet is a tragedy written by William Shakespeare."

  bertcli answer --model runs/squad --question "When was it built?" --context-file article.txt --top-k 3

  cat article.txt | bertcli answer --model runs/squad --question "Where?" --context-file - --json

Prints the best answer span of the context (character offsets start-end, the start + end logit score, a probability over the candidates); --top-k shows more candidates. Long contexts are read in overlapping windows, as in training. A model fine-tuned with unanswerable questions (SQuAD 2.0) may answer with the empty string.
"""


@cli_command
def command(
    model: ModelOpt = ...,
    question: Annotated[str, typer.Option("--question", help="The question.", show_default=False)] = ...,
    context: Annotated[str | None, typer.Option("--context", help="The text holding the answer.", show_default=False)] = None,
    context_file: Annotated[str | None, typer.Option("--context-file", help="Read the context from a file (- for stdin).", show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Answers to show, best first.")] = 1,
    max_answer_length: Annotated[int | None, typer.Option("--max-answer-length", help="Longest answer in tokens (default: as fine-tuned).", show_default=False)] = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    precision: InferencePrecisionOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Answer a question about a context: the best span of the context, with its character offsets."""
    from bertcli.errors import ConfigError, DataError
    from bertcli.tasks.question_answering import QuestionAnswerer

    if (context is None) == (context_file is None):
        raise ConfigError("give the context with exactly one of --context TEXT or --context-file FILE")
    if context_file is not None:
        from bertcli.data.text import read_text

        context = read_text(context_file, encoding).text
    assert context is not None
    if not question.strip():
        raise DataError("--question is empty")
    if not context.strip():
        raise DataError("the context is empty" + (f" ({context_file})" if context_file else ""))
    qa = QuestionAnswerer(model, device=device, precision=precision, max_answer_length=max_answer_length)
    spans = qa.answer([question], [context], top_k=top_k)[0]
    if json_out:
        emit_json({"question": question, **spans[0].as_dict(), "answers": [s.as_dict() for s in spans]})
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(question), title_justify="left")  # user text is never rich markup
    table.add_column("rank", justify="right")
    table.add_column("answer")
    table.add_column("start-end", justify="right")
    table.add_column("score", justify="right")
    table.add_column("probability", justify="right")
    for rank, s in enumerate(spans, 1):
        where = f"{s.start}-{s.end}" if s.start is not None else "-"
        table.add_row(str(rank), Text(s.answer) if s.answer else Text("(no answer)", style="dim"), where,
                      f"{s.score:.3f}", f"{s.probability:.4f}", style="bold" if rank == 1 else None)
    console.print(table)
