"""SQuAD JSON files (v1.1 and v2.0) and the official SQuAD metrics.

``read_squad(path)`` reads ``{"data": [{"paragraphs": [{"context": ..., "qas": [{"id", "question",
"answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}`` into a flat list of
:class:`Question`. A malformed file raises :class:`DataError` naming the JSON path of the
offending value (``data[3].paragraphs[0].qas[7].answers[0].answer_start``) and what is wrong.

An answer whose ``answer_start`` does not point at its ``text`` in the context is not an error:
it is kept as a gold answer for exact-match / F1 (which compare texts only), marked
``matches=False``, and listed in ``SquadFile.mismatched`` so that training can skip it and say so.

``squad_metrics(predictions, questions)`` is the official evaluation (v1.1 ``evaluate-v1.1.py``
and, for unanswerable questions, v2.0 ``evaluate-v2.0.py``): answers are lower-cased, stripped of
punctuation, of the articles a / an / the and of extra whitespace; a prediction scores the best
exact match and token F1 over the gold answers; the figures are percentages (0-100).
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from bertcli.errors import DataError


@dataclass
class Answer:
    text: str
    start: int          # character offset of the answer in the context
    matches: bool = True  # context[start:start + len(text)] == text


@dataclass
class Question:
    id: str
    question: str
    context: str
    answers: list[Answer]
    impossible: bool = False
    path: str = ""      # JSON path of the question, e.g. data[0].paragraphs[2].qas[1]
    title: str = ""

    @property
    def train_answer(self) -> Answer | None:
        """The answer that labels training windows: the first one whose offset matches its text."""
        return next((a for a in self.answers if a.matches), None)


@dataclass
class SquadFile:
    path: str
    questions: list[Question]
    version: str | None = None
    mismatched: list[str] = field(default_factory=list)  # JSON paths of answers whose offset is wrong

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def has_answers(self) -> bool:
        """Whether the file carries gold answers (any answer, or an is_impossible flag)."""
        return any(q.answers or q.impossible for q in self.questions)

    @property
    def has_impossible(self) -> bool:
        return any(q.impossible for q in self.questions)


def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expect(value, kind, path: str, source: str, what: str):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = "null" if value is None else type(value).__name__
        got = {"str": "a string", "int": "a number", "float": "a number", "list": "a list",
               "dict": "an object", "bool": "true/false"}.get(got, got)
        raise DataError(f"{source}: {path} must be {what}, got {got}")
    return value


def _expect_object(value, keys: tuple[str, ...], path: str, source: str, what: str | None = None):
    """``value`` is an object holding every key of ``keys``; else a DataError naming ``path`` and the key."""
    what = what or "an object with " + " and ".join(f'"{k}"' for k in keys)
    _expect(value, dict, path, source, what)
    for key in keys:
        if key not in value:
            raise DataError(f'{source}: {path} has no "{key}"')
    return value


def parse_squad(obj, source: str = "<squad>", *, labelled: bool = True) -> SquadFile:
    """A SquadFile from parsed JSON. ``labelled``: every question needs answers or ``is_impossible``."""
    _expect(obj, dict, "the top level", source, 'an object with a "data" list (SQuAD format)')
    if "data" not in obj:
        raise DataError(f'{source}: no "data" key at the top level; expected SQuAD JSON '
                        '({"data": [{"paragraphs": [{"context": ..., "qas": [...]}]}]})')
    data = _expect(obj["data"], list, "data", source, "a list of articles")
    version = obj.get("version")
    questions: list[Question] = []
    mismatched: list[str] = []
    seen: dict[str, str] = {}
    for a, article in enumerate(data):
        apath = f"data[{a}]"
        _expect(article, dict, apath, source, 'an object with "paragraphs"')
        if "paragraphs" not in article:
            raise DataError(f'{source}: {apath} has no "paragraphs" list')
        title = article.get("title")
        title = title if isinstance(title, str) else ""
        paragraphs = _expect(article["paragraphs"], list, f"{apath}.paragraphs", source, "a list")
        for p, para in enumerate(paragraphs):
            ppath = f"{apath}.paragraphs[{p}]"
            _expect_object(para, ("context", "qas"), ppath, source)
            context = _expect(para["context"], str, f"{ppath}.context", source, "a string")
            qas = _expect(para["qas"], list, f"{ppath}.qas", source, "a list of questions")
            for q, qa in enumerate(qas):
                qpath = f"{ppath}.qas[{q}]"
                _expect_object(qa, ("id", "question"), qpath, source, 'an object with "id", "question" and "answers"')
                qid = qa["id"]
                if isinstance(qid, bool) or not isinstance(qid, (str, int)):
                    _expect(qid, str, f"{qpath}.id", source, "a string")
                qid = str(qid)
                if qid in seen:
                    raise DataError(f"{source}: {qpath}.id '{qid}' repeats the id of {seen[qid]}; "
                                    "question ids must be unique (predictions are keyed by id)")
                seen[qid] = qpath
                text = _expect(qa["question"], str, f"{qpath}.question", source, "a string")
                if not text.strip():
                    raise DataError(f"{source}: {qpath}.question is empty")
                impossible = qa.get("is_impossible", False)
                _expect(impossible, bool, f"{qpath}.is_impossible", source, "true or false")
                raw_answers = qa.get("answers", [])
                _expect(raw_answers, list, f"{qpath}.answers", source, "a list")
                answers = []
                for n, ans in enumerate(raw_answers):
                    npath = f"{qpath}.answers[{n}]"
                    _expect_object(ans, ("text", "answer_start"), npath, source)
                    atext = _expect(ans["text"], str, f"{npath}.text", source, "a string")
                    start = _expect(ans["answer_start"], int, f"{npath}.answer_start", source,
                                    "a whole number (a character offset into the context)")
                    if start < 0:
                        raise DataError(f"{source}: {npath}.answer_start is {start}; it must be 0 or more")
                    ok = context[start:start + len(atext)] == atext and atext.strip() != ""
                    if not ok:
                        mismatched.append(npath)
                    answers.append(Answer(atext, start, ok))
                if impossible and answers:
                    raise DataError(f"{source}: {qpath} is_impossible is true but it has {len(answers)} answers; "
                                    "an unanswerable question has an empty answers list")
                if labelled and not answers and not impossible:
                    raise DataError(f'{source}: {qpath} has no answers and is not "is_impossible"; '
                                    "every training / evaluation question needs an answer or is_impossible: true")
                questions.append(Question(qid, text, context, answers, impossible, qpath, title))
    if not questions:
        raise DataError(f"{source}: no questions (data[].paragraphs[].qas[] is empty)")
    return SquadFile(source, questions, version if isinstance(version, str) else None, mismatched)


def read_squad(path: str, *, labelled: bool = True, encoding: str = "utf-8") -> SquadFile:
    """Read a SQuAD JSON file (``-`` for stdin); errors name the JSON path or the line and column."""
    from bertcli.data.text import read_text

    if path != "-" and not Path(path).is_file():
        if Path(path).is_dir():
            raise DataError(f"{path}: is a directory, expected a SQuAD JSON file")
        raise DataError(f"{path}: no such file")
    text = read_text(path, encoding).text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    return parse_squad(obj, str(path), labelled=labelled)


def write_squad(path: str | Path, questions: list[Question], version: str = "1.1") -> None:
    """Write questions back as SQuAD JSON (one article per title, one paragraph per context)."""
    articles: dict[str, dict[str, list]] = {}
    for q in questions:
        paras = articles.setdefault(q.title, {})
        entry = {"id": q.id, "question": q.question,
                 "answers": [{"text": a.text, "answer_start": a.start} for a in q.answers]}
        if q.impossible:
            entry["is_impossible"] = True
        paras.setdefault(q.context, []).append(entry)
    data = [{"title": t, "paragraphs": [{"context": c, "qas": qas} for c, qas in paras.items()]}
            for t, paras in articles.items()]
    Path(path).write_text(json.dumps({"version": version, "data": data}, ensure_ascii=False) + "\n",
                          encoding="utf-8")


# ============================================================ official metrics
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official SQuAD rule)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:  # v2.0: an empty answer scores 1 only against an empty one
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def gold_texts(q: Question) -> list[str]:
    """Gold answers for scoring; an unanswerable question's gold answer is the empty string."""
    texts = [a.text for a in q.answers if normalize_answer(a.text)]
    return texts or [""]


def squad_metrics(predictions: dict[str, str], questions: list[Question]) -> dict[str, float]:
    """Official exact match and F1 (percentages) over ``questions``; a missing prediction scores 0."""
    if not questions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for q in questions:
        pred = predictions.get(q.id)
        if pred is None:
            continue
        golds = gold_texts(q)
        em += max(exact_match_score(pred, g) for g in golds)
        f1 += max(f1_score(pred, g) for g in golds)
    n = len(questions)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
