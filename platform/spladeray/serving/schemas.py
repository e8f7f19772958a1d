"""Request and response bodies of the HTTP API (they also make the OpenAPI docs at ``/docs``).

Whole-request problems (wrong JSON, empty list, a non-string text, unknown ``kind``) are 4xx
errors; per-document problems in ``/index`` (empty text, bad id) are listed in ``failed`` by id
so one bad document never sinks the good ones.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator


def _valid_unicode(text: str) -> str:
    """JSON can carry lone surrogates (``"\\ud800"``), which no tokenizer or store accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text is not valid Unicode (a lone surrogate at position {exc.start})"
        ) from None
    return text


NonEmptyText = Annotated[StrictStr, Field(min_length=1), AfterValidator(_valid_unicode)]
INDEX_NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-.]*$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncodeRequest(_Body):
    """``texts`` to encode as documents or queries. ``text_docs`` (ML Commons) is an alias."""

    texts: list[NonEmptyText] | None = Field(None, min_length=1)
    text_docs: list[NonEmptyText] | None = Field(
        None, min_length=1, description="OpenSearch ML Commons spelling of texts"
    )
    kind: Literal["document", "query"] = "document"
    format: Literal["spladeray", "ml_commons"] | None = Field(
        None, description="response shape; default from serve.response_format"
    )

    @model_validator(mode="after")
    def _one_of(self) -> EncodeRequest:
        if (self.texts is None) == (self.text_docs is None):
            raise ValueError("give exactly one of texts or text_docs (a non-empty list)")
        return self

    @property
    def items(self) -> list[str]:
        return self.texts if self.texts is not None else self.text_docs  # type: ignore[return-value]


class MLCommonsRequest(BaseModel):
    """``POST /_plugins/_ml/_predict/sparse_encoding/{model_id}`` body."""

    model_config = ConfigDict(extra="ignore")
    text_docs: list[NonEmptyText] = Field(min_length=1)


class EncodeResponse(BaseModel):
    vectors: list[dict[str, float]]
    truncated: list[int] = Field(
        default_factory=list, description="indices of texts cut to serve.max_text_chars"
    )
    model: str | None = Field(
        None, description="the model that encoded (the live index's model behind a rollout alias)"
    )


class IndexDocument(BaseModel):
    """One document; per-document problems are reported in ``failed``, not as a 4xx."""

    model_config = ConfigDict(extra="allow")
    id: Any = Field(description="stable id: re-indexing the same id overwrites")
    text: Any = None
    title: Any = None


class IndexRequest(_Body):
    documents: list[IndexDocument] = Field(min_length=1)
    index: str | None = Field(None, pattern=INDEX_NAME_PATTERN, max_length=255)


class FailureItem(BaseModel):
    id: str
    error: str


class IndexResponse(BaseModel):
    indexed: int
    failed: list[FailureItem]
    index: str


class SearchRequest(_Body):
    query: NonEmptyText
    size: int = Field(10, gt=0)
    index: str | None = Field(None, pattern=INDEX_NAME_PATTERN, max_length=255)
    explain: bool = Field(False, description="return matching tokens and their contributions")
    hybrid: bool | None = Field(None, description="fuse BM25 by RRF; default serve.hybrid")
    fields: bool = Field(True, description="return stored fields (title, text)")


class Contribution(BaseModel):
    token: str
    query_weight: float
    doc_weight: float
    contribution: float


class SearchHit(BaseModel):
    id: str
    score: float
    fields: dict[str, Any] | None = None
    explanation: list[Contribution] | None = None
    sparse_score: float | None = None
    bm25_score: float | None = None


class LimitWarning(BaseModel):
    """A limit the request ran into that changed the answer without failing it."""

    code: str = Field(description="e.g. query_terms_pruned, query_weights_clipped")
    count: int = Field(description="how many terms (or weights) were affected")
    message: str


class SearchResponse(BaseModel):
    hits: list[SearchHit]
    index: str = Field(description="the index searched (the concrete index behind an alias)")
    model: str | None = Field(None, description="the model that encoded the query")
    alias: str | None = Field(None, description="the rollout alias the index was resolved through")
    query_tokens: dict[str, float] | None = Field(
        None, description="explain: the query terms searched with (after the limits)"
    )
    warnings: list[LimitWarning] = Field(
        default_factory=list,
        description="limits the query ran into (terms dropped, weights clipped); empty if none",
    )


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: ``error`` is one line for people; ``detail`` (422) lists the fields."""

    error: str = Field(description="what went wrong, in one line")
    detail: Any = Field(None, description="422: the invalid fields (loc, msg, type)")


class IndexErrorResponse(ErrorResponse):
    """``/index`` errors; a 503 from a backend that failed mid-write also says what it confirmed
    (``indexed``) and lists every other document by id in ``failed`` -- nothing is lost."""

    indexed: int | None = Field(None, description="503: documents the backend confirmed")
    failed: list[FailureItem] | None = Field(
        None, description="503: every document not confirmed, by id, with the reason"
    )
    index: str | None = None


class HealthResponse(BaseModel):
    """``/healthz`` 200: an encoder replica has its model loaded."""

    status: Literal["ok"]
    encoder: dict[str, Any] = Field(description="the model a replica serves and its batching")
    index: dict[str, Any] = Field(description="the configured index backend and name")


class HealthUnavailable(BaseModel):
    """``/healthz`` 503: no encoder replica is ready (loading, or down)."""

    status: Literal["loading", "unavailable"]
    error: str


class MLCommonsOutput(BaseModel):
    name: str
    dataAsMap: dict[str, list[dict[str, float]]]  # noqa: N815 (ML Commons' spelling)


class MLCommonsResult(BaseModel):
    output: list[MLCommonsOutput]


class MLCommonsResponse(BaseModel):
    """OpenSearch ML Commons ``_predict`` response: one ``inference_results`` entry per text."""

    inference_results: list[MLCommonsResult]


def ml_commons_shape(vectors: list[dict[str, float]]) -> dict[str, Any]:
    """The ``_predict/sparse_encoding`` response of OpenSearch ML Commons, one result per text."""
    return {
        "inference_results": [
            {"output": [{"name": "output", "dataAsMap": {"response": [vector]}}]}
            for vector in vectors
        ]
    }
