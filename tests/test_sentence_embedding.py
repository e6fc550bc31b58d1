"""finetune --task sentence-embedding on a tiny model: the four losses against sentence-transformers'
loss objects, the saved pooling honoured by embed / similarity / sentence-transformers, exact
resume of the softmax head, and option / data errors that name the option or the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertcli.errors import ConfigError, DataError

WORDS = "cat dog man woman car house tree river city music film food guitar horse".split()


pytestmark = pytest.mark.usefixtures("one_thread")  # two threads thrash on the shared 2-core machine


def table(path: Path, n: int = 24, seed: int = 0) -> Path:
    """TSV with a, b, neg (texts), score (0-5) and nli (three classes)."""
    import random

    rng = random.Random(seed)
    rows = ["a\tb\tneg\tscore\tnli"]
    for _ in range(n):
        a, b, neg = (" ".join(rng.sample(WORDS, rng.randint(2, 6))) for _ in range(3))
        rows.append(f"{a}\t{b}\t{neg}\t{rng.uniform(0, 5):.2f}\t{rng.choice(['entail', 'neutral', 'contra'])}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def options(model, tmp_path, **kw):
    from bertcli.tasks.classification import FinetuneOptions

    base = dict(model=str(model), task="sentence-embedding", train=str(table(tmp_path / "train.tsv")),
                text_column="a", text_pair_column="b", label_column="score", loss="cosine", label_scale=5.0,
                out=str(tmp_path / "run"), epochs=1, batch_size=8, lr=1e-3, quiet=True, device="cpu",
                precision="fp32")
    base.update(kw)
    return FinetuneOptions(**base)


# ------------------------------------------------------------ losses == sentence-transformers' losses
LOSS_CASES = {
    "cosine": dict(loss="cosine", label_column="score"),
    "mnrl": dict(loss="mnrl", label_column="", label_scale=None),
    "mnrl-hard-negatives": dict(loss="mnrl", label_column="", label_scale=None, negative_column="neg"),
    "triplet": dict(loss="triplet", label_column="", label_scale=None, negative_column="neg"),
    "softmax": dict(loss="softmax", label_column="nli", label_scale=None),
    "triplet-normalize-module": dict(loss="triplet", label_column="", label_scale=None, negative_column="neg"),
}


@pytest.fixture(scope="module")
def normalized_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as a sentence-transformers model with mean pooling and a Normalize module."""
    import shutil

    from bertcli.checkpoint import write_sentence_config

    out = tmp_path_factory.mktemp("normalized") / "model"
    shutil.copytree(tiny_model_dir, out)
    write_sentence_config(out, 32, "mean", True, 128)
    return out


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_loss_equals_sentence_transformers(case, tiny_model_dir, normalized_model_dir, tmp_path):
    """The same weights and batch give the same loss value as the sentence-transformers loss object.

    A model with a Normalize module is trained on unit vectors, as sentence-transformers does.
    """
    import torch
    from sentence_transformers import SentenceTransformer, losses

    from bertcli.tasks.sentence_embedding import build_task

    n = 6
    if case == "triplet-normalize-module":
        tiny_model_dir = normalized_model_dir
    task = build_task(options(tiny_model_dir, tmp_path, train=str(table(tmp_path / "t.tsv", n=n)), batch_size=n,
                              **LOSS_CASES[case]))
    torch.manual_seed(0)
    model = task.build_model().eval()
    (batch,) = task.train_batches(0, torch.Generator().manual_seed(0), n)
    with torch.no_grad():
        ours, _ = task.compute_loss(model, batch, None, torch.device("cpu"))

    # The same rows, as sentence-transformers sees them (every loss is a mean over the rows, so the
    # batch order does not matter).
    from bertcli.data.tables import read_table

    rows = read_table(task.opts.train).records()
    st = SentenceTransformer(str(tiny_model_dir), device="cpu").eval()  # Transformer + mean pooling
    cols = ["a", "b"] + (["neg"] if task.opts.negative_column else [])
    features = [st.preprocess([r[c] for r in rows]) for c in cols]
    if case == "cosine":
        loss_fn, labels = losses.CosineSimilarityLoss(st), torch.tensor([float(r["score"]) / 5 for r in rows])
    elif case.startswith("mnrl"):
        loss_fn, labels = losses.MultipleNegativesRankingLoss(st), torch.zeros(n)
    elif case.startswith("triplet"):
        loss_fn, labels = losses.TripletLoss(st), torch.zeros(n)
    else:
        loss_fn = losses.SoftmaxLoss(st, embedding_dimension=32, num_labels=3)
        loss_fn.classifier.load_state_dict(model.softmax_head.state_dict())
        labels = torch.tensor([task.label2id[r["nli"]] for r in rows])
    with torch.no_grad():
        theirs = loss_fn(features, labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)
    assert float(ours) > 0
    assert model.normalize == (case == "triplet-normalize-module")


