"""Device and precision choice.

``--device auto`` picks CUDA, then MPS, then CPU. ``--precision auto`` picks the fastest
precision that is safe on the device: bf16 on CUDA GPUs that support it (else fp16) and on
CPUs with native bf16 instructions (AVX512-BF16 / AMX); fp32 elsewhere.
"""

from __future__ import annotations

from functools import lru_cache

from bertcli.errors import DeviceError

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(spec: str = "auto"):
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: MPS is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: no CUDA GPU is available; use --device cpu or auto")
        if ":" in spec:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError:
                raise DeviceError(f"--device {spec}: expected cuda:N with N a number") from None
            if not 0 <= index < torch.cuda.device_count():
                raise DeviceError(
                    f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) (0..{torch.cuda.device_count() - 1})"
                )
        return torch.device(spec)
    raise DeviceError(f"--device {spec}: unknown device; valid: {DEVICE_CHOICES}")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(spec: str, device) -> str:
    """Return 'fp32', 'bf16' or 'fp16' for ``spec`` on ``device``; refuse unsupported ones."""
    import torch

    spec = (spec or "auto").lower()
    if spec not in PRECISIONS:
        raise DeviceError(f"--precision {spec}: valid values: {', '.join(PRECISIONS)}")
    kind = device.type
    if spec == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if kind == "cpu":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "fp32"
    if spec == "fp16" and kind == "cpu":
        raise DeviceError("--precision fp16 is not supported on the CPU; use bf16 or fp32")
    if spec == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError("--precision bf16: this GPU does not support bf16; use fp16 or fp32")
    return spec


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """An autocast context for mixed precision (a no-op context for fp32)."""
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch_dtype(precision))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised ``torch.distributed`` process group (``torchrun``), else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
