"""Masked-language-model masking: one vectorised, pure, seedable function shared by pretraining
and ``bertcli mask-preview``.

Selection
    Each non-special token (the tokenizer's padding, cls, sep, mask and unknown tokens and any id in
    ``special_ids`` are never selected) is selected independently with probability ``mask_prob``
    (a Bernoulli draw per token). With ``whole_word`` (the :func:`continuation_table`), the draw is
    made per *word* instead: a word is a head token followed by its continuation tokens, and all
    its pieces are selected together or not at all. Which tokens continue a word comes from the
    tokenizer (:meth:`bertcli.tokenizer.Tokenizer.starts_word`): WordPiece ``##`` pieces; in
    byte-level BPE every token not starting with ``\u0120`` (a space), in Unigram / SentencePiece
    every token not starting with ``\u2581``, so a word is what lies between spaces (fairseq's
    whole-word masking for RoBERTa). A continuation token directly after a special token (or at
    position 0) starts its own word. With whole-word masking ``mask_prob`` is the
    fraction of words selected, so the fraction of *tokens* selected is ``mask_prob`` on average
    too but with a larger variance.

Fate of a selected token (the 80/10/10 rule)
    ``mask_replace_prob`` (0.8): replaced by the mask token; ``random_replace_prob`` (0.1): replaced by a
    token drawn uniformly from the non-special vocabulary (it may, with probability 1/V, be the
    original token, as in BERT); the rest (0.1): kept. The decision is drawn **per token**, also
    under whole-word masking, as Google's ``create_pretraining_data.py`` and Hugging Face's
    ``DataCollatorForWholeWordMask`` do: a selected word's pieces share their selection, not their
    replacement.

Labels hold the original id at every selected position and ``ignore_index`` elsewhere.

Random draws, in this order and always for the full ``input_ids`` shape, from the given
generator: selection uniforms, fate uniforms, random token indices. The same generator state
therefore gives the same result for the same input, on the same device.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from bertcli.errors import ConfigError

if TYPE_CHECKING:  # torch is imported lazily so that `bertcli --help` stays fast
    import torch

# Outcome codes returned by mask_tokens_with_outcome.
NOT_SELECTED, MASKED, RANDOM, KEPT = 0, 1, 2, 3
OUTCOME_NAMES = ("not selected", "masked", "random", "kept")


def continuation_table(tokenizer) -> torch.BoolTensor:
    """(vocab_size,) bool tensor: True for the tokens that continue a word (``tokenizer.starts_word``
    is False: ``##`` pieces in WordPiece, tokens without ``\u0120`` / ``\u2581`` in BPE / Unigram)."""
    import torch

    table = torch.zeros(tokenizer.vocab_size, dtype=torch.bool)
    ids = [i for tok, i in tokenizer.get_vocab().items()
           if i not in tokenizer.special_ids and not tokenizer.starts_word(tok)]
    if ids:
        table[torch.tensor(ids, dtype=torch.long)] = True
    return table


def check_probabilities(mask_prob: float, mask_replace_prob: float, random_replace_prob: float) -> None:
    """Raise ConfigError unless the probabilities are valid."""
    if not 0.0 <= mask_prob <= 1.0:
        raise ConfigError(f"mask probability must be between 0 and 1, got {mask_prob}")
    if not 0.0 <= mask_replace_prob <= 1.0 or not 0.0 <= random_replace_prob <= 1.0:
        raise ConfigError(
            f"mask/random replacement probabilities must be between 0 and 1, got "
            f"{mask_replace_prob} and {random_replace_prob}"
        )
    if mask_replace_prob + random_replace_prob > 1.0 + 1e-9:
        raise ConfigError(
            f"mask ({mask_replace_prob}) + random ({random_replace_prob}) replacement probabilities exceed 1"
        )


def word_starts(input_ids: torch.LongTensor, is_special: torch.BoolTensor,
                whole_word: torch.BoolTensor) -> torch.BoolTensor:
    """True where a word starts: every token that is not a continuation, and a continuation
    at position 0 or right after a special token. Special tokens count as (unselectable) starts."""
    import torch

    table = whole_word.to(device=input_ids.device, dtype=torch.bool)
    if input_ids.numel() and int(input_ids.max()) >= table.numel():
        raise ValueError(f"token id {int(input_ids.max())} is outside the continuation table ({table.numel()})")
    cont = table[input_ids] & ~is_special
    prev_special = torch.ones_like(is_special)
    prev_special[..., 1:] = is_special[..., :-1]
    return ~cont | prev_special


def _random_pool(vocab_size: int, special_ids: Collection[int], device) -> torch.LongTensor:
    import torch

    allowed = torch.ones(vocab_size, dtype=torch.bool)
    specials = [int(i) for i in special_ids if 0 <= int(i) < vocab_size]
    if specials:
        allowed[torch.tensor(specials, dtype=torch.long)] = False
    pool = allowed.nonzero().squeeze(1)
    if pool.numel() == 0:
        raise ConfigError(f"the vocabulary ({vocab_size} ids) has no non-special token to draw from")
    return pool.to(device)


def mask_tokens_with_outcome(
    input_ids: torch.LongTensor,
    *,
    generator: torch.Generator,
    mask_id: int,
    special_ids: Collection[int],
    vocab_size: int,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    whole_word: torch.BoolTensor | None = None,
    ignore_index: int = -100,
) -> tuple[torch.LongTensor, torch.LongTensor, torch.LongTensor]:
    """Mask ids for MLM: (masked inputs, labels, the outcome of every position: NOT_SELECTED,
    MASKED, RANDOM, KEPT). :func:`mask_tokens` is this function without the third output."""
    import torch

    check_probabilities(mask_prob, mask_replace_prob, random_replace_prob)
    if input_ids.dtype != torch.long:
        raise TypeError(f"input_ids must be a LongTensor, got {input_ids.dtype}")
    device = input_ids.device
    shape = input_ids.shape

    specials = sorted({int(i) for i in special_ids})
    if specials:
        is_special = torch.isin(input_ids, torch.tensor(specials, dtype=torch.long, device=device))
    else:
        is_special = torch.zeros(shape, dtype=torch.bool, device=device)

    # 1. selection: one uniform per position (per word head with whole-word masking)
    u_select = torch.rand(shape, generator=generator, device=device)
    if whole_word is not None:
        is_start = word_starts(input_ids, is_special, whole_word)
        pos = torch.arange(shape[-1], device=device).expand(shape)
        head = torch.where(is_start, pos, torch.zeros_like(pos)).cummax(dim=-1).values
        u_select = u_select.gather(-1, head)
    selected = (u_select < mask_prob) & ~is_special

    # 2. fate of each selected token (per token, see the module docstring)
    u_fate = torch.rand(shape, generator=generator, device=device)
    masked = selected & (u_fate < mask_replace_prob)
    random = selected & ~masked & (u_fate < mask_replace_prob + random_replace_prob)

    # 3. random replacements, uniform over the non-special ids
    pool = _random_pool(vocab_size, specials, device)
    random_ids = pool[torch.randint(pool.numel(), shape, generator=generator, device=device)]

    inputs = torch.where(masked, torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(random, random_ids, inputs)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, ignore_index))
    outcome = torch.zeros(shape, dtype=torch.long, device=device)
    outcome[selected] = KEPT
    outcome[masked] = MASKED
    outcome[random] = RANDOM
    return inputs, labels, outcome


