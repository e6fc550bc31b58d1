"""The shared training loop (bertcli.train) on a toy classification task: schedule, accumulation,
checkpoints, exact resume across epochs, early stopping, signals, non-finite loss, DDP (gloo)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bertcli.errors import ConfigError, TrainingError
from bertcli.train import Task, TrainArgs, checkpoint_steps, fit, lr_factor, param_groups

WORDS = [f"w{i}" for i in range(40)]


def write_vocab(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


class ToyTask(Task):
    """Label = parity of the first word; ``noise`` replaces tokens with the step generator."""

    name = "classification"

    def __init__(self, vocab_dir: Path, n: int = 48, noise: bool = True, dropout: float = 0.1,
                 nan_at: int | None = None):
        from bertcli.tokenizer import Tokenizer

        self.tok = Tokenizer.load(vocab_dir)
        g = torch.Generator().manual_seed(123)
        self.x = torch.randint(5, self.tok.vocab_size, (n, 8), generator=g)
        self.x[:, 0] = self.tok.cls_id
        self.y = (self.x[:, 1] % 2).long()
        self.noise, self.dropout, self.nan_at = noise, dropout, nan_at
        self.calls = 0
        self.order: list[list[int]] = []

    def build_model(self):
        from bertcli.config import BertConfig
        from bertcli.heads import BertForSequenceClassification

        cfg = BertConfig(vocab_size=self.tok.vocab_size, hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_positions=16, hidden_dropout=self.dropout,
                         attention_dropout=self.dropout)
        self.config = cfg
        return BertForSequenceClassification(cfg, num_labels=2)

    def train_batches(self, epoch, generator, batch_size, rank, world_size):
        perm = torch.randperm(len(self.x), generator=generator).tolist()
        glob = batch_size * world_size
        out = []
        for i in range(0, len(perm) - glob + 1, glob):
            out.append(perm[i + rank * batch_size: i + (rank + 1) * batch_size])
        return out

    def compute_loss(self, model, batch, generator, device):
        self.calls += 1
        self.order.append(list(batch))
        x = self.x[batch].clone()
        if self.noise:
            flip = torch.rand(x.shape, generator=generator) < 0.1
            x[flip] = 5
        logits = model(x.to(device))
        loss = torch.nn.functional.cross_entropy(logits.float(), self.y[batch].to(device))
        if self.nan_at is not None and self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, {"tokens": x.numel()}

    def evaluate(self, model, device):
        logits = model(self.x.to(device))
        return {"accuracy": float((logits.argmax(-1).cpu() == self.y).float().mean()),
                "loss": float(torch.nn.functional.cross_entropy(logits.float().cpu(), self.y))}

    def checkpoint_payload(self, model):
        return {"state": model.state_dict(), "config": self.config, "tokenizer": self.tok,
                "task": "classification"}


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    return write_vocab(tmp_path_factory.mktemp("vocab"))


def args(out, **kw):
    base = dict(out=str(out), epochs=3, batch_size=4, lr=1e-2, warmup=0.2, device="cpu", precision="fp32",
                quiet=True, log_every=1, keep_last=2)
    base.update(kw)
    return TrainArgs(**base)


def weights(path):
    from bertcli.checkpoint import load_checkpoint

    return load_checkpoint(path).state


def losses(out):
    recs = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if "loss" in r]


def test_schedule_and_param_groups():
    assert lr_factor(0, 100, 10, "linear") == 0.0
    assert lr_factor(10, 100, 10, "linear") == 1.0
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant") == 1.0
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    groups = param_groups(model, 0.01)
    assert [len(g["params"]) for g in groups] == [1, 3]
    assert groups[1]["weight_decay"] == 0.0


def test_bad_options():
    with pytest.raises(ConfigError, match="schedule"):
        TrainArgs(out="x", schedule="step")
    with pytest.raises(ConfigError, match="batch_size"):
        TrainArgs(out="x", batch_size=0)


def test_fit_layout_and_best(vocab, tmp_path):
    out = tmp_path / "run"
    s = fit(ToyTask(vocab), args(out, best_metric="loss", greater_is_better=False, keep_last=1))
    assert s["status"] == "completed" and s["steps"] == 3 * 12
    # tokens/s is over the time spent in optimizer steps (it once divided by a time that stayed 0)
    assert s["tokens"] > 0 and 0 < s["tokens_per_s"] < 1e10
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file() and (out / "run.yaml").is_file()
    steps = [st for st, _ in checkpoint_steps(out)]
    assert steps[-1] == 36 and s["best_step"] in steps and len(steps) <= 2
    # OUT holds the best model
    assert all(torch.equal(a, weights(out / "checkpoints" / f"step-{s['best_step']}")[k])
               for k, a in weights(out).items())
    assert not list((out / "checkpoints" / "step-36").glob("*.bin"))
    # a second run into the same directory needs --resume
    with pytest.raises(ConfigError, match="--resume auto"):
        fit(ToyTask(vocab), args(out))


def test_exact_resume_across_epochs(vocab, tmp_path):
    """Stopped in epoch 2 (via max_steps on a run whose schedule is fixed) and resumed: bitwise."""
    straight = tmp_path / "straight"
    t1 = ToyTask(vocab)
    s1 = fit(t1, args(straight, grad_accum=2, save_every=4))
    total = s1["steps"]
    # interrupted run: kill after step 8 of 18 by raising from the task (like SIGKILL: no final save)
    part = tmp_path / "part"

    class Crash(ToyTask):
        def compute_loss(self, model, batch, generator, device):
            if self.calls == 2 * 9 + 1:  # the first micro-batch of step 10
                raise KeyboardInterrupt
            return super().compute_loss(model, batch, generator, device)

    t2 = Crash(vocab)
    with pytest.raises(KeyboardInterrupt):
        fit(t2, args(part, grad_accum=2, save_every=4))
    assert [s for s, _ in checkpoint_steps(part)] == [4, 8]
    t3 = ToyTask(vocab)
    s3 = fit(t3, args(part, grad_accum=2, save_every=4, resume="auto"))
    assert s3["steps"] == total and s3["resumed_from"].endswith("step-8")
    assert t3.order == t1.order[16:]
    assert s3["final_loss"] == s1["final_loss"]
    assert losses(part) == losses(straight)
    w1, w3 = weights(straight), weights(part)
    assert all(torch.equal(w1[k], w3[k]) for k in w1)


def test_early_stopping(vocab, tmp_path):
    s = fit(ToyTask(vocab), args(tmp_path / "r", epochs=20, lr=1e-9, warmup=0, eval_every=2,
                                 best_metric="loss", greater_is_better=False, patience=1))
    assert s["status"] == "early_stopped" and s["steps"] < 20 * 12


def test_nonfinite_loss_keeps_last_checkpoint(vocab, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(TrainingError, match=r"step 7: the loss is not finite.*step-6"):
        fit(ToyTask(vocab, nan_at=7), args(out, save_every=2, keep_last=1))
    steps = checkpoint_steps(out)
    assert [s for s, _ in steps] == [6]
    assert all(torch.isfinite(v).all() for v in weights(steps[-1][1]).values())


def test_unwritable_out(vocab, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(TrainingError, match="not writable|cannot create"):
            fit(ToyTask(vocab), args(ro / "run"))
    finally:
        ro.chmod(0o700)


def test_max_time(vocab, tmp_path):
    s = fit(ToyTask(vocab), args(tmp_path / "r", epochs=1000, max_time=0.01))
    assert s["status"] == "max_time" and s["steps"] >= 1
    assert checkpoint_steps(tmp_path / "r")[-1][0] == s["steps"]


# ------------------------------------------------------------ DDP (2 gloo processes on the CPU)
DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    from test_train_loop import ToyTask, args
    from bertcli.train import fit
    out, bs = sys.argv[1], int(sys.argv[2])
    s = fit(ToyTask({vocab!r}, noise=False, dropout=0.0), args(out, epochs=2, batch_size=bs))
    print(json.dumps(s))
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_matches_single_process(vocab, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), vocab=str(vocab)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the two ranks
    try:
        fit(ToyTask(vocab, noise=False, dropout=0.0), args(tmp_path / "one", epochs=2, batch_size=8))
    finally:
        torch.set_num_threads(threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script), str(tmp_path / "two"), "4"]
    two = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], rtol=1e-4, atol=1e-5), (k, (w1[k] - w2[k]).abs().max())
    l1, l2 = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(l1) == len(l2) and all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(l1, l2, strict=True))
