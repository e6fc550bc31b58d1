"""bertcli.embed and `bertcli embed`: parity with sentence-transformers, batching, I/O, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from bertcli.embed import (
    EmbedResult,
    bucket_width,
    embed,
    embed_poolings,
    encode,
    load,
    plan_batches,
    similarity,
    write_embeddings,
)
from bertcli.errors import ConfigError, DataError

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Three dogs are running through a field of tall grass while the sun sets behind the hills.",
    "The cat sat.",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates by half a point.",
    "Hello!",
    "A man plays the guitar.",
    "Naïve café owners in Zürich serve crème brûlée; prices rose 12% in 2023.",
    "Is this the right way to the station?",
    "Obama signs the budget bill into law.",
    "A child is riding a horse.",
    "Two people are walking on a beach near the ocean during a cloudy afternoon.",
]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return load(minilm_dir, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def st_model(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_dir), device="cpu")


def test_matches_sentence_transformers(minilm, st_model):
    # small budget: many batches, mixed lengths, padding + masks; order must come back
    ours = encode(SENTENCES, minilm, batch_tokens=64)
    ref = st_model.encode(SENTENCES, convert_to_tensor=True).float()
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cos.min().item() >= 0.99999, cos
    assert torch.allclose(ours, ref, atol=1e-4)


def test_checkpoint_defaults(minilm, tiny_model_dir):
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    tiny = load(tiny_model_dir, device="cpu", precision="fp32")  # no sentence-transformers files
    assert (tiny.pooling, tiny.normalize, tiny.max_length) == ("mean", True, 128)
    norms = encode(SENTENCES, tiny).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    raw = encode(SENTENCES, tiny, normalize=False).norm(dim=-1)
    assert not torch.allclose(raw, torch.ones_like(raw), atol=1e-3)


def test_bf16_close_to_fp32(minilm_dir, minilm):
    bf16 = load(minilm_dir, device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    a = encode(SENTENCES[:6], minilm)
    b = encode(SENTENCES[:6], bf16)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert cos.min().item() >= 0.999, cos
    assert b.dtype == torch.float32


def test_batch_budget_does_not_change_results(tiny_model_dir):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(SENTENCES).split()[: rng.randint(0, 12)]) for _ in range(60)]
    for mode in ("cls", "mean", "max"):
        one = encode(texts, tiny_model_dir, pooling=mode, batch_tokens=100_000)
        many = encode(texts, tiny_model_dir, pooling=mode, batch_tokens=16)
        single = torch.cat([encode([t], tiny_model_dir, pooling=mode) for t in texts[:10]])
        assert torch.allclose(one, many, atol=1e-5)
        assert torch.allclose(one[:10], single, atol=1e-5)


def test_plan_batches_covers_every_index_within_budget():
    rng = random.Random(1)
    lengths = [rng.randint(2, 40) for _ in range(500)] + [300]
    batches = plan_batches(lengths, 256)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        width = bucket_width(max(lengths[i] for i in b))
        assert len(b) == 1 or len(b) * width <= 256
    padded = sum(len(b) * bucket_width(lengths[b[0]]) for b in batches)
    assert padded < 1.1 * sum(lengths)  # sorted by length: little padding


def test_empty_text_and_truncation(tiny_model_dir):
    res = embed(["", "word " * 500, "short", ""], tiny_model_dir, max_length=16)
    assert isinstance(res, EmbedResult)
    assert res.stats.truncated == 1
    assert res.stats.count == 4 and res.stats.dim == 32 and res.stats.max_length == 16
    v = res.vectors
    assert torch.isfinite(v).all()
    assert torch.allclose(v[0], v[3])  # every empty text gets the [CLS] [SEP] vector
    assert abs(v[0].norm().item() - 1) < 1e-5


def test_max_length_above_positions_is_an_error(tiny_model_dir):
    with pytest.raises(ConfigError, match="max_position_embeddings 128"):
        encode(["x"], tiny_model_dir, max_length=1000)
    with pytest.raises(ConfigError, match="valid: cls, mean, max"):
        encode(["x"], tiny_model_dir, pooling="sum")


def test_load_is_cached_and_accepts_bundles(tiny_model_dir):
    from bertcli.checkpoint import load_encoder

    assert load(tiny_model_dir, device="cpu", precision="fp32") is load(tiny_model_dir, device="cpu", precision="fp32")
    a = encode(SENTENCES[:3], tiny_model_dir, device="cpu", precision="fp32")
    b = encode(SENTENCES[:3], load_encoder(tiny_model_dir), precision="fp32", return_numpy=True)
    assert isinstance(b, np.ndarray)
    np.testing.assert_allclose(a.numpy(), b, atol=1e-6)


def test_one_pass_many_poolings(tiny_model_dir):
    vecs, stats = embed_poolings(SENTENCES, tiny_model_dir, ["cls", "mean", "max"])
    assert set(vecs) == {"cls", "mean", "max"} and stats.pooling == "cls,mean,max"
    for p, v in vecs.items():
        assert torch.allclose(v, encode(SENTENCES, tiny_model_dir, pooling=p), atol=1e-6)
    assert not torch.allclose(vecs["cls"], vecs["mean"])


def test_similarity_shapes_and_types(tiny_model_dir):
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -3.0], [5.0, 0.0]])
    m = similarity(a, b)
    assert m.shape == (2, 3)
    assert m[0, 2].item() == pytest.approx(1.0) and m[1, 1].item() == pytest.approx(-1.0)
    assert m[0, 0].item() == pytest.approx(2**-0.5)
    assert similarity(a[0], b[0]) == pytest.approx(2**-0.5)
    pw = similarity(a.numpy(), b[:2].numpy(), pairwise=True)
    assert isinstance(pw, np.ndarray) and pw.tolist() == pytest.approx([2**-0.5, -1.0])
    with pytest.raises(ValueError, match="as many rows"):
        similarity(a, b, pairwise=True)
    s = similarity("A man plays guitar.", "A man plays guitar.", model=tiny_model_dir)
    assert s == pytest.approx(1.0, abs=1e-5)


def test_write_embeddings_formats(tmp_path):
    from safetensors.numpy import load_file

    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_embeddings(str(tmp_path / "v.npy"), v)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy", allow_pickle=False), v)
    write_embeddings(str(tmp_path / "v.safetensors"), torch.from_numpy(v), metadata={"pooling": "mean"})
    np.testing.assert_array_equal(load_file(str(tmp_path / "v.safetensors"))["embeddings"], v)
    write_embeddings(str(tmp_path / "v.jsonl"), v, ["a", "b"])
    rows = [json.loads(x) for x in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert rows[1] == {"index": 1, "text": "b", "embedding": [3.0, 4.0, 5.0]}
    with pytest.raises(DataError, match=r"unknown output format '\.txt'"):
        write_embeddings(str(tmp_path / "v.txt"), v)
    with pytest.raises(DataError, match="does not exist"):
        write_embeddings(str(tmp_path / "nope" / "v.npy"), v)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.jsonl", "v.npy", "v.safetensors"]  # no temp files


# ------------------------------------------------------------ CLI
def _rows(stdout):
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


def test_cli_embed_arguments_to_stdout(cli, tiny_model_dir):
    r = cli("embed", "--model", tiny_model_dir, "second text", "first", "", "--quiet")
    assert r.exit_code == 0, r.stderr
    rows = _rows(r.stdout)
    assert [x["text"] for x in rows] == ["second text", "first", ""]
    ref = encode(["second text", "first", ""], tiny_model_dir)
    np.testing.assert_allclose(np.array([x["embedding"] for x in rows]), ref.numpy(), atol=1e-6)


def test_cli_embed_files_and_stdin(cli, tiny_model_dir, tmp_path):
    txt = tmp_path / "in.txt"
    txt.write_text("alpha beta\ngamma\n\ndelta epsilon zeta\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    r = cli("embed", "--model", tiny_model_dir, "--input", txt, "--output", out, "--json")
    assert r.exit_code == 0, r.stderr
    summary = _rows(r.stdout)[0]
    assert summary["count"] == 4 and summary["dim"] == 32 and summary["truncated"] == 0
    arr = np.load(out, allow_pickle=False)
    ref = encode(["alpha beta", "gamma", "", "delta epsilon zeta"], tiny_model_dir).numpy()
    np.testing.assert_allclose(arr, ref, atol=1e-6)

    r = cli("embed", "--model", tiny_model_dir, "-", "--quiet", input="gamma\nalpha beta\n")
    assert r.exit_code == 0, r.stderr
    rows = _rows(r.stdout)
    np.testing.assert_allclose(rows[0]["embedding"], ref[1], atol=1e-6)

    csv_file = tmp_path / "t.csv"
    csv_file.write_text('id,text\n1,"gamma"\n2,"alpha beta"\n', encoding="utf-8")
    r = cli("embed", "--model", tiny_model_dir, "--input", csv_file, "--column", "text",
            "--output", tmp_path / "v.safetensors", "--quiet")
    assert r.exit_code == 0, r.stderr
    from safetensors.numpy import load_file

    np.testing.assert_allclose(load_file(str(tmp_path / "v.safetensors"))["embeddings"], ref[[1, 0]], atol=1e-6)


def test_cli_embed_truncation_summary(cli, tiny_model_dir):
    r = cli("embed", "--model", tiny_model_dir, "a " * 50, "b", "--max-length", "8", "--output", "-")
    assert r.exit_code == 0, r.stderr
    assert "1 truncated to 8 tokens" in r.stderr
    assert len(_rows(r.stdout)) == 2


def test_cli_embed_bad_input(cli, tiny_model_dir, tmp_path):
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("id,sentence\n1,hello\n", encoding="utf-8")
    r = cli("embed", "--model", tiny_model_dir, "--input", csv_file, "--column", "text")
    assert r.exit_code == 1
    assert "no column 'text'" in r.stderr and "'id', 'sentence'" in r.stderr

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nalso fine\ncaf\xe9 latin-1\n")
    r = cli("embed", "--model", tiny_model_dir, "--input", bad)
    assert r.exit_code == 1
    assert f"{bad}, line 3" in r.stderr

    r = cli("embed", "--model", tiny_model_dir, "x", "--output", tmp_path / "v.parquet")
    assert r.exit_code == 1 and "unknown output format '.parquet'" in r.stderr
    r = cli("embed", "--model", tiny_model_dir, "x", "--pooling", "sum")
    assert r.exit_code == 1 and "valid: cls, mean, max" in r.stderr
    r = cli("embed", "--model", tiny_model_dir)
    assert r.exit_code == 1 and "no input" in r.stderr
    assert "Traceback" not in r.stderr
