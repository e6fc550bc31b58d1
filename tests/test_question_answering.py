"""Extractive question answering: SQuAD reading and metrics, windows, post-processing, CLI, HF parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertcli.data.squad import (
    Question,
    f1_score,
    normalize_answer,
    parse_squad,
    read_squad,
    squad_metrics,
    write_squad,
)
from bertcli.errors import ConfigError, DataError
from bertcli.tasks.question_answering import Window, best_spans, make_windows, token_span
from tests.conftest import one_error_line


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from bertcli.tokenizer import Tokenizer

    return Tokenizer.load(minilm_dir)


def squad_obj(context: str, qas: list[dict]) -> dict:
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(qid: str, question: str, context: str, answer: str | None, **extra) -> dict:
    answers = [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}]
    return {"id": qid, "question": question, "answers": answers, **extra}


LONG = ("The river rises in the northern hills and flows south for many miles. " * 6
        + "The old stone bridge at Marlow was finished in the year 1832 by local masons. "
        + "Boats still pass under its three arches every summer. " * 6)


# ============================================================ metrics
def test_normalisation_and_known_scores():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles are whole words only
    assert f1_score("Denver Broncos", "the Denver Broncos") == 1.0
    assert f1_score("Broncos win", "Denver Broncos") == pytest.approx(0.5)
    assert f1_score("Carolina", "Denver Broncos") == 0.0
    assert f1_score("", "") == 1.0 and f1_score("x", "") == 0.0
    golds = [Question("1", "q", "c", []), Question("2", "q", "c", [])]
    from bertcli.data.squad import Answer

    golds[0].answers = [Answer("Denver Broncos", 0), Answer("the Broncos", 0)]
    golds[1].answers = [Answer("Santa Clara, California", 0)]
    m = squad_metrics({"1": "broncos", "2": "Santa Clara"}, golds)
    # q1: "broncos" = normalised "the Broncos": EM 1, F1 1; q2: EM 0, F1 = 2*1*(2/3)/(1+2/3) = 0.8
    assert m["exact_match"] == pytest.approx(50.0)
    assert m["f1"] == pytest.approx(100 * (1.0 + 0.8) / 2)
    m = squad_metrics({"1": "Denver"}, golds)  # a missing prediction scores 0
    assert m == {"exact_match": 0.0, "f1": pytest.approx(100 * (2 * 1 * 0.5 / 1.5) / 2)}
    impossible = [Question("3", "q", "c", [], impossible=True)]
    assert squad_metrics({"3": ""}, impossible) == {"exact_match": 100.0, "f1": 100.0}
    assert squad_metrics({"3": "something"}, impossible) == {"exact_match": 0.0, "f1": 0.0}


# ============================================================ reading
def test_reader_round_trip_and_mismatch(tmp_path):
    context = "Marie Curie was born in Warsaw in 1867."
    obj = squad_obj(context, [qa("a", "Where was she born?", context, "Warsaw"),
                              {"id": "b", "question": "When?", "answers": [{"text": "1867", "answer_start": 3}]},
                              {"id": 7, "question": "Who?", "answers": [], "is_impossible": True}])
    f = parse_squad(obj, "x.json")
    assert [q.id for q in f.questions] == ["a", "b", "7"]
    assert f.questions[0].train_answer.start == context.index("Warsaw")
    assert f.mismatched == ["data[0].paragraphs[0].qas[1].answers[0]"]
    assert f.questions[1].train_answer is None and f.questions[1].answers[0].text == "1867"
    assert f.has_impossible and f.questions[2].impossible
    write_squad(tmp_path / "out.json", f.questions)
    again = read_squad(str(tmp_path / "out.json"))
    assert [(q.id, q.question, q.context, [(a.text, a.start) for a in q.answers], q.impossible)
            for q in again.questions] == [(q.id, q.question, q.context, [(a.text, a.start) for a in q.answers],
                                           q.impossible) for q in f.questions]


@pytest.mark.parametrize("mutate, where", [
    (lambda o: o["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start="12"),
     "data[0].paragraphs[0].qas[0].answers[0].answer_start must be a whole number"),
    (lambda o: o["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].pop("answer_start"),
     'data[0].paragraphs[0].qas[0].answers[0] has no "answer_start"'),
    (lambda o: o["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=-1),
     "data[0].paragraphs[0].qas[0].answers[0].answer_start is -1"),
    (lambda o: o["data"][0]["paragraphs"][0].pop("context"), 'data[0].paragraphs[0] has no "context"'),
    (lambda o: o["data"][0]["paragraphs"][0].update(qas={}), "data[0].paragraphs[0].qas must be a list"),
    (lambda o: o["data"][0]["paragraphs"][0]["qas"].append(dict(o["data"][0]["paragraphs"][0]["qas"][0])),
     "data[0].paragraphs[0].qas[1].id 'a' repeats the id of data[0].paragraphs[0].qas[0]"),
    (lambda o: o["data"][0]["paragraphs"][0]["qas"][0].update(is_impossible=True),
     "data[0].paragraphs[0].qas[0] is_impossible is true but it has 1 answers"),
    (lambda o: o["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]),
     'data[0].paragraphs[0].qas[0] has no answers and is not "is_impossible"'),
    (lambda o: o.pop("data"), 'no "data" key at the top level'),
])
def test_malformed_files_name_the_json_path(mutate, where):
    context = "Marie Curie was born in Warsaw in 1867."
    obj = squad_obj(context, [qa("a", "Where was she born?", context, "Warsaw")])
    mutate(obj)
    with pytest.raises(DataError) as err:
        parse_squad(obj, "bad.json")
    assert str(err.value).startswith("bad.json: ") and where in str(err.value)


def test_invalid_json_names_line_and_column(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{"data": [\n  {"paragraphs": [}\n]}\n')
    with pytest.raises(DataError, match=r"broken.json, line 2, column 19: invalid JSON"):
        read_squad(str(p))


# ============================================================ windows
def test_windows_with_stride_map_answers_back(tok):
    answer = "1832"
    start = LONG.index(answer)
    feats = make_windows(tok, ["When was the bridge finished?"], [LONG], max_length=48, doc_stride=12,
                         max_query_length=16, answers=[(start, start + len(answer))])
    ws = feats.windows
    assert len(ws) > 3 and feats.split_contexts == 1
    ids, offsets = tok.encode(LONG, max_length=1 << 20).ids[1:-1], tok.encode(LONG, max_length=1 << 20).offsets[1:-1]
    covered = []
    for w in ws:
        assert len(w.ids) <= 48 and w.ids[0] == tok.cls_id and w.ids[-1] == tok.sep_id
        assert w.type_ids[w.context_pos - 1] == 0 and set(w.type_ids[w.context_pos:]) == {1}
        n = len(w.offsets)
        # every context token of the window is the token at those characters of the original context
        first = offsets.index(w.offsets[0])
        assert w.ids[w.context_pos:w.context_pos + n] == ids[first:first + n]
        covered.append((first, first + n))
    for (_a0, a1), (b0, _b1) in zip(covered, covered[1:], strict=False):
        assert a1 - b0 == 12  # consecutive windows share --doc-stride tokens
    assert covered[0][0] == 0 and covered[-1][1] == len(ids)
    labelled = [w for w in ws if w.start]
    assert labelled
    for w in labelled:
        s, e = w.offsets[w.start - w.context_pos][0], w.offsets[w.end - w.context_pos][1]
        assert LONG[s:e] == answer
    for w in ws:
        if not w.start:
            assert w.end == 0


def test_windows_match_transformers_overflow(tok, minilm_dir):
    """The windows are the ones a Hugging Face fast tokenizer makes with only_second truncation and stride."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(minilm_dir))
    questions = ["When was the bridge finished?", "What passes under the arches?", "Where does the river rise?"]
    contexts = [LONG, LONG[:300], "Short context, one window."]
    for max_length, stride in ((64, 16), (48, 0), (128, 40)):
        enc = hf(questions, contexts, truncation="only_second", max_length=max_length, stride=stride,
                 return_overflowing_tokens=True, return_offsets_mapping=True)
        feats = make_windows(tok, questions, contexts, max_length=max_length, doc_stride=stride, max_query_length=16)
        assert [w.ids for w in feats.windows] == enc["input_ids"]
        assert [w.type_ids for w in feats.windows] == enc["token_type_ids"]
        assert [w.example for w in feats.windows] == enc["overflow_to_sample_mapping"]
        for w, offsets in zip(feats.windows, enc["offset_mapping"], strict=True):
            assert list(w.offsets) == [tuple(o) for o in offsets[w.context_pos:-1]]


