"""One index run: plan, remove what is gone, embed what is new or changed, batch by batch."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipdex.defaults import DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS, DEFAULT_FETCH_WORKERS
from clipdex.errors import SourceError
from clipdex.indexer.balance import CoreSplit, available_cores, split_cores, torch_threads
from clipdex.indexer.fetch_pipeline import fetch_batches
from clipdex.indexer.photo_meta import fill_photo_meta
from clipdex.indexer.pipeline import Batch, Decoded, decode_batches, pool_size
from clipdex.indexer.plan import Reuse, SyncPlan, plan_sync
from clipdex.indexer.ray_run import RayOptions, ray_embedding, require_ray
from clipdex.indexer.tensor_pipeline import (
    TensorDecode,
    choose_tensor_decode,
    decode_path_from_env,
    tensor_batches,
)
from clipdex.indexer.thumbnails import copy_thumbnails, store_thumbnails
from clipdex.media.decode import DEFAULT_MAX_PIXELS
from clipdex.models.open_clip import Embedder
from clipdex.sources import Source
from clipdex.sources.fetch import FileSystems
from clipdex.storage.catalog import Catalog, ImageRecord
from clipdex.storage.thumbs import ThumbnailStore
from clipdex.types import ProgressCallback
from clipdex.vectors import (
    VectorStore,
    catch_up,
    is_current,
    maintain,
    open_store,
    pending_rebuild,
    save_store,
)

#: Seconds between saves of the FAISS file during a long run (readers then catch up less).
SAVE_EVERY_S = 60.0


@dataclass(frozen=True)
class IndexReport:
    """What an index run (or forgetting a source) did; counts are images (catalog rows).

    `removed` images are gone from the index; `kept` ones this source no longer lists but
    another source still does. `images_per_s` counts embedded images over the whole run.
    """

    source: str
    added: int
    updated: int
    removed: int
    unchanged: int
    failed: int
    seconds: float
    reused: int = 0  # new or changed files whose stored vector was reused (moves, copies)
    kept: int = 0
    #: Other sources a rebuild with another model forgot (their vectors were the old
    #: model's): index them again to search them.
    forgotten_sources: tuple[str, ...] = ()
    #: Images indexed before whose photo metadata (EXIF) this run read, without embedding.
    meta_filled: int = 0
    #: Ray actors that embedded (0: embedded in this process, or nothing to embed).
    ray_workers: int = 0
    #: How local files were decoded and the cores shared, e.g. "CPU (draft): 1 decode
    #: worker + 1 torch thread on 2 cores"; "" when nothing local was embedded here.
    balance: str = ""

    @property
    def embedded(self) -> int:
        """Files decoded and embedded now: neither reused nor failed."""
        return self.added + self.updated - self.reused - self.failed

    @property
    def images_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class RunOptions:
    rebuild: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    #: Decode processes for local files; None: chosen from the cores (indexer/balance.py).
    workers: int | None = DEFAULT_DECODE_WORKERS
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_empty: bool = False
    verify: bool = False
    fetch_workers: int = DEFAULT_FETCH_WORKERS
    #: Decode every image at full size: open_clip's preprocessing bit for bit, slower on
    #: large photos. Otherwise images are decoded at the size the model needs.
    exact_decode: bool = False
    #: Store a thumbnail of each image embedded (from its decoded pixels) for viewers.
    thumbnails: bool = True
    #: Embed through Ray Data (indexer/ray_run.py) instead of in this process.
    ray: RayOptions | None = None
    #: How local files decode: "auto" (JPEGs on the GPU when the model runs on CUDA),
    #: "tensor" (batched tensor decode on the model's device, CPU too), "pil"
    #: (indexer/tensor_pipeline.py); default: CLIPDEX_DECODE_PATH, else "auto".
    decode_path: str = field(default_factory=decode_path_from_env)


def index_source(
    folder: Path,
    catalog: Catalog,
    source: Source,
    get_embedder: Callable[[], Embedder],
    options: RunOptions,
    on_progress: ProgressCallback | None = None,
) -> IndexReport:
    """Bring the catalog and the FAISS index in step with one source.

    The model is loaded only when something needs embedding. Each batch is committed to
    the catalog in one transaction, then mirrored into the in-memory FAISS index; the FAISS
    file is saved every SAVE_EVERY_S and at the end. A crash loses at most the batch in
    flight: the next run sees the committed rows as unchanged, and the FAISS file catches
    up from the catalog when it is opened.
    """
    started = time.perf_counter()
    if options.ray is not None:
        require_ray()  # before the scan: say so at once
    known_source = catalog.find_source_id(source.uri)
    plan = plan_sync(source, catalog, known_source, options.rebuild, options.verify, on_progress)
    if plan.listed == 0 and not options.allow_empty:
        if plan.unlink_ids:
            raise SourceError(
                f"{source.uri} has no images now, but the index holds {len(plan.unlink_ids)} "
                "from it; if they were deleted on purpose, run it again allowing an empty source",
                hint="allow_empty",
            )
        raise SourceError(f"no images found in {source.uri}")
    store = source.store
    source_id = catalog.source_id(source.uri, source.kind, store.as_dict() if store else None)
    catalog.links.link(source_id, plan.link_ids)
    embedder = None
    if plan.to_embed:
        embedder = get_embedder()
        catalog.claim_model(embedder.identity)
    failed = removed = kept = ray_workers = 0
    balance = ""
    has_model = catalog.model_identity() is not None
    stale = has_model and not is_current(folder, catalog)  # killed before a save
    stale = stale or (has_model and pending_rebuild(folder, catalog) is not None)  # or retrain
    if has_model and (embedder is not None or plan.unlink_ids or plan.reuse or stale):
        thumbs = ThumbnailStore(folder)
        # the size this run leaves: an IVF trains once it holds a sample for it, then streams
        expected = catalog.counts()["vectors"] + plan.new
        vectors, _ = open_store(folder, catalog, expected=expected)
        _reuse_vectors(catalog, source_id, plan.reuse)  # before the originals may be deleted
        if options.thumbnails:
            copy_thumbnails(folder, catalog, plan.reuse)
        removed, kept = catalog.links.unlink(source_id, plan.unlink_ids)
        catch_up(vectors, catalog)
        try:
            if embedder is not None:
                failed, ray_workers, balance = _embed_all(
                    folder,
                    catalog,
                    vectors,
                    embedder,
                    source,
                    source_id,
                    plan,
                    options,
                    on_progress,
                )
        except BaseException:
            with contextlib.suppress(Exception):
                thumbs.prune(catalog)
            # Keep the first error. The FAISS file is derived: if it cannot be saved now,
            # the next open catches it up from the catalog.
            with contextlib.suppress(Exception):
                if vectors.dirty:
                    save_store(vectors, folder)
            raise
        vectors = maintain(vectors, catalog, folder)  # auto's kind again; IVF retrained
        if vectors.dirty:
            save_store(vectors, folder)
        thumbs.prune(catalog)  # the thumbnails of images deleted now (or by earlier writers)
    meta_filled = fill_photo_meta(catalog, source, source_id, on_progress=on_progress)
    catalog.mark_source_indexed(source_id)
    return IndexReport(
        source=source.uri,
        added=plan.new,
        updated=plan.changed,
        removed=removed,
        unchanged=plan.unchanged,
        failed=failed,
        seconds=time.perf_counter() - started,
        reused=len(plan.reuse),
        kept=kept,
        meta_filled=meta_filled,
        ray_workers=ray_workers,
        balance=balance,
    )


def forget_source(folder: Path, catalog: Catalog, uri: str) -> IndexReport:
    """Unlink every image of a source and drop the source; images no other source lists
    are deleted, and the FAISS file follows."""
    started = time.perf_counter()
    source_id = catalog.find_source_id(uri)
    if source_id is None:
        raise SourceError(f"{uri} is not a source of this index")
    removed, kept = catalog.links.forget(source_id)
    if catalog.model_identity() is not None and not is_current(folder, catalog):
        vectors, _ = open_store(folder, catalog)
        if vectors.dirty:
            save_store(vectors, folder)
    ThumbnailStore(folder).prune(catalog)
    return IndexReport(
        source=uri,
        added=0,
        updated=0,
        removed=removed,
        unchanged=0,
        failed=0,
        seconds=time.perf_counter() - started,
        kept=kept,
    )


def _reuse_vectors(catalog: Catalog, source_id: int, reuse: list[Reuse]) -> None:
    """Give moved, copied and touched files the stored vector of the same content."""
    for start in range(0, len(reuse), 500):
        chunk = reuse[start : start + 500]
        copies = catalog.scan.copies_of([item.from_id for item in chunk])
        records = []
        for item in chunk:
            vector, width, height, fmt, decode, precision = copies[item.from_id]
            entry = item.entry
            records.append(
                ImageRecord(
                    uri=entry.uri,
                    size=entry.size,
                    mtime_ns=entry.mtime_ns,
                    vector=vector,
                    width=width,
                    height=height,
                    format=fmt,
                    fingerprint=item.fingerprint,
                    decode=decode,
                    precision=precision,
                )
            )
        catalog.write_batch(source_id, records)


def _embed_all(
    folder: Path,
    catalog: Catalog,
    vectors: VectorStore,
    embedder: Embedder,
    source: Source,
    source_id: int,
    plan: SyncPlan,
    options: RunOptions,
    on_progress: ProgressCallback | None,
) -> tuple[int, int, str]:
    """Decode, embed and commit the plan's files batch by batch, here or through Ray;
    return how many failed, how many Ray workers embedded, and the decode path and core
    split used here ("" otherwise)."""
    failed = done = 0
    last_save = time.monotonic()
    total = len(plan.to_embed)
    if on_progress:
        on_progress("embed", 0, total)
    balance = ""
    with contextlib.ExitStack() as stack:
        if options.ray is not None:
            stream = stack.enter_context(_ray_stream(source, plan, embedder, options))
            ray_workers = stream.workers
        else:
            split = _core_split(source, plan, embedder, options)
            threads = stack.enter_context(torch_threads(split.threads))
            tensor = _tensor_decode(source, embedder, options)
            if source.local:
                path = "exact" if options.exact_decode else "draft"
                split = CoreSplit(split.cores, split.workers, threads)
                balance = f"{tensor.label if tensor else f'CPU ({path})'}: {split.describe()}"
            stream = (
                _embed(embedder, batch)
                for batch in _batches(source, plan, embedder, options, split.workers, tensor)
            )
            ray_workers = 0
        precision = getattr(stream, "precision", None) or getattr(embedder, "precision", None)
        for items, image_vectors in stream:
            records = records_for(items, image_vectors, precision)
            failed += sum(1 for record in records if not record.ok)
            catalog.write_batch(source_id, records)
            store_thumbnails(folder, catalog, items)
            catch_up(vectors, catalog)
            done += len(records)
            if on_progress:
                on_progress("embed", done, total)
            if time.monotonic() - last_save > SAVE_EVERY_S:
                save_store(vectors, folder)
                last_save = time.monotonic()
    return failed, ray_workers, balance


def _core_split(source: Source, plan: SyncPlan, embedder: Embedder, options: RunOptions):
    """The decode workers and torch threads of a run in this process; a remote source's
    fetch threads mostly wait on the network, so the model keeps the cores."""
    device = getattr(embedder, "device", "cpu")
    cores = available_cores()
    if not source.local:
        return split_cores(cores, 0, device)
    workers = pool_size(len(plan.to_embed), options.batch_size, options.workers, cores)
    return split_cores(cores, workers, device)


def _ray_stream(source: Source, plan: SyncPlan, embedder: Embedder, options: RunOptions):
    assert options.ray is not None
    return ray_embedding(
        plan.to_embed,
        local=source.local,
        store=source.store,
        embedder=embedder,
        options=options.ray,
        batch_size=options.batch_size,
        max_pixels=options.max_pixels,
        decode_size=None if options.exact_decode else getattr(embedder, "decode_size", None),
        fetch_workers=options.fetch_workers,
    )


def _tensor_decode(source: Source, embedder: Embedder, options: RunOptions) -> TensorDecode | None:
    """The run's batched tensor decode of local JPEGs (None: the PIL path)."""
    cfg = getattr(embedder, "preprocess_cfg", None)
    if not source.local or not isinstance(cfg, dict):
        return None
    device = getattr(embedder, "device", "cpu")
    return choose_tensor_decode(options.decode_path, device, cfg, options.exact_decode)


