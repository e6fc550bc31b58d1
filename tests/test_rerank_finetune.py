"""finetune --task cross-encoder: triples and scored pairs, BCE on one logit, and a checkpoint that
sentence-transformers CrossEncoder loads with the scores bertcli rerank gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import finetune_cli, finetune_options, one_error_line

from bertcli.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

QUERIES = ["capital of france", "who wrote hamlet", "boiling point of water", "largest planet"]
POSITIVES = ["Paris is the capital of France.", "Hamlet was written by Shakespeare.",
             "Water boils at 100 degrees.", "Jupiter is the largest planet."]
NEGATIVES = ["Bananas are yellow.", "The river is long.", "Cats sleep a lot.", "Trains run on rails."]


def triples(path: Path, n: int = 3) -> Path:
    rows = [{"query": f"{q} {i}", "positive": p, "negative": neg}
            for i in range(n) for q, p, neg in zip(QUERIES, POSITIVES, NEGATIVES, strict=True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored(path: Path, scores=(1.0, 0.0, 0.75, 0.25)) -> Path:
    rows = [{"q": q, "d": d, "score": s} for q, d, s in zip(QUERIES, POSITIVES + NEGATIVES, scores, strict=False)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_triples_train_a_cross_encoder_that_sentence_transformers_loads(tiny_model_dir, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    from bertcli.retrieval.rerank import load_cross_encoder, score

    train = triples(tmp_path / "train.jsonl")
    out = tmp_path / "cross"
    summary = finetune_cli("--model", tiny_model_dir, "--task", "cross-encoder", "--train", train, "--dev", train,
                           "--text-column", "query", "--text-pair-column", "positive", "--negative-column", "negative",
                           "--max-length", "24", "--epochs", "8", "--batch-size", "8", "--lr", "3e-3", "--out", out,
                           "--quiet", "--precision", "fp32")
    assert summary["examples"] == {"train": 24, "dev": 24}  # 12 triples -> 12 positive and 12 negative pairs
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"] and cfg["bertcli"]["task"] == "cross-encoder"
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 24

    pairs = [(q, d) for q in QUERIES[:2] for d in POSITIVES + NEGATIVES]
    pairs.append(("a query " * 10, "a document longer than twenty four tokens " * 5))  # truncated by both
    torch.set_num_threads(1)
    ce = CrossEncoder(str(out), device="cpu")
    assert ce.num_labels == 1 and ce.max_length == 24 and isinstance(ce.activation_fn, torch.nn.Sigmoid)
    ref = np.asarray(ce.predict(pairs, batch_size=5), dtype=np.float64)
    cross = load_cross_encoder(out, device="cpu", precision="fp32")
    got = score(cross, [q for q, _ in pairs], [d for _, d in pairs])
    assert cross.truncated >= 1 and cross.activation == "sigmoid"
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert ref.std() > 1e-3  # trained: the scores differ


def test_triples_expand_to_labelled_pairs_and_bce(tiny_model_dir, tmp_path):
    import torch
    import torch.nn.functional as F

    from bertcli.tasks.classification import SequenceClassificationTask

    train = triples(tmp_path / "train.jsonl", n=1)
    task = SequenceClassificationTask(finetune_options(
        tiny_model_dir, tmp_path, task="cross-encoder", train=str(train), text_column="query",
        text_pair_column="positive", negative_column="negative", max_length=32))
    split = task.train_split
    assert task.num_labels == 1 and split.labels.tolist() == [1.0, 0.0] * 4 and split.lines == [1, 1, 2, 2, 3, 3, 4, 4]
    tok = task.tokenizer
    ids, _, _ = tok.encode_ids([f"{QUERIES[0]} 0"], [NEGATIVES[0]], max_length=32)
    assert split.ids[1] == ids[0]  # row 1: (query 1, its negative)
    logits = torch.tensor([[2.0], [-1.0], [0.5], [0.0]])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert torch.allclose(task.label_loss(logits, labels, "cpu"), F.binary_cross_entropy_with_logits(logits[:, 0], labels))


def test_scored_pairs(tiny_model_dir, tmp_path):
    from bertcli.tasks.classification import SequenceClassificationTask

    train = scored(tmp_path / "train.jsonl")
    task = SequenceClassificationTask(finetune_options(
        tiny_model_dir, tmp_path, task="cross-encoder", train=str(train), text_column="q", text_pair_column="d",
        label_column="score", max_length=32))
    assert task.train_split.labels.tolist() == [1.0, 0.0, 0.75, 0.25]
    bad = scored(tmp_path / "bad.jsonl", scores=(1.0, 3.0, 0.0, 0.0))
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: score 3 is outside \[0, 1\]"):
        SequenceClassificationTask(finetune_options(
            tiny_model_dir, tmp_path, task="cross-encoder", train=str(bad), text_column="q", text_pair_column="d",
            label_column="score"))


def test_cross_encoder_option_errors(tiny_model_dir, tmp_path, cli):
    train = triples(tmp_path / "train.jsonl", n=1)
    with pytest.raises(ConfigError, match="give --negative-column"):
        finetune_options(tiny_model_dir, tmp_path, task="cross-encoder", train=str(train), text_column="query",
                         text_pair_column="positive").validate()
    with pytest.raises(ConfigError, match="one of the two"):
        finetune_options(tiny_model_dir, tmp_path, task="cross-encoder", train=str(train), text_column="query",
                         text_pair_column="positive", negative_column="negative", label_column="x").validate()
    with pytest.raises(ConfigError, match="--negative-column applies to --task cross-encoder or sentence-embedding"):
        finetune_options(tiny_model_dir, tmp_path, train=str(train), text_column="query", label_column="x",
                         negative_column="negative").validate()
    result = cli("finetune", "--model", tiny_model_dir, "--task", "cross-encoder", "--train", train, "--text-column",
                 "query", "--text-pair-column", "positive", "--negative-column", "nope", "--out", tmp_path / "o",
                 "--device", "cpu")
    one_error_line(result, "nope")
