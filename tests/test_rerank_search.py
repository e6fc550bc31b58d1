"""search --rerank and evaluate-retrieval --rerank: the first stage's top documents reordered by the
cross-encoder (equal to sentence-transformers CrossEncoder.predict), the rest kept below."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_error_line
from test_rerank import ce_predict, make_hf_cross_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "cat dog bird fish market stock price river mountain music guitar piano code python rust tree".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, minilm_dir):
    import random

    from bertcli.retrieval.index import build_index

    d = tmp_path_factory.mktemp("rr")
    rng = random.Random(0)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    (d / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": WORDS[i % len(WORDS)] if i % 2 else "", "text": text(rng.randint(3, 15))})
        + "\n" for i in range(20)))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": text(3)}) + "\n" for i in range(4)))
    (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{3 * i}\t1\n" for i in range(4)))
    build_index([d / "corpus.jsonl"], tiny_model_dir, d / "idx", device="cpu", precision="fp32")
    make_hf_cross_encoder(d / "cross", minilm_dir)
    return d


def test_search_rerank_reorders_the_top_by_cross_scores(setup, cli):
    from bertcli.retrieval.beir import load_queries
    from bertcli.retrieval.index import open_index
    from bertcli.retrieval.search import search

    idx = open_index(setup / "idx")
    queries = load_queries(setup / "queries.jsonl")
    first = search(idx, queries, top_k=6, device="cpu", precision="fp32")
    result = cli("search", "--index", setup / "idx", "--queries", setup / "queries.jsonl", "--top-k", "3",
                 "--rerank", setup / "cross", "--rerank-top", "6", "--device", "cpu", "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["query_id"] for x in lines] == list(queries)
    pairs = [(queries[q], idx.text(d)) for q in queries for d in first[q]]
    refs = ce_predict(setup / "cross", pairs).reshape(len(queries), 6)  # one CrossEncoder load
    moved = 0
    for line, ref in zip(lines, refs, strict=True):
        qid = line["query_id"]
        cands = list(first[qid])
        want = [cands[i] for i in np.argsort(-ref, kind="stable")[:3]]
        assert [r["_id"] for r in line["results"]] == want
        np.testing.assert_allclose([r["score"] for r in line["results"]], np.sort(ref)[::-1][:3], atol=1e-5)
        moved += want != cands[:3]
    assert moved  # the cross-encoder changes some first-stage order


def test_evaluate_retrieval_rerank_equals_metrics_of_the_reranked_run(setup, cli):
    from bertcli.retrieval.beir import load_qrels, load_queries
    from bertcli.retrieval.index import open_index
    from bertcli.retrieval.metrics import evaluate
    from bertcli.retrieval.rerank import load_cross_encoder, rerank_run
    from bertcli.retrieval.search import search

    idx = open_index(setup / "idx")
    queries = load_queries(setup / "queries.jsonl")
    qrels = load_qrels(setup / "qrels.tsv")
    first = search(idx, queries, top_k=100, device="cpu", precision="fp32")
    cross = load_cross_encoder(setup / "cross", device="cpu", precision="fp32")
    run = rerank_run(cross, queries, first, idx.text, top=5, keep_rest=True)
    for qid, hits in run.items():  # the rest: first-stage order, below every reranked score
        order = list(hits)
        assert set(order[:5]) == set(list(first[qid])[:5]) and order[5:] == list(first[qid])[5:]
        assert min(list(hits.values())[:5]) > max(list(hits.values())[5:])
    want = evaluate(qrels, run)
    result = cli("evaluate-retrieval", "--index", setup / "idx", "--queries", setup / "queries.jsonl", "--qrels",
                 setup / "qrels.tsv", "--rerank", setup / "cross", "--rerank-top", "5", "--device", "cpu",
                 "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    for key in ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_rerank_option_errors(setup, cli, tmp_path):
    one_error_line(cli("search", "--index", setup / "idx", "cat dog", "--rerank", setup / "cross", "--rerank-top",
                       "0"), "--rerank-top must be at least 1")
    one_error_line(cli("evaluate-retrieval", "--index", setup / "idx", "--queries", setup / "queries.jsonl",
                       "--qrels", setup / "qrels.tsv", "--rerank", tmp_path / "nope"), "nope")
    one_error_line(cli("search", "--index", setup / "idx", "cat", "--rerank", setup / "idx"), "config.json")


def test_search_json_piped_into_rerank_equals_search_rerank(setup, cli):
    common = ("--index", setup / "idx", "--queries", setup / "queries.jsonl", "--device", "cpu", "--precision", "fp32",
              "--json")
    first = cli("search", *common, "--top-k", "6")
    assert first.exit_code == 0, first.output
    piped = cli("rerank", "--model", setup / "cross", "--input", "-", "--top-k", "3", "--device", "cpu",
                "--precision", "fp32", "--json", input=first.stdout)
    direct = cli("search", *common, "--top-k", "3", "--rerank", setup / "cross", "--rerank-top", "6")
    assert piped.exit_code == 0 and direct.exit_code == 0, piped.output + direct.output
    for p, d in zip(piped.stdout.splitlines(), direct.stdout.splitlines(), strict=True):
        p, d = json.loads(p), json.loads(d)
        assert p["qid"] == d["query_id"] and [r["id"] for r in p["results"]] == [r["_id"] for r in d["results"]]
        np.testing.assert_allclose([r["score"] for r in p["results"]], [r["score"] for r in d["results"]], atol=1e-6)
