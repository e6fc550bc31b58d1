"""The FastAPI application: routes, errors, authentication, request limits, access logs, metrics.

``create_app(options)`` loads the model (or takes a loaded :class:`~bertcli.serve.runtime.Runtime`)
and registers only the routes its task serves; ``GET /info`` lists them. Every error answers
``{"error": {"message", "type", "param", "code"}}`` (the OpenAI shape): 401 without the API key,
404 for a route this model does not serve, 413 over a request limit (or a text over the model's
length with ``--no-truncate``), 422 for a malformed body (``param`` names the field), 503 with
``Retry-After`` when the queue is full.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bertcli import __version__
from bertcli.errors import BertcliError
from bertcli.serve import schemas as S
from bertcli.serve.batcher import Batcher, QueueFull
from bertcli.serve.metrics import Metrics
from bertcli.serve.options import ServeOptions
from bertcli.serve.runtime import Runtime, TooLong, load_runtime, sigmoid

OPEN_PATHS = {"/health"}  # answered without the API key (load balancers probe it)
ENV_OPTIONS = "BERTCLI_SERVE_OPTIONS"
access_log = logging.getLogger("bertcli.serve.access")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.headers = status, message, param, kind, headers


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def json_response(obj: Any, headers: dict[str, str] | None = None) -> Response:
    # json.dumps of plain lists is several times faster than pydantic for thousands of floats
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(body.encode("utf-8", "surrogatepass"), media_type="application/json", headers=headers)


def _field(loc) -> tuple[str, int]:
    """``input[2]`` for ('body', 'input', 'list[str]', 2): the field path without pydantic's union-member tags."""
    parts = [p for p in loc if p != "body" and not (isinstance(p, str) and ("[" in p or p in UNION_TAGS))]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body", len(parts)


UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
TEXT_FIELDS = {"input", "texts", "a", "b"}


def validation_message(errors: list[dict]) -> tuple[str, str]:
    """(message, field) for the most specific of pydantic's errors."""
    if not errors:
        return "the body is invalid", "body"
    located = [(_field(e.get("loc", ())), e) for e in errors]
    (where, depth), err = max(located, key=lambda x: x[0][1])
    if err.get("type") == "json_invalid":
        return f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})", "body"
    same = [e for (w, _), e in located if w == where]
    if len(same) > 1 and where in TEXT_FIELDS:
        return f"{where}: should be a string or a list of strings", where
    msg = err.get("msg", "invalid")
    if where == "body":
        return "the body must be a JSON object sent as Content-Type: application/json (see /docs)", "body"
    if where.startswith("input[") and err.get("type") == "string_type":
        msg = "should be a string (token arrays are not supported: send the text)"
    elif err.get("type") == "missing":
        msg = "is required"
    elif err.get("type") == "extra_forbidden":
        msg = "is not a field of this request (see /docs)"
    return f"{where}: {msg}", where


