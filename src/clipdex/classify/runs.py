"""Classify a whole index: label vectors, streaming assignment, persistence, per-label lists."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from clipdex.classify.scoring import ChunkAssignment, assign, check_threshold, label_vectors
from clipdex.classify.templates import load_templates
from clipdex.errors import QueryError
from clipdex.models.open_clip import Embedder
from clipdex.storage.catalog import Catalog
from clipdex.storage.labels import LabelStore, labels_key
from clipdex.types import LabelSet, ProgressCallback
from clipdex.vectors import VectorStore


@dataclass(frozen=True)
class ClassifyOptions:
    templates: str = "openai"
    top: int = 1
    threshold: float | None = None
    only_new: bool = False
    save: bool = True

    def __post_init__(self) -> None:
        check_threshold(self.threshold)


@dataclass
class Classification:
    """Every image's top labels (arrays, chunk by chunk) and the run they were saved under."""

    labels: list[str]
    label_matrix: np.ndarray
    templates: str
    run_id: int | None = None
    chunks: list[ChunkAssignment] = field(default_factory=list)
    #: Images whose labels were saved: fewer than `images` when some were deleted or
    #: re-embedded while they were being classified.
    saved: int = 0

    @property
    def images(self) -> int:
        return sum(len(c.ids) for c in self.chunks)

    def columns(self) -> Iterator[tuple[np.ndarray, ...]]:
        """(image ids, ranks, label positions, scores, probabilities) arrays, rank by rank."""
        for chunk in self.chunks:
            for rank in range(chunk.labels.shape[1]):
                yield (
                    chunk.ids,
                    np.full(len(chunk.ids), rank + 1),
                    chunk.labels[:, rank],
                    chunk.scores[:, rank],
                    chunk.probabilities[:, rank],
                )

    def records(self, catalog: Catalog) -> Iterator[dict]:
        """Rows for output: uri, label, score, probability, rank (label None below threshold).

        Images deleted since they were classified have no uri any more: left out.
        """
        for chunk in self.chunks:
            uris = catalog.uris(chunk.ids.tolist())
            for n, image_id in enumerate(chunk.ids.tolist()):
                if image_id not in uris:
                    continue
                for rank in range(chunk.labels.shape[1]):
                    position = int(chunk.labels[n, rank])
                    yield {
                        "id": image_id,
                        "uri": uris[image_id],
                        "label": self.labels[position] if position >= 0 else None,
                        "score": round(float(chunk.scores[n, rank]), 6),
                        "probability": round(float(chunk.probabilities[n, rank]), 6),
                        "rank": rank + 1,
                    }


def build_label_matrix(
    embedder: Embedder,
    labels: LabelSet,
    templates: str,
    on_progress: ProgressCallback | None = None,
) -> tuple[str, np.ndarray]:
    description, template_list = load_templates(templates)
    return description, label_vectors(embedder, labels, template_list, on_progress=on_progress)


def classify_index(
    catalog: Catalog,
    vectors: VectorStore,
    embedder: Embedder,
    labels: LabelSet,
    options: ClassifyOptions,
    on_progress: ProgressCallback | None = None,
) -> Classification:
    """Give every image (or, with only_new, every image not yet labelled) its nearest labels."""
    if options.top < 1:
        raise QueryError(f"top (labels per image) must be at least 1 (got {options.top})")
    if vectors.ntotal == 0:
        raise QueryError("the index has no images to classify")
    description, matrix = build_label_matrix(embedder, labels, options.templates, on_progress)
    result = Classification(list(labels.names), matrix, description)
    store = LabelStore(catalog)
    key = labels_key(labels, description, embedder.identity.describe())
    skip = None
    if options.only_new:
        result.run_id = store.find_run(key)
        if result.run_id is not None:
            skip = store.labelled_ids(result.run_id)
    chunks = vectors.iter_vectors()
    if skip is not None and len(skip):
        chunks = _without(chunks, skip)
    total = vectors.ntotal
    for chunk in assign(chunks, matrix, embedder.logit_scale, options.top, options.threshold):
        result.chunks.append(chunk)
        if on_progress:
            on_progress("classify", result.images, total)
    if options.save and result.images:
        # One transaction, skipping images deleted or rewritten since `vectors` was read.
        result.run_id, rows = store.save(
            labels,
            description,
            embedder.identity.describe(),
            result.columns(),
            run_id=result.run_id,
            as_of_seq=vectors.seq,
        )
        result.saved = rows // result.chunks[0].labels.shape[1]
    return result


def nearest_per_label(
    vectors: VectorStore, matrix: np.ndarray, k: int
) -> list[list[tuple[int, float]]]:
    """For each label vector, its k nearest images as (id, cosine), best first."""
    if k < 1:
        raise QueryError(f"k (images per label) must be at least 1 (got {k})")
    if vectors.ntotal == 0:
        raise QueryError("the index has no images to classify")
    scores, ids = vectors.search(matrix, k)
    return [
        [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
        for row_ids, row_scores in zip(ids, scores, strict=True)
    ]


def _without(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], skip: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for ids, vectors in chunks:
        keep = ~np.isin(ids, skip)
        if keep.any():
            yield ids[keep], vectors[keep]
