"""Train a vocabulary on plain text: WordPiece (BERT), byte-level BPE (RoBERTa) or Unigram
(SentencePiece-style: ALBERT, XLM-R), with ``tokenizers``' trainers.

``train_vocab(files, out, model_type=...)`` reads the files under the encoding policy of
:mod:`bertcli.data.text`, holds out a deterministic sample of lines (``held_out``, chosen with
``seed``), trains from an iterator of the decoded lines, and writes ``tokenizer.json``,
``tokenizer_config.json`` (with ``tokenizer_class``) and ``special_tokens_map.json`` (plus
``vocab.txt`` for WordPiece, ``vocab.json`` + ``merges.txt`` for BPE) through
:meth:`bertcli.tokenizer.Tokenizer.save` into ``out`` (atomically: a temporary sibling directory
renamed into place), so that transformers' ``AutoTokenizer`` loads the directory as the family's
tokenizer class.

Each ``style`` (:data:`STYLES`) fixes the special tokens, their ids (first, in this order) and the
post-processor::

    bert         (wordpiece)  [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4    [CLS] A [SEP] B [SEP]
    roberta      (bpe)        <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4      <s> A </s></s> B </s>
    albert       (unigram)    <pad>=0 <unk>=1 [CLS]=2 [SEP]=3 [MASK]=4    [CLS] A [SEP] B [SEP]
    deberta      (unigram)    [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 [MASK]=4    [CLS] A [SEP] B [SEP]
    xlm-roberta  (unigram)    <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4      <s> A </s></s> B </s>

then come the alphabet and the learnt tokens. The BPE is byte-level (no unknown token ever; words
start with ``\u0120``); the Unigram tokenizer splits on whitespace with the ``\u2581`` metaspace
and, for ALBERT, normalises like ``AlbertTokenizer`` (NFKD, accents stripped, lower-cased unless
``--cased``).

After writing, it checks itself: the directory is loaded back through ``tokenizer.json`` (and,
for WordPiece, through ``vocab.txt`` alone), and must give the same ids as the trained tokenizer
on a sample of text and the style's special ids. It reports the vocabulary size, the
unknown-token rate and the tokens per word on the held-out lines.

If ``vocab_size`` is too small to hold the special tokens and the alphabet the trainer keeps
(``limit_alphabet`` characters at most, each also as a ``##`` continuation), training stops with
a :class:`~bertcli.errors.ConfigError` that names the size needed instead of writing a larger
vocabulary than asked for.

Reproducibility: ``tokenizers`` (0.23) numbers the ``##`` forms of characters in hash-map order,
and merges with tied counts are broken by those ids, so two runs on the same text can give
slightly different vocabularies (huggingface/tokenizers#1794). The held-out split is
deterministic for a seed; keep the output directory rather than retraining to reproduce a model.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bertcli.data.text import ENCODING_ERRORS, expand_paths, read_text
from bertcli.errors import ConfigError, DataError, TokenizerError
from bertcli.tokenizer import ROLES, SPECIAL_TOKENS, Tokenizer

SPECIAL_IDS = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}  # [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4
MODEL_TYPES = ("wordpiece", "bpe", "unigram")
# style -> model type, special tokens in id order, their roles, tokenizer_class, RoBERTa pairs?
STYLES: dict[str, dict[str, Any]] = {
    "bert": {"model": "wordpiece", "tokens": SPECIAL_TOKENS, "roles": ("pad", "unk", "cls", "sep", "mask"),
             "class": "BertTokenizer", "roberta_pairs": False},
    "roberta": {"model": "bpe", "tokens": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                "roles": ("cls", "pad", "sep", "unk", "mask"), "class": "RobertaTokenizer", "roberta_pairs": True},
    "albert": {"model": "unigram", "tokens": ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"),
               "roles": ("pad", "unk", "cls", "sep", "mask"), "class": "AlbertTokenizer", "roberta_pairs": False},
    "xlm-roberta": {"model": "unigram", "tokens": ("<s>", "<pad>", "</s>", "<unk>", "<mask>"),
                    "roles": ("cls", "pad", "sep", "unk", "mask"), "class": "XLMRobertaTokenizer",
                    "roberta_pairs": True},
    # DeBERTa-v3's spm ids ([MASK] last there; first here, like every style)
    "deberta": {"model": "unigram", "tokens": ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"),
                "roles": ("pad", "cls", "sep", "unk", "mask"), "class": "DebertaV2Tokenizer", "roberta_pairs": False},
}
DEFAULT_STYLE = {"wordpiece": "bert", "bpe": "roberta", "unigram": "albert"}
BATCH_LINES = 1000
CHECK_SAMPLE = 2000
# A few lines the self-check always encodes: accents, CJK, emoji, control characters, punctuation.
PROBES = (
    "Hello, World! Naïve café façade: résumé — déjà vu.",
    "Ünïcödé ß İstanbul 東京 😀 tab\there",
    "[CLS] [SEP] [MASK] [PAD] [UNK] are plain text here.",
    "don't can't 1,234.56 e-mail@example.com https://example.org/a?b=c",
)


def _lines(text: str) -> Iterator[str]:
    for line in text.splitlines():
        if line.strip():
            yield line


def read_corpus(
    paths: Iterable[str | Path], encoding: str = "utf-8", errors: str = "strict", held_out: float = 0.02,
    seed: int = 0,
) -> dict[str, Any]:
    """Read and split the corpus: {"train": [...lines], "held_out": [...lines], "files": [...], ...}.

    Each non-blank line is held out with probability ``held_out`` (``random.Random(seed)``, in file
    order: deterministic). When that picks no line but there are at least two, the last line is held
    out so the statistics are never computed on training text.
    """
    if errors not in ENCODING_ERRORS:
        raise ConfigError(f"--encoding-errors {errors}: valid values: {', '.join(ENCODING_ERRORS)}")
    if not 0.0 <= held_out < 1.0:
        raise ConfigError(f"--held-out must be at least 0 and below 1, got {held_out}")
    files = expand_paths(paths)
    if not files:
        raise DataError("no input files given")
    rng = random.Random(seed)
    train: list[str] = []
    test: list[str] = []
    fallbacks: list[dict[str, str]] = []
    replaced: list[str] = []
    chars = 0
    for f in files:
        tf = read_text(f, encoding, errors)
        if encoding.lower() == "auto" and tf.encoding != "utf-8":
            fallbacks.append({"file": str(f), "encoding": tf.encoding})
        if errors == "replace" and "\ufffd" in tf.text:
            replaced.append(str(f))
        chars += len(tf.text)
        for line in _lines(tf.text):
            (test if held_out and rng.random() < held_out else train).append(line)
    if not train and not test:
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(f"the corpus is empty: {names} hold(s) no text; pass files with text")
    if held_out and not test and len(train) >= 2:
        test.append(train.pop())
    return {"train": train, "held_out": test, "files": [str(f) for f in files], "fallbacks": fallbacks,
            "replaced": replaced, "characters": chars}


def _batches(lines: list[str], n: int = BATCH_LINES) -> Iterator[list[str]]:
    for i in range(0, len(lines), n):
        yield lines[i:i + n]


def text_stats(tok: Tokenizer, lines: list[str]) -> dict[str, Any]:
    """Unknown-token rate and wordpieces per word of ``lines`` (no [CLS]/[SEP] counted)."""
    backend = tok.backend
    backend.no_truncation()
    tok._max_length = None
    n_tok = n_unk = n_words = 0
    for batch in _batches(lines):
        for e in backend.encode_batch(batch, add_special_tokens=False):
            n_tok += len(e.ids)
            n_unk += e.ids.count(tok.unk_id)
            n_words += len({w for w in e.word_ids if w is not None})
    return {
        "lines": len(lines), "words": n_words, "tokens": n_tok,
        "unk_rate": n_unk / n_tok if n_tok else 0.0,
        "wordpieces_per_word": n_tok / n_words if n_words else 0.0,
    }


def special_ids_of(style: str) -> dict[str, int]:
    """{token: id} of a style's special tokens (they come first, in order)."""
    return {t: i for i, t in enumerate(STYLES[style]["tokens"])}


