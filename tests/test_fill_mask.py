"""bertcli fill-mask: the ranking of transformers' BertForMaskedLM / fill-mask pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from bertcli.errors import CheckpointError, DataError

TEXTS = ["The capital of France is [MASK].", "I [MASK] this movie, it was [MASK]!"]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory, minilm_dir):
    """A tiny random checkpoint with MLM + NSP heads (random weights give spread-out rankings)."""
    from tests.conftest import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("fm") / "model", minilm_dir, seed=3)


def test_matches_transformers(mlm_dir):
    from transformers import AutoTokenizer, BertForMaskedLM, pipeline

    from bertcli.fill_mask import fill_mask

    ours = fill_mask(mlm_dir, TEXTS, top_k=5, device="cpu")
    assert [len(r) for r in ours] == [1, 2]
    hf = BertForMaskedLM.from_pretrained(mlm_dir).eval()
    tok = AutoTokenizer.from_pretrained(mlm_dir)
    for text, results in zip(TEXTS, ours, strict=True):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = hf(**enc).logits[0]
        positions = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten().tolist()
        assert [r.position for r in results] == positions
        for r, pos in zip(results, positions, strict=True):
            p, ids = logits[pos].softmax(-1).topk(5)
            assert [c.id for c in r.candidates] == ids.tolist()
            assert torch.allclose(torch.tensor([c.score for c in r.candidates]), p, atol=1e-5)
    # the pipeline itself (single mask)
    pipe = pipeline("fill-mask", model=hf, tokenizer=tok, top_k=5, device="cpu")
    got = pipe(TEXTS[0])
    assert [g["token"] for g in got] == [c.id for c in ours[0][0].candidates]
    assert [g["score"] for g in got] == pytest.approx([c.score for c in ours[0][0].candidates], abs=1e-5)


def test_cli_json_and_table(cli, mlm_dir):
    r = cli("fill-mask", "--model", mlm_dir, *TEXTS, "--top-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [len(x["masks"]) for x in rows] == [1, 2]
    assert all(len(m["candidates"]) == 3 for x in rows for m in x["masks"])
    assert "[MASK]" not in rows[0]["filled"]
    r = cli("fill-mask", "--model", mlm_dir, TEXTS[0], "--device", "cpu")
    assert r.exit_code == 0 and "probability" in r.stdout


def test_errors(cli, mlm_dir, minilm_dir):
    from bertcli.fill_mask import FillMask

    with pytest.raises(DataError, match=r"no \[MASK\]"):
        FillMask(mlm_dir, device="cpu").predict(["nothing to fill"])
    with pytest.raises(CheckpointError, match="masked-language-model head"):
        FillMask(minilm_dir, device="cpu")
    r = cli("fill-mask", "--model", mlm_dir, "no mask here", "--device", "cpu")
    assert r.exit_code == 1 and "[MASK]" in r.stderr
