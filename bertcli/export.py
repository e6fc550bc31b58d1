"""Export a checkpoint to ONNX, in the layout Optimum and sentence-transformers' ONNX backend load.

``export_onnx(model, out)`` writes::

    out/
      onnx/model.onnx          the graph: dynamic batch and sequence axes (int64 inputs input_ids,
                               attention_mask, and token_type_ids where the family has token types)
      onnx/model_int8.onnx     --variant int8: linear layers quantised to int8 (onnxruntime quantize_dynamic)
      onnx/model_fp16.onnx     --variant fp16: weights and compute in fp16, fp32 inputs and outputs
      config.json              the checkpoint's config, with an "onnx" entry in its "bertcli" block
      tokenizer.json, tokenizer_config.json, special_tokens_map.json, vocab.txt (or vocab.json + merges.txt)
      modules.json, 1_Pooling/, sentence_bert_config.json (, 2_Normalize/)   for an encoder: a complete
                               sentence-transformers model, pooling and normalisation as ``bertcli embed`` has them

The outputs are named as Optimum names them, by task (detected from the checkpoint's heads, or ``task``):
``feature-extraction`` ``last_hidden_state`` (B, T, H); ``sequence-classification`` ``logits`` (B, K);
``token-classification`` ``logits`` (B, T, K); ``question-answering`` ``start_logits``, ``end_logits`` (B, T).

The graph is traced by ``torch.onnx.export`` (the torch.export-based exporter) from the one encoder core with
``BertModel.exporting`` set: the padded path, the attention mask always applied, no branch on the data. The
export is then checked: onnxruntime runs a padded batch of another batch size and length than the trace's and
must match PyTorch within ``TOLERANCE`` on the real tokens, else nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, ExportError

FORMATS = ("onnx",)
TASKS = ("auto", "feature-extraction", "sequence-classification", "token-classification", "question-answering")
VARIANTS = {"int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
OUTPUTS = {
    "feature-extraction": ["last_hidden_state"],
    "sequence-classification": ["logits"],
    "token-classification": ["logits"],
    "question-answering": ["start_logits", "end_logits"],
}
ONNX_DIR, ONNX_FILE = "onnx", "model.onnx"
TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| of the fp32 graph on the check batch
INSTALL = "pip install 'bertcli[onnx]'"
EXTERNAL_BYTES = 1_800_000_000  # above this the weights go to model.onnx.data (protobuf's 2 GB limit)
# the text half of the parity check (the other half: random ids of another batch size and length than the trace's)
CHECK_TEXTS = [
    ("A man is playing a guitar on the stage.", "Someone plays music."),
    ("The new movie is awesome, but the ending was far too long for my taste and the sound was poor.",
     "I did not like it."),
    ("Paris is the capital of France.", "Where is the Eiffel tower?"),
    ("Stocks fell sharply on Monday after the central bank raised interest rates again.", "Markets."),
]


@dataclass
class VariantReport:
    file: str
    bytes: int
    max_abs_diff: float  # against fp32 PyTorch on the check batches (real tokens)
    min_cosine: float | None = None  # feature-extraction: of the check texts' sentence vectors


@dataclass
class ExportResult:
    out: str
    family: str
    task: str
    inputs: list[str]
    outputs: list[str]
    file: str
    bytes: int
    max_abs_diff: float
    check_batches: list[list[int]]  # (B, T) of the parity checks
    variants: dict[str, VariantReport] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require_onnx(variants: tuple[str, ...] = ()) -> None:
    """onnx, onnxscript and onnxruntime (and onnxconverter-common for fp16), else what to install."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if "fp16" in variants:
        try:
            import onnxconverter_common  # noqa: F401
        except ImportError:
            missing.append("onnxconverter-common")
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}, not installed; install them with {INSTALL}")


