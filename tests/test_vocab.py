"""bertcli.vocab / `bertcli train-vocab`: outputs, self-check, encodings, errors, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertcli.errors import ConfigError, DataError
from bertcli.tokenizer import Tokenizer
from bertcli.vocab import read_corpus, train_vocab

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "corpus"


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vocab") / "v"
    stats = train_vocab([EXAMPLES], out, vocab_size=1200, seed=0)
    return out, stats


def test_outputs_and_special_ids(vocab_dir):
    out, stats = vocab_dir
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).is_file()
    lines = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(lines) == stats["vocab_size"] <= 1200
    tok = Tokenizer.load(out)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert stats["special_ids"] == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["do_lower_case"] is True
    assert stats["self_check"]["identical"] is True
    assert not list(out.parent.glob(".v.tmp-*"))


def test_statistics_on_held_out_lines(vocab_dir):
    out, stats = vocab_dir
    ho = stats["held_out"]
    assert ho["lines"] > 0 and not ho["is_training_text"]
    assert stats["train_lines"] + ho["lines"] == 356  # non-blank lines of examples/corpus
    assert 0.0 <= stats["unk_rate"] < 0.05
    assert 1.0 <= stats["wordpieces_per_word"] < 3.0
    assert ho["tokens"] == round(ho["words"] * stats["wordpieces_per_word"])
    # the reported rates are what the saved tokenizer gives on those lines
    corpus = read_corpus([EXAMPLES], seed=0)
    tok = Tokenizer.load(out)
    encs = tok.backend.encode_batch(corpus["held_out"], add_special_tokens=False)
    assert sum(len(e.ids) for e in encs) == ho["tokens"]


def test_vocab_txt_and_tokenizer_json_agree(vocab_dir):
    out, _ = vocab_dir
    a = Tokenizer.load(out)
    b = Tokenizer.from_vocab(out / "vocab.txt")
    texts = (EXAMPLES / "science.txt").read_text(encoding="utf-8").splitlines()[:50] + ["Café déjà vu 東京 😀"]
    assert a.encode_ids(texts)[0] == b.encode_ids(texts)[0]


def test_held_out_split_deterministic_and_disjoint():
    a = read_corpus([EXAMPLES], seed=1)
    b = read_corpus([EXAMPLES], seed=1)
    c = read_corpus([EXAMPLES], seed=2)
    assert a["held_out"] == b["held_out"] and a["train"] == b["train"]
    assert a["held_out"] != c["held_out"]
    assert len(a["train"]) + len(a["held_out"]) == len(c["train"]) + len(c["held_out"])
    assert not set(a["held_out"]) & set(a["train"])


def test_cased_keep_accents(tmp_path):
    stats = train_vocab([EXAMPLES], tmp_path / "cased", vocab_size=1500, lowercase=False, strip_accents=False)
    tok = Tokenizer.load(tmp_path / "cased")
    assert not tok.lowercase and stats["settings"]["lowercase"] is False
    tokens = tok.encode("The café").tokens
    assert "The" in tokens and any("é" in t for t in tokens)
    assert Tokenizer.from_vocab(tmp_path / "cased" / "vocab.txt", False, False).encode("The café").tokens == tokens


def _latin1(tmp_path: Path) -> Path:
    f = tmp_path / "latin.txt"
    f.write_bytes("Le garçon a mangé une crème brûlée.\nIl était très content.\n".encode("latin-1") * 20)
    return f


def test_latin1_file_policies(tmp_path):
    f = _latin1(tmp_path)
    with pytest.raises(DataError, match=r"latin\.txt, line 1: byte 6 .*--encoding"):
        train_vocab([f], tmp_path / "a", vocab_size=200)
    assert not (tmp_path / "a").exists()
    stats = train_vocab([f], tmp_path / "b", vocab_size=200, encoding="auto")
    assert stats["fallback_files"] == [{"file": str(f), "encoding": "cp1252"}]
    stats = train_vocab([f], tmp_path / "c", vocab_size=200, encoding="latin-1", lowercase=False,
                        strip_accents=False)
    assert "ç" in Tokenizer.load(tmp_path / "c").get_vocab()
    stats = train_vocab([f], tmp_path / "d", vocab_size=200, errors="replace")
    assert stats["replaced_files"] == [str(f)]


def test_binary_and_empty_inputs(tmp_path):
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="blob.bin: looks like a binary file"):
        train_vocab([binary], tmp_path / "o")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\t\n")
    with pytest.raises(DataError, match="corpus is empty"):
        train_vocab([empty], tmp_path / "o")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        train_vocab([tmp_path / "nothing"], tmp_path / "o")
    with pytest.raises(DataError, match="no such file"):
        train_vocab([tmp_path / "missing.txt"], tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_vocab_size_smaller_than_alphabet(tmp_path):
    with pytest.raises(ConfigError, match=r"--vocab-size 30 is smaller than the \d+ tokens the alphabet"):
        train_vocab([EXAMPLES], tmp_path / "small", vocab_size=30)
    assert not (tmp_path / "small").exists()
    assert not list(tmp_path.iterdir())  # no temporary directory left behind
    with pytest.raises(ConfigError, match="at least 6"):
        train_vocab([EXAMPLES], tmp_path / "small", vocab_size=3)


def test_existing_out_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old-file.txt").write_text("keep me unless --force")
    with pytest.raises(ConfigError, match="already exists.*--force"):
        train_vocab([EXAMPLES], out, vocab_size=800)
    assert (out / "old-file.txt").is_file()
    train_vocab([EXAMPLES], out, vocab_size=800, force=True)
    assert not (out / "old-file.txt").exists() and (out / "vocab.txt").is_file()
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        train_vocab([EXAMPLES], afile, vocab_size=800, force=True)


def test_cli_end_to_end(cli, tmp_path):
    out = tmp_path / "vocab"
    r = cli("train-vocab", EXAMPLES, "--out", out, "--vocab-size", 1000, "--json")
    assert r.exit_code == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["vocab_size"] <= 1000 and stats["out"] == str(out)
    # the directory works for tokenize, mask-preview and init
    r = cli("tokenize", "--model", out, "The lighthouse keeper.", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["tokens"][0] == "[CLS]"
    r = cli("mask-preview", "--model", out, "The lighthouse keeper woke before dawn.", "--json")
    assert r.exit_code == 0, r.stderr
    r = cli("init", "--tokenizer", out, "--out", tmp_path / "model", "--preset", "tiny")
    assert r.exit_code == 0, r.stderr
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["vocab_size"] == stats["vocab_size"] and cfg["pad_token_id"] == 0
    # human output, then the errors: existing --out, Latin-1
    r = cli("train-vocab", EXAMPLES, "--out", out, "--vocab-size", 1000)
    assert r.exit_code == 1 and "already exists" in r.stderr
    r = cli("train-vocab", EXAMPLES, "--out", out, "--vocab-size", 1000, "--force")
    assert r.exit_code == 0 and "unknown-token rate" in r.stdout
    f = _latin1(tmp_path)
    r = cli("train-vocab", f, "--out", tmp_path / "l1", "--vocab-size", 200)
    assert r.exit_code == 1 and "line 1: byte 6" in r.stderr and "Traceback" not in r.stderr
    r = cli("train-vocab", f, "--out", tmp_path / "l2", "--vocab-size", 200, "--encoding", "auto")
    assert r.exit_code == 0 and "read as cp1252" in r.stderr


def test_shared_corpus_latin1_files(shared_data, tmp_path):
    files = [shared_data / "corpus" / "state_union" / n for n in ("1970-Nixon.txt", "1945-Truman.txt")]
    with pytest.raises(DataError, match=r"1970-Nixon\.txt, line \d+: byte \d+"):
        train_vocab(files, tmp_path / "a", vocab_size=3000)
    stats = train_vocab(files, tmp_path / "b", vocab_size=3000, encoding="auto")
    assert [fb["file"] for fb in stats["fallback_files"]] == [str(files[0])]
    assert stats["unk_rate"] < 0.01