def test_answer_across_two_windows(tok):
    """An answer cut by one window's end: CLS target there; found whole in the next window."""
    answer = "the old stone bridge at Marlow"
    start = LONG.index("The old stone bridge at Marlow")
    span = (start, start + len(answer))
    c_offsets = tok.encode(LONG, max_length=1 << 20).offsets[1:-1]
    first, last = token_span(c_offsets, *span)
    assert last - first + 1 < 10  # shorter than the stride: a window that cuts it is followed by one holding it
    q = "What was finished in 1832?"
    q_len = len(tok.encode(q).ids) - 2
    stride = 10
    for max_length in range(36, 64):  # a layout in which some window cuts the answer
        room = max_length - q_len - 3
        feats = make_windows(tok, [q], [LONG], max_length=max_length, doc_stride=stride, max_query_length=16,
                             answers=[span])
        bounds = [(k * (room - stride), min(k * (room - stride) + room, len(c_offsets)))
                  for k in range(len(feats.windows))]
        cut = [i for i, (b, e) in enumerate(bounds) if b <= first < e <= last]
        whole = [i for i, (b, e) in enumerate(bounds) if b <= first and last < e]
        if cut:
            break
    assert cut and whole == [cut[0] + 1], (bounds, first, last)
    for i, w in enumerate(feats.windows):
        assert tuple(w.offsets) == tuple(c_offsets[bounds[i][0]:bounds[i][1]])
    assert (feats.windows[cut[0]].start, feats.windows[cut[0]].end) == (0, 0)
    w = feats.windows[whole[0]]
    assert LONG[w.offsets[w.start - w.context_pos][0]:w.offsets[w.end - w.context_pos][1]] == LONG[span[0]:span[1]]
    # logits: in the cut window the answer's start is best and the best end is its last token (a partial
    # span); in the whole window start and end are a little lower but span the whole answer
    logits = []
    for i, w in enumerate(feats.windows):
        s, e = np.zeros(len(w.ids), np.float32), np.zeros(len(w.ids), np.float32)
        if i == cut[0]:
            s[w.context_pos + first - bounds[i][0]] = 6.0
            e[len(w.ids) - 2] = 3.0  # the cut window's last context token
        if i == whole[0]:
            s[w.context_pos + first - bounds[i][0]] = 5.0
            e[w.context_pos + last - bounds[i][0]] = 5.0
        logits.append((s, e))
    best = best_spans(LONG, feats.windows, logits, n_best=5, max_answer_length=30)[0]
    assert (best.start, best.end, best.answer) == (span[0], span[1], LONG[span[0]:span[1]])