def mask_tokens(input_ids: torch.LongTensor, **options) -> tuple[torch.LongTensor, torch.LongTensor]:
    """Mask a (B, T) or (T,) batch of ids for MLM: returns (masked inputs, labels).

    ``options`` are those of :func:`mask_tokens_with_outcome` (``generator``, ``mask_id``,
    ``special_ids``, ``vocab_size``, the probabilities, ``whole_word``, ``ignore_index``): the
    same code and the same draws, without the outcome. Pure (``input_ids`` is not modified),
    vectorised, deterministic for a generator state; works on the device of ``input_ids`` (the
    generator must be on the same device). ``special_ids`` (which must include the padding id) are
    never selected; random replacements are never special. ``whole_word`` is
    :func:`continuation_table` to select whole words. See the module docstring.
    """
    inputs, labels, _ = mask_tokens_with_outcome(input_ids, **options)
    return inputs, labels


# ------------------------------------------------------------------ preview (bertcli mask-preview)
@dataclass
class PreviewRow:
    """One text after masking: its tokens, ids, masked ids, labels and the outcome of each token."""

    text: str
    tokens: list[str]
    ids: list[int]
    masked_ids: list[int]
    masked_tokens: list[str]
    labels: list[int]
    outcome: list[str]  # "special", or one of OUTCOME_NAMES
    truncated: bool