def _batches(
    source: Source,
    plan: SyncPlan,
    embedder: Embedder,
    options: RunOptions,
    workers: int,
    tensor: TensorDecode | None = None,
):
    """Local files decode in worker processes (JPEGs on the model's device with `tensor`);
    remote objects are fetched by threads."""
    decode_size = None if options.exact_decode else getattr(embedder, "decode_size", None)
    if tensor is not None:
        return tensor_batches(
            plan.to_embed,
            embedder.preprocess,
            tensor,
            options.batch_size,
            workers,
            options.max_pixels,
            decode_size,
            options.thumbnails,
        )
    if source.local:
        return decode_batches(
            plan.to_embed,
            embedder.preprocess,
            options.batch_size,
            workers,
            options.max_pixels,
            decode_size,
            options.thumbnails,
        )
    return fetch_batches(
        plan.to_embed,
        FileSystems(source.store).for_uri,
        embedder.preprocess,
        options.batch_size,
        options.fetch_workers,
        max_pixels=options.max_pixels,
        decode_size=decode_size,
        thumbnails=options.thumbnails,
    )


def _embed(embedder: Embedder, batch: Batch) -> tuple[list[Decoded], Any]:
    vectors = embedder.encode_images(batch.pixels) if batch.pixels is not None else []
    return batch.items, vectors


def records_for(
    items: list[Decoded], vectors: Any, precision: str | None = None
) -> list[ImageRecord]:
    """Catalog records of a batch: each decoded item with the next vector (made in
    `precision`), or its failure."""
    records = []
    position = 0
    for item in items:
        entry = item.entry
        record = ImageRecord(
            uri=entry.uri,
            size=entry.size,
            mtime_ns=entry.mtime_ns,
            width=item.width,
            height=item.height,
            format=item.format,
            error=item.error,
            fingerprint=item.fingerprint,
            decode=item.decode,
            precision=precision,
            meta=item.meta,
        )
        if item.error is None:
            record.vector = vectors[position]
            position += 1
        records.append(record)
    return records
