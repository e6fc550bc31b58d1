"""CSV, TSV and JSONL tables with located errors.

* The format comes from the extension (``.csv``, ``.tsv``, ``.jsonl``/``.json``) or
  ``delimiter``; a ``.csv``/``.txt`` whose first line has tabs and no commas is read as TSV.
* A UTF-8 byte-order mark is tolerated; invalid UTF-8 names the line and byte.
* ``quoting=False`` reads files whose fields hold bare double quotes (STS-B, MRPC).
* ``header=False`` names the columns ``0``, ``1``, ...; a column may be given by name or index.
* A missing column lists the columns found; a row too short for a requested column names its line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bertcli.data.text import read_text
from bertcli.errors import DataError

csv.field_size_limit(2**31 - 1)


@dataclass
class Table:
    path: str
    columns: list[str]
    rows: list[list[str]] | list[dict]
    lines: list[int] = field(default_factory=list)  # 1-based line on which each row starts
    is_json: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def column_index(self, name: str) -> int | str:
        """Resolve a column name (or a 0-based index) to a key, listing the columns on failure."""
        if name in self.columns:
            return name if self.is_json else self.columns.index(name)
        if name.isdigit() and not self.is_json and int(name) < max(len(self.columns), 1):
            return int(name)
        shown = ", ".join(repr(c) for c in self.columns[:30])
        raise DataError(
            f"{self.path}: no column '{name}'; columns found: {shown}"
            + ("" if len(self.columns) <= 30 else f" ... ({len(self.columns)} in all)")
        )

    def column(self, name: str, allow_empty: bool = True, *, numbers: bool = False) -> list[str]:
        """All values of one column as strings; a short row or missing key names its line.

        In JSONL a value must be a JSON string; ``numbers=True`` (labels, scores) also takes a
        JSON number, as its JSON text. ``null``, ``true``/``false``, a list or an object is an error
        naming the file, line and field.
        """
        key = self.column_index(name)
        out = []
        for row, line in zip(self.rows, self.lines, strict=True):
            if self.is_json:
                if key not in row:
                    raise DataError(f"{self.path}, line {line}: no key '{name}' in this record")
                value = _json_text(row[key], numbers, f"{self.path}, line {line}, field '{name}'")
            else:
                if key >= len(row):
                    raise DataError(
                        f"{self.path}, line {line}: the row has {len(row)} fields, column '{name}' is field "
                        f"{key + 1}; fix the row (quoting problem? try --no-quoting)"
                    )
                value = row[key]
            if not allow_empty and not value.strip():
                raise DataError(f"{self.path}, line {line}: column '{name}' is empty")
            out.append(value)
        return out

    def labels(self, name: str) -> list[str]:
        """A label column: stripped, never empty; JSONL labels may be strings or numbers."""
        return [v.strip() for v in self.column(name, allow_empty=False, numbers=True)]

    def records(self) -> list[dict[str, str]]:
        """Rows as dicts (for writing output tables that keep every input column)."""
        if self.is_json:
            return [dict(r) for r in self.rows]
        return [{c: (r[i] if i < len(r) else "") for i, c in enumerate(self.columns)} for r in self.rows]


_JSON_KIND = {type(None): "null", bool: "a boolean", list: "a list", dict: "an object"}


def _json_text(value, numbers: bool, where: str) -> str:
    """A JSONL field as text: a string as it is, a number only where ``numbers``; else an error."""
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise DataError(f"{where}: is the number {json.dumps(value)}, expected text; write it as a JSON "
                        f"string (\"{json.dumps(value)}\")")
    kind = _JSON_KIND.get(type(value), type(value).__name__)
    expected = "a label (a string or a number)" if numbers else "text (a JSON string)"
    raise DataError(f"{where}: is {kind}, expected {expected}; fix or remove the record")


def detect_format(path: str, text: str, delimiter: str | None) -> str:
    """'jsonl' or the delimiter character."""
    if delimiter:
        char = {"\\t": "\t", "tab": "\t", "comma": ","}.get(delimiter, delimiter)
        if len(char) != 1 or char in "\r\n":
            raise DataError(f"--delimiter {delimiter!r}: give one character (',', ';', '|') or 'tab'")
        return char
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".tsv":
        return "\t"
    first = text.split("\n", 1)[0]
    if "\t" in first and first.count("\t") >= first.count(","):
        return "\t"
    return ","


def read_table(
    path: str | Path,
    *,
    delimiter: str | None = None,
    quoting: bool = True,
    header: bool = True,
    encoding: str = "utf-8",
) -> Table:
    """Read a whole CSV/TSV/JSONL file (``-`` reads stdin)."""
    text = read_text(path, encoding).text
    name = "<stdin>" if str(path) == "-" else str(path)
    fmt = detect_format(name, text, delimiter)
    if fmt == "jsonl":
        return _jsonl_table(name, text.split("\n"))
    return _csv_table(name, io.StringIO(text, newline=""), fmt, quoting, header)


def _csv_table(name: str, lines, fmt: str, quoting: bool, header: bool) -> Table:
    rows: list[list[str]] = []
    lines_at: list[int] = []
    columns: list[str] | None = None
    for row, line in csv_rows(name, lines, fmt, quoting, header):
        if line == 0:
            columns = row
        else:
            rows.append(row)
            lines_at.append(line)
    if header and columns is None:
        raise DataError(f"{name}: the file is empty (no header row)")
    if not header:
        width = max((len(r) for r in rows), default=0)
        columns = [str(i) for i in range(width)]
    return Table(name, columns, rows, lines_at)


def csv_rows(name: str, lines, fmt: str, quoting: bool, header: bool):
    """(row, line) for each non-blank row of CSV ``lines`` (an iterable of lines with their endings);
    with ``header`` the header comes first as (columns, 0)."""
    reader = csv.reader(lines, delimiter=fmt, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
                        strict=False)
    seen_header = not header
    start = 1
    try:
        for row in reader:
            if not seen_header:
                columns = [c.strip() for c in row]
                if not any(columns):
                    raise DataError(f"{name}, line 1: the header row is empty")
                seen_header = True
                start = reader.line_num + 1
                yield columns, 0
                continue
            if row and any(cell.strip() for cell in row):
                yield row, start
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{name}, line {reader.line_num}: malformed CSV ({exc}); try --no-quoting") from None


def _jsonl_table(name: str, lines) -> Table:
    rows: list[dict] = []
    lines_at: list[int] = []
    columns: dict[str, None] = {}
    for obj, i in jsonl_records(name, lines):
        columns.update(dict.fromkeys(obj))
        rows.append(obj)
        lines_at.append(i)
    return Table(name, list(columns), rows, lines_at, is_json=True)


def jsonl_records(name: str, lines):
    """(object, line) for each non-blank line of JSONL ``lines``, with located errors."""
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name}, line {i}, column {exc.colno}: invalid JSON ({exc.msg})") from None
        except RecursionError:
            raise DataError(f"{name}, line {i}: the JSON is nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise DataError(f"{name}, line {i}: invalid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}, line {i}: expected a JSON object per line, got {type(obj).__name__}")
        yield obj, i


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: str) -> str:
    """Neutralise spreadsheet formula injection in an output CSV cell."""
    if value and value.startswith(_FORMULA_START):
        return "'" + value
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_line(obj: dict) -> str:
    """One JSON line; a lone surrogate (from a JSON input's \\ud800) stays an escape, never an error."""
    line = json.dumps(obj, ensure_ascii=False)
    return json.dumps(obj) if _SURROGATE.search(line) else line


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return escape_formula(_SURROGATE.sub("\ufffd", text))  # CSV cannot escape a lone surrogate


def write_table(path: str | Path, columns: list[str], rows: list[dict], stream=None) -> None:
    """Write rows as CSV/TSV (by extension; cells escaped against formulas) or JSONL.

    A file is written to a temporary sibling and renamed into place, so an existing file is never
    left half-written. Lone surrogates become ``\\udXXX`` escapes in JSONL and U+FFFD in CSV.
    """
    with TableWriter(path, columns, stream=stream) as w:
        w.write(rows)


class TableWriter:
    """Rows written as they come (CSV/TSV/JSONL by the extension of ``path``, as :func:`write_table`), to
    ``stream`` or to a temporary sibling of ``path`` renamed into place by :meth:`close`; leaving the
    ``with`` block on an exception (or :meth:`abort`) removes the temporary file, the old ``path`` untouched."""

    def __init__(self, path: str | Path, columns: list[str], stream=None):
        self.name, self.columns = str(path), list(columns)
        self.target = self.tmp = None
        if stream is None:
            self.target = Path(self.name)
            self.tmp = self.target.with_name(f".{self.target.name}.tmp-{os.getpid()}")
            stream = open(self.tmp, "w", encoding="utf-8", newline="")
        self.fh = stream
        self.jsonl = self.name.endswith((".jsonl", ".json", ".ndjson"))
        if not self.jsonl:
            self.csv = csv.writer(stream, delimiter="\t" if self.name.endswith((".tsv", ".txt")) else ",")
            self.csv.writerow([_cell(c) for c in self.columns])

    def write(self, rows) -> None:
        cols = self.columns
        if self.jsonl:
            self.fh.write("".join(json_line({c: r.get(c) for c in cols}) + "\n" for r in rows))
        else:
            self.csv.writerows([_cell(r.get(c)) for c in cols] for r in rows)
        if self.tmp is None:
            self.fh.flush()

    def close(self) -> None:
        if self.tmp is None:
            self.fh.flush()
            return
        self.fh.close()
        os.replace(self.tmp, self.target)

    def abort(self) -> None:
        if self.tmp is not None:
            self.fh.close()
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
