"""CoNLL-format token/tag files for token classification (NER).

One token per line, ``token<TAB>tag`` (or ``token tag`` separated by spaces; with more columns,
as in CoNLL-2003, the first is the token and the last the tag). Sentences end at an empty line or
at a line holding only whitespace (WNUT-17 separates sentences with a line holding a single TAB).
``-DOCSTART-`` lines are document markers and are skipped. Tags are BIO (IOB2) or IOBES:
``O``, ``B-TYPE``, ``I-TYPE`` (``E-TYPE``, ``S-TYPE``). Files are read under the encoding policy
of :mod:`bertcli.data.text`. Every problem names the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bertcli.errors import DataError

TAG_PREFIXES = ("B", "I", "E", "S")


@dataclass
class Sentence:
    words: list[str]
    tags: list[str]
    line: int                                       # 1-based line of the first token
    lines: list[int] = field(default_factory=list)  # 1-based line of every token


@dataclass
class ConllFile:
    path: str
    sentences: list[Sentence]
    encoding: str = "utf-8"

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def tags(self) -> list[str]:
        return [t for s in self.sentences for t in s.tags]


def check_tag(tag: str, path: str, line: int) -> None:
    """``O`` or PREFIX-TYPE with PREFIX one of B, I, E, S; else a DataError naming the line."""
    if tag == "O":
        return
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in TAG_PREFIXES or not kind:
        raise DataError(
            f"{path}, line {line}: tag '{tag}' is not a BIO tag; use O, B-TYPE or I-TYPE "
            f"(IOBES E-TYPE and S-TYPE are accepted too)"
        )


def parse_conll(text: str, path: str = "<conll>") -> list[Sentence]:
    """Sentences of a CoNLL text (see the module docstring); malformed lines raise DataError."""
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    lines: list[int] = []

    def flush() -> None:
        if words:
            sentences.append(Sentence(list(words), list(tags), lines[0], list(lines)))
            words.clear()
            tags.clear()
            lines.clear()

    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            flush()
            continue
        if "\t" in line:
            fields = [f.strip(" ") for f in line.rstrip("\t").split("\t")]
        else:
            fields = line.split()
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) < 2 or not fields[0] or not fields[-1]:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise DataError(
                f"{path}, line {number}: expected 'token<TAB>tag' (or 'token tag'), got {shown!r}; "
                f"sentences are separated by empty lines"
            )
        check_tag(fields[-1], path, number)
        words.append(fields[0])
        tags.append(fields[-1])
        lines.append(number)
    flush()
    return sentences


def read_conll(path: str, encoding: str = "utf-8", errors: str = "strict") -> ConllFile:
    """Read a CoNLL file (``-`` reads stdin); an empty file is an error."""
    from bertcli.data.text import read_text

    f = read_text(path, encoding, errors)
    name = "<stdin>" if str(path) == "-" else str(path)
    sentences = parse_conll(f.text, name)
    if not sentences:
        raise DataError(f"{name}: no sentences; expected CoNLL lines 'token<TAB>tag' with empty lines between sentences")
    return ConllFile(name, sentences, f.encoding)


def build_tag_map(tags: list[str]) -> dict[str, int]:
    """tag -> id: ``O`` first, then by entity type and prefix (B, I, E, S); deterministic."""
    order = {p: i for i, p in enumerate(TAG_PREFIXES)}

    def key(tag: str):
        if tag == "O":
            return (0, "", 0)
        prefix, _, kind = tag.partition("-")
        return (1, kind, order.get(prefix, len(order)))

    return {t: i for i, t in enumerate(sorted(set(tags), key=key))}


def write_conll(path, sentences: list[tuple[list[str], list[str]]]) -> None:
    """Write ``token<TAB>tag`` lines with an empty line after each sentence (UTF-8)."""
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for words, tags in sentences:
            for w, t in zip(words, tags, strict=True):
                fh.write(f"{w}\t{t}\n")
            fh.write("\n")
