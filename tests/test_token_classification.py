"""finetune --task token-classification (NER) on tiny models: CoNLL reading, wordpiece alignment, windows,
seqeval metrics, checkpoint (HF parity, label map), resume, and predict with exact character offsets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import finetune_cli, finetune_options, interrupt_and_resume

from bertcli.errors import ConfigError, DataError

PEOPLE = ["alice smith", "bob jones", "carol", "david lee", "zuckerberg"]
PLACES = ["paris", "new york", "berlin", "tokyo", "rome"]


pytestmark = pytest.mark.usefixtures("one_thread")  # two threads thrash on the shared 2-core machine


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def synthetic_conll(path: Path, n: int = 40, sep: str = "\n", seed: int = 0) -> Path:
    """Sentences 'yesterday PERSON flew to PLACE .' with BIO tags; sentences end with ``sep`` lines."""
    import random

    rng = random.Random(seed)
    out = []
    for i in range(n):
        person, place = PEOPLE[rng.randrange(len(PEOPLE))].split(), PLACES[rng.randrange(len(PLACES))].split()
        words = ["yesterday", *person, "flew", "to", *place, "."]
        tags = ["O", "B-person", *["I-person"] * (len(person) - 1), "O", "O", "B-location",
                *["I-location"] * (len(place) - 1), "O"]
        out += [f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True)]
        out.append(sep if i % 2 else "\n")
    return write(path, "".join(out))


def options(model, tmp_path, **kw):
    train = kw.pop("train", None) or synthetic_conll(tmp_path / "train.conll")
    dev = kw.pop("dev") if "dev" in kw else synthetic_conll(tmp_path / "dev.conll", n=10, seed=1)
    return finetune_options(model, tmp_path, **{"task": "token-classification", "train": str(train),
                                                "dev": dev and str(dev), **kw})


def make_task(model, tmp_path, **kw):
    from bertcli.tasks.token_classification import TokenClassificationTask

    return TokenClassificationTask(options(model, tmp_path, **kw))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One tiny NER run through the CLI, shared by the checks below."""
    d = tmp_path_factory.mktemp("ner")
    train = synthetic_conll(d / "train.conll", n=60, sep="\t\n")
    dev = synthetic_conll(d / "dev.conll", n=10, seed=1)
    out = d / "run"
    summary = finetune_cli("--task", "token-classification", "--model", tiny_model_dir, "--train", train,
                           "--dev", dev, "--test", dev, "--out", out, "--epochs", "4", "--batch-size", "8",
                           "--lr", "2e-3")
    return out, summary, dev


# ------------------------------------------------------------ CoNLL reading
def test_conll_tab_only_separators_docstart_crlf_and_spaces():
    from bertcli.data.conll import parse_conll

    text = ("-DOCSTART-\tO\n\nEmpire\tB-location\r\nState\tI-location\n\t\nhi O\nthere O\n   \n"
            "EU NNP B-NP B-ORG\n\n\n")
    sents = parse_conll(text, "x.conll")
    assert [s.words for s in sents] == [["Empire", "State"], ["hi", "there"], ["EU"]]
    assert [s.tags for s in sents] == [["B-location", "I-location"], ["O", "O"], ["B-ORG"]]
    assert sents[0].lines == [3, 4] and sents[1].line == 6 and sents[2].line == 9


def test_conll_malformed_line_names_file_and_line(tmp_path):
    from bertcli.data.conll import read_conll

    path = write(tmp_path / "bad.conll", "a\tO\nb\tB-x\n\nlonely\nc\tO\n")
    with pytest.raises(DataError, match=r"bad\.conll, line 4: expected 'token<TAB>tag'"):
        read_conll(str(path))
    path = write(tmp_path / "bad2.conll", "a\tO\n\tO\n")
    with pytest.raises(DataError, match=r"bad2\.conll, line 2"):
        read_conll(str(path))
    path = write(tmp_path / "bad3.conll", "a\tO\nb\tPERSON\n")
    with pytest.raises(DataError, match=r"bad3\.conll, line 2: tag 'PERSON' is not a BIO tag"):
        read_conll(str(path))
    with pytest.raises(DataError, match="no sentences"):
        read_conll(str(write(tmp_path / "empty.conll", "\n\t\n")))


