"""Fuzzing through the CLI (issue 20): a handful of generated bad inputs per reader, each one
exit 1 with one line on stderr and no traceback (the library properties are in test_fuzz.py)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from conftest import one_error_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import json_values, put

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("one_thread")]

few = settings(max_examples=5, suppress_health_check=[HealthCheck.function_scoped_fixture])
not_text = json_values.filter(lambda v: not isinstance(v, str))
GOOD = [{"text": f"a film {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]


def finetune(cli, model, train, *extra):
    return cli("finetune", "--model", model, "--train", train, "--out", put(b"", ".d").with_suffix(".run"),
               "--epochs", "1", "--device", "cpu", "--quiet", *extra)


@few
@given(value=not_text, field=st.sampled_from(["text", "label"]), at=st.integers(0, 5))
def test_cli_jsonl_table(cli, tiny_model_dir, value, field, at):
    if field == "label" and isinstance(value, int | float) and not isinstance(value, bool):
        value = None  # numbers are valid labels
    rows = [dict(r) for r in GOOD]
    rows[at][field] = value
    train = put("".join(json.dumps(r) + "\n" for r in rows), ".jsonl")
    one_error_line(finetune(cli, tiny_model_dir, train, "--text-column", "text", "--label-column", "label"),
                   f"line {at + 1}, field '{field}'")


@few
@given(bad=st.binary(min_size=1, max_size=20).map(lambda b: b"\xff" + b.replace(b"\x00", b"")))
def test_cli_csv_invalid_utf8(cli, tiny_model_dir, bad):
    data = put(b"text\nhello\n" + bad + b"\n", ".csv")
    one_error_line(cli("embed", "--model", tiny_model_dir, "--input", data, "--column", "text", "--quiet"),
                   str(data), "line 3")


@few
@given(word=st.text(st.characters(blacklist_categories=["Cc", "Zs", "Zl", "Zp", "Cs"]), min_size=1, max_size=8))
def test_cli_conll_line_without_tag(cli, tiny_model_dir, word):
    train = put(f"the\tO\ncat\tB-ANIMAL\n\n{word}\n".encode(), ".conll")
    one_error_line(finetune(cli, tiny_model_dir, train, "--task", "token-classification"), str(train), "line 4")


@few
@given(obj=json_values)
def test_cli_squad_not_squad(cli, tiny_model_dir, obj):
    train = put(json.dumps({"data": [obj]} if isinstance(obj, dict) else obj), ".json")
    one_error_line(finetune(cli, tiny_model_dir, train, "--task", "question-answering", "--doc-stride", "32",
                            "--max-query-length", "16"), str(train))


@few
@given(data=st.binary(min_size=1, max_size=40))
def test_cli_corpus_binary(cli, tiny_model_dir, data):
    corpus = put(b"text\x00" + data, ".txt")
    one_error_line(cli("pretrain", corpus, "--tokenizer", tiny_model_dir, "--out", corpus.with_suffix(".run"),
                       "--max-steps", "1", "--quiet"), str(corpus), "binary")


@few
@given(key=st.sampled_from(["epochs", "lr", "batch_size", "max_length"]),
       value=st.sampled_from(["[1, 2]", "{a: 1}", "'many'", "!!python/object:os.system x", "yes"]))
def test_cli_yaml_config(cli, tiny_model_dir, key, value):
    config = put(f"{key}: {value}\n", ".yaml")
    one_error_line(cli("finetune", "--config", config, "--model", tiny_model_dir, "--quiet"), str(config))


@few
@given(data=st.binary(max_size=64), n=st.integers(0, 2**64 - 1))
def test_cli_safetensors_header(cli, tiny_model_dir, data, n):
    model = put(b"", ".d").with_suffix(".model")
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").write_bytes(struct.pack("<Q", n) + data)
    one_error_line(cli("embed", "--model", model, "hello", "--quiet"), "model.safetensors")
