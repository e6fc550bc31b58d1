"""Bounded-memory streaming (bertcli.streaming): chunked runs equal one-chunk runs, row for row, in input
order, for embed (every output format), predict and similarity --pairs; the readers match the whole-file
readers; writers; an interrupted run leaves the old output untouched."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from bertcli.data.tables import read_table
from bertcli.data.text import read_lines
from bertcli.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

N = 20_000
WORDS = ("the a man woman dog cat plays runs guitar field sun house red blue quickly slowly film good bad "
         "awful lovely i it was is and on in of").split()


def _texts(n: int = N, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 7))) for _ in range(n)]


def write_inputs(d: Path) -> Path:
    """texts.txt (20,000 short texts) and pairs.csv (id, a, b, gold) in ``d``."""
    texts, other = _texts(), _texts(seed=1)
    (d / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    rng = random.Random(2)
    with open(d / "pairs.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "a", "b", "gold"])
        for i, (a, b) in enumerate(zip(texts, other, strict=True)):
            w.writerow([i, a, b, round(rng.uniform(0, 5), 2)])
    return d


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("stream"))


def _read(path: Path):
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))["embeddings"]
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in rows] == list(range(len(rows)))
    return [r["text"] for r in rows], np.array([r["embedding"] for r in rows], dtype=np.float32)


def _same_vectors(a, b) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-6)


@pytest.fixture(scope="module")
def one_chunk(tiny_model_dir, data, tmp_path_factory):
    """The 20,000 texts embedded in one chunk (.npy)."""
    from typer.testing import CliRunner

    from bertcli.cli.app import app

    out = tmp_path_factory.mktemp("one") / "one.npy"
    res = CliRunner().invoke(app, ["embed", "--model", str(tiny_model_dir), "--input", str(data / "texts.txt"),
                                   "--output", str(out), "--chunk-size", str(N), "--device", "cpu",
                                   "--precision", "fp32", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return np.load(out)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".jsonl", "-"])
def test_embed_chunked_equals_one_chunk(cli, tiny_model_dir, data, tmp_path, one_chunk, suffix):
    texts = read_lines(data / "texts.txt")
    args = ["embed", "--model", tiny_model_dir, "--input", data / "texts.txt", "--chunk-size", 1000,
            "--device", "cpu", "--precision", "fp32", "--quiet"]
    if suffix == "-":
        res = cli(*args)
        assert res.exit_code == 0, res.output
        out = tmp_path / "stdout.jsonl"
        out.write_text(res.stdout, encoding="utf-8")
    else:
        out = tmp_path / f"out{suffix}"
        assert cli(*args, "--output", out).exit_code == 0
    got = _read(out)
    if suffix in (".jsonl", "-"):
        got_texts, got = got
        assert got_texts == texts  # input order
    _same_vectors(got, one_chunk)
    assert got.shape[0] == N
    if suffix == ".npy":
        # input order: row i is the vector of text i (spot checks against a direct encode)
        from bertcli.embed import encode

        idx = [0, 1, 999, 1000, 12345, N - 1]
        direct = encode([texts[i] for i in idx], tiny_model_dir, device="cpu", precision="fp32", return_numpy=True)
        np.testing.assert_allclose(got[idx], direct, atol=2e-6)


def test_safetensors_metadata_and_stdin(cli, tiny_model_dir, tmp_path):
    texts = _texts(50, seed=3)
    out = tmp_path / "v.safetensors"
    res = cli("embed", "--model", tiny_model_dir, "-", "--output", out, "--chunk-size", 7, "--device", "cpu",
              "--quiet", input="".join(t + "\n" for t in texts))
    assert res.exit_code == 0, res.output
    from safetensors import safe_open

    with safe_open(str(out), "np") as f:
        meta = f.metadata()
        assert f.get_tensor("embeddings").shape == (50, 32)
    assert meta["pooling"] == "mean" and meta["model"] == str(tiny_model_dir)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------ an interrupted run
def test_interrupted_embed_leaves_old_output(cli, tiny_model_dir, data, tmp_path, monkeypatch):
    import bertcli.embed as embed_mod

    out = tmp_path / "vectors.npy"
    out.write_bytes(b"old contents")
    real, calls = embed_mod.embed_poolings, {"n": 0}

    def interrupt_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_mod, "embed_poolings", interrupt_on_third)
    res = cli("embed", "--model", tiny_model_dir, "--input", data / "texts.txt", "--output", out,
              "--chunk-size", 1000, "--device", "cpu", "--quiet")
    assert res.exit_code == 130
    assert calls["n"] == 3
    assert out.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npy"]  # no temporary file left


# ------------------------------------------------------------ readers and writers
TRICKY = [
    "\ufeffplain,first\r\nsecond line\r\n\r\nno newline at the end",
    "one\ntwo\n\n\nthree\n",
    "",
    "caf\xe9 in latin-1\nna\xefve\n",
]


@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("encoding", ["utf-8", "auto"])
def test_lines_input_matches_read_lines(text, encoding, tmp_path, monkeypatch):
    import bertcli.data.text as text_mod
    from bertcli.streaming import LinesInput

    monkeypatch.setattr(text_mod, "BLOCK", 5)  # many block boundaries, inside multi-byte characters too
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("latin-1" if "caf" in text and encoding == "auto" else "utf-8"))
    expected = read_lines(path, encoding)
    with LinesInput(path, encoding) as src:
        assert src.total == len(expected)
        got = [t for chunk in src.chunks(2) for t in chunk]
    assert got == expected


def test_undecodable_byte_is_located_across_blocks(tmp_path, monkeypatch):
    import bertcli.data.text as text_mod
    from bertcli.streaming import LinesInput

    raw = "".join(f"line {i}\n" for i in range(40)).encode() + b"bad \xff byte\n"
    path = tmp_path / "t.txt"
    path.write_bytes(raw)
    with pytest.raises(DataError) as whole:
        read_lines(path)
    monkeypatch.setattr(text_mod, "BLOCK", 16)
    with pytest.raises(DataError) as streamed:
        LinesInput(path)
    assert str(streamed.value) == str(whole.value)
    assert "line 41" in str(whole.value)


TABLES = {
    "q.csv": 'id,text\n1,"a ""quoted""\nnewline"\n\n2,plain\r\n3,"x,y"\n',
    "cr.csv": "id,text\r1,lone cr\r2,again\r",
    "h.tsv": "id\ttext\n1\tone\n2\ttwo\n",
    "r.jsonl": '{"id": 1, "text": "a"}\n\n{"text": "b", "extra": 2}\n',
}


@pytest.mark.parametrize("name", sorted(TABLES))
@pytest.mark.parametrize("header", [True, False])
def test_table_input_matches_read_table(name, header, tmp_path, monkeypatch):
    import bertcli.data.text as text_mod
    from bertcli.streaming import TableInput

    if not header and name.endswith(".jsonl"):
        pytest.skip("JSONL has no header option")
    monkeypatch.setattr(text_mod, "BLOCK", 7)
    path = tmp_path / name
    path.write_text(TABLES[name], encoding="utf-8", newline="")
    whole = read_table(path, header=header)
    with TableInput(path, header=header) as src:
        assert src.total == len(whole.rows) and src.columns == whole.columns
        chunks = list(src.chunks(1))
    assert [r for c in chunks for r in c.rows] == whole.rows
    assert [line for c in chunks for line in c.lines] == whole.lines
    assert all(c.columns == whole.columns for c in chunks)


@pytest.mark.parametrize("kind", ["npy", "safetensors"])
def test_writer_with_unknown_total_rewrites_the_header(kind, tmp_path):
    from bertcli.streaming import EmbeddingWriter

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 5)).astype(np.float32) for n in (3, 0, 11)]
    out = tmp_path / f"v.{kind}"
    with EmbeddingWriter(str(out), 5, metadata={"k": "v"}) as w:
        for p in parts:
            w.write(p)
    np.testing.assert_array_equal(_read(out), np.concatenate(parts))
    if kind == "npy":
        assert np.load(out, mmap_mode="r").shape == (14, 5)


def test_writer_row_count_mismatch_is_an_error(tmp_path):
    from bertcli.streaming import EmbeddingWriter

    out = tmp_path / "v.npy"
    out.write_bytes(b"old")
    with pytest.raises(DataError, match="expected 4 rows but 3"):
        with EmbeddingWriter(str(out), 2, total=4) as w:
            w.write(np.zeros((3, 2), np.float32))
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]