def test_conll_encoding_policy(tmp_path):
    from bertcli.data.conll import read_conll

    path = tmp_path / "latin.conll"
    path.write_bytes("Zo\xeb\tB-person\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.conll, line 1: byte 2"):
        read_conll(str(path))
    assert read_conll(str(path), encoding="latin-1").sentences[0].words == ["Zoë"]


def test_tag_map_o_first_then_by_type():
    from bertcli.data.conll import build_tag_map

    tags = ["I-person", "O", "B-location", "B-person", "I-location", "O", "B-corp"]
    assert list(build_tag_map(tags)) == ["O", "B-corp", "B-location", "I-location", "B-person", "I-person"]


def test_unseen_dev_tag_names_file_line_and_tag(tiny_model_dir, tmp_path):
    dev = write(tmp_path / "dev.conll", "alice\tB-person\n\nacme\tB-company\n")
    with pytest.raises(DataError, match=r"dev\.conll, line 3: tag 'B-company' never occurs in the training file"):
        make_task(tiny_model_dir, tmp_path, dev=dev)


def test_unseen_tag_through_cli_exits_1(tiny_model_dir, tmp_path, cli):
    train = synthetic_conll(tmp_path / "train.conll", n=4)
    dev = write(tmp_path / "dev.conll", "acme\tB-company\n")
    result = cli("finetune", "--task", "token-classification", "--model", tiny_model_dir, "--train", train,
                 "--dev", dev, "--out", tmp_path / "run", "--device", "cpu")
    assert result.exit_code == 1
    assert "dev.conll, line 1: tag 'B-company'" in result.stderr
    assert "Traceback" not in result.output


def test_options_for_tables_are_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="--text-column does not apply to --task token-classification"):
        options(tiny_model_dir, tmp_path, text_column="text").validate()
    with pytest.raises(ConfigError, match="--metric 'accuracy'.*valid values: f1, precision, recall, loss"):
        options(tiny_model_dir, tmp_path, metric="accuracy").validate()


# ------------------------------------------------------------ alignment and windows
def test_word_of_three_pieces_gets_one_label(tiny_model_dir, tmp_path):
    from bertcli.tasks.token_classification import IGNORE, pad_windows

    pieces = ["zu", "##cker", "##berg"]
    task = make_task(tiny_model_dir, tmp_path, train=write(tmp_path / "t.conll", "met\tO\nzuckerberg\tB-person\n"
                                                          "today\tO\n\nrome\tB-location\n"), dev=None)
    assert task.tokenizer.backend.encode("zuckerberg", add_special_tokens=False).tokens == pieces
    split = task.train_split
    w = split.windows[0]
    tokens = [task.tokenizer.id_to_token(i) for i in w.ids]
    assert tokens == ["[CLS]", "met", *pieces, "today", "[SEP]"]
    assert w.positions.tolist() == [1, 2, 5] and w.words.tolist() == [0, 1, 2]
    _, _, _, labels = pad_windows([w], task.tokenizer.pad_id, [split.labels[0]])
    row = labels[0].tolist()
    o, b = task.label2id["O"], task.label2id["B-person"]
    assert row == [IGNORE, o, b, IGNORE, IGNORE, o, IGNORE]


def test_long_sentence_split_into_windows_keeps_every_word(tiny_model_dir, tmp_path):
    words = [f"w{i}" if i % 3 else "zuckerberg" for i in range(40)]
    tags = ["B-person" if i % 3 == 0 else "O" for i in range(40)]
    train = write(tmp_path / "long.conll", "".join(f"{w}\t{t}\n" for w, t in zip(words, tags, strict=True))
                  + "\nhi\tO\n")
    task = make_task(tiny_model_dir, tmp_path, train=train, dev=train, max_length=16)
    split = task.train_split
    assert task.truncated == {"train": 1, "dev": 1} and task.examples == {"train": 2, "dev": 2}
    first = [w for w in split.windows if w.sentence == 0]
    assert len(first) > 1
    assert all(len(w.ids) <= 16 for w in split.windows)
    assert np.concatenate([w.words for w in first]).tolist() == list(range(40))
    for w, y in zip(first, split.labels, strict=False):
        assert [task.id2label[int(k)] for k in y] == [tags[i] for i in w.words]
        for p in w.positions:  # the labelled token is a word's first piece, never a ## continuation
            assert not task.tokenizer.id_to_token(w.ids[p]).startswith("##")


