"""Bounded batch shapes (issue 21): bucketed widths and fixed batch sizes in embed.plan_batches, and
the same vectors and scores as texts encoded one at a time (padding is masked)."""

from __future__ import annotations

import random

import pytest
import torch

from bertcli.embed import bucket_width, encode, plan_batches, score_pairs

WORDS = ("the cat sat on a mat while three dogs ran through tall grass near the river bank "
         "stocks fell sharply after the central bank raised interest rates").split()


def _texts(n: int, seed: int, longest: int = 90) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, longest))) for _ in range(n)]


def test_bucket_width_is_a_small_fixed_set():
    assert [bucket_width(n) for n in (1, 17, 64, 65, 72, 73, 128, 129, 150, 512, 513)] == \
        [1, 17, 64, 72, 72, 80, 128, 160, 160, 512, 640]
    widths = {bucket_width(n) for n in range(1, 513)}
    assert len(widths) == 64 + 8 + 12
    assert all(bucket_width(n) >= n for n in range(1, 2000))


def test_plan_batches_shapes_are_bounded_whatever_the_input():
    budget = 2048
    shapes = set()
    for seed in range(40):  # 40 chunks of random lengths: every row once, shapes from a small set
        rng = random.Random(seed)
        lengths = [rng.randint(1, 200) for _ in range(rng.randint(1, 3000))] + [3000] * (seed % 2)
        batches = plan_batches(lengths, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
            width = bucket_width(lengths[b[0]])
            full = max(1, budget // width)
            assert len(b) == full or (len(b) < full and len(b) & (len(b) - 1) == 0)  # full, or a power of two
            assert len(b) == 1 or len(b) * width <= budget
            shapes.add((len(b), width))
    widths = {w for _, w in shapes}
    assert len(shapes) <= len(widths) * (1 + budget.bit_length())
    assert len(shapes) < 200  # random lengths 1-200 in every chunk: ~12,000 distinct (rows, width) possible


def test_bucketed_batches_give_the_vectors_of_texts_encoded_alone(tiny_model_dir):
    texts = _texts(80, 0, longest=120)  # 2-122 tokens: widths above 64 are padded past the longest row
    assert any(bucket_width(n) > n for n in range(65, 123))
    for mode in ("cls", "mean", "max"):
        batched = encode(texts, tiny_model_dir, pooling=mode, precision="fp32", batch_tokens=600)
        alone = torch.cat([encode([t], tiny_model_dir, pooling=mode, precision="fp32") for t in texts])
        assert torch.allclose(batched, alone, atol=1e-5), mode


def test_bucketed_batches_bf16_close_to_fp32(tiny_model_dir):
    texts = _texts(40, 1)
    bf16 = encode(texts, tiny_model_dir, precision="bf16", batch_tokens=600)
    fp32 = torch.cat([encode([t], tiny_model_dir, precision="fp32") for t in texts])
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.99


def test_similarity_pairs_scores_match_unbatched(tiny_model_dir):
    a, b = _texts(30, 2), _texts(30, 3)
    many = score_pairs(a, b, tiny_model_dir, poolings=["mean", "cls"], precision="fp32", batch_tokens=300)
    for p in ("mean", "cls"):
        va = torch.cat([encode([t], tiny_model_dir, pooling=p, precision="fp32") for t in a])
        vb = torch.cat([encode([t], tiny_model_dir, pooling=p, precision="fp32") for t in b])
        expected = torch.nn.functional.cosine_similarity(va, vb).numpy()
        assert many.scores[p] == pytest.approx(expected, abs=1e-5)


def test_bucketed_width_stays_inside_the_position_table(tmp_path, minilm_dir):
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "m", minilm_dir, max_positions=100)  # bucket_width(100) == 104
    assert bucket_width(100) == 104 and bucket_width(100, 100) == 100 and bucket_width(97, 100) == 100
    texts = _texts(12, 4, longest=200)  # several truncated to the 100 positions
    batched = encode(texts, model, precision="fp32", batch_tokens=400)
    alone = torch.cat([encode([t], model, precision="fp32") for t in texts])
    assert torch.allclose(batched, alone, atol=1e-5)