def self_check(trained: Tokenizer, out: Path, sample: list[str], style: str = "bert") -> dict[str, Any]:
    """Reload ``out`` through tokenizer.json (and vocab.txt for WordPiece); each must encode ``sample``
    like ``trained`` and have the style's special ids. Raises TokenizerError otherwise."""
    st = STYLES[style]
    want = dict(zip(st["roles"], range(len(st["tokens"])), strict=True))
    expected = tuple(want[r] for r in ROLES)
    loaded = [("tokenizer.json", Tokenizer.load(out))]
    if trained.kind == "wordpiece":
        loaded.append(("vocab.txt", Tokenizer.from_vocab(out / "vocab.txt", trained.lowercase, trained.strip_accents)))
    texts = list(PROBES) + sample
    ref, _, _ = trained.encode_ids(texts, max_length=100_000)
    for name, tok in loaded:
        got = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
        if got != expected:
            raise TokenizerError(f"{out / name}: special ids {got} (pad, unk, cls, sep, mask), expected {expected}")
        if tok.vocab_size != trained.vocab_size:
            raise TokenizerError(f"{out / name}: {tok.vocab_size} tokens, trained {trained.vocab_size}")
        ids, _, _ = tok.encode_ids(texts, max_length=100_000)
        for text, a, b in zip(texts, ref, ids, strict=True):
            if a != b:
                raise TokenizerError(f"{out / name}: reloaded tokenizer encodes {text[:60]!r} differently")
    return {"texts": len(texts), "identical": True, "special_ids": special_ids_of(style), "files": [n for n, _ in loaded]}


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a directory; choose another --out")
        if not force:
            raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ConfigError(f"{out.parent}: is not a directory (the parent of --out)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out.parent}: cannot create the parent of --out ({exc.strerror})") from None


