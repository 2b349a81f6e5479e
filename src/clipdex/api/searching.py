"""What `Index.search`, `search_many`, `duplicates` and `nearest_per_label` do: queries
made into vectors (the query cache and the text tower first), candidates narrowed by
labels and photo filters, the vector store searched under the Index's lock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from clipdex.api.reader import Reader
from clipdex.classify.runs import build_label_matrix, nearest_per_label
from clipdex.errors import QueryError
from clipdex.search.algebra import Term, combine, gather_terms, liked_ids
from clipdex.search.cached import text_query_vector
from clipdex.search.duplicates import (
    DuplicateGroup,
    check_duplicate_options,
    exact_groups,
    near_groups,
    near_pairs,
)
from clipdex.search.filters import Filters, check_sort, restrict, sort_results
from clipdex.search.query import (
    CatalogScan,
    SearchResult,
    check_query,
    search_batch,
    search_vectors,
)
from clipdex.storage.labels import LabelStore
from clipdex.types import LabelSet, ProgressCallback


class Searcher:
    """The read side of an Index: `reader` holds the catalog and the vectors, `lock` is
    the Index's (FAISS may not be searched while another thread catches it up), and
    `embedder(text_only=...)` gives the index's own model, run in `precision` (the one
    asked for: it keys cached int8 query vectors apart)."""

    def __init__(
        self, reader: Reader, lock: threading.RLock, embedder: Callable, precision: str = "auto"
    ):
        self.reader = reader
        self.lock = lock
        self.embedder = embedder
        self.precision = precision

    def search(
        self,
        text: str | None,
        image: str | Path | None,
        k: int,
        min_score: float | None,
        label: str | None,
        like: int | None,
        exact: bool,
        filters: Filters | None,
        sort: str,
        terms: Sequence[Term] | None,
    ) -> list[SearchResult]:
        """Index.search (its docstring says what each argument means)."""
        check_query(text, image, k, min_score)
        check_sort(sort)
        query_terms = gather_terms(text, image, like, terms)
        catalog = self.reader.catalog
        _ = self.reader.vectors  # an empty index says so before any model loads
        among = restrict(catalog, self.label_candidates(label), filters)
        if among is not None and len(among) == 0:
            return []
        identity = catalog.model_identity()
        embedder = self.embedder() if any(t.kind == "image" for t in query_terms) else None

        def text_vector(text: str) -> np.ndarray:
            """Cached; else encoded by the loaded model or the text tower alone."""
            return text_query_vector(
                catalog,
                identity,
                text,
                lambda: embedder or self.embedder(text_only=True),
                self.precision,
            )

        query = combine(query_terms, catalog, embedder, text_vector)
        skip = liked_ids(query_terms)
        with self.lock:
            vectors = self.reader.vectors_for(embedder.identity if embedder else identity)
            store = CatalogScan(catalog) if exact else vectors
            found = search_vectors(catalog, store, query, k + len(skip), min_score, among)
        return sort_results([hit for hit in found if hit.id not in skip][:k], sort)

    def search_many(
        self, queries: np.ndarray, k: int, label: str | None, model, filters: Filters | None
    ) -> list[list[SearchResult]]:
        """Index.search_many."""
        among = restrict(self.reader.catalog, self.label_candidates(label), filters)
        if among is not None and len(among) == 0:
            return [[] for _ in range(len(queries))]
        with self.lock:
            vectors = self.reader.vectors_of(model) if model is not None else self.reader.vectors
            return search_batch(self.reader.catalog, vectors, queries, k, among)

    def label_candidates(self, label: str | None) -> np.ndarray | None:
        """The ids a label filter leaves (None: no filter); QueryError when none has it."""
        if label is None:
            return None
        among = LabelStore(self.reader.catalog).ids_with_label(label)
        if len(among) == 0:
            raise QueryError(
                f"no image is labelled '{label}'; label images first with `clipdex classify`"
            )
        return among

    def duplicates(
        self,
        threshold: float,
        exact: bool,
        max_group: int,
        on_progress: ProgressCallback | None,
    ) -> Iterator[DuplicateGroup]:
        """Index.duplicates."""
        check_duplicate_options(threshold, max_group)
        catalog = self.reader.catalog
        if exact:
            return exact_groups(catalog)
        if catalog.counts()["vectors"] == 0:
            return iter(())
        with self.lock:
            pairs = near_pairs(self.reader.vectors, threshold, max_group, on_progress)
        return near_groups(catalog, pairs, threshold, max_group)

    def nearest_per_label(
        self, labels: LabelSet, k: int, templates: str
    ) -> dict[str, list[SearchResult]]:
        """Index.nearest_per_label."""
        if k < 1:
            raise QueryError(f"k (images per label) must be at least 1 (got {k})")
        _ = self.reader.vectors  # an empty index says so before any model loads
        embedder = self.embedder(text_only=True)  # labels are texts
        _, matrix = build_label_matrix(embedder, labels, templates)
        with self.lock:
            found = nearest_per_label(self.reader.vectors_of(embedder), matrix, k)
        rows = self.reader.catalog.images(i for hits in found for i, _ in hits)
        return {
            name: [
                SearchResult(i, rows[i].uri, s, rows[i].width, rows[i].height)
                for i, s in hits
                if i in rows
            ]
            for name, hits in zip(labels.names, found, strict=True)
        }