@dataclass
class PreviewCounts:
    texts: int = 0
    eligible: int = 0  # non-special tokens
    selected: int = 0
    masked: int = 0
    random: int = 0
    kept: int = 0
    words: int = 0  # whole-word only: words (head + continuations) among the eligible tokens
    words_selected: int = 0
    truncated: int = 0

    def add(self, other: PreviewCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def preview(
    tokenizer,
    texts: list[str],
    *,
    seed: int = 0,
    mask_prob: float = 0.15,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
    whole_word: bool = False,
    max_length: int = 512,
    batch_size: int = 32,
    keep_rows: bool = True,
    vocab_size: int | None = None,
) -> tuple[list[PreviewRow], PreviewCounts]:
    """Mask ``texts`` exactly as :func:`mask_tokens` does in training and describe the result.

    The texts are encoded with the tokenizer's special tokens, truncated to ``max_length``, grouped into
    batches of ``batch_size`` right-padded to the longest text (like a training batch), and each
    batch goes through :func:`mask_tokens_with_outcome` with one ``torch.Generator`` seeded once
    with ``seed``. Random replacements are drawn from ``vocab_size`` ids (default: the tokenizer's
    vocabulary; pretraining uses the model's ``vocab_size``, so pass that for a checkpoint).
    """
    import torch

    from bertcli.tokenizer import pad_batch

    check_probabilities(mask_prob, mask_replace_prob, random_replace_prob)
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    table = continuation_table(tokenizer) if whole_word else None
    specials = sorted(tokenizer.special_ids)
    special_t = torch.tensor(specials, dtype=torch.long)
    rows: list[PreviewRow] = []
    counts = PreviewCounts()
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        encs = tokenizer.encode_batch(chunk, max_length=max_length)
        input_ids, _, _ = pad_batch([e.ids for e in encs], None, tokenizer.pad_id)
        inputs, labels, outcome = mask_tokens_with_outcome(
            input_ids, generator=gen, mask_id=tokenizer.mask_id, special_ids=specials,
            vocab_size=vocab_size or tokenizer.vocab_size, mask_prob=mask_prob, mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob, whole_word=table,
        )
        is_special = torch.isin(input_ids, special_t)
        c = PreviewCounts(
            texts=len(chunk), eligible=int((~is_special).sum()), selected=int((outcome != NOT_SELECTED).sum()),
            masked=int((outcome == MASKED).sum()), random=int((outcome == RANDOM).sum()),
            kept=int((outcome == KEPT).sum()), truncated=sum(e.truncated for e in encs),
        )
        if table is not None:
            heads = word_starts(input_ids, is_special, table) & ~is_special
            c.words = int(heads.sum())
            c.words_selected = int((heads & (outcome != NOT_SELECTED)).sum())
        counts.add(c)
        if not keep_rows:
            continue
        for i, (text, e) in enumerate(zip(chunk, encs, strict=True)):
            n = len(e.ids)
            out_ids = inputs[i, :n].tolist()
            codes = outcome[i, :n].tolist()
            spec = is_special[i, :n].tolist()
            rows.append(PreviewRow(
                text=text, tokens=list(e.tokens), ids=list(e.ids), masked_ids=out_ids,
                masked_tokens=[tokenizer.id_to_token(t) or f"[id {t}]" for t in out_ids], labels=labels[i, :n].tolist(),
                outcome=["special" if s else OUTCOME_NAMES[k] for s, k in zip(spec, codes, strict=True)],
                truncated=e.truncated,
            ))
    return rows, counts


def preview_stats(counts: PreviewCounts, mask_prob: float = 0.15, mask_replace_prob: float = 0.8,
                  random_replace_prob: float = 0.1, whole_word: bool = False) -> list[dict]:
    """Realised against expected rates: one dict per row (what, count, of, realised, expected, z).

    ``z`` is the binomial z-score (None where the count is not binomial: the token selection rate
    under whole-word masking, where whole words are drawn)."""
    keep_prob = 1.0 - mask_replace_prob - random_replace_prob

    def row(what, k, n, p, binomial=True):
        realised = k / n if n else 0.0
        sd = math.sqrt(n * p * (1 - p)) if n else 0.0
        z = (k - n * p) / sd if binomial and sd > 0 else None
        return {"what": what, "count": k, "of": n, "realised": realised, "expected": p, "z": z}

    out = [row("tokens selected", counts.selected, counts.eligible, mask_prob, binomial=not whole_word)]
    if whole_word:
        out.append(row("words selected", counts.words_selected, counts.words, mask_prob))
    out += [
        row("selected -> [MASK]", counts.masked, counts.selected, mask_replace_prob),
        row("selected -> random", counts.random, counts.selected, random_replace_prob),
        row("selected -> kept", counts.kept, counts.selected, keep_prob),
    ]
    return out
