"""Hardening (issue 8), training cases 3, 8, 12, 13 (in-process, CPU, a tiny word-level model).

3. Exact resume across an epoch boundary: same sample order, losses and parameters.
8. Mismatches (tokenizer vs embedding rows, max length vs max positions, label map vs head size)
   are caught before the first forward pass, and the error gives both numbers.
12. A NaN/Inf loss (or gradient) at step k stops the run naming step k and never writes non-finite
    weights; ``--skip-nonfinite N`` skips up to N such steps; fp16 scaler overflows are counted.
13. A (simulated) out-of-memory error makes ``--auto-batch-size`` split the batch; the chosen
    micro-batch size is saved and used on resume; other errors pass through.

The helpers here (tiny vocabulary, model, data) are shared with test_hardening_kill.py.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path

import pytest
import torch

from bertcli.errors import TrainingError

sys.path.insert(0, str(Path(__file__).parent))
from conftest import (
    make_tiny_model,  # noqa: E402
    one_error_line,
)

pytestmark = pytest.mark.usefixtures("one_thread")

POS = ["a lovely film", "great acting", "i loved it", "wonderful and warm", "a brilliant plot", "superb music"]
NEG = ["a boring film", "awful acting", "i hated it", "dull and cold", "a terrible plot", "poor music"]
WORDS = sorted({w for t in POS + NEG for w in t.split()} | {str(i) for i in range(10)})


# ============================================================ shared helpers
def write_vocab(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return path


def sentiment_csv(path: Path, n: int = 2) -> Path:
    rows = ["text,label"]
    for i in range(n):
        rows += [f"{t} {i},pos" for t in POS] + [f"{t} {i},neg" for t in NEG]
    path.write_text("\n".join(rows) + "\n")
    return path


def make_small_model(root: Path, **overrides) -> Path:
    """A tiny BERT (hidden 32, 2 layers, 128 positions) over a 40-word vocabulary."""
    return make_tiny_model(root / "model", write_vocab(root / "vocab"), **overrides)


def ft_options(model: Path, root: Path, out: str, **kw):
    from bertcli.tasks.classification import FinetuneOptions

    train = root / "train.csv"
    if not train.exists():
        sentiment_csv(train)  # 24 rows: 3 steps of 8 per epoch
    base = dict(model=str(model), train=str(train), text_column="text", label_column="label",
                out=str(root / out), epochs=2, batch_size=8, lr=1e-3, quiet=True, device="cpu",
                precision="fp32")
    base.update(kw)
    return FinetuneOptions(**base)


def weights(path: Path) -> dict:
    from bertcli.checkpoint import WEIGHTS_NAME, read_weights

    return read_weights(Path(path) / WEIGHTS_NAME)


def all_weight_files(out: Path) -> list[Path]:
    return sorted(Path(out).rglob("*.safetensors"))


def assert_all_finite(out: Path) -> None:
    from bertcli.checkpoint import read_weights

    for f in all_weight_files(out):
        for name, t in read_weights(f).items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), (f, name)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return make_small_model(tmp_path_factory.mktemp("small"))


class Recorder:
    """Wraps SequenceClassificationTask.compute_loss: records batches and losses, injects faults."""

    def __init__(self, monkeypatch, fault=None):
        from bertcli.tasks.classification import SequenceClassificationTask

        self.calls = 0
        self.batches: list[list[int]] = []
        self.losses: list[float] = []
        self.fault = fault
        current = SequenceClassificationTask.compute_loss
        original = getattr(current, "original", current)  # never wrap an earlier Recorder

        def compute_loss(task, model, batch, generator, device):
            self.calls += 1
            loss, logs = original(task, model, batch, generator, device)
            if self.fault is not None:
                loss = self.fault(self.calls, loss)
            self.batches.append(batch["input_ids"][:, 1].tolist() + batch["labels"].tolist())
            self.losses.append(float(loss.detach()))
            return loss, logs

        compute_loss.original = original
        monkeypatch.setattr(SequenceClassificationTask, "compute_loss", compute_loss)


# ============================================================ 3. exact resume across an epoch boundary
@pytest.mark.parametrize("stop_after", [3, 4])  # 3: exactly at the boundary; 4: inside epoch 2
def test_exact_resume_across_epoch_boundary(small_model, tmp_path, monkeypatch, stop_after):
    from bertcli.tasks.classification import finetune
    from bertcli.train import TrainingInterrupted, checkpoint_steps

    straight = Recorder(monkeypatch)
    s1 = finetune(ft_options(small_model, tmp_path, "straight"))
    assert s1["steps"] == 6

    def interrupt(call, loss):
        if call == stop_after:
            signal.raise_signal(signal.SIGINT)  # the step finishes, then the loop saves and stops
        return loss

    broken = Recorder(monkeypatch, interrupt)
    with pytest.raises(TrainingInterrupted) as info:
        finetune(ft_options(small_model, tmp_path, "resumed"))
    assert info.value.exit_code == 130
    assert [s for s, _ in checkpoint_steps(tmp_path / "resumed")][-1] == stop_after
    state = json.loads((tmp_path / "resumed" / "checkpoints" / f"step-{stop_after}" / "trainer_state" /
                        "state.json").read_text())
    assert (state["epoch"], state["batch"]) == divmod(stop_after, 3)

    resumed = Recorder(monkeypatch)
    s2 = finetune(ft_options(small_model, tmp_path, "resumed", resume="auto"))
    assert s2["steps"] == 6 and s2["resumed_from"].endswith(f"step-{stop_after}")
    assert broken.batches + resumed.batches == straight.batches  # the same samples in the same order
    assert broken.losses + resumed.losses == straight.losses  # bitwise
    w1, w2 = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)


def test_second_ctrl_c_stops_at_once(small_model, tmp_path, cli, monkeypatch):
    """Case 4: a second SIGINT does not wait for the step: exit 130, no partial checkpoint, resumable."""
    from bertcli.train import checkpoint_steps

    def twice(call, loss):
        if call == 5:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return loss

    Recorder(monkeypatch, twice)
    args = ["finetune", "--model", small_model, "--train", sentiment_csv(tmp_path / "train.csv"), "--text-column",
            "text", "--label-column", "label", "--out", tmp_path / "run", "--epochs", "2", "--batch-size", "8",
            "--device", "cpu", "--quiet"]
    result = cli(*args)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert [s for s, _ in checkpoint_steps(tmp_path / "run")] == [3]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))
    Recorder(monkeypatch)
    assert cli(*args, "--resume", "auto").exit_code == 0


# ============================================================ 8. mismatches before the first forward pass
@pytest.fixture
def no_forward(monkeypatch):
    """Fail the test if any BERT forward pass runs."""
    from bertcli.model import BertModel

    calls = []

    def forward(self, *args, **kwargs):
        calls.append(1)
        raise AssertionError("a forward pass ran before the mismatch was reported")

    monkeypatch.setattr(BertModel, "forward", forward)
    return calls


@pytest.fixture(scope="module")
def short_vocab_model(tmp_path_factory) -> Path:
    """A checkpoint whose tokenizer has 5 more tokens than its embedding table has rows."""
    from bertcli.checkpoint import save_checkpoint
    from bertcli.config import BertConfig
    from bertcli.heads import BertForPreTraining
    from bertcli.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("short")
    tok = Tokenizer.load(write_vocab(root / "vocab"))
    cfg = BertConfig(vocab_size=tok.vocab_size - 5, hidden_size=32, num_layers=1, num_heads=2,
                     intermediate_size=64, max_positions=64)
    return save_checkpoint(root / "model", BertForPreTraining(cfg).state_dict(), cfg, tok, task="pretraining")


def test_tokenizer_larger_than_embeddings(short_vocab_model, tmp_path, cli, no_forward):
    n = len(WORDS) + 5
    train = sentiment_csv(tmp_path / "train.csv")
    common = ["--text-column", "text", "--label-column", "label", "--device", "cpu"]
    one_error_line(cli("finetune", "--model", short_vocab_model, "--train", train, "--out", tmp_path / "r",
                       *common), f"{n} tokens", f"{n - 5} embedding rows")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a lovely film\ngreat acting\n\ni hated it\npoor music\n")
    one_error_line(cli("pretrain", corpus, "--init-from", short_vocab_model, "--out", tmp_path / "p",
                       "--device", "cpu"), f"{n} tokens", f"{n - 5} embedding rows")
    one_error_line(cli("fill-mask", "--model", short_vocab_model, "a [MASK] film"), str(n), str(n - 5))
    one_error_line(cli("tokenize", "--model", short_vocab_model, "a film"), str(n), str(n - 5))
    assert not no_forward
    assert not (tmp_path / "r" / "checkpoints").exists() and not (tmp_path / "p" / "checkpoints").exists()


def test_max_length_above_max_positions(small_model, tmp_path, cli, no_forward):
    train = sentiment_csv(tmp_path / "train.csv")
    one_error_line(cli("finetune", "--model", small_model, "--train", train, "--text-column", "text",
                       "--label-column", "label", "--out", tmp_path / "r", "--max-length", "512"),
                   "--max-length 512", "max_position_embeddings 128")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a lovely film\ngreat acting\n\ni hated it\npoor music\n")
    one_error_line(cli("pretrain", corpus, "--init-from", small_model, "--out", tmp_path / "p",
                       "--max-seq-length", "256", "--device", "cpu"), "256", "128")
    one_error_line(cli("tokenize", "--model", small_model, "--max-length", "129", "a film"), "129", "128")
    assert not no_forward


@pytest.fixture(scope="module")
def classifier(small_model, tmp_path_factory) -> Path:
    from bertcli.tasks.classification import finetune

    root = tmp_path_factory.mktemp("clf")
    finetune(ft_options(small_model, root, "run", epochs=1))
    return root / "run"


def test_label_map_against_head_size(classifier, tmp_path, cli, no_forward):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(classifier, bad, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = json.loads((bad / "config.json").read_text())
    cfg["id2label"] = {"0": "neg", "1": "pos", "2": "meh"}
    cfg["label2id"] = {"neg": 0, "pos": 1, "meh": 2}
    (bad / "config.json").write_text(json.dumps(cfg))
    data = sentiment_csv(tmp_path / "in.csv", n=1)
    one_error_line(cli("predict", "--model", bad, data, "--quiet"), "3 labels", "2 outputs")
    assert not no_forward


def test_finetune_with_new_labels_gets_a_new_head(classifier, tmp_path):
    """Not an error: a checkpoint fine-tuned on 2 labels fine-tuned again on 3 gets a fresh 3-way head."""
    from bertcli.tasks.classification import SequenceClassificationTask

    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in
                                             zip(POS + NEG, ["a", "b", "c"] * 4, strict=True)))
    task = SequenceClassificationTask(ft_options(classifier, tmp_path, "r", train=str(train)))
    assert task.build_model().classifier.out_features == 3


# ============================================================ 12. non-finite loss
def nan_at(k: int, value: float = float("nan")):
    return lambda call, loss: loss * value if call == k else loss


class InfGrad(torch.autograd.Function):
    """Identity forward; infinite gradient backward (a finite loss with an overflowing gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_loss_stops_naming_the_step(small_model, tmp_path, cli, monkeypatch, value):
    Recorder(monkeypatch, nan_at(5, value))
    result = cli("finetune", "--model", small_model, "--train", sentiment_csv(tmp_path / "train.csv"),
                 "--text-column", "text", "--label-column", "label", "--out", tmp_path / "run", "--epochs", "2",
                 "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--precision", "fp32", "--quiet")
    one_error_line(result, "step 5", "not finite", "step-3")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-3"]
    assert_all_finite(tmp_path / "run")
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no final export of a broken run


def test_infinite_gradient_stops_before_the_update(small_model, tmp_path, monkeypatch):
    from bertcli.tasks.classification import finetune

    Recorder(monkeypatch, lambda call, loss: InfGrad.apply(loss) if call == 2 else loss)
    with pytest.raises(TrainingError, match=r"step 2: the gradient is not finite"):
        finetune(ft_options(small_model, tmp_path, "run"))
    assert_all_finite(tmp_path / "run")


def test_skip_nonfinite_skips_up_to_n_then_stops(small_model, tmp_path, monkeypatch):
    from bertcli.tasks.classification import finetune

    rec = Recorder(monkeypatch, lambda call, loss: loss * float("nan") if call in (2, 4) else loss)
    s = finetune(ft_options(small_model, tmp_path, "two", skip_nonfinite=2))
    assert s["steps"] == 6 and s["skipped_steps"] == 2 and rec.calls == 6
    assert_all_finite(tmp_path / "two")
    logged = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "skipped" in r] == [2, 4]

    Recorder(monkeypatch, lambda call, loss: loss * float("nan") if call in (1, 3, 5) else loss)
    with pytest.raises(TrainingError, match=r"step 5: the loss is not finite.*after 2 skipped step.*--skip-nonfinite 2"):
        finetune(ft_options(small_model, tmp_path, "three", skip_nonfinite=2))
    assert_all_finite(tmp_path / "three")


