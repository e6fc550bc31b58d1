"""finetune (classification, pairs, regression) on a tiny model: data errors, checkpoint, resume, HF parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import finetune_cli, finetune_options, interrupt_and_resume

from bertcli.errors import ConfigError, DataError, TokenizerError

pytestmark = pytest.mark.usefixtures("one_thread")

POS = ["a lovely film", "great acting", "i loved it", "wonderful and warm", "a brilliant plot", "superb music"]
NEG = ["a boring film", "awful acting", "i hated it", "dull and cold", "a terrible plot", "poor music"]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def sentiment_csv(path: Path, n: int = 2, extra: str = "") -> Path:
    rows = ["text,label"]
    for i in range(n):
        rows += [f"{t} {i},pos" for t in POS] + [f"{t} {i},neg" for t in NEG]
    return write(path, "\n".join(rows) + "\n" + extra)


def options(model, tmp_path, **kw):
    train = kw.pop("train", None) or sentiment_csv(tmp_path / "train.csv")
    dev = kw.pop("dev", None) or sentiment_csv(tmp_path / "dev.csv", n=1)
    return finetune_options(model, tmp_path, **{"train": str(train), "dev": str(dev), "text_column": "text",
                                                "label_column": "label", **kw})


def make_task(model, tmp_path, **kw):
    from bertcli.tasks.classification import SequenceClassificationTask

    return SequenceClassificationTask(options(model, tmp_path, **kw))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One tiny classification run through the CLI, shared by the checks below."""
    d = tmp_path_factory.mktemp("ft")
    train = sentiment_csv(d / "train.csv")
    dev = sentiment_csv(d / "dev.csv", n=1)
    out = d / "run"
    summary = finetune_cli("--model", tiny_model_dir, "--train", train, "--dev", dev, "--test", dev,
                           "--text-column", "text", "--label-column", "label", "--out", out, "--epochs", "2",
                           "--batch-size", "8", "--lr", "1e-3")
    return out, summary, dev


# ------------------------------------------------------------ training to a checkpoint
def test_cli_trains_checkpoint_with_label_map(trained):
    out, summary, _ = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForSequenceClassification"]
    assert cfg["id2label"] == {"0": "neg", "1": "pos"}
    assert cfg["label2id"] == {"neg": 0, "pos": 1}
    assert cfg["problem_type"] == "single_label_classification"
    assert cfg["bertcli"]["text_column"] == "text" and cfg["bertcli"]["task"] == "classification"
    assert set(summary["test"]) >= {"accuracy", "macro_f1", "mcc"}
    assert summary["examples"] == {"train": 24, "dev": 12, "test": 12}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert len(evals) == 2 and all("accuracy" in r["eval"] for r in evals)
    assert records[-1]["test"] == summary["test"]


def test_label_map_round_trip(trained):
    from bertcli.checkpoint import load_checkpoint

    out, _, _ = trained
    ckpt = load_checkpoint(out)
    assert ckpt.id2label == {0: "neg", 1: "pos"}
    assert ckpt.state["classifier.weight"].shape[0] == 2


def test_label_map_sorted_numerically_and_deterministically():
    from bertcli.tasks.classification import build_label_map

    assert build_label_map(["10", "2", "1", "2"]) == {"1": 0, "2": 1, "10": 2}
    assert build_label_map(["b", "a", "c", "a"]) == {"a": 0, "b": 1, "c": 2}


def test_checkpoint_loads_in_transformers_with_same_logits(trained):
    import torch
    from transformers import BertForSequenceClassification as HFModel

    from bertcli.predict import load_classifier

    out, _, _ = trained
    clf = load_classifier(out, device="cpu", precision="fp32")
    hf = HFModel.from_pretrained(out).eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    texts, pairs = ["a lovely film", "awful acting indeed"], None
    ours, _ = clf.logits(texts, pairs)
    enc = clf.tokenizer.encode_batch(texts, max_length=128)
    from bertcli.tokenizer import pad_batch

    ids, mask, types = pad_batch([e.ids for e in enc], [e.type_ids for e in enc], clf.tokenizer.pad_id)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    assert ours == pytest.approx(theirs, abs=1e-5)


# ------------------------------------------------------------ data errors
def test_unseen_dev_label_names_line_and_label(tiny_model_dir, tmp_path):
    dev = write(tmp_path / "dev.csv", 'text,label\nfine film,pos\n"two\nlines",neg\nodd one,meh\n')
    with pytest.raises(DataError, match=r"dev\.csv, line 5: label 'meh' never occurs in the training file"):
        make_task(tiny_model_dir, tmp_path, dev=dev)


