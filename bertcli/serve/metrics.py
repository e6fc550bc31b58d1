"""Prometheus metrics of one server process (its own registry, so several apps in one process
do not collide): requests and errors by route and status, request latency, queue depth, dynamic
batch sizes, tokens and truncated texts (``rate(bertcli_tokens_total[1m])`` is tokens/s)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.known_paths: set[str] = set()
        self.requests = Counter("bertcli_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("bertcli_errors", "HTTP responses with status >= 400 by route and status",
                              ["route", "status"], registry=r)
        self.latency = Histogram("bertcli_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("bertcli_queue_texts", "Texts waiting for the model", registry=r)
        self.batch_requests = Histogram("bertcli_batch_requests", "Requests per dynamic batch",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.batch_texts = Histogram("bertcli_batch_texts", "Texts per dynamic batch", buckets=SIZE_BUCKETS,
                                     registry=r)
        self.batch_tokens = Histogram("bertcli_batch_tokens", "Tokens per dynamic batch", buckets=TOKEN_BUCKETS,
                                      registry=r)
        self.batch_seconds = Histogram("bertcli_batch_seconds", "Model time per dynamic batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("bertcli_tokens", "Tokens run through the model", registry=r)
        self.texts = Counter("bertcli_texts", "Texts run through the model", registry=r)
        self.truncated = Counter("bertcli_truncated_texts", "Texts cut to the model's length", registry=r)
        self.rejected = Counter("bertcli_rejected", "Requests refused with 503 (queue full)", registry=r)
        self.tokens_per_second = Gauge("bertcli_tokens_per_second", "Tokens/s of the last dynamic batch", registry=r)

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def batch(self, requests: int, texts: int, tokens: int, seconds: float) -> None:
        self.batch_requests.observe(requests)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.batch_seconds.observe(seconds)
        self.tokens.inc(tokens)
        self.texts.inc(texts)
        if seconds > 0:
            self.tokens_per_second.set(tokens / seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
