"""bertcli serve on tiny models of every task: a real uvicorn server on a free loopback port, real HTTP.

Every route's answer is checked against the library function it serves (encode, similarity,
predict_table, Tagger.entities, QuestionAnswerer.answer); then the errors: 401, 404, 413, 422, 503.
"""

from __future__ import annotations

import base64
import re
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="install the serve extra")
httpx = pytest.importorskip("httpx", reason="install the dev extra")

from serve_util import ServerThread, tiny_task_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["A man is playing a guitar.", "A dog runs in the park.", "", "Ünïcödé text 日本語 and emoji 🙂"]


@pytest.fixture(scope="module")
def embed_server(tiny_model_dir):
    with ServerThread(model=str(tiny_model_dir), max_request_texts=8, max_request_bytes=4000) as s:
        yield s


@pytest.fixture(scope="module")
def task_dirs(minilm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    return {
        "classification": tiny_task_model(d / "clf", minilm_dir, "classification", labels=["neg", "pos"],
                                          bertcli={"text_column": "review"}),
        "pairs": tiny_task_model(d / "pairs", minilm_dir, "classification", labels=["different", "paraphrase"],
                                 bertcli={"text_column": "a", "text_pair_column": "b"}),
        "regression": tiny_task_model(d / "reg", minilm_dir, "regression",
                                      bertcli={"text_column": "a", "text_pair_column": "b"}),
        "tagger": tiny_task_model(d / "ner", minilm_dir, "token-classification",
                                  labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], seed=3),
        "qa": tiny_task_model(d / "qa", minilm_dir, "question-answering",
                              bertcli={"max_length": 48, "doc_stride": 16, "max_query_length": 12,
                                       "max_answer_length": 10, "n_best": 5, "null_threshold": 0.0}),
    }


