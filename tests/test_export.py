"""bertcli export --format onnx: the graph against PyTorch in onnxruntime, the layout that sentence-transformers'
ONNX backend loads, the variants, and the errors.

Parity is checked here on batch sizes and lengths the trace never saw (1 x 40 without padding, 5 x 9 padded),
against bertcli's ordinary inference path (not the export path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TEXTS = ["A man is playing a guitar.", "A woman slices an onion on a wooden board in the kitchen.", "",
         "Stocks fell sharply on Monday.", "Two dogs run through the snow chasing a red ball, barking loudly."]


@pytest.fixture(scope="module")
def tiny_export(tiny_model_dir, tmp_path_factory) -> Path:
    from bertcli.export import export_onnx

    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    export_onnx(tiny_model_dir, out, variants=("int8", "fp16"))
    return out


def batches(vocab: int, pad: int, seed: int = 3):
    """(1, 40) unpadded and (5, 9) padded random batches: neither is the trace's (2, 16)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for B, T in ((1, 40), (5, 9)):
        ids = torch.randint(pad + 1, vocab, (B, T), generator=g)
        mask = torch.ones(B, T, dtype=torch.long)
        for b in range(1, B):
            mask[b, T - b:] = 0
            ids[b, T - b:] = pad
        types = torch.zeros(B, T, dtype=torch.long)
        types[:, T // 2:] = 1
        out.append((ids, mask, types * mask))
    return out


def run(path: Path, ids, mask, types) -> list[np.ndarray]:
    from bertcli.export import session

    s = session(path, threads=1)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return s.run(None, {i.name: feeds[i.name].numpy() for i in s.get_inputs()})


def test_encoder_graph_equals_pytorch_on_new_shapes(tiny_model_dir, tiny_export):
    import onnx
    import torch

    from bertcli.checkpoint import load_encoder

    graph = onnx.load(str(tiny_export / "onnx" / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.graph.output] == ["last_hidden_state"]
    for i in graph.graph.input:  # batch and sequence axes are symbolic
        assert [d.dim_param for d in i.type.tensor_type.shape.dim] == ["batch", "sequence"]
    model, tok, ckpt = load_encoder(tiny_model_dir)
    for ids, mask, types in batches(ckpt.config.vocab_size, tok.pad_id):
        with torch.no_grad():
            ref = model(ids, mask, types).numpy()
        (got,) = run(tiny_export / "onnx" / "model.onnx", ids, mask, types)
        keep = mask.numpy().astype(bool)
        assert got.shape == ref.shape
        assert np.abs(got - ref)[keep].max() <= 1e-4


def test_the_directory_is_a_sentence_transformers_model(tiny_model_dir, tiny_export):
    cfg = json.loads((tiny_export / "config.json").read_text())
    assert cfg["model_type"] == "bert"
    block = cfg["bertcli"]["onnx"]
    assert block["task"] == "feature-extraction" and block["outputs"] == ["last_hidden_state"]
    assert block["variants"] == {"int8": "onnx/model_int8.onnx", "fp16": "onnx/model_fp16.onnx"}
    assert block["max_abs_diff"] <= 1e-4
    modules = json.loads((tiny_export / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((tiny_export / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 32
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                 "sentence_bert_config.json"):
        assert (tiny_export / name).is_file(), name
    assert not (tiny_export / "model.safetensors").exists()  # an ONNX export, not a second checkpoint


def test_variants_run_and_stay_close(tiny_model_dir, tiny_export):
    import torch

    from bertcli.checkpoint import load_encoder

    model, tok, ckpt = load_encoder(tiny_model_dir)
    ids, mask, types = batches(ckpt.config.vocab_size, tok.pad_id)[1]
    with torch.no_grad():
        ref = model(ids, mask, types).numpy()
    keep = mask.numpy().astype(bool)
    for name, bound in (("int8", 0.05), ("fp16", 0.01)):
        (got,) = run(tiny_export / "onnx" / f"model_{name}.onnx", ids, mask, types)
        assert got.dtype == np.float32  # fp32 at the graph's edges
        assert np.abs(got - ref)[keep].max() < bound, name
    int8 = (tiny_export / "onnx" / "model_int8.onnx").stat().st_size
    fp16 = (tiny_export / "onnx" / "model_fp16.onnx").stat().st_size
    assert fp16 < 0.6 * (tiny_export / "onnx" / "model.onnx").stat().st_size
    assert int8 < (tiny_export / "onnx" / "model.onnx").stat().st_size


def test_cli_json_is_one_line_and_replaces_an_earlier_export(tiny_model_dir, tmp_path, cli):
    import onnx

    out = tmp_path / "out"
    for opset in (20, 18):  # the second run replaces the first export whole
        result = cli("export", "--model", tiny_model_dir, "--format", "onnx", "--out", out, "--json",
                     "--opset", opset)
        assert result.exit_code == 0, result.output
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, result.stdout
        summary = json.loads(lines[0])
        assert summary["task"] == "feature-extraction" and summary["max_abs_diff"] <= 1e-4
        assert summary["check_batches"][0] != [2, 16]
    graph = onnx.load(str(out / "onnx" / "model.onnx"))
    assert [o.version for o in graph.opset_import if o.domain == ""] == [18]
    assert not list(tmp_path.glob(".out.*"))  # no temporary directories left


def test_cli_errors(tiny_model_dir, tmp_path, cli, monkeypatch):
    one_error_line(cli("export", "--model", tiny_model_dir, "--format", "tflite", "--out", tmp_path / "a"),
                   "--format 'tflite'", "onnx")
    one_error_line(cli("export", "--model", tiny_model_dir, "--out", tmp_path / "a", "--variant", "int4"),
                   "--variant 'int4'", "int8", "fp16")
    one_error_line(cli("export", "--model", tiny_model_dir, "--out", tiny_model_dir), "same path")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    one_error_line(cli("export", "--model", tiny_model_dir, "--out", busy), "not an earlier bertcli export")
    assert (busy / "notes.txt").read_text() == "keep me"
    one_error_line(cli("export", "--model", tiny_model_dir, "--out", tmp_path / "b", "--task",
                       "question-answering"), "question-answering head")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    one_error_line(cli("export", "--model", tiny_model_dir, "--out", tmp_path / "c"), "onnxruntime",
                   "pip install 'bertcli[onnx]'")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
