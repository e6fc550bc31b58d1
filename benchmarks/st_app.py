"""The reference for bench_serve.py: a small FastAPI app that calls sentence-transformers ``encode``
once per request (no batching across requests), as people write it by hand.

    MODEL_DIR=... uvicorn benchmarks.st_app:app --port 8001
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(os.environ["MODEL_DIR"], device="cpu")
app = FastAPI()


class EmbedRequest(BaseModel):
    texts: list[str]


@app.post("/embed")
def embed(req: EmbedRequest) -> dict:
    return {"embeddings": model.encode(req.texts).tolist()}


@app.get("/health")
def health() -> dict:
    return {"status": "ok"}
