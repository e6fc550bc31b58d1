"""predict: labels, probabilities and scores added to each row; output formats and escaping."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bertcli.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

POS = ["a lovely film", "great acting", "i loved it", "wonderful and warm"]
NEG = ["a boring film", "awful acting", "i hated it", "dull and cold"]


def _train(model_dir: Path, d: Path, task: str = "classification") -> Path:
    import torch

    from bertcli.tasks.classification import FinetuneOptions, finetune

    torch.set_num_threads(1)
    if task == "classification":
        body = "review,sentiment\n" + "".join(f"{t},pos\n" for t in POS) + "".join(f"{t},neg\n" for t in NEG)
        label = "sentiment"
    else:
        body = "review,sentiment\n" + "".join(f"{t},{i / 2}\n" for i, t in enumerate(POS + NEG))
        label = "sentiment"
    (d / "train.csv").write_text(body)
    finetune(FinetuneOptions(model=str(model_dir), task=task, train=str(d / "train.csv"), dev=str(d / "train.csv"),
                             text_column="review", label_column=label, out=str(d / "run"), epochs=1,
                             batch_size=4, lr=1e-3, quiet=True, device="cpu", precision="fp32"))
    return d / "run"


@pytest.fixture(scope="module")
def clf_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _train(tiny_model_dir, tmp_path_factory.mktemp("clf"))


@pytest.fixture(scope="module")
def reg_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return _train(tiny_model_dir, tmp_path_factory.mktemp("reg"), task="regression")


def test_predict_table_adds_label_and_probabilities(clf_dir, tmp_path):
    from bertcli.predict import predict_table

    src = tmp_path / "in.csv"
    src.write_text("id,review\n1,a lovely film\n2,awful acting\n3,\n")
    res = predict_table(clf_dir, src, device="cpu", precision="fp32")
    assert res.columns == ["id", "review", "label", "prob_neg", "prob_pos"]
    assert [r["id"] for r in res.rows] == ["1", "2", "3"]
    for r in res.rows:
        assert r["prob_neg"] + r["prob_pos"] == pytest.approx(1.0, abs=1e-5)
        assert r["label"] == ("pos" if r["prob_pos"] > r["prob_neg"] else "neg")


def test_predict_matches_model_logits(clf_dir):
    import numpy as np

    from bertcli.predict import load_classifier
    from bertcli.tasks.classification import softmax

    clf = load_classifier(clf_dir, device="cpu", precision="fp32")
    texts = ["a lovely film", "x " * 200, "awful"]  # mixed lengths: the sorted batching must restore order
    logits, truncated = clf.logits(texts, batch_size=2)
    single = np.concatenate([clf.logits([t])[0] for t in texts])
    assert logits == pytest.approx(single, abs=1e-5)
    assert truncated == 1
    assert softmax(logits).sum(1) == pytest.approx(np.ones(3))


def test_existing_label_column_is_kept(clf_dir, tmp_path):
    from bertcli.predict import predict_table

    src = tmp_path / "in.csv"
    src.write_text("review,label\ngood,gold\n")
    res = predict_table(clf_dir, src, device="cpu")
    assert res.rows[0]["label"] == "gold"
    assert res.added == ["predicted_label", "prob_neg", "prob_pos"]


def test_cli_csv_output_escapes_formulas(clf_dir, tmp_path, cli):
    src = tmp_path / "in.csv"
    src.write_text('review\n=HYPERLINK("http://x")\n+1\n-2\n@SUM(A1)\nplain\n')
    out = tmp_path / "out.csv"
    result = cli("predict", "--model", clf_dir, src, "--output", out, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["review"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'+1", "'-2", "'@SUM(A1)", "plain"]
    assert all(r["label"] in ("pos", "neg") for r in rows)
    assert "5 rows predicted" in result.stderr


def test_cli_jsonl_and_json_lines_are_not_escaped(clf_dir, tmp_path, cli):
    src = tmp_path / "in.jsonl"
    src.write_text('{"review": "=1+1", "n": 3}\n{"review": "fine"}\n')
    out = tmp_path / "out.jsonl"
    assert cli("predict", "--model", clf_dir, src, "--output", out, "--quiet").exit_code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["review"] == "=1+1" and rows[0]["n"] == 3 and isinstance(rows[0]["prob_pos"], float)
    result = cli("predict", "--model", clf_dir, src, "--json", "--quiet")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2 and lines[1]["label"] in ("pos", "neg")


def test_cli_stdout_keeps_input_format(clf_dir, tmp_path, cli):
    src = tmp_path / "in.tsv"
    src.write_text("review\tx\ngood, really\t1\n")
    result = cli("predict", "--model", clf_dir, src, "--quiet")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "review\tx\tlabel\tprob_neg\tprob_pos"


def test_cli_missing_text_column(clf_dir, tmp_path, cli):
    src = tmp_path / "in.csv"
    src.write_text("body\nhello\n")
    result = cli("predict", "--model", clf_dir, src)
    assert result.exit_code == 1 and "no column 'review'; columns found: 'body'" in result.stderr
    assert cli("predict", "--model", clf_dir, src, "--text-column", "body", "--quiet").exit_code == 0


def test_regression_predicts_score(reg_dir, tmp_path):
    from bertcli.predict import predict_table

    src = tmp_path / "in.csv"
    src.write_text("review\ngood\nbad\n")
    res = predict_table(reg_dir, src, device="cpu")
    assert res.regression and res.added == ["score"]
    assert all(isinstance(r["score"], float) for r in res.rows)


def test_refuses_model_without_classifier(tiny_model_dir):
    from bertcli.predict import load_classifier

    with pytest.raises(CheckpointError, match="no sequence classification head"):
        load_classifier(tiny_model_dir, device="cpu")


def test_label_map_vs_head_size(clf_dir, tmp_path):
    import shutil

    from bertcli.predict import load_classifier

    bad = tmp_path / "bad"
    shutil.copytree(clf_dir, bad, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = json.loads((bad / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b", "2": "c"}
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="maps 3 labels .* but the classifier head has 2 outputs"):
        load_classifier(bad, device="cpu")


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_predict_fast_precisions_close_to_fp32_with_throughput(clf_dir, tmp_path, cli, precision):
    src = tmp_path / "in.csv"
    src.write_text("review\n" + "\n".join(POS + NEG) + "\n")
    outs = {}
    for p in ("fp32", precision):
        out = tmp_path / f"{p}.csv"
        result = cli("predict", "--model", clf_dir, src, "--output", out, "--device", "cpu", "--precision", p)
        assert result.exit_code == 0, result.stderr
        assert f"rows/s, {p} on cpu" in result.stderr
        outs[p] = list(csv.DictReader(io.StringIO(out.read_text())))
    for a, b in zip(outs["fp32"], outs[precision], strict=True):
        assert abs(float(a["prob_pos"]) - float(b["prob_pos"])) < 0.05