def _window(n_question: int, offsets: list[tuple[int, int]]) -> Window:
    pos = 1 + n_question + 1
    ids = [0] * (pos + len(offsets) + 1)
    return Window(0, ids, [0] * pos + [1] * (len(ids) - pos), pos, offsets)


def test_post_processing_picks_the_best_valid_span():
    context = "alpha beta gamma delta epsilon zeta"
    offsets = [(0, 5), (6, 10), (11, 16), (17, 22), (23, 30), (31, 35)]
    w = _window(2, offsets)  # positions: 0 CLS, 1-2 question, 3 SEP, 4-9 context, 10 SEP
    s = np.full(len(w.ids), -5.0, np.float32)
    e = np.full(len(w.ids), -5.0, np.float32)
    s[1] = e[2] = 20.0       # question tokens: never an answer
    s[0] = e[0] = 9.0        # [CLS]: only with unanswerable questions
    s[4 + 5], e[4 + 0] = 10.0, 10.0   # the best start (zeta) after the best end (alpha): invalid
    s[4 + 1], e[4 + 3] = 8.0, 7.0     # beta ... delta: the best valid span (15)
    s[4 + 2] = 7.5                     # gamma ... delta (14.5) is second
    spans = best_spans(context, [w], [(s, e)], n_best=20, max_answer_length=30, top_k=3)
    assert [(sp.answer, sp.start, sp.end) for sp in spans[:2]] == [("beta gamma delta", 6, 22),
                                                                   ("gamma delta", 11, 22)]
    assert spans[0].score == pytest.approx(15.0) and spans[0].probability > spans[1].probability
    # a maximum answer length of 2 tokens rules out beta..delta (3 tokens)
    assert best_spans(context, [w], [(s, e)], n_best=20, max_answer_length=2)[0].answer == "gamma delta"
    # n-best 1 keeps only the best start (zeta) and the best end (alpha): no valid span is left
    assert best_spans(context, [w], [(s, e)], n_best=1, max_answer_length=30)[0].answer == ""
    # SQuAD 2.0: the null score 18 beats 15 + threshold 0, not 15 + threshold 5
    assert best_spans(context, [w], [(s, e)], n_best=20, max_answer_length=30, with_null=True)[0].answer == ""
    kept = best_spans(context, [w], [(s, e)], n_best=20, max_answer_length=30, with_null=True,
                      null_threshold=5.0)
    assert kept[0].answer == "beta gamma delta"


