"""Reranking with cross-encoders: parity with sentence-transformers CrossEncoder.predict, the rerank
command, rerank_run over a retrieval run, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line

PAIRS = [
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("what is the capital of france", "The Eiffel Tower is in Paris."),
    ("what is the capital of france", "Berlin is the capital of Germany."),
    ("who wrote hamlet", "Hamlet is a tragedy written by William Shakespeare."),
    ("who wrote hamlet", "a"),
    ("", "an empty query still scores"),
    ("a long query " * 20, "and a document that is far longer than the model's positions " * 30),  # truncated
]


def make_hf_cross_encoder(out: Path, tokenizer_dir: Path, num_labels: int = 1, seed: int = 0) -> Path:
    """A tiny random transformers BertForSequenceClassification (what CrossEncoder loads), saved with the
    MiniLM tokenizer; large initial weights, so that the scores of different pairs differ clearly."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=num_labels, initializer_range=0.3)
    model = BertForSequenceClassification(cfg)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def cross_dir(tmp_path_factory, minilm_dir) -> Path:
    return make_hf_cross_encoder(tmp_path_factory.mktemp("ce") / "one", minilm_dir)


@pytest.fixture(scope="module")
def cross_dir2(tmp_path_factory, minilm_dir) -> Path:
    return make_hf_cross_encoder(tmp_path_factory.mktemp("ce") / "two", minilm_dir, num_labels=2, seed=1)


def ce_predict(path: Path, pairs, **kwargs) -> np.ndarray:
    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(1)
    return np.asarray(CrossEncoder(str(path), device="cpu").predict(pairs, batch_size=4, **kwargs), dtype=np.float64)


def bertcli_scores(path: Path, pairs, **kwargs) -> np.ndarray:
    from bertcli.retrieval.rerank import load_cross_encoder, score

    cross = load_cross_encoder(path, device="cpu", precision="fp32", batch_tokens=256, **kwargs)
    out = score(cross, [q for q, _ in pairs], [d for _, d in pairs])
    assert cross.truncated == 1  # the last pair
    return out.astype(np.float64)


def test_one_output_equals_cross_encoder_predict(cross_dir, one_thread):
    ref = ce_predict(cross_dir, PAIRS)  # sigmoid of the logit, CrossEncoder's default for num_labels=1
    got = bertcli_scores(cross_dir, PAIRS)
    assert ref.std() > 0.05  # the pairs are told apart
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_two_labels_score_is_the_positive_probability(cross_dir2, one_thread):
    ref = ce_predict(cross_dir2, PAIRS, apply_softmax=True)
    np.testing.assert_allclose(bertcli_scores(cross_dir2, PAIRS), ref[:, 1], atol=1e-5, rtol=0)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(cross_dir2))
    cfg.id2label, cfg.label2id = {0: "no", 1: "yes"}, {"no": 0, "yes": 1}
    cfg.save_pretrained(str(cross_dir2))
    np.testing.assert_allclose(bertcli_scores(cross_dir2, PAIRS, positive_label="no"), ref[:, 0], atol=1e-5, rtol=0)


def test_saved_cross_encoder_activation_is_read(cross_dir, tmp_path, one_thread):
    """A CrossEncoder saved with activation_fn=Identity (config_sentence_transformers.json) scores raw logits."""
    import torch
    from sentence_transformers import CrossEncoder

    saved = tmp_path / "identity"
    CrossEncoder(str(cross_dir), device="cpu", activation_fn=torch.nn.Identity()).save(str(saved))
    ref = ce_predict(saved, PAIRS)
    assert ref.min() < 0 or ref.max() > 1  # logits, not probabilities
    np.testing.assert_allclose(bertcli_scores(saved, PAIRS), ref, atol=1e-5, rtol=0)


