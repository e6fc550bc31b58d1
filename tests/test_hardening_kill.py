"""Hardening (issue 8), cases 1, 2, 4: lost work. Real processes, real signals, real write failures.

1. SIGKILL while a checkpoint is being written (the write is slowed down by a wrapper script, the
   process killed while its temporary directory exists): the newest complete checkpoint loads, the
   leftovers are ignored and cleaned, and resuming reaches the uninterrupted run's final weights.
2. A checkpoint write that fails partway (disk full after the first file; a real EFBIG from the
   OS in the safetensors writer): the previous checkpoint is intact, the error names the path, and
   old checkpoints are deleted only after the new one is renamed into place.
4. SIGTERM / SIGINT in pretrain and finetune: the step finishes, a checkpoint is saved, the exit
   code is 143 / 130; with two gloo ranks under torchrun, a signal to one rank stops both at the
   same step.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_hardening_training import (  # noqa: E402
    assert_all_finite,
    ft_options,
    make_small_model,
    sentiment_csv,
    weights,
    write_vocab,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]

# Runs the bertcli CLI after installing test hooks; pid files let a test signal one process.
WRAPPER = textwrap.dedent('''
    import os, sys, time, resource, signal
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import bertcli.checkpoint as C

    hold_at = os.environ.get("HOLD_AT")          # "step-N": pause after its first file, then wait
    fsize_at = os.environ.get("FSIZE_AT")        # "step-N:BYTES": limit the file size from then on
    rank = os.environ.get("RANK", "0")
    Path(os.environ["PIDS"], f"rank{rank}.pid").write_text(str(os.getpid()))
    write_weights = C.write_weights
    save_checkpoint = C.save_checkpoint

    def slow_write(tensors, path, metadata=None):
        write_weights(tensors, path, metadata)
        p = Path(path)
        if hold_at and p.parent.name.startswith(f".{hold_at}.tmp-") and p.name == C.WEIGHTS_NAME:
            Path(os.environ["PIDS"], "holding").write_text(str(p.parent))
            time.sleep(600)

    def limited_save(path, *args, **kwargs):
        if fsize_at and Path(path).name == fsize_at.split(":")[0]:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails with EFBIG
            limit = int(fsize_at.split(":")[1])
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return save_checkpoint(path, *args, **kwargs)

    C.write_weights = slow_write
    C.save_checkpoint = limited_save
    from bertcli.cli.app import app
    sys.argv[0] = "bertcli"
    app()
''')


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return make_small_model(tmp_path_factory.mktemp("small"))


@pytest.fixture
def wrapper(tmp_path) -> Path:
    path = tmp_path / "wrapper.py"
    path.write_text(WRAPPER)
    (tmp_path / "pids").mkdir()
    return path


def env(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PIDS": str(tmp_path / "pids"),
            **extra}


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240.0):
    """Poll until ``predicate()`` is true (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def finetune_cli(model: Path, train: Path, out: Path, *extra) -> list[str]:
    return ["finetune", "--model", str(model), "--train", str(train), "--text-column", "text",
            "--label-column", "label", "--out", str(out), "--batch-size", "8", "--lr", "1e-3",
            "--device", "cpu", "--precision", "fp32", "--quiet", *extra]


# ============================================================ 1. SIGKILL during a checkpoint write
def test_sigkill_during_checkpoint_write(small_model, tmp_path, wrapper):
    from bertcli.tasks.classification import finetune
    from bertcli.train import checkpoint_steps

    train = sentiment_csv(tmp_path / "train.csv")  # 3 steps per epoch, a checkpoint after each epoch
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(wrapper), *finetune_cli(small_model, train, out, "--epochs", "3")],
                            env=env(tmp_path, HOLD_AT="step-6"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    holding = wait_for(lambda: (tmp_path / "pids" / "holding").is_file(), proc, "the slow write")
    assert holding
    tmp_dir = Path((tmp_path / "pids" / "holding").read_text())
    assert tmp_dir.is_dir() and tmp_dir.parent == out / "checkpoints"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    # the newest complete checkpoint is step-3; the half-written step-6 is ignored
    assert [s for s, _ in checkpoint_steps(out)] == [3]
    assert tmp_dir.is_dir()
    from bertcli.checkpoint import load_checkpoint

    assert load_checkpoint(out / "checkpoints" / "step-3").config.hidden_size == 32

    # resuming cleans the leftovers and reaches the uninterrupted run's final weights
    finetune(ft_options(small_model, tmp_path, "straight", epochs=3, train=str(train)))
    s = finetune(ft_options(small_model, tmp_path, "run", epochs=3, train=str(train), resume="auto"))
    assert s["resumed_from"].endswith("step-3") and s["steps"] == 9
    assert not tmp_dir.exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-6", "step-9"]
    w1, w2 = weights(tmp_path / "straight"), weights(out)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


# ============================================================ 2. a checkpoint write failing partway
def test_disk_full_after_the_first_file_keeps_the_previous_checkpoint(small_model, tmp_path, monkeypatch):
    from bertcli.errors import CheckpointError
    from bertcli.tasks.classification import SequenceClassificationTask, train_args
    from bertcli.train import checkpoint_steps, fit

    opts = ft_options(small_model, tmp_path, "run", epochs=2)
    args = train_args(opts)
    args.keep_last = 1
    real_write_text = Path.write_text

    def write_text(self, data, *a, **kw):
        if self.parent.name.startswith(".step-6.tmp-") and self.name == "config.json":
            assert (self.parent / "model.safetensors").is_file()  # the first file was written
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(CheckpointError) as info:
        fit(SequenceClassificationTask(opts), args)
    msg = str(info.value)
    assert str(tmp_path / "run" / "checkpoints" / "step-6") in msg and "No space left on device" in msg
    assert "previous checkpoint is intact" in msg
    # the previous checkpoint (keep-last 1) is still there, complete, and nothing else is
    assert [s for s, _ in checkpoint_steps(tmp_path / "run")] == [3]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-3"]
    monkeypatch.undo()
    assert_all_finite(tmp_path / "run")
    from bertcli.train import read_trainer_state

    info_, _ = read_trainer_state(tmp_path / "run" / "checkpoints" / "step-3")
    assert info_["step"] == 3


def test_real_write_error_in_the_safetensors_writer(small_model, tmp_path, wrapper):
    """RLIMIT_FSIZE makes the OS refuse the (larger) optimizer file: the error is one line, exit 1."""
    train = sentiment_csv(tmp_path / "train.csv")
    out = tmp_path / "run"
    model_bytes = (small_model / "model.safetensors").stat().st_size
    limit = int(model_bytes * 1.5)  # model.safetensors fits; the optimizer state (2x) does not
    proc = subprocess.run([sys.executable, str(wrapper), *finetune_cli(small_model, train, out, "--epochs", "2")],
                          env=env(tmp_path, FSIZE_AT=f"step-6:{limit}"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert str(out / "checkpoints" / "step-6") in lines[0] and "File too large" in lines[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]
    assert_all_finite(out)


def test_old_checkpoints_are_deleted_only_after_the_rename(small_model, tmp_path, monkeypatch):
    import bertcli.checkpoint as C
    from bertcli.errors import CheckpointError
    from bertcli.tasks.classification import SequenceClassificationTask, train_args
    from bertcli.train import checkpoint_steps, fit

    opts = ft_options(small_model, tmp_path, "run", epochs=3)
    args = train_args(opts)
    args.keep_last = 1
    seen = []
    real_replace_dir = C.replace_dir

    def replace_dir(tmp, path):
        older = sorted(p.name for p in path.parent.iterdir() if p.name.startswith("step-"))
        seen.append((path.name, older))
        if path.name == "step-9":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_replace_dir(tmp, path)

    monkeypatch.setattr(C, "replace_dir", replace_dir)
    with pytest.raises(CheckpointError, match="step-9.*Input/output error"):
        fit(SequenceClassificationTask(opts), args)
    # when step-N was renamed into place, step-(N-3) still existed
    assert seen == [("step-3", []), ("step-6", ["step-3"]), ("step-9", ["step-6"])]
    assert [s for s, _ in checkpoint_steps(tmp_path / "run")] == [6]


# ============================================================ 4. SIGTERM / SIGINT
def test_sigterm_in_finetune_saves_and_exits_143(small_model, tmp_path, wrapper):
    from bertcli.checkpoint import load_checkpoint
    from bertcli.train import checkpoint_steps, read_trainer_state

    train = sentiment_csv(tmp_path / "train.csv")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(wrapper), *finetune_cli(small_model, train, out, "--epochs", "2000")],
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # any complete checkpoint: on an idle machine a tiny model runs an epoch in a few milliseconds,
    # so a particular step-N may already be rotated out when it is polled
    wait_for(lambda: any((out / "checkpoints").glob("step-*")), proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    step = checkpoint_steps(out)[-1][0]
    assert 3 < step < 6000 and f"SIGTERM at step {step}: checkpoint saved" in err
    info, _ = read_trainer_state(out / "checkpoints" / f"step-{step}")
    assert info["step"] == step and info["reason"] == "signal"
    load_checkpoint(out / "checkpoints" / f"step-{step}")
    assert_all_finite(out)


@pytest.fixture
def corpus(tmp_path) -> Path:
    from test_hardening_training import NEG, POS

    docs = []
    for i in range(30):
        docs.append("\n".join(f"{t} {i % 10}" for t in (POS if i % 2 else NEG)))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def pretrain_cli(corpus: Path, tok: Path, out: Path, cfg: Path, *extra) -> list[str]:
    cfg.write_text("model:\n  hidden_size: 32\n  num_layers: 2\n  num_heads: 2\n  intermediate_size: 64\n"
                   "  max_position_embeddings: 64\n")
    return ["pretrain", str(corpus), "--tokenizer", str(tok), "--config", str(cfg), "--out", str(out),
            "--objective", "mlm", "--max-seq-length", "32", "--batch-size", "4", "--max-steps", "100000",
            "--eval-every", "100000", "--save-every", "50", "--log-every", "1", "--device", "cpu",
            "--precision", "fp32", "--quiet", *extra]


def test_sigint_in_pretrain_saves_and_exits_130(tmp_path, wrapper, corpus):
    from bertcli.train import checkpoint_steps, read_trainer_state

    out = tmp_path / "run"
    tok = write_vocab(tmp_path / "vocab")
    proc = subprocess.Popen([sys.executable, str(wrapper), *pretrain_cli(corpus, tok, out, tmp_path / "c.yaml")],
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size > 0, proc,
             "the first step")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    step = checkpoint_steps(out)[-1][0]
    assert f"SIGINT at step {step}: checkpoint saved" in err
    info, _ = read_trainer_state(out / "checkpoints" / f"step-{step}")
    assert info["step"] == step and info["reason"] == "signal"
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged) == step  # nothing after the saved step
    assert_all_finite(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_signal_to_one_gloo_rank_stops_both_at_the_same_step(tmp_path, wrapper, corpus):
    from bertcli.train import checkpoint_steps, read_trainer_state

    out = tmp_path / "run"
    tok = write_vocab(tmp_path / "vocab")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(wrapper), *pretrain_cli(corpus, tok, out, tmp_path / "c.yaml")]
    proc = subprocess.Popen(cmd, env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid1 = tmp_path / "pids" / "rank1.pid"
    wait_for(lambda: pid1.is_file() and (out / "metrics.jsonl").is_file()
             and (out / "metrics.jsonl").stat().st_size > 0, proc, "the first step of both ranks")
    os.kill(int(pid1.read_text()), signal.SIGTERM)  # rank 1 only
    _, err = proc.communicate(timeout=180)
    # torchrun reports its workers' exit 143 as a failure (its own ChildFailedError report, exit 1)
    assert proc.returncode != 0 and "exitcode  : 143" in err, err[-3000:]
    steps = {int(x.split("at step ")[1].split(":")[0]) for x in err.splitlines() if "SIGTERM at step" in x}
    assert len(steps) == 1, err[-3000:]  # both ranks stopped at the same step
    step = steps.pop()
    assert err.count(f"SIGTERM at step {step}: checkpoint saved") == 2, err[-3000:]
    assert checkpoint_steps(out)[-1][0] == step
    info, _ = read_trainer_state(out / "checkpoints" / f"step-{step}")
    assert info["step"] == step and info["args"]["world_size"] == 2


def test_leftovers_of_any_interrupted_write_are_ignored_and_cleaned(small_model, tmp_path):
    """Temporary checkpoint directories, a half-renamed checkpoint and a half-copied final model."""
    from bertcli.tasks.classification import finetune
    from bertcli.train import checkpoint_steps

    out = tmp_path / "run"
    finetune(ft_options(small_model, tmp_path, "run", epochs=1))
    ckpts = out / "checkpoints"
    (ckpts / ".step-6.tmp-abc").mkdir()
    (ckpts / ".step-6.tmp-abc" / "model.safetensors").write_bytes(b"half")
    (ckpts / "step-5").mkdir()  # a directory without trainer_state: not a checkpoint
    (out / ".model.safetensors.export-4242").write_bytes(b"half a model")
    (out / ".1_Pooling.export-4242").mkdir()
    assert [s for s, _ in checkpoint_steps(out)] == [3]
    s = finetune(ft_options(small_model, tmp_path, "run", epochs=2, resume="auto"))
    assert s["resumed_from"].endswith("step-3") and s["steps"] == 6
    assert not list(out.glob(".*")) and not list(ckpts.glob(".*"))
    assert [s for s, _ in checkpoint_steps(out)] == [3, 6]