def test_impossible_questions_point_at_cls(tok):
    feats = make_windows(tok, ["Who?", "What?"], [LONG, "short context"], max_length=40, doc_stride=8,
                         max_query_length=8, answers=[None, None])
    assert all((w.start, w.end) == (0, 0) for w in feats.windows)
    with pytest.raises(ConfigError, match="--doc-stride 40"):
        make_windows(tok, ["q"], ["c"], max_length=64, doc_stride=40, max_query_length=32)


# ============================================================ CLI end to end + HF parity
def synthetic_squad(path: Path, n: int, seed: int, impossible: int = 0) -> None:
    rng = np.random.default_rng(seed)
    names = ["anna", "boris", "clara", "david", "emma", "felix", "greta", "hugo", "irene", "jonas"]
    cities = ["paris", "london", "berlin", "madrid", "rome", "vienna", "prague", "dublin", "oslo", "lisbon"]
    paragraphs = []
    for i in range(n):
        who, where = rng.choice(names), rng.choice(cities)
        filler = " ".join(rng.choice(["the", "weather", "was", "mild", "and", "quiet", "that", "year"], 12))
        context = f"{filler.capitalize()}. {who.capitalize()} moved to {where.capitalize()} in spring. {filler}."
        qas = [qa(f"q{i}", f"Where did {who} move?", context, where.capitalize())]
        if i < impossible:
            qas.append({"id": f"q{i}-x", "question": "Who painted the ceiling?", "answers": [],
                        "is_impossible": True})
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(json.dumps({"version": "2.0" if impossible else "1.1",
                                "data": [{"title": "syn", "paragraphs": paragraphs}]}))


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_model_dir):
    """A tiny model fine-tuned through the CLI on a synthetic SQuAD 2.0 file."""
    import torch
    from typer.testing import CliRunner

    from bertcli.cli.app import app

    d = tmp_path_factory.mktemp("qa")
    synthetic_squad(d / "train.json", 48, 0, impossible=4)
    synthetic_squad(d / "dev.json", 12, 1)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, [
            "finetune", "--task", "question-answering", "--model", str(tiny_model_dir), "--train",
            str(d / "train.json"), "--dev", str(d / "dev.json"), "--out", str(d / "run"), "--max-length", "48",
            "--doc-stride", "8", "--max-query-length", "12", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
            "--device", "cpu", "--json", "--quiet"], catch_exceptions=False)
    finally:
        torch.set_num_threads(old)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return d, summary


