"""The one training loop, shared by pretraining and every fine-tuning task.

A :class:`Task` supplies the model, the batches, the loss and the metrics; :func:`fit` owns
everything else: device and precision (autocast; a GradScaler for fp16), AdamW without weight
decay on biases and LayerNorm weights, warmup then linear / cosine / constant decay, gradient
clipping and accumulation, max steps / epochs / max time, evaluation, best-metric tracking and
early stopping, checkpoints (keep the last K and the best), exact resume, SIGINT / SIGTERM,
non-finite loss, ``metrics.jsonl``, a progress bar and a closing summary, and DDP under
``torchrun``.

Exact resume: every random choice of optimizer step ``s`` is derived from ``(seed, s)``: the data
order of epoch ``e`` from ``(seed, e)``, the masking generator and the dropout RNG are reseeded
at every step. A checkpoint therefore needs only the weights, the optimizer (and scaler) state
and the position ``(step, epoch, batch)``; a resumed run sees the same batches, the same masks
and the same dropout as an uninterrupted one (bitwise on the CPU).

Run directory (``args.out``)::

    OUT/                      a loadable checkpoint of the best (else the final) model
    OUT/checkpoints/step-N/   training checkpoints: a full checkpoint plus trainer_state/
    OUT/metrics.jsonl         one JSON object per log / evaluation
    OUT/run.yaml              the resolved options
    OUT/curves.png            training loss, learning rate and dev metrics against steps (bertcli.curves)
    OUT/tensorboard/          the scalars of metrics.jsonl as event files (--report-to tensorboard)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertcli.config import check_options
from bertcli.errors import BertcliError, CheckpointError, ConfigError, TrainingError

SCHEDULES = ("linear", "cosine", "constant")
STATE_DIR = "trainer_state"


@dataclass
class TrainArgs:
    out: str                       # run directory
    epochs: int = 1
    max_steps: int | None = None   # optimizer steps; wins over epochs when set
    max_time: float | None = None  # seconds
    batch_size: int = 32           # examples per micro-batch per rank
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1            # < 1: fraction of total steps; >= 1: steps
    schedule: str = "linear"       # linear | cosine | constant
    max_grad_norm: float = 1.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    eval_every: int = 0            # optimizer steps; 0 = at the end of each epoch
    save_every: int = 0            # optimizer steps; 0 = at each evaluation
    keep_last: int = 2
    best_metric: str | None = None  # a key of Task.evaluate()'s dict
    greater_is_better: bool = True
    patience: int | None = None    # evaluations without improvement before stopping
    log_every: int = 10
    quiet: bool = False
    resume: str | None = None      # "auto" (latest in out/checkpoints) or a checkpoint directory
    skip_nonfinite: int = 0        # steps with a non-finite loss / gradient skipped before stopping
    auto_batch_size: bool = False  # on out-of-memory, split batches into smaller micro-batches
    report_to: str = "none"        # none | tensorboard: the scalars of metrics.jsonl as event files too

    def __post_init__(self) -> None:
        check_options(self)
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "at least 1"),
            (self.max_time is None or self.max_time > 0, "max_time", "positive (seconds)"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.grad_accum >= 1, "grad_accum", "at least 1"),
            (self.lr > 0, "lr", "positive"),
            (self.weight_decay >= 0, "weight_decay", "zero or positive"),
            (self.warmup >= 0, "warmup", "zero or positive (< 1: a fraction of the steps; >= 1: steps)"),
            (self.schedule in SCHEDULES, "schedule", "one of " + ", ".join(SCHEDULES)),
            (self.max_grad_norm >= 0, "max_grad_norm", "zero (no clipping) or positive"),
            (self.eval_every >= 0, "eval_every", "zero (each epoch) or positive"),
            (self.save_every >= 0, "save_every", "zero (at each evaluation) or positive"),
            (self.keep_last >= 1, "keep_last", "at least 1"),
            (self.patience is None or self.patience >= 1, "patience", "at least 1"),
            (self.log_every >= 1, "log_every", "at least 1"),
            (self.skip_nonfinite >= 0, "skip_nonfinite", "zero (stop at the first) or positive"),
            (self.report_to in ("none", "tensorboard"), "report_to", "none or tensorboard"),
        ]
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"training option '{name}' must be {what}, got {getattr(self, name)!r}")


class Task:
    """What a task gives the loop. Subclass and implement every method."""

    name: str = "task"
    #: extra resolved options written to run.yaml next to the training options (optional)
    run_config: dict[str, Any] = {}

    def build_model(self):  # -> torch.nn.Module
        raise NotImplementedError

    def train_batches(self, epoch: int, generator, batch_size: int, rank: int, world_size: int) -> list:
        """This rank's micro-batches of ``epoch``, deterministic given ``generator``.

        Every rank must return the same number of batches.
        """
        raise NotImplementedError

    def compute_loss(self, model, batch, generator, device):
        """(loss tensor, logs); logs may hold ``"tokens"`` (int) for tokens/s."""
        raise NotImplementedError

    def evaluate(self, model, device) -> dict[str, float]:
        return {}

    def checkpoint_payload(self, model) -> dict:
        """kwargs for ``checkpoint.save_checkpoint`` besides the path."""
        raise NotImplementedError

    def write_checkpoint(self, path, payload: dict, before_commit) -> None:
        """Write a training checkpoint from ``checkpoint_payload``; ``before_commit(tmp)`` adds the trainer state."""
        from bertcli.checkpoint import save_checkpoint

        save_checkpoint(path, **payload, before_commit=before_commit)

    def load_weights(self, model, path) -> None:
        """Load a training checkpoint's weights into ``model`` (``--resume``); override when the
        payload is more than ``model.safetensors`` (ELECTRA's generator beside it)."""
        from bertcli.checkpoint import WEIGHTS_NAME, load_checkpoint, load_into

        load_into(model, load_checkpoint(path).state, str(Path(path) / WEIGHTS_NAME))

    def split_batch(self, batch, size: int) -> list:
        """Cut a micro-batch into pieces of at most ``size`` examples (``--auto-batch-size``).

        The default cuts dicts / lists / tuples of tensors (or lists) along their first dimension.
        """
        return split_batch(batch, size)


class TrainingInterrupted(TrainingError):
    """SIGINT / SIGTERM: the step finished and a checkpoint was saved."""

    def __init__(self, message: str, exit_code: int, checkpoint: str | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.checkpoint = checkpoint


# ============================================================ helpers
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across runs, processes and machines)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def make_generator(*parts: Any, device=None):
    import torch

    g = torch.Generator(device=device if device is not None else "cpu")
    g.manual_seed(derive_seed(*parts))
    return g


def lr_factor(step: int, total: int, warmup_steps: int, schedule: str) -> float:
    """The learning-rate multiplier for optimizer step ``step`` (0-based), as in transformers."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total - warmup_steps)
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))
    return max(0.0, (total - step) / max(1, total - warmup_steps))


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases and LayerNorm weights (all 1-d tensors)."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def batch_len(batch) -> int:
    """Examples in a micro-batch: the first dimension of its first tensor (or its length)."""
    if isinstance(batch, dict):
        return batch_len(next(iter(batch.values())))
    if isinstance(batch, tuple) and batch and not hasattr(batch, "shape"):
        return batch_len(batch[0])
    return int(batch.shape[0]) if hasattr(batch, "shape") else len(batch)


def split_batch(batch, size: int) -> list:
    """Pieces of at most ``size`` examples of a dict / tuple / list / tensor batch, in order."""
    n = batch_len(batch)
    out = []
    for start in range(0, n, size):
        if isinstance(batch, dict):
            out.append({k: v[start:start + size] for k, v in batch.items()})
        elif isinstance(batch, tuple):
            out.append(tuple(v[start:start + size] for v in batch))
        else:
            out.append(batch[start:start + size])
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA / MPS / CPU allocation failure (not any other error)."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def checkpoint_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete training checkpoints under ``run_dir/checkpoints``, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir() and (p / STATE_DIR / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


# ------------------------------------------------------------ trainer state (no pickle)
def _optimizer_to_files(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors = {}
    meta_state: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        meta_state[str(idx)] = {}
        for k, v in st.items():
            if hasattr(v, "shape"):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta_state[str(idx)][k] = v
    groups = [dict(g) for g in sd["param_groups"]]
    for g in groups:
        for k, v in list(g.items()):
            if isinstance(v, tuple):
                g[k] = list(v)
    return tensors, {"param_groups": groups, "scalars": meta_state}


def _optimizer_from_files(optimizer, tensors: dict, meta: dict, source: str) -> None:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    for idx, scalars in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(scalars)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    current = optimizer.state_dict()["param_groups"]
    if len(groups) != len(current) or any(len(a["params"]) != len(b["params"]) for a, b in zip(groups, current, strict=True)):
        raise CheckpointError(f"{source}: the optimizer state does not match this model (different parameters)")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{source}: cannot restore the optimizer state ({exc})") from None


def write_trainer_state(directory: Path, optimizer, scaler, info: dict) -> None:
    from bertcli.checkpoint import write_weights

    d = Path(directory) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors, meta = _optimizer_to_files(optimizer)
    write_weights(tensors, d / "optimizer.safetensors")
    info = dict(info)
    info["optimizer"] = meta
    if scaler is not None:
        info["scaler"] = {k: (float(v) if hasattr(v, "item") else v) for k, v in scaler.state_dict().items()}
    (d / "state.json").write_text(json.dumps(info, indent=1, default=float) + "\n")


def read_trainer_state(ckpt_dir: Path) -> tuple[dict, dict]:
    from bertcli.checkpoint import read_weights
    from bertcli.config import read_json

    d = Path(ckpt_dir) / STATE_DIR
    if not (d / "state.json").is_file():
        raise CheckpointError(
            f"{ckpt_dir}: no {STATE_DIR}/state.json; --resume takes a training checkpoint "
            f"(RUN/checkpoints/step-N) or 'auto'"
        )
    info = read_json(d / "state.json", CheckpointError)
    tensors = read_weights(d / "optimizer.safetensors") if (d / "optimizer.safetensors").is_file() else {}
    return info, tensors


# ------------------------------------------------------------ signals
class _Signals:
    """First SIGINT/SIGTERM: stop after the step. A second SIGINT: stop at once."""

    def __init__(self):
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        try:
            sys.stderr.write(
                f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                f"(press Ctrl-C again to stop at once)\n"
            )
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - never fail inside a signal handler
            pass

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ============================================================ the loop
class _Run:
    def __init__(self, task: Task, args: TrainArgs):
        import torch

        from bertcli.device import resolve_device, resolve_precision

        self.task, self.args = task, args
        self.out = Path(args.out)
        # ---- distributed
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.own_pg = False
        device = resolve_device(args.device)
        if self.world > 1:
            import torch.distributed as dist

            if device.type == "cuda":
                device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                self.own_pg = True
        self.device = device
        self.precision = resolve_precision(args.precision, device)
        self.main = self.rank == 0

    # ---------------------------------------------------------- collective helpers
    def any_rank(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def reduce_loss(self, loss: float, finite: bool) -> tuple[float, bool]:
        """The mean loss over ranks, and whether every rank's loss was finite."""
        if self.world == 1:
            return loss, finite
        import torch
        import torch.distributed as dist

        t = torch.tensor([loss if finite else 0.0, 0.0 if finite else 1.0], dtype=torch.float64,
                         device=self.device)
        dist.all_reduce(t)
        ok = bool(t[1].item() == 0)
        return (t[0].item() / self.world if ok else float("nan")), ok

    def broadcast_floats(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def barrier(self):
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _prepare_out(out: Path) -> None:
    from bertcli.paths import make_run_dir

    make_run_dir(out, TrainingError)
    for left in out.glob(".*.export-*"):  # a copy into OUT interrupted by a crash or SIGKILL
        shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)
    probe = out / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"{out}: the run directory is not writable ({exc.strerror}); choose another --out") from None


