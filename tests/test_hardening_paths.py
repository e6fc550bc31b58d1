"""Hardening, second pass (issue 20): no command writes onto, into or around its own inputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import one_error_line

from bertcli.errors import ConfigError
from bertcli.paths import check_outputs


def digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its hash: the inputs must come out unchanged."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_same_inside_contains_and_symlink(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "link").symlink_to(model)
    cases = [(model, "is the same path as"), (tmp_path / "link", "is the same path as"),
             (model / "sub", "lies inside"), (tmp_path, "contains"), (tmp_path / "x" / ".." / "model", "same")]
    for out, how in cases:
        with pytest.raises(ConfigError) as exc:
            check_outputs({"--out": out}, {"--model": model})
        msg = str(exc.value)
        assert how in msg and f"--out {out}" in msg and f"--model {model}" in msg and "another --out" in msg


def test_fresh_sibling_stdin_and_unset_are_allowed(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    check_outputs({"--out": tmp_path / "model-more"}, {"--init-from": model, "--tokenizer": None})
    check_outputs({"--output": "-"}, {"--input": "-", "--model": model})
    check_outputs({"--out": tmp_path / "run"}, {"corpus": [tmp_path / "a.txt", tmp_path / "b.txt"]})


def test_a_list_of_inputs_names_the_one_that_clashes(tmp_path):
    with pytest.raises(ConfigError) as exc:
        check_outputs({"--out": tmp_path / "b"}, {"corpus": [tmp_path / "a", tmp_path / "b" / "c.txt"]})
    assert f"--out {tmp_path / 'b'} contains corpus {tmp_path / 'b' / 'c.txt'}" in str(exc.value)


def test_finetune_out_onto_model(tmp_path, cli, tiny_model_dir):
    before = digest(tiny_model_dir)
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / "alias").symlink_to(tiny_model_dir)
    for out in (tiny_model_dir, tmp_path / "alias", tiny_model_dir / "run"):
        result = cli("finetune", "--model", tiny_model_dir, "--train", train, "--text-column", "text",
                     "--label-column", "label", "--out", out, "--device", "cpu", "--quiet")
        one_error_line(result, f"--out {out}", f"--model {tiny_model_dir}", "choose another --out")
    assert digest(tiny_model_dir) == before


def test_finetune_out_onto_train_file(tmp_path, cli, tiny_model_dir):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,pos\nb,neg\n")
    result = cli("finetune", "--model", tiny_model_dir, "--train", train, "--text-column", "text",
                 "--label-column", "label", "--out", tmp_path, "--device", "cpu", "--quiet")
    one_error_line(result, f"--out {tmp_path} contains --train {train}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.csv"]


def test_pretrain_out_onto_init_from_and_corpus(tmp_path, cli, tiny_model_dir):
    before = digest(tiny_model_dir)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one sentence.\nanother one.\n")
    one_error_line(cli("pretrain", corpus, "--init-from", tiny_model_dir, "--out", tiny_model_dir, "--quiet"),
                   "--init-from", "choose another --out")
    one_error_line(cli("pretrain", corpus, "--tokenizer", tiny_model_dir, "--out", corpus / "run", "--quiet"),
                   f"--out {corpus / 'run'} lies inside corpus {corpus}")
    assert digest(tiny_model_dir) == before and sorted(p.name for p in corpus.iterdir()) == ["a.txt"]


def test_predict_embed_similarity_output_onto_input(tmp_path, cli, tiny_model_dir):
    data = tmp_path / "in.csv"
    data.write_text("text,b\nhello,there\n")
    before = digest(data)
    one_error_line(cli("predict", "--model", tiny_model_dir, data, "--output", data), "--output", "INPUT")
    one_error_line(cli("embed", "--model", tiny_model_dir, "--input", data, "--column", "text", "--output", data),
                   f"--output {data} is the same path as --input {data}")
    one_error_line(cli("embed", "--model", tiny_model_dir, "hi", "--output", tiny_model_dir / "v.npy"),
                   "lies inside --model")
    one_error_line(cli("similarity", "--model", tiny_model_dir, "--pairs", data, "--a-column", "text",
                       "--b-column", "b", "--output", data), "--output", "--pairs")
    assert digest(data) == before


def test_train_vocab_and_init_with_force_keep_their_inputs(tmp_path, cli, tiny_model_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text\n" * 20)
    one_error_line(cli("train-vocab", corpus, "--out", corpus, "--force", "--quiet"), "--out", "PATHS")
    assert (corpus / "a.txt").exists()
    before = digest(tiny_model_dir)
    one_error_line(cli("init", "--tokenizer", tiny_model_dir, "--out", tiny_model_dir, "--force"),
                   f"--out {tiny_model_dir} is the same path as --tokenizer")
    assert digest(tiny_model_dir) == before
