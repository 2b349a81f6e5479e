"""The API's response shapes, for validation and the OpenAPI schema (/docs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Hit(BaseModel):
    id: int
    uri: str
    score: float = Field(description="cosine similarity, in [-1, 1]")
    width: int | None = None
    height: int | None = None
    taken_at: str | None = Field(None, description="capture time as the photo wrote it (EXIF)")
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    thumbnail_url: str
    image_url: str


class SearchResponse(BaseModel):
    results: list[Hit]
    k: int
    offset: int
    query: dict = Field(
        description="the query as understood: q, image, like, label, min_score, photo filters"
    )


class ImageLabelOut(BaseModel):
    run: int
    label: str | None = Field(description="None: below the run's threshold")
    score: float
    probability: float


class ImageOut(BaseModel):
    id: int
    uri: str
    size: int
    width: int | None = None
    height: int | None = None
    format: str | None = None
    labels: list[ImageLabelOut]
    thumbnail_url: str
    image_url: str


class LabelCount(BaseModel):
    label: str
    count: int


class RunOut(BaseModel):
    id: int
    created_at: float
    templates: str
    labels: list[LabelCount]


class ZeroShotLabel(BaseModel):
    label: str
    score: float
    probability: float


class ErrorOut(BaseModel):
    detail: str


class StatusOut(BaseModel):
    folder: str
    ready: bool
    model: str | None
    model_error: str | None
    images: int
    failed: int
    vectors: int
    index_type: str
    change_seq: int
    sources: list[dict]
    batching: bool
    uptime_s: float


#: Error statuses every route may answer, in the OpenAPI schema.
ERRORS = {status: {"model": ErrorOut} for status in (400, 401, 404, 413, 415, 422, 503)}