def post(server, path, body=None, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


def error_of(resp, status: int, param: str | None = None) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    err = resp.json()["error"]
    assert err["code"] == status
    if param is not None:
        assert err["param"] == param, err
    return err["message"]


# ------------------------------------------------------------ embedding model
def test_embedding_routes_equal_the_library(embed_server, tiny_model_dir):
    from bertcli.embed import encode, similarity

    want = encode(TEXTS, str(tiny_model_dir), device="cpu", precision="fp32").numpy()
    r = post(embed_server, "/embed", {"texts": TEXTS})
    assert r.status_code == 200, r.text
    body = r.json()
    got = np.array(body["embeddings"], dtype=np.float32)
    assert got.shape == want.shape and body["dim"] == want.shape[1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert body["tokens"] > len(TEXTS) and body["truncated"] == 0

    r = post(embed_server, "/v1/embeddings", {"input": TEXTS[0], "model": "anything", "encoding_format": "base64"})
    data = r.json()
    assert data["object"] == "list" and data["model"] == "anything" and len(data["data"]) == 1
    vec = np.frombuffer(base64.b64decode(data["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(vec, want[0], atol=1e-5)
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 2

    r = post(embed_server, "/similarity", {"a": TEXTS[0], "b": TEXTS[1]})
    assert r.json()["scores"] == pytest.approx(similarity(want[0], want[1]), abs=1e-5)
    r = post(embed_server, "/similarity", {"a": TEXTS[:2], "b": TEXTS[1:4]})
    np.testing.assert_allclose(r.json()["scores"], similarity(want[:2], want[1:4]), atol=1e-5)
    r = post(embed_server, "/similarity", {"a": TEXTS[:2], "b": TEXTS[2:4], "pairwise": True})
    np.testing.assert_allclose(r.json()["scores"], similarity(want[:2], want[2:4], pairwise=True), atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_rows(embed_server, tiny_model_dir):
    from bertcli.embed import encode

    texts = [f"sentence number {i} " + "word " * (i % 7) for i in range(24)]
    want = encode(texts, str(tiny_model_dir), device="cpu", precision="fp32").numpy()
    got: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        got[i] = np.array(post(embed_server, "/embed", {"texts": texts[i:i + 3]}).json()["embeddings"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(0, 24, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, rows in got.items():
        np.testing.assert_allclose(rows, want[i:i + 3], atol=1e-5)
    metrics = httpx.get(embed_server.url + "/metrics").text
    count = float(re.search(r"^bertcli_batch_texts_count (\S+)", metrics, re.M).group(1))
    total = float(re.search(r"^bertcli_batch_texts_sum (\S+)", metrics, re.M).group(1))
    assert total >= 24 and count >= 1


def test_info_health_metrics_docs(embed_server):
    info = httpx.get(embed_server.url + "/info").json()
    assert info["task"] == "embedding"
    assert info["routes"] == ["/v1/embeddings", "/embed", "/similarity"]
    assert httpx.get(embed_server.url + "/health").json() == {"status": "ok"}
    post(embed_server, "/embed", {"texts": ["metrics please"]})
    text = httpx.get(embed_server.url + "/metrics").text
    for name in ("bertcli_requests_total", "bertcli_request_seconds_bucket", "bertcli_queue_texts",
                 "bertcli_batch_tokens_bucket", "bertcli_tokens_total", "bertcli_truncated_texts_total"):
        assert name in text, name
    assert 'route="/embed",status="200"' in text
    spec = httpx.get(embed_server.url + "/openapi.json").json()
    assert set(spec["paths"]) >= {"/v1/embeddings", "/embed", "/similarity", "/info"}
    assert "/predict" not in spec["paths"] and "/search" not in spec["paths"]
    assert httpx.get(embed_server.url + "/docs").status_code == 200


def test_errors_are_the_clients_never_500(embed_server):
    s = embed_server
    assert "texts" in error_of(post(s, "/embed", {}), 422, "texts")
    error_of(post(s, "/embed", {"texts": ["ok", 3]}), 422, "texts[1]")
    assert "string or a list" in error_of(post(s, "/embed", {"texts": 5}), 422, "texts")
    error_of(post(s, "/embed", {"texts": []}), 422, "texts")
    error_of(post(s, "/embed", {"texts": ["a"], "pooling": "cls"}), 422, "pooling")
    assert "token arrays" in error_of(post(s, "/v1/embeddings", {"input": [[1, 2, 3]], "model": "m"}), 422, "input[0]")
    assert "JSON object" in error_of(post(s, "/embed", [1, 2]), 422, "body")
    error_of(httpx.post(s.url + "/embed", content=b'{"texts": ["a"]}', headers={"content-type": "text/plain"}), 422,
             "body")
    # lone surrogates and NUL characters are text like any other
    lone = httpx.post(s.url + "/embed", content=b'{"texts": ["\\ud800 x", "a\\u0000b"]}',
                      headers={"content-type": "application/json"})
    assert lone.status_code == 200 and len(lone.json()["embeddings"]) == 2
    error_of(post(s, "/v1/embeddings", {"input": "a", "encoding_format": "int8"}), 422, "encoding_format")
    assert "--allow-dimensions" in error_of(post(s, "/v1/embeddings", {"input": "a", "dimensions": 8}), 422,
                                            "dimensions")
    error_of(post(s, "/v1/embeddings", {"input": "a", "dimensions": 10_000}), 422, "dimensions")
    assert "--max-request-texts" in error_of(post(s, "/embed", {"texts": ["a"] * 9}), 413, "texts")
    assert "--max-request-bytes" in error_of(post(s, "/embed", {"texts": ["x" * 5000]}), 413, "body")
    bad = httpx.post(s.url + "/embed", content=b'{"texts": ["a",', headers={"content-type": "application/json"})
    assert "JSON" in error_of(bad, 422, "body")
    assert "/embed" in error_of(post(s, "/answer", {"question": "q", "context": "c"}), 404)
    error_of(post(s, "/search", {"query": "q"}), 404)
    error_of(httpx.get(s.url + "/embed"), 405)
    # a text over the model's length is truncated and counted
    r = post(s, "/embed", {"texts": ["word " * 400, "short"]})
    assert r.json()["truncated"] == 1 and r.headers["x-truncated-texts"] == "1"
    assert "bertcli_requests_total" in httpx.get(s.url + "/metrics").text
    assert 'status="500"' not in httpx.get(s.url + "/metrics").text


def test_no_truncate_refuses_long_texts_with_413(tiny_model_dir):
    with ServerThread(model=str(tiny_model_dir), truncate=False) as s:
        msg = error_of(post(s, "/embed", {"texts": ["short", "word " * 400]}), 413, "texts[1]")
        assert "--no-truncate" in msg and "128" in msg
        assert post(s, "/embed", {"texts": ["short"]}).status_code == 200


def test_api_key(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("BERTCLI_API_KEY", "s3cret")
    with ServerThread(model=str(tiny_model_dir)) as s:
        r = post(s, "/embed", {"texts": ["a"]})
        assert error_of(r, 401, "authorization") and r.headers["www-authenticate"] == "Bearer"
        error_of(post(s, "/embed", {"texts": ["a"]}, headers={"Authorization": "Bearer wrong"}), 401)
        error_of(httpx.get(s.url + "/info"), 401)
        assert post(s, "/embed", {"texts": ["a"]}, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200  # probes need no key


def test_full_queue_answers_503_with_retry_after(tiny_model_dir):
    with ServerThread(model=str(tiny_model_dir), max_queue=4, max_wait_ms=3000, max_batch_tokens=100_000) as s:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=post(s, "/embed", {"texts": ["a", "b", "c", "d"]})))
        t.start()
        end = time.time() + 20
        while "bertcli_queue_texts 4.0" not in httpx.get(s.url + "/metrics").text:
            assert time.time() < end, "the first request never queued"
            time.sleep(0.01)
        r = post(s, "/embed", {"texts": ["one more"]})
        assert "queue is full" in error_of(r, 503) and r.headers["retry-after"] == "1"
        t.join()
        assert first["r"].status_code == 200 and len(first["r"].json()["embeddings"]) == 4


# ------------------------------------------------------------ task models
def test_classifier_predict_equals_predict_table(task_dirs, tmp_path):
    from bertcli.predict import predict_table

    texts = ["a lovely film", "awful acting", "so so"]
    src = tmp_path / "in.csv"
    src.write_text("review\n" + "\n".join(f'"{t}"' for t in texts) + "\n")
    want = predict_table(task_dirs["classification"], src, device="cpu", precision="fp32").rows
    with ServerThread(model=str(task_dirs["classification"])) as s:
        info = httpx.get(s.url + "/info").json()
        assert info["task"] == "classification" and info["routes"] == ["/predict"] and info["labels"] == ["neg", "pos"]
        preds = post(s, "/predict", {"texts": texts}).json()["predictions"]
        for p, w in zip(preds, want, strict=True):
            assert p["label"] == w["label"]
            assert p["probabilities"]["pos"] == pytest.approx(w["prob_pos"], abs=1e-5)
            assert p["score"] == pytest.approx(max(w["prob_pos"], w["prob_neg"]), abs=1e-5)
        assert len(post(s, "/predict", {"texts": "one text"}).json()["predictions"]) == 1
        error_of(post(s, "/predict", {"texts": ["a"], "text_pairs": ["b"]}), 422, "text_pairs")
        error_of(post(s, "/rerank", {"query": "q", "texts": ["a"]}), 404)
        error_of(post(s, "/embed", {"texts": ["a"]}), 404)


def test_pair_classifier_rerank_and_predict(task_dirs):
    from bertcli.predict import load_classifier
    from bertcli.tasks.classification import softmax

    clf = load_classifier(task_dirs["pairs"], "cpu", "fp32")
    query, docs = "who plays guitar", ["A man is playing a guitar.", "The sky is blue.", "Guitars have strings."]
    logits, _ = clf.logits([query] * 3, docs)
    want = softmax(logits)[:, -1]
    with ServerThread(model=str(task_dirs["pairs"])) as s:
        assert httpx.get(s.url + "/info").json()["routes"] == ["/predict", "/rerank"]
        ranked = post(s, "/rerank", {"query": query, "texts": docs, "return_text": True}).json()
        assert [r["index"] for r in ranked] == list(np.argsort(-want, kind="stable"))
        for r in ranked:
            assert r["score"] == pytest.approx(want[r["index"]], abs=1e-5) and r["text"] == docs[r["index"]]
        raw = post(s, "/rerank", {"query": query, "texts": docs, "raw_scores": True}).json()
        assert {r["index"]: r["score"] for r in raw} == pytest.approx(dict(enumerate(logits[:, -1])), abs=1e-4)
        preds = post(s, "/predict", {"texts": [query] * 3, "text_pairs": docs}).json()["predictions"]
        assert [p["probabilities"]["paraphrase"] for p in preds] == pytest.approx(list(want), abs=1e-5)
        error_of(post(s, "/predict", {"texts": ["a"]}), 422, "text_pairs")
        error_of(post(s, "/predict", {"texts": ["a", "b"], "text_pairs": ["c"]}), 422, "text_pairs")
        error_of(post(s, "/rerank", {"query": "q", "texts": []}), 422, "texts")


def test_regression_predict_and_rerank_scores(task_dirs):
    from bertcli.predict import load_classifier

    clf = load_classifier(task_dirs["regression"], "cpu", "fp32")
    a, b = ["A man plays.", "A cat sleeps."], ["A man is playing.", "Stocks fell."]
    logits, _ = clf.logits(a, b)
    with ServerThread(model=str(task_dirs["regression"])) as s:
        assert httpx.get(s.url + "/info").json()["task"] == "regression"
        preds = post(s, "/predict", {"texts": a, "text_pairs": b}).json()["predictions"]
        assert [p["score"] for p in preds] == pytest.approx(list(logits[:, 0]), abs=1e-5)
        assert "label" not in preds[0]
        ranked = post(s, "/rerank", {"query": "A man plays.", "texts": ["A man is playing.", "Stocks fell."]}).json()
        assert ranked[0]["score"] >= ranked[1]["score"]


def test_token_classification_entities_with_offsets(task_dirs):
    from bertcli.tasks.token_classification import load_tagger

    texts = ["John Smith lives in New York City .", "Paris is big", "x " * 200]
    want, _ = load_tagger(task_dirs["tagger"], "cpu", "fp32").entities(texts)
    with ServerThread(model=str(task_dirs["tagger"])) as s:
        assert httpx.get(s.url + "/info").json()["task"] == "token-classification"
        preds = post(s, "/predict", {"texts": texts}).json()["predictions"]
        assert [p["entities"] for p in preds] == want
        for text, p in zip(texts, preds, strict=True):
            for e in p["entities"]:
                assert text[e["start"]:e["end"]] == e["text"]
        error_of(post(s, "/predict", {"texts": ["a"], "text_pairs": ["b"]}), 422, "text_pairs")


def test_question_answering(task_dirs):
    from bertcli.tasks.question_answering import QuestionAnswerer

    question, context = "Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600. " * 3
    want = QuestionAnswerer(task_dirs["qa"], device="cpu", precision="fp32").answer([question], [context], top_k=3)[0]
    with ServerThread(model=str(task_dirs["qa"])) as s:
        assert httpx.get(s.url + "/info").json()["routes"] == ["/answer"]
        body = post(s, "/answer", {"question": question, "context": context, "top_k": 3}).json()
        assert body["answers"] == [w.as_dict() for w in want]
        assert body["answer"] == want[0].answer == context[body["start"]:body["end"]]
        assert len(post(s, "/answer", {"question": question, "context": context}).json()["answers"]) == 1
        error_of(post(s, "/answer", {"question": "", "context": context}), 422, "question")
        error_of(post(s, "/answer", {"question": "  ", "context": context}), 422, "question")
        error_of(post(s, "/answer", {"question": "q", "context": context, "top_k": 0}), 422, "top_k")
        error_of(post(s, "/answer", {"context": context}), 422, "question")


def test_serve_without_the_extra_names_the_pip_command(cli, tiny_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    from conftest import one_error_line

    line = one_error_line(cli("serve", "--model", tiny_model_dir), "pip install 'bertcli[serve]'")
    assert "uvicorn" in line
