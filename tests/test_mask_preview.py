"""`bertcli mask-preview`: shows exactly what bertcli.masking.mask_tokens returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bertcli.masking import continuation_table, mask_tokens, preview, preview_stats
from bertcli.tokenizer import Tokenizer, pad_batch
from bertcli.vocab import train_vocab

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "corpus"
TEXTS = ["The lighthouse keeper woke before dawn, unbelievably early.",
         "Photosynthesis makes sugar from carbon dioxide and water.",
         "Short."]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mp") / "vocab"
    train_vocab([EXAMPLES], out, vocab_size=800)
    return out


def _expected(tok: Tokenizer, texts, seed, whole_word=False, mask_prob=0.15):
    encs = tok.encode_batch(texts, max_length=512)
    ids, _, _ = pad_batch([e.ids for e in encs], None, tok.pad_id)
    g = torch.Generator().manual_seed(seed)
    inputs, labels = mask_tokens(ids, generator=g, mask_id=tok.mask_id, special_ids=tok.special_ids,
                                 vocab_size=tok.vocab_size, mask_prob=mask_prob,
                                 whole_word=continuation_table(tok) if whole_word else None)
    return [(inputs[i, :len(e.ids)].tolist(), labels[i, :len(e.ids)].tolist()) for i, e in enumerate(encs)]


@pytest.mark.parametrize("whole_word", [False, True])
def test_json_equals_mask_tokens(cli, vocab, whole_word):
    tok = Tokenizer.load(vocab)
    args = ["mask-preview", "--model", vocab, *TEXTS, "--seed", 7, "--mask-prob", 0.4, "--json"]
    r = cli(*args, *(["--whole-word"] if whole_word else []))
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    expected = _expected(tok, TEXTS, 7, whole_word, 0.4)
    assert len(rows) == len(TEXTS)
    for row, (inputs, labels) in zip(rows, expected, strict=True):
        assert row["masked_ids"] == inputs and row["labels"] == labels
        assert row["masked_tokens"] == [tok.id_to_token(i) for i in inputs]
        for o, a, b, lab in zip(row["outcome"], row["ids"], row["masked_ids"], row["labels"], strict=True):
            assert (o in ("special", "not selected")) == (lab == -100)
            if o == "masked":
                assert b == tok.mask_id
            if o == "kept":
                assert a == b
    assert any(o == "masked" for row in rows for o in row["outcome"])
    # a different seed gives a different masking
    r2 = cli("mask-preview", "--model", vocab, *TEXTS, "--seed", 8, "--mask-prob", 0.4, "--json")
    assert [json.loads(x)["labels"] for x in r2.stdout.splitlines()] != [row["labels"] for row in rows]


def test_human_output_has_legend_and_outcomes(cli, vocab):
    r = cli("mask-preview", "--model", vocab, *TEXTS, "--mask-prob", 0.9, "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert "legend:" in r.stdout and "[MASK]" in r.stdout and "[CLS]" in r.stdout
    assert "->" in r.stdout  # at mask-prob 0.9 a random replacement shows as original->replacement
    assert "selected" in r.stderr


def test_stats_over_a_file(cli, vocab):
    f = EXAMPLES / "science.txt"
    r = cli("mask-preview", "--model", vocab, "--input", f, "--stats", "--json", "--seed", 3)
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    rates = {x["what"]: x for x in s["rates"]}
    assert set(rates) == {"tokens selected", "selected -> [MASK]", "selected -> random", "selected -> kept"}
    sel = rates["tokens selected"]
    assert sel["of"] == s["eligible_tokens"] > 1000 and abs(sel["z"]) < 5
    assert sum(rates[k]["count"] for k in ("selected -> [MASK]", "selected -> random", "selected -> kept")) \
        == sel["count"]
    r = cli("mask-preview", "--model", vocab, "--input", f, "--stats", "--whole-word")
    assert r.exit_code == 0 and "words selected" in r.stdout and "expected" in r.stdout


def test_preview_stats_library(vocab):
    tok = Tokenizer.load(vocab)
    lines = [x for p in sorted(EXAMPLES.iterdir()) for x in p.read_text().splitlines() if x.strip()]
    rows, counts = preview(tok, lines * 10, seed=0, batch_size=64)
    assert counts.eligible >= 100_000 and len(rows) == len(lines) * 10
    assert counts.selected == counts.masked + counts.random + counts.kept
    for r in preview_stats(counts):
        assert abs(r["z"]) < 5, r


def test_errors(cli, vocab, tmp_path):
    r = cli("mask-preview", "--model", vocab)
    assert r.exit_code == 1 and "no input" in r.stderr
    r = cli("mask-preview", "--model", vocab, "hi", "--mask-prob", 1.5)
    assert r.exit_code == 1 and "between 0 and 1" in r.stderr
    r = cli("mask-preview", "--model", tmp_path / "nope", "hi")
    assert r.exit_code == 1 and "no such tokenizer directory" in r.stderr
    r = cli("mask-preview", "--model", vocab, "hi", "--max-length", 100000)
    assert r.exit_code == 1 and "max_position" in r.stderr


def test_works_with_a_checkpoint(cli, vocab, tmp_path):
    r = cli("init", "--tokenizer", vocab, "--out", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    r = cli("mask-preview", "--model", tmp_path / "m", "A sentence about the sea.", "--json", "--max-length", 8)
    assert r.exit_code == 0, r.stderr
    row = json.loads(r.stdout)
    assert len(row["ids"]) == 8 and row["truncated"] is True
