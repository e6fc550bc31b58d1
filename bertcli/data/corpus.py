"""Pretraining corpus: text files -> documents -> token ids (cached, memory-mapped) -> examples.

Documents are separated by blank lines (``documents="blank-line"``) or are whole files
(``documents="file"``); inside a document every non-empty line is one segment (a sentence or a
wrapped line), the unit NSP pairs are cut at. Each line is tokenised once, without special tokens,
and the ids are cached as three ``.npy`` arrays (no pickle) in a directory named by a hash of the
tokenizer, the files (path, size, mtime) and the settings; a second run or a resume memory-maps
them instead of tokenising again.

A deterministic share of the documents is held out for evaluation.

Examples (built per epoch from a seed, so they are reproducible):

* ``mlm+nsp`` (original BERT): ``[CLS] A [SEP] B [SEP]`` pairs up to ``max_seq_length``; B follows
  A in the same document (IsNext, label 0) or, half of the time, comes from another document
  (NotNext, label 1); with probability ``short_seq_prob`` the target length is shorter. This is
  Google's ``create_instances_from_document``.
* ``mlm+sop`` (ALBERT's sentence-order prediction): the same pairs, but B is always the segments that
  follow A in the same document, and half of the time the two are swapped (label 1 = swapped).
* ``mlm`` (RoBERTa FULL-SENTENCES): consecutive segments packed into ``[CLS] ... [SEP]`` up to
  ``max_seq_length``, crossing document boundaries (a ``[SEP]`` marks each boundary); no NSP.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertcli.data.text import expand_paths, read_text
from bertcli.errors import ConfigError, DataError

OBJECTIVES = ("mlm+nsp", "mlm+sop", "mlm", "electra")  # electra: replaced-token detection (tasks/electra.py)
PAIR_OBJECTIVES = ("mlm+nsp", "mlm+sop")  # a sentence-pair head on the pooler (label in Example.nsp)
DOCUMENT_MODES = ("blank-line", "file")
CACHE_VERSION = 1


@dataclass
class TokenizedCorpus:
    """Token ids of every segment (line), grouped into documents.

    ``tokens[lines[i]:lines[i + 1]]`` are the ids of line ``i``; document ``d`` holds lines
    ``docs[d]`` to ``docs[d + 1] - 1``.
    """

    tokens: np.ndarray   # (N,) int32, memory-mapped
    lines: np.ndarray    # (L + 1,) int64 offsets into tokens
    docs: np.ndarray     # (D + 1,) int64 offsets into lines
    path: Path | None = None
    files: int = 0

    @property
    def num_docs(self) -> int:
        return len(self.docs) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.lines[-1])

    def document(self, d: int) -> list[np.ndarray]:
        lo, hi = int(self.docs[d]), int(self.docs[d + 1])
        return [self.tokens[self.lines[i]:self.lines[i + 1]] for i in range(lo, hi)]


# ------------------------------------------------------------ reading
def split_documents(text: str, mode: str) -> list[list[str]]:
    """Documents as lists of non-empty lines."""
    if mode not in DOCUMENT_MODES:
        raise ConfigError(f"documents '{mode}': valid values: {', '.join(DOCUMENT_MODES)}")
    docs: list[list[str]] = []
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            current.append(line)
        elif mode == "blank-line" and current:
            docs.append(current)
            current = []
    if current:
        docs.append(current)
    return docs


def _tokenizer_fingerprint(tokenizer) -> str:
    return hashlib.sha256(tokenizer.backend.to_str().encode()).hexdigest()


def cache_key(files: list[Path], tokenizer, documents: str, encoding: str, errors: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": CACHE_VERSION, "documents": documents, "encoding": encoding,
                         "errors": errors, "tokenizer": _tokenizer_fingerprint(tokenizer)}).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _tokenize_lines(tokenizer, lines: list[str], chunk: int = 20000) -> list[list[int]]:
    from bertcli.tokenizer import clean_text

    backend = tokenizer.backend
    backend.no_truncation()
    tokenizer._max_length = None  # the wrapper re-enables truncation on its next encode
    out: list[list[int]] = []
    for i in range(0, len(lines), chunk):
        part = [clean_text(t) for t in lines[i:i + chunk]]
        out.extend(e.ids for e in backend.encode_batch_fast(part, add_special_tokens=False))
    return out


def load_corpus(paths: list[str | Path], tokenizer, cache_dir: str | Path, *, documents: str = "blank-line",
                encoding: str = "utf-8", errors: str = "strict", log=None) -> TokenizedCorpus:
    """Tokenise ``paths`` (files or directories) once and return the memory-mapped ids."""
    if not paths:
        raise DataError("no corpus given: pass text files or directories")
    files = expand_paths(paths)
    key = cache_key(files, tokenizer, documents, encoding, errors)
    cache_dir = Path(cache_dir)
    target = cache_dir / f"corpus-{key}"
    if (target / "meta.json").is_file():
        try:
            return _open_cache(target, len(files))
        except (OSError, ValueError, KeyError):
            shutil.rmtree(target, ignore_errors=True)  # a damaged cache is rebuilt
    all_lines: list[str] = []
    doc_starts: list[int] = []
    used_encodings: dict[str, int] = {}
    for f in files:
        tf = read_text(f, encoding, errors)
        used_encodings[tf.encoding] = used_encodings.get(tf.encoding, 0) + 1
        if encoding.lower() == "auto" and tf.encoding != "utf-8" and log is not None:
            log(f"{f}: not UTF-8, read as {tf.encoding}")
        for doc in split_documents(tf.text, documents):
            doc_starts.append(len(all_lines))
            all_lines.extend(doc)
    if not all_lines:
        raise DataError(f"{', '.join(str(p) for p in paths)}: the corpus holds no text (every file is empty)")
    ids = _tokenize_lines(tokenizer, all_lines)
    # drop lines that tokenise to nothing, and documents left empty
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    keep = lengths > 0
    doc_of_line = np.zeros(len(ids), dtype=np.int64)
    doc_of_line[np.asarray(doc_starts[1:], dtype=np.int64)] = 1
    doc_of_line = np.cumsum(doc_of_line)
    kept_docs = doc_of_line[keep]
    if kept_docs.size == 0:
        raise DataError(f"{', '.join(str(p) for p in paths)}: the corpus holds no tokens")
    tokens = np.fromiter((t for x, k in zip(ids, keep, strict=True) if k for t in x), dtype=np.int32,
                         count=int(lengths[keep].sum()))
    lines = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=lines[1:])
    change = np.flatnonzero(np.diff(kept_docs)) + 1
    docs = np.concatenate([[0], change, [len(kept_docs)]]).astype(np.int64)
    meta = {"version": CACHE_VERSION, "files": len(files), "documents": int(len(docs) - 1),
            "lines": int(len(lines) - 1), "tokens": int(lines[-1]), "encodings": used_encodings,
            "mode": documents}
    _write_cache(target, tokens, lines, docs, meta)
    return _open_cache(target, len(files)) if target.is_dir() else TokenizedCorpus(tokens, lines, docs, None, len(files))


def _write_cache(target: Path, tokens, lines, docs, meta) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError:
        return  # no cache: tokenise again next time
    try:
        np.save(tmp / "tokens.npy", tokens, allow_pickle=False)
        np.save(tmp / "lines.npy", lines, allow_pickle=False)
        np.save(tmp / "docs.npy", docs, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def _open_cache(target: Path, files: int) -> TokenizedCorpus:
    def load(name):
        return np.load(target / name, mmap_mode="r", allow_pickle=False)

    tokens, lines, docs = load("tokens.npy"), load("lines.npy"), load("docs.npy")
    if tokens.dtype != np.int32 or lines[-1] != len(tokens) or docs[-1] != len(lines) - 1:
        raise ValueError("inconsistent cache")
    return TokenizedCorpus(tokens, np.asarray(lines), np.asarray(docs), target, files)


def split_heldout(num_docs: int, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train document ids, held-out document ids): a deterministic share, at least one of each
    when there are two or more documents and ``fraction > 0``."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(num_docs)
    n_eval = int(round(num_docs * fraction))
    if fraction > 0 and num_docs >= 2:
        n_eval = min(max(n_eval, 1), num_docs - 1)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


# ------------------------------------------------------------ examples
@dataclass
class Example:
    ids: np.ndarray        # int32, with [CLS]/[SEP]
    type_ids: np.ndarray   # int8
    nsp: int = -1          # 0 IsNext, 1 NotNext, -1 none


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_tokens:
        trunc = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


def nsp_examples(corpus: TokenizedCorpus, doc_ids: np.ndarray, max_seq_length: int, short_seq_prob: float,
                 seed: int, cls_id: int, sep_id: int, sop: bool = False) -> list[Example]:
    """Google's ``create_instances_from_document`` over ``doc_ids``, in document order.

    ``sop``: ALBERT's sentence order instead of NSP: B is always A's continuation, swapped with A
    half of the time (label 1)."""
    rng = random.Random(seed)
    max_tokens = max_seq_length - 3
    doc_ids = [int(d) for d in doc_ids]
    out: list[Example] = []
    for di, d in enumerate(doc_ids):
        document = corpus.document(d)
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = rng.randint(2, max_tokens)
        chunk: list[np.ndarray] = []
        length = 0
        i = 0
        while i < len(document):
            seg = document[i]
            chunk.append(seg)
            length += len(seg)
            if i == len(document) - 1 or length >= target:
                if chunk:
                    a_end = 1 if len(chunk) < 2 else rng.randint(1, len(chunk) - 1)
                    a = [int(t) for s in chunk[:a_end] for t in s]
                    b: list[int] = []
                    if not sop and (len(chunk) == 1 or rng.random() < 0.5) and len(doc_ids) > 1:
                        is_random = True
                        target_b = max(1, target - len(a))
                        other = di
                        for _ in range(10):
                            other = rng.randint(0, len(doc_ids) - 1)
                            if other != di:
                                break
                        other_doc = corpus.document(doc_ids[other])
                        start = rng.randint(0, len(other_doc) - 1)
                        for seg_b in other_doc[start:]:
                            b.extend(int(t) for t in seg_b)
                            if len(b) >= target_b:
                                break
                        i -= len(chunk) - a_end  # put the unused segments back
                    else:
                        is_random = False
                        b = [int(t) for s in chunk[a_end:] for t in s]
                    _truncate_pair(a, b, max_tokens, rng)
                    if sop and a and b:
                        is_random = rng.random() < 0.5  # swapped
                        if is_random:
                            a, b = b, a
                    if a and b:
                        ids = np.array([cls_id, *a, sep_id, *b, sep_id], dtype=np.int32)
                        types = np.zeros(len(ids), dtype=np.int8)
                        types[len(a) + 2:] = 1
                        out.append(Example(ids, types, int(is_random)))
                chunk, length = [], 0
            i += 1
    return out


def packed_examples(corpus: TokenizedCorpus, doc_ids: np.ndarray, max_seq_length: int,
                    cls_id: int, sep_id: int) -> list[Example]:
    """RoBERTa FULL-SENTENCES: whole segments packed up to ``max_seq_length`` (a [SEP] between
    documents); a segment longer than the budget is split."""
    budget = max_seq_length - 2
    out: list[Example] = []
    buf: list[int] = []

    def flush():
        while buf and buf[-1] == sep_id:
            buf.pop()
        if buf:
            ids = np.array([cls_id, *buf, sep_id], dtype=np.int32)
            out.append(Example(ids, np.zeros(len(ids), dtype=np.int8)))
            buf.clear()

    for d in doc_ids:
        if buf and len(buf) + 1 <= budget:
            buf.append(sep_id)  # document boundary
        for seg in corpus.document(int(d)):
            seg_list = [int(t) for t in seg]
            if len(buf) + len(seg_list) > budget:
                flush()
            while len(seg_list) > budget:
                buf.extend(seg_list[:budget])
                seg_list = seg_list[budget:]
                flush()
            buf.extend(seg_list)
    flush()
    return out


def check_nsp_possible(corpus: TokenizedCorpus, doc_ids: np.ndarray, where: str, sop: bool = False) -> None:
    if len(doc_ids) < 2 and not sop:
        raise DataError(
            f"{where}: next-sentence prediction needs at least 2 training documents, found {len(doc_ids)}; "
            f"separate documents by blank lines (or give several files with --documents file), "
            f"or use --objective mlm"
        )
    seg_counts = corpus.docs[1:] - corpus.docs[:-1]
    if int(seg_counts[doc_ids].max()) < 2:
        raise DataError(
            f"{where}: documents too short for next-sentence prediction: every document has a single line, "
            f"so there is no sentence pair to learn from; put one sentence per line inside a document, "
            f"or use --objective mlm"
        )


def corpus_summary(corpus: TokenizedCorpus, train: np.ndarray, heldout: np.ndarray) -> dict[str, Any]:
    return {"files": corpus.files, "documents": corpus.num_docs, "train_documents": int(len(train)),
            "heldout_documents": int(len(heldout)), "tokens": corpus.num_tokens,
            "cache": str(corpus.path) if corpus.path else None}