def test_unseen_label_through_cli_exits_1(tiny_model_dir, tmp_path, cli):
    train = sentiment_csv(tmp_path / "train.csv")
    dev = write(tmp_path / "dev.csv", "text,label\nfine film,pos\nodd one,neutral\n")
    result = cli("finetune", "--model", tiny_model_dir, "--train", train, "--dev", dev, "--text-column", "text",
                 "--label-column", "label", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 1
    assert "line 3" in result.stderr and "'neutral'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_column_lists_columns_found(tiny_model_dir, tmp_path):
    with pytest.raises(DataError, match=r"no column 'sentence'; columns found: 'text', 'label'"):
        make_task(tiny_model_dir, tmp_path, text_column="sentence")


def test_bom_and_quoted_newlines(tiny_model_dir, tmp_path):
    body = 'text,label\n"first line\nsecond line",pos\n' + "\n".join(f"{t},pos" for t in POS) + "\n" + \
           "\n".join(f"{t},neg" for t in NEG) + "\n"
    train = write(tmp_path / "train.csv", b"\xef\xbb\xbf" + body.encode())
    task = make_task(tiny_model_dir, tmp_path, train=train)
    assert task.label2id == {"neg": 0, "pos": 1}
    assert len(task.train_split) == 13 and task.train_split.lines[:2] == [2, 4]
    first = task.tokenizer.decode(task.train_split.ids[0])
    assert first == "first line second line"


def test_short_row_gives_line(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "text\tlabel\ngood\tpos\nbad\tneg\nno label here\n")
    with pytest.raises(DataError, match=r"train\.tsv, line 4: the row has 1 fields"):
        make_task(tiny_model_dir, tmp_path, train=train)


def test_empty_label_gives_line(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.csv", "text,label\ngood,pos\nbad,neg\nhmm,\n")
    with pytest.raises(DataError, match=r"line 4: column 'label' is empty"):
        make_task(tiny_model_dir, tmp_path, train=train)


def test_empty_texts_are_encoded(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.csv", "text,label\n,pos\n   ,neg\ngood,pos\nbad,neg\n")
    task = make_task(tiny_model_dir, tmp_path, train=train)
    tok = task.tokenizer
    assert task.train_split.ids[0] == [tok.cls_id, tok.sep_id]
    assert task.train_split.ids[1] == [tok.cls_id, tok.sep_id]


def test_non_utf8_bytes_name_line(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.csv", b"text,label\ngood,pos\ncaf\xe9 au lait,neg\n")
    with pytest.raises(DataError, match=r"train\.csv.*line 3"):
        make_task(tiny_model_dir, tmp_path, train=train)
    task = make_task(tiny_model_dir, tmp_path, train=train, encoding="latin-1")
    assert task.tokenizer.decode(task.train_split.ids[1]) == "cafe au lait"


def test_truncation_is_counted(tiny_model_dir, tmp_path):
    long = " ".join(["word"] * 50)
    train = write(tmp_path / "train.csv", f"text,label\n{long},pos\nshort,neg\n")
    task = make_task(tiny_model_dir, tmp_path, train=train, max_length=16)
    assert task.truncated["train"] == 1
    assert max(len(x) for x in task.train_split.ids) == 16


def test_pairs_use_segment_ids(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.tsv", "a\tb\ty\nthe cat sat\ta cat sat\tyes\nhello\tgoodbye\tno\n")
    task = make_task(tiny_model_dir, tmp_path, train=train, dev=train, text_column="a", text_pair_column="b",
                     label_column="y")
    assert task.train_split.type_ids[0].count(1) > 0 and task.train_split.type_ids[0][0] == 0


# ------------------------------------------------------------ mismatches caught before the first forward pass
def test_max_length_above_positions(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--max-length 600 is above the model's max_position_embeddings 128"):
        make_task(tiny_model_dir, tmp_path, max_length=600)


def test_tokenizer_larger_than_embeddings(tiny_model_dir, tmp_path):
    import dataclasses

    from bertcli.checkpoint import load_checkpoint, load_tokenizer, save_checkpoint

    ckpt = load_checkpoint(tiny_model_dir)
    state = dict(ckpt.state)
    state["bert.embeddings.word.weight"] = state["bert.embeddings.word.weight"][:1000].clone()
    state["mlm.bias"] = state["mlm.bias"][:1000].clone()
    small = save_checkpoint(tmp_path / "small", state, dataclasses.replace(ckpt.config, vocab_size=1000),
                            load_tokenizer(tiny_model_dir))
    with pytest.raises(TokenizerError, match="30522 tokens but the model has 1000 embedding rows"):
        make_task(small, tmp_path)


def test_config_yaml_unknown_key_and_cli_wins(tiny_model_dir, tmp_path, cli):
    bad = write(tmp_path / "bad.yaml", "model: x\nlearning_rate: 0.1\n")
    result = cli("finetune", "--config", bad)
    assert result.exit_code == 1 and "unknown key 'learning_rate'" in result.stderr
    from bertcli.config import merge_options
    from bertcli.tasks.classification import options_from_yaml

    good = write(tmp_path / "good.yaml", "model: m\nlr: 2e-5\nepochs: 4\ntext-column: t\n")
    opts = merge_options(options_from_yaml(str(good)), {"epochs": 1, "lr": None})
    assert (opts.epochs, opts.lr, opts.text_column) == (1, 2e-5, "t")


def test_bad_metric_named(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--metric 'spearman' for classification: valid values"):
        make_task(tiny_model_dir, tmp_path, metric="spearman")


def test_class_weights_auto(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,pos\nc,pos\nd,neg\n")
    task = make_task(tiny_model_dir, tmp_path, train=train, class_weights="auto")
    assert task.class_weight.tolist() == pytest.approx([2.0, 2 / 3])


# ------------------------------------------------------------ regression
def test_regression_trains_and_saves_problem_type(tiny_model_dir, tmp_path):
    from bertcli.tasks.classification import finetune

    rows = "\n".join(f"{a}\t{b}\t{i % 5 + 0.5}" for i, (a, b) in enumerate(zip(POS + NEG, NEG + POS, strict=True)))
    train = write(tmp_path / "train.tsv", rows + "\n")
    opts = options(tiny_model_dir, tmp_path, task="regression", train=train, dev=train, no_header=True,
                   text_column="0", text_pair_column="1", label_column="2")
    summary = finetune(opts)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["problem_type"] == "regression" and cfg["id2label"] == {"0": "LABEL_0"}
    assert summary["best_metric"] == "spearman" and "pearson" in summary["final_metrics"]


def test_regression_non_numeric_label_gives_line(tiny_model_dir, tmp_path):
    train = write(tmp_path / "train.csv", "text,label\na,0.5\nb,1.5\nc,high\n")
    with pytest.raises(DataError, match=r"line 4: label 'high' is not a number"):
        make_task(tiny_model_dir, tmp_path, task="regression", train=train, dev=train)


# ------------------------------------------------------------ resume
def test_resume_after_interrupt_matches_uninterrupted(tiny_model_dir, tmp_path, monkeypatch):
    from bertcli.tasks.classification import SequenceClassificationTask

    train = sentiment_csv(tmp_path / "train.csv")  # 24 rows, batch 8: 3 steps per epoch
    dev = sentiment_csv(tmp_path / "dev.csv", n=1)
    exc, a, b = interrupt_and_resume(  # SIGINT at the 4th loss: in the second epoch
        SequenceClassificationTask, lambda **kw: options(tiny_model_dir, tmp_path, train=train, dev=dev, epochs=2, **kw),
        tmp_path, monkeypatch)
    assert exc.exit_code == 130
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k


def test_length_grouping_and_its_switch(tiny_model_dir, tmp_path):
    """Grouped batches hold similar lengths; --no-group-by-length gives plain random batches."""
    import numpy as np
    import torch

    from bertcli.tasks.classification import length_grouped_order

    lengths = np.arange(640) % 64 + 1
    for group in (True, False):
        a = length_grouped_order(lengths, 16, torch.Generator().manual_seed(0), group)
        b = length_grouped_order(lengths, 16, torch.Generator().manual_seed(0), group)
        assert [x.tolist() for x in a] == [x.tolist() for x in b]  # deterministic
        assert sorted(np.concatenate(a).tolist()) == list(range(640))  # every example once
        spread = np.mean([lengths[x].max() - lengths[x].min() for x in a])
        assert (spread < 8) if group else (spread > 40), (group, spread)

    task = make_task(tiny_model_dir, tmp_path, group_by_length=False)
    batches = task.train_batches(0, torch.Generator().manual_seed(1), 8)
    assert sum(len(b["labels"]) for b in batches) == len(task.train_split.labels)
    with pytest.raises(ConfigError, match="group_by_length"):
        options(tiny_model_dir, tmp_path, group_by_length="no")
