"""IR metrics: hand-computed cases (ties, graded judgements, missing queries) and parity with
sentence-transformers' InformationRetrievalEvaluator on random runs with ties, and end to end on SQuAD with
all-MiniLM-L6-v2."""

from __future__ import annotations

import math
import random

import pytest

from bertcli.retrieval.metrics import evaluate, rank


def test_ties_rank_by_id_ascending():
    assert rank({"b": 0.5, "a": 0.5, "c": 0.9, "d": 0.1}) == ["c", "a", "b", "d"]


def test_hand_case_with_ties():
    qrels = {"q": {"a": 1, "c": 1, "x": 0}}
    run = {"q": {"b": 0.9, "c": 0.5, "a": 0.5, "d": 0.1}}  # ranking b, a, c, d
    r = evaluate(qrels, run, k_values=[1, 2, 3, 10])
    assert r["queries"] == 1
    assert r["mrr@10"] == pytest.approx(1 / 2)
    assert r["recall@1"] == 0 and r["recall@2"] == pytest.approx(0.5) and r["recall@3"] == 1
    assert r["precision@3"] == pytest.approx(2 / 3) and r["precision@10"] == pytest.approx(0.2)
    assert r["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert r["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / 2) / (1 + 1 / math.log2(3)))
    assert r["map@10"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["accuracy@1"] == 0 and r["accuracy@2"] == 1
    # the tie decides: only "c" relevant, "a" ranks before it
    r = evaluate({"q": {"c": 1}}, {"q": {"c": 0.5, "a": 0.5}}, k_values=[1, 10])
    assert (r["mrr@10"], r["recall@1"]) == (0.5, 0.0)


def test_graded_missing_and_unjudged_queries():
    qrels = {"q1": {"x": 2, "y": 1}, "q2": {"z": 1}, "q3": {"w": 0}}
    run = {"q1": {"y": 0.9, "x": 0.8, "n": 0.7}}  # q2 absent from the run, q3 has no relevant document
    r = evaluate(qrels, run, k_values=[10])
    assert r["queries"] == 2 and set(r["per_query"]) == {"q1", "q2"}
    ndcg_q1 = (1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3))
    assert r["per_query"]["q1"]["ndcg@10"] == pytest.approx(ndcg_q1)
    assert r["per_query"]["q2"] == {k: 0.0 for k in r["per_query"]["q2"]}
    assert r["ndcg@10"] == pytest.approx(ndcg_q1 / 2)
    assert r["map@10"] == pytest.approx((1 + 1) / 2 / 2)


def _st_evaluator(queries, corpus, relevant, ks):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.util import cos_sim

    return InformationRetrievalEvaluator(queries, corpus, relevant, mrr_at_k=ks, ndcg_at_k=ks, accuracy_at_k=ks,
                                         precision_recall_at_k=ks, map_at_k=ks, write_csv=False,
                                         score_functions={"cosine": cos_sim})


NAMES = {"ndcg": "ndcg@k", "mrr": "mrr@k", "map": "map@k", "recall": "recall@k", "precision": "precision@k",
         "accuracy": "accuracy@k"}


def test_equals_sentence_transformers_on_random_runs_with_ties():
    pytest.importorskip("sentence_transformers")
    rng = random.Random(0)
    docs = [f"d{i:03d}" for i in range(150)]
    qids = [f"q{i}" for i in range(60)]
    qrels = {q: {d: 1 for d in rng.sample(docs, rng.randint(1, 8))} for q in qids}
    # scores on a coarse grid: many ties, at the cut-offs too
    run = {q: {d: round(rng.random(), 1) for d in rng.sample(docs, rng.randint(5, 120))} for q in qids}
    ks = [1, 3, 5, 10, 100]
    ev = _st_evaluator({q: q for q in qids}, {d: d for d in docs}, {q: set(j) for q, j in qrels.items()}, ks)
    st = ev.compute_metrics([[{"corpus_id": d, "score": s} for d, s in run[q].items()] for q in ev.queries_ids])
    ours = evaluate(qrels, run, k_values=ks)
    for m, key in NAMES.items():
        for k in ks:
            assert abs(ours[f"{m}@{k}"] - float(st[key][k])) <= 1e-6, (m, k)


def test_squad_minilm_equals_sentence_transformers_evaluator(shared_data, minilm_dir, tmp_path, one_thread):
    """One SQuAD article end to end: bertcli index + search + metrics vs the evaluator with SentenceTransformer."""
    st_mod = pytest.importorskip("sentence_transformers")
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    from make_squad_beir import build

    from bertcli.retrieval.beir import doc_text, iter_corpus, load_qrels, load_queries
    from bertcli.retrieval.index import build_index
    from bertcli.retrieval.search import search

    full = tmp_path / "full"
    build(shared_data / "squad" / "squad-v1.1-dev-articles-00-39.json", full)
    keep = ("30-",)  # one test article: corpus and queries cut to it
    corpus = [d for d in iter_corpus(full / "corpus.jsonl") if d["_id"].startswith(keep)]
    small = tmp_path / "corpus.jsonl"
    small.write_text("".join(__import__("json").dumps(d) + "\n" for d in corpus))
    qrels = {q: j for q, j in load_qrels(full / "qrels" / "test.tsv").items() if next(iter(j)).startswith(keep)}
    queries = load_queries(full / "queries.jsonl")
    queries = {q: queries[q] for q in qrels}
    build_index([small], minilm_dir, tmp_path / "idx", device="cpu", precision="fp32")
    run = search(tmp_path / "idx", queries, top_k=100, device="cpu", precision="fp32")
    ours = evaluate(qrels, run)
    ks = [1, 3, 5, 10, 100]
    ev = _st_evaluator(queries, {d["_id"]: doc_text(d) for d in corpus}, {q: set(j) for q, j in qrels.items()}, ks)
    st = ev.compute_all_metrics(st_mod.SentenceTransformer(str(minilm_dir), device="cpu"))["cosine"]
    assert ours["queries"] == len(qrels) > 30
    for m, key in NAMES.items():
        for k in ks:
            assert abs(ours[f"{m}@{k}"] - float(st[key][k])) <= 1e-6, (m, k, ours[f"{m}@{k}"], st[key][k])
