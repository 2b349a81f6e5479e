"""What `Index.status` reports: the catalog's counts, the vectors, sources, failures, labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from clipdex.storage.catalog import CATALOG_FILE
from clipdex.storage.photo_meta import PhotoMetaStore, PhotoSummary
from clipdex.types import ModelIdentity
from clipdex.vectors import DEFAULT_KIND, INDEX_FILE, LoadReport

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.api.index import Index


class SourceStatus(NamedTuple):
    uri: str
    kind: str
    indexed_at: float | None
    images: int
    #: The folder, file or list file is gone (a renamed folder, an unplugged drive).
    missing: bool = False


@dataclass(frozen=True)
class IndexStatus:
    folder: str
    model: ModelIdentity | None
    images: int
    failed: int
    vectors: int
    index_type: str
    index_vectors: int
    index_bytes: int
    catalog_bytes: int
    change_seq: int
    sources: list[SourceStatus]
    failures: list[tuple[str, str]]
    index_load: LoadReport | None
    classify_run: int | None = None
    label_counts: list[tuple[str, int]] = field(default_factory=list)
    #: Embedded images by how the model saw them: "exact" (full decode), "draft" (decoded
    #: smaller), "unknown" (embedded before clipdex recorded it).
    decode: dict[str, int] = field(default_factory=dict)
    #: The store's own settings (an IVF's nlist, nprobe, code size, measured recall@10).
    index_parameters: dict = field(default_factory=dict)
    #: Photo metadata: how many images are dated, placed, have a camera; the date range.
    photos: PhotoSummary = field(default_factory=PhotoSummary)


def index_status(index: Index, failures: int | None = 20) -> IndexStatus:
    """The status of `index`, with at most `failures` failed files (None: all)."""
    catalog = index.catalog
    counts = catalog.counts()
    index_file = index.folder / INDEX_FILE
    vectors = index.vectors if catalog.model_identity() is not None else None
    run_id, label_counts = index.label_counts()
    return IndexStatus(
        folder=str(index.folder),
        model=catalog.model_identity(),
        images=counts["ok"],
        failed=counts["failed"],
        vectors=counts["vectors"],
        index_type=vectors.kind if vectors else DEFAULT_KIND,
        index_vectors=vectors.ntotal if vectors else 0,
        index_bytes=index_file.stat().st_size if index_file.exists() else 0,
        catalog_bytes=(index.folder / CATALOG_FILE).stat().st_size,
        change_seq=catalog.change_seq(),
        sources=[SourceStatus(*row, root_missing(row[0], row[1])) for row in catalog.sources()],
        failures=catalog.failures(failures),
        index_load=index.load_report,
        classify_run=run_id,
        label_counts=label_counts,
        decode=catalog.decode_counts(),
        index_parameters=dict(vectors.stats().parameters) if vectors else {},
        photos=PhotoMetaStore(catalog).summary(),
    )


def root_missing(uri: str, kind: str) -> bool:
    """Whether a local source's folder, file or list file no longer exists."""
    if kind == "list":
        return not os.path.exists(uri.removeprefix("list:"))
    if kind in ("folder", "file"):
        return not os.path.exists(uri)
    return False  # a bucket or object: not checked without a network round trip