def check_options(fmt: str, task: str, variants: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if fmt not in FORMATS:
        raise ConfigError(f"--format '{fmt}': valid values: {', '.join(FORMATS)}")
    if task not in TASKS:
        raise ConfigError(f"--task '{task}': valid values: {', '.join(TASKS)}")
    for v in variants:
        if v not in VARIANTS:
            raise ConfigError(f"--variant '{v}': valid values: {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(variants))


def detect_task(ckpt) -> str:
    """The task of a checkpoint's heads: the head the checkpoint was fine-tuned with, else the encoder."""
    heads = ckpt.heads
    if "qa" in heads:
        return "question-answering"
    if "classifier" in heads:
        archs = ckpt.hf_config.get("architectures")
        arch = str(archs[0]) if isinstance(archs, list) and archs else ""
        # the rule of bertcli.predict.load_classifier: ModernBERT's two classifiers both have head.*
        if (ckpt.bertcli.get("task") == "token-classification" or arch.endswith("ForTokenClassification")
                or not heads & {"pooler", "pre_classifier", "head"}):
            return "token-classification"
        return "sequence-classification"
    return "feature-extraction"


def _load_module(model_dir: str | Path, task: str):
    """The PyTorch module of ``task`` with the checkpoint's weights (fp32, CPU, eval), by the loaders of the
    commands that run it (so the same head checks apply)."""
    if task == "feature-extraction":
        from bertcli.checkpoint import load_encoder

        return load_encoder(model_dir)[0]
    if task == "sequence-classification":
        from bertcli.predict import load_classifier

        return load_classifier(model_dir, device="cpu", precision="fp32").model
    if task == "token-classification":
        from bertcli.tasks.token_classification import load_token_model

        return load_token_model(model_dir)
    from bertcli.tasks.question_answering import load_qa_model

    return load_qa_model(model_dir)


def _graph_module(model, token_types: bool):
    """``model`` behind a forward of exactly the graph's inputs, its outputs a tuple."""
    from torch import nn

    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def run(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids, attention_mask, token_type_ids)
            return tuple(out) if isinstance(out, tuple) else (out,)

    class WithTypes(Graph):
        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.run(input_ids, attention_mask, token_type_ids)

    class WithoutTypes(Graph):
        def forward(self, input_ids, attention_mask):
            return self.run(input_ids, attention_mask, None)

    return (WithTypes if token_types else WithoutTypes)().eval()


def sample_batch(config, batch: int, length: int, seed: int, cls_id: int, sep_id: int):
    """A padded batch of random token ids: row b has length - 2 * b real tokens (at least 3), [CLS] first
    and [SEP] last, padding after; token types 0 then 1 halfway (where the family has types)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=g)
    ids[ids == config.pad_token_id] = (config.pad_token_id + 1) % config.vocab_size
    mask = torch.zeros(batch, length, dtype=torch.long)
    types = torch.zeros(batch, length, dtype=torch.long)
    for b in range(batch):
        n = max(3, length - 2 * b)
        ids[b, 0], ids[b, n - 1] = cls_id, sep_id
        ids[b, n:] = config.pad_token_id
        mask[b, :n] = 1
        if config.type_vocab_size >= 2:
            types[b, n // 2:n] = 1
    return ids, mask, types


def _feeds(names: list[str], ids, mask, types) -> dict[str, Any]:
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {n: values[n].numpy() for n in names}


def _compare(task: str, reference: list, got: list, mask, pooling: str | None) -> tuple[float, float | None]:
    """(max |got - reference| on real tokens, min cosine of the pooled vectors for an encoder)."""
    import numpy as np

    keep = mask.numpy().astype(bool)
    diff = 0.0
    for ref, out in zip(reference, got, strict=True):
        d = np.abs(np.asarray(out, dtype=np.float64) - ref.astype(np.float64))
        if d.ndim >= 2 and d.shape[:2] == keep.shape:  # per-token outputs: real tokens only
            d = d[keep]
        diff = max(diff, float(d.max()))
    cosine = None
    if task == "feature-extraction":
        import torch

        from bertcli.heads import pool

        a = pool(torch.from_numpy(reference[0]).double(), mask, pooling)
        b = pool(torch.from_numpy(np.asarray(got[0])).double(), mask, pooling)
        cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
    return diff, cosine


def _sentence_settings(ckpt) -> dict[str, Any]:
    """Pooling, normalisation and max length as ``bertcli embed`` uses them (bertcli.embed._encoder_for)."""
    sentence = ckpt.sentence or {}
    return {
        "pooling": sentence.get("pooling") or "mean",
        "normalize": bool(sentence.get("normalize", True)) if sentence else True,
        "max_seq_length": min(int(sentence.get("max_seq_length") or ckpt.config.max_length), ckpt.config.max_length),
    }


def _check_out(out: Path) -> None:
    """``--out`` is new, empty, or an earlier export (replaced whole); anything else is refused."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a directory for the export")
    if not any(out.iterdir()):
        return
    try:
        block = json.loads((out / "config.json").read_text()).get("bertcli") or {}
    except (OSError, ValueError, AttributeError):
        block = {}
    if not isinstance(block, dict) or "onnx" not in block:
        raise ConfigError(f"--out {out}: exists and is not an earlier bertcli export; choose a new or empty "
                          "directory (an earlier export is replaced whole)")


def export_onnx(model: str | Path, out: str | Path, *, task: str = "auto", variants: tuple[str, ...] = (),
                fmt: str = "onnx", opset: int | None = None) -> ExportResult:
    """Export checkpoint ``model`` to the directory ``out`` (see the module docstring); returns what was
    written and the parity of every graph with PyTorch."""
    from bertcli.checkpoint import (
        load_checkpoint,
        load_tokenizer,
        replace_dir,
        temp_dir_for,
        write_sentence_config,
    )
    from bertcli.paths import check_outputs
    from bertcli.tokenizer import pad_batch

    t0 = time.perf_counter()
    variants = check_options(fmt, task, variants)
    check_outputs({"--out": out}, {"--model": model})
    out = Path(out)
    _check_out(out)
    require_onnx(variants)
    import torch

    from bertcli.model import BertModel

    ckpt = load_checkpoint(model)
    config = ckpt.config
    task = detect_task(ckpt) if task == "auto" else task
    module = _load_module(model, task).float().cpu().eval()  # model, not ckpt.path: a LoRA adapter's is its base
    for m in module.modules():
        if isinstance(m, BertModel):
            m.exporting = True
    token_types = config.type_vocab_size >= 2
    inputs = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_types else [])
    outputs = OUTPUTS[task]
    tok = load_tokenizer(ckpt.path, config.vocab_size)
    graph = _graph_module(module, token_types)
    limit = config.max_length
    trace = sample_batch(config, 2, min(16, limit), 0, tok.cls_id, tok.sep_id)
    check = sample_batch(config, 3, min(27, limit), 1, tok.cls_id, tok.sep_id)  # another B and T, padded
    ids, types, _ = tok.encode_ids([a for a, _ in CHECK_TEXTS], [b for _, b in CHECK_TEXTS], max_length=limit)
    text = pad_batch(ids, types if token_types else None, tok.pad_id)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create its parent directory ({exc.strerror})") from None
    tmp = temp_dir_for(out)
    try:
        (tmp / ONNX_DIR).mkdir()
        path = tmp / ONNX_DIR / ONNX_FILE
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
        dims = {name: {0: batch, 1: seq} for name in inputs}
        size = sum(p.numel() * p.element_size() for p in module.parameters())
        if size > EXTERNAL_BYTES and variants:
            raise ExportError(f"{ckpt.path}: --variant is not supported for models over 2 GB (this one: "
                              f"{size / 1e9:.1f} GB of weights, kept in onnx/model.onnx.data); export without it")
        try:
            with torch.no_grad(), quiet():
                torch.onnx.export(graph, trace[:len(inputs)], str(path), input_names=inputs, output_names=outputs,
                                  dynamic_shapes=dims, opset_version=opset, dynamo=True, verbose=False,
                                  external_data=size > EXTERNAL_BYTES)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ExportError(
                f"{ckpt.path}: the {config.family} {task} model cannot be exported to ONNX yet "
                f"({type(exc).__name__}: {first}); run it with bertcli itself, or report the family"
            ) from None
        fp32 = session(path)
        check_dynamic(fp32, inputs, config.family)
        pooling = _pooling(ckpt, task)
        with torch.no_grad():
            references = [[t.numpy() for t in graph(*b[:len(inputs)])] for b in (check, text)]

        def parity(sess) -> tuple[float, float | None]:
            """Max diff over both check batches; the cosine of the text batch's sentence vectors."""
            (d1, _), (d2, cos) = (_compare(task, ref, _run(sess, inputs, b), b[1], pooling)
                                  for ref, b in zip(references, (check, text), strict=True))
            return max(d1, d2), cos

        diff, _ = parity(fp32)
        if not diff <= TOLERANCE:
            raise ExportError(
                f"{ckpt.path}: the exported {config.family} graph differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) "
                f"on padded batches of {tuple(check[0].shape)} and {tuple(text[0].shape)}; nothing was written; "
                "please report this"
            )
        reports = {}
        for name in variants:
            vpath = tmp / ONNX_DIR / VARIANTS[name]
            (_int8 if name == "int8" else _fp16)(path, vpath)
            reports[name] = VariantReport(f"{ONNX_DIR}/{VARIANTS[name]}", _bytes(vpath), *parity(session(vpath)))
        hf = dict(ckpt.hf_config)
        block = dict(hf.get("bertcli") or {})
        block["onnx"] = {"task": task, "inputs": inputs, "outputs": outputs, "file": f"{ONNX_DIR}/{ONNX_FILE}",
                         "variants": {k: v.file for k, v in reports.items()}, "max_abs_diff": diff}
        hf["bertcli"] = block
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        tok.save(tmp)
        if task == "feature-extraction":
            s = _sentence_settings(ckpt)
            write_sentence_config(tmp, config.hidden_size, s["pooling"], s["normalize"], s["max_seq_length"])
            extra = ckpt.path / "config_sentence_transformers.json"  # prompts, similarity function
            if extra.is_file():
                shutil.copyfile(extra, tmp / extra.name)
        replace_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ExportError(f"--out {out}: writing the export failed ({exc.strerror or exc})") from None
        raise
    return ExportResult(
        out=str(out), family=config.family, task=task, inputs=inputs, outputs=outputs,
        file=f"{ONNX_DIR}/{ONNX_FILE}", bytes=_bytes(out / ONNX_DIR / ONNX_FILE), max_abs_diff=diff,
        check_batches=[list(check[0].shape), list(text[0].shape)], variants=reports, seconds=time.perf_counter() - t0,
    )


