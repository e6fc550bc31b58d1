"""Hardening, second pass (issue 20): JSONL nulls, lists, objects and numbers where text or labels go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_error_line
from test_hardening_inputs import finetuned  # noqa: F401  (a tiny classifier, module fixture)

from bertcli.data.tables import read_table
from bertcli.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = [{"text": f"a fine film {i}", "label": "pos" if i % 2 else "neg"} for i in range(8)]


def write_jsonl(path: Path, records: list[dict], bad: dict | None = None) -> Path:
    rows = list(records) + ([bad] if bad is not None else [])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def finetune_args(model, train, out):
    return ["finetune", "--model", model, "--train", train, "--text-column", "text", "--label-column", "label",
            "--out", out, "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--precision", "fp32",
            "--quiet"]


@pytest.mark.parametrize(("value", "what"), [(None, "is null"), (["a", "b"], "is a list"),
                                              ({"t": "x"}, "is an object"), (True, "is a boolean"),
                                              (5, "is the number 5")])
def test_library_text_field_must_be_a_string(tmp_path, value, what):
    path = write_jsonl(tmp_path / "t.jsonl", GOOD, {"text": value, "label": "pos"})
    table = read_table(path)
    with pytest.raises(DataError) as exc:
        table.column("text")
    msg = str(exc.value)
    assert "t.jsonl, line 9, field 'text'" in msg and what in msg, msg


@pytest.mark.parametrize(("value", "what"), [(None, "is null"), ("", "is empty"), ("  ", "is empty"),
                                              ([1], "is a list"), ({}, "is an object"), (False, "is a boolean")])
def test_library_label_must_be_present(tmp_path, value, what):
    path = write_jsonl(tmp_path / "t.jsonl", GOOD, {"text": "x", "label": value})
    with pytest.raises(DataError) as exc:
        read_table(path).labels("label")
    assert "t.jsonl, line 9" in str(exc.value) and "'label'" in str(exc.value) and what in str(exc.value)


def test_library_number_labels_become_text(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": 0.5},
                                              {"text": "c", "label": "2"}])
    assert read_table(path).labels("label") == ["1", "0.5", "2"]


def test_library_csv_empty_label_names_line_and_column(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,pos\nb,\n")
    with pytest.raises(DataError, match=r"t.csv, line 3: column 'label' is empty"):
        read_table(path).labels("label")


def test_library_jsonl_huge_integer_is_a_data_error(tmp_path):
    """Found by the fuzzer: an integer over 4300 digits made json.loads raise a bare ValueError."""
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": ' + "1" * 5000 + "}\n")
    with pytest.raises(DataError, match=r"t.jsonl, line 1: invalid JSON"):
        read_table(path)


@pytest.mark.parametrize(("bad", "needles"), [
    ({"text": None, "label": "pos"}, ["train.jsonl, line 9, field 'text'", "null"]),
    ({"text": ["a"], "label": "pos"}, ["line 9, field 'text'", "a list"]),
    ({"text": 3, "label": "pos"}, ["line 9, field 'text'", "number 3", '"3"']),
    ({"text": "x", "label": None}, ["line 9, field 'label'", "null"]),
    ({"text": "x", "label": ""}, ["line 9: column 'label' is empty"]),
    ({"text": "x"}, ["line 9: no key 'label'"]),
])
def test_finetune_refuses_bad_jsonl_fields(tmp_path, cli, tiny_model_dir, bad, needles):
    train = write_jsonl(tmp_path / "train.jsonl", GOOD, bad)
    one_error_line(cli(*finetune_args(tiny_model_dir, train, tmp_path / "run")), *needles)
    assert not (tmp_path / "run").exists()


def test_finetune_regression_takes_number_labels(tmp_path):
    from bertcli.tasks.classification import FinetuneOptions, read_split

    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 1.5}, {"text": "b", "label": 3}])
    opts = FinetuneOptions(train=str(train), text_column="text", label_column="label", task="regression")
    texts, _, labels, _ = read_split("train", str(train), opts)
    assert texts == ["a", "b"] and labels == ["1.5", "3"]


def test_predict_refuses_null_text(tmp_path, cli, finetuned):  # noqa: F811
    data = write_jsonl(tmp_path / "in.jsonl", [{"text": "fine"}, {"text": None}])
    out = tmp_path / "pred.jsonl"
    one_error_line(cli("predict", "--model", finetuned, data, "--text-column", "text", "--output", out,
                       "--quiet"), "in.jsonl, line 2, field 'text'", "null")
    assert not out.exists()
