"""Plain-text input with an explicit encoding policy.

Undecodable bytes are an error naming the file, line and byte offset, unless the user chose an
encoding (``--encoding latin-1``), ``auto`` (UTF-8, else Windows-1252/Latin-1 per file, reported),
or an error policy (``--encoding-errors replace``). Nothing is silently dropped.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bertcli.errors import DataError

ENCODING_ERRORS = ("strict", "replace")


@dataclass
class TextFile:
    path: Path
    text: str
    encoding: str  # the encoding actually used


def _fallback(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def decode_bytes(raw: bytes, source: str, encoding: str = "utf-8", errors: str = "strict") -> tuple[str, str]:
    """Decode ``raw`` under the policy; return (text, encoding used)."""
    if errors not in ENCODING_ERRORS:
        raise DataError(f"--encoding-errors {errors}: valid values: {', '.join(ENCODING_ERRORS)}")
    _check_binary(raw, source)
    enc = encoding.lower()
    if enc == "auto":
        try:
            return raw.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError:
            return _fallback(raw)
    try:
        text = raw.decode("utf-8-sig" if enc in ("utf-8", "utf8") else encoding, errors)
    except LookupError:
        raise DataError(f"--encoding {encoding}: unknown encoding") from None
    except UnicodeDecodeError as exc:
        raise _undecodable(source, raw.count(b"\n", 0, exc.start) + 1, exc.start, raw[exc.start:exc.start + 4],
                           encoding) from None
    return text, enc


def _check_binary(raw: bytes, source: str) -> None:
    if b"\x00" in raw[:8192]:
        raise DataError(f"{source}: looks like a binary file (NUL bytes), not text; pass text files only")


def _undecodable(source: str, line: int, byte: int, bad: bytes, encoding: str) -> DataError:
    return DataError(
        f"{source}, line {line}: byte {byte} ({bad!r}) is not valid {encoding}; pass --encoding "
        f"latin-1 (or the file's real encoding), --encoding auto, or --encoding-errors replace"
    )


def _open_binary(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


BLOCK = 1 << 20  # bytes read at a time by the streaming readers


def resolve_encoding(path: str | Path, encoding: str = "utf-8") -> str:
    """The encoding :func:`read_text` would decode ``path`` with: ``auto`` becomes utf-8, else cp1252, else
    latin-1, decided over the whole file (read in blocks, bounded memory); other names are returned checked."""
    if encoding.lower() != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"--encoding {encoding}: unknown encoding") from None
        return encoding
    for candidate in ("utf-8", "cp1252"):
        decoder = codecs.getincrementaldecoder(candidate)("strict")
        try:
            with _open_binary(Path(path)) as fh:
                while block := fh.read(BLOCK):
                    decoder.decode(block)
                decoder.decode(b"", True)
            return candidate
        except UnicodeDecodeError:
            continue
    return "latin-1"


def iter_lines(path: str | Path, encoding: str = "utf-8", errors: str = "strict", *,
               source: str | None = None) -> Iterator[str]:
    """The decoded lines of a file, each with its ``\\n`` (the last may lack one), read in blocks: the
    streaming form of :func:`read_text` (same policy and errors; ``encoding`` must not be ``auto``, see
    :func:`resolve_encoding`). ``source`` names the file in errors (default: the path)."""
    if errors not in ENCODING_ERRORS:
        raise DataError(f"--encoding-errors {errors}: valid values: {', '.join(ENCODING_ERRORS)}")
    source = source or str(path)
    name = "utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding
    try:
        decoder = codecs.getincrementaldecoder(name)(errors)
    except LookupError:
        raise DataError(f"--encoding {encoding}: unknown encoding") from None
    offset = newlines = 0  # bytes and newlines before this block
    pending = ""
    with _open_binary(Path(path)) as fh:
        first = True
        while True:
            raw = fh.read(BLOCK)
            if first:
                _check_binary(raw, source)
                first = False
            held = decoder.getstate()[0]  # undecoded bytes carried over from the last block
            try:
                text = decoder.decode(raw, not raw)
            except UnicodeDecodeError as exc:
                data = held + raw
                byte = offset - len(held) + exc.start
                line = newlines + 1 + raw.count(b"\n", 0, max(byte - offset, 0))
                raise _undecodable(source, line, byte, data[exc.start:exc.start + 4], encoding) from None
            offset += len(raw)
            newlines += raw.count(b"\n")
            if text:
                parts = (pending + text).split("\n")
                pending = parts.pop()
                for part in parts:
                    yield part + "\n"
            if not raw:
                break
    if pending:
        yield pending


def read_text(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> TextFile:
    """Read a whole text file under the encoding policy (``-`` reads stdin)."""
    if str(path) == "-":
        raw = sys.stdin.buffer.read()
        text, used = decode_bytes(raw, "<stdin>", encoding, errors)
        return TextFile(Path("-"), text, used)
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a text file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    text, used = decode_bytes(raw, str(path), encoding, errors)
    return TextFile(path, text, used)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, directories expanded recursively (sorted; hidden files skipped)."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DataError(f"{p}: the directory holds no files")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return out


def read_lines(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> list[str]:
    """One text per line (a trailing newline does not add an empty text)."""
    text = read_text(path, encoding, errors).text
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]
