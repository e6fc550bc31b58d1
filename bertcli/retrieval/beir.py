"""Documents, queries and relevance judgements, in BEIR's format and the other forms bertcli takes.

* :func:`load_queries` -> ``{query_id: text}`` (file order): BEIR ``queries.jsonl`` (``_id``, ``text``), a
  CSV/TSV/JSONL table, or a text file with one query per line (ids ``1``, ``2``, ... by line number).
* :func:`load_qrels` -> ``{query_id: {doc_id: relevance}}``: BEIR ``qrels/*.tsv`` (``query-id corpus-id score``
  with a header line) or TREC qrels (``qid 0 docid rel``).
* :func:`iter_corpus` / :class:`CorpusInput` -> documents ``{"_id", "title", "text"}``: BEIR ``corpus.jsonl``,
  CSV/TSV/JSONL tables (columns chosen with ``id_column``, ``text_column``, ``title_column``), text files (one
  document per non-blank line, id ``FILE:LINE``) and directories of such files (sorted, recursively).

:func:`doc_text` is the text a document is embedded and reranked as: ``title + " " + text``, stripped, as BEIR
builds it for bi-encoders and cross-encoders.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bertcli.errors import DataError

TABLE_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv")
ID_COLUMNS = ("_id", "id", "doc_id", "docid", "corpus-id")
QUERY_ID_COLUMNS = ("_id", "id", "query-id", "query_id", "qid")
QUERY_TEXT_COLUMNS = ("text", "query", "question")


def doc_text(doc: dict[str, str]) -> str:
    """``title + " " + text``, stripped (BEIR's text of a document)."""
    return (doc.get("title", "") + " " + doc.get("text", "")).strip()


def _pick(columns: Sequence[str], given: str | None, defaults: Sequence[str]) -> str | None:
    if given is not None:
        return given
    return next((c for c in defaults if c in columns), None)


def _json_field(row: dict, key: str, where: str) -> str:
    from bertcli.data.tables import _json_text

    return _json_text(row.get(key, ""), False, where)


class _LinesSource:
    """A text file: one document per non-blank line, id ``NAME:LINE``."""

    def __init__(self, path: Path, encoding: str):
        from bertcli.streaming import LinesInput

        self.lines = LinesInput(path, encoding)
        self.name = self.lines.name
        self.total = sum(1 for line in self.lines._lines() if line.strip())

    def docs(self) -> Iterator[dict[str, str]]:
        for n, line in enumerate(self.lines._lines(), 1):
            if line.strip():
                yield {"_id": f"{self.name}:{n}", "title": "", "text": line}

    def close(self) -> None:
        self.lines.close()


class _TableSource:
    """A CSV/TSV/JSONL table (BEIR ``corpus.jsonl`` among them)."""

    def __init__(self, path: Path, id_column, text_column, title_column, delimiter, encoding):
        from bertcli.streaming import TableInput

        self.table = TableInput(path, delimiter=delimiter, encoding=encoding)
        try:
            self.name, self.total = self.table.name, self.table.total
            cols = self.table.columns
            self.id_col = _pick(cols, id_column, ID_COLUMNS)
            self.text_col = _pick(cols, text_column, ("text",))
            self.title_col = _pick(cols, title_column, ("title",))
            if self.text_col is None:
                raise DataError(f"{self.name}: no 'text' column; name the column holding the documents with "
                                f"--text-column (columns found: {', '.join(repr(c) for c in cols[:30])})")
            for col in (self.id_col, self.text_col, self.title_col):
                if col is not None:
                    self.table.check_column(col)
        except BaseException:
            self.table.close()
            raise

    def docs(self) -> Iterator[dict[str, str]]:
        for chunk in self.table.chunks(4096):
            texts = chunk.column(self.text_col)
            ids = (chunk.column(self.id_col, numbers=True) if self.id_col is not None
                   else [f"{self.name}:{line}" for line in chunk.lines])
            if self.title_col is None:
                titles = [""] * len(texts)
            elif chunk.is_json:  # a record without a title has an empty one (as in BEIR)
                titles = [_json_field(row, self.title_col, f"{self.name}, line {line}, field '{self.title_col}'")
                          for row, line in zip(chunk.rows, chunk.lines, strict=True)]
            else:
                titles = chunk.column(self.title_col)
            for doc_id, title, text, line in zip(ids, titles, texts, chunk.lines, strict=True):
                if not doc_id.strip():
                    raise DataError(f"{self.name}, line {line}: empty document id in column '{self.id_col}'")
                yield {"_id": doc_id, "title": title, "text": text}

    def close(self) -> None:
        self.table.close()


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    from bertcli.data.text import expand_paths

    out = expand_paths(paths)
    if not out:
        raise DataError("no documents given: name text files, tables or directories")
    return out


class CorpusInput:
    """Documents from files and directories, each file opened (and counted, every row parsed) up front.

    ``total`` is the number of documents; :meth:`chunks` yields lists of ``{"_id", "title", "text"}`` in
    input order; :meth:`sources` describes the files (path, size, modification time) for resuming a build.
    Use it as a context manager.
    """

    def __init__(self, paths: Sequence[str | Path], *, id_column: str | None = None, text_column: str | None = None,
                 title_column: str | None = None, delimiter: str | None = None, encoding: str = "utf-8"):
        self.files = _expand(paths)
        self._sources: list[Any] = []
        try:
            for f in self.files:
                if f.suffix.lower() in TABLE_SUFFIXES:
                    self._sources.append(_TableSource(f, id_column, text_column, title_column, delimiter, encoding))
                else:
                    if id_column or text_column or title_column:
                        raise DataError(f"{f}: a text file (one document per line) has no columns; --id-column, "
                                        f"--text-column and --title-column apply to CSV/TSV/JSONL files")
                    self._sources.append(_LinesSource(f, encoding))
        except BaseException:
            self.close()
            raise
        self.total = sum(s.total for s in self._sources)

    def sources(self) -> list[dict[str, Any]]:
        out = []
        for f in self.files:
            st = f.stat()
            out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def docs(self) -> Iterator[dict[str, str]]:
        for s in self._sources:
            yield from s.docs()

    def chunks(self, size: int) -> Iterator[list[dict[str, str]]]:
        from bertcli.streaming import _batched

        return _batched(self.docs(), size)

    def close(self) -> None:
        for s in self._sources:
            s.close()

    def __enter__(self) -> CorpusInput:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def iter_corpus(paths: str | Path | Sequence[str | Path], *, id_column: str | None = None,
                text_column: str | None = None, title_column: str | None = None, delimiter: str | None = None,
                encoding: str = "utf-8") -> Iterator[dict[str, str]]:
    """The documents of ``paths`` (a file, a directory, or a list of them) as ``{"_id", "title", "text"}``
    dicts, in input order. BEIR ``corpus.jsonl`` is read as it is; tables take ``id_column`` (default ``_id`` or
    ``id`` when present, else ``FILE:LINE``), ``text_column`` (default ``text``) and ``title_column`` (default
    ``title`` when present, else none)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    with CorpusInput(paths, id_column=id_column, text_column=text_column, title_column=title_column,
                     delimiter=delimiter, encoding=encoding) as corpus:
        yield from corpus.docs()


def _duplicates_error(name: str, what: str, dupes: list[str]) -> DataError:
    shown = ", ".join(repr(d) for d in dupes[:10])
    more = f" and {len(dupes) - 10} more" if len(dupes) > 10 else ""
    return DataError(f"{name}: duplicate {what} id(s) {shown}{more}; every {what} needs its own id")


def load_queries(path: str | Path, *, id_column: str | None = None, text_column: str | None = None,
                 encoding: str = "utf-8") -> dict[str, str]:
    """``{query_id: text}`` in file order from BEIR ``queries.jsonl`` or any CSV/TSV/JSONL table (id column
    default ``_id``/``id``/``query-id``/``qid``, text column default ``text``/``query``/``question``), or from a
    text file with one query per line (ids: the line numbers, ``"1"``, ``"2"``, ...; blank lines skipped).
    An unknown column or a duplicate id is a :class:`~bertcli.errors.DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such queries file")
    out: dict[str, str] = {}
    dupes: list[str] = []
    if path.suffix.lower() not in TABLE_SUFFIXES:
        if id_column or text_column:
            raise DataError(f"{path}: a text file (one query per line) has no columns; --query-id-column and "
                            f"--query-text-column apply to CSV/TSV/JSONL files")
        from bertcli.streaming import LinesInput

        with LinesInput(path, encoding) as lines:
            for n, line in enumerate(lines._lines(), 1):
                if line.strip():
                    out[str(n)] = line
        if not out:
            raise DataError(f"{path}: no queries (the file is empty)")
        return out
    from bertcli.data.tables import read_table

    table = read_table(path, encoding=encoding)
    id_col = _pick(table.columns, id_column, QUERY_ID_COLUMNS)
    text_col = _pick(table.columns, text_column, QUERY_TEXT_COLUMNS)
    for flag, col, defaults in (("--query-id-column", id_col, QUERY_ID_COLUMNS),
                                ("--query-text-column", text_col, QUERY_TEXT_COLUMNS)):
        if col is None:
            raise DataError(f"{path}: none of the columns {', '.join(defaults)}; name one with {flag} "
                            f"(columns found: {', '.join(repr(c) for c in table.columns[:30])})")
        table.column_index(col)
    for qid, text in zip(table.column(id_col, numbers=True), table.column(text_col), strict=True):
        if qid in out:
            dupes.append(qid)
        out[qid] = text
    if dupes:
        raise _duplicates_error(str(path), "query", dupes)
    if not out:
        raise DataError(f"{path}: no queries (the table has no rows)")
    return out


def load_qrels(path: str | Path, *, encoding: str = "utf-8") -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from BEIR qrels (``query-id<TAB>corpus-id<TAB>score``, a header
    line first) or TREC qrels (``qid iteration docid relevance``, whitespace-separated). Relevance is an
    integer; a document is relevant when it is above 0. A malformed line is an error naming it."""
    from bertcli.data.text import iter_lines, resolve_encoding

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such qrels file")
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for n, raw in enumerate(iter_lines(path, resolve_encoding(path, encoding)), 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if first:
            first = False
            if len(fields) >= 3 and not _is_int(fields[-1]):
                continue  # the header line (query-id corpus-id score)
        if len(fields) == 4:  # TREC: qid iteration docid relevance
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            raise DataError(f"{path}, line {n}: expected 'query-id corpus-id score' (3 fields, BEIR) or "
                            f"'qid 0 docid relevance' (4, TREC), found {len(fields)} field(s)")
        qid, doc_id, score = (f.strip() for f in fields)
        if not _is_int(score):
            raise DataError(f"{path}, line {n}: relevance {score!r} is not an integer")
        qrels.setdefault(qid, {})[doc_id] = int(float(score))
    if not qrels:
        raise DataError(f"{path}: no judgements (the file is empty)")
    return qrels


def _is_int(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value.is_integer()
