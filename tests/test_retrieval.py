"""bertcli index / search / evaluate-retrieval on a tiny model: the index format, exact search, append, resume,
duplicate ids, inputs and the bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_tiny_model, one_error_line

WORDS = ("cat dog bird fish market stock price river mountain music guitar piano code python rust tree "
         "forest rain snow sun moon star planet ocean ship train car road city village").split()


def _docs(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    rows = [{"_id": f"d{i}", "title": (WORDS[i % len(WORDS)] if i % 3 else ""), "text": t}
            for i, t in enumerate(_docs(23))]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "more.jsonl").write_text("".join(json.dumps({"_id": f"m{i}", "text": t}) + "\n"
                                          for i, t in enumerate(_docs(9, 1))))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                                             for i, t in enumerate(_docs(5, 2))))
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{2 * i}\t1\n" for i in range(5)))
    return d


@pytest.fixture(scope="module")
def built(corpus, tiny_model_dir, tmp_path_factory) -> Path:
    from bertcli.retrieval.index import build_index

    out = tmp_path_factory.mktemp("idx") / "idx"
    build_index([corpus / "corpus.jsonl"], tiny_model_dir, out, chunk_size=7, device="cpu", precision="fp32")
    return out


def test_index_layout_and_manifest(built, tiny_model_dir):
    from bertcli.retrieval.index import model_fingerprint, open_index

    idx = open_index(built)
    m = idx.manifest
    assert (m["count"], m["dim"], m["dtype"], m["pooling"], m["normalize"]) == (23, 32, "fp32", "mean", True)
    assert m["model_fingerprint"] == model_fingerprint(tiny_model_dir) and "pending" not in m
    assert [s["count"] for s in m["shards"]] == [7, 7, 7, 2]
    assert idx.ids == [f"d{i}" for i in range(23)]
    assert idx.vectors().shape == (23, 32)
    assert idx.document("d1")["title"] == WORDS[1] and idx.text("d0") == idx.document("d0")["text"].strip()
    assert idx.text("d1") == f"{WORDS[1]} {idx.document('d1')['text']}".strip()


def test_vectors_equal_embed_of_title_and_text(built, tiny_model_dir):
    import torch

    from bertcli.embed import encode
    from bertcli.retrieval.index import open_index

    idx = open_index(built)
    ref = encode([idx.text(i) for i in idx.ids], tiny_model_dir, device="cpu", precision="fp32")
    torch.testing.assert_close(idx.vectors(), ref, atol=1e-5, rtol=0)


def test_exact_search_equals_brute_force_cosine(built, corpus, tiny_model_dir):
    import torch

    from bertcli.embed import encode
    from bertcli.retrieval.beir import load_queries
    from bertcli.retrieval.index import open_index
    from bertcli.retrieval.search import search, search_vectors

    idx = open_index(built)
    queries = load_queries(corpus / "queries.jsonl")
    run = search(idx, queries, top_k=5, device="cpu", precision="fp32")
    q = encode(list(queries.values()), tiny_model_dir, device="cpu", precision="fp32")
    sims = q @ idx.vectors().T
    for row, hits in enumerate(run.values()):
        order = sorted(range(23), key=lambda j: -float(sims[row, j]))[:5]
        assert list(hits) == [idx.ids[j] for j in order]
        assert list(hits.values()) == pytest.approx([float(sims[row, j]) for j in order], abs=1e-5)
    # query blocks smaller than the query count: the same top-k
    s1, r1 = search_vectors(idx, q, 4)
    s2, r2 = search_vectors(idx, q, 4, query_block=2)
    assert torch.equal(r1, r2) and torch.allclose(s1, s2)


def test_fp16_index_and_prefixes(corpus, tiny_model_dir, tmp_path):
    import torch

    from bertcli.checkpoint import read_safetensors_header
    from bertcli.embed import encode
    from bertcli.retrieval.index import build_index, open_index
    from bertcli.retrieval.search import encode_queries

    out = tmp_path / "idx16"
    build_index([corpus / "corpus.jsonl"], tiny_model_dir, out, dtype="fp16", doc_prefix="passage: ",
                query_prefix="query: ", device="cpu", precision="fp32")
    idx = open_index(out)
    assert read_safetensors_header(out / idx.manifest["shards"][0]["vectors"])["embeddings"]["dtype"] == "F16"
    ref = encode(["passage: " + idx.text(i) for i in idx.ids], tiny_model_dir, device="cpu", precision="fp32")
    torch.testing.assert_close(idx.vectors(), ref, atol=2e-3, rtol=0)
    q = encode_queries(idx, ["cat"], device="cpu", precision="fp32")
    torch.testing.assert_close(q, encode(["query: cat"], tiny_model_dir, device="cpu", precision="fp32"))


def test_append_equals_one_build(corpus, tiny_model_dir, tmp_path):
    import torch

    from bertcli.retrieval.index import build_index, open_index

    build_index([corpus / "corpus.jsonl", corpus / "more.jsonl"], tiny_model_dir, tmp_path / "one", chunk_size=5,
                device="cpu", precision="fp32")
    build_index([corpus / "corpus.jsonl"], tiny_model_dir, tmp_path / "two", chunk_size=5, device="cpu",
                precision="fp32")
    s = build_index([corpus / "more.jsonl"], tiny_model_dir, tmp_path / "two", chunk_size=5, device="cpu",
                    precision="fp32")
    assert (s.added, s.count) == (9, 32)
    one, two = open_index(tmp_path / "one"), open_index(tmp_path / "two")
    assert one.ids == two.ids
    torch.testing.assert_close(one.vectors(), two.vectors(), atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="--dtype fp16: the index .* has dtype 'fp32'"):
        build_index([corpus / "more.jsonl"], tiny_model_dir, tmp_path / "two", dtype="fp16", device="cpu")


def test_resume_after_kill_embeds_only_the_rest(corpus, tiny_model_dir, tmp_path, monkeypatch):
    import torch

    import bertcli.retrieval.index as index_mod
    from bertcli.retrieval.index import build_index, open_index, read_manifest

    original = index_mod._write_shard
    calls = {"n": 0}

    def dying(directory, k, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while writing the third shard
        return original(directory, k, *args, **kwargs)

    monkeypatch.setattr(index_mod, "_write_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        build_index([corpus / "corpus.jsonl"], tiny_model_dir, tmp_path / "idx", chunk_size=5, device="cpu",
                    precision="fp32")
    m = read_manifest(tmp_path / "idx")
    assert m["count"] == 10 and m["pending"]["first_shard"] == 0
    assert open_index(tmp_path / "idx").ids == [f"d{i}" for i in range(10)]  # usable as it is
    monkeypatch.setattr(index_mod, "_write_shard", original)
    # a different input cannot resume it
    with pytest.raises(Exception, match="interrupted build of other inputs"):
        build_index([corpus / "more.jsonl"], tiny_model_dir, tmp_path / "idx", device="cpu")
    s = build_index([corpus / "corpus.jsonl"], tiny_model_dir, tmp_path / "idx", chunk_size=99, device="cpu",
                    precision="fp32")
    assert (s.resumed, s.added, s.count) == (10, 13, 23)
    assert "pending" not in read_manifest(tmp_path / "idx")
    build_index([corpus / "corpus.jsonl"], tiny_model_dir, tmp_path / "ref", chunk_size=5, device="cpu",
                precision="fp32")
    a, b = open_index(tmp_path / "idx"), open_index(tmp_path / "ref")
    assert a.ids == b.ids and [s["count"] for s in a.manifest["shards"]] == [5, 5, 5, 5, 3]
    torch.testing.assert_close(a.vectors(), b.vectors(), atol=1e-5, rtol=0)


def test_duplicate_ids_are_named(corpus, tiny_model_dir, tmp_path, built):
    from bertcli.errors import DataError
    from bertcli.retrieval.index import build_index

    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"_id": "a", "text": "x"}\n{"_id": "b", "text": "y"}\n{"_id": "a", "text": "z"}\n')
    with pytest.raises(DataError, match="duplicate document id.*'a'"):
        build_index([dup], tiny_model_dir, tmp_path / "i", device="cpu")
    assert not (tmp_path / "i" / "manifest.json").exists()
    with pytest.raises(DataError, match="'d3'.* are in the index already"):
        again = tmp_path / "again.jsonl"
        again.write_text('{"_id": "new", "text": "x"}\n{"_id": "d3", "text": "y"}\n')
        build_index([again], tiny_model_dir, built, device="cpu")


def test_text_files_tables_and_directories(tiny_model_dir, tmp_path):
    from bertcli.retrieval.beir import iter_corpus
    from bertcli.retrieval.index import build_index, open_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first line\n\nthird line\n")
    (docs / "b.csv").write_text("key,question,answer\nk1,what?,this\nk2,why?,that\n")
    got = list(iter_corpus(docs / "b.csv", id_column="key", text_column="answer", title_column="question"))
    assert got == [{"_id": "k1", "title": "what?", "text": "this"}, {"_id": "k2", "title": "why?", "text": "that"}]
    lines = list(iter_corpus(docs / "a.txt"))
    assert [d["_id"] for d in lines] == [f"{docs / 'a.txt'}:1", f"{docs / 'a.txt'}:3"]
    (docs / "b.csv").unlink()
    (docs / "c.tsv").write_text("id\ttext\n7\tseven\n")
    build_index([docs], tiny_model_dir, tmp_path / "idx", device="cpu")
    assert open_index(tmp_path / "idx").ids == [f"{docs / 'a.txt'}:1", f"{docs / 'a.txt'}:3", "7"]


def test_qrels_and_queries_formats(tmp_path):
    from bertcli.retrieval.beir import load_qrels, load_queries

    (tmp_path / "q.txt").write_text("first query\n\nsecond\n")
    assert load_queries(tmp_path / "q.txt") == {"1": "first query", "3": "second"}
    (tmp_path / "q.tsv").write_text("qid\tquestion\n1\twho?\n2\twhat?\n")
    assert load_queries(tmp_path / "q.tsv") == {"1": "who?", "2": "what?"}
    (tmp_path / "trec.txt").write_text("1 0 d1 2\n1 0 d2 0\n2 0 d3 1\n")
    assert load_qrels(tmp_path / "trec.txt") == {"1": {"d1": 2, "d2": 0}, "2": {"d3": 1}}
    (tmp_path / "bad.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tx1\n")
    with pytest.raises(Exception, match=r"bad.tsv, line 2: relevance 'x1' is not an integer"):
        load_qrels(tmp_path / "bad.tsv")


# ---------------------------------------------------------------- the CLI
def test_cli_index_search_evaluate(cli, corpus, tiny_model_dir, tmp_path):
    res = cli("index", "--model", tiny_model_dir, corpus / "corpus.jsonl", "--out", tmp_path / "idx", "--device",
              "cpu", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["count"] == 23
    res = cli("search", "--index", tmp_path / "idx", "cat dog", "--top-k", "3", "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    line = json.loads(res.stdout)
    assert line["query"] == "cat dog" and [r["rank"] for r in line["results"]] == [1, 2, 3]
    res = cli("evaluate-retrieval", "--index", tmp_path / "idx", "--queries", corpus / "queries.jsonl", "--qrels",
              corpus / "qrels.tsv", "--json", "--device", "cpu")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["queries"] == 5 and set(out["per_query"]) == {f"q{i}" for i in range(5)}
    assert 0 <= out["ndcg@10"] <= 1 and out["recall@100"] == 1.0  # 23 documents: all retrieved


def test_cli_bad_inputs_one_line_each(cli, corpus, built, tmp_path, minilm_dir):
    import shutil

    res = cli("search", "--index", built, "--queries", corpus / "queries.jsonl", "--query-id-column", "nope")
    one_error_line(res, "queries.jsonl", "no column 'nope'")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tzzz\t1\n")
    res = cli("evaluate-retrieval", "--index", built, "--queries", corpus / "queries.jsonl", "--qrels",
              tmp_path / "qrels.tsv")
    one_error_line(res, "qrels.tsv", "'zzz'", "not in the index")
    res = cli("search", "--index", built, "--model", minilm_dir, "cat")
    one_error_line(res, "--model", "built with another model")
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    (broken / "manifest.json").write_text('{"format": "bertcli-index", "version": 1, "count": ')
    res = cli("search", "--index", broken, "cat")
    one_error_line(res, "manifest.json", "invalid JSON", "corrupt")
    manifest = json.loads((built / "manifest.json").read_text())
    manifest["dim"] = "32"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    one_error_line(cli("search", "--index", broken, "cat"), "field 'dim'")
    (broken / "manifest.json").write_text((built / "manifest.json").read_text())
    (broken / "shard-00001.safetensors").write_bytes(b"\x08\x00\x00")
    one_error_line(cli("search", "--index", broken, "cat"), "shard-00001.safetensors", "corrupt")
    res = cli("index", "--model", minilm_dir, corpus / "more.jsonl", "--out", built)
    one_error_line(res, "--model", "another model")
    res = cli("index", "--model", minilm_dir, corpus / "corpus.jsonl", "--out", tmp_path / "x", "--id-column", "key")
    one_error_line(res, "corpus.jsonl", "no column 'key'")


def test_another_model_copy_matches(built, tiny_model_dir, tmp_path):
    import shutil

    from bertcli.retrieval.index import check_model, open_index

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    assert check_model(open_index(built), copy) == str(copy)
    other = make_tiny_model(tmp_path / "other", Path(tiny_model_dir), seed=1)
    with pytest.raises(Exception, match="built with another model"):
        check_model(open_index(built), other)


def test_mine_negatives_skips_positives_and_trains_mnrl(cli, corpus, built, tmp_path):
    import csv

    from bertcli.retrieval.beir import load_qrels, load_queries
    from bertcli.retrieval.negatives import mine_negatives
    from bertcli.retrieval.search import search

    queries = load_queries(corpus / "queries.jsonl")
    qrels = load_qrels(corpus / "qrels.tsv")
    qrels["q0"]["d5"] = 2  # two positives for q0, the higher one first
    rows = mine_negatives(built, queries, qrels, per_query=3, skip_top=1, device="cpu", precision="fp32")
    assert len(rows) == 15
    run = search(built, queries, top_k=10, device="cpu", precision="fp32")
    for qid in queries:
        mine = [r for r in rows if r["query_id"] == qid]
        expected = [d for d in run[qid] if d not in qrels[qid]][1:4]
        assert [r["negative_id"] for r in mine] == expected
        assert all(r["positive_id"] in qrels[qid] and r["query"] == queries[qid] for r in mine)
    assert [r["positive_id"] for r in rows if r["query_id"] == "q0"] == ["d5", "d0", "d5"]
    res = cli("mine-negatives", "--index", built, "--queries", corpus / "queries.jsonl", "--qrels",
              corpus / "qrels.tsv", "--out", tmp_path / "triples.csv", "--per-query", "2", "--device", "cpu")
    assert res.exit_code == 0, res.output
    with open(tmp_path / "triples.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 10 and list(table[0])[:3] == ["query", "positive", "negative"]
    from conftest import finetune_cli

    summary = finetune_cli("--model", _model_of(built),
                           "--task", "sentence-embedding", "--loss", "mnrl", "--train", tmp_path / "triples.csv",
                           "--text-column", "query", "--text-pair-column", "positive", "--negative-column",
                           "negative", "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "mnrl")
    assert summary["examples"]["train"] == 10


def _model_of(index_dir: Path) -> str:
    return json.loads((index_dir / "manifest.json").read_text())["model"]


def test_documents_read_by_shard(built):
    from bertcli.retrieval.index import open_index

    idx = open_index(built)
    assert idx.document("d22")["_id"] == "d22" and idx.document("d7")["_id"] == "d7"
    assert sorted(idx._shard_docs) == [1, 3] and idx._docs is None  # only the shards holding them were read
    assert all(idx.document(i) == open_index(built).documents()[i] for i in idx.ids)
    with pytest.raises(KeyError):
        idx.document("nope")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_search_on_cuda_equals_cpu(built, corpus):
    from bertcli.retrieval.beir import load_queries
    from bertcli.retrieval.search import search

    queries = load_queries(corpus / "queries.jsonl")
    gpu = search(built, queries, top_k=5, device="cuda", precision="fp32")
    cpu = search(built, queries, top_k=5, device="cpu", precision="fp32")
    assert [list(h) for h in gpu.values()] == [list(h) for h in cpu.values()]
    for q in cpu:
        assert list(gpu[q].values()) == pytest.approx(list(cpu[q].values()), abs=1e-4)