def test_rerank_command_orders_by_cross_encoder(cross_dir, cli, one_thread):
    query = PAIRS[0][0]
    docs = [d for q, d in PAIRS if q == query]
    ref = ce_predict(cross_dir, [(query, d) for d in docs])
    result = cli("rerank", "--model", cross_dir, "--query", query, *docs, "--device", "cpu", "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert [r["index"] for r in line["results"]] == list(np.argsort(-ref, kind="stable"))
    np.testing.assert_allclose([r["score"] for r in line["results"]], np.sort(ref)[::-1], atol=2e-6)
    assert [r["text"] for r in line["results"]] == [docs[i] for i in np.argsort(-ref, kind="stable")]


def test_rerank_candidates_file_top_k(cross_dir, cli, tmp_path, one_thread):
    path = tmp_path / "cand.jsonl"
    path.write_text(
        json.dumps({"qid": "q1", "query": PAIRS[0][0], "documents": [
            {"id": "d1", "text": PAIRS[0][1]}, {"id": "d2", "text": PAIRS[1][1]}, {"id": "d3", "text": PAIRS[2][1]}]})
        + "\n\n" + json.dumps({"query": PAIRS[3][0], "documents": [PAIRS[3][1], PAIRS[4][1]]}) + "\n")
    result = cli("rerank", "--model", cross_dir, "--input", path, "--top-k", "2", "--device", "cpu", "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    first, second = (json.loads(x) for x in result.stdout.splitlines())
    ref = ce_predict(cross_dir, PAIRS[:3])
    assert first["qid"] == "q1" and [r["id"] for r in first["results"]] == [f"d{i + 1}" for i in np.argsort(-ref)[:2]]
    assert second["qid"] == "3" and len(second["results"]) == 2  # qid: the line number


def test_rerank_run_reorders_the_top_documents(cross_dir, one_thread):
    from bertcli.retrieval.rerank import load_cross_encoder, rerank_run

    query = PAIRS[0][0]
    corpus = {f"d{i}": d for i, (_, d) in enumerate(PAIRS)}
    run = {"q": {f"d{i}": 1.0 - i / 10 for i in range(len(PAIRS))}}  # first stage: d0 > d1 > ... > d6
    cross = load_cross_encoder(cross_dir, device="cpu", precision="fp32")
    out = rerank_run(cross, {"q": query}, run, corpus, top=4)
    ref = ce_predict(cross_dir, [(query, corpus[f"d{i}"]) for i in range(4)])
    assert list(out["q"]) == [f"d{i}" for i in np.argsort(-ref, kind="stable")]  # only the top 4, by cross score
    np.testing.assert_allclose([out["q"][f"d{i}"] for i in range(4)], ref, atol=1e-5)
    assert rerank_run(cross, {"q": query}, run, corpus.__getitem__, top=4) == out  # a function for the texts


def test_rerank_run_bad_input(cross_dir, one_thread):
    from bertcli.errors import ConfigError, DataError
    from bertcli.retrieval.rerank import load_cross_encoder, rerank_run

    cross = load_cross_encoder(cross_dir, device="cpu", precision="fp32")
    with pytest.raises(DataError, match="query 'q2' of the run has no text"):
        rerank_run(cross, {"q": "x"}, {"q2": {"d": 1.0}}, {"d": "y"})
    with pytest.raises(DataError, match="document 'nope' of the run is not in the corpus"):
        rerank_run(cross, {"q": "x"}, {"q": {"nope": 1.0}}, {"d": "y"})
    with pytest.raises(ConfigError, match="--rerank-top must be at least 1"):
        rerank_run(cross, {"q": "x"}, {"q": {"d": 1.0}}, {"d": "y"}, top=0)
    with pytest.raises(ConfigError, match="--positive-label applies to classifiers"):
        load_cross_encoder(cross_dir, device="cpu", positive_label="yes")


@pytest.mark.parametrize("line, needle", [
    ({"qid": "q", "documents": ["x"]}, "line 1: no 'query' field"),
    ({"query": "q"}, "line 1: no 'documents' field"),
    ({"query": 3, "documents": []}, "'query' must be a string"),
    ({"query": "q", "documents": "x"}, "'documents' must be a list"),
    ({"query": "q", "documents": [{"id": "d"}]}, "documents[0]: a document object needs a string 'text'"),
])
def test_rerank_command_bad_candidates(cross_dir, cli, tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(line) + "\n")
    one_error_line(cli("rerank", "--model", cross_dir, "--input", path, "--device", "cpu"), str(path), needle)


def test_rerank_command_usage_errors(cross_dir, cli, tmp_path):
    one_error_line(cli("rerank", "--model", cross_dir, "doc"), "give --query with DOCUMENTS, or --input")
    one_error_line(cli("rerank", "--model", cross_dir, "--query", "q"), "--query needs DOCUMENTS")
    one_error_line(cli("rerank", "--model", tmp_path, "--query", "q", "d"), "no config.json")


def test_search_json_lines_are_candidates(tmp_path):
    """``bertcli search --json`` output (query_id, results with _id / title / text) reads as candidates."""
    from bertcli.retrieval.rerank import read_candidates

    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"query_id": "q9", "query": "who", "results": [
        {"rank": 1, "_id": "d1", "score": 0.5, "title": "Hamlet", "text": "a play"},
        {"rank": 2, "_id": 7, "score": 0.4, "title": "", "text": "no title"}]}) + "\n")
    (c,) = read_candidates(path)
    assert (c.qid, c.query, c.doc_ids, c.documents) == ("q9", "who", ["d1", "7"], ["Hamlet a play", "no title"])


def test_rerank_documents_from_stdin(cross_dir, cli, one_thread):
    result = cli("rerank", "--model", cross_dir, "--query", PAIRS[3][0], "-", "--device", "cpu", "--precision", "fp32",
                 "--json", input=f"{PAIRS[3][1]}\n\n{PAIRS[4][1]}\n")
    assert result.exit_code == 0, result.output
    ref = ce_predict(cross_dir, PAIRS[3:5])
    got = {r["text"]: r["score"] for r in json.loads(result.stdout)["results"]}
    assert got == pytest.approx({PAIRS[3][1]: ref[0], PAIRS[4][1]: ref[1]}, abs=2e-6)


@pytest.mark.gpu
def test_cuda_scores_equal_the_cpu(cross_dir):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from bertcli.retrieval.rerank import load_cross_encoder, score

    qs, ds = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    cpu = score(load_cross_encoder(cross_dir, device="cpu", precision="fp32"), qs, ds)
    np.testing.assert_allclose(score(load_cross_encoder(cross_dir, device="cuda", precision="fp32"), qs, ds), cpu,
                               atol=1e-4)
    np.testing.assert_allclose(score(load_cross_encoder(cross_dir, device="cuda", precision="bf16"), qs, ds), cpu,
                               atol=3e-2)
