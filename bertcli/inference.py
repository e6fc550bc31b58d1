"""A loaded model made ready for inference at its precision, once, at load time.

``prepare(model, device, precision)`` changes the model in place (it is never trained afterwards):

- ``bf16`` on a CPU: every weight is cast to bf16 once (linear layers and embeddings run on the CPU's
  bf16 matrix units with no per-call autocast casts), while LayerNorm keeps fp32 weights and computes in
  fp32 (mixed-precision ``layer_norm``); callers pool and normalise the final hidden states in fp32.
  Every linear layer runs as one oneDNN kernel with its bias inside, the feed-forward's up projection
  with its exact GELU fused too.
- ``int8`` (CPU only): the encoder's linear layers but the feed-forward's down projection are quantised
  dynamically (``torch.ao`` dynamic quantisation: int8 weights per output channel, activations quantised
  per batch); everything else, the heads included, stays fp32. On a CPU with bf16 units, bf16 is both
  faster and closer to fp32; int8 is for CPUs without them.
- ``fp32``, and bf16 / fp16 on a GPU: nothing changes; the forward pass runs under autocast as before.

:func:`forward_context` is the context a forward pass runs in: none for a prepared model, autocast for
one that is not (a model being trained or evaluated during training).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

# Measured on all-MiniLM-L6-v2 over the 10,566 distinct STS-B sentences (benchmarks/bench_embed.py,
# benchmarks/results/inference.md); the tests check these bounds on real weights.
BF16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.92  # measured 0.924 (STS-B train Spearman 0.8077 vs 0.8100 in fp32)


class OneDnnLinear(nn.Module):
    """``x @ W.T + b`` on bf16 weights as one oneDNN kernel, bias inside (aten's bf16 ``addmm`` first copies
    the bias into the output: measured 2.2 -> 1.5 ms for MiniLM's qkv on 2,048 tokens), optionally with
    the exact GELU fused (``post="gelu"``). Keeps ``weight`` and ``bias`` (DeBERTa reads them)."""

    def __init__(self, linear: nn.Linear, post: str = "none"):
        super().__init__()
        self.weight, self.bias, self.post = linear.weight, linear.bias, post
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post, [], "none" if
                                                  self.post == "gelu" else "")


def _fusable(ffn: nn.Module) -> bool:
    act = getattr(ffn, "act", None)
    return (isinstance(getattr(ffn, "up", None), nn.Linear) and isinstance(act, nn.GELU)
            and act.approximate == "none" and type(ffn).__name__ == "FeedForward")


def fused_gelu_available() -> bool:
    """Whether oneDNN's linear (+ GELU) kernels run here (a CPU build of torch with mkldnn and bf16)."""
    global _FUSED_OK
    if _FUSED_OK is None:
        try:
            torch.manual_seed(0)
            lin = nn.Linear(8, 4).to(torch.bfloat16)
            with torch.inference_mode():
                ok = True
                for shape in ((2, 3, 8), (5, 8)):
                    x = torch.randn(*shape, dtype=torch.bfloat16)
                    ref = lin(x).float()
                    ok &= torch.allclose(OneDnnLinear(lin)(x).float(), ref, atol=0.05, rtol=0.05)
                    ok &= torch.allclose(OneDnnLinear(lin, "gelu")(x).float(), F.gelu(ref), atol=0.05, rtol=0.05)
            _FUSED_OK = bool(ok)
        except (RuntimeError, AttributeError, NotImplementedError):
            _FUSED_OK = False
    return _FUSED_OK


_FUSED_OK: bool | None = None


def cast_bf16(model: nn.Module, fuse: bool = True) -> nn.Module:
    """bf16 weights, fp32 LayerNorm (in place); linear layers as oneDNN kernels (bias inside, the
    feed-forward's GELU fused) where oneDNN can."""
    model.to(torch.bfloat16)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.float()  # fp32 weights: layer_norm computes in fp32 on the bf16 input
    if fuse and fused_gelu_available():
        for module in list(model.modules()):
            if _fusable(module):
                module.up = OneDnnLinear(module.up, "gelu")
                module.act = nn.Identity()
            for name, child in list(module.named_children()):
                if type(child) is nn.Linear:
                    setattr(module, name, OneDnnLinear(child))
    return model


def quantize_int8(model: nn.Module) -> nn.Module:
    """The encoder's linear layers as dynamic int8 (per-channel weights); heads stay fp32. In place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    encoder = getattr(model, "bert", model)
    # DeBERTa reads its qkv weight directly; the feed-forward's down projection reads GELU outputs whose
    # outliers a per-batch int8 scale cannot hold (measured on MiniLM, 1,000 STS-B sentences: min cosine 0.94
    # with it, 0.98 without)
    skip = {f"{name}.qkv" for name, m in encoder.named_modules() if type(m).__name__ == "DisentangledAttention"}
    spec = {name: per_channel_dynamic_qconfig for name, m in encoder.named_modules()
            if isinstance(m, nn.Linear) and name not in skip and not name.endswith("ffn.down")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices, not the user's concern
        quantized = quantize_dynamic(encoder, spec, dtype=torch.qint8, inplace=True)
    if encoder is not model:
        model.bert = quantized
    return model


def prepare(model: nn.Module, device, precision: str) -> nn.Module:
    """Make ``model`` (eval mode, on ``device``) ready for inference at ``precision``; returns it."""
    model.eval()
    if precision == "int8":
        if device.type != "cpu":
            from bertcli.errors import DeviceError

            raise DeviceError("--precision int8 runs on the CPU only; use --device cpu, or bf16 / fp16 on a GPU")
        quantize_int8(model)
        model.prepared_precision = "int8"
    elif precision == "bf16" and device.type == "cpu":
        cast_bf16(model)
        model.prepared_precision = "bf16"
    return model


def rate(count: int, seconds: float, unit: str) -> str:
    """Throughput for a command's summary: ``'1234 texts/s'``."""
    return f"{count / seconds:.0f} {unit}/s" if seconds > 0 else f"- {unit}/s"


def forward_context(model: nn.Module, device, precision: str):
    """No autocast for a model :func:`prepare` made ready (its weights are already at ``precision``)."""
    from bertcli.device import autocast

    if getattr(model, "prepared_precision", None) is not None:
        return contextlib.nullcontext()
    if precision == "int8":  # int8 is a property of the weights, not a context: never run fp32 in its name
        from bertcli.errors import DeviceError

        raise DeviceError("--precision int8 needs a model prepared for it: load it with precision='int8' "
                          "(bertcli.embed.load, predict.load_classifier) or call bertcli.inference.prepare")
    return autocast(device, precision)
