"""Zero-shot classification as nearest-neighbour lookup.

Each label becomes one unit vector (the normalised mean of its normalised prompt vectors,
as open_clip's `build_zero_shot_classifier` makes it). Every image then gets its nearest
label(s) by cosine, with a softmax probability over the label set at the model's logit
scale. The assignment streams over the image vectors in chunks, so memory stays bounded
(one chunk x labels score matrix per thread), and runs chunks on all cores at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from clipdex.classify.templates import fill
from clipdex.errors import QueryError
from clipdex.models.open_clip import Embedder
from clipdex.types import LabelSet, ProgressCallback

#: Rows of image vectors scored at once; a chunk's score matrix is CHUNK x labels float32.
CHUNK = 8192


def label_vectors(
    embedder: Embedder,
    labels: LabelSet,
    templates: list[str],
    batch_size: int = 512,
    on_progress: ProgressCallback | None = None,
) -> np.ndarray:
    """(labels x dim) unit vectors: each the normalised mean of its prompts' unit vectors."""
    vectors = np.zeros((len(labels), embedder.identity.dim), dtype=np.float32)
    positions: list[int] = []  # label position of each pending prompt, ascending
    texts: list[str] = []
    total = sum(len(labels.prompts.get(name) or templates) for name in labels.names)
    done = 0

    def flush() -> None:
        nonlocal done
        encoded = embedder.encode_texts(texts, batch_size=batch_size)
        at = np.asarray(positions)
        starts = np.flatnonzero(np.r_[True, at[1:] != at[:-1]])
        vectors[at[starts]] += np.add.reduceat(encoded, starts, axis=0)
        done += len(texts)
        positions.clear()
        texts.clear()
        if on_progress:
            on_progress("labels", done, total)

    for position, name in enumerate(labels.names):
        own = labels.prompts.get(name)
        for text in own or [fill(template, name) for template in templates]:
            positions.append(position)
            texts.append(text)
            if len(texts) >= batch_size:
                flush()
    if texts:
        flush()
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def check_threshold(threshold: float | None) -> None:
    """A threshold is a cosine: outside [-1, 1] (or NaN) it would label every image or none."""
    if threshold is not None and not -1.0 <= threshold <= 1.0:
        raise QueryError(f"threshold must be a cosine between -1 and 1 (got {threshold})")


@dataclass
class ChunkAssignment:
    """The top labels of one chunk of images: arrays of shape (n,) or (n, top)."""

    ids: np.ndarray
    labels: np.ndarray  # int32 positions in the label set, best first; -1 below threshold
    scores: np.ndarray  # float32 cosine similarities
    probabilities: np.ndarray  # float32 softmax over the whole label set


def assign(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    label_matrix: np.ndarray,
    logit_scale: float,
    top: int = 1,
    threshold: float | None = None,
    threads: int | None = None,
) -> Iterator[ChunkAssignment]:
    """Score every image against every label, chunk by chunk, in order.

    `chunks` yields (ids, unit vectors). Each is split into CHUNK-row pieces scored on
    `threads` threads (numpy and BLAS release the GIL), one BLAS thread each.
    """
    if top < 1:
        raise QueryError(f"top (labels per image) must be at least 1 (got {top})")
    check_threshold(threshold)
    top = min(top, len(label_matrix))
    scaled = np.ascontiguousarray((label_matrix * logit_scale).T, dtype=np.float32)
    threads = threads or os.cpu_count() or 1

    def pieces() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for ids, vectors in chunks:
            for start in range(0, len(ids), CHUNK):
                yield ids[start : start + CHUNK], vectors[start : start + CHUNK]

    def score(piece: tuple[np.ndarray, np.ndarray]) -> ChunkAssignment:
        ids, vectors = piece
        return _score(ids, vectors, scaled, logit_scale, top, threshold)

    with _blas_threads(1 if threads > 1 else None), ThreadPoolExecutor(threads) as pool:
        window: list = []
        for piece in pieces():
            window.append(pool.submit(score, piece))
            if len(window) >= 2 * threads:
                yield window.pop(0).result()
        for future in window:
            yield future.result()


def _score(
    ids: np.ndarray,
    vectors: np.ndarray,
    scaled: np.ndarray,
    logit_scale: float,
    top: int,
    threshold: float | None,
) -> ChunkAssignment:
    logits = vectors @ scaled  # (n, labels): cosine x logit scale
    rows = np.arange(len(ids))[:, None]
    if top == 1:
        best = logits.argmax(axis=1)[:, None]
    else:
        part = np.argpartition(-logits, top - 1, axis=1)[:, :top]
        order = np.argsort(-logits[rows, part], axis=1)
        best = part[rows, order]
    best_logits = logits[rows, best]
    logits -= best_logits[:, :1]
    np.exp(logits, out=logits)
    denominator = logits.sum(axis=1, keepdims=True)
    probabilities = (np.exp(best_logits - best_logits[:, :1]) / denominator).astype(np.float32)
    scores = (best_logits / logit_scale).astype(np.float32)
    labels = best.astype(np.int32)
    if threshold is not None:
        labels[scores < threshold] = -1
    return ChunkAssignment(ids, labels, scores, probabilities)


@contextlib.contextmanager
def _blas_threads(limit: int | None) -> Iterator[None]:
    """Limit BLAS threads while the thread pool provides the parallelism."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limit, user_api="blas"):
        yield
