"""Bounded memory for commands that read many texts: inputs read in chunks, results written as they come.

The pieces, shared by ``embed``, ``predict`` and ``similarity --pairs`` (and meant for ``index``):

* **Inputs** count their rows in a first pass (decoding and parsing every row, so a bad byte or a
  malformed row on line 900,000 is an error before any encoding starts) and then yield chunks:
  :class:`LinesInput` (one text per line), :class:`TableInput` (CSV/TSV/JSONL, chunks are
  :class:`~bertcli.data.tables.Table` objects with the whole file's columns and line numbers),
  :class:`ListInput` (texts in memory). ``-`` (stdin) is copied to a temporary file first, so it is
  counted and read like a file, in bounded memory. Use them as context managers.
* **The chunk loop** :func:`run_chunks` calls a per-chunk step (which sorts and batches by length
  within its chunk) and reports rows done / total to a progress callable or a rich bar (:func:`progress_bar`).
* **Writers** write in input order as chunks come: :class:`EmbeddingWriter` (``.npy``,
  ``.safetensors``, ``.jsonl``, JSON lines on a stream) and :class:`~bertcli.data.tables.TableWriter`
  (CSV/TSV/JSONL rows). Files go to a temporary sibling renamed into place at the end: an interrupted
  run leaves the old output untouched.

``.npy`` and ``.safetensors`` are written sequentially: the header (sized from the row count, or
reserved for up to 10**15 rows when the count is unknown and rewritten at the end) and then the rows of
each chunk appended as float32. Nothing is held but one chunk, and unlike a memory-mapped output the
written pages do not count towards the process's resident memory.

Peak memory depends on ``chunk_size`` and the model, not on the input size. Within a chunk texts are
sorted by length, so large chunks keep batches dense (the default, 10,000: CPU time within 1.00-1.06x of
the unchunked code at 200,000+ rows, BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bertcli.errors import ConfigError, DataError

DEFAULT_CHUNK_SIZE = 10_000

Progress = Callable[[int, int | None], None]  # (rows done, total rows or None)


def check_chunk_size(chunk_size: int | None) -> int:
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if size < 1:
        raise ConfigError(f"--chunk-size must be at least 1, got {size}")
    return size


# ============================================================ inputs
class _FileInput:
    """A file, or stdin copied to a temporary file (removed by :meth:`close`)."""

    def __init__(self, path: str | Path):
        self._spooled: Path | None = None
        if str(path) == "-":
            fd, tmp = tempfile.mkstemp(prefix="bertcli-stdin-")
            with os.fdopen(fd, "wb") as fh:
                shutil.copyfileobj(sys.stdin.buffer, fh, 1 << 20)
            self._spooled = Path(tmp)
            self.path, self.name = self._spooled, "<stdin>"
        else:
            self.path, self.name = Path(path), str(path)

    def close(self) -> None:
        if self._spooled is not None:
            self._spooled.unlink(missing_ok=True)
            self._spooled = None

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        self.close()


class LinesInput(_FileInput):
    """One text per line (a trailing newline does not add an empty text; ``\\r\\n`` endings are stripped),
    decoded under the policy of :func:`bertcli.data.text.read_text` (``encoding`` may be ``auto``)."""

    def __init__(self, path: str | Path, encoding: str = "utf-8", errors: str = "strict"):
        from bertcli.data.text import resolve_encoding

        super().__init__(path)
        try:
            self.encoding, self.errors = resolve_encoding(self.path, encoding), errors
            self.total = sum(1 for _ in self._lines())
        except BaseException:
            self.close()
            raise

    def _lines(self) -> Iterator[str]:
        from bertcli.data.text import iter_lines

        for line in iter_lines(self.path, self.encoding, self.errors, source=self.name):
            yield line[:-1].rstrip("\r") if line.endswith("\n") else line.rstrip("\r")

    def chunks(self, size: int) -> Iterator[list[str]]:
        return _batched(self._lines(), size)


class ListInput:
    """Texts already in memory, served in chunks like a file."""

    name = "<arguments>"

    def __init__(self, texts: Sequence[str]):
        self.texts = texts
        self.total = len(texts)

    def chunks(self, size: int) -> Iterator[list[str]]:
        for i in range(0, len(self.texts), size):
            yield list(self.texts[i:i + size])

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        pass


class TableInput(_FileInput):
    """A CSV/TSV/JSONL table read in chunks (the options of :func:`bertcli.data.tables.read_table`).

    The first pass counts the rows and finds the columns of the whole file (a header; the widest row
    without one; every key of a JSONL file, in order of appearance), so every chunk has the same columns.
    """

    def __init__(self, path: str | Path, *, delimiter: str | None = None, quoting: bool = True,
                 header: bool = True, encoding: str = "utf-8"):
        from bertcli.data.tables import detect_format
        from bertcli.data.text import resolve_encoding

        super().__init__(path)
        try:
            self.quoting, self.header = quoting, header
            self.encoding = resolve_encoding(self.path, encoding)
            first = next(self._raw_lines(), "")
            self.format = detect_format(self.name, first, delimiter)
            self.is_json = self.format == "jsonl"
            self.total, self.columns = self._count()
        except BaseException:
            self.close()
            raise

    def _raw_lines(self) -> Iterator[str]:
        from bertcli.data.text import iter_lines

        return iter_lines(self.path, self.encoding, source=self.name)

    def _rows(self) -> Iterator[tuple[Any, int]]:
        """(row, line) of every record; with a CSV header, the header first as (columns, 0)."""
        from bertcli.data.tables import csv_rows, jsonl_records

        if self.is_json:
            return jsonl_records(self.name, (line[:-1] if line.endswith("\n") else line for line in self._raw_lines()))
        return csv_rows(self.name, _csv_lines(self._raw_lines()), self.format, self.quoting, self.header)

    def _count(self) -> tuple[int, list[str]]:
        n, width, keys, columns = 0, 0, {}, None
        for row, line in self._rows():
            if line == 0:
                columns = row
                continue
            n += 1
            if self.is_json:
                keys.update(dict.fromkeys(row))
            else:
                width = max(width, len(row))
        if self.is_json:
            return n, list(keys)
        if self.header:
            if columns is None:
                raise DataError(f"{self.name}: the file is empty (no header row)")
            return n, columns
        return n, [str(i) for i in range(width)]

    def chunks(self, size: int) -> Iterator[Any]:
        """:class:`~bertcli.data.tables.Table` chunks of up to ``size`` rows, with the file's columns."""
        from bertcli.data.tables import Table

        rows, lines = [], []
        for row, line in self._rows():
            if line == 0:
                continue
            rows.append(row)
            lines.append(line)
            if len(rows) == size:
                yield Table(self.name, self.columns, rows, lines, self.is_json)
                rows, lines = [], []
        if rows:
            yield Table(self.name, self.columns, rows, lines, self.is_json)

    def check_column(self, column: str) -> None:
        """A column missing from the file is an error listing the columns found."""
        from bertcli.data.tables import Table

        Table(self.name, self.columns, [], [], self.is_json).column_index(column)

    def column_chunks(self, column: str, size: int) -> Iterator[list[str]]:
        """The texts of one column, in chunks (the column is checked before the first chunk is read)."""
        self.check_column(column)
        for table in self.chunks(size):
            yield table.column(column)