# ------------------------------------------------------------ ASGI middleware
class Guard:
    """Outermost layer: request ids, access logs, metrics, the API key and the body size limit.

    The body is read here (at most ``max_request_bytes`` + 1 bytes) and replayed to the app, so an
    oversized body is refused with 413 before any parsing, whether or not it sent Content-Length.
    """

    def __init__(self, app, options: ServeOptions, metrics: Metrics):
        self.app, self.options, self.metrics = app, options, metrics
        self.key = options.api_key.encode() if options.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        state = {"status": 500, "bytes": 0}
        rid = uuid.uuid4().hex[:16]

        async def send_logged(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            refused = self._refuse(scope)
            if refused is None:
                body, too_big = await self._read_body(receive)
                if too_big:
                    refused = error_response(413, f"the request body is over --max-request-bytes "
                                                  f"{self.options.max_request_bytes}", "body")
            if refused is not None:
                await refused(scope, receive, send_logged)
            else:
                await self.app(scope, _replay(body), send_logged)
        finally:
            seconds = time.perf_counter() - start
            route = path if path in self.metrics.known_paths else "other"
            self.metrics.request(route, state["status"], seconds)
            if self.options.access_log:
                client = scope.get("client") or ("-", 0)
                access_log.info(json.dumps({
                    "ts": round(time.time(), 3), "id": rid, "client": f"{client[0]}:{client[1]}",
                    "method": scope["method"], "path": path, "status": state["status"],
                    "ms": round(seconds * 1000, 2), "bytes": state["bytes"],
                }))

    def _refuse(self, scope):
        if self.key is not None and scope["path"] not in OPEN_PATHS:
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
            scheme, _, token = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error_response(401, "missing or wrong API key: send Authorization: Bearer KEY",
                                      "authorization", "authentication_error", {"WWW-Authenticate": "Bearer"})
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > self.options.max_request_bytes:
                        return error_response(413, f"the request body ({int(value)} bytes) is over "
                                                   f"--max-request-bytes {self.options.max_request_bytes}", "body")
                except ValueError:
                    return error_response(400, "Content-Length is not a number", "content-length")
        return None

    async def _read_body(self, receive) -> tuple[bytes, bool]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.options.max_request_bytes:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


# ------------------------------------------------------------ the application
def create_app(options: ServeOptions, runtime: Runtime | None = None) -> FastAPI:
    if runtime is None:
        runtime = load_runtime(options.model, device=options.device, precision=options.precision,
                               truncate=options.truncate, batch_tokens=options.max_batch_tokens,
                               batch_size=options.batch_size)
    rt = runtime
    metrics = Metrics()
    budget = options.max_batch_tokens or getattr(rt, "batch_tokens", None) or 2048
    model_name = options.served_name or rt.model_name
    holder: dict[str, Batcher] = {}

    def on_batch(requests: int, texts: int, tokens: int, seconds: float) -> None:
        metrics.batch(requests, texts, tokens, seconds)

    @asynccontextmanager
    async def lifespan(app):
        holder["b"] = Batcher(rt.run, max_batch_tokens=budget, max_wait_ms=options.max_wait_ms,
                              max_queue=options.max_queue, on_batch=on_batch)
        metrics.queue_depth.set_function(lambda: holder["b"].queued_texts)
        yield
        holder["b"].close(options.grace)

    app = FastAPI(
        title="bertcli serve", version=__version__, lifespan=lifespan,
        description=f"Model `{model_name}` ({rt.task}). Live routes: {', '.join(rt.routes)}.",
        responses={422: {"model": S.ErrorResponse}},
    )

    # ---- errors: one JSON shape, never a 500 for a client's mistake
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, where = validation_message(list(exc.errors()))
        return error_response(422, message, where)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.kind, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error_response(404, f"{request.url.path}: not a route of this server; this {rt.task} model serves "
                                       f"{', '.join(rt.routes)} (see GET /info and /docs)", None, "not_found")
        if exc.status_code == 405:
            return error_response(405, f"{request.method} {request.url.path}: method not allowed", None,
                                  "invalid_request_error")
        return error_response(exc.status_code, str(exc.detail), None, "invalid_request_error")

    @app.exception_handler(BertcliError)
    async def _bertcli_error(request: Request, exc: BertcliError):
        return error_response(422, str(exc), None)

    # ---- helpers
    def texts_of(value, param: str) -> list[str]:
        texts = [value] if isinstance(value, str) else list(value)
        if not texts:
            raise ApiError(422, f"{param}: give at least one text", param)
        if len(texts) > options.max_request_texts:
            raise ApiError(413, f"{param}: {len(texts)} texts, over --max-request-texts {options.max_request_texts}",
                           param)
        return texts

    async def infer(job) -> Any:
        try:
            return await holder["b"].submit(job)
        except QueueFull as exc:
            metrics.rejected.inc()
            raise ApiError(503, f"{exc}; retry later", None, "overloaded",
                           {"Retry-After": str(options.retry_after)}) from None

    async def prepared(fn, *args):
        try:
            job = await run_in_threadpool(fn, *args)
        except TooLong as exc:
            raise ApiError(413, str(exc), exc.param) from None
        if job.truncated:
            metrics.truncated.inc(job.truncated)
        return job

    def headers(job) -> dict[str, str]:
        return {"X-Truncated-Texts": str(job.truncated), "X-Tokens": str(job.cost)}

    # ---- always live
    @app.get("/health", summary="Liveness: 200 once the model is loaded")
    async def health():
        return {"status": "ok"}

    @app.get("/info", summary="The model, its task, the live routes and the server's limits")
    async def info():
        return {"model": model_name, "path": str(options.model), "task": rt.task, "routes": list(rt.routes),
                "max_length": rt.max_length, "truncate": rt.truncate, "max_batch_tokens": budget,
                "max_wait_ms": options.max_wait_ms, "max_queue": options.max_queue,
                "max_request_texts": options.max_request_texts, "max_request_bytes": options.max_request_bytes,
                "version": __version__, **rt.info()}

    @app.get("/metrics", summary="Prometheus metrics (text format)")
    async def prometheus():
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # ---- embedding models
    if "/v1/embeddings" in rt.routes:
        dim = rt.dim

        @app.post("/v1/embeddings", response_model=S.EmbeddingsResponse, summary="OpenAI-compatible embeddings",
                  responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
        async def openai_embeddings(req: S.EmbeddingsRequest):
            if req.dimensions is not None and req.dimensions != dim:
                if req.dimensions > dim:
                    raise ApiError(422, f"dimensions: {req.dimensions} is over the model's {dim}", "dimensions")
                if not options.allow_dimensions:
                    raise ApiError(422, f"dimensions: this model gives {dim}-dim vectors; shorter ones need a "
                                        f"Matryoshka-trained model served with --allow-dimensions", "dimensions")
            texts = texts_of(req.input, "input")
            job = await prepared(rt.prepare, texts, "input")
            vectors = await infer(job)
            if req.dimensions is not None and req.dimensions < dim:
                vectors = vectors[:, :req.dimensions]
                if rt.enc.normalize:
                    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            vectors = np.ascontiguousarray(vectors, dtype="<f4")
            if req.encoding_format == "base64":
                data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                        for i, v in enumerate(vectors)]
            else:
                data = [{"object": "embedding", "index": i, "embedding": v}
                        for i, v in enumerate(vectors.tolist())]
            return json_response({"object": "list", "data": data, "model": req.model or model_name,
                                  "usage": {"prompt_tokens": job.cost, "total_tokens": job.cost}}, headers(job))

        @app.post("/embed", response_model=S.EmbedResponse, summary="Sentence embeddings, in input order",
                  responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
        async def embed(req: S.EmbedRequest):
            job = await prepared(rt.prepare, texts_of(req.texts, "texts"), "texts")
            vectors = await infer(job)
            return json_response({"embeddings": vectors.tolist(), "dim": dim, "tokens": job.cost,
                                  "truncated": job.truncated}, headers(job))

        @app.post("/similarity", response_model=S.SimilarityResponse, summary="Cosine similarity of texts",
                  responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
        async def similarity(req: S.SimilarityRequest):
            import torch

            from bertcli.embed import similarity as cosine

            a, b = texts_of(req.a, "a"), texts_of(req.b, "b")
            if len(a) + len(b) > options.max_request_texts:
                raise ApiError(413, f"{len(a) + len(b)} texts in a and b, over --max-request-texts "
                                    f"{options.max_request_texts}", "b")
            if req.pairwise and len(a) != len(b):
                raise ApiError(422, f"b: pairwise needs as many texts in b as in a ({len(b)} vs {len(a)})", "b")
            job = await prepared(rt.prepare, a + b, "a+b")
            vectors = torch.from_numpy(await infer(job))
            va, vb = vectors[:len(a)], vectors[len(a):]
            if isinstance(req.a, str) and isinstance(req.b, str):
                scores: Any = cosine(va[0], vb[0])
            else:
                scores = cosine(va, vb, pairwise=req.pairwise).tolist()
            return json_response({"scores": scores, "tokens": job.cost, "truncated": job.truncated}, headers(job))

    # ---- sequence classifiers and regressors
    if rt.task in ("classification", "regression"):
        from bertcli.tasks.classification import softmax

        labels = None if rt.task == "regression" else [rt.clf.id2label[i] for i in range(len(rt.clf.id2label))]

        @app.post("/predict", response_model=S.PredictResponse, summary="Labels (or scores) of texts",
                  responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
        async def predict(req: S.PredictRequest):
            texts = texts_of(req.texts, "texts")
            if rt.pairs and req.text_pairs is None:
                raise ApiError(422, "text_pairs: this model reads text pairs; give one text_pairs item per text",
                               "text_pairs")
            if not rt.pairs and req.text_pairs is not None:
                raise ApiError(422, "text_pairs: this model reads single texts", "text_pairs")
            if req.text_pairs is not None and len(req.text_pairs) != len(texts):
                raise ApiError(422, f"text_pairs: {len(req.text_pairs)} items for {len(texts)} texts", "text_pairs")
            job = await prepared(rt.prepare, texts, req.text_pairs, "texts")
            logits = await infer(job)
            if labels is None:
                preds: list = [{"score": round(float(z[0]), 6)} for z in logits]
            else:
                preds = []
                for p in softmax(logits):
                    k = int(p.argmax())
                    preds.append({"label": labels[k], "score": round(float(p[k]), 6),
                                  "probabilities": {lab: round(float(v), 6) for lab, v in zip(labels, p, strict=True)}})
            return json_response({"predictions": preds, "tokens": job.cost, "truncated": job.truncated}, headers(job))

        if "/rerank" in rt.routes:
            @app.post("/rerank", response_model=list[S.RerankItem],
                      summary="Cross-encoder scores of (query, text) pairs, best first (the text-embeddings-inference shape)",
                      responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
            async def rerank(req: S.RerankRequest):
                texts = texts_of(req.texts, "texts")
                job = await prepared(rt.prepare, [req.query] * len(texts), texts, "texts")
                logits = await infer(job)
                if labels is None or req.raw_scores:
                    scores = logits[:, -1]
                elif len(labels) == 1:
                    scores = sigmoid(logits[:, 0])
                else:  # the probability of the last label (the "relevant" / "paraphrase" class)
                    scores = softmax(logits)[:, -1]
                order = np.argsort(-scores, kind="stable")
                items = [{"index": int(i), "score": float(scores[i]),
                          **({"text": texts[i]} if req.return_text else {})} for i in order]
                return json_response(items, headers(job))

    # ---- token classifiers
    if rt.task == "token-classification":
        @app.post("/predict", response_model=S.PredictResponse,
                  summary="Entities of texts, with character offsets",
                  responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
        async def entities(req: S.PredictRequest):
            if req.text_pairs is not None:
                raise ApiError(422, "text_pairs: a token classification model reads single texts", "text_pairs")
            job = await prepared(rt.prepare, texts_of(req.texts, "texts"), "texts")
            found = await infer(job)
            return json_response({"predictions": [{"entities": e} for e in found], "tokens": None,
                                  "truncated": 0}, {"X-Truncated-Texts": "0"})

    # ---- question answering
    if rt.task == "question-answering":
        @app.post("/answer", response_model=S.AnswerResponse,
                  summary="The best answer span of the context, with character offsets",
                  responses={413: {"model": S.ErrorResponse}, 503: {"model": S.ErrorResponse}})
        async def answer(req: S.AnswerRequest):
            if not req.question.strip():
                raise ApiError(422, "question: is blank", "question")
            if not req.context.strip():
                raise ApiError(422, "context: is blank", "context")
            job = await prepared(rt.prepare, req.question, req.context, req.top_k)
            spans = await infer(job)
            return json_response({**spans[0].as_dict(), "answers": [s.as_dict() for s in spans]})

    metrics.known_paths = {"/health", "/info", "/metrics", "/docs", "/openapi.json", *rt.routes}
    return Guard(app, options, metrics)


def setup_logging(options: ServeOptions) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.handlers[:] = [handler]
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def app_from_env():
    """The app factory for ``--workers N`` (uvicorn imports it in each worker process)."""
    options = ServeOptions(**json.loads(os.environ[ENV_OPTIONS]))
    setup_logging(options)
    options.apply_threads()
    return create_app(options)
