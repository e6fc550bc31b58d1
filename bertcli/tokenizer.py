"""WordPiece tokenisation on the ``tokenizers`` library.

``Tokenizer.load(dir)`` reads ``tokenizer.json``, or ``vocab.txt`` (+ ``tokenizer_config.json``
for lower-casing and accents). Encodings add ``[CLS]``/``[SEP]`` and segment ids, truncate
longest-first to a maximum length, and keep character offsets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, TokenizerError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass
class Encoded:
    """One encoded input: ids, segment ids, character offsets (into its own text), tokens."""

    ids: list[int]
    type_ids: list[int]
    offsets: list[tuple[int, int]]
    tokens: list[str]
    word_ids: list[int | None]
    sequence_ids: list[int | None]
    truncated: bool


def clean_text(text: str) -> str:
    """Replace lone surrogates (which cannot be encoded as UTF-8) by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


class Tokenizer:
    """A BERT WordPiece tokenizer (wraps ``tokenizers.Tokenizer``)."""

    def __init__(self, tok, lowercase: bool = True, strip_accents: bool | None = None,
                 model_max_length: int = 512):
        from tokenizers import processors

        self._tok = tok
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.model_max_length = model_max_length
        vocab = tok.get_vocab(with_added_tokens=True)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise TokenizerError(f"tokenizer has no {', '.join(missing)} token; BERT needs all of {SPECIAL_TOKENS}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))
        tok.no_padding()
        tok.no_truncation()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        self._max_length: int | None = None

    # ------------------------------------------------------------ loading
    @classmethod
    def from_vocab(cls, vocab_file: str | Path, lowercase: bool = True, strip_accents: bool | None = None,
                   model_max_length: int = 512) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers

        vocab_file = Path(vocab_file)
        vocab: dict[str, int] = {}
        try:
            with open(vocab_file, encoding="utf-8") as fh:
                for i, line in enumerate(fh):
                    token = line.rstrip("\n").rstrip("\r")
                    if token in vocab:
                        raise TokenizerError(f"{vocab_file}, line {i + 1}: token '{token}' appears twice")
                    vocab[token] = i
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"{vocab_file}: not valid UTF-8 at byte {exc.start}") from None
        if not vocab:
            raise TokenizerError(f"{vocab_file}: the vocabulary is empty")
        if "[UNK]" not in vocab:
            raise TokenizerError(f"{vocab_file}: no [UNK] token; BERT needs all of {SPECIAL_TOKENS}")
        tok = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
        return cls(tok, lowercase=lowercase, strip_accents=strip_accents, model_max_length=model_max_length)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a checkpoint or tokenizer directory."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_dir():
            raise TokenizerError(f"{path}: no such tokenizer directory")
        cfg: dict[str, Any] = {}
        cfg_file = path / "tokenizer_config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                raise TokenizerError(f"{cfg_file}: invalid JSON ({exc})") from None
            except OSError as exc:
                raise TokenizerError(f"{cfg_file}: cannot read ({exc.strerror})") from None
            if not isinstance(cfg, dict):
                raise TokenizerError(f"{cfg_file}: expected a JSON object of tokenizer settings")
        lowercase = bool(cfg.get("do_lower_case", True))
        strip_accents = cfg.get("strip_accents")
        max_len = cfg.get("model_max_length", 512)
        if not isinstance(max_len, int) or max_len > 1_000_000:
            max_len = 512
        tj = path / "tokenizer.json"
        if tj.is_file():
            try:
                tok = HFTokenizer.from_file(str(tj))
            except Exception as exc:
                raise TokenizerError(f"{tj}: cannot load tokenizer ({exc})") from None
            norm = json.loads(tok.to_str()).get("normalizer") or {}
            if norm.get("type") == "BertNormalizer":
                lowercase = bool(norm.get("lowercase", lowercase))
                strip_accents = norm.get("strip_accents", strip_accents)
            return cls(tok, lowercase=lowercase, strip_accents=strip_accents, model_max_length=max_len)
        if (path / "vocab.txt").is_file():
            return cls.from_vocab(path / "vocab.txt", lowercase, strip_accents, max_len)
        raise TokenizerError(f"{path}: no tokenizer.json or vocab.txt; pass a checkpoint or train-vocab directory")

    # ------------------------------------------------------------ vocabulary
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    # ------------------------------------------------------------ encoding
    def _set_max_length(self, max_length: int) -> None:
        if max_length < 3:
            raise ConfigError(f"max length must be at least 3 (room for [CLS], [SEP] and a token), got {max_length}")
        if self._max_length != max_length:
            self._tok.enable_truncation(max_length, strategy="longest_first", stride=0)
            self._max_length = max_length

    def encode(self, text: str, pair: str | None = None, max_length: int = 512) -> Encoded:
        return self.encode_batch([text], [pair] if pair is not None else None, max_length)[0]

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None, max_length: int = 512) -> list[Encoded]:
        """Encode texts (or text pairs) with longest-first truncation to ``max_length`` tokens."""
        self._set_max_length(max_length)
        texts = [clean_text(t) for t in texts]
        inputs: list[Any]
        if pairs is not None:
            if len(pairs) != len(texts):
                raise ValueError("texts and pairs differ in length")
            inputs = list(zip(texts, [clean_text(p) for p in pairs], strict=True))
        else:
            inputs = texts
        out = []
        for e in self._tok.encode_batch(inputs, add_special_tokens=True):
            out.append(Encoded(
                ids=e.ids, type_ids=e.type_ids, offsets=e.offsets, tokens=e.tokens,
                word_ids=e.word_ids, sequence_ids=e.sequence_ids, truncated=bool(e.overflowing),
            ))
        return out

    def encode_ids(self, texts: list[str], pairs: list[str] | None = None,
                   max_length: int = 512) -> tuple[list[list[int]], list[list[int]], int]:
        """Fast path: (ids, type ids, number truncated) without offsets or tokens."""
        self._set_max_length(max_length)
        texts = [clean_text(t) for t in texts]
        inputs: Any = texts if pairs is None else list(zip(texts, [clean_text(p) for p in pairs], strict=True))
        encs = self._tok.encode_batch(inputs, add_special_tokens=True)
        return [e.ids for e in encs], [e.type_ids for e in encs], sum(1 for e in encs if e.overflowing)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------ saving
    def save(self, path: str | Path) -> None:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json."""
        path = Path(path)
        self._tok.no_truncation()
        self._max_length = None
        self._tok.save(str(path / "tokenizer.json"))
        by_id = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
        (path / "vocab.txt").write_text("".join(t + "\n" for t, _ in by_id), encoding="utf-8")
        specials = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                    "cls_token": "[CLS]", "mask_token": "[MASK]"}
        (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
        cfg = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
               "strip_accents": self.strip_accents, "tokenize_chinese_chars": True,
               "model_max_length": self.model_max_length, **specials}
        (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def check_max_length(max_length: int, max_positions: int, what: str = "--max-length") -> int:
    """A max length above the model's position table is an error giving both numbers."""
    if max_length > max_positions:
        raise ConfigError(
            f"{what} {max_length} is above the model's max_position_embeddings {max_positions}; "
            f"use {what} {max_positions} or less"
        )
    if max_length < 3:
        raise ConfigError(f"{what} must be at least 3, got {max_length}")
    return max_length


def check_vocab(tokenizer: Tokenizer, vocab_size: int, source: str) -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} tokens but the model has {vocab_size} "
            f"embedding rows; use the tokenizer the model was trained with"
        )


def pad_batch(ids: list[list[int]], type_ids: list[list[int]] | None, pad_id: int, device=None):
    """Right-pad to the longest row: returns (input_ids, attention_mask, token_type_ids) tensors."""
    import torch

    n = len(ids)
    T = max((len(x) for x in ids), default=0)
    input_ids = torch.full((n, T), pad_id, dtype=torch.long)
    attention = torch.zeros((n, T), dtype=torch.long)
    types = torch.zeros((n, T), dtype=torch.long)
    for i, row in enumerate(ids):
        L = len(row)
        input_ids[i, :L] = torch.tensor(row, dtype=torch.long)
        attention[i, :L] = 1
        if type_ids is not None:
            types[i, :L] = torch.tensor(type_ids[i], dtype=torch.long)
    if device is not None:
        return input_ids.to(device), attention.to(device), types.to(device)
    return input_ids, attention, types
