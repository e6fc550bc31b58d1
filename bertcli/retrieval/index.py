"""The index directory: build, append, resume, open.

An index is a directory of plain files, readable without bertcli::

    IDX/manifest.json            what the index holds (below)
    IDX/shard-00000.safetensors  one tensor "embeddings" [n, dim], F32 (or F16 with --dtype fp16)
    IDX/shard-00000.jsonl        the n documents of that shard, in the same order: {"_id", "title", "text"}
    IDX/shard-00001.*            ...

``manifest.json``: ``format`` ("bertcli-index"), ``version``, ``model`` (the checkpoint directory, absolute),
``model_fingerprint`` (a hash of its config, tokenizer and weights, sampled), ``pooling``, ``normalize``,
``max_length``, ``dim``, ``count``, ``dtype`` ("fp32" | "fp16"), ``query_prefix``, ``doc_prefix``, ``shards``
(``[{"vectors", "docs", "count"}]`` in order) and, while a build runs or after it was killed, ``pending`` (the
inputs of that build and the shard it started at).

A build embeds ``chunk_size`` documents at a time (:func:`bertcli.embed.embed_chunks`) and commits each chunk as
one shard: the two shard files are written under temporary names and renamed, then the manifest is rewritten
(also by rename). A killed build leaves every committed shard valid and listed; running the same command again
resumes after the last committed shard (the inputs must not have changed). Building into an existing index
appends (same model, pooling, normalisation and prefixes). A document id seen twice, in the input or in the index
already, is an error naming the ids, before anything is embedded.

Under ``torchrun`` each rank embeds every WORLD_SIZE-th chunk (rank r: chunks r, r + W, ...) and writes those
shards; rank 0 commits them to the manifest in input order, so the index is the one a single process builds.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bertcli.errors import CheckpointError, ConfigError, DataError

FORMAT = "bertcli-index"
VERSION = 1
MANIFEST = "manifest.json"
DTYPES = {"fp32": "float32", "fp16": "float16"}
_SAMPLES = 32  # blocks of each weight file hashed for the fingerprint
_SAMPLE_BYTES = 1 << 16


class IndexError_(DataError):
    """An index directory is missing, corrupt or does not match the request."""


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of a checkpoint directory: its config, tokenizer and pooling files in full and, of each
    ``*.safetensors`` file, the size and 32 evenly spaced 64 KiB blocks (fine-tuning changes every block), so
    that a copy of the same model matches and any other model does not, in milliseconds."""
    d = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json",
                 "sentence_bert_config.json", "adapter_config.json"):
        p = d / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    for w in sorted(d.glob("*.safetensors")):
        size = w.stat().st_size
        h.update(f"{w.name}\0{size}\0".encode())
        with open(w, "rb") as fh:
            for k in range(_SAMPLES):
                fh.seek(size * k // _SAMPLES)
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()[:20]


# ============================================================ reading
def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _bad(path: Path, what: str) -> IndexError_:
    return IndexError_(f"{path}: {what}; the index is corrupt: rebuild it with bertcli index (or restore the file)")


_FIELDS = {"model": str, "model_fingerprint": str, "pooling": str, "normalize": bool, "max_length": int, "dim": int,
           "count": int, "dtype": str, "query_prefix": str, "doc_prefix": str, "shards": list}


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The validated manifest of the index at ``directory`` (an :class:`IndexError_` naming the problem)."""
    d = Path(directory)
    path = d / MANIFEST
    if not d.is_dir():
        raise IndexError_(f"{d}: no such index directory; build one with bertcli index --model M DOCS --out {d}")
    if not path.is_file():
        raise IndexError_(f"{d}: not a bertcli index (no {MANIFEST}); build one with bertcli index")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _bad(path, f"invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(path, f"not a bertcli index manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("version") != VERSION:
        raise IndexError_(f"{path}: index format version {manifest.get('version')!r}; this bertcli reads "
                          f"version {VERSION}")
    for key, kind in _FIELDS.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise _bad(path, f"field '{key}' is {json.dumps(value)}, expected {kind.__name__}")
    if manifest["dtype"] not in DTYPES:
        raise _bad(path, f"field 'dtype' is {manifest['dtype']!r}, expected fp32 or fp16")
    total = 0
    for i, shard in enumerate(manifest["shards"]):
        if (not isinstance(shard, dict) or not isinstance(shard.get("vectors"), str)
                or not isinstance(shard.get("docs"), str) or type(shard.get("count")) is not int):
            raise _bad(path, f"shards[{i}] is not {{\"vectors\": FILE, \"docs\": FILE, \"count\": N}}")
        for key in ("vectors", "docs"):
            name = shard[key]
            if Path(name).name != name or name.startswith("."):
                raise _bad(path, f"shards[{i}].{key} {name!r} is not a file name inside the index")
            if not (d / name).is_file():
                raise _bad(d / name, f"missing (listed in {MANIFEST}, shards[{i}])")
        total += shard["count"]
    if total != manifest["count"]:
        raise _bad(path, f"'count' is {manifest['count']} but the shards hold {total} documents")
    return manifest


class Index:
    """An opened index: ``manifest`` (dict), ``ids`` (list of document ids, index order), :meth:`vectors`
    (a float32 tensor ``[N, D]``), :meth:`iter_vectors` (the same, a block at a time), :meth:`document` and
    :meth:`text` for one document. Documents are read from disk on first use."""

    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._docs: dict[str, dict[str, str]] | None = None
        self._ids: list[str] | None = None
        self._blocks: list[Any] | None = None  # the shards' vectors, after preload()
        self._rows: dict[str, int] | None = None
        self._ends: list[int] = []  # the shards' cumulative counts, set with _rows
        self._shard_docs: dict[int, list[dict[str, str]]] = {}

    @property
    def count(self) -> int:
        return self.manifest["count"]

    @property
    def dim(self) -> int:
        return self.manifest["dim"]

    def _read_docs(self, shard: dict[str, Any]) -> list[dict[str, str]]:
        path = self.path / shard["docs"]
        out = []
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _bad(path, f"line {n}: invalid JSON ({exc.msg})") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("_id"), str):
                    raise _bad(path, f"line {n}: not a document {{\"_id\", \"title\", \"text\"}}")
                out.append(doc)
        if len(out) != shard["count"]:
            raise _bad(path, f"{len(out)} documents, the manifest says {shard['count']}")
        return out

    @property
    def ids(self) -> list[str]:
        """Document ids in index order (row i of :meth:`vectors` is ``ids[i]``); the texts are not kept."""
        if self._ids is None:
            if self._docs is not None:
                self._ids = list(self._docs)
            else:
                self._ids = [d["_id"] for shard in self.manifest["shards"] for d in self._read_docs(shard)]
        return self._ids

    def documents(self) -> dict[str, dict[str, str]]:
        """``{doc_id: {"_id", "title", "text"}}`` in index order (every document in memory)."""
        if self._docs is None:
            self._docs = {d["_id"]: _doc(d) for shard in self.manifest["shards"] for d in self._read_docs(shard)}
        return self._docs

    def document(self, doc_id: str) -> dict[str, str]:
        """The document ``{"_id", "title", "text"}`` with this id (``KeyError`` when absent). Only the shard that
        holds it is read (the last few shards read are kept)."""
        if self._docs is not None:
            return self._docs[doc_id]
        if self._rows is None:
            self._rows = {i: r for r, i in enumerate(self.ids)}
            self._ends = list(itertools.accumulate(s["count"] for s in self.manifest["shards"]))
        row = self._rows[doc_id]
        ends = self._ends
        k = bisect.bisect_right(ends, row)
        if k not in self._shard_docs:
            if len(self._shard_docs) >= 8:
                self._shard_docs.pop(next(iter(self._shard_docs)))
            self._shard_docs[k] = [_doc(d) for d in self._read_docs(self.manifest["shards"][k])]
        return self._shard_docs[k][row - (ends[k] - self.manifest["shards"][k]["count"])]

    def text(self, doc_id: str) -> str:
        """``title + " " + text``, stripped: the text BEIR gives a cross-encoder for this document."""
        from bertcli.retrieval.beir import doc_text

        return doc_text(self.document(doc_id))

    def shard_vectors(self, i: int):
        """Shard ``i``'s vectors as a float32 tensor ``[n, D]`` (validated: safetensors, shape, dtype)."""
        from bertcli.checkpoint import read_weights

        shard = self.manifest["shards"][i]
        path = self.path / shard["vectors"]
        try:
            tensors = read_weights(path)
        except CheckpointError as exc:
            raise _bad(path, str(exc).removeprefix(f"{path}: ")) from None
        v = tensors.get("embeddings")
        if v is None or v.dim() != 2 or tuple(v.shape) != (shard["count"], self.dim):
            shape = None if v is None else list(v.shape)
            raise _bad(path, f"tensor 'embeddings' has shape {shape}, the manifest says [{shard['count']}, {self.dim}]")
        return v.float()

    def iter_vectors(self) -> Iterator[tuple[int, Any]]:
        """``(first_row, float32 tensor [n, D])`` for each shard, in index order (one shard in memory, unless
        :meth:`preload` put them all there)."""
        start = 0
        for i, shard in enumerate(self.manifest["shards"]):
            yield start, (self._blocks[i] if self._blocks is not None else self.shard_vectors(i))
            start += shard["count"]

    def preload(self, device: Any = None) -> Index:
        """Keep every shard's vectors in memory (on ``device``), for many searches in one process: N x D x 4
        bytes. Without it each search reads the shards again, one at a time."""
        self._blocks = [self.shard_vectors(i) if device is None else self.shard_vectors(i).to(device)
                        for i in range(len(self.manifest["shards"]))]
        return self

    def vectors(self):
        """All vectors, ``[N, D]`` float32 (row i: document ``ids[i]``)."""
        import torch

        parts = [v for _, v in self.iter_vectors()]
        return torch.cat(parts) if parts else torch.empty((0, self.dim))


def _doc(d: dict[str, Any]) -> dict[str, str]:
    return {"_id": d["_id"], "title": str(d.get("title") or ""), "text": str(d.get("text") or "")}


def open_index(path: str | Path) -> Index:
    """Open the index directory ``path`` (the manifest is validated now, shards when read)."""
    return Index(path, read_manifest(path))


def check_model(index: Index, model: str | Path | None) -> str:
    """The checkpoint directory to encode queries with: ``model`` or the manifest's; it must be the model the
    index was built with (same fingerprint), else a :class:`~bertcli.errors.ConfigError` saying so."""
    m = index.manifest
    path = Path(model) if model is not None else Path(m["model"])
    if not path.is_dir():
        if model is None:
            raise ConfigError(f"{index.path}: the index's model {m['model']} is not found; pass --model with that "
                              f"model (copied elsewhere)")
        raise ConfigError(f"--model {model}: no such checkpoint directory")
    fp = model_fingerprint(path)
    if fp != m["model_fingerprint"]:
        raise ConfigError(f"--model {path}: index {index.path} was built with another model ({m['model']}, "
                          f"fingerprint {m['model_fingerprint']}, this one {fp}); use that model or rebuild the index")
    return str(path)


# ============================================================ building
@dataclass
class BuildStats:
    added: int  # documents embedded by this run
    resumed: int  # documents of this input committed by an earlier, interrupted run
    count: int  # documents in the index now
    shards: int
    dim: int
    seconds: float
    tokens: int
    truncated: int
    pooling: str
    normalize: bool
    dtype: str
    device: str
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def _write_shard(directory: Path, k: int, vectors, docs: Sequence[dict[str, str]], dtype: str,
                 metadata: dict[str, Any]) -> dict[str, Any]:
    """Write shard ``k`` (vectors and documents, each by rename) and return its manifest entry."""
    from bertcli.data.tables import json_line
    from bertcli.streaming import EmbeddingWriter

    name = _shard_name(k)
    with EmbeddingWriter(str(directory / f"{name}.safetensors"), vectors.shape[1], total=len(vectors),
                         metadata=metadata, dtype=DTYPES[dtype]) as writer:
        writer.write(vectors)
    _atomic_write_text(directory / f"{name}.jsonl",
                       "".join(json_line({"_id": d["_id"], "title": d["title"], "text": d["text"]}) + "\n"
                               for d in docs))
    return {"vectors": f"{name}.safetensors", "docs": f"{name}.jsonl", "count": len(docs)}


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    _atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")


def _check_ids(corpus, existing: set[str]) -> None:
    """Every id of the input once, none already in the index (``existing``); else a DataError naming them."""
    seen: set[str] = set()
    dupes: list[str] = []
    clashes: list[str] = []
    for doc in corpus.docs():
        i = doc["_id"]
        if i in seen:
            dupes.append(i)
        elif i in existing:
            clashes.append(i)
        seen.add(i)
    from bertcli.retrieval.beir import _duplicates_error

    if dupes:
        raise _duplicates_error(", ".join(f.name for f in corpus.files[:3]), "document", list(dict.fromkeys(dupes)))
    if clashes:
        shown = ", ".join(repr(c) for c in clashes[:10]) + (f" and {len(clashes) - 10} more" if len(clashes) > 10 else "")
        raise DataError(f"document id(s) {shown} are in the index already; appending needs new ids "
                        f"(remove those documents from the input, or build a new index)")


def build_index(
    paths: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    *,
    id_column: str | None = None,
    text_column: str | None = None,
    title_column: str | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    query_prefix: str | None = None,
    doc_prefix: str | None = None,
    dtype: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    max_length: int | None = None,
    batch_tokens: int | None = None,
    chunk_size: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    progress: Callable[[int, int | None], None] | None = None,
) -> BuildStats:
    """Embed the documents of ``paths`` with ``model`` into the index directory ``out`` (created, appended to,
    or resumed; see the module docstring). Options left ``None`` come from an existing index, else from the
    model (pooling, normalisation, max length) or the defaults (fp32, no prefixes)."""
    from bertcli.embed import check_pooling, embed_chunks, load, merge_stats
    from bertcli.locks import run_lock
    from bertcli.retrieval.beir import CorpusInput, doc_text
    from bertcli.streaming import check_chunk_size

    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: valid values: {', '.join(DTYPES)}")
    if pooling is not None:
        check_pooling(pooling)
    size = check_chunk_size(chunk_size)
    out = Path(out)
    from bertcli.device import barrier, rank_world

    rank, world = rank_world()
    start = time.perf_counter()
    manifest_path = out / MANIFEST
    if rank == 0 and out.exists() and not manifest_path.exists() and any(
            p.name != ".bertcli.lock" for p in out.iterdir()):
        raise ConfigError(f"--out {out}: the directory exists and is not a bertcli index; choose a new directory")
    existing = read_manifest(out) if manifest_path.exists() else None
    with run_lock(out), CorpusInput(paths, id_column=id_column, text_column=text_column, title_column=title_column,
                                    delimiter=delimiter, encoding=encoding) as corpus:
        if corpus.total == 0:
            raise DataError(f"{', '.join(str(f) for f in corpus.files[:3])}: no documents (the input is empty)")
        fingerprint = model_fingerprint(model)
        enc = load(model, device=device, precision=precision)
        given = {"pooling": pooling, "normalize": normalize, "max_length": max_length, "dtype": dtype,
                 "query_prefix": query_prefix, "doc_prefix": doc_prefix}
        if existing is not None:
            if existing["model_fingerprint"] != fingerprint:
                raise ConfigError(f"--model {model}: the index {out} was built with another model "
                                  f"({existing['model']}); append with that model or build a new index")
            for key, value in given.items():
                if value is not None and value != existing[key]:
                    flag = "--" + key.replace("_", "-")
                    raise ConfigError(f"{flag} {value}: the index {out} has {key} {existing[key]!r}; appending must "
                                      f"keep it (leave {flag} out)")
            manifest = existing
        else:
            manifest = {
                "format": FORMAT, "version": VERSION, "model": str(Path(model).resolve()),
                "model_fingerprint": fingerprint, "pooling": pooling or enc.pooling,
                "normalize": enc.normalize if normalize is None else bool(normalize),
                "max_length": max_length if max_length is not None else enc.max_length, "dim": enc.dim,
                "count": 0, "dtype": dtype or "fp32", "query_prefix": query_prefix or "",
                "doc_prefix": doc_prefix or "", "score": "cosine", "shards": [],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        sources = corpus.sources()
        pending = manifest.get("pending")
        resume_chunks = 0
        if pending is not None:
            if pending.get("sources") != sources:
                raise ConfigError(f"{out}: an interrupted build of other inputs (or of inputs changed since: "
                                  f"{', '.join(s['path'] for s in pending.get('sources', [])[:3])}) is pending; rerun "
                                  f"that command on the unchanged inputs to finish it, or build into a new directory")
            first = int(pending["first_shard"])
            size = int(pending["chunk_size"])
            resume_chunks = len(manifest["shards"]) - first
        else:
            first = len(manifest["shards"])
        reader = Index(out, manifest)
        earlier = {d["_id"] for s in manifest["shards"][:first] for d in reader._read_docs(s)}
        _check_ids(corpus, earlier)
        resumed = sum(s["count"] for s in manifest["shards"][first:])
        manifest["pending"] = {"sources": sources, "first_shard": first, "chunk_size": size}
        barrier()  # every rank has read the manifest before rank 0 rewrites it
        if rank == 0:
            write_manifest(out, manifest)
        prefix, mode = manifest["doc_prefix"], manifest["pooling"]
        meta = {"model": manifest["model"], "pooling": mode, "normalize": manifest["normalize"]}
        todo = corpus.total - resumed
        pending_docs: list[list[dict[str, str]]] = []

        def texts() -> Iterator[list[str]]:
            for i, docs in enumerate(corpus.chunks(size)):
                if i < resume_chunks or (i - resume_chunks) % world != rank:
                    continue
                pending_docs.append(docs)
                yield [prefix + doc_text(d) for d in docs]

        parts = []
        k = len(manifest["shards"])
        written = 0  # shards this rank wrote
        for _texts, vectors, stats in embed_chunks(texts(), enc, [mode], total=todo, progress=progress,
                                                   normalize=manifest["normalize"], max_length=manifest["max_length"],
                                                   batch_tokens=batch_tokens):
            docs = pending_docs.pop(0)
            shard = _write_shard(out, k + written * world + rank, vectors[mode], docs, manifest["dtype"], meta)
            written += 1
            parts.append(stats)
            if world == 1:
                manifest["shards"].append(shard)
                manifest["count"] += shard["count"]
                write_manifest(out, manifest)
        if world > 1:
            _commit_distributed(manifest, k, todo, size)
            parts = [_sum_over_ranks(merge_stats(parts) if parts else None)]
        if rank == 0:
            del manifest["pending"]
            write_manifest(out, manifest)
    parts = [p for p in parts if p is not None]
    merged = merge_stats(parts, time.perf_counter() - start) if parts else None
    return BuildStats(
        added=sum(p.count for p in parts), resumed=resumed, count=manifest["count"],
        shards=len(manifest["shards"]), dim=manifest["dim"], seconds=time.perf_counter() - start,
        tokens=merged.tokens if merged else 0, truncated=merged.truncated if merged else 0,
        pooling=manifest["pooling"], normalize=manifest["normalize"], dtype=manifest["dtype"],
        device=str(enc.device), precision=enc.precision,
    )


def _sum_over_ranks(stats):
    """The count, tokens and truncated texts of every rank's chunks, added up (gloo all-reduce)."""
    import dataclasses

    import torch
    import torch.distributed as dist

    local = [stats.count, stats.tokens, stats.truncated] if stats is not None else [0, 0, 0]
    t = torch.tensor(local, dtype=torch.long)
    dist.all_reduce(t)
    count, tokens, truncated = t.tolist()
    if stats is None:
        return None  # this rank embedded nothing (rank 0 always has the first chunk when there is work)
    return dataclasses.replace(stats, count=count, tokens=tokens, truncated=truncated)


def _commit_distributed(manifest: dict[str, Any], first: int, todo: int, size: int) -> None:
    """After every rank wrote its shards (a barrier): list all of them in the manifest, in input order. Shard j of
    this run is chunk j of the input, ``size`` documents (the last one the rest), whichever rank wrote it."""
    from bertcli.device import barrier

    barrier()
    for j in range(-(-todo // size)):
        name = _shard_name(first + j)
        count = min(size, todo - j * size)
        manifest["shards"].append({"vectors": f"{name}.safetensors", "docs": f"{name}.jsonl", "count": count})
        manifest["count"] += count


def write_index(out: str | Path, vectors, docs: Sequence[dict[str, str]], model: str | Path, *,
                pooling: str = "mean", normalize: bool = True, max_length: int = 512, dtype: str = "fp32",
                query_prefix: str = "", doc_prefix: str = "", shard_size: int = 10_000) -> Index:
    """An index from vectors computed elsewhere (``[N, D]`` array or tensor, row i for ``docs[i]``, each
    ``{"_id", "title", "text"}``), for ``model``'s queries: the same files :func:`build_index` writes. ``out``
    must not exist yet. Used to import vectors and by the benchmarks' synthetic indexes."""
    import numpy as np

    out = Path(out)
    if out.exists():
        raise ConfigError(f"{out}: exists already; write_index makes a new index")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype}: valid values: {', '.join(DTYPES)}")
    array = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
    if array.ndim != 2 or len(array) != len(docs):
        raise DataError(f"expected [N, D] vectors for {len(docs)} documents, got shape {list(array.shape)}")
    ids = [d["_id"] for d in docs]
    if len(set(ids)) != len(ids):
        from bertcli.retrieval.beir import _duplicates_error

        seen: set[str] = set()
        raise _duplicates_error(str(out), "document", [i for i in ids if i in seen or seen.add(i)])
    out.mkdir(parents=True)
    manifest = {
        "format": FORMAT, "version": VERSION, "model": str(Path(model).resolve()),
        "model_fingerprint": model_fingerprint(model), "pooling": pooling, "normalize": bool(normalize),
        "max_length": int(max_length), "dim": int(array.shape[1]), "count": 0, "dtype": dtype,
        "query_prefix": query_prefix, "doc_prefix": doc_prefix, "score": "cosine", "shards": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for k, start in enumerate(range(0, len(docs), shard_size)):
        part = [{"_id": d["_id"], "title": d.get("title", ""), "text": d.get("text", "")}
                for d in docs[start:start + shard_size]]
        shard = _write_shard(out, k, array[start:start + shard_size], part, dtype, {"model": manifest["model"]})
        manifest["shards"].append(shard)
        manifest["count"] += shard["count"]
    write_manifest(out, manifest)
    return Index(out, manifest)
