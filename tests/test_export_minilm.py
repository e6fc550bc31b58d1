"""bertcli export on the real all-MiniLM-L6-v2 weights: the fp32 graph equals bertcli's PyTorch encoder, the
sentence-transformers ONNX backend loads the export and gives bertcli's vectors, and the int8 variant keeps its
stated cosine (README: >= 0.96; 0.966 the minimum over the STS-B sentences)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_export import TEXTS, run

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def minilm_export(minilm_dir, tmp_path_factory) -> Path:
    from bertcli.export import export_onnx

    out = tmp_path_factory.mktemp("export") / "minilm-onnx"
    export_onnx(minilm_dir, out, variants=("int8",))
    return out


def test_minilm_graph_equals_pytorch(minilm_dir, minilm_export):
    import torch

    from bertcli.checkpoint import load_encoder

    model, tok, ckpt = load_encoder(minilm_dir)
    ids, types, _ = tok.encode_ids(TEXTS, max_length=128)
    from bertcli.tokenizer import pad_batch

    ids, mask, types = pad_batch(ids, types, tok.pad_id)
    with torch.no_grad():
        ref = model(ids, mask, types).numpy()
    (got,) = run(minilm_export / "onnx" / "model.onnx", ids, mask, types)
    assert np.abs(got - ref)[mask.numpy().astype(bool)].max() <= 1e-4


def test_sentence_transformers_onnx_backend_gives_bertcli_vectors(minilm_dir, minilm_export):
    pytest.importorskip("optimum.onnxruntime", reason="sentence-transformers' ONNX backend needs Optimum")
    st = pytest.importorskip("sentence_transformers")

    from bertcli.embed import encode

    model = st.SentenceTransformer(str(minilm_export), backend="onnx", device="cpu",
                                   model_kwargs={"file_name": "onnx/model.onnx"})
    assert type(model[0].auto_model).__name__ == "ORTModelForFeatureExtraction"
    got = model.encode(TEXTS)
    ours = encode(TEXTS, minilm_dir, device="cpu", precision="fp32", return_numpy=True)
    torch_st = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS)
    assert np.abs(got - ours).max() <= 1e-4
    assert np.abs(got - torch_st).max() <= 1e-4


def test_int8_minilm_keeps_its_stated_cosine(minilm_dir, minilm_export):
    """--variant int8 on real MiniLM: the sentence vectors keep cosine >= 0.96 to fp32 PyTorch (README)."""
    import torch

    from bertcli.checkpoint import load_tokenizer
    from bertcli.embed import encode
    from bertcli.heads import pool
    from bertcli.tokenizer import pad_batch

    tok = load_tokenizer(minilm_dir)
    ids, types, _ = tok.encode_ids(TEXTS, max_length=128)
    ids, mask, types = pad_batch(ids, types, tok.pad_id)
    (hidden,) = run(minilm_export / "onnx" / "model_int8.onnx", ids, mask, types)
    vec = torch.nn.functional.normalize(pool(torch.from_numpy(hidden), mask, "mean"), dim=-1).numpy()
    ref = encode(TEXTS, minilm_dir, device="cpu", precision="fp32", return_numpy=True)
    assert (vec * ref).sum(1).min() >= 0.96
    cfg = json.loads((minilm_export / "config.json").read_text())
    assert cfg["bertcli"]["onnx"]["variants"] == {"int8": "onnx/model_int8.onnx"}