class ColumnInput:
    """One column of a :class:`TableInput`, served as text chunks (for ``embed --column``)."""

    def __init__(self, table: TableInput, column: str):
        table.check_column(column)  # a missing column fails now
        self.table, self.column, self.name, self.total = table, column, table.name, table.total

    def chunks(self, size: int) -> Iterator[list[str]]:
        return self.table.column_chunks(self.column, size)

    def close(self) -> None:
        self.table.close()

    def __enter__(self):
        return self

    def __exit__(self, *_) -> None:
        self.close()


_LONE_CR = re.compile(r"\r(?!\n)")


def _csv_lines(lines: Iterable[str]) -> Iterator[str]:
    """Lines as ``io.StringIO(text, newline="")`` yields them (a lone ``\\r`` also ends a line)."""
    for line in lines:
        if "\r" not in line:
            yield line
            continue
        start = 0
        for m in _LONE_CR.finditer(line):
            if m.end() < len(line):
                yield line[start:m.end()]
                start = m.end()
        yield line[start:]


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ============================================================ the chunk loop
def run_chunks(chunks: Iterable[Any], step: Callable[[Any, Callable[[int], None]], Any], *,
               total: int | None = None, progress: Progress | None = None, size=len) -> Iterator[tuple[Any, Any]]:
    """``(chunk, step(chunk, report))`` for each chunk, in order. ``step`` may call ``report(rows_done_in_chunk)``
    as it goes; ``progress(rows_done, total)`` hears about every row across the chunks."""
    done = 0
    for chunk in chunks:
        n = size(chunk)

        def report(k: int, _base=done) -> None:
            if progress is not None:
                progress(_base + k, total)

        result = step(chunk, report)
        done += n
        if progress is not None:
            progress(done, total)
        yield chunk, result


