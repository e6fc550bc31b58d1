"""bertcli export across the family and the task heads: each graph equals bertcli's PyTorch model in onnxruntime
on shapes the trace never saw, and Optimum's ORTModel class of the task loads the export and gives the same
outputs under the names it expects (logits; start_logits / end_logits); sentence-transformers' CrossEncoder
(backend="onnx") loads a sequence-classifier export with bertcli's logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_export import batches, run

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SHAPE = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=130)
EXTRA = {"albert": dict(embedding_size=16, num_layers=3, num_hidden_groups=1), "electra": dict(embedding_size=16),
         "distilbert": dict(type_vocab_size=0), "roberta": dict(type_vocab_size=1),
         "deberta-v2": dict(position_buckets=8, max_relative_positions=64),
         # a local window shorter than the test batches: the band mask is in the graph
         "modernbert": dict(local_attention=8, global_attn_every_n_layers=2, num_layers=3)}
OPTIMUM = {"sequence-classification": "ORTModelForSequenceClassification",
           "token-classification": "ORTModelForTokenClassification",
           "question-answering": "ORTModelForQuestionAnswering"}


def make(out: Path, tokenizer_dir: Path, family: str, task: str):
    """A tiny random ``family`` checkpoint with the ``task`` head; returns (dir, the PyTorch module)."""
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import (
        BertForPreTraining,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
    )
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig.for_family(family, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                **{**SHAPE, **EXTRA.get(family, {})})
    torch.manual_seed(0)
    build, saved, labels = {
        "feature-extraction": (lambda: BertForPreTraining(cfg, nsp=False), "pretraining", 0),
        "sequence-classification": (lambda: BertForSequenceClassification(cfg, 3), "classification", 3),
        "token-classification": (lambda: BertForTokenClassification(cfg, 5), "token-classification", 5),
        "question-answering": (lambda: BertForQuestionAnswering(cfg), "question-answering", 0),
    }[task]
    model = build().eval()
    extra = {"id2label": {str(i): f"L{i}" for i in range(labels)}} if labels else None
    path = save_checkpoint(out, model.state_dict(), cfg, tok, task=saved, hf_extra=extra)
    return path, (model.bert if task == "feature-extraction" else model), tok


@pytest.mark.parametrize("family,task", [
    ("roberta", "sequence-classification"),
    ("distilbert", "token-classification"),
    ("electra", "question-answering"),
    ("albert", "feature-extraction"),
    ("deberta-v2", "feature-extraction"),
    ("modernbert", "feature-extraction"),
])
def test_family_and_head_graphs_equal_pytorch(family, task, tmp_path, minilm_dir):
    import torch

    from bertcli.export import OUTPUTS, export_onnx

    ckpt, model, tok = make(tmp_path / "model", minilm_dir, family, task)
    result = export_onnx(ckpt, tmp_path / "onnx")  # the task is found from the checkpoint's head
    assert result.task == task and result.family == family and result.outputs == OUTPUTS[task]
    has_types = family in ("electra", "albert")
    assert ("token_type_ids" in result.inputs) == has_types
    for ids, mask, types in batches(model.config.vocab_size, tok.pad_id):
        with torch.no_grad():
            ref = model(ids, mask, types if has_types else None)
        ref = [t.numpy() for t in (ref if isinstance(ref, tuple) else (ref,))]
        got = run(tmp_path / "onnx" / "onnx" / "model.onnx", ids, mask, types)
        keep = mask.numpy().astype(bool)
        for r, g in zip(ref, got, strict=True):
            assert g.shape == r.shape
            d = np.abs(g - r)
            assert (d[keep] if d.shape[:2] == keep.shape else d).max() <= 1e-4
        if task in OPTIMUM:
            optimum = pytest.importorskip("optimum.onnxruntime")
            ort_model = getattr(optimum, OPTIMUM[task]).from_pretrained(tmp_path / "onnx", subfolder="onnx")
            feeds = {"input_ids": ids, "attention_mask": mask, **({"token_type_ids": types} if has_types else {})}
            out = ort_model(**feeds)
            for name, r in zip(OUTPUTS[task], ref, strict=True):
                d = np.abs(getattr(out, name).numpy() - r)
                assert (d[keep] if d.shape[:2] == keep.shape else d).max() <= 1e-4, name
    if task == "sequence-classification":  # sentence-transformers' CrossEncoder, backend="onnx": bertcli's logits
        st = pytest.importorskip("sentence_transformers")
        from bertcli.predict import load_classifier

        pairs = [("A man is playing a guitar.", "Someone plays music."), ("Paris is in France.", "No.")]
        ce = st.CrossEncoder(str(tmp_path / "onnx"), backend="onnx", device="cpu",
                             model_kwargs={"file_name": "onnx/model.onnx"})
        got = np.asarray(ce.predict(pairs, activation_fn=None))
        want, _ = load_classifier(ckpt, device="cpu", precision="fp32").logits([a for a, _ in pairs],
                                                                                [b for _, b in pairs])
        assert np.abs(got - want).max() <= 1e-4