def test_skip_nonfinite_through_the_cli(small_model, tmp_path, cli, monkeypatch):
    Recorder(monkeypatch, nan_at(2))
    result = cli("finetune", "--model", small_model, "--train", sentiment_csv(tmp_path / "train.csv"),
                 "--text-column", "text", "--label-column", "label", "--out", tmp_path / "run", "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--quiet", "--json",
                 "--skip-nonfinite", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["skipped_steps"] == 1
    assert "--skip-nonfinite" in cli("pretrain", "--help").stdout


def test_fp16_scaler_overflows_are_counted_not_fatal(small_model, tmp_path, monkeypatch):
    """fp16 needs CUDA; on the CPU the loop runs with a real GradScaler('cpu') and fp32 compute."""
    import contextlib

    import bertcli.device
    from bertcli.tasks.classification import finetune

    monkeypatch.setattr(bertcli.device, "resolve_precision", lambda spec, device: "fp16")
    monkeypatch.setattr(bertcli.device, "autocast", lambda device, precision: contextlib.nullcontext())
    Recorder(monkeypatch, lambda call, loss: InfGrad.apply(loss) if call in (2, 3) else loss)
    s = finetune(ft_options(small_model, tmp_path, "run", precision="fp32"))
    assert s["status"] == "completed" and s["steps"] == 6
    assert s["overflow_steps"] == 2
    assert_all_finite(tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-6" / "trainer_state" / "state.json").read_text())
    assert state["scaler"]["scale"] == 2.0**16 / 4  # halved twice
    assert state["overflow_steps"] == 2


# ============================================================ 13. out of memory
class OOMAbove:
    """Patch the classifier's forward: a simulated CUDA OOM for batches above ``limit`` rows."""

    def __init__(self, monkeypatch, limit: int, error=None):
        from bertcli.heads import BertForSequenceClassification

        self.raised = 0
        current = BertForSequenceClassification.forward
        original = getattr(current, "original", current)

        def forward(model, input_ids, *args, **kwargs):
            if input_ids.shape[0] > limit:
                self.raised += 1
                raise error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return original(model, input_ids, *args, **kwargs)

        forward.original = original
        monkeypatch.setattr(BertForSequenceClassification, "forward", forward)


def test_auto_batch_size_shrinks_and_matches_the_full_batch(tmp_path, monkeypatch):
    from bertcli.tasks.classification import finetune

    model = make_small_model(tmp_path, hidden_dropout=0.0, attention_dropout=0.0)  # same maths split or not
    plain = finetune(ft_options(model, tmp_path, "plain", epochs=1))
    oom = OOMAbove(monkeypatch, limit=3)
    s = finetune(ft_options(model, tmp_path, "auto", epochs=1, auto_batch_size=True))
    assert oom.raised == 2  # 8 -> 4 -> 2
    assert s["micro_batch_size"] == 2 and s["steps"] == plain["steps"] == 3
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "auto")
    for k in a:  # the same examples per optimizer step: only float summation order differs
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    state = json.loads((tmp_path / "auto" / "checkpoints" / "step-3" / "trainer_state" / "state.json").read_text())
    assert state["micro_batch_size"] == 2


def test_auto_batch_size_is_kept_on_resume(small_model, tmp_path, monkeypatch):
    from bertcli.tasks.classification import finetune
    from bertcli.train import TrainingInterrupted

    oom = OOMAbove(monkeypatch, limit=4)

    def interrupt(call, loss):
        if call == 6:  # step 3 (two micro-batches of 4 per step)
            signal.raise_signal(signal.SIGTERM)
        return loss

    Recorder(monkeypatch, interrupt)
    with pytest.raises(TrainingInterrupted) as info:
        finetune(ft_options(small_model, tmp_path, "run", auto_batch_size=True))
    assert info.value.exit_code == 143 and oom.raised == 1
    Recorder(monkeypatch)
    oom2 = OOMAbove(monkeypatch, limit=4)
    s = finetune(ft_options(small_model, tmp_path, "run", auto_batch_size=True, resume="auto"))
    assert oom2.raised == 0 and s["micro_batch_size"] == 4 and s["steps"] == 6


def test_oom_without_auto_batch_size_is_one_clear_error(small_model, tmp_path, cli, monkeypatch):
    OOMAbove(monkeypatch, limit=3)
    result = cli("finetune", "--model", small_model, "--train", sentiment_csv(tmp_path / "train.csv"),
                 "--text-column", "text", "--label-column", "label", "--out", tmp_path / "run",
                 "--batch-size", "8", "--device", "cpu", "--quiet")
    one_error_line(result, "step 1", "out of memory", "--auto-batch-size")
    result = cli("finetune", "--model", small_model, "--train", tmp_path / "train.csv", "--text-column", "text",
                 "--label-column", "label", "--out", tmp_path / "auto", "--batch-size", "8", "--device", "cpu",
                 "--quiet", "--json", "--auto-batch-size")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["micro_batch_size"] == 2
    assert "--auto-batch-size" in cli("pretrain", "--help").stdout


def test_oom_at_micro_batch_one_gives_up(small_model, tmp_path, monkeypatch):
    from bertcli.tasks.classification import finetune

    OOMAbove(monkeypatch, limit=0)
    with pytest.raises(TrainingError, match="out of memory.*batch size of 1"):
        finetune(ft_options(small_model, tmp_path, "run", auto_batch_size=True))


def test_other_errors_pass_through(small_model, tmp_path, monkeypatch):
    from bertcli.tasks.classification import finetune

    class Boom(RuntimeError):
        pass

    oom = OOMAbove(monkeypatch, limit=3, error=Boom("not a memory problem"))
    with pytest.raises(Boom):
        finetune(ft_options(small_model, tmp_path, "run", auto_batch_size=True))
    assert oom.raised == 1


def test_summary_numbers_are_finite(small_model, tmp_path):
    from bertcli.tasks.classification import finetune

    s = finetune(ft_options(small_model, tmp_path, "run", epochs=1))
    assert s["skipped_steps"] == 0 and s["overflow_steps"] == 0 and s["micro_batch_size"] == 8
    assert math.isfinite(s["final_loss"])


def test_pretrain_auto_batch_size_and_skip_nonfinite(tmp_path, cli, monkeypatch):
    """The same two options in pretraining (dict batches with MLM masks and NSP labels are split)."""
    from bertcli.heads import BertForPreTraining
    from bertcli.tasks.pretraining import PretrainingTask

    original_forward = BertForPreTraining.forward
    raised = []

    def forward(model, input_ids, *args, **kwargs):
        if input_ids.shape[0] > 2:
            raised.append(input_ids.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original_forward(model, input_ids, *args, **kwargs)

    original_loss = PretrainingTask.compute_loss
    calls = []

    def compute_loss(task, *args, **kwargs):
        calls.append(1)
        loss, logs = original_loss(task, *args, **kwargs)
        return (loss * float("nan") if len(calls) == 3 else loss), logs

    monkeypatch.setattr(BertForPreTraining, "forward", forward)
    monkeypatch.setattr(PretrainingTask, "compute_loss", compute_loss)
    docs = ["\n".join(f"{t} {i}" for t in (POS if i % 2 else NEG)) for i in range(12)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  hidden_size: 32\n  num_layers: 1\n  num_heads: 2\n  intermediate_size: 64\n"
                   "  max_position_embeddings: 64\n")
    result = cli("pretrain", tmp_path / "corpus.txt", "--tokenizer", write_vocab(tmp_path / "vocab"), "--config",
                 cfg, "--out", tmp_path / "run", "--max-steps", "3", "--batch-size", "4", "--max-seq-length", "32",
                 "--device", "cpu", "--precision", "fp32", "--quiet", "--json", "--auto-batch-size",
                 "--skip-nonfinite", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.splitlines()[-1])
    assert raised == [4] and summary["micro_batch_size"] == 2
    assert summary["skipped_steps"] == 1 and summary["steps"] == 3
    assert_all_finite(tmp_path / "run")
