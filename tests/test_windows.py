"""Long inputs (--long-input window): every token in some window, predictions and embeddings equal the
manual window-and-pool, training labels each window and evaluates per text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import finetune_options

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "the quiet film moves slowly but its ending is lovely and warm".split()


def long_text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


@pytest.mark.parametrize("n,size,stride", [(1, 10, 3), (10, 10, 3), (11, 10, 3), (100, 10, 0), (3000, 126, 32)])
def test_window_starts_cover_every_token_with_the_overlap(n, size, stride):
    from bertcli.windows import window_starts

    starts = window_starts(n, size, stride)
    covered = np.zeros(n, dtype=int)
    for s in starts:
        covered[s:s + size] += 1
    assert covered.min() >= 1 and starts[0] == 0 and min(starts[-1] + size, n) == n
    assert all(b - a == size - stride for a, b in zip(starts[:-2], starts[1:-1], strict=True))


@pytest.fixture(scope="module")
def classifier_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from bertcli.tasks.classification import finetune

    d = tmp_path_factory.mktemp("clf")
    rows = ["text\tlabel"] + [f"{'lovely warm' if i % 2 else 'dull slow'} film {i}\t{i % 2}" for i in range(16)]
    (d / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    finetune(finetune_options(tiny_model_dir, d, train=str(d / "train.tsv"), text_column="text",
                              label_column="label"))
    return d / "run"


def test_windowed_prediction_of_a_3000_token_document(classifier_dir):
    import torch

    from bertcli.predict import load_classifier
    from bertcli.windows import encode_texts

    clf = load_classifier(classifier_dir, device="cpu", precision="fp32")
    doc, short = long_text(3000), "a lovely film"
    body = clf.tokenizer.encode_untruncated([doc])[0]
    assert len(body) >= 3000
    for pooling in ("mean", "max"):
        clf.long_input, clf.stride, clf.window_pooling = "window", 32, pooling
        got, truncated = clf.logits([short, doc])
        assert truncated == 0 and clf.windowed == 1
        # manual: windows of max_length - 2 body tokens, 32 shared, the last one ending at the end
        size, step = clf.max_length - 2, clf.max_length - 2 - 32
        starts = list(range(0, len(body) - size + 1, step))
        if starts[-1] + size < len(body):
            starts.append(len(body) - size)
        windows = [[clf.tokenizer.cls_id, *body[s:s + size], clf.tokenizer.sep_id] for s in starts]
        seen = sorted({i for s in starts for i in range(s, min(s + size, len(body)))})
        assert seen == list(range(len(body)))  # every token is in some window
        enc = encode_texts(clf.tokenizer, [doc], None, clf.max_length, "window", 32)
        assert enc.ids == windows
        with torch.no_grad():
            rows = np.stack([clf.model(torch.tensor([w])).numpy()[0] for w in windows])
        manual = rows.mean(0) if pooling == "mean" else rows.max(0)
        assert got[1] == pytest.approx(manual, abs=1e-5)
        clf.long_input = "truncate"
        alone, _ = clf.logits([short])
        assert got[0] == pytest.approx(alone[0], abs=1e-5)  # a short text is one window, as before


def test_predict_cli_windows_and_counts(classifier_dir, tmp_path, cli):
    src = tmp_path / "docs.tsv"
    src.write_text(f"text\n{long_text(600)}\nshort one\n", encoding="utf-8")
    res = cli("predict", "--model", classifier_dir, src, "--long-input", "window", "--stride", "16",
              "--device", "cpu", "--output", tmp_path / "out.tsv")
    assert res.exit_code == 0, res.output
    assert "1 split into windows" in res.stderr
    assert len((tmp_path / "out.tsv").read_text().splitlines()) == 3


def test_windowed_embedding_is_the_mean_of_window_vectors(tiny_model_dir):
    import torch
    import torch.nn.functional as F

    from bertcli.embed import embed, load
    from bertcli.windows import encode_texts

    enc = load(tiny_model_dir, device="cpu", precision="fp32")
    doc = long_text(700, seed=1)
    res = embed([doc, "short"], enc, long_input="window", stride=20, max_length=64, normalize=True)
    assert res.stats.windowed == 1 and res.stats.count == 2 and res.vectors.shape[0] == 2
    windows = encode_texts(enc.tokenizer, [doc], None, 64, "window", 20).ids
    with torch.no_grad():
        vecs = torch.stack([enc.model(torch.tensor([w]))[0].mean(0) for w in windows])
    assert torch.allclose(res.vectors[0], F.normalize(vecs.mean(0), dim=-1), atol=1e-5)


def test_finetune_on_windows_labels_windows_and_evaluates_per_text(tiny_model_dir, tmp_path, cli):
    from bertcli.tasks.classification import SequenceClassificationTask

    rows = ["text\tlabel"] + [f"{long_text(150 if i % 3 == 0 else 8, seed=i)}\t{i % 2}" for i in range(12)]
    (tmp_path / "train.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    opts = finetune_options(tiny_model_dir, tmp_path, train=str(tmp_path / "train.tsv"),
                            dev=str(tmp_path / "train.tsv"), text_column="text", label_column="label",
                            max_length=64, long_input="window", stride=16)
    task = SequenceClassificationTask(opts)
    split = task.train_split
    assert split.windowed == 4 and len(split) > 12 and len(split.doc_labels) == 12
    assert (split.labels == split.doc_labels[split.doc]).all()  # each window has its text's label
    assert all(len(x) <= 64 for x in split.ids)
    res = cli("finetune", "--model", tiny_model_dir, "--train", tmp_path / "train.tsv", "--dev",
              tmp_path / "train.tsv", "--text-column", "text", "--label-column", "label", "--max-length", "64",
              "--long-input", "window", "--stride", "16", "--epochs", "1", "--batch-size", "8",
              "--out", tmp_path / "run", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["windowed"] == {"train": 4, "dev": 4} and summary["texts"] == {"train": 12, "dev": 12}
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["eval"]["accuracy"] for r in evals if "eval" in r][0]
    assert round(accuracy * 12) == pytest.approx(accuracy * 12, abs=1e-6)  # a share of 12 texts, not windows
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["bertcli"]
    assert saved["long_input"] == "window" and saved["stride"] == 16


def test_window_options_are_checked(tiny_model_dir, tmp_path):
    from bertcli.errors import ConfigError

    base = dict(train="t.tsv", text_column="text", label_column="label")
    with pytest.raises(ConfigError, match="--long-input 'chunk'"):
        finetune_options(tiny_model_dir, tmp_path, long_input="chunk", **base).validate()
    with pytest.raises(ConfigError, match="drop --text-pair-column"):
        finetune_options(tiny_model_dir, tmp_path, long_input="window", text_pair_column="b", **base).validate()
    with pytest.raises(ConfigError, match="--window-pooling 'sum'"):
        finetune_options(tiny_model_dir, tmp_path, window_pooling="sum", **base).validate()
