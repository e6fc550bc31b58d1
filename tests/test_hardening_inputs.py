"""Hardening (issue 8), cases 9-11: hostile and sloppy YAML, CSV and text, through the CLI.

Every error case: exit 1, one line on stderr naming the file / line / key, no traceback, and
nothing written by an earlier run damaged.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import one_error_line

from bertcli.config import load_yaml
from bertcli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

POS = ["a lovely film", "great acting", "i loved it", "wonderful and warm", "a brilliant plot", "superb music"]
NEG = ["a boring film", "awful acting", "i hated it", "dull and cold", "a terrible plot", "poor music"]


def sentiment_rows(n: int = 2) -> list[tuple[str, str]]:
    rows = []
    for i in range(n):
        rows += [(f"{t} {i}", "pos") for t in POS] + [(f"{t} {i}", "neg") for t in NEG]
    return rows


def write_csv(path: Path, rows, header: str = "text,label", prefix: bytes = b"", raw: bytes = b"") -> Path:
    body = header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows)
    path.write_bytes(prefix + body.encode() + raw)
    return path


def finetune_args(model, train, out, *extra):
    return ["finetune", "--model", model, "--train", train, "--text-column", "text", "--label-column", "label",
            "--out", out, "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu",
            "--precision", "fp32", "--quiet", *extra]


@pytest.fixture(scope="module")
def finetuned(tiny_model_dir, tmp_path_factory):
    """A tiny classifier (MiniLM vocabulary) for predict."""
    import torch

    from bertcli.tasks.classification import FinetuneOptions, finetune

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("clf")
    train = write_csv(d / "train.csv", sentiment_rows())
    finetune(FinetuneOptions(model=str(tiny_model_dir), train=str(train), text_column="text",
                             label_column="label", out=str(d / "run"), epochs=1, batch_size=8, lr=1e-3,
                             device="cpu", precision="fp32", quiet=True))
    return d / "run"


# ============================================================ 9. YAML
@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system", "!!python/object/new:os.system",
                                 "!!python/name:os.system", "!!python/module:os"])
@pytest.mark.parametrize("command", ["finetune", "pretrain"])
def test_python_tags_are_refused_and_never_run(tmp_path, cli, monkeypatch, tag, command):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    lead = "epochs: 1\n" if command == "finetune" else "train:\n  max_steps: 1\n"
    cfg.write_text(f'{lead}x: {tag} ["touch {marker}"]\n')
    args = ["--config", cfg, "--out", tmp_path / "run"]
    if command == "pretrain":
        args = [tmp_path, *args]
    line = 2 if command == "finetune" else 3
    one_error_line(cli(command, *args), f"evil.yaml, line {line}", "python/")
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, needles", [
    ("epochs: 1\nlr: 0.1\nepochs: 2\n", ["line 3", "duplicate key 'epochs'"]),
    ("epochs: 1\nlearning_rate: 0.1\n", ["unknown key 'learning_rate'", "valid keys", "lr"]),
    ("epochs: three\n", ["'epochs' must be an integer", "three"]),
    ("epochs: 2.5\n", ["'epochs' must be an integer"]),
    ("lr: [0.1]\n", ["'lr' must be a number"]),
    ("quiet: maybe\n", ["'quiet' must be true or false"]),
    ("batch_size: true\n", ["'batch_size' must be an integer"]),
    ("? [a, b]\n: 1\n", ["line 1", "a key must be a plain name"]),
    ("- epochs\n- 1\n", ["expected a mapping"]),
    ("epochs: [1, 2\n", ["line", "invalid YAML"]),
    ("lr: " + "[" * 3000 + "]" * 3000 + "\n", ["nested too deeply"]),
    ("model: m\ntrain: t.csv\ntext_column: a\nlabel_column: b\nout: o\ntask: |\n  classification\n  regression\n",
     ["--task", "classification\\nregression"]),
])
def test_sloppy_finetune_yaml_names_the_key(tmp_path, cli, text, needles):
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(text)
    one_error_line(cli("finetune", "--config", cfg, "--out", tmp_path / "run"), *needles)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("text, needles", [
    ("model:\n  hiden_size: 64\n", ["unknown key 'hiden_size'"]),
    ("modle:\n  hidden_size: 64\n", ["unknown section 'modle'"]),
    ("train: 5\n", ["section 'train' must be a mapping"]),
    ("train:\n  max_steps: ten\n", ["train", "'max_steps' must be an integer"]),
    ("data:\n  objective: gpt\n", ["objective", "gpt"]),
    ("masking:\n  mask_prob: 2\n", ["masking", "mask probability", "2.0"]),
    ("train:\n  lr: 1e-4\n  lr: 1e-3\n", ["line 3", "duplicate key 'lr'"]),
])
def test_sloppy_pretrain_yaml_names_the_key(tmp_path, cli, text, needles):
    cfg = tmp_path / "pt.yaml"
    cfg.write_text(text)
    one_error_line(cli("pretrain", tmp_path, "--config", cfg, "--out", tmp_path / "run"), *needles)


def test_billion_laughs_is_refused_without_expanding(tmp_path, cli):
    lines = ["lr:", '  - &a ["x","x","x","x","x","x","x","x","x"]']
    prev = "a"
    for name in "bcdefghi":  # 9**9 strings if expanded
        lines.append(f"  - &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        prev = name
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    line = one_error_line(cli("finetune", "--config", cfg), "'lr' must be a number")
    assert len(line) < 1000


def test_yaml_exponent_floats_are_numbers(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; bertcli reads it as the number everyone means."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-4\nwarmup: 5E2\nname: 3e\n")
    assert load_yaml(cfg) == {"lr": 1e-4, "warmup": 500.0, "name": "3e"}
    from bertcli.tasks.pretraining import PretrainConfig

    cfg.write_text("train:\n  lr: 5e-4\n")
    assert PretrainConfig.from_yaml(cfg).train["lr"] == 5e-4
    with pytest.raises(ConfigError, match="line 1"):
        cfg.write_text("!!python/object/apply:os.getcwd []\n")
        load_yaml(cfg)


# ============================================================ 10. CSV
def test_bom_and_quoted_newlines_train_and_lines_stay_right(tiny_model_dir, tmp_path, cli):
    rows = sentiment_rows()
    train = tmp_path / "train.csv"
    body = "text,label\n" + '"a lovely\nfilm, really",pos\n' + "".join(f"{t},{lab}\n" for t, lab in rows)
    train.write_bytes(b"\xef\xbb\xbf" + body.encode())
    result = cli(*finetune_args(tiny_model_dir, train, tmp_path / "run", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["examples"]["train"] == len(rows) + 1
    # a bad row after the quoted newline is reported on its physical line (header 1, quoted row 2-3)
    dev = tmp_path / "dev.csv"
    dev.write_text('text,label\n"two\nlines",pos\nfine,unknown-label\n')
    one_error_line(cli(*finetune_args(tiny_model_dir, train, tmp_path / "run2", "--dev", dev)),
                   "dev.csv, line 4", "unknown-label")


def test_missing_column_lists_columns_found(tiny_model_dir, tmp_path, cli):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(), header="sentence,label")
    one_error_line(cli(*finetune_args(tiny_model_dir, train, tmp_path / "run")),
                   "train.csv", "no column 'text'", "'sentence'", "'label'")


def test_short_row_names_its_line(tiny_model_dir, tmp_path, cli, finetuned):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(), raw=b"only one field\n")
    one_error_line(cli(*finetune_args(tiny_model_dir, train, tmp_path / "run")), "train.csv, line 26",
                   "1 fields")
    # predict reads only the text column: the same row is fine there, a pair column is not
    one_error_line(cli("predict", "--model", finetuned, train, "--text-pair-column", "label", "--quiet"),
                   "train.csv, line 26", "1 fields")


def test_invalid_utf8_names_line_and_byte(tiny_model_dir, tmp_path, cli, finetuned):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(), raw=b"caf\xe9 au lait,pos\n")
    size = len(train.read_bytes())
    byte = size - len(b"\xe9 au lait,pos\n")
    one_error_line(cli(*finetune_args(tiny_model_dir, train, tmp_path / "run")),
                   "train.csv, line 26", f"byte {byte}", "--encoding")
    one_error_line(cli("predict", "--model", finetuned, train, "--quiet"), "line 26", f"byte {byte}")
    # the user's way out works
    assert cli(*finetune_args(tiny_model_dir, train, tmp_path / "run", "--encoding", "latin-1")).exit_code == 0


def test_field_larger_than_the_default_csv_limit(tiny_model_dir, tmp_path, cli, finetuned):
    import csv

    big = " ".join(["lovely"] * 30_000)  # Python's csv module refuses fields above 131072 characters
    assert len(big) > 131072
    rows = [*sentiment_rows(), (f'"{big}"', "pos")]
    train = write_csv(tmp_path / "train.csv", rows)
    result = cli(*finetune_args(tiny_model_dir, train, tmp_path / "run", "--json"))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["truncated"]["train"] == 1
    out = tmp_path / "pred.csv"
    assert cli("predict", "--model", finetuned, train, "--output", out, "--quiet").exit_code == 0
    with open(out, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == len(rows) and got[-1]["text"] == big


def test_binary_and_empty_files(tiny_model_dir, tmp_path, cli):
    binary = tmp_path / "model.csv"
    binary.write_bytes(b"text,label\n\x00\x01\x02,pos\n")
    one_error_line(cli(*finetune_args(tiny_model_dir, binary, tmp_path / "run")), "model.csv", "binary")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    one_error_line(cli(*finetune_args(tiny_model_dir, empty, tmp_path / "run")), "empty.csv")
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    one_error_line(cli(*finetune_args(tiny_model_dir, header_only, tmp_path / "run")), "header.csv",
                   "no data rows")


def test_failed_predict_leaves_an_existing_output_intact(tmp_path, cli, finetuned):
    out = tmp_path / "pred.csv"
    out.write_text("precious,data\n")
    bad = write_csv(tmp_path / "bad.csv", [("fine", "x")], raw=b"caf\xe9,y\n")
    one_error_line(cli("predict", "--model", finetuned, bad, "--output", out, "--quiet"), "bad.csv, line 3")
    assert out.read_text() == "precious,data\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ============================================================ 11. text
LONG = " ".join(["wonderful"] * 100_000)  # one token each: 100k tokens


@pytest.mark.parametrize("text", ["", "   \t  ", "a \ud800 b", "\udcff", LONG])
def test_tokenize_edge_texts(tiny_model_dir, cli, text):
    result = cli("tokenize", "--model", tiny_model_dir, "--json", "--", text)
    assert result.exit_code == 0, result.output
    rec = json.loads(result.stdout)
    assert rec["tokens"][0] == "[CLS]" and rec["tokens"][-1] == "[SEP]"
    assert len(rec["ids"]) <= 128  # the tiny model's max positions
    if not text.strip():
        assert rec["tokens"] == ["[CLS]", "[SEP]"]
    if text is LONG:
        assert len(rec["ids"]) == 128 and rec["truncated"]


def test_predict_edge_texts(tmp_path, cli, finetuned):
    """Empty, blank, lone-surrogate and 100k-token texts each get a prediction; output stays valid."""
    texts = ["", "   ", "a \ud800 b", LONG, "great acting"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))  # \ud800 as a JSON escape
    for output in ("-", tmp_path / "out.jsonl", tmp_path / "out.csv"):
        result = cli("predict", "--model", finetuned, src, "--output", output)
        assert result.exit_code == 0, result.output
        assert "1 truncated" in result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert all(r["label"] in ("pos", "neg") for r in rows)
    import csv

    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as fh:
        got = list(csv.DictReader(fh))
    assert got[2]["text"] == "a \ufffd b" and len(got) == len(texts)
    result = cli("predict", "--model", finetuned, src, "--json")
    assert [json.loads(line)["text"] for line in result.stdout.splitlines()] == texts


def test_fill_mask_edge_texts(tiny_model_dir, cli):
    result = cli("fill-mask", "--model", tiny_model_dir, "--json", "[MASK]", "a \ud800 [MASK]",
                 LONG[:500] + " [MASK]")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3
    # a text whose [MASK] is cut off by truncation, an empty text: a one-line error, not a crash
    one_error_line(cli("fill-mask", "--model", tiny_model_dir, LONG + " [MASK]"), "[MASK]")
    one_error_line(cli("fill-mask", "--model", tiny_model_dir, ""), "[MASK]")
    # texts are never read as rich markup
    result = cli("fill-mask", "--model", tiny_model_dir, "[bold]x[/] [MASK] [/]")
    assert result.exit_code == 0, result.output


def test_embed_and_similarity_edge_texts(tiny_model_dir, tmp_path, cli):
    texts = ["", "   ", "a \ud800 b", LONG, "great acting"]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = cli("embed", "--model", tiny_model_dir, "--input", src, "--column", "text", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(texts)
    import math

    vectors = [next(v for v in r.values() if isinstance(v, list)) for r in rows]
    assert all(len(v) == 32 and all(math.isfinite(x) for x in v) for v in vectors)
    out = tmp_path / "emb.jsonl"
    assert cli("embed", "--model", tiny_model_dir, "--input", src, "--column", "text", "--output", out).exit_code == 0
    assert len(out.read_text().splitlines()) == len(texts)
    result = cli("similarity", "--model", tiny_model_dir, "", LONG)
    assert result.exit_code == 0, result.output


def test_pretrain_edge_corpora(tmp_path, cli):
    from test_hardening_training import write_vocab

    vocab = write_vocab(tmp_path / "vocab")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  hidden_size: 32\n  num_layers: 1\n  num_heads: 2\n  intermediate_size: 64\n"
                   "  max_position_embeddings: 64\n")
    common = ["--tokenizer", vocab, "--config", cfg, "--max-steps", "2", "--batch-size", "2",
              "--max-seq-length", "32", "--objective", "mlm", "--device", "cpu", "--precision", "fp32", "--quiet"]
    for name, text in (("empty.txt", ""), ("blank.txt", "  \n\t\n   \n")):
        (tmp_path / name).write_text(text)
        one_error_line(cli("pretrain", tmp_path / name, "--out", tmp_path / f"run-{name}", *common), name)
    long = tmp_path / "long.txt"
    long.write_text(" ".join(["lovely film"] * 50_000) + "\n\n" + " ".join(["great acting"] * 50_000) + "\n")
    result = cli("pretrain", long, "--out", tmp_path / "run", *common, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["steps"] == 2
