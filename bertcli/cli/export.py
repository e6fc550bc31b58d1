"""bertcli export: a checkpoint as an ONNX graph (Optimum / sentence-transformers ONNX layout)."""

from __future__ import annotations

from typing import Annotated

import typer

from bertcli.cli._common import JsonOpt, ModelOpt, QuietOpt, cli_command, emit_json, err_console

NAME = "export"
ORDER = 68
EPILOG = """[bold]Examples[/]

  bertcli export --model MODEL --format onnx --out MODEL-onnx

  bertcli export --model MODEL --out MODEL-onnx --variant int8 --variant fp16

  python -c "from sentence_transformers import SentenceTransformer as S; S('MODEL-onnx', backend='onnx')"

The directory holds onnx/model.onnx (dynamic batch and sequence axes), config.json, the tokenizer files and,
for an encoder, the sentence-transformers files (modules.json, 1_Pooling/): Optimum's ORTModel classes and
sentence-transformers' ONNX backend load it as it is. The graph's outputs are named as Optimum names them:
last_hidden_state (an encoder), logits (sequence or token classifiers), start_logits and end_logits (question
answering). Before anything is written, onnxruntime runs the graph on padded batches of other sizes than the
traced one and must match PyTorch within 1e-4. Needs pip install 'bertcli[onnx]'.
"""


@cli_command
def command(
    model: ModelOpt = ...,
    out: Annotated[str, typer.Option("--out", "-o", help="Directory to write (new, empty, or an earlier export, replaced whole).")] = ...,
    format: Annotated[str, typer.Option("--format", help="onnx (the only format).")] = "onnx",
    task: Annotated[str, typer.Option("--task", help="auto (the checkpoint's head) | feature-extraction (the encoder alone) | sequence-classification | token-classification | question-answering.")] = "auto",
    variant: Annotated[list[str] | None, typer.Option("--variant", help="Also write onnx/model_int8.onnx (int8: dynamic per-channel quantisation of the linear layers) or onnx/model_fp16.onnx (fp16: fp16 weights and compute, fp32 inputs and outputs); repeatable. Their measured difference to fp32 is in the summary (int8 on all-MiniLM-L6-v2: sentence-vector cosine >= 0.966 over STS-B).", show_default=False)] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset version (default: the exporter's).", show_default=False)] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a checkpoint to ONNX for onnxruntime, Optimum and sentence-transformers' ONNX backend."""
    from bertcli.export import export_onnx

    result = export_onnx(model, out, task=task, variants=tuple(variant or ()), fmt=format, opset=opset)
    if json_out:
        emit_json(result.to_dict())
    elif not quiet:
        lines = [f"{result.family} {result.task} -> {result.out}/{result.file} ({result.bytes / 1e6:.1f} MB; "
                 f"inputs {', '.join(result.inputs)}; outputs {', '.join(result.outputs)}); onnxruntime vs PyTorch: "
                 f"max |diff| {result.max_abs_diff:.1e}; {result.seconds:.1f}s"]
        for name, v in result.variants.items():
            cos = f", min cosine {v.min_cosine:.4f}" if v.min_cosine is not None else ""
            lines.append(f"  {name}: {result.out}/{v.file} ({v.bytes / 1e6:.1f} MB; max |diff| {v.max_abs_diff:.1e}{cos})")
        err_console.print("\n".join(lines), soft_wrap=True)
