"""bertcli.masking: rates within binomial bounds, specials never touched, whole words, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from bertcli.errors import ConfigError
from bertcli.masking import (
    KEPT,
    MASKED,
    NOT_SELECTED,
    RANDOM,
    continuation_table,
    mask_tokens,
    mask_tokens_with_outcome,
)

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = (PAD, UNK, CLS, SEP, MASK)
V = 1000


def within(k: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """k successes of n draws is within `sigmas` binomial standard deviations of n*p."""
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def make_batch(B: int = 250, T: int = 800, seed: int = 1) -> torch.Tensor:
    """Random non-special ids with [CLS] ... [SEP] and right padding of varying length, plus some [UNK]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    ids[torch.rand((B, T), generator=g) < 0.01] = UNK
    for b, L in enumerate(lengths.tolist()):
        ids[b, 0] = CLS
        ids[b, L - 1] = SEP
        ids[b, L:] = PAD
    return ids


def run(ids, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return mask_tokens_with_outcome(ids, generator=g, mask_id=MASK, special_ids=SPECIALS, vocab_size=V, **kw)


def test_rates_within_binomial_bounds():
    ids = make_batch()
    eligible = ~torch.isin(ids, torch.tensor(SPECIALS))
    n = int(eligible.sum())
    assert n >= 100_000
    inputs, labels, outcome = run(ids)
    selected = labels != -100
    k = int(selected.sum())
    assert within(k, n, 0.15), k / n
    # the 80/10/10 split, read off the outputs themselves (not only the outcome codes)
    n_mask = int((selected & (inputs == MASK)).sum())
    n_changed = int((selected & (inputs != MASK) & (inputs != ids)).sum())
    n_same = int((selected & (inputs == ids)).sum())
    assert n_mask + n_changed + n_same == k
    assert within(n_mask, k, 0.8) and within(n_changed + n_same, k, 0.2)
    assert within(int((outcome == RANDOM).sum()), k, 0.1)
    assert within(int((outcome == KEPT).sum()), k, 0.1)
    assert n_mask == int((outcome == MASKED).sum())


def test_labels_and_unselected_positions():
    ids = make_batch(B=20, T=200)
    inputs, labels, outcome = run(ids)
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])
    assert torch.equal(selected, outcome != NOT_SELECTED)
    assert torch.equal(inputs[outcome == KEPT], ids[outcome == KEPT])
    assert bool((inputs[outcome == MASKED] == MASK).all())


def test_specials_and_padding_never_selected():
    ids = make_batch()
    inputs, labels, _ = run(ids, mask_prob=0.9)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert bool((labels[special] == -100).all())
    assert torch.equal(inputs[special], ids[special])


def test_random_tokens_never_special_and_cover_vocab():
    # tiny vocabulary: specials would be drawn often if they were allowed
    ids = torch.full((50, 400), 7)
    g = torch.Generator().manual_seed(0)
    inputs, labels, outcome = mask_tokens_with_outcome(
        ids, generator=g, mask_id=MASK, special_ids=SPECIALS, vocab_size=10,
        mask_prob=1.0, mask_replace_prob=0.0, random_replace_prob=1.0,
    )
    assert bool((outcome == RANDOM).all())
    assert set(inputs.unique().tolist()) == {5, 6, 7, 8, 9}


def test_pure_and_deterministic():
    ids = make_batch(B=30, T=300)
    before = ids.clone()
    a = run(ids, seed=5)
    b = run(ids, seed=5)
    c = run(ids, seed=6)
    assert torch.equal(ids, before)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_equals_outcome_variant_and_1d():
    ids = make_batch(B=4, T=64)
    g = torch.Generator().manual_seed(3)
    inputs, labels = mask_tokens(ids, generator=g, mask_id=MASK, special_ids=SPECIALS, vocab_size=V)
    full = run(ids, seed=3)
    assert torch.equal(inputs, full[0]) and torch.equal(labels, full[1])
    row = ids[0]
    g = torch.Generator().manual_seed(3)
    i1, l1 = mask_tokens(row, generator=g, mask_id=MASK, special_ids=SPECIALS, vocab_size=V, ignore_index=-1)
    assert i1.shape == row.shape and bool(((l1 == -1) | (l1 == row)).all())