def _special_list(style: str) -> list:
    """The style's special tokens for a trainer (RoBERTa's ``<mask>`` eats the space before it)."""
    from tokenizers import AddedToken

    return [AddedToken(t, lstrip=True, special=True) if t == "<mask>" else AddedToken(t, special=True)
            for t in STYLES[style]["tokens"]]


def _post_processor(style: str):
    from tokenizers import processors

    names = dict(zip(STYLES[style]["roles"], STYLES[style]["tokens"], strict=True))
    ids = special_ids_of(style)
    cls_t, sep_t = names["cls"], names["sep"]
    if STYLES[style]["model"] == "bpe":
        return processors.RobertaProcessing((sep_t, ids[sep_t]), (cls_t, ids[cls_t]), trim_offsets=True,
                                            add_prefix_space=False)
    pair_b = f"{sep_t}:0 $B:0 {sep_t}:0" if STYLES[style]["roberta_pairs"] else f"$B:1 {sep_t}:1"
    return processors.TemplateProcessing(single=f"{cls_t}:0 $A:0 {sep_t}:0", pair=f"{cls_t}:0 $A:0 {sep_t}:0 {pair_b}",
                                         special_tokens=[(cls_t, ids[cls_t]), (sep_t, ids[sep_t])])


def _build_and_train(style: str, lines: list[str], *, vocab_size: int, min_frequency: int, lowercase: bool,
                     strip_accents: bool | None, limit_alphabet: int, show_progress: bool):
    """A ``tokenizers.Tokenizer`` of the style's model type, trained on ``lines``."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    kind = STYLES[style]["model"]
    specials = _special_list(style)
    length = (len(lines) + BATCH_LINES - 1) // BATCH_LINES
    if kind == "wordpiece":
        from tokenizers import BertWordPieceTokenizer

        bwp = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents,
                                     lowercase=lowercase)
        bwp.train_from_iterator(
            _batches(lines), vocab_size=vocab_size, min_frequency=min_frequency, limit_alphabet=limit_alphabet,
            special_tokens=list(SPECIAL_TOKENS), show_progress=show_progress, wordpieces_prefix="##", length=length,
        )
        return bwp._tokenizer
    if kind == "bpe":
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    else:
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.NFKD()]
        if strip_accents or (strip_accents is None and lowercase):
            steps.append(normalizers.StripAccents())
        if lowercase:
            steps.append(normalizers.Lowercase())
        tok = HFTokenizer(models.Unigram())
        if style == "albert":  # what AlbertTokenizer builds; XLMRobertaTokenizer has no normaliser
            tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ])
        if style == "deberta":  # what DebertaV2Tokenizer builds: whitespace runs to one space, NFC, cased
            from tokenizers import Regex

            tok.normalizer = normalizers.Sequence(
                ([normalizers.Lowercase()] if lowercase else [])
                + [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                   normalizers.Strip(left=False, right=True)])
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")])
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
        unk = dict(zip(STYLES[style]["roles"], STYLES[style]["tokens"], strict=True))["unk"]
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=unk,
                                          show_progress=show_progress)
    tok.train_from_iterator(_batches(lines), trainer=trainer, length=length)
    tok.post_processor = _post_processor(style)
    return tok


def train_vocab(
    files: Iterable[str | Path],
    out: str | Path,
    *,
    model_type: str = "wordpiece",
    style: str | None = None,
    vocab_size: int = 30522,
    min_frequency: int = 2,
    lowercase: bool | None = None,
    strip_accents: bool | None = None,
    limit_alphabet: int = 1000,
    encoding: str = "utf-8",
    errors: str = "strict",
    held_out: float = 0.02,
    seed: int = 0,
    force: bool = False,
    show_progress: bool = False,
    status: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a ``model_type`` (wordpiece, bpe, unigram) vocabulary on ``files`` (files or
    directories) and write it to ``out``.

    ``style`` picks the special tokens (:data:`STYLES`; default: bert, roberta, albert for the three
    model types). ``lowercase=None`` lower-cases for bert and albert, keeps case for roberta and
    xlm-roberta (whose transformers tokenizers do not lower-case). ``strip_accents=None`` strips
    accents when lower-casing. ``show_progress`` shows the trainer's own progress bar on stderr;
    ``status(message)`` is called at each stage. Returns the statistics (see the module docstring).
    """
    from bertcli.checkpoint import clean_leftovers, replace_dir, temp_dir_for

    if model_type not in MODEL_TYPES:
        raise ConfigError(f"--model-type {model_type}: valid values: {', '.join(MODEL_TYPES)}")
    style = style or DEFAULT_STYLE[model_type]
    allowed = [k for k, v in STYLES.items() if v["model"] == model_type]
    if style not in allowed:
        raise ConfigError(f"--style {style} does not go with --model-type {model_type}; use {' or '.join(allowed)}")
    if lowercase is None:
        lowercase = style in ("bert", "albert")
    elif lowercase and style in ("roberta", "xlm-roberta"):
        raise ConfigError(f"--lowercase: the {style} tokenizer keeps case (transformers' {STYLES[style]['class']} "
                          f"does not lower-case); drop --lowercase or use --model-type wordpiece or unigram")
    n_special = len(STYLES[style]["tokens"])
    least = n_special + (256 if model_type == "bpe" else 1)
    if vocab_size < least:
        what = " (the special tokens and the 256 bytes)" if model_type == "bpe" else ""
        raise ConfigError(f"--vocab-size must be at least {least}{what}, got {vocab_size}")
    if min_frequency < 1:
        raise ConfigError(f"--min-frequency must be at least 1, got {min_frequency}")
    if limit_alphabet < 1:
        raise ConfigError(f"--limit-alphabet must be at least 1, got {limit_alphabet}")
    out = Path(out)
    _prepare_out(out, force)
    say = status or (lambda _msg: None)
    t0 = time.perf_counter()

    say("reading the corpus")
    corpus = read_corpus(files, encoding, errors, held_out, seed)
    train_lines: list[str] = corpus["train"]
    eval_lines: list[str] = corpus["held_out"] or train_lines
    t_read = time.perf_counter()

    label = {"wordpiece": "WordPiece", "bpe": "byte-level BPE", "unigram": "Unigram"}[model_type]
    say(f"training a {vocab_size:,}-token {label} vocabulary on {len(train_lines):,} lines")
    backend = _build_and_train(style, train_lines, vocab_size=vocab_size, min_frequency=min_frequency,
                               lowercase=lowercase, strip_accents=strip_accents, limit_alphabet=limit_alphabet,
                               show_progress=show_progress)
    t_train = time.perf_counter()
    vocab = backend.get_vocab(with_added_tokens=True)
    if model_type == "wordpiece":
        n_alpha = sum(1 for t in vocab if len(t) == 1 or (t.startswith("##") and len(t) == 3))
    else:
        n_alpha = sum(1 for t in vocab if len(t.removeprefix("\u0120").removeprefix("\u2581")) == 1)
    if len(vocab) > vocab_size:
        raise ConfigError(
            f"--vocab-size {vocab_size} is smaller than the {len(vocab)} tokens the alphabet alone needs "
            f"({n_special} special tokens + {n_alpha} characters and their ## forms); use "
            f"--vocab-size {len(vocab)} or more, or lower --limit-alphabet"
        )
    ids = special_ids_of(style)
    for tok_str, want in ids.items():
        if vocab.get(tok_str) != want:  # the trainers put special tokens first, in order
            raise TokenizerError(f"trained vocabulary has {tok_str} at id {vocab.get(tok_str)}, expected {want}")
    extra = {"keep_accents": not (strip_accents or (strip_accents is None and lowercase))} if style == "albert" else {}
    if model_type == "bpe":
        extra = {"add_prefix_space": False}
    if style == "deberta":
        extra = {"do_lower_case": bool(lowercase), "split_by_punct": False}
    tok = Tokenizer(backend, lowercase=lowercase, strip_accents=strip_accents,
                    specials=dict(zip(STYLES[style]["roles"], STYLES[style]["tokens"], strict=True)),
                    tokenizer_class=STYLES[style]["class"], extra_config=extra)

    say("writing and checking the vocabulary")
    clean_leftovers(out.parent)
    tmp = temp_dir_for(out)
    try:
        tok.save(tmp)
        check = self_check(tok, tmp, eval_lines[:CHECK_SAMPLE], style)
        if out.exists() and not force:  # created by someone else while we trained
            raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    t_check = time.perf_counter()

    say("measuring the held-out sample")
    stats = text_stats(tok, eval_lines)
    t_end = time.perf_counter()
    return {
        "out": str(out),
        "model_type": model_type,
        "style": style,
        "tokenizer_class": tok.tokenizer_class,
        "vocab_size": tok.vocab_size,
        "requested_vocab_size": vocab_size,
        "alphabet": n_alpha,
        "continuations": sum(1 for t in vocab if not tok.starts_word(t)),
        "special_ids": ids,
        "files": len(corpus["files"]),
        "fallback_files": corpus["fallbacks"],
        "replaced_files": corpus["replaced"],
        "characters": corpus["characters"],
        "train_lines": len(train_lines),
        "held_out": {**stats, "is_training_text": not corpus["held_out"]},
        "unk_rate": stats["unk_rate"],
        "wordpieces_per_word": stats["wordpieces_per_word"],
        "settings": {"min_frequency": min_frequency, "lowercase": lowercase, "strip_accents": strip_accents,
                     "limit_alphabet": limit_alphabet, "encoding": encoding, "encoding_errors": errors,
                     "held_out": held_out, "seed": seed},
        "self_check": check,
        "time_s": {"read": round(t_read - t0, 3), "train": round(t_train - t_read, 3),
                   "write_check": round(t_check - t_train, 3), "stats": round(t_end - t_check, 3),
                   "total": round(t_end - t0, 3)},
    }
