"""The CLI foundation: start-up without torch, --version, init/info/tokenize, and errors for people."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys

import pytest

from bertcli import __version__

PY = sys.executable


def _run(*args, input=None, timeout=120):
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([PY, *args], capture_output=True, text=True, input=input, timeout=timeout, env=env)


def _imported_modules(importtime_stderr: str) -> set[str]:
    mods = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip())
    return mods


def _assert_one_error_line(result, *needles):
    assert result.exit_code == 1, (result.stdout, result.stderr)
    err = result.stderr.strip()
    assert err.startswith("error:"), err
    assert "\n" not in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    assert result.stdout == ""


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("argv", [["--help"], ["tokenize", "--help"], ["info", "--help"], ["init", "--help"]])
def test_help_does_not_import_torch(argv):
    r = _run("-X", "importtime", "-m", "bertcli", *argv)
    assert r.returncode == 0, r.stderr[-2000:]
    mods = _imported_modules(r.stderr)
    assert "typer" in mods  # the import-time listing really is there
    assert not any(m == "torch" or m.startswith("torch.") for m in mods)
    assert not any(line.rstrip().endswith("| torch") for line in r.stderr.splitlines())
    assert "Usage" in r.stdout
    if argv != ["--help"]:
        assert "Examples" in r.stdout


def test_importing_the_app_registers_every_command_without_torch():
    code = ("import sys, bertcli.cli.app as a; "
            "print(sorted(c.name for c in a.app.registered_commands)); "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    r = _run("-c", code)
    assert r.returncode == 0, r.stderr
    names, flags = r.stdout.strip().splitlines()
    assert {"tokenize", "info", "init"} <= set(json.loads(names.replace("'", '"')))
    assert flags == "False False"


def test_version_and_module_entry_point():
    r = _run("-m", "bertcli", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bertcli {__version__}"
    r = _run("-m", "bertcli", "--help")
    assert r.returncode == 0
    for cmd in ("tokenize", "info", "init"):
        assert cmd in r.stdout
    r = _run("-m", "bertcli")  # no arguments: help, usage exit
    assert "Usage" in r.stdout + r.stderr


def test_every_command_has_examples(cli):
    from bertcli.cli.app import app

    for c in app.registered_commands:
        r = cli(c.name, "--help")
        assert r.exit_code == 0
        assert "Examples" in r.stdout and "bertcli " + c.name in r.stdout, c.name


# --------------------------------------------------------------------------- usage errors exit 2


@pytest.mark.parametrize(
    "argv",
    [["nosuchcommand"], ["info"], ["tokenize", "hello"], ["tokenize", "--model", "x", "--max-length", "abc"],
     ["info", "--model", "x", "--bogus"], ["init", "--out", "x"]],
)
def test_usage_errors_exit_2(cli, argv):
    r = cli(*argv)
    assert r.exit_code == 2, r.stdout + r.stderr


# --------------------------------------------------------------------------- init + info + tokenize


@pytest.fixture(scope="module")
def initialised(tmp_path_factory, minilm_dir):
    from typer.testing import CliRunner

    from bertcli.cli.app import app

    out = tmp_path_factory.mktemp("init") / "tiny"
    r = CliRunner().invoke(app, ["init", "--preset", "tiny", "--tokenizer", str(minilm_dir), "--out", str(out),
                                 "--seed", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert "parameters" in r.stderr
    return out


def test_init_writes_a_loadable_checkpoint(initialised, cli, minilm_dir):
    from bertcli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(initialised)
    assert (ckpt.config.num_layers, ckpt.config.hidden_size, ckpt.config.num_heads) == (2, 128, 2)
    assert ckpt.config.vocab_size == 30522
    assert ckpt.heads == {"pooler", "mlm", "nsp"}
    assert ckpt.bertcli["seed"] == 3
    # refuses to overwrite without --force, and --force replaces
    r = cli("init", "--tokenizer", minilm_dir, "--out", initialised)
    _assert_one_error_line(r, "already exists", "--force")
    r = cli("init", "--tokenizer", minilm_dir, "--out", initialised, "--no-nsp", "--force", "--seed", "3")
    assert r.exit_code == 0
    assert load_checkpoint(initialised).heads == {"mlm"}
    r = cli("init", "--tokenizer", minilm_dir, "--out", initialised, "--force", "--seed", "3")
    assert r.exit_code == 0


def test_init_from_yaml_config(tmp_path, cli, minilm_dir):
    (tmp_path / "m.yaml").write_text("model:\n  hidden_size: 64\n  num_layers: 1\n  num_heads: 2\n"
                                     "  intermediate_size: 128\n  max_positions: 64\n")
    r = cli("init", "--config", tmp_path / "m.yaml", "--tokenizer", minilm_dir, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.stderr
    from bertcli.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "o").config.max_positions == 64
    (tmp_path / "bad.yaml").write_text("hidden_size: 65\nnum_heads: 2\n")
    r = cli("init", "--config", tmp_path / "bad.yaml", "--tokenizer", minilm_dir, "--out", tmp_path / "p")
    _assert_one_error_line(r, "bad.yaml", "'hidden_size' (65) must be divisible by 'num_heads' (2)")


def test_info_table_and_json(initialised, cli):
    r = cli("info", "--model", initialised)
    assert r.exit_code == 0, r.stderr
    for needle in ("BertForPreTraining", "2 layers, hidden 128", "mlm, nsp, pooler", "30522 tokens", "lower-cased"):
        assert needle in r.stdout
    r = cli("info", "--model", initialised, "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["architecture"] == "BertForPreTraining"
    assert info["config"]["num_layers"] == 2
    assert info["heads"] == ["mlm", "nsp", "pooler"]
    assert info["tokenizer"]["vocab_size"] == 30522
    from bertcli.checkpoint import load_checkpoint
    from bertcli.heads import BertForPreTraining
    from bertcli.model import count_parameters

    # the tied decoder is not counted twice
    assert info["parameters"] == count_parameters(BertForPreTraining(load_checkpoint(initialised).config))
    r = cli("info", "--model", initialised, "--no-weights", "--json")
    assert json.loads(r.stdout)["parameters"] is None


def test_info_on_real_minilm(cli, minilm_dir):
    r = cli("info", "--model", minilm_dir, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["sentence_embedding"] == {"pooling": "mean", "normalize": True, "max_seq_length": 256}
    assert info["parameters"] == 22_713_216
    assert info["config"]["hidden_size"] == 384


def test_info_without_tokenizer_files(tmp_path, initialised, cli):
    d = tmp_path / "hf"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(initialised / name, d / name)
    r = cli("info", "--model", d, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["tokenizer"] is None
    r = cli("info", "--model", d)
    assert r.exit_code == 0 and "no tokenizer" in r.stdout


def test_tokenize_table_and_json(initialised, cli):
    r = cli("tokenize", "--model", initialised, "Hello, world!", "Café")
    assert r.exit_code == 0, r.stderr
    assert "hello" in r.stdout and "[CLS]" in r.stdout and "0-5" in r.stdout
    assert "2 input(s)" in r.stderr and "0 truncated" in r.stderr
    r = cli("tokenize", "--model", initialised, "Is it?", "--pair", "Yes it is.", "--json")
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1
    row = rows[0]
    assert row["tokens"] == ["[CLS]", "is", "it", "?", "[SEP]", "yes", "it", "is", ".", "[SEP]"]
    assert row["type_ids"] == [0] * 5 + [1] * 5
    assert row["attention_mask"] == [1] * 10
    assert row["offsets"][5] == [0, 3] and row["truncated"] is False
    assert r.stderr == ""  # nothing truncated: --json output is data only


def test_tokenize_input_file_stdin_and_truncation(initialised, cli, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a short line\n" + "many words " * 20 + "\n\n", encoding="utf-8")
    r = cli("tokenize", "--model", initialised, "--input", f, "--max-length", "8", "--json")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [len(x["ids"]) for x in rows] == [5, 8, 2]  # the empty line is an (empty) text
    assert [x["truncated"] for x in rows] == [False, True, False]
    assert "1 truncated to 8 tokens" in r.stderr
    r = cli("tokenize", "--model", initialised, "--input", "-", "--json", input="from stdin\n")
    assert json.loads(r.stdout)["tokens"] == ["[CLS]", "from", "st", "##din", "[SEP]"]
    # tokenizer-only directory (no config.json): the tokenizer's max length applies
    d = tmp_path / "vocab"
    d.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(initialised / name, d / name)
    r = cli("tokenize", "--model", d, "x " * 600, "--json")
    assert len(json.loads(r.stdout)["ids"]) == 512


def test_tokenize_errors(initialised, cli, tmp_path):
    r = cli("tokenize", "--model", initialised, "hi", "--max-length", "600")
    _assert_one_error_line(r, "--max-length 600", "512")
    r = cli("tokenize", "--model", initialised)
    _assert_one_error_line(r, "no input")
    r = cli("tokenize", "--model", tmp_path / "missing", "hi")
    _assert_one_error_line(r, "missing", "no such")
    r = cli("tokenize", "--model", tmp_path, "hi")
    _assert_one_error_line(r, "no tokenizer.json or vocab.txt")
    r = cli("tokenize", "--model", initialised, "--input", tmp_path / "nofile.txt")
    _assert_one_error_line(r, "nofile.txt", "no such file")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    r = cli("tokenize", "--model", initialised, "--input", tmp_path / "latin.txt")
    _assert_one_error_line(r, "latin.txt, line 1", "--encoding")
    r = cli("tokenize", "--model", initialised, "--input", tmp_path / "latin.txt", "--encoding", "latin-1", "--json")
    assert json.loads(r.stdout)["tokens"] == ["[CLS]", "cafe", "[SEP]"]


# --------------------------------------------------------------------------- bad checkpoints


def _copy(src, dst, skip=()):
    dst.mkdir()
    for p in src.iterdir():
        if p.is_file() and p.name not in skip:
            shutil.copy(p, dst / p.name)
    return dst


def _bad_dirs(tmp_path, good):
    """name -> (directory, words the one-line error must contain)."""
    cases = {}
    cases["missing"] = (tmp_path / "does-not-exist", ["does-not-exist", "no such checkpoint directory"])
    d = _copy(good, tmp_path / "noconfig", skip=("config.json",))
    cases["no-config"] = (d, ["no config.json"])
    d = _copy(good, tmp_path / "truncated")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    cases["truncated"] = (d, ["model.safetensors", "truncated"])
    d = _copy(good, tmp_path / "garbage")
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    cases["garbage"] = (d, ["model.safetensors", "corrupt safetensors"])
    d = _copy(good, tmp_path / "tengig")
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10 * 2**30) + b"{}")
    cases["10GB-header"] = (d, ["model.safetensors", "claims 10737418240 bytes"])
    d = _copy(good, tmp_path / "vocab")
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 1000
    (d / "config.json").write_text(json.dumps(cfg))
    cases["config-vs-weights"] = (d, ["vocab_size=1000", "30522 rows"])
    return cases


def test_bad_checkpoints_via_info(tmp_path, initialised, cli):
    for name, (d, needles) in _bad_dirs(tmp_path, initialised).items():
        r = cli("info", "--model", d)
        try:
            _assert_one_error_line(r, *needles)
        except AssertionError as exc:
            raise AssertionError(f"case {name}: {exc}") from None


def test_tokenizer_larger_than_embedding_via_cli(tmp_path, minilm_dir, cli):
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.model import BertModel
    from bertcli.tokenizer import Tokenizer

    cfg = BertConfig(vocab_size=1000, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                     max_positions=64)
    torch.manual_seed(0)
    state = {f"bert.{k}": v for k, v in BertModel(cfg, with_pooler=False).state_dict().items()}
    d = save_checkpoint(tmp_path / "small", state, cfg, Tokenizer.load(minilm_dir))
    for argv in (["info", "--model", d], ["tokenize", "--model", d, "hello"]):
        r = cli(*argv)
        _assert_one_error_line(r, "30522 tokens", "1000 embedding rows")


def test_pickle_only_directory_is_refused_without_unpickling(tmp_path, initialised):
    marker = tmp_path / "UNPICKLED"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    d = _copy(initialised, tmp_path / "hf-bin", skip=("model.safetensors",))
    (d / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    r = _run("-m", "bertcli", "info", "--model", str(d))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "pytorch_model.bin" in lines[0] and "pickle" in lines[0]
    assert not marker.exists()


def test_errors_through_the_real_entry_point(tmp_path, initialised):
    cases = _bad_dirs(tmp_path, initialised)
    for name in ("10GB-header", "garbage"):
        d, needles = cases[name]
        r = _run("-m", "bertcli", "info", "--model", str(d), timeout=60)
        assert r.returncode == 1, name
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert all(n in lines[0] for n in needles)
    # --debug shows the traceback
    d, _ = cases["garbage"]
    r = _run("-m", "bertcli", "--debug", "info", "--model", str(d))
    assert r.returncode != 0 and "Traceback" in r.stderr and "CheckpointError" in r.stderr


def test_brackets_in_paths_and_texts_are_not_rich_markup(initialised, cli, tmp_path):
    r = cli("info", "--model", tmp_path / "runs[/bold]" / "[test]")
    _assert_one_error_line(r, "runs[/bold]/[test]: no such checkpoint directory")
    r = cli("tokenize", "--model", initialised, "[/bold] [red]x")
    assert r.exit_code == 0, r.stderr
    assert "[/bold] [red]x" in r.stdout
