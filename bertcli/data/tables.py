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
        return _read_jsonl(name, text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt,
                        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE, strict=False)
    rows: list[list[str]] = []
    lines: list[int] = []
    columns: list[str] = []
    start = 1
    try:
        for row in reader:
            if header and not columns and not rows:
                columns = [c.strip() for c in row]
                if not any(columns):
                    raise DataError(f"{name}, line 1: the header row is empty")
                start = reader.line_num + 1
                continue
            if row and any(cell.strip() for cell in row):
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{name}, line {reader.line_num}: malformed CSV ({exc}); try --no-quoting") from None
    if header and not columns:
        raise DataError(f"{name}: the file is empty (no header row)")
    if not header:
        width = max((len(r) for r in rows), default=0)
        columns = [str(i) for i in range(width)]
    return Table(name, columns, rows, lines)


def _read_jsonl(name: str, text: str) -> Table:
    rows: list[dict] = []
    lines: list[int] = []
    columns: list[str] = []
    for i, line in enumerate(text.split("\n"), start=1):
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
        for k in obj:
            if k not in columns:
                columns.append(k)
        rows.append(obj)
        lines.append(i)
    return Table(name, columns, rows, lines, is_json=True)


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
    name = str(path)
    if stream is not None:
        _write_rows(name, columns, rows, stream)
        return
    target = Path(name)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            _write_rows(name, columns, rows, fh)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_rows(name: str, columns: list[str], rows: list[dict], fh) -> None:
    if name.endswith((".jsonl", ".json", ".ndjson")):
        for r in rows:
            fh.write(json_line({c: r.get(c) for c in columns}) + "\n")
        return
    delim = "\t" if name.endswith((".tsv", ".txt")) else ","
    w = csv.writer(fh, delimiter=delim)
    w.writerow([_cell(c) for c in columns])
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