def test_windows_of_cuts_a_single_overlong_word():
    from bertcli.tasks.token_classification import windows_of

    ids = [10, 11, 12, 13, 14, 20]
    word_ids = [0, 0, 0, 0, 0, 1]
    windows, cut = windows_of(ids, word_ids, 0, budget=3, cls_id=1, sep_id=2)
    assert cut
    assert [w.ids for w in windows] == [[1, 10, 11, 12, 2], [1, 20, 2]]
    assert [w.positions.tolist() for w in windows] == [[1], [1]]


# ------------------------------------------------------------ metrics
def test_entity_metrics_match_a_hand_count():
    from bertcli.tasks.token_classification import entity_metrics

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "O", "B-LOC"]]
    m = entity_metrics(gold, pred)
    # gold: PER x2, LOC x2; predicted: PER (right), LOC (right), LOC (wrong) -> P 2/3, R 2/4
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["PER_precision"] == 1.0 and m["PER_recall"] == 0.5
    assert m["LOC_precision"] == 0.5 and m["LOC_recall"] == 0.5
    # a partly right span is wrong at the entity level
    assert entity_metrics([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"] == 0.0
    assert entity_metrics([["O"]], [["O"]])["f1"] == 0.0


# ------------------------------------------------------------ training, checkpoint, predict
def test_cli_trains_checkpoint_with_label_map(trained):
    from bertcli.checkpoint import load_checkpoint

    out, summary, _ = trained
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForTokenClassification"]
    assert cfg["bertcli"]["task"] == "token-classification"
    assert cfg["id2label"]["0"] == "O"
    assert set(cfg["id2label"].values()) == {"O", "B-location", "I-location", "B-person", "I-person"}
    assert {v: int(k) for k, v in cfg["id2label"].items()} == cfg["label2id"]
    assert load_checkpoint(out).state["classifier.weight"].shape[0] == 5
    assert summary["examples"] == {"train": 60, "dev": 10, "test": 10}
    assert {"f1", "precision", "recall", "loss", "person_f1", "location_recall"} <= set(summary["test"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    assert len(evals) == 4 and all("location_f1" in e for e in evals)
    assert evals[-1]["loss"] < evals[0]["loss"]  # it learns
    assert summary["test"]["f1"] > 0.3


def test_checkpoint_loads_in_transformers_with_same_logits(trained):
    import torch
    from transformers import BertForTokenClassification as HFModel

    from bertcli.tasks.token_classification import load_tagger

    out, _, _ = trained
    tagger = load_tagger(out, device="cpu", precision="fp32")
    hf = HFModel.from_pretrained(out).eval()
    assert hf.config.id2label == tagger.id2label
    from bertcli.tokenizer import pad_batch

    enc = tagger.tokenizer.encode_batch(["alice smith flew to new york", "hi"], max_length=32)
    ids, mask, types = pad_batch([e.ids for e in enc], [e.type_ids for e in enc], tagger.tokenizer.pad_id)
    with torch.no_grad():
        ours = tagger.model(ids, mask, types).numpy()
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    assert ours.shape == theirs.shape == (2, ids.shape[1], 5)
    m = mask.bool().numpy()
    assert ours[m] == pytest.approx(theirs[m], abs=1e-5)


def test_predict_cli_text_file_json_and_tsv(trained, tmp_path, cli):
    out, _, _ = trained
    text = "yesterday alice smith flew to new york .\n\nyesterday  carol   flew to rome ."
    src = write(tmp_path / "texts.txt", text + "\n")
    result = cli("predict", "--model", out, src, "--json", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    objs = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["line"] for o in objs] == [1, 3]
    lines = text.split("\n")
    for o in objs:
        assert o["text"] == lines[o["line"] - 1]
        for e in o["entities"]:
            assert o["text"][e["start"]:e["end"]] == e["text"]
            assert e["type"] in ("person", "location") and 0 < e["score"] <= 1
    found = {(e["type"], e["text"]) for o in objs for e in o["entities"]}
    assert ("location", "new york") in found or ("person", "alice smith") in found

    tsv = cli("predict", "--model", out, src, "--output", tmp_path / "ents.tsv", "--device", "cpu")
    assert tsv.exit_code == 0, tsv.output
    rows = (tmp_path / "ents.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["line", "type", "entity", "start", "end", "score"]
    assert len(rows) - 1 == sum(len(o["entities"]) for o in objs)
    assert "2 texts" in tsv.stderr


def test_predict_cli_table_and_stdin(trained, tmp_path, cli):
    out, _, _ = trained
    src = write(tmp_path / "in.jsonl", json.dumps({"id": 7, "body": "bob jones flew to berlin"}) + "\n")
    result = cli("predict", "--model", out, src, "--text-column", "body", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["id"] == 7 and isinstance(obj["entities"], list)
    piped = cli("predict", "--model", out, "-", "--json", "--quiet", "--device", "cpu",
                input="carol flew to tokyo\nrome\n")
    assert piped.exit_code == 0, piped.output
    assert [json.loads(x)["text"] for x in piped.stdout.splitlines()] == ["carol flew to tokyo", "rome"]
    csv_in = write(tmp_path / "in.csv", "id,words\n1,hello\n")
    bad = cli("predict", "--model", out, csv_in, "--device", "cpu")
    assert bad.exit_code == 1 and "no column 'text'" in bad.stderr


class _AllTag:
    """A stand-in model whose logits favour one tag at every position."""

    def __init__(self, k: int, num_labels: int):
        self.k, self.num_labels, self.training = k, num_labels, False

    def __call__(self, ids, mask, types):
        import torch

        out = torch.zeros(*ids.shape, self.num_labels)
        out[..., self.k] = 4.0
        return out

    def eval(self):
        return self

    def train(self, mode=True):
        return self


def test_entity_offsets_slice_the_original_text(trained):
    from bertcli.tasks.token_classification import load_tagger

    tagger = load_tagger(trained[0], device="cpu", precision="fp32")
    label2id = {v: k for k, v in tagger.id2label.items()}
    text = "  Zoë   Müller 😀 visited  café\u00a0Crème, naïve x\u200by!  "
    tagger.model = _AllTag(label2id["B-person"], len(label2id))  # every word its own entity
    ents = tagger.entities([text, ""])[0]
    assert ents[1] == []
    words = [e["text"] for e in ents[0]]
    assert words == ["Zoë", "Müller", "😀", "visited", "café", "Crème", ",", "naïve", "x\u200by", "!"]
    for e in ents[0]:
        assert text[e["start"]:e["end"]] == e["text"] and e["type"] == "person"
        assert e["score"] == pytest.approx(np.exp(4) / (np.exp(4) + 4), abs=1e-4)
    tagger.model = _AllTag(label2id["I-person"], len(label2id))  # one entity over everything
    ents = tagger.entities([text])[0][0]
    assert len(ents) == 1
    whole = ents[0]
    assert whole["text"] == text.strip() and text[whole["start"]:whole["end"]] == text.strip()


def test_long_text_predicted_in_windows(trained):
    from bertcli.tasks.token_classification import load_tagger

    tagger = load_tagger(trained[0], device="cpu", precision="fp32")
    tagger.max_length = 8
    label2id = {v: k for k, v in tagger.id2label.items()}
    tagger.model = _AllTag(label2id["B-location"], len(label2id))
    text = " ".join(f"zuckerberg{i}" for i in range(12))
    ents, split = tagger.entities([text])
    assert split == 1
    assert [e["text"] for e in ents[0]] == text.split()


def test_continue_from_ner_checkpoint_keeps_the_head(trained, tmp_path):
    from bertcli.checkpoint import load_checkpoint

    out, _, _ = trained
    task = make_task(out, tmp_path)
    model = task.build_model()
    saved = load_checkpoint(out).state["classifier.weight"]
    assert task.id2label == load_checkpoint(out).id2label
    assert (model.classifier.weight.detach() == saved).all()
    other = make_task(out, tmp_path, train=write(tmp_path / "o.conll", "acme\tB-org\nis\tO\n"), dev=None)
    assert not (other.build_model().classifier.weight.shape == saved.shape)


def test_resume_after_interrupt_matches_uninterrupted(tiny_model_dir, tmp_path, monkeypatch):
    from bertcli.tasks.token_classification import TokenClassificationTask

    train = synthetic_conll(tmp_path / "train.conll", n=24)  # batch 8: 3 steps per epoch
    _, a, b = interrupt_and_resume(  # SIGINT at the 4th loss: in the second epoch
        TokenClassificationTask, lambda **kw: options(tiny_model_dir, tmp_path, train=train, epochs=2, **kw),
        tmp_path, monkeypatch)
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    assert json.loads((tmp_path / "b" / "config.json").read_text())["id2label"] == \
        json.loads((tmp_path / "a" / "config.json").read_text())["id2label"]


def test_class_weights_auto(tiny_model_dir, tmp_path):
    task = make_task(tiny_model_dir, tmp_path, class_weights="auto")
    w = task.class_weight
    assert w is not None and w.shape == (task.num_labels,)
    assert w[task.label2id["O"]] < w[task.label2id["B-person"]]  # O is the most frequent tag


def test_predict_refuses_table_options_for_plain_text(trained, tmp_path, cli):
    src = write(tmp_path / "t.txt", "hello\n")
    result = cli("predict", "--model", trained[0], src, "--delimiter", "tab", "--device", "cpu")
    assert result.exit_code == 1 and "--delimiter applies to CSV/TSV input" in result.stderr


# ------------------------------------------------------------ streaming (issue 21)
def test_predict_in_chunks_matches_one_chunk(trained, tmp_path, cli):
    """--chunk-size 2 gives the output of one chunk, in input order, for every output kind."""
    out, _, _ = trained
    lines = ["yesterday alice smith flew to new york .", "", "carol flew to rome", "bob jones flew to berlin .",
             "   ", "rome", "alice flew to tokyo yesterday", ""]
    src = write(tmp_path / "texts.txt", "\n".join(lines) + "\n")
    table = write(tmp_path / "t.csv", "id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(lines)))
    for inp, suffix in ((src, ".jsonl"), (src, ".tsv"), (table, ".jsonl"), (table, ".csv")):
        got = {}
        for size in ("2", "1000"):
            target = tmp_path / f"out-{size}{suffix}"
            r = cli("predict", "--model", out, inp, "--output", target, "--chunk-size", size, "--device", "cpu")
            assert r.exit_code == 0, r.output
            j = cli("predict", "--model", out, inp, "--json", "--quiet", "--chunk-size", size, "--device", "cpu")
            assert j.exit_code == 0, j.output
            got[size] = (target.read_text(), j.stdout)
        assert got["2"] == got["1000"]
    objs = [json.loads(x) for x in got["2"][1].splitlines()]
    assert [o["id"] for o in objs] == [str(i) for i in range(len(lines))]
    texts = [json.loads(x) for x in (tmp_path / "out-2.jsonl").read_text().splitlines()]
    assert texts and [o["id"] for o in texts] == [str(i) for i in range(len(lines))]


def test_entity_chunks_report_rows_done_of_total(trained, tmp_path):
    from bertcli.tasks.token_classification import entity_chunks, load_tagger, open_entity_input

    src = write(tmp_path / "texts.txt", "carol flew to rome\n\nbob flew to berlin\nalice\nrome\n")
    tagger = load_tagger(trained[0], "cpu")
    seen = []
    source, column = open_entity_input(str(src), text_column=None, delimiter=None, no_quoting=None,
                                       no_header=None, encoding="utf-8")
    with source:
        parts = list(entity_chunks(tagger, source, column, chunk_size=2, progress=lambda d, t: seen.append((d, t))))
    assert [p[1] for p in parts] == [[1], [3, 4], [5]]  # line numbers; the blank line 2 skipped
    assert {t for _, t in seen} == {5} and seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    whole = tagger.entities(["carol flew to rome", "bob flew to berlin", "alice", "rome"])[0]
    assert [e for p in parts for e in p[3]] == whole