@contextlib.contextmanager
def quiet():
    """No warnings, prints or log lines from the exporter and the quantiser (stdout may carry --json)."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _pooling(ckpt, task: str) -> str | None:
    return _sentence_settings(ckpt)["pooling"] if task == "feature-extraction" else None


def _bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session of ``path`` (``threads``: intra-op threads, default onnxruntime's)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(sess, inputs: list[str], batch) -> list:
    try:
        return sess.run(None, _feeds(inputs, *batch))
    except Exception as exc:  # onnxruntime's own errors (a fixed dimension, a missing kernel)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"onnxruntime cannot run the exported graph on a padded batch of "
                          f"{tuple(batch[0].shape)} ({first}); nothing was written; please report this") from None


def check_dynamic(sess, inputs: list[str], family: str) -> None:
    """Every input's batch and sequence axes are symbolic, not the traced sizes."""
    for i in sess.get_inputs():
        if i.name in inputs and not all(isinstance(d, str) for d in i.shape):
            raise ExportError(f"the {family} graph has fixed dimensions {i.shape} for {i.name}: this family "
                              "cannot be exported with dynamic shapes yet; please report it")


def _int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the MatMul / Gemm weights, per output channel (activations quantised per
    call). Per channel: MiniLM's sentence vectors keep cosine 0.993 to fp32 on the check texts, 0.952 per tensor."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])


def _fp16(src: Path, dst: Path) -> None:
    """Weights and compute in fp16, fp32 at the inputs and outputs (onnxconverter-common)."""
    import onnx
    from onnxconverter_common import float16

    with quiet():
        model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def file_sizes(out: str | Path) -> dict[str, int]:
    """Every file of an export and its size (for the summary)."""
    root = Path(out)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


__all__ = ["ExportError", "ExportResult", "export_onnx", "detect_task", "session", "sample_batch", "file_sizes",
           "require_onnx"]
