"""Bounded-memory streaming of `predict` and `similarity --pairs`: chunks of 1,000 rows give the same rows,
in input order, as one chunk of 20,000; correlations over every pair; an interrupted predict leaves the
old output untouched. (The embed side and the readers / writers: test_streaming.py.)"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from test_streaming import N, write_inputs

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_inputs(tmp_path_factory.mktemp("stream"))


@pytest.fixture(scope="module")
def clf_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from test_predict import _train

    return _train(tiny_model_dir, tmp_path_factory.mktemp("clf"))


def _table(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


def _same_rows(a: list[dict], b: list[dict], numeric: list[str]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k not in numeric} == {k: v for k, v in rb.items() if k not in numeric}
    for col in numeric:
        np.testing.assert_allclose([float(r[col]) for r in a], [float(r[col]) for r in b], atol=2e-6)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_predict_chunked_equals_one_chunk(cli, clf_dir, data, tmp_path, suffix):
    outs = []
    for chunk in (1000, N):
        out = tmp_path / f"pred-{chunk}{suffix}"
        res = cli("predict", "--model", clf_dir, data / "pairs.csv", "--text-column", "a", "--output", out,
                  "--chunk-size", chunk, "--device", "cpu", "--precision", "fp32", "--quiet")
        assert res.exit_code == 0, res.output
        outs.append(_table(out))
    probs = [c for c in outs[0][0] if c.startswith("prob_")]
    assert len(probs) == 2
    _same_rows(*outs, numeric=probs)
    assert [str(r["id"]) for r in outs[0]] == [str(i) for i in range(N)]  # input order


def test_similarity_pairs_chunked_equals_one_chunk(cli, tiny_model_dir, data, tmp_path):
    outs, summaries = [], []
    for chunk in (1000, N):
        out = tmp_path / f"scored-{chunk}.csv"
        res = cli("similarity", "--model", tiny_model_dir, "--pairs", data / "pairs.csv", "--a-column", "a",
                  "--b-column", "b", "--gold-column", "gold", "--pooling", "mean,cls", "--output", out,
                  "--chunk-size", chunk, "--device", "cpu", "--precision", "fp32", "--json")
        assert res.exit_code == 0, res.output
        outs.append(_table(out))
        summaries.append([json.loads(line) for line in res.stdout.splitlines()])
    _same_rows(*outs, numeric=["score_mean", "score_cls"])
    assert [r["id"] for r in outs[0]] == [str(i) for i in range(N)]
    for s1, s2 in zip(*summaries, strict=True):
        assert s1["pairs"] == s2["pairs"] == N
        for key in ("pearson", "spearman", "mean_cosine"):
            # scores agree to float32 rounding (2e-6, above); the tiny random model's near-zero correlation
            # amplifies that rounding, so the correlations agree to 1e-5
            assert s1[key] == pytest.approx(s2[key], abs=1e-5)
    # the correlations are over every pair of the file (gathered across chunks), as scipy computes them
    from scipy.stats import pearsonr

    rows = outs[0]
    r = pearsonr([float(x["score_mean"]) for x in rows], [float(x["gold"]) for x in rows])[0]
    assert summaries[0][0]["pooling"] == "mean"
    assert summaries[0][0]["pearson"] == pytest.approx(r, abs=1e-5)


def test_interrupted_predict_leaves_old_output(cli, clf_dir, data, tmp_path, monkeypatch):
    from bertcli.predict import Classifier

    out = tmp_path / "pred.csv"
    out.write_text("old\n")
    real, calls = Classifier.logits, {"n": 0}

    def interrupt_on_second(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Classifier, "logits", interrupt_on_second)
    res = cli("predict", "--model", clf_dir, data / "pairs.csv", "--text-column", "a", "--output", out,
              "--chunk-size", 1000, "--device", "cpu", "--quiet")
    assert res.exit_code == 130
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.csv"]




def test_predict_missing_column_writes_nothing(cli, clf_dir, data):
    res = cli("predict", "--model", clf_dir, data / "pairs.csv", "--text-column", "nope", "--output", "-",
              "--device", "cpu", "--quiet")
    assert res.exit_code == 1
    assert res.stdout == ""
    assert "no column 'nope'" in res.stderr
