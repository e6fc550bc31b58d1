"""CUDA: the same numbers as the CPU, and a short training run end to end (skipped without a GPU)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SENTENCES = [
    "A man is playing a guitar.",
    "Three dogs are running through a field of tall grass while the sun sets behind the hills.",
    "Hello!",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates by half a point.",
]


def test_minilm_embeddings_on_cuda_match_the_cpu(minilm_dir):
    from bertcli.embed import encode, load

    cpu = encode(SENTENCES, load(minilm_dir, device="cpu", precision="fp32"))
    for precision, floor in (("fp32", 0.99999), ("bf16", 0.999), ("fp16", 0.999)):
        enc = load(minilm_dir, device="cuda", precision=precision)
        got = encode(SENTENCES, enc).float().cpu()
        cos = torch.nn.functional.cosine_similarity(cpu, got, dim=-1)
        assert cos.min().item() >= floor, (precision, cos)


def test_auto_precision_on_cuda_is_half(minilm_dir):
    from bertcli.embed import load

    assert load(minilm_dir, device="cuda", precision="auto").precision in ("bf16", "fp16")


def test_finetune_on_cuda_with_mixed_precision_writes_a_cpu_loadable_checkpoint(cli, tiny_model_dir, tmp_path):
    from bertcli.checkpoint import load_checkpoint

    train = tmp_path / "train.csv"
    rows = ["text,label"] + [f"good film {i},pos" for i in range(16)] + [f"bad film {i},neg" for i in range(16)]
    train.write_text("\n".join(rows) + "\n", encoding="utf-8")
    for precision in ("bf16", "fp16"):
        out = tmp_path / f"run-{precision}"
        r = cli("finetune", "--model", tiny_model_dir, "--train", train, "--dev", train, "--text-column", "text",
                "--label-column", "label", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--device", "cuda",
                "--precision", precision, "--out", out, "--quiet", "--json")
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["device"].startswith("cuda") and summary["precision"] == precision
        ckpt = load_checkpoint(out)
        assert all(torch.isfinite(t).all() for t in ckpt.state.values() if t.is_floating_point())
