"""/api/v1/search: by text (micro-batched), by an uploaded image, both, or a stored image."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from clipdex.errors import ImageDecodeError
from clipdex.search.filters import Filters
from clipdex.search.results import SearchResult
from clipdex.server.options import ServerOptions
from clipdex.server.schemas import ERRORS, Hit, SearchResponse
from clipdex.server.uploads import decode_error, read_upload

router = APIRouter(prefix="/api/v1", tags=["search"], responses=ERRORS)
LIMITS = ServerOptions()
MAX_ID = 2**63 - 1

Text = Annotated[str | None, Query(max_length=LIMITS.max_query_chars, description="the query text")]
K = Annotated[int, Query(ge=1, le=LIMITS.max_k, description="results per page")]
Offset = Annotated[int, Query(ge=0, le=LIMITS.max_offset, description="results to skip")]
MinScore = Annotated[
    float | None, Query(ge=-1.0, le=1.0, description="leave out results scoring below it")
]
Label = Annotated[
    str | None,
    Query(max_length=500, description="only images whose top label it is (latest run with it)"),
]
After = Annotated[
    str | None,
    Query(max_length=40, description="taken at or after (a date, or a datetime with offset)"),
]
Before = Annotated[str | None, Query(max_length=40, description="taken before (same forms)")]
Camera = Annotated[
    str | None, Query(max_length=200, description="camera make and model contain this text")
]
NearBy = Annotated[
    str | None, Query(max_length=100, description="LAT,LON,RADIUS with a unit: 48.85,2.35,25km")
]
Like = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="more like this stored image (its id)")
]


def hit(result: SearchResult) -> Hit:
    base = f"/api/v1/images/{result.id}"
    return Hit(**result.as_dict(), thumbnail_url=f"{base}/thumbnail", image_url=f"{base}/original")


@router.get("/search", response_model=SearchResponse, summary="Search by text or a stored image")
async def search_get(
    request: Request,
    q: Text = None,
    k: K = 20,
    offset: Offset = 0,
    min_score: MinScore = None,
    label: Label = None,
    like: Like = None,
    after: After = None,
    before: Before = None,
    camera: Camera = None,
    near: NearBy = None,
) -> SearchResponse:
    """The images nearest to the text `q`, or (with `like`) to a stored image, best first;
    photo filters (after, before, camera, near) restrict the candidates before ranking."""
    where = photo_filters(after, before, camera, near)
    return await answer(request, q, None, k, offset, min_score, label, like, where)


@router.post(
    "/search", response_model=SearchResponse, summary="Search by an uploaded image (and text)"
)
async def search_post(
    request: Request,
    image: Annotated[UploadFile, File(description="the query image")],
    q: Annotated[str | None, Form(max_length=LIMITS.max_query_chars)] = None,
    k: Annotated[int, Form(ge=1, le=LIMITS.max_k)] = 20,
    offset: Annotated[int, Form(ge=0, le=LIMITS.max_offset)] = 0,
    min_score: Annotated[float | None, Form(ge=-1.0, le=1.0)] = None,
    label: Annotated[str | None, Form(max_length=500)] = None,
    after: Annotated[str | None, Form(max_length=40)] = None,
    before: Annotated[str | None, Form(max_length=40)] = None,
    camera: Annotated[str | None, Form(max_length=200)] = None,
    near: Annotated[str | None, Form(max_length=100)] = None,
) -> SearchResponse:
    """The images nearest to an uploaded image; with `q` too, to their normalised mean.
    The server never fetches a URL: image queries are uploads only."""
    where = photo_filters(after, before, camera, near)
    state = request.app.state.clipdex
    data = await read_upload(image, state.options.max_upload_bytes)
    return await answer(request, q or None, data, k, offset, min_score, label, None, where)


def photo_filters(
    after: str | None, before: str | None, camera: str | None, near: str | None
) -> Filters | None:
    """The photo filters asked for, or None; a bad value is a 400 (QueryError)."""
    if after is None and before is None and camera is None and near is None:
        return None
    return Filters(after=after, before=before, camera=camera, near=near)


async def answer(
    request: Request,
    q: str | None,
    image: bytes | None,
    k: int,
    offset: int,
    min_score: float | None,
    label: str | None,
    like: int | None,
    where: Filters | None = None,
) -> SearchResponse:
    state = request.app.state.clipdex
    if q is not None:
        q = q.strip()
        if not q:
            raise HTTPException(400, "the query text is empty")
    want = k + offset
    if like is not None:
        if q is not None:
            raise HTTPException(400, "search by a stored image alone (like), not with a text")
        if await run_in_threadpool(state.details, like) is None:
            raise HTTPException(404, f"no indexed image has id {like}")
        hits = await run_in_threadpool(
            lambda: state.index.search(
                like=like, k=want, min_score=min_score, label=label, filters=where
            )
        )
    elif image is not None:
        hits = await run_in_threadpool(_by_image, state, image, q, want, label, where)
    elif q is not None:
        if state.options.batching:
            hits = await request.app.state.batcher.submit(q, want, label, where)
        else:
            hits = await run_in_threadpool(_by_text, state, q, want, label, where)
    else:
        raise HTTPException(400, "give a query text (q), an image, or a stored image id (like)")
    if min_score is not None:
        hits = [h for h in hits if h.score >= min_score]
    query = {"q": q, "image": image is not None, "like": like, "label": label}
    query["min_score"] = min_score
    if where is not None:
        query.update(after=where.after, before=where.before, camera=where.camera, near=where.near)
    return SearchResponse(
        results=[hit(h) for h in hits[offset : offset + k]], k=k, offset=offset, query=query
    )


def _by_text(state, q: str, k: int, label: str | None, where: Filters | None) -> list[SearchResult]:
    vectors = state.encode_texts([q])
    return state.search_vectors(vectors, k, label, where)[0]


def _by_image(
    state, data: bytes, q: str | None, k: int, label: str | None, where: Filters | None
) -> list[SearchResult]:
    try:
        vector = state.image_vector(data)
    except ImageDecodeError as exc:
        raise decode_error(exc) from None
    if q is not None:
        vector = vector + state.encode_texts([q])[0]
        vector = (vector / np.linalg.norm(vector)).astype(np.float32)
    return state.search_vectors(vector[None, :], k, label, where)[0]
