"""`bertcli similarity` and score_pairs: two texts, pair files, gold correlations, STS-B parity."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from bertcli.embed import correlations, encode, score_pairs, similarity
from bertcli.errors import DataError


def _rows(stdout):
    return [json.loads(x) for x in stdout.splitlines() if x.strip()]


def test_cli_two_texts(cli, tiny_model_dir):
    a, b = "A man is playing a guitar.", "Someone plays an instrument."
    r = cli("similarity", "--model", tiny_model_dir, a, b)
    assert r.exit_code == 0, r.stderr
    expected = similarity(a, b, model=tiny_model_dir)
    assert float(r.stdout.strip()) == pytest.approx(expected, abs=1e-4)

    r = cli("similarity", "--model", tiny_model_dir, a, b, "--pooling", "cls,mean,max", "--json")
    rows = _rows(r.stdout)
    assert [x["pooling"] for x in rows] == ["cls", "mean", "max"]
    assert rows[1]["cosine"] == pytest.approx(expected, abs=1e-5)

    r = cli("similarity", "--model", tiny_model_dir, a)
    assert r.exit_code == 1 and "exactly two texts" in r.stderr


def test_score_pairs_encodes_each_text_once(tiny_model_dir):
    a = ["x y", "z", "x y"]
    b = ["z", "z", "w"]
    res = score_pairs(a, b, tiny_model_dir, poolings=["mean", "cls"], gold=[1.0, 5.0, 2.0])
    assert res.stats.count == 3  # distinct texts
    v = encode(["x y", "z", "w"], tiny_model_dir)
    assert res.scores["mean"][0] == pytest.approx(float(v[0] @ v[1]), abs=1e-5)
    assert res.scores["mean"][1] == pytest.approx(1.0, abs=1e-5)
    assert set(res.correlations) == {"mean", "cls"}
    with pytest.raises(DataError, match="same"):
        correlations([0.1, 0.2], [3.0, 3.0])


def test_cli_pairs_file_with_gold_and_output(cli, tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["left", "right", "gold"])
        w.writerow(["A man plays guitar.", "A man plays a guitar.", "4.8"])
        w.writerow(["A dog runs.", "Stocks fell sharply.", "0.2"])
        w.writerow(["=cmd", "A cat sleeps.", "1.5"])
    out = tmp_path / "scored.csv"
    r = cli("similarity", "--model", tiny_model_dir, "--pairs", pairs, "--a-column", "left",
            "--b-column", "right", "--gold-column", "gold", "--output", out, "--json")
    assert r.exit_code == 0, r.stderr
    (row,) = _rows(r.stdout)
    assert row["pairs"] == 3 and -1 <= row["spearman"] <= 1 and -1 <= row["pearson"] <= 1
    with open(out, newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert [g["left"] for g in got] == ["A man plays guitar.", "A dog runs.", "'=cmd"]  # formula escaped
    expected = similarity(["A dog runs."], ["Stocks fell sharply."], model=tiny_model_dir, pairwise=True)
    assert float(got[1]["score"]) == pytest.approx(float(expected[0]), abs=1e-5)

    r = cli("similarity", "--model", tiny_model_dir, "--pairs", pairs, "--a-column", "left",
            "--b-column", "right", "--output", "-")
    assert r.exit_code == 0, r.stderr
    assert [x["right"] for x in _rows(r.stdout)] == ["A man plays a guitar.", "Stocks fell sharply.", "A cat sleeps."]

    r = cli("similarity", "--model", tiny_model_dir, "--pairs", pairs, "--a-column", "left", "--b-column", "nope")
    assert r.exit_code == 1 and "no column 'nope'" in r.stderr and "'left', 'right', 'gold'" in r.stderr

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,g\nx,y,high\n", encoding="utf-8")
    r = cli("similarity", "--model", tiny_model_dir, "--pairs", bad, "--a-column", "a", "--b-column", "b",
            "--gold-column", "g")
    assert r.exit_code == 1 and f"{bad}, line 2" in r.stderr and "not a number" in r.stderr


def test_stsb_dev_matches_sentence_transformers(cli, shared_data, minilm_dir):
    """Spearman on STS-B dev equals sentence-transformers' own (fp32, within 0.001); CLS < mean."""
    st = pytest.importorskip("sentence_transformers")
    from scipy.stats import spearmanr

    from bertcli.data.tables import read_table

    path = shared_data / "stsb" / "sts-dev.csv"
    table = read_table(path, delimiter="\t", quoting=False, header=False)
    a, b = table.column("5"), table.column("6")
    gold = [float(x) for x in table.column("4")]
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    unique = list(dict.fromkeys(a + b))
    ref = model.encode(unique, convert_to_numpy=True, normalize_embeddings=True)
    where = {t: i for i, t in enumerate(unique)}
    ref_scores = np.sum(ref[[where[t] for t in a]] * ref[[where[t] for t in b]], axis=1)
    ref_spearman = spearmanr(ref_scores, gold)[0]

    r = cli("similarity", "--model", minilm_dir, "--pairs", path, "--no-header", "--no-quoting",
            "--a-column", "5", "--b-column", "6", "--gold-column", "4", "--pooling", "cls,mean",
            "--precision", "fp32", "--json")
    assert r.exit_code == 0, r.stderr
    rows = {x["pooling"]: x for x in _rows(r.stdout)}
    assert rows["mean"]["pairs"] == 1500
    assert abs(rows["mean"]["spearman"] - ref_spearman) <= 0.001, (rows["mean"]["spearman"], ref_spearman)
    assert rows["cls"]["spearman"] < rows["mean"]["spearman"]

    # bf16 is what --precision auto picks on CPUs with native bf16 and on CUDA: within 0.002
    r = cli("similarity", "--model", minilm_dir, "--pairs", path, "--no-header", "--no-quoting",
            "--a-column", "5", "--b-column", "6", "--gold-column", "4", "--precision", "bf16", "--json")
    assert r.exit_code == 0, r.stderr
    (row,) = _rows(r.stdout)
    assert abs(row["spearman"] - ref_spearman) <= 0.002, (row["spearman"], ref_spearman)
