"""Tokenisation on the ``tokenizers`` library: WordPiece (BERT), byte-level BPE (RoBERTa) and
Unigram / SentencePiece (ALBERT, XLM-R), all through ``tokenizer.json``.

``Tokenizer.load(dir)`` reads ``tokenizer.json``, or ``vocab.txt`` (+ ``tokenizer_config.json``
for lower-casing and accents; WordPiece only). The special tokens (cls, sep, pad, unk, mask), and so
their ids, come from the directory: ``special_tokens_map.json`` / ``tokenizer_config.json``, else
the ``post_processor`` of ``tokenizer.json``, else the usual names of the tokenizer's kind. The
post-processor of ``tokenizer.json`` is kept (``[CLS] A [SEP] B [SEP]``, RoBERTa's
``<s> A </s></s> B </s>``, ...); only a tokenizer without one gets ``cls A sep (B sep)``.
Encodings truncate longest-first to a maximum length and keep character offsets.

Word boundaries (:meth:`Tokenizer.starts_word`): WordPiece continuations start with ``##``;
byte-level BPE words start with ``\u0120`` (a space), Metaspace / SentencePiece words with
``\u2581``; a token right after a special token always starts a word (``word_starts`` in
:mod:`bertcli.masking`), as in fairseq's whole-word masking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, TokenizerError

# BERT's WordPiece specials, in the ids train-vocab gives them; only the fallback names for
# WordPiece vocabularies that say nothing about their special tokens.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROLES = ("pad", "unk", "cls", "sep", "mask")
# Names tried, in order, for a role the tokenizer files do not name.
FALLBACK_NAMES = {
    "pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>"),
}
# tokenizer_class written for each kind when the directory named none.
TOKENIZER_CLASS = {"wordpiece": "BertTokenizer", "bpe": "RobertaTokenizer", "unigram": "AlbertTokenizer"}


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


def _token_name(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _processor_specials(proc: dict | None) -> dict[str, str]:
    """cls and sep named by a tokenizer.json post_processor (Bert/Roberta/Template, or a Sequence)."""
    if not proc:
        return {}
    kind = proc.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {"cls": proc["cls"][0], "sep": proc["sep"][0]}
    if kind == "TemplateProcessing":
        names = [p["SpecialToken"]["id"] for p in proc.get("single", []) if "SpecialToken" in p]
        out = {}
        if len(names) >= 1:
            out["cls"] = names[0]
        if len(names) >= 2:
            out["sep"] = names[-1]
        return out
    if kind == "Sequence":
        for sub in proc.get("processors", []):
            found = _processor_specials(sub)
            if found:
                return found
    return {}


def _find(spec: dict, kinds: tuple[str, ...]) -> dict | None:
    """The first component of a tokenizer.json normalizer / pre_tokenizer of one of ``kinds``."""
    if not spec:
        return None
    if spec.get("type") in kinds:
        return spec
    for key in ("normalizers", "pretokenizers"):
        for sub in spec.get(key) or []:
            hit = _find(sub, kinds)
            if hit:
                return hit
    return None


class Tokenizer:
    """A WordPiece, BPE or Unigram tokenizer (wraps ``tokenizers.Tokenizer``)."""

    def __init__(self, tok, lowercase: bool = True, strip_accents: bool | None = None,
                 model_max_length: int = 512, specials: dict[str, str] | None = None,
                 tokenizer_class: str | None = None, extra_config: dict[str, Any] | None = None):
        from tokenizers import processors

        self._tok = tok
        self.lowercase = lowercase
        self.strip_accents = strip_accents
        self.model_max_length = model_max_length
        spec = json.loads(tok.to_str())
        self.kind = {"WordPiece": "wordpiece", "BPE": "bpe", "Unigram": "unigram"}.get(spec["model"]["type"])
        if self.kind is None:
            raise TokenizerError(f"tokenizer model {spec['model']['type']} is not supported; "
                                 f"supported: WordPiece, BPE, Unigram")
        self.tokenizer_class = tokenizer_class or TOKENIZER_CLASS[self.kind]
        self.extra_config = dict(extra_config or {})
        # word boundaries: a prefix that starts a word, or one that continues it
        self.continuation_prefix: str | None = None
        self.word_prefix: str | None = None
        if self.kind == "wordpiece":
            self.continuation_prefix = spec["model"].get("continuing_subword_prefix") or "##"
        elif _find(spec.get("pre_tokenizer") or {}, ("ByteLevel",)):
            self.word_prefix = "\u0120"
        else:
            meta = _find(spec.get("pre_tokenizer") or {}, ("Metaspace",))
            self.word_prefix = (meta or {}).get("replacement", "\u2581")
        vocab = tok.get_vocab(with_added_tokens=True)
        names = {**_processor_specials(spec.get("post_processor")), **(specials or {})}
        if "unk" not in names and spec["model"].get("unk_token"):
            names["unk"] = spec["model"]["unk_token"]
        if "unk" not in names and spec["model"].get("unk_id") is not None:
            names["unk"] = tok.id_to_token(spec["model"]["unk_id"])
        self.special_tokens: dict[str, str] = {}
        for role in ROLES:
            name = names.get(role)
            if name is None or name not in vocab:
                name = next((n for n in FALLBACK_NAMES[role] if n in vocab), None)
            if name is None:
                wanted = names.get(role) or " or ".join(FALLBACK_NAMES[role])
                raise TokenizerError(
                    f"tokenizer has no {role} token ({wanted}); name it as {role}_token in "
                    f"special_tokens_map.json or tokenizer_config.json"
                )
            self.special_tokens[role] = name
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[self.special_tokens[r]] for r in ROLES)
        added = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        self.special_ids = frozenset({self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id,
                                      *(vocab[t] for t in added if t in vocab)})
        tok.no_padding()
        tok.no_truncation()
        if tok.post_processor is None:
            cls_t, sep_t = self.special_tokens["cls"], self.special_tokens["sep"]
            tok.post_processor = processors.TemplateProcessing(
                single=f"{cls_t}:0 $A:0 {sep_t}:0",
                pair=f"{cls_t}:0 $A:0 {sep_t}:0 $B:1 {sep_t}:1",
                special_tokens=[(cls_t, self.cls_id), (sep_t, self.sep_id)],
            )
        self._max_length: int | None = None

    def starts_word(self, token: str) -> bool:
        """Whether ``token`` begins a word (``##`` continues one in WordPiece; ``\u0120`` / ``\u2581``
        begins one in BPE / Unigram). Special tokens count as starts."""
        if self.continuation_prefix is not None:
            return not (token.startswith(self.continuation_prefix) and len(token) > len(self.continuation_prefix))
        return token.startswith(self.word_prefix) or token in self.special_tokens.values()

    def as_running_text(self, words: list[str]) -> list[str]:
        """Pre-split words (CoNLL) as they appear in running text, for ``is_pretokenized`` encoding:
        byte-level BPE without a prefix space gets a space before every word but the first, so a
        word's pieces (``\u0120word``) are those of the same words in a sentence. Others unchanged."""
        if self.word_prefix != "\u0120" or not words:
            return words
        return [words[0], *(" " + w for w in words[1:])]

    def pair_layout(self) -> tuple[list[int], list[int], list[int], int]:
        """The special ids a pair gets from the post-processor: (before A, between A and B, after B,
        type id of B): ``[CLS]`` / ``[SEP]`` / ``[SEP]`` / 1 for BERT, ``<s>`` / ``</s></s>`` / ``</s>`` / 0
        for RoBERTa and XLM-R."""
        saved = self._tok.truncation
        self._tok.no_truncation()
        try:
            e = self._tok.encode("a", "b", add_special_tokens=True)
        finally:
            if saved:
                self._tok.enable_truncation(**saved)
        seq = e.sequence_ids
        first_a, last_a = seq.index(0), len(seq) - 1 - seq[::-1].index(0)
        first_b, last_b = seq.index(1), len(seq) - 1 - seq[::-1].index(1)
        return e.ids[:first_a], e.ids[last_a + 1:first_b], e.ids[last_b + 1:], e.type_ids[first_b]

    # ------------------------------------------------------------ loading
    @classmethod
    def from_vocab(cls, vocab_file: str | Path, lowercase: bool = True, strip_accents: bool | None = None,
                   model_max_length: int = 512, specials: dict[str, str] | None = None,
                   tokenizer_class: str | None = None) -> Tokenizer:
        """A WordPiece tokenizer from ``vocab.txt`` (BERT's normaliser and pre-tokenizer)."""
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
        names = {r: (specials or {}).get(r) or next((n for n in FALLBACK_NAMES[r] if n in vocab), None)
                 for r in ROLES}
        unk = names["unk"]
        if unk is None or unk not in vocab:
            raise TokenizerError(f"{vocab_file}: no unknown token ({unk or '[UNK]'}); add it to the vocabulary")
        tok = HFTokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens([n for n in dict.fromkeys(names.values()) if n in vocab])
        return cls(tok, lowercase=lowercase, strip_accents=strip_accents, model_max_length=model_max_length,
                   specials={r: n for r, n in names.items() if n}, tokenizer_class=tokenizer_class)

    @staticmethod
    def _read_json(file: Path) -> dict[str, Any]:
        if not file.is_file():
            return {}
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, 4300-digit ints
            raise TokenizerError(f"{file}: invalid JSON ({exc})") from None
        except OSError as exc:
            raise TokenizerError(f"{file}: cannot read ({exc.strerror})") from None
        if not isinstance(data, dict):
            raise TokenizerError(f"{file}: expected a JSON object of tokenizer settings")
        return data

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a checkpoint or tokenizer directory."""
        from tokenizers import Tokenizer as HFTokenizer

        from bertcli.hub import resolve_model

        path = resolve_model(path)  # a path, or a model name in the Hugging Face cache
        if not path.is_dir():
            raise TokenizerError(f"{path}: no such tokenizer directory")
        cfg = cls._read_json(path / "tokenizer_config.json")
        smap = cls._read_json(path / "special_tokens_map.json")
        specials = {}
        for role in ROLES:
            name = _token_name(cfg.get(f"{role}_token")) or _token_name(smap.get(f"{role}_token"))
            if name:
                specials[role] = name
        tclass = cfg.get("tokenizer_class") if isinstance(cfg.get("tokenizer_class"), str) else None
        extra = {k: cfg[k] for k in ("keep_accents", "add_prefix_space") if k in cfg}
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
            bert_norm = _find(norm, ("BertNormalizer",))
            if bert_norm:
                lowercase = bool(bert_norm.get("lowercase", True))
                strip_accents = bert_norm.get("strip_accents")
            else:
                lowercase = _find(norm, ("Lowercase",)) is not None
                strip_accents = _find(norm, ("StripAccents",)) is not None
            return cls(tok, lowercase=lowercase, strip_accents=strip_accents, model_max_length=max_len,
                       specials=specials, tokenizer_class=tclass, extra_config=extra)
        if (path / "vocab.txt").is_file():
            return cls.from_vocab(path / "vocab.txt", bool(cfg.get("do_lower_case", True)), cfg.get("strip_accents"),
                                  max_len, specials, tclass)
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
        least = self._tok.num_special_tokens_to_add(False) + 1
        if max_length < least:
            raise ConfigError(f"max length must be at least {least} (room for the special tokens and a token), "
                              f"got {max_length}")
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

    def encode_untruncated(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text without special tokens or truncation (``bertcli.windows`` cuts them)."""
        self._tok.no_truncation()
        self._max_length = None
        return [e.ids for e in self._tok.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------ saving
    def save(self, path: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json, plus vocab.txt
        (WordPiece) or vocab.json + merges.txt (BPE), the files transformers' AutoTokenizer reads."""
        path = Path(path)
        self._tok.no_truncation()
        self._max_length = None
        self._tok.save(str(path / "tokenizer.json"))
        if self.kind == "wordpiece":
            by_id = sorted(self.get_vocab().items(), key=lambda kv: kv[1])
            (path / "vocab.txt").write_text("".join(t + "\n" for t, _ in by_id), encoding="utf-8")
        elif self.kind == "bpe":
            self._tok.model.save(str(path))
        st = self.special_tokens
        specials = {"unk_token": st["unk"], "sep_token": st["sep"], "pad_token": st["pad"],
                    "cls_token": st["cls"], "mask_token": st["mask"]}
        if self.kind != "wordpiece":
            specials = {"bos_token": st["cls"], "eos_token": st["sep"], **specials}
        (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
        cfg: dict[str, Any] = {"tokenizer_class": self.tokenizer_class, "do_lower_case": self.lowercase}
        if self.kind == "wordpiece":
            cfg.update(strip_accents=self.strip_accents, tokenize_chinese_chars=True)
        cfg.update(self.extra_config)
        cfg.update(model_max_length=self.model_max_length, **specials)
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


def pad_batch(ids: list[list[int]], type_ids: list[list[int]] | None, pad_id: int, device=None,
              width: int | None = None):
    """Right-pad to the longest row (or to ``width``, if wider): returns (input_ids, attention_mask,
    token_type_ids) tensors."""
    import numpy as np
    import torch

    n = len(ids)
    T = max(max((len(x) for x in ids), default=0), width or 0)
    # filled in numpy (one tensor per batch, not one small tensor and copy per row)
    arr = np.full((n, T), pad_id, dtype=np.int64)
    mask = np.zeros((n, T), dtype=np.int64)
    kinds = np.zeros((n, T), dtype=np.int64)
    for i, row in enumerate(ids):
        L = len(row)
        arr[i, :L] = row
        mask[i, :L] = 1
        if type_ids is not None:
            kinds[i, :L] = type_ids[i]
    input_ids, attention, types = torch.from_numpy(arr), torch.from_numpy(mask), torch.from_numpy(kinds)
    if device is not None:
        return input_ids.to(device), attention.to(device), types.to(device)
    return input_ids, attention, types