def _find_resume(args: TrainArgs, out: Path) -> Path | None:
    from bertcli.checkpoint import clean_leftovers

    clean_leftovers(out / "checkpoints")
    if args.resume is None:
        if checkpoint_steps(out):
            raise ConfigError(
                f"{out}: already holds training checkpoints; pass --resume auto to continue that run, "
                f"or choose another --out"
            )
        return None
    if args.resume == "auto":
        found = checkpoint_steps(out)
        return found[-1][1] if found else None
    path = Path(args.resume)
    if not (path / STATE_DIR / "state.json").is_file():
        raise CheckpointError(
            f"{path}: not a training checkpoint (no {STATE_DIR}/state.json); pass RUN/checkpoints/step-N or 'auto'"
        )
    return path


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, default=float) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume: drop records written after the checkpoint we resume from."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(rec.get("step", 0)) <= step:
            keep.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    os.replace(tmp, path)  # a crash here leaves the old file, never half of it


def _is_better(value: float, best: float | None, greater: bool) -> bool:
    if best is None:
        return True
    return value > best if greater else value < best


def _format_metric(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fit(task: Task, args: TrainArgs) -> dict:
    """Train ``task`` with ``args``; return the summary (final/best metrics, steps, time, paths).

    Raises :class:`TrainingInterrupted` (exit code 130 / 143) after saving on SIGINT / SIGTERM and
    :class:`TrainingError` on a non-finite loss or gradient (before the update; ``skip_nonfinite``
    such steps are skipped first) and on out-of-memory without ``auto_batch_size`` (with it, the
    micro-batch is halved and the step retried; the size is kept in the trainer state).
    """
    run = _Run(task, args)
    try:
        with _Signals() as signals:
            return Trainer(run, signals).fit()
    finally:
        if run.own_pg:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


class Trainer:
    """One training run: the loop's state (position, best metric, counters) and the pieces of a step.

    :meth:`fit` is the loop; every other method owns one piece of it and says which.
    """

    def __init__(self, run: _Run, signals: _Signals):
        self.run, self.signals = run, signals
        self.task, self.args, self.device, self.out = run.task, run.args, run.device, run.out
        self.metrics_path = self.out / "metrics.jsonl"
        self.start_time = time.monotonic()
        # position and what a checkpoint carries
        self.step, self.epoch, self.batch_pos = 0, 0, 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.tokens_seen = 0
        self.history_evals: list[dict] = []
        self.prior_elapsed = 0.0
        self.micro_bs: int | None = None  # micro-batch size chosen by --auto-batch-size (None: unsplit)
        self.skipped_steps = 0            # non-finite steps skipped (--skip-nonfinite)
        self.overflow_steps = 0           # fp16 steps the GradScaler skipped
        self.resume_dir: Path | None = None
        self.last_saved: int | None = None
        # this session only
        self.status = "completed"
        self.interrupted: int | None = None
        self.stop_requested = False       # set by evaluation (early stopping)
        self.last_loss: float | None = None
        self.window_loss, self.window_n, self.window_tokens, self.window_t0 = 0.0, 0, 0, time.monotonic()
        self.session_tokens = 0
        self.train_time = 0.0  # seconds inside optimizer steps (for tokens/s)
        self.progress = None
        self.bar = None
        self.reporter = None  # --report-to tensorboard (rank 0)

    # ---------------------------------------------------------- the loop
    def fit(self) -> dict:
        """Resume, then run optimizer steps until a stop condition; save, export and summarise."""
        self.build()
        self.resume()
        self.plan()
        self.start_progress()
        stop = self.step >= self.total
        self.model.train()
        try:
            while not stop:
                micro = self.next_batches()
                if micro is None:  # the last epoch is over
                    break
                self.set_lr()
                step_t0 = time.monotonic()
                loss, tokens, finite = self.forward_backward_retrying(micro)
                loss, finite = self.run.reduce_loss(loss, finite)
                skipped = self.optimizer_step(loss, finite)
                self.train_time += time.monotonic() - step_t0
                self.advance(micro, loss, tokens, skipped)
                self.log()
                done, got_signal, over_time = self.stop_conditions()
                saved = self.maybe_evaluate(done, got_signal)
                saved = self.maybe_save(saved)
                stop = self.decide_stop(done, got_signal, over_time, saved)
        finally:
            if self.progress is not None:
                self.progress.stop()
        try:
            return self.finish()
        finally:
            if self.reporter is not None:
                self.reporter.close()

    # ---------------------------------------------------------- set-up
    def build(self) -> None:
        """The run directory, the checkpoint to resume from, the model (seeded init), AdamW and the fp16 scaler."""
        import torch

        run, args = self.run, self.args
        if run.main:
            _prepare_out(self.out)
        run.barrier()
        self.resume_dir = _find_resume(args, self.out)
        torch.manual_seed(derive_seed(args.seed, "init"))  # every rank starts equal
        self.model = self.task.build_model().to(self.device)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, args.weight_decay), lr=args.lr,
                                           betas=(0.9, 0.999), eps=1e-8)
        self.scaler = torch.amp.GradScaler(self.device.type) if run.precision == "fp16" else None
        if args.auto_batch_size and run.world > 1:
            raise ConfigError("--auto-batch-size works in a single process; under torchrun choose --batch-size "
                              "(and --grad-accum) yourself")

    def resume(self) -> None:
        """Exact resume: weights, optimizer, scaler, position and counters from the trainer state; then DDP."""
        run, args, resume_dir = self.run, self.args, self.resume_dir
        if resume_dir is not None:
            info, opt_tensors = read_trainer_state(resume_dir)
            self.task.load_weights(_unwrap(self.model), resume_dir)
            _optimizer_from_files(self.optimizer, opt_tensors, info["optimizer"], str(resume_dir / STATE_DIR))
            if self.scaler is not None and info.get("scaler"):
                self.scaler.load_state_dict(info["scaler"])
            self.step, self.epoch, self.batch_pos = int(info["step"]), int(info["epoch"]), int(info["batch"])
            self.best_value, self.best_step = info.get("best_value"), info.get("best_step")
            self.bad_evals = int(info.get("bad_evals", 0))
            self.tokens_seen = int(info.get("tokens_seen", 0))
            self.history_evals = list(info.get("evals", []))
            self.prior_elapsed = float(info.get("elapsed", 0.0))
            self.micro_bs = info.get("micro_batch_size")
            self.skipped_steps = int(info.get("skipped_steps", 0))
            self.overflow_steps = int(info.get("overflow_steps", 0))
            saved = info.get("args", {})
            for key in ("batch_size", "grad_accum", "seed"):
                if key in saved and saved[key] != getattr(args, key):
                    raise ConfigError(
                        f"--resume {resume_dir}: the run used {key}={saved[key]} but now {key}={getattr(args, key)}; "
                        f"exact resume needs the same value"
                    )
            if saved.get("world_size", 1) != run.world:
                raise ConfigError(
                    f"--resume {resume_dir}: the run used {saved.get('world_size', 1)} process(es), now {run.world}; "
                    f"exact resume needs the same number"
                )
            if run.main:
                _truncate_metrics(self.metrics_path, self.step)
            self.last_saved = self.step
        elif run.main and self.metrics_path.exists():
            self.metrics_path.unlink()  # a fresh run (an earlier one left no checkpoint)
        if run.main and args.report_to == "tensorboard":
            from bertcli.curves import TensorBoardReporter, check_report_to

            check_report_to(args.report_to)
            # on resume, TensorBoard drops the events after the checkpoint, as metrics.jsonl is truncated
            self.reporter = TensorBoardReporter(self.out, purge_step=self.step + 1 if resume_dir else None)
        if run.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            device = self.device
            self.model = DistributedDataParallel(self.model,
                                                 device_ids=[device.index] if device.type == "cuda" else None)
        self.raw_model = _unwrap(self.model)

    def plan(self) -> None:
        """This epoch's batches, the total step count, warmup, ``run.yaml`` and the checkpoints on disk."""
        args, run = self.args, self.run
        self.batches = self.epoch_batches(self.epoch)
        if not self.batches:
            raise TrainingError("no training batches: the training data is empty")
        steps_per_epoch = math.ceil(len(self.batches) / args.grad_accum)
        self.total = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
        self.warmup_steps = int(args.warmup * self.total) if args.warmup < 1 else int(args.warmup)
        self.base_lrs = [args.lr for _ in self.optimizer.param_groups]
        if run.main:
            from bertcli.config import save_yaml

            save_yaml({"train": dataclasses.asdict(args), "world_size": run.world, "device": str(self.device),
                       "precision": run.precision, "total_steps": self.total, **(self.task.run_config or {})},
                      self.out / "run.yaml")
        self.saved_steps: list[int] = [s for s, _ in checkpoint_steps(self.out)]
        self.last_eval: dict[str, float] = self.history_evals[-1]["metrics"] if self.history_evals else {}

    def start_progress(self) -> None:
        """The rich progress bar on stderr (rank 0, unless --quiet)."""
        if not (self.run.main and not self.args.quiet):
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self.progress.start()
        self.bar = self.progress.add_task(self.task.name, total=self.total, completed=self.step, info="")

    # ---------------------------------------------------------- batches
    def epoch_batches(self, e: int) -> list:
        """The batches of epoch ``e`` for this rank; the order is derived from ``(seed, e)``."""
        g = make_generator(self.args.seed, "data", e)
        return self.task.train_batches(e, g, self.args.batch_size, self.run.rank, self.run.world)

    def next_batches(self) -> list | None:
        """The micro-batches of the next step, moving to the next epoch at its end; None after the last."""
        if self.batch_pos >= len(self.batches):
            self.epoch += 1
            self.batch_pos = 0
            if self.args.max_steps is None and self.epoch >= self.args.epochs:
                return None
            self.batches = self.epoch_batches(self.epoch)
            if not self.batches:
                raise TrainingError(f"epoch {self.epoch}: no training batches")
        return self.batches[self.batch_pos:self.batch_pos + self.args.grad_accum]

    def set_lr(self) -> None:
        """The learning rate of this step: warmup, then the schedule."""
        factor = lr_factor(self.step, self.total, self.warmup_steps, self.args.schedule)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    # ---------------------------------------------------------- forward / backward
    def forward_backward(self, micro: list, gen) -> tuple[float, int, bool]:
        """Forward and backward over the micro-batches of one step (cut to ``micro_bs`` if set).

        Owns accumulation (the loss is a mean over examples), autocast, the fp16 loss scale and
        DDP's ``no_sync`` on all but the last piece. Returns (loss, tokens, finite).
        """
        from bertcli.device import autocast

        model, device, micro_bs, run = self.model, self.device, self.micro_bs, self.run
        pieces = []  # (batch, weight numerator, weight denominator)
        for batch in micro:
            n = batch_len(batch) if micro_bs is not None else 0
            if micro_bs is not None and n > micro_bs:
                pieces.extend((piece, batch_len(piece), n * len(micro))
                              for piece in self.task.split_batch(batch, micro_bs))
            else:
                pieces.append((batch, 1, len(micro)))
        step_loss, step_tokens, finite = 0.0, 0, True
        for i, (batch, num, den) in enumerate(pieces):
            sync = i == len(pieces) - 1
            ctx = model.no_sync() if (run.world > 1 and not sync) else _nullcontext()
            with ctx:
                with autocast(device, run.precision):
                    loss, logs = self.task.compute_loss(model, batch, gen, device)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    finite = False
                scaled = loss * num / den if num != 1 else loss / den
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            step_loss += loss_value * num / den if num != 1 else loss_value / den
            step_tokens += int(logs.get("tokens", 0)) if logs else 0
        return step_loss, step_tokens, finite

    def forward_backward_retrying(self, micro: list) -> tuple[float, int, bool]:
        """:meth:`forward_backward` with this step's seeds; on out-of-memory, halve the micro-batch and retry
        (``--auto-batch-size``) or stop with advice."""
        import torch

        args, step = self.args, self.step
        while True:
            torch.manual_seed(derive_seed(args.seed, "dropout", step, self.run.rank))
            gen = make_generator(args.seed, "step", step, self.run.rank)
            out_of_memory = False
            try:
                return self.forward_backward(micro, gen)
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; the rest passes
                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True  # handled below, outside the except: its frames hold the tensors
            if out_of_memory:
                self.optimizer.zero_grad(set_to_none=True)
                _free_memory(self.device)
                size = self.micro_bs or max(batch_len(b) for b in micro)
                if not args.auto_batch_size:
                    raise TrainingError(
                        f"step {step + 1}: out of memory with micro-batches of {size} examples; use a smaller "
                        f"--batch-size (with --grad-accum to keep the effective batch) or --auto-batch-size"
                    )
                if size <= 1:
                    raise TrainingError(
                        f"step {step + 1}: out of memory even at a micro-batch size of 1; use a shorter "
                        f"maximum length, a smaller model or another --precision"
                    )
                self.micro_bs = max(1, size // 2)
                _note(self.progress, args, f"step {step + 1}: out of memory; retrying with micro-batches of "
                                           f"{self.micro_bs} (--auto-batch-size; the effective batch is unchanged)")

    # ---------------------------------------------------------- optimizer step
    def optimizer_step(self, loss: float, finite: bool) -> bool:
        """Unscale, clip, check the gradient, then step (or skip a non-finite step); True when skipped."""
        import torch

        model, scaler, optimizer, args = self.model, self.scaler, self.optimizer, self.args
        grad_finite, grad_norm = True, None
        if finite:
            if scaler is not None:
                scaler.unscale_(optimizer)
            if args.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            elif scaler is None:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
            # with fp16 the GradScaler skips overflowing steps itself (counted below)
            grad_finite = scaler is not None or grad_norm is None or bool(torch.isfinite(grad_norm))
        skipped = not (finite and grad_finite)
        if skipped:
            what = "loss" if not finite else "gradient"
            self.skip_nonfinite(what, loss if not finite else float(grad_norm))
        elif scaler is not None:
            scale = scaler.get_scale()
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() < scale:
                self.overflow_steps += 1  # fp16 gradients overflowed: the scaler skipped the update
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return skipped

    def skip_nonfinite(self, what: str, value: float) -> None:
        """A non-finite loss or gradient: stop with advice, or skip and record it (``--skip-nonfinite N``)."""
        args, step = self.args, self.step
        if self.skipped_steps >= args.skip_nonfinite:
            raise TrainingError(
                f"step {step + 1}: the {what} is not finite ({value}); training stopped"
                + (f" after {self.skipped_steps} skipped step(s) (--skip-nonfinite {args.skip_nonfinite})"
                   if args.skip_nonfinite else "") + ". "
                + (f"The last good checkpoint is {self.out / 'checkpoints' / f'step-{self.last_saved}'}; "
                   if self.last_saved is not None else "No checkpoint was written; ")
                + "try a lower --lr, --precision fp32, a smaller --max-grad-norm or --skip-nonfinite N"
            )
        self.skipped_steps += 1
        if self.run.main:
            self.record({"step": step + 1, "epoch": self.epoch, "skipped": f"non-finite {what}",
                                              "value": str(value), "skipped_steps": self.skipped_steps})
        _note(self.progress, args, f"step {step + 1}: the {what} is not finite ({value}); step skipped "
                                   f"({self.skipped_steps} of --skip-nonfinite {args.skip_nonfinite})")

    def advance(self, micro: list, loss: float, tokens: int, skipped: bool) -> None:
        """Move the position one step on and count its tokens and loss."""
        self.step += 1
        self.batch_pos += len(micro)
        tokens *= self.run.world
        self.tokens_seen += tokens
        self.session_tokens += tokens
        self.window_tokens += tokens
        if not skipped:
            self.last_loss = loss
            self.window_loss += loss
            self.window_n += 1

    # ---------------------------------------------------------- log, evaluate, save, stop
    def record(self, rec: dict) -> None:
        """One record to ``metrics.jsonl`` (rank 0), and to TensorBoard with ``--report-to tensorboard``."""
        _append_jsonl(self.metrics_path, rec)
        if self.reporter is not None:
            self.reporter.add(rec)

    def log(self) -> None:
        """Every ``log_every`` steps: the mean loss, lr and tokens/s to ``metrics.jsonl`` and the bar."""
        step, args = self.step, self.args
        if (step % args.log_every == 0 or step == self.total) and self.window_n:
            now = time.monotonic()
            rate = self.window_tokens / max(now - self.window_t0, 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            mean = self.window_loss / self.window_n
            if self.run.main:
                self.record({"step": step, "epoch": self.epoch, "loss": mean, "lr": lr,
                                                  "tokens_per_s": rate, "tokens": self.tokens_seen})
            if self.progress is not None:
                self.progress.update(self.bar, info=f"loss {mean:.4f}  lr {lr:.2e}  {rate:,.0f} tok/s")
            self.window_loss, self.window_n, self.window_tokens, self.window_t0 = 0.0, 0, 0, now
        if self.progress is not None:
            self.progress.update(self.bar, completed=step)

    def stop_conditions(self) -> tuple[bool, bool, bool]:
        """(done: the last step, got a signal on any rank, over --max-time on any rank)."""
        args = self.args
        end_of_epoch = self.batch_pos >= len(self.batches)
        over_time = args.max_time is not None and time.monotonic() - self.start_time >= args.max_time
        got_signal = self.run.any_rank(self.signals.received is not None)
        over_time = self.run.any_rank(over_time)
        done = self.step >= self.total or (args.max_steps is None and end_of_epoch and self.epoch + 1 >= args.epochs)
        return done, got_signal, over_time

    def maybe_evaluate(self, done: bool, got_signal: bool) -> bool:
        """Evaluate when due (``eval_every``, the epoch's end, the last step); save on improvement; early
        stopping. True when a checkpoint was written."""
        args, step = self.args, self.step
        end_of_epoch = self.batch_pos >= len(self.batches)
        do_eval = (args.eval_every > 0 and step % args.eval_every == 0) or (args.eval_every == 0 and end_of_epoch)
        if done and not got_signal:
            do_eval = True
        if not do_eval or got_signal:
            return False
        saved = False
        result = self.evaluate(step, self.epoch)
        if self.progress is not None and len(result) > 1:
            self.progress.console.print(
                f"step {step}: " + "  ".join(f"{k} {_format_metric(v)}" for k, v in result.items() if k != "improved"))
        if args.save_every == 0 or result["improved"]:
            self.save(step, self.epoch, self.batch_pos, reason="eval")
            saved = True
        if args.patience is not None and self.bad_evals >= args.patience:
            self.status = "early_stopped"
            self.stop_requested = True
        return saved

    def maybe_save(self, saved: bool) -> bool:
        """The periodic checkpoint every ``save_every`` steps (unless this step already saved)."""
        if self.args.save_every > 0 and self.step % self.args.save_every == 0 and not saved:
            self.save(self.step, self.epoch, self.batch_pos, reason="periodic")
            return True
        return saved

    def decide_stop(self, done: bool, got_signal: bool, over_time: bool, saved: bool) -> bool:
        """Whether the loop ends after this step: done, early-stopped, a signal (saved first) or --max-time."""
        stop = self.stop_requested
        if got_signal:
            self.interrupted = self.signals.received or signal.SIGTERM
            if not saved:
                self.save(self.step, self.epoch, self.batch_pos, reason="signal")
            self.status = "interrupted"
            stop = True
        elif over_time and not done:
            self.status = "max_time"
            stop = True
        return stop or done

    def evaluate(self, at_step: int, ep: int) -> dict[str, float]:
        """Run the task's metrics on rank 0, track the best metric and patience, share them with every rank."""
        import torch

        from bertcli.device import autocast

        run, args = self.run, self.args
        metrics: dict[str, float] = {}
        improved = False
        if run.main:
            self.raw_model.eval()
            with torch.no_grad(), autocast(self.device, run.precision):
                metrics = {k: float(v) for k, v in (self.task.evaluate(self.raw_model, self.device) or {}).items()}
            self.raw_model.train()
            if args.best_metric is not None and metrics:
                if args.best_metric not in metrics:
                    raise ConfigError(
                        f"best metric '{args.best_metric}' is not among the evaluation metrics: "
                        f"{', '.join(sorted(metrics))}"
                    )
                value = metrics[args.best_metric]
                if _is_better(value, self.best_value, args.greater_is_better):
                    self.best_value, self.best_step, self.bad_evals, improved = value, at_step, 0, True
                else:
                    self.bad_evals += 1
            self.record({"step": at_step, "epoch": ep, "eval": metrics})
            self.history_evals.append({"step": at_step, "metrics": metrics})
            self.last_eval = metrics
        flags = run.broadcast_floats([float(improved), float(self.bad_evals),
                                      -1.0 if self.best_step is None else float(self.best_step)])
        improved, self.bad_evals = bool(flags[0]), int(flags[1])
        self.best_step = None if flags[2] < 0 else int(flags[2])
        return {"improved": improved, **metrics}

    def save(self, at_step: int, ep: int, pos: int, *, reason: str) -> Path | None:
        """Write ``checkpoints/step-N`` with its trainer state (rank 0), then prune to the last K and the best."""
        import torch

        run, args, out = self.run, self.args, self.out
        if pos >= len(self.batches):
            ep, pos = ep + 1, 0
        if run.main:
            payload = self.task.checkpoint_payload(self.raw_model)
            for k, v in payload["state"].items():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise TrainingError(f"step {at_step}: parameter {k} is not finite; not writing the checkpoint")
            info = {
                "step": at_step, "epoch": ep, "batch": pos, "best_value": self.best_value,
                "best_step": self.best_step, "bad_evals": self.bad_evals, "tokens_seen": self.tokens_seen,
                "evals": self.history_evals, "elapsed": self.prior_elapsed + time.monotonic() - self.start_time,
                "reason": reason, "micro_batch_size": self.micro_bs, "skipped_steps": self.skipped_steps,
                "overflow_steps": self.overflow_steps, "args": {**dataclasses.asdict(args), "world_size": run.world},
                "task": self.task.name,
            }
            path = out / "checkpoints" / f"step-{at_step}"
            self.task.write_checkpoint(path, payload,
                                       lambda tmp: write_trainer_state(tmp, self.optimizer, self.scaler, info))
            if at_step not in self.saved_steps:
                self.saved_steps.append(at_step)
            # prune only after the new checkpoint is in place
            keep = set(sorted(self.saved_steps)[-args.keep_last:])
            if self.best_step is not None:
                keep.add(self.best_step)
            for s in list(self.saved_steps):
                if s not in keep:
                    shutil.rmtree(out / "checkpoints" / f"step-{s}", ignore_errors=True)
                    self.saved_steps.remove(s)
        run.barrier()
        self.last_saved = at_step
        return out / "checkpoints" / f"step-{at_step}"

    # ---------------------------------------------------------- the end
    def finish(self) -> dict:
        """The closing evaluation (--max-time) and save, the export to OUT, the summary; re-raise a signal."""
        run, args, out, step = self.run, self.args, self.out, self.step
        if self.status == "max_time" and (not self.history_evals or self.history_evals[-1]["step"] != step):
            self.evaluate(step, self.epoch)
        if self.last_saved != step:
            self.save(step, self.epoch, self.batch_pos, reason="final")
        if run.main:
            export_step = self.best_step if (self.best_step is not None and args.best_metric is not None) else step
            export_checkpoint(out / "checkpoints" / f"step-{export_step}", out)
        run.barrier()
        summary = self.summary()
        if run.main:
            self.record({"step": step, "summary": summary})
            self.write_curves()
            if not args.quiet:
                print_summary(summary)
        if self.interrupted is not None:
            name = signal.Signals(self.interrupted).name
            code = 130 if self.interrupted == signal.SIGINT else 143
            raise TrainingInterrupted(
                f"{name} at step {step}: checkpoint saved to {out / 'checkpoints' / f'step-{step}'}; "
                f"continue with --resume auto", exit_code=code, checkpoint=str(out / "checkpoints" / f"step-{step}"),
            )
        return summary

    def write_curves(self) -> None:
        """``OUT/curves.png``: training loss, learning rate and each dev metric against steps (rank 0)."""
        from bertcli.curves import write_run_curves

        write_run_curves(self.out, notice=lambda m: _note(None, self.args, m))

    def summary(self) -> dict:
        """The run's summary: status, steps, loss, tokens/s, time, metrics, best, paths, device, counters."""
        args, run = self.args, self.run
        elapsed = time.monotonic() - self.start_time
        final_eval = self.history_evals[-1]["metrics"] if self.history_evals else self.last_eval
        return {
            "status": self.status, "steps": self.step, "total_steps": self.total, "epochs": self.epoch,
            "final_loss": self.last_loss, "tokens": self.tokens_seen,
            "tokens_per_s": self.session_tokens / max(self.train_time, 1e-9), "time_s": elapsed,
            "time_total_s": self.prior_elapsed + elapsed, "final_metrics": final_eval,
            "best_metric": args.best_metric, "best_value": self.best_value, "best_step": self.best_step,
            "out": str(self.out), "checkpoint": str(self.out / "checkpoints" / f"step-{self.step}"),
            "resumed_from": str(self.resume_dir) if self.resume_dir else None, "world_size": run.world,
            "device": str(self.device), "precision": run.precision,
            "skipped_steps": self.skipped_steps, "overflow_steps": self.overflow_steps,
            "micro_batch_size": self.micro_bs or args.batch_size, "batch_size": args.batch_size,
        }


def _free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _note(progress, args, message: str) -> None:
    """A one-line notice on stderr (above the progress bar when there is one)."""
    if args.quiet:
        return
    if progress is not None:
        progress.console.print(message, highlight=False)
    else:
        sys.stderr.write(message + "\n")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def export_checkpoint(ckpt: Path, out: Path) -> None:
    """Copy a training checkpoint (without trainer_state) into the run directory itself."""
    for item in sorted(ckpt.iterdir()):
        if item.name == STATE_DIR:
            continue
        target = out / item.name
        tmp = out / f".{item.name}.export-{os.getpid()}"
        try:
            if item.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(item, tmp)
                if target.exists():
                    shutil.rmtree(target)
            else:
                shutil.copy2(item, tmp)
            os.replace(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            raise TrainingError(f"{target}: cannot write the final model ({exc.strerror})") from None


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="training summary", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("status", summary["status"]), ("steps", f"{summary['steps']} / {summary['total_steps']}"),
        ("final loss", _format_metric(summary["final_loss"]) if summary["final_loss"] is not None else "-"),
        ("tokens/s", f"{summary['tokens_per_s']:,.0f}"), ("time", f"{summary['time_s']:.1f} s"),
    ]
    for k, v in (summary.get("final_metrics") or {}).items():
        rows.append((f"eval {k}", _format_metric(v)))
    if summary.get("best_metric") and summary.get("best_value") is not None:
        rows.append((f"best {summary['best_metric']}", f"{_format_metric(summary['best_value'])} "
                                                        f"(step {summary['best_step']})"))
    if summary.get("skipped_steps"):
        rows.append(("skipped steps", f"{summary['skipped_steps']} (non-finite loss or gradient)"))
    if summary.get("overflow_steps"):
        rows.append(("fp16 overflows", f"{summary['overflow_steps']} steps skipped by the GradScaler"))
    if summary.get("micro_batch_size") is not None and summary["micro_batch_size"] < summary.get("batch_size", 1 << 30):
        rows.append(("micro-batch", str(summary["micro_batch_size"])))
    rows.append(("model", summary["out"]))
    for k, v in rows:
        table.add_row(k, str(v))
    Console(stderr=True).print(table)


__all__ = ["TrainArgs", "Task", "fit", "TrainingInterrupted", "BertcliError", "derive_seed", "make_generator",
           "lr_factor", "checkpoint_steps"]