def test_extreme_probabilities():
    ids = make_batch(B=10, T=100)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    _, labels, _ = run(ids, mask_prob=0.0)
    assert bool((labels == -100).all())
    _, labels, _ = run(ids, mask_prob=1.0)
    assert torch.equal(labels != -100, ~special)


@pytest.mark.parametrize("kw", [dict(mask_prob=1.5), dict(mask_prob=-0.1), dict(mask_replace_prob=0.95),
                                dict(random_replace_prob=-0.1)])
def test_invalid_probabilities(kw):
    with pytest.raises(ConfigError):
        run(make_batch(B=2, T=10), **kw)


def _whole_word_setup(B=250, T=800, seed=2):
    ids = make_batch(B, T, seed)
    table = torch.zeros(V, dtype=torch.bool)
    table[700:] = True  # ids >= 700 are "##" continuations: about 30% of the tokens
    return ids, table


def test_whole_word_groups_never_split_and_word_rate():
    ids, table = _whole_word_setup()
    inputs, labels, outcome = run(ids, whole_word=table)
    selected = labels != -100
    special = torch.isin(ids, torch.tensor(SPECIALS))
    cont = table[ids] & ~special
    prev_special = torch.ones_like(special)
    prev_special[:, 1:] = special[:, :-1]
    joined = cont & ~prev_special  # continues the previous token's word
    assert bool((selected[:, 1:][joined[:, 1:]] == selected[:, :-1][joined[:, 1:]]).all())
    assert not bool((selected & special).any())
    heads = ~special & ~joined
    n_words = int(heads.sum())
    assert n_words >= 100_000
    assert within(int((selected & heads).sum()), n_words, 0.15)
    # the 80/10/10 decision is per token, also under whole-word masking
    k = int(selected.sum())
    assert within(int((outcome == MASKED).sum()), k, 0.8)
    assert within(int((outcome == RANDOM).sum()), k, 0.1)


def test_whole_word_continuation_after_special_starts_a_word():
    table = torch.zeros(V, dtype=torch.bool)
    table[600] = True
    ids = torch.tensor([[CLS, 600, 600, SEP, 600, PAD]])
    seen = set()
    for seed in range(200):
        _, labels, _ = run(ids, seed=seed, whole_word=table, mask_prob=0.5)
        sel = (labels[0] != -100).tolist()
        assert sel[0] is False and sel[3] is False and sel[5] is False
        assert sel[1] == sel[2]
        seen.add((sel[1], sel[4]))
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_continuation_table_on_real_vocab(minilm_dir):
    from bertcli.tokenizer import Tokenizer

    tok = Tokenizer.load(minilm_dir)
    table = continuation_table(tok)
    assert table.shape == (tok.vocab_size,) and table.dtype == torch.bool
    assert bool(table[tok.token_to_id("##s")]) and not bool(table[tok.token_to_id("the")])
    assert not bool(table[tok.mask_id])
    n = sum(1 for t in tok.get_vocab() if t.startswith("##") and len(t) > 2)
    assert int(table.sum()) == n


def test_whole_word_on_real_text(minilm_dir):
    from bertcli.tokenizer import Tokenizer, pad_batch

    tok = Tokenizer.load(minilm_dir)
    texts = ["Unbelievably, the tokenization of antidisestablishmentarianism works.", "Short one."] * 50
    ids, types, _ = tok.encode_ids(texts, max_length=64)
    input_ids, _, _ = pad_batch(ids, types, tok.pad_id)
    table = continuation_table(tok)
    g = torch.Generator().manual_seed(0)
    _, labels = mask_tokens(input_ids, generator=g, mask_id=tok.mask_id, special_ids=tok.special_ids,
                            vocab_size=tok.vocab_size, whole_word=table, mask_prob=0.5)
    sel = labels != -100
    cont = table[input_ids]
    assert bool((sel[:, 1:][cont[:, 1:]] == sel[:, :-1][cont[:, 1:]]).all())
    assert not bool(sel[input_ids == tok.pad_id].any())
