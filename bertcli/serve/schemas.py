"""Request and response bodies (pydantic): validated by FastAPI and documented at /docs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------ OpenAI embeddings
class EmbeddingsRequest(BaseModel):
    """The OpenAI embeddings request. Token arrays are refused (the ids of another tokenizer)."""

    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send fields of newer API versions
    input: str | list[str] = Field(description="A text or a list of texts.")
    model: str | None = Field(None, description="Echoed back; this server serves one model.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded.")
    dimensions: int | None = Field(None, ge=1, description="Keep the first N dimensions (needs --allow-dimensions "
                                                            "unless N is the model's dimension).")
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


# ------------------------------------------------------------ bertcli routes
class EmbedRequest(Strict):
    texts: str | list[str] = Field(description="A text or a list of texts.")


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dim: int
    tokens: int
    truncated: int


class SimilarityRequest(Strict):
    a: str | list[str] = Field(description="A text or a list of texts.")
    b: str | list[str] = Field(description="A text or a list of texts.")
    pairwise: bool = Field(False, description="Row by row (a[i] with b[i]) instead of the full matrix.")


class SimilarityResponse(BaseModel):
    scores: float | list[float] | list[list[float]] = Field(
        description="Cosine similarity: a number for two texts, the len(a) x len(b) matrix, or one per pair.")
    tokens: int
    truncated: int


class PredictRequest(Strict):
    texts: str | list[str] = Field(description="A text or a list of texts.")
    text_pairs: list[str] | None = Field(None, description="The second text of each pair (pair models only).")


class LabelPrediction(BaseModel):
    label: str
    score: float = Field(description="The probability of the label.")
    probabilities: dict[str, float]


class ScorePrediction(BaseModel):
    score: float


class Entity(BaseModel):
    type: str
    text: str
    start: int = Field(description="Character offset of the entity in the text.")
    end: int = Field(description="Character offset after the entity: text[start:end] is the entity.")
    score: float


class EntityPrediction(BaseModel):
    entities: list[Entity]


class PredictResponse(BaseModel):
    predictions: list[LabelPrediction] | list[ScorePrediction] | list[EntityPrediction]
    tokens: int | None = Field(description="Tokens read (null for token classification, which reads long texts "
                                           "in windows)")
    truncated: int


class AnswerRequest(Strict):
    question: str = Field(min_length=1)
    context: str = Field(min_length=1)
    top_k: int = Field(1, ge=1, le=100)


class AnswerSpan(BaseModel):
    answer: str
    score: float
    probability: float
    start: int | None
    end: int | None


class AnswerResponse(AnswerSpan):
    answers: list[AnswerSpan]


class RerankRequest(BaseModel):
    """The text-embeddings-inference rerank request (its other fields, such as ``truncate``, are ignored:
    the server's --no-truncate decides)."""

    model_config = ConfigDict(extra="ignore")
    query: str
    texts: list[str] = Field(min_length=1)
    raw_scores: bool = Field(False, description="Logits instead of probabilities (classifiers).")
    return_text: bool = False


class RerankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody
