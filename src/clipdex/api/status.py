"""What `Index.status` reports: the catalog's counts, the vectors, sources, failures, labels."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from clipdex.storage.catalog import CATALOG_FILE
from clipdex.storage.photo_meta import PhotoMetaStore, PhotoSummary
from clipdex.types import ModelIdentity
from clipdex.vectors import (
    DEFAULT_KIND,
    INDEX_FILE,
    KINDS,
    SIDECAR_FILE,
    LoadReport,
    chosen_kind,
    read_sidecar,
)
from clipdex.vectors.gpu import search_device

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
    #: smaller), "tensor" (full decode by the batched tensor decode, on the GPU or forced
    #: on CPU: indexer/tensor_pipeline.py), "unknown" (embedded before clipdex recorded it).
    decode: dict[str, int] = field(default_factory=dict)
    #: Embedded images by the precision the model ran in ("fp32", "bf16", "fp16", "int8";
    #: "unknown": embedded before clipdex recorded it, or imported). Mixing is allowed.
    precision: dict[str, int] = field(default_factory=dict)
    #: The store's own settings (an IVF's nlist, nprobe, code size, measured recall@10).
    index_parameters: dict = field(default_factory=dict)
    #: Photo metadata: how many images are dated, placed, have a camera; the date range.
    photos: PhotoSummary = field(default_factory=PhotoSummary)
    #: The kind the catalog records ("auto", a kind, or None: built before "auto").
    index_asked: str | None = None
    #: Why "auto" holds its kind, and why the store was last retrained ("" if never).
    index_reason: str = ""
    index_retrained: str = ""
    #: Where searches run in this process: the GPU, or the CPU and why (vectors/gpu.py).
    search_device: str = ""


def index_status(index: Index, failures: int | None = 20) -> IndexStatus:
    """The status of `index`, with at most `failures` failed files (None: all)."""
    catalog = index.catalog
    counts = catalog.counts()
    index_file = index.folder / INDEX_FILE
    store = _store_status(index) if catalog.model_identity() is not None else None
    run_id, label_counts = index.label_counts()
    return IndexStatus(
        folder=str(index.folder),
        model=catalog.model_identity(),
        images=counts["ok"],
        failed=counts["failed"],
        vectors=counts["vectors"],
        index_type=store.kind if store else (catalog.index_settings()[0] or DEFAULT_KIND),
        index_vectors=store.ntotal if store else 0,
        index_bytes=index_file.stat().st_size if index_file.exists() else 0,
        catalog_bytes=(index.folder / CATALOG_FILE).stat().st_size,
        change_seq=catalog.change_seq(),
        sources=[SourceStatus(*row, root_missing(row[0], row[1])) for row in catalog.sources()],
        failures=catalog.failures(failures),
        index_load=store.load if store else index.load_report,
        classify_run=run_id,
        label_counts=label_counts,
        decode=catalog.decode_counts(),
        precision=catalog.precision_counts(),
        index_parameters=store.parameters if store else {},
        index_asked=catalog.index_settings()[0],
        index_reason=store.reason if store else "",
        index_retrained=store.retrained if store else "",
        search_device=search_device(store.kind, store.parameters) if store else "",
        photos=PhotoMetaStore(catalog).summary(),
    )


class _StoreStatus(NamedTuple):
    kind: str
    ntotal: int
    parameters: dict
    reason: str
    retrained: str
    load: LoadReport | None


def _store_status(index: Index) -> _StoreStatus:
    """The store as its sidecar describes it, without opening the FAISS file (a million
    vectors need not be read to be counted); the store itself when this Index already
    opened it, or when the sidecar is missing, unreadable or of another kind."""
    catalog = index.catalog
    sidecar = read_sidecar(index.folder / SIDECAR_FILE)
    usable = (
        index.load_report is None
        and sidecar is not None
        and sidecar["type"] in KINDS
        and sidecar["type"] == chosen_kind(catalog, index.folder)
        and sidecar["seq"] <= catalog.change_seq()
        and _file_bytes(index.folder / INDEX_FILE) == sidecar.get("file_bytes")
    )
    if usable:
        behind = catalog.change_seq() - sidecar["seq"]
        load = None
        if behind:
            load = LoadReport("behind", f"{behind} changes not saved yet (caught up when read)")
        choice = sidecar.get("choice")
        parameters = sidecar.get("parameters")
        return _StoreStatus(
            sidecar["type"],
            sidecar["ntotal"],
            dict(parameters) if isinstance(parameters, dict) else {},
            str(choice.get("reason", "")) if isinstance(choice, dict) else "",
            str(sidecar.get("retrained") or ""),
            load,
        )
    vectors = index.vectors
    choice = getattr(vectors, "choice", None)
    return _StoreStatus(
        vectors.kind,
        vectors.ntotal,
        dict(vectors.stats().parameters),
        str(choice.get("reason", "")) if isinstance(choice, dict) else "",
        str(getattr(vectors, "retrained", "") or ""),
        index.load_report,
    )


def root_missing(uri: str, kind: str) -> bool:
    """Whether a local source's folder, file or list file no longer exists."""
    if kind == "list":
        return not os.path.exists(uri.removeprefix("list:"))
    if kind in ("folder", "file"):
        return not os.path.exists(uri)
    return False  # a bucket or object: not checked without a network round trip


def _file_bytes(path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
