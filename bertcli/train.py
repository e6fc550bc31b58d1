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
            return _fit(run, signals)
    finally:
        if run.own_pg:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _fit(run: _Run, signals: _Signals) -> dict:  # noqa: C901 - the loop is long by nature
    import torch

    from bertcli.checkpoint import WEIGHTS_NAME, load_checkpoint, load_into, save_checkpoint
    from bertcli.config import save_yaml
    from bertcli.device import autocast

    task, args, device = run.task, run.args, run.device
    out = run.out
    start_time = time.monotonic()
    if run.main:
        _prepare_out(out)
    run.barrier()
    resume_dir = _find_resume(args, out)

    # ---- model and optimizer (the init is seeded, so every rank starts equal)
    torch.manual_seed(derive_seed(args.seed, "init"))
    model = task.build_model().to(device)
    optimizer = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr,
                                  betas=(0.9, 0.999), eps=1e-8)
    scaler = torch.amp.GradScaler(device.type) if run.precision == "fp16" else None

    step, epoch, batch_pos = 0, 0, 0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals = 0
    tokens_seen = 0
    history_evals: list[dict] = []
    prior_elapsed = 0.0
    micro_bs: int | None = None  # micro-batch size chosen by --auto-batch-size (None: unsplit)
    skipped_steps = 0            # non-finite steps skipped (--skip-nonfinite)
    overflow_steps = 0           # fp16 steps the GradScaler skipped
    if args.auto_batch_size and run.world > 1:
        raise ConfigError("--auto-batch-size works in a single process; under torchrun choose --batch-size "
                          "(and --grad-accum) yourself")
    if resume_dir is not None:
        info, opt_tensors = read_trainer_state(resume_dir)
        ckpt = load_checkpoint(resume_dir)
        load_into(_unwrap(model), ckpt.state, str(resume_dir / WEIGHTS_NAME))
        _optimizer_from_files(optimizer, opt_tensors, info["optimizer"], str(resume_dir / STATE_DIR))
        if scaler is not None and info.get("scaler"):
            scaler.load_state_dict(info["scaler"])
        step, epoch, batch_pos = int(info["step"]), int(info["epoch"]), int(info["batch"])
        best_value, best_step = info.get("best_value"), info.get("best_step")
        bad_evals = int(info.get("bad_evals", 0))
        tokens_seen = int(info.get("tokens_seen", 0))
        history_evals = list(info.get("evals", []))
        prior_elapsed = float(info.get("elapsed", 0.0))
        micro_bs = info.get("micro_batch_size")
        skipped_steps = int(info.get("skipped_steps", 0))
        overflow_steps = int(info.get("overflow_steps", 0))
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
            _truncate_metrics(out / "metrics.jsonl", step)

    elif run.main and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run (an earlier one left no checkpoint)

    if run.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    raw_model = _unwrap(model)

    # ---- schedule
    def epoch_batches(e: int) -> list:
        g = make_generator(args.seed, "data", e)
        return task.train_batches(e, g, args.batch_size, run.rank, run.world)

    batches = epoch_batches(epoch)
    if not batches:
        raise TrainingError("no training batches: the training data is empty")
    steps_per_epoch = math.ceil(len(batches) / args.grad_accum)
    total = args.max_steps if args.max_steps is not None else args.epochs * steps_per_epoch
    warmup_steps = int(args.warmup * total) if args.warmup < 1 else int(args.warmup)
    base_lrs = [args.lr for _ in optimizer.param_groups]

    run_yaml = {"train": dataclasses.asdict(args), "world_size": run.world, "device": str(device),
                "precision": run.precision, "total_steps": total, **(task.run_config or {})}
    if run.main:
        save_yaml(run_yaml, out / "run.yaml")

    metrics_path = out / "metrics.jsonl"
    saved_steps: list[int] = [s for s, _ in checkpoint_steps(out)]
    last_saved = step if resume_dir is not None else None
    last_eval: dict[str, float] = history_evals[-1]["metrics"] if history_evals else {}

    # ---- checkpointing
    def save(at_step: int, ep: int, pos: int, *, reason: str) -> Path | None:
        nonlocal last_saved
        if pos >= len(batches):
            ep, pos = ep + 1, 0
        if run.main:
            payload = task.checkpoint_payload(raw_model)
            for k, v in payload["state"].items():
                if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                    raise TrainingError(f"step {at_step}: parameter {k} is not finite; not writing the checkpoint")
            info = {
                "step": at_step, "epoch": ep, "batch": pos, "best_value": best_value, "best_step": best_step,
                "bad_evals": bad_evals, "tokens_seen": tokens_seen, "evals": history_evals,
                "elapsed": prior_elapsed + time.monotonic() - start_time, "reason": reason,
                "micro_batch_size": micro_bs, "skipped_steps": skipped_steps, "overflow_steps": overflow_steps,
                "args": {**dataclasses.asdict(args), "world_size": run.world}, "task": task.name,
            }
            path = out / "checkpoints" / f"step-{at_step}"
            save_checkpoint(path, **payload, before_commit=lambda tmp: write_trainer_state(tmp, optimizer, scaler, info))
            if at_step not in saved_steps:
                saved_steps.append(at_step)
            # prune only after the new checkpoint is in place
            keep = set(sorted(saved_steps)[-args.keep_last:])
            if best_step is not None:
                keep.add(best_step)
            for s in list(saved_steps):
                if s not in keep:
                    shutil.rmtree(out / "checkpoints" / f"step-{s}", ignore_errors=True)
                    saved_steps.remove(s)
        run.barrier()
        last_saved = at_step
        return out / "checkpoints" / f"step-{at_step}"

    # ---- evaluation
    def evaluate(at_step: int, ep: int) -> dict[str, float]:
        nonlocal best_value, best_step, bad_evals, last_eval
        metrics: dict[str, float] = {}
        improved = False
        if run.main:
            raw_model.eval()
            with torch.no_grad(), autocast(device, run.precision):
                metrics = {k: float(v) for k, v in (task.evaluate(raw_model, device) or {}).items()}
            raw_model.train()
            if args.best_metric is not None and metrics:
                if args.best_metric not in metrics:
                    raise ConfigError(
                        f"best metric '{args.best_metric}' is not among the evaluation metrics: "
                        f"{', '.join(sorted(metrics))}"
                    )
                value = metrics[args.best_metric]
                if _is_better(value, best_value, args.greater_is_better):
                    best_value, best_step, bad_evals, improved = value, at_step, 0, True
                else:
                    bad_evals += 1
            record = {"step": at_step, "epoch": ep, "eval": metrics}
            _append_jsonl(metrics_path, record)
            history_evals.append({"step": at_step, "metrics": metrics})
            last_eval = metrics
        flags = run.broadcast_floats([float(improved), float(bad_evals),
                                      -1.0 if best_step is None else float(best_step)])
        improved, bad_evals = bool(flags[0]), int(flags[1])
        best_step = None if flags[2] < 0 else int(flags[2])
        return {"improved": improved, **metrics}

    # ---- progress
    progress = None
    bar = None
    if run.main and not args.quiet:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        progress.start()
        bar = progress.add_task(task.name, total=total, completed=step, info="")

    def forward_backward(micro: list, gen) -> tuple[float, int, bool]:
        """Forward and backward over the micro-batches of one step (cut to ``micro_bs`` if set)."""
        pieces = []  # (batch, weight numerator, weight denominator): the loss is a mean over examples
        for batch in micro:
            n = batch_len(batch) if micro_bs is not None else 0
            if micro_bs is not None and n > micro_bs:
                pieces.extend((piece, batch_len(piece), n * len(micro)) for piece in task.split_batch(batch, micro_bs))
            else:
                pieces.append((batch, 1, len(micro)))
        step_loss, step_tokens, finite = 0.0, 0, True
        for i, (batch, num, den) in enumerate(pieces):
            sync = i == len(pieces) - 1
            ctx = model.no_sync() if (run.world > 1 and not sync) else _nullcontext()
            with ctx:
                with autocast(device, run.precision):
                    loss, logs = task.compute_loss(model, batch, gen, device)
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    finite = False
                scaled = loss * num / den if num != 1 else loss / den
                if scaler is not None:
                    scaler.scale(scaled).backward()
                else:
                    scaled.backward()
            step_loss += loss_value * num / den if num != 1 else loss_value / den
            step_tokens += int(logs.get("tokens", 0)) if logs else 0
        return step_loss, step_tokens, finite

    status = "completed"
    interrupted: int | None = None
    last_loss: float | None = None
    window_loss, window_n, window_tokens, window_t0 = 0.0, 0, 0, time.monotonic()
    session_tokens = 0
    train_time = 0.0  # seconds inside optimizer steps (for tokens/s)
    stop = step >= total
    model.train()
    try:
        while not stop:
            if batch_pos >= len(batches):
                # end of epoch
                epoch += 1
                batch_pos = 0
                if args.max_steps is None and epoch >= args.epochs:
                    break
                batches = epoch_batches(epoch)
                if not batches:
                    raise TrainingError(f"epoch {epoch}: no training batches")
            micro = batches[batch_pos:batch_pos + args.grad_accum]
            # ---- one optimizer step
            factor = lr_factor(step, total, warmup_steps, args.schedule)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            step_t0 = time.monotonic()
            while True:  # retried with smaller micro-batches after an out-of-memory error
                torch.manual_seed(derive_seed(args.seed, "dropout", step, run.rank))
                gen = make_generator(args.seed, "step", step, run.rank)
                out_of_memory = False
                try:
                    step_loss, step_tokens, finite = forward_backward(micro, gen)
                except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled; the rest passes
                    if not is_out_of_memory(exc):
                        raise
                    out_of_memory = True  # handled below, outside the except: its frames hold the tensors
                if not out_of_memory:
                    break
                optimizer.zero_grad(set_to_none=True)
                _free_memory(device)
                size = micro_bs or max(batch_len(b) for b in micro)
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
                micro_bs = max(1, size // 2)
                _note(progress, args, f"step {step + 1}: out of memory; retrying with micro-batches of "
                                      f"{micro_bs} (--auto-batch-size; the effective batch is unchanged)")
            step_loss, finite = run.reduce_loss(step_loss, finite)
            grad_finite, grad_norm = True, None
            if finite:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if args.max_grad_norm > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                elif scaler is None:
                    grad_norm = torch.nn.utils.get_total_norm(
                        [p.grad for p in model.parameters() if p.grad is not None])
                # with fp16 the GradScaler skips overflowing steps itself (counted below)
                grad_finite = scaler is not None or grad_norm is None or bool(torch.isfinite(grad_norm))
            skipped = not (finite and grad_finite)
            if skipped:
                what = "loss" if not finite else "gradient"
                value = step_loss if not finite else float(grad_norm)
                if skipped_steps >= args.skip_nonfinite:
                    raise TrainingError(
                        f"step {step + 1}: the {what} is not finite ({value}); training stopped"
                        + (f" after {skipped_steps} skipped step(s) (--skip-nonfinite {args.skip_nonfinite})"
                           if args.skip_nonfinite else "") + ". "
                        + (f"The last good checkpoint is {out / 'checkpoints' / f'step-{last_saved}'}; "
                           if last_saved is not None else "No checkpoint was written; ")
                        + "try a lower --lr, --precision fp32, a smaller --max-grad-norm or --skip-nonfinite N"
                    )
                skipped_steps += 1
                if run.main:
                    _append_jsonl(metrics_path, {"step": step + 1, "epoch": epoch, "skipped": f"non-finite {what}",
                                                 "value": str(value), "skipped_steps": skipped_steps})
                _note(progress, args, f"step {step + 1}: the {what} is not finite ({value}); step skipped "
                                      f"({skipped_steps} of --skip-nonfinite {args.skip_nonfinite})")
            elif scaler is not None:
                scale = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                if scaler.get_scale() < scale:
                    overflow_steps += 1  # fp16 gradients overflowed: the scaler skipped the update
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_time += time.monotonic() - step_t0
            step += 1
            batch_pos += len(micro)
            tokens = step_tokens * run.world
            tokens_seen += tokens
            session_tokens += tokens
            window_tokens += tokens
            if not skipped:
                last_loss = step_loss
                window_loss += step_loss
                window_n += 1

            # ---- log
            if (step % args.log_every == 0 or step == total) and window_n:
                now = time.monotonic()
                rate = window_tokens / max(now - window_t0, 1e-9)
                if run.main:
                    _append_jsonl(metrics_path, {
                        "step": step, "epoch": epoch, "loss": window_loss / window_n,
                        "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": rate, "tokens": tokens_seen,
                    })
                if progress is not None:
                    progress.update(bar, info=f"loss {window_loss / window_n:.4f}  lr {optimizer.param_groups[0]['lr']:.2e}"
                                              f"  {rate:,.0f} tok/s")
                window_loss, window_n, window_tokens, window_t0 = 0.0, 0, 0, now
            if progress is not None:
                progress.update(bar, completed=step)

            # ---- stop conditions
            end_of_epoch = batch_pos >= len(batches)
            over_time = args.max_time is not None and time.monotonic() - start_time >= args.max_time
            got_signal = run.any_rank(signals.received is not None)
            over_time = run.any_rank(over_time)
            done = step >= total or (args.max_steps is None and end_of_epoch and epoch + 1 >= args.epochs)

            do_eval = (args.eval_every > 0 and step % args.eval_every == 0) or (args.eval_every == 0 and end_of_epoch)
            if done and not got_signal:
                do_eval = True
            saved_now = False
            if do_eval and not got_signal:
                result = evaluate(step, epoch)
                if progress is not None and len(result) > 1:
                    progress.console.print(
                        f"step {step}: " + "  ".join(f"{k} {_format_metric(v)}" for k, v in result.items()
                                                     if k != "improved"))
                if args.save_every == 0 or result["improved"]:
                    save(step, epoch, batch_pos, reason="eval")
                    saved_now = True
                if args.patience is not None and bad_evals >= args.patience:
                    status = "early_stopped"
                    stop = True
            if args.save_every > 0 and step % args.save_every == 0 and not saved_now:
                save(step, epoch, batch_pos, reason="periodic")
                saved_now = True
            if got_signal:
                interrupted = signals.received or signal.SIGTERM
                if not saved_now:
                    save(step, epoch, batch_pos, reason="signal")
                status = "interrupted"
                stop = True
            elif over_time and not done:
                status = "max_time"
                stop = True
            if done:
                stop = True
    finally:
        if progress is not None:
            progress.stop()

    if status == "max_time" and (not history_evals or history_evals[-1]["step"] != step):
        evaluate(step, epoch)
    if last_saved != step:
        save(step, epoch, batch_pos, reason="final")

    # ---- export the model to OUT itself
    if run.main:
        export_step = best_step if (best_step is not None and args.best_metric is not None) else step
        _export(out / "checkpoints" / f"step-{export_step}", out)
    run.barrier()
    elapsed = time.monotonic() - start_time
    final_eval = history_evals[-1]["metrics"] if history_evals else last_eval
    summary = {
        "status": status, "steps": step, "total_steps": total, "epochs": epoch,
        "final_loss": last_loss, "tokens": tokens_seen,
        "tokens_per_s": session_tokens / max(train_time, 1e-9), "time_s": elapsed,
        "time_total_s": prior_elapsed + elapsed, "final_metrics": final_eval,
        "best_metric": args.best_metric, "best_value": best_value, "best_step": best_step,
        "out": str(out), "checkpoint": str(out / "checkpoints" / f"step-{step}"),
        "resumed_from": str(resume_dir) if resume_dir else None, "world_size": run.world,
        "device": str(device), "precision": run.precision,
        "skipped_steps": skipped_steps, "overflow_steps": overflow_steps,
        "micro_batch_size": micro_bs or args.batch_size, "batch_size": args.batch_size,
    }
    if run.main:
        _append_jsonl(metrics_path, {"step": step, "summary": summary})
        if not args.quiet:
            print_summary(summary)
    if interrupted is not None:
        name = signal.Signals(interrupted).name
        code = 130 if interrupted == signal.SIGINT else 143
        raise TrainingInterrupted(
            f"{name} at step {step}: checkpoint saved to {out / 'checkpoints' / f'step-{step}'}; "
            f"continue with --resume auto", exit_code=code, checkpoint=str(out / "checkpoints" / f"step-{step}"),
        )
    return summary


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


def _export(ckpt: Path, out: Path) -> None:
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