class progress_bar:
    """A rich progress bar on stderr showing rows done / total, rate and ETA; call it as a :data:`Progress`.
    Used as a context manager; ``enabled=False`` gives a no-op (``None`` when called for)."""

    def __init__(self, label: str, total: int | None, *, enabled: bool = True, unit: str = "rows"):
        self.enabled, self.label, self.total, self.unit = enabled, label, total, unit
        self._bar = None

    def __enter__(self) -> Progress | None:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn(self.unit), TimeRemainingColumn(),
                             console=Console(stderr=True, highlight=False), transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda done, total=None: self._bar.update(task, completed=done, total=total or self.total)

    def __exit__(self, *_) -> None:
        if self._bar is not None:
            self._bar.stop()


# ============================================================ writers
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_UNKNOWN_ROWS = 10**15  # the header reserved when the row count is not known in advance


_DTYPES = {"float32": ("<f4", "F32", 4), "float16": ("<f2", "F16", 2)}  # numpy descr, safetensors dtype, bytes


def _npy_header(rows: int, dim: int, size: int | None = None, dtype: str = "float32") -> bytes:
    """A version 1.0 ``.npy`` header for a (rows, dim) little-endian float32 (or float16) C array, padded
    with spaces to ``size`` bytes (default: the next multiple of 64, as numpy writes it)."""
    text = f"{{'descr': '{_DTYPES[dtype][0]}', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
    size = size or -(-(len(_NPY_MAGIC) + 2 + len(text) + 1) // 64) * 64
    pad = size - len(_NPY_MAGIC) - 2 - len(text) - 1
    if pad < 0:
        raise ValueError("npy header does not fit")
    return _NPY_MAGIC + (size - len(_NPY_MAGIC) - 2).to_bytes(2, "little") + (text + " " * pad + "\n").encode()


def _safetensors_header(rows: int, dim: int, metadata: dict[str, str] | None, size: int | None = None,
                        dtype: str = "float32") -> bytes:
    """The 8-byte length and JSON header of a file holding one F32 (or F16) tensor ``embeddings`` (rows, dim),
    padded with spaces (as the format allows) so that the data starts at a multiple of 8, or at ``size``."""
    head: dict[str, Any] = {}
    if metadata:
        head["__metadata__"] = metadata
    _, name, width = _DTYPES[dtype]
    head["embeddings"] = {"dtype": name, "shape": [rows, dim], "data_offsets": [0, rows * dim * width]}
    text = json.dumps(head, separators=(",", ":")).encode()
    size = size or 8 + -(-len(text) // 8) * 8
    if size - 8 < len(text):
        raise ValueError("safetensors header does not fit")
    return (size - 8).to_bytes(8, "little") + text + b" " * (size - 8 - len(text))


class EmbeddingWriter:
    """Vectors written chunk by chunk, in input order, to ``path``: ``.npy`` (no pickle), ``.safetensors``
    (one tensor ``embeddings``, ``metadata`` as its string metadata), ``.jsonl`` or ``-`` (JSON lines
    ``{"index", "text", "embedding"}`` on ``stream``, default stdout). ``total`` is the number of rows
    when known (then a different count is an error at :meth:`close`). A file is built under a temporary
    name and renamed into place by :meth:`close`; an exception inside the ``with`` block (or :meth:`abort`)
    removes it and leaves an existing ``path`` as it was. ``dtype="float16"`` stores half-precision rows
    (``.npy`` and ``.safetensors``; the ``bertcli index --dtype fp16`` shards)."""

    def __init__(self, path: str, dim: int, *, total: int | None = None, metadata: dict[str, Any] | None = None,
                 stream=None, dtype: str = "float32"):
        from bertcli.embed import check_output

        self.kind = check_output(path)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        self.path, self.dim, self.total, self.rows, self.dtype = path, dim, total, 0, dtype
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()} or None
        self.tmp: str | None = None
        if self.kind == "-":
            self.fh = stream or sys.stdout
            return
        target = Path(path)
        try:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix, dir=target.parent)
            self.fh = os.fdopen(fd, "w" if self.kind == "jsonl" else "wb",
                                **({"encoding": "utf-8"} if self.kind == "jsonl" else {}))
            self.head_size = len(self._header(total if total is not None else _UNKNOWN_ROWS))
            if self.kind in ("npy", "safetensors"):
                self.fh.write(self._header(total if total is not None else _UNKNOWN_ROWS, self.head_size))
        except OSError as exc:
            self.abort()
            raise DataError(f"{path}: cannot write ({exc.strerror or exc})") from None

    def _header(self, rows: int, size: int | None = None) -> bytes:
        if self.kind == "npy":
            return _npy_header(rows, self.dim, size, self.dtype)
        if self.kind == "safetensors":
            return _safetensors_header(rows, self.dim, self.metadata, size, self.dtype)
        return b""

    def write(self, vectors, texts: Sequence[str] | None = None) -> None:
        """Append the (n, dim) rows of ``vectors`` (a tensor or array), with their ``texts`` for JSON lines."""
        import numpy as np

        array = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
        binary = self.kind in ("npy", "safetensors")
        array = np.ascontiguousarray(array, dtype=_DTYPES[self.dtype][0] if binary else "<f4")
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) vectors, got {array.shape}")
        try:
            if self.kind in ("npy", "safetensors"):
                self.fh.write(array.tobytes())
            else:
                from bertcli.data.tables import json_line

                out = []
                for j, row in enumerate(array.tolist()):
                    rec: dict[str, Any] = {"index": self.rows + j}
                    if texts is not None:
                        rec["text"] = texts[j]
                    rec["embedding"] = row
                    out.append(json_line(rec) + "\n")  # a lone surrogate stays a \udXXX escape
                self.fh.write("".join(out))
                if self.tmp is None:
                    self.fh.flush()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        self.rows += len(array)

    def close(self) -> None:
        """Finish the file (the header with the real row count) and rename it into place."""
        if self.tmp is None:
            self.fh.flush()
            return
        if self.total is not None and self.rows != self.total:
            self.abort()
            raise DataError(f"{self.path}: expected {self.total} rows but {self.rows} came; the input changed "
                            f"while it was read? nothing was written")
        try:
            if self.kind in ("npy", "safetensors") and self.total is None:
                self.fh.seek(0)
                self.fh.write(self._header(self.rows, self.head_size))
            self.fh.close()
            os.replace(self.tmp, self.path)
            self.tmp = None
        except OSError as exc:
            self.abort()
            raise DataError(f"{self.path}: cannot write ({exc.strerror or exc})") from None

    def abort(self) -> None:
        if self.tmp is None:
            return
        try:
            self.fh.close()
        except (OSError, AttributeError):
            pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
        self.tmp = None

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
