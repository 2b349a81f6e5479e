"""/api/v1/images (metadata, original bytes, thumbnails), /api/v1/runs (classification
runs, zero-shot labels for an upload) and /api/v1/status. Files are served by catalog id
only: no path from a request ever reaches the file system."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, HTTPException, Path, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from clipdex.errors import ImageDecodeError
from clipdex.media.thumbnails import MEDIA_TYPES, media_type
from clipdex.server.schemas import (
    ERRORS,
    ImageLabelOut,
    ImageOut,
    LabelCount,
    RunOut,
    StatusOut,
    ZeroShotLabel,
)
from clipdex.server.uploads import decode_error, read_upload
from clipdex.storage.image_info import image_labels, runs_with_counts

router = APIRouter(prefix="/api/v1", responses=ERRORS)
ImageId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the image's id")]
RunId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the classification run's id")]
IMAGE_RESPONSE = {200: {"content": {"image/*": {}}, "description": "the image's bytes"}}


def _row(request: Request, image_id: int):
    row = request.app.state.clipdex.details(image_id)
    if row is None:
        raise HTTPException(404, f"no indexed image has id {image_id}")
    return row


@router.get("/images/{image_id}", response_model=ImageOut, tags=["images"])
def image(request: Request, image_id: ImageId) -> ImageOut:
    """An image's uri, size, format and labels (every classification run that holds it)."""
    state = request.app.state.clipdex
    row = _row(request, image_id)
    labels = [
        ImageLabelOut(run=x.run, label=x.label, score=x.score, probability=x.probability)
        for x in image_labels(state.index.catalog, image_id)
    ]
    base = f"/api/v1/images/{image_id}"
    return ImageOut(
        id=row.id,
        uri=row.uri,
        size=row.size,
        width=row.width,
        height=row.height,
        format=row.format,
        labels=labels,
        thumbnail_url=f"{base}/thumbnail",
        image_url=f"{base}/original",
    )


@router.get(
    "/images/{image_id}/original",
    tags=["images"],
    response_class=Response,
    responses=IMAGE_RESPONSE,
)
def original(request: Request, image_id: ImageId) -> Response:
    """The image's bytes, from disk or its bucket through the library, by id only."""
    state = request.app.state.clipdex
    _row(request, image_id)
    data = state.index.image_bytes(image_id)
    return Response(
        data,
        media_type=media_type(data),
        headers={"Cache-Control": "private, max-age=60", "Content-Disposition": "inline"},
    )


@router.get(
    "/images/{image_id}/thumbnail",
    tags=["images"],
    response_class=Response,
    responses={**IMAGE_RESPONSE, 304: {"description": "not modified"}},
)
def thumbnail(request: Request, image_id: ImageId) -> Response:
    """A small WebP (or JPEG) of the image: stored while indexing, else made and cached."""
    state = request.app.state.clipdex
    row = _row(request, image_id)
    etag = f'"{row.id}-{row.seq}"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=300"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    try:
        data, fmt = state.thumbnail(row)
    except ImageDecodeError as exc:
        raise HTTPException(415, f"image {image_id} cannot be decoded: {exc}") from None
    return Response(data, media_type=MEDIA_TYPES[fmt], headers=headers)


@router.get("/runs", response_model=list[RunOut], tags=["labels"])
def runs(request: Request) -> list[RunOut]:
    """Saved classification runs, newest first, with how many images carry each label."""
    catalog = request.app.state.clipdex.index.catalog
    return [
        RunOut(
            id=run.id,
            created_at=run.created_at,
            templates=run.templates,
            labels=[LabelCount(label=name, count=count) for name, count in run.labels],
        )
        for run in runs_with_counts(catalog)
    ]


@router.post("/runs/{run_id}/classify", response_model=list[ZeroShotLabel], tags=["labels"])
async def classify(
    request: Request,
    run_id: RunId,
    image: Annotated[UploadFile, File(description="the image to label")],
) -> list[ZeroShotLabel]:
    """Zero-shot labels for an uploaded image against a run's labels, best first (the
    Hugging Face zero-shot shape: label, score, probability)."""
    state = request.app.state.clipdex
    data = await read_upload(image, state.options.max_upload_bytes)
    return await run_in_threadpool(_classify, state, run_id, data)


def _classify(state, run_id: int, data: bytes) -> list[ZeroShotLabel]:
    try:
        picture = state.decode(data)
    except ImageDecodeError as exc:
        raise decode_error(exc) from None
    found = state.label_matrix(run_id)
    if found is None:
        raise HTTPException(404, f"no classification run has id {run_id}")
    names, matrix = found
    vector = state.embedder().image_vector(picture)
    scores = matrix @ vector
    logits = scores * state.embedder().logit_scale
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-scores, kind="stable")
    return [
        ZeroShotLabel(
            label=names[i], score=round(float(scores[i]), 6), probability=float(probabilities[i])
        )
        for i in order
    ]


@router.get("/status", response_model=StatusOut, tags=["status"])
def status(request: Request) -> StatusOut:
    """The index's counts, model and sources, and whether the server is ready."""
    state = request.app.state.clipdex
    found = state.index.status(failures=0)
    return StatusOut(
        folder=str(found.folder),
        ready=state.model is not None,
        model=found.model.describe() if found.model else None,
        model_error=state.model_error,
        images=found.images,
        failed=found.failed,
        vectors=found.vectors,
        index_type=found.index_type,
        change_seq=found.change_seq,
        sources=[
            {"uri": s.uri, "kind": s.kind, "images": s.images, "missing": s.missing}
            for s in found.sources
        ],
        batching=state.options.batching,
        uptime_s=round(time.time() - state.started, 3),
    )
