"""``bertcli serve`` as users run it (a subprocess on a free port) on all-MiniLM-L6-v2: the official
``openai`` client against ``bertcli embed``'s vectors, every embedding route, and a SIGTERM with
requests in flight (none lost, none cut, exit 0)."""

from __future__ import annotations

import base64
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="install the serve extra")
httpx = pytest.importorskip("httpx", reason="install the dev extra")

from serve_util import start_cli_server  # noqa: E402

SENTENCES = ["A man is playing a guitar.", "A woman is slicing an onion.", "The new movie is awesome",
             "A cheetah is running behind its prey.", "", "word " * 300]


@pytest.fixture(scope="module")
def minilm_server(minilm_dir):
    proc, url, lines = start_cli_server("--model", str(minilm_dir), "--precision", "fp32", "--api-key", "k3y",
                                        "--max-wait-ms", "2")
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, "".join(lines)


def test_openai_client_equals_bertcli_embed(minilm_server, minilm_dir, cli, tmp_path):
    openai = pytest.importorskip("openai", reason="install the dev extra")
    out = tmp_path / "v.npy"
    r = cli("embed", "--model", minilm_dir, *SENTENCES, "--output", out, "--device", "cpu", "--precision", "fp32",
            "--quiet")
    assert r.exit_code == 0, r.output
    want = np.load(out)
    client = openai.OpenAI(base_url=minilm_server + "/v1", api_key="k3y", max_retries=0)
    for fmt in ("float", "base64", None):  # None: the client asks for base64 and decodes it itself
        kw = {"encoding_format": fmt} if fmt else {}
        res = client.embeddings.create(input=SENTENCES, model="all-MiniLM-L6-v2", **kw)
        rows = [d.embedding for d in sorted(res.data, key=lambda d: d.index)]
        if fmt == "base64":
            rows = [np.frombuffer(base64.b64decode(r), dtype="<f4") for r in rows]
        got = np.array(rows, dtype=np.float32)
        assert got.shape == want.shape == (len(SENTENCES), 384)
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 0.99999, cos
        assert res.model == "all-MiniLM-L6-v2" and res.usage.prompt_tokens == res.usage.total_tokens > 256
    one = client.embeddings.create(input="A dog runs.", model="m")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=minilm_server + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            input="x", model="m")
    with pytest.raises(openai.UnprocessableEntityError):
        client.embeddings.create(input="x", model="m", dimensions=16)


def test_minilm_routes(minilm_server):
    auth = {"Authorization": "Bearer k3y"}
    info = httpx.get(minilm_server + "/info", headers=auth).json()
    assert info["task"] == "embedding" and info["dim"] == 384 and info["max_length"] == 256
    assert info["precision"] == "fp32"
    r = httpx.post(minilm_server + "/embed", json={"texts": SENTENCES}, headers=auth, timeout=60).json()
    assert r["truncated"] == 1 and len(r["embeddings"]) == len(SENTENCES)
    s = httpx.post(minilm_server + "/similarity", headers=auth, timeout=60,
                   json={"a": ["A man is playing a guitar."], "b": ["A man plays the guitar.", "Stocks fell today."]})
    near, far = s.json()["scores"][0]
    assert near > 0.8 > far
    text = httpx.get(minilm_server + "/metrics", headers=auth).text
    assert "bertcli_truncated_texts_total" in text and "bertcli_tokens_total" in text


def test_sigterm_finishes_requests_in_flight(tiny_model_dir):
    proc, url, lines = start_cli_server("--model", str(tiny_model_dir), "--max-wait-ms", "1500",
                                        "--max-batch-tokens", "100000", "--grace", "30")
    results: dict[int, httpx.Response] = {}

    def client(i: int) -> None:
        results[i] = httpx.post(url + "/embed", json={"texts": [f"text {i}", f"another {i}"]}, timeout=60)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    end = time.time() + 30
    while "bertcli_queue_texts 12.0" not in httpx.get(url + "/metrics").text:
        assert time.time() < end, "the requests never queued"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # all 6 are waiting for their batch
    for t in threads:
        t.join(60)
    assert proc.wait(60) == 0, "".join(lines)
    assert sorted(results) == list(range(6))
    for r in results.values():
        assert r.status_code == 200, r.text
        assert len(r.json()["embeddings"]) == 2
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")
    log = "".join(lines)
    assert "Traceback" not in log
    assert log.count('"path": "/embed", "status": 200') == 6  # one structured access-log line each