def test_finetune_predict_answer_cli(qa_run, cli, one_thread):
    d, summary = qa_run
    assert summary["best_metric"] == "f1" and set(summary["final_metrics"]) == {"f1", "exact_match", "loss"}
    assert summary["examples"] == {"train": 52, "dev": 12}
    cfg = json.loads((d / "run" / "config.json").read_text())
    assert cfg["architectures"] == ["BertForQuestionAnswering"]
    assert cfg["bertcli"]["task"] == "question-answering" and cfg["bertcli"]["version_2_with_negative"] is True
    assert cfg["bertcli"]["max_length"] == 48 and cfg["bertcli"]["doc_stride"] == 8
    dev = read_squad(str(d / "dev.json"))

    r = cli("predict", "--model", d / "run", d / "dev.json", "--output", d / "preds.json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    preds = json.loads((d / "preds.json").read_text())
    assert set(preds) == {q.id for q in dev.questions} and all(isinstance(v, str) for v in preds.values())
    m = squad_metrics(preds, dev.questions)
    assert f"exact match {m['exact_match']:.2f}, F1 {m['f1']:.2f}" in " ".join(r.stderr.split())
    assert m["f1"] > 50  # the synthetic task (the capitalised city after "moved to") is easy to learn
    # the dev F1 recorded by finetune is the one predict measures on the same file with the best model
    assert m["f1"] == pytest.approx(summary["best_value"], abs=1e-6)

    r = cli("predict", "--model", d / "run", d / "dev.json", "--json", "--quiet", "--device", "cpu")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["id"] for row in rows] == [q.id for q in dev.questions]
    for row, q in zip(rows, dev.questions, strict=True):
        assert row["answer"] == preds[q.id]
        if row["start"] is not None:
            assert q.context[row["start"]:row["end"]] == row["answer"]

    context = dev.questions[0].context
    r = cli("answer", "--model", d / "run", "--question", dev.questions[0].question, "--context", context,
            "--top-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert 1 <= len(out["answers"]) <= 3 and out["answer"] == out["answers"][0]["answer"]
    for a in out["answers"]:
        if a["start"] is not None:
            assert context[a["start"]:a["end"]] == a["answer"]
    (d / "ctx.txt").write_text(context)
    r = cli("answer", "--model", d / "run", "--question", dev.questions[0].question, "--context-file",
            d / "ctx.txt", "--device", "cpu")
    assert r.exit_code == 0 and "rank" in r.stdout


def test_cli_errors_are_one_line(qa_run, cli, tiny_model_dir, tmp_path):
    d, _ = qa_run
    bad = tmp_path / "bad.json"
    context = "Marie Curie was born in Warsaw."
    obj = squad_obj(context, [qa("a", "Where?", context, "Warsaw")])
    obj["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = None
    bad.write_text(json.dumps(obj))
    r = cli("finetune", "--task", "question-answering", "--model", tiny_model_dir, "--train", bad,
            "--out", tmp_path / "run", "--max-length", "64", "--doc-stride", "16", "--max-query-length", "16", "--quiet")
    one_error_line(r, "bad.json", "data[0].paragraphs[0].qas[0].answers[0].answer_start", "got null")
    r = cli("finetune", "--task", "question-answering", "--model", tiny_model_dir, "--train", d / "train.json",
            "--out", tmp_path / "run", "--quiet")  # --max-length 128 with a 64-token question, stride 128
    one_error_line(r, "--max-length 128", "--doc-stride 128")
    r = cli("finetune", "--task", "question-answering", "--model", tiny_model_dir, "--train", d / "train.json",
            "--out", tmp_path / "run", "--text-column", "x", "--max-length", "64", "--doc-stride", "16", "--max-query-length", "16")
    one_error_line(r, "--text-column does not apply")
    r = cli("predict", "--model", d / "run", d / "dev.json", "--text-column", "x")
    one_error_line(r, "--text-column does not apply")
    r = cli("answer", "--model", d / "run", "--question", "Where?")
    one_error_line(r, "--context")
    r = cli("answer", "--model", tiny_model_dir, "--question", "Where?", "--context", "here")
    one_error_line(r, "no question-answering head")


def test_checkpoint_matches_transformers(qa_run, one_thread):
    import torch
    from transformers import BertForQuestionAnswering as HFQA

    from bertcli.checkpoint import load_tokenizer
    from bertcli.tasks.question_answering import load_qa_model

    d, _ = qa_run
    ours = load_qa_model(d / "run").eval()
    theirs = HFQA.from_pretrained(str(d / "run")).eval()
    tok = load_tokenizer(d / "run")
    feats = make_windows(tok, ["Where did anna move?", "Who?"], [LONG, "Anna moved to Rome."], max_length=48,
                         doc_stride=8, max_query_length=12)
    from bertcli.tasks.question_answering import pad_windows

    x, m, t = pad_windows(feats.windows, tok.pad_id)
    with torch.no_grad():
        s, e = ours(x, m, t)
        ref = theirs(input_ids=x, attention_mask=m, token_type_ids=t)
    mask = m.bool()
    assert torch.allclose(s[mask], ref.start_logits[mask], atol=1e-5)
    assert torch.allclose(e[mask], ref.end_logits[mask], atol=1e-5)


def test_answer_help_does_not_import_torch():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "bertcli", "answer", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Examples" in r.stdout and "--context-file" in r.stdout
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line}
    assert "typer" in imported and "torch" not in imported


def test_predict_in_chunks_matches_one_chunk(qa_run, cli, one_thread):
    """--chunk-size 5 (12 questions: 3 chunks) gives the predictions of one chunk, in input order."""
    d, _ = qa_run
    got = {}
    for size in ("5", "1000"):
        r = cli("predict", "--model", d / "run", d / "dev.json", "--output", d / f"p{size}.json", "--chunk-size",
                size, "--json", "--device", "cpu")
        assert r.exit_code == 0, r.output
        got[size] = ((d / f"p{size}.json").read_text(), r.stdout)
    assert got["5"] == got["1000"]
    assert [json.loads(x)["id"] for x in got["5"][1].splitlines()] == [q.id for q in read_squad(str(d / "dev.json")).questions]


def test_answer_chunks_progress(qa_run, one_thread):
    from bertcli.tasks.question_answering import QuestionAnswerer, answer_chunks

    d, _ = qa_run
    qs = read_squad(str(d / "dev.json")).questions
    qa = QuestionAnswerer(str(d / "run"), device="cpu")
    seen = []
    parts = list(answer_chunks(qa, [q.question for q in qs], [q.context for q in qs], chunk_size=5,
                               progress=lambda done, total: seen.append((done, total))))
    assert [len(p) for p in parts] == [5, 5, 2]
    assert seen[-1] == (12, 12) and [s for s, _ in seen] == sorted(s for s, _ in seen)
    whole = qa.answer([q.question for q in qs], [q.context for q in qs])
    assert [s[0].as_dict() for p in parts for s in p] == [s[0].as_dict() for s in whole]
