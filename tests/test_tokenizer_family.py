"""WordPiece, byte-level BPE (RoBERTa) and Unigram (ALBERT, XLM-R) tokenizers trained by
`train-vocab --model-type`: bertcli's encodings equal transformers' AutoTokenizer loaded from the
same directory, whole-word masking selects whole words with each kind, and the CLI works."""

from __future__ import annotations

import bisect
import json
import re
from pathlib import Path

import pytest
import torch

from bertcli.masking import continuation_table, mask_tokens_with_outcome, word_starts
from bertcli.tokenizer import Tokenizer, pad_batch
from bertcli.vocab import train_vocab

ROOT = Path(__file__).resolve().parents[1]
# style -> (model type, transformers class, special tokens by role)
KINDS = {
    "bert": ("wordpiece", "BertTokenizer", dict(cls="[CLS]", sep="[SEP]", pad="[PAD]", unk="[UNK]", mask="[MASK]")),
    "roberta": ("bpe", "RobertaTokenizer", dict(cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>")),
    "albert": ("unigram", "AlbertTokenizer", dict(cls="[CLS]", sep="[SEP]", pad="<pad>", unk="<unk>", mask="[MASK]")),
    "xlm-roberta": ("unigram", "XLMRobertaTokenizer",
                    dict(cls="<s>", sep="</s>", pad="<pad>", unk="<unk>", mask="<mask>")),
}
TEXTS = [
    "Hello, world! This is   a test of the tokenizer.",
    "Naïve café façade: résumé, déjà vu; Ünïcödé ß 東京 😀 tab\there",
    "The [MASK] sat on the <mask> mat, didn't it?",
    "",
    "``Quoted'' text, 1,234.56 e-mail@example.com and https://example.org/a?b=c",
    "A much longer sentence that goes on and on, so that truncation has to cut it somewhere in the middle.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A few hundred lines of the shared corpus (or of examples/corpus when it is absent)."""
    from tests.conftest import SHARED_DATA

    src = SHARED_DATA / "corpus" if (SHARED_DATA / "corpus").is_dir() else ROOT / "examples" / "corpus"
    lines: list[str] = []
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        lines += [ln for ln in f.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()][:150]
        if len(lines) >= 400:
            break
    out = tmp_path_factory.mktemp("corpus") / "lines.txt"
    out.write_text("\n".join(lines[:400]) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family")
    return {style: Path(train_vocab([corpus], root / style, model_type=mt, style=style, vocab_size=700)["out"])
            for style, (mt, _, _) in KINDS.items()}


@pytest.mark.parametrize("style", list(KINDS))
def test_encodings_equal_autotokenizer(trained, style):
    from transformers import AutoTokenizer

    kind, cls_name, specials = KINDS[style]
    ours = Tokenizer.load(trained[style])
    hf = AutoTokenizer.from_pretrained(str(trained[style]))
    assert type(hf).__name__ == cls_name and ours.kind == kind
    # special tokens and their ids come from the tokenizer files
    assert ours.special_tokens == specials
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.unk_id, ours.mask_id) == (
        hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.unk_token_id, hf.mask_token_id)
    assert set(ours.special_ids) == set(hf.all_special_ids)
    # single texts
    for text in TEXTS:
        e = ours.encode(text)
        h = hf(text)
        assert e.ids == h["input_ids"], text
        assert [1] * len(e.ids) == h["attention_mask"]
    # pairs (RoBERTa / XLM-R: <s> A </s></s> B </s>), with token types (transformers drops an empty B)
    full = [t for t in TEXTS if t]
    for a, b in zip(full, full[1:] + full[:1], strict=True):
        e = ours.encode(a, b)
        h = hf(a, b, return_token_type_ids=True)
        assert e.ids == h["input_ids"], (a, b)
        assert e.type_ids == h["token_type_ids"], (a, b)
    # longest-first truncation of pairs, and a padded batch
    for max_length in (8, 13, 24):
        e = ours.encode_batch(full, full[::-1], max_length=max_length)
        h = hf(full, full[::-1], truncation="longest_first", max_length=max_length, padding=True)
        ids, att, _ = pad_batch([x.ids for x in e], None, ours.pad_id)
        assert ids.tolist() == h["input_ids"], max_length
        assert att.tolist() == h["attention_mask"], max_length
    # the pair layout QA windows are built from
    before, between, after, b_type = ours.pair_layout()
    e = ours.encode("x", "y")
    assert e.ids[:len(before)] == before and e.ids[len(e.ids) - len(after):] == after
    assert e.type_ids[-1] == b_type


def _whitespace_words(text: str, offsets: list[tuple[int, int]]) -> list[int | None]:
    """Index of the whitespace-separated word each token's characters lie in (None: specials, bare spaces)."""
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    return [None if b <= a else bisect.bisect_right(starts, a) - 1 for a, b in offsets]


@pytest.mark.parametrize("style", list(KINDS))
def test_whole_word_masking_selects_whole_words(trained, corpus, style):
    tok = Tokenizer.load(trained[style])
    texts = [ln for ln in corpus.read_text(encoding="utf-8").splitlines() if len(ln.split()) > 5][:64]
    encs = tok.encode_batch(texts, max_length=128)
    ids, _, _ = pad_batch([e.ids for e in encs], None, tok.pad_id)
    table = continuation_table(tok)
    _, _, outcome = mask_tokens_with_outcome(
        ids, generator=torch.Generator().manual_seed(0), mask_id=tok.mask_id, special_ids=tok.special_ids,
        vocab_size=tok.vocab_size, mask_prob=0.3, whole_word=table)
    selected = (outcome != 0).tolist()
    n_multi = 0
    for i, (text, e) in enumerate(zip(texts, encs, strict=True)):
        # the reference word of each token: the tokenizer's own words for WordPiece (punctuation
        # apart), the whitespace-separated words for BPE and Unigram (\u0120 / \u2581 start them)
        words = e.word_ids if tok.kind == "wordpiece" else _whitespace_words(text, e.offsets)
        groups: dict[int, list[bool]] = {}
        for j, w in enumerate(words):
            if w is not None and e.ids[j] not in tok.special_ids:
                groups.setdefault(w, []).append(selected[i][j])
        for sel in groups.values():
            assert all(sel) or not any(sel), (text, e.tokens)
            n_multi += len(sel) > 1 and all(sel)
    assert n_multi > 0  # whole multi-piece words were selected
    # the boundary rule itself: ## / \u0120 / \u2581, and right after a special token
    starts = word_starts(ids, torch.isin(ids, torch.tensor(sorted(tok.special_ids))), table)
    marker = {"wordpiece": None, "bpe": "\u0120", "unigram": "\u2581"}[tok.kind]
    for j, t in enumerate(encs[0].tokens[1:-1], start=1):
        expected = (not t.startswith("##")) if marker is None else (t.startswith(marker) or j == 1)
        assert bool(starts[0, j]) == expected, (j, t)


@pytest.mark.parametrize("model_type,files", [("bpe", {"vocab.json", "merges.txt"}), ("unigram", set())])
def test_train_vocab_cli(cli, corpus, tmp_path, model_type, files):
    from transformers import AutoTokenizer

    out = tmp_path / model_type
    r = cli("train-vocab", corpus, "--out", out, "--model-type", model_type, "--vocab-size", 600, "--json")
    assert r.exit_code == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["model_type"] == model_type and stats["vocab_size"] <= 600
    want = {"bpe": {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4},
            "unigram": {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}}[model_type]
    assert stats["special_ids"] == want
    names = {p.name for p in out.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} | files <= names
    assert "vocab.txt" not in names
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == {"bpe": "RobertaTokenizer", "unigram": "AlbertTokenizer"}[model_type]
    assert Tokenizer.load(out).encode("Some text here.").ids == AutoTokenizer.from_pretrained(str(out))(
        "Some text here.")["input_ids"]
    # human output names the kind
    r = cli("train-vocab", corpus, "--out", out, "--model-type", model_type, "--vocab-size", 600, "--force")
    assert r.exit_code == 0, r.stderr
    assert model_type in r.stdout


def test_train_vocab_cli_errors(cli, corpus, tmp_path):
    r = cli("train-vocab", corpus, "--out", tmp_path / "x", "--model-type", "bpe", "--style", "albert")
    assert r.exit_code == 1 and "--style albert" in r.stderr and "roberta" in r.stderr
    r = cli("train-vocab", corpus, "--out", tmp_path / "x", "--model-type", "bpe", "--lowercase")
    assert r.exit_code == 1 and "--lowercase" in r.stderr
    r = cli("train-vocab", corpus, "--out", tmp_path / "x", "--model-type", "sentencepiece")
    assert r.exit_code == 1 and "wordpiece, bpe, unigram" in r.stderr
    r = cli("train-vocab", corpus, "--out", tmp_path / "x", "--model-type", "bpe", "--vocab-size", 100)
    assert r.exit_code == 1 and "256 bytes" in r.stderr
    assert not (tmp_path / "x").exists()


def test_tokenize_and_mask_preview_cli_on_bpe(cli, trained):
    from transformers import AutoTokenizer

    d = trained["roberta"]
    hf = AutoTokenizer.from_pretrained(str(d))
    r = cli("tokenize", "--model", d, "Hello there, world!", "--pair", "A second text.", "--json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["ids"] == hf("Hello there, world!", "A second text.")["input_ids"]
    assert row["tokens"][0] == "<s>" and row["tokens"].count("</s>") == 3
    r = cli("tokenize", "--model", d, "Hello there, world!")
    assert r.exit_code == 0, r.stderr
    assert "<s>" in r.stdout and "\u0120there" in r.stdout

    text = "The lighthouse keeper woke before dawn, unbelievably early in the morning."
    r = cli("mask-preview", "--model", d, text, "--whole-word", "--mask-prob", 0.5, "--seed", 2, "--json")
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["outcome"][0] == row["outcome"][-1] == "special"
    assert row["tokens"][0] == "<s>" and row["tokens"][-1] == "</s>"
    masked = [t for t, o in zip(row["masked_tokens"], row["outcome"], strict=True) if o == "masked"]
    assert masked and set(masked) == {"<mask>"}
    # whole words: a selected token's word (up to the next \u0120 token) is selected throughout
    sel = [o not in ("special", "not selected") for o in row["outcome"]]
    toks = row["tokens"]
    for j in range(2, len(toks) - 1):
        if not toks[j].startswith("\u0120"):
            assert sel[j] == sel[j - 1], (j, toks)
    r = cli("mask-preview", "--model", d, text, "--mask-prob", 0.9, "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert "legend:" in r.stdout and "<mask>" in r.stdout and "<s>" in r.stdout


@pytest.mark.parametrize("style", ["roberta", "albert", "xlm-roberta"])
def test_directories_saved_by_transformers_load_and_round_trip(trained, tmp_path, style):
    """A directory transformers wrote (its own tokenizer_config.json, no special_tokens_map.json) loads
    with the same specials and ids; bertcli's save of it loads in AutoTokenizer as the same class."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(trained[style]))
    hf.save_pretrained(str(tmp_path / "hf"))
    ours = Tokenizer.load(tmp_path / "hf")
    assert ours.special_tokens == KINDS[style][2]
    pairs = [(a, b) for a, b in zip(TEXTS, TEXTS[::-1], strict=True) if a and b]
    assert [ours.encode(a, b).ids for a, b in pairs] == [hf(a, b)["input_ids"] for a, b in pairs]
    (tmp_path / "again").mkdir()
    ours.save(tmp_path / "again")
    back = AutoTokenizer.from_pretrained(str(tmp_path / "again"))
    assert type(back).__name__ == KINDS[style][1]
    assert [back(a, b)["input_ids"] for a, b in pairs] == [hf(a, b)["input_ids"] for a, b in pairs]


@pytest.mark.parametrize("style", list(KINDS))
def test_pre_split_words_get_the_pieces_of_running_text(trained, style):
    """Token classification encodes CoNLL words pre-split; their pieces must be those of the sentence
    (byte-level BPE: \u0120 before every word but the first), so training matches prediction."""
    from bertcli.tasks.token_classification import _pieces

    tok = Tokenizer.load(trained[style])
    words = ["Hello", "there", ",", "unbelievable", "world", "!"]
    split = _pieces(tok, [words], pretokenized=True)[0]
    text = _pieces(tok, [" ".join(words)], pretokenized=False)[0]
    assert split.tokens == text.tokens
    assert len(set(w for w in split.word_ids if w is not None)) == len(words)


@pytest.mark.parametrize(("style", "kind", "shown"), [("roberta", "bpe", "byte-level BPE"),
                                                      ("albert", "unigram", "Unigram")])
def test_info_names_the_tokenizer_kind(cli, trained, tmp_path, style, kind, shown):
    r = cli("init", "--out", tmp_path / "m", "--tokenizer", trained[style], "--preset", "tiny")
    assert r.exit_code == 0, r.stderr
    r = cli("info", "--model", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["tokenizer"]["kind"] == kind
    r = cli("info", "--model", tmp_path / "m")
    assert r.exit_code == 0 and shown in r.stdout, r.stdout