def test_hard_negatives_change_mnrl(tiny_model_dir, tmp_path):
    """--negative-column adds candidates: the mnrl loss with hard negatives is larger."""
    import torch

    from bertcli.tasks.sentence_embedding import mnrl_loss

    torch.manual_seed(0)
    a, p, neg = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    assert float(mnrl_loss(a, p, neg)) > float(mnrl_loss(a, p))


# ------------------------------------------------------------ CLI run, saved pooling, ST parity
@pytest.fixture(scope="module")
def trained_cls(tiny_model_dir, tmp_path_factory):
    """One tiny cosine-loss run with --pooling cls through the CLI."""
    from typer.testing import CliRunner

    from bertcli.cli.app import app

    tmp = tmp_path_factory.mktemp("sbert")
    train, dev = table(tmp / "train.tsv"), table(tmp / "dev.tsv", n=12, seed=1)
    out = tmp / "run"
    result = CliRunner().invoke(app, [
        "finetune", "--task", "sentence-embedding", "--loss", "cosine", "--label-scale", "5", "--pooling", "cls",
        "--model", str(tiny_model_dir), "--train", str(train), "--dev", str(dev), "--text-column", "a",
        "--text-pair-column", "b", "--label-column", "score", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
        "--device", "cpu", "--precision", "fp32", "--max-length", "16", "--out", str(out), "--json", "--quiet",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout.strip().splitlines()[-1]), dev


def test_cli_run_writes_sentence_model(trained_cls):
    out, summary, _ = trained_cls
    assert summary["examples"] == {"train": 24, "dev": 12}
    assert set(summary["final_metrics"]) == {"spearman", "pearson", "loss"}
    assert summary["best_metric"] == "spearman"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertModel"]
    assert cfg["bertcli"]["task"] == "sentence-embedding" and cfg["bertcli"]["pooling"] == "cls"
    assert cfg["bertcli"]["loss"] == "cosine"
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and not pooling["pooling_mode_mean_tokens"]
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 16
    assert not (out / "2_Normalize").exists()


def test_truncation_counted(tiny_model_dir, tmp_path):
    from bertcli.tasks.sentence_embedding import build_task

    task = build_task(options(tiny_model_dir, tmp_path, max_length=5))
    assert max(len(x) for col in task.train_split.columns for x in col) == 5
    from bertcli.data.tables import read_table

    rows = read_table(task.opts.train).records()
    full = [task.tokenizer.encode_ids([r[c] for r in rows], max_length=128)[0] for c in ("a", "b")]
    assert task.truncated["train"] == sum(1 for col in full for x in col if len(x) > 5) > 0


def test_saved_pooling_used_by_embed_and_sentence_transformers(trained_cls):
    import torch
    from sentence_transformers import SentenceTransformer

    from bertcli.embed import encode, load

    out, _, _ = trained_cls
    texts = ["a man is playing a guitar", "the cat sat on the mat", "dogs", ""]
    enc = load(out, device="cpu", precision="fp32")
    assert enc.pooling == "cls" and enc.normalize is False and enc.max_length == 16
    ours = encode(texts, enc)
    st = SentenceTransformer(str(out), device="cpu")
    theirs = st.encode(texts, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() >= 0.99999
    # cls is not what mean pooling would give: the pooling really comes from the checkpoint
    mean = encode(texts, enc, pooling="mean")
    assert torch.nn.functional.cosine_similarity(ours, mean).min() < 0.999


def test_dev_spearman_is_that_of_similarity(trained_cls, cli):
    """The best dev Spearman recorded in training equals `bertcli similarity --pairs` on the saved model."""
    out, summary, dev = trained_cls
    result = cli("similarity", "--model", out, "--pairs", dev, "--a-column", "a", "--b-column", "b",
                 "--gold-column", "score", "--device", "cpu", "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert row["pooling"] == "cls"
    assert row["spearman"] == pytest.approx(summary["best_value"], abs=1e-6)


def test_test_split_scored_with_saved_model(tiny_model_dir, tmp_path):
    from bertcli.tasks.classification import finetune

    summary = finetune(options(tiny_model_dir, tmp_path, dev=str(table(tmp_path / "d.tsv", 10, 1)),
                               test=str(table(tmp_path / "x.tsv", 10, 2)), pooling="max"))
    assert set(summary["test"]) == {"spearman", "pearson", "loss"}
    assert summary["examples"] == {"train": 24, "dev": 10, "test": 10}


def test_predict_points_to_embed(trained_cls, cli, tmp_path):
    out, _, dev = trained_cls
    result = cli("predict", "--model", out, dev)
    assert result.exit_code == 1
    assert "bertcli embed" in result.stderr and "similarity" in result.stderr


# ------------------------------------------------------------ softmax: head kept out of the model, exact resume
def test_softmax_head_not_saved_and_resume_is_exact(tiny_model_dir, tmp_path):
    from bertcli.checkpoint import read_weights
    from bertcli.tasks.classification import finetune

    kw = dict(loss="softmax", label_column="nli", label_scale=None, epochs=2, batch_size=6)
    finetune(options(tiny_model_dir, tmp_path, out=str(tmp_path / "a"), **kw))
    a = tmp_path / "a"
    full = read_weights(a / "model.safetensors")
    assert not any("classifier" in k for k in full)
    assert json.loads((a / "config.json").read_text())["bertcli"]["softmax_labels"] == ["contra", "entail",
                                                                                      "neutral"]
    assert (a / "checkpoints" / "step-4" / "trainer_state" / "softmax_head.safetensors").is_file()
    finetune(options(tiny_model_dir, tmp_path, out=str(tmp_path / "b"), resume=str(a / "checkpoints" / "step-4"),
                     **kw))
    resumed = read_weights(tmp_path / "b" / "model.safetensors")
    assert set(resumed) == set(full)
    assert all(bool((resumed[k] == full[k]).all()) for k in full)


# ------------------------------------------------------------ errors name the option / line
@pytest.mark.parametrize("kw, needle", [
    (dict(loss=None), "--loss is required"),
    (dict(loss="cosent"), "--loss 'cosent': valid values: cosine, mnrl, triplet, softmax"),
    (dict(text_pair_column=None), "--text-pair-column is required"),
    (dict(label_column=""), "--loss cosine needs --label-column"),
    (dict(loss="softmax", label_column=""), "--loss softmax needs --label-column"),
    (dict(loss="triplet"), "--loss triplet needs --negative-column"),
    (dict(negative_column="neg"), "--negative-column applies to --loss triplet or mnrl"),
    (dict(loss="mnrl", label_column="", dev="x.tsv"), "give --label-column"),
    (dict(pooling="sum"), "--pooling 'sum': valid values: cls, mean, max"),
    (dict(label_scale=0.0), "--label-scale must be a positive number"),
    (dict(loss="mnrl", auto_batch_size=True), "--auto-batch-size cannot be used with --loss mnrl"),
    (dict(metric="accuracy"), "--metric 'accuracy' for sentence-embedding: valid values: spearman, pearson, loss"),
])
def test_option_errors_name_the_option(kw, needle, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match=None) as err:
        options(tiny_model_dir, tmp_path, **kw).validate()
    assert needle in str(err.value)


def test_scores_outside_range_name_label_scale(tiny_model_dir, tmp_path):
    from bertcli.tasks.sentence_embedding import build_task

    with pytest.raises(DataError, match=r"train.tsv, line \d+: score .* --label-scale 5"):
        build_task(options(tiny_model_dir, tmp_path, label_scale=None))


def test_missing_column_and_non_numeric_dev_score(tiny_model_dir, tmp_path):
    from bertcli.tasks.sentence_embedding import build_task

    with pytest.raises(DataError, match="negative"):
        build_task(options(tiny_model_dir, tmp_path, loss="triplet", negative_column="negative"))
    dev = tmp_path / "dev.tsv"
    dev.write_text("a\tb\tscore\nx y\tz\thigh\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"dev.tsv, line 2: 'high' in --label-column is not a finite number; --dev"):
        build_task(options(tiny_model_dir, tmp_path, dev=str(dev)))


def test_cli_wrong_loss_exits_1(tiny_model_dir, tmp_path, cli):
    result = cli("finetune", "--task", "sentence-embedding", "--loss", "contrastive", "--model", tiny_model_dir,
                 "--train", table(tmp_path / "t.tsv"), "--text-column", "a", "--text-pair-column", "b",
                 "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "--loss 'contrastive'" in result.stderr
    result = cli("finetune", "--task", "sentence-embedding", "--loss", "triplet", "--model", tiny_model_dir,
                 "--train", table(tmp_path / "t.tsv"), "--text-column", "a", "--text-pair-column", "b",
                 "--out", tmp_path / "run")
    assert result.exit_code == 1
    assert "--negative-column" in result.stderr
