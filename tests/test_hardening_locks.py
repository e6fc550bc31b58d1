"""Hardening, second pass (issue 20): one writer per run directory (``.bertcli.lock``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import one_error_line

from bertcli.locks import LOCK_NAME, LockError, run_lock

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(d: Path, pid: int, host: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    path = d / LOCK_NAME
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}))
    return path


def test_lock_holds_pid_and_host_and_is_removed_at_exit(tmp_path):
    run = tmp_path / "run"
    with run_lock(run) as path:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        (run / "model.safetensors").write_bytes(b"x")
    assert not path.exists() and (run / "model.safetensors").exists()


def test_a_run_that_wrote_nothing_leaves_no_directory(tmp_path):
    with pytest.raises(RuntimeError), run_lock(tmp_path / "run"):
        raise RuntimeError("failed early")
    assert not (tmp_path / "run").exists()


def test_second_holder_gets_a_clear_error(tmp_path):
    with run_lock(tmp_path) as path, pytest.raises(LockError) as exc, run_lock(tmp_path):
        pass
    msg = str(exc.value)
    assert f"process {os.getpid()} on {socket.gethostname()}" in msg and "choose another --out" in msg
    assert str(path) in msg  # where to delete it if the holder is gone
    assert not path.exists()


def test_lock_of_another_host_is_not_taken(tmp_path):
    path = write_lock(tmp_path, dead_pid(), host="elsewhere.example")
    with pytest.raises(LockError, match="on elsewhere.example"), run_lock(tmp_path):
        pass
    assert path.exists()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    warnings = []
    with run_lock(tmp_path, warn=warnings.append) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"process {pid}" in warnings[0] and "no longer runs" in warnings[0]
    assert not path.exists()


def test_other_ranks_do_not_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path) as path:
        assert path is None and not (tmp_path / LOCK_NAME).exists()


def test_finetune_and_pretrain_refuse_a_locked_run_directory(tmp_path, cli, tiny_model_dir):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom bertcli.locks import run_lock\n"
                               f"with run_lock({str(run)!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        train = tmp_path / "train.csv"
        train.write_text("text,label\n" + "".join(f"t {i},{i % 2}\n" for i in range(8)))
        result = cli("finetune", "--model", tiny_model_dir, "--train", train, "--text-column", "text",
                     "--label-column", "label", "--out", run, "--device", "cpu", "--quiet")
        one_error_line(result, f"process {holder.pid}", "choose another --out")
        corpus = tmp_path / "corpus.txt"
        corpus.write_text("a sentence.\nanother.\n\nmore text.\nand more.\n")
        result = cli("pretrain", corpus, "--tokenizer", tiny_model_dir, "--out", run, "--quiet")
        one_error_line(result, f"process {holder.pid}", "another bertcli run")
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
    finally:
        holder.kill()
        holder.wait()


def test_finetune_takes_over_a_stale_lock(tmp_path, cli, tiny_model_dir, one_thread):
    run = tmp_path / "run"
    pid = dead_pid()
    write_lock(run, pid)
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"t {i},{i % 2}\n" for i in range(8)))
    result = cli("finetune", "--model", tiny_model_dir, "--train", train, "--text-column", "text",
                 "--label-column", "label", "--out", run, "--epochs", "1", "--batch-size", "8", "--device", "cpu",
                 "--precision", "fp32", "--quiet")
    assert result.exit_code == 0, result.output
    assert f"process {pid}" in result.stderr and "taking over" in result.stderr
    assert (run / "model.safetensors").exists() and not (run / LOCK_NAME).exists()
