"""Text and image queries: embed the query, search the vector store, join the catalog rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipdex.errors import CatalogError, ImageDecodeError, QueryError
from clipdex.media.decode import load_image
from clipdex.models.open_clip import Embedder
from clipdex.search.filters import with_photo_meta
from clipdex.search.results import SearchResult
from clipdex.storage.catalog import Catalog
from clipdex.vectors import EMPTY_INDEX, VectorStore


def check_query(
    text: str | None,
    image: str | Path | None,
    k: int,
    min_score: float | None = None,
) -> None:
    """QueryError for a request that cannot be answered as asked."""
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
    if text is not None and not text.strip():
        raise QueryError("the query text is empty")
    if min_score is not None and not -1.0 <= min_score <= 1.0:
        raise QueryError(f"the minimum score is a cosine between -1 and 1 (got {min_score})")


def query_vector(
    embedder: Embedder, text: str | None = None, image: str | Path | None = None
) -> np.ndarray:
    """The unit vector of a text, an image file, or (both given) their normalised sum."""
    if text is not None and not text.strip():
        raise QueryError("the query text is empty")
    if text is None and image is None:
        raise QueryError("give a query text, an image, or both")
    parts = []
    if text is not None:
        parts.append(embedder.encode_texts([text.strip()])[0])
    if image is not None:
        if not Path(image).is_file():
            raise QueryError(f"query image not found: {image}")
        try:
            picture, _ = load_image(image)
        except ImageDecodeError as exc:
            raise QueryError(f"cannot read query image {image}: {exc}") from exc
        parts.append(embedder.image_vector(picture))
    vector = np.sum(parts, axis=0)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class CatalogScan:
    """An exact scan of the catalog's stored vectors, streamed in chunks: what `exact`
    searches use whatever the kind of the store (search only)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.ntotal = catalog.counts()["vectors"]

    def search(
        self, queries: np.ndarray, k: int, among: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(queries).astype(np.float32)
        best_s = np.full((len(queries), 0), -np.inf, np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        for ids, vectors in self.catalog.iter_vectors():
            if among is not None:
                keep = np.isin(ids, among)
                ids, vectors = ids[keep], vectors[keep]
            s = np.hstack([best_s, queries @ vectors.T])
            i = np.hstack([best_i, np.broadcast_to(ids, (len(queries), len(ids)))])
            top = np.argsort(-s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        return best_s, best_i


def search_vectors(
    catalog: Catalog,
    vectors: VectorStore,
    query: np.ndarray,
    k: int = 10,
    min_score: float | None = None,
    among: np.ndarray | None = None,
) -> list[SearchResult]:
    """The k nearest live images to a unit query vector, best first (only `among` ids)."""
    found = search_batch(catalog, vectors, query[None, :], k, among)[0]
    if min_score is not None:
        found = [hit for hit in found if hit.score >= min_score]
    return found


def search_batch(
    catalog: Catalog,
    vectors: VectorStore,
    queries: np.ndarray,
    k: int = 10,
    among: np.ndarray | None = None,
) -> list[list[SearchResult]]:
    """The k nearest live images to each row of `queries` (unit vectors), best first: one
    vector-store search and one catalog read for all of them."""
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
    if vectors.ntotal == 0:
        raise CatalogError(EMPTY_INDEX)
    scores, ids = vectors.search(np.atleast_2d(queries).astype(np.float32), k, among)
    per_query = []
    for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True):
        pairs, seen = [], set()
        for i, s in zip(row_ids, row_scores, strict=True):
            if i >= 0 and i not in seen:  # an id twice in FAISS is still one image
                seen.add(i)
                pairs.append((i, s))
        per_query.append(pairs)
    rows = catalog.images({i for pairs in per_query for i, _ in pairs})
    # A row missing here was deleted after the index was read: never return it.
    return [
        with_photo_meta(
            catalog,
            [
                SearchResult(i, rows[i].uri, s, rows[i].width, rows[i].height)
                for i, s in pairs
                if i in rows and rows[i].status == "ok"
            ],
        )
        for pairs in per_query
    ]
