"""Embedding with Ray Data: the images a plan must embed, spread over a Ray cluster.

The driver plans as always (indexer/plan.py) and stays the one writer. The files to embed
become a Ray Dataset of (position, uri, size, mtime, version) rows; reading and decoding
run as Ray tasks (`decode_file` / `fetch_one`, the same functions as the in-process path,
so the pixels are the same); embedding runs in a pool of actors, one model each
(`EmbedWorker`, on a GPU when asked). Batches stream back in order (`iter_batches`) and
the indexer commits them one transaction each, as it does its own: a killed driver or
worker loses at most the batches in flight, and the next run resumes from the catalog.

`ray` is imported lazily: this module is loaded by every index run.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipdex.errors import BackendError, ClipdexError, ModelLoadError
from clipdex.indexer.fetch_pipeline import fetch_one
from clipdex.indexer.pipeline import Decoded, decode_file
from clipdex.indexer.ray_connect import connect, first_line
from clipdex.sources.fetch import FileSystems
from clipdex.sources.local import FileEntry
from clipdex.sources.remote import StoreOptions

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import ModelSpec
    from clipdex.types import ModelIdentity

#: Blocks the input rows are cut into at most: each a few batches, so work streams.
MAX_BLOCKS = 10_000
#: Decode batches a task worker process handles before Ray starts a fresh one.
DECODE_CALLS = 1000
INSTALL = "the Ray backend needs the ray package: pip install 'clipdex[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run embeds.

    address: None: the Ray this process is connected to, else a new local one; "auto":
        the cluster this machine belongs to; "ray://host:10001": a remote cluster.
    workers: embedding actors (one model each); None: one per GPU when GPUs are asked
        for, else one per node.
    gpus_per_worker: GPUs each actor holds (0: the actors run on CPUs).
    cpus_per_worker: CPUs each actor reserves; its torch threads are its node's CPUs
        divided among the actors there, so one machine is used whole as in-process.
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0


def require_ray() -> None:
    """BackendError with the install line when ray (with Ray Data) is not importable."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise BackendError(INSTALL) from None
    del ray


def block_count(total: int, batch_size: int) -> int:
    """Input blocks: about a batch each (rows split evenly), at most MAX_BLOCKS."""
    batches = max(1, math.ceil(total / batch_size))
    per_block = math.ceil(batches / MAX_BLOCKS)
    return max(1, math.ceil(batches / per_block))


def plan_workers(options: RayOptions, resources: dict[str, float], nodes: int) -> tuple[int, int]:
    """(actors, torch threads per actor) for a cluster's resources; BackendError when it
    cannot hold the GPUs asked for, or the actors would leave no CPU to decode on (Ray
    would wait for one for ever)."""
    nodes = max(1, nodes)
    gpus = resources.get("GPU", 0.0)
    if options.workers is not None:
        workers = options.workers
    elif options.gpus_per_worker > 0:
        workers = max(1, int(gpus // options.gpus_per_worker))
    else:
        workers = nodes
    if workers < 1:
        raise BackendError(f"a Ray run needs at least one worker, not {workers}")
    if options.gpus_per_worker > 0 and workers * options.gpus_per_worker > gpus:
        raise BackendError(
            f"{workers} Ray workers with {options.gpus_per_worker:g} GPU(s) each need "
            f"{workers * options.gpus_per_worker:g} GPUs; the cluster has {gpus:g}"
        )
    cpus = resources.get("CPU", 0.0)
    if cpus - workers * options.cpus_per_worker < 1:
        raise BackendError(
            f"{workers} Ray workers with {options.cpus_per_worker:g} CPU(s) each leave no CPU "
            f"of the cluster's {cpus:g} for reading and decoding; ask for fewer workers"
        )
    cpus_per_node = max(cpus, 1.0) / nodes
    threads = max(1, int(cpus_per_node // math.ceil(workers / nodes)))
    return workers, threads


def to_rows(entries: Sequence[FileEntry]) -> list[dict[str, Any]]:
    """The Dataset's input rows: a position in `entries` and what reading needs."""
    return [
        {
            "i": n,
            "uri": e.uri,
            "size": e.size,
            "mtime_ns": e.mtime_ns,
            "version": e.version or "",
            "versioned": e.version is not None,
        }
        for n, e in enumerate(entries)
    ]


def entry_of_row(batch: dict[str, np.ndarray], n: int) -> FileEntry:
    version = str(batch["version"][n]) if batch["versioned"][n] else None
    return FileEntry(
        str(batch["uri"][n]), int(batch["size"][n]), int(batch["mtime_ns"][n]), version
    )


@dataclass(frozen=True)
class DecodeTask:
    """Reads, decodes and preprocesses one batch of rows (a Ray task; pickled once)."""

    local: bool
    store: StoreOptions | None
    preprocess: Callable
    pixel_shape: tuple[int, ...]
    max_pixels: int
    decode_size: int | None
    fetch_workers: int

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        entries = [entry_of_row(batch, n) for n in range(len(batch["i"]))]
        if self.local:
            done = [
                decode_file(e, self.preprocess, self.max_pixels, self.decode_size) for e in entries
            ]
        else:
            fs_for = FileSystems(self.store).for_uri
            with ThreadPoolExecutor(max(1, min(self.fetch_workers, len(entries)))) as pool:
                done = list(
                    pool.map(
                        lambda e: fetch_one(
                            e, fs_for, self.preprocess, self.max_pixels, None, self.decode_size
                        ),
                        entries,
                    )
                )
        pixels = np.zeros((len(done), *self.pixel_shape), dtype=np.float32)
        for n, (_, tensor) in enumerate(done):
            if tensor is not None:
                pixels[n] = tensor.numpy()
        items = [item for item, _ in done]
        return {
            "i": batch["i"],
            "error": np.array([d.error or "" for d in items], dtype=object),
            "width": np.array([-1 if d.width is None else d.width for d in items]),
            "height": np.array([-1 if d.height is None else d.height for d in items]),
            "format": np.array([d.format or "" for d in items], dtype=object),
            "fingerprint": np.array([d.fingerprint or "" for d in items], dtype=object),
            "decode": np.array([d.decode or "" for d in items], dtype=object),
            "ok": np.array([tensor is not None for _, tensor in done]),
            "pixels": pixels,
        }


class EmbedWorker:
    """A Ray actor holding one model: preprocessed pixels in, unit vectors out."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str,
        precision: str,
        identity: ModelIdentity,
        threads: int,
    ):
        import torch

        from clipdex.models.open_clip import Embedder

        torch.set_num_threads(threads)
        self.embedder = Embedder(spec, device, precision)
        if self.embedder.identity != identity:
            raise ModelLoadError(
                f"a Ray worker loaded {self.embedder.identity.describe()}, not the driver's "
                f"{identity.describe()}: its weights differ"
            )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np
        import torch

        ok = np.asarray(batch["ok"], dtype=bool)
        dim = self.embedder.identity.dim
        vectors = np.zeros((len(ok), dim), dtype=np.float32)
        if ok.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok]))
            vectors[ok] = self.embedder.encode_images(pixels)
        out = {key: value for key, value in batch.items() if key != "pixels"}
        out["vector"] = vectors
        return out


def items_of(batch: dict[str, np.ndarray], entries: Sequence[FileEntry]) -> list[Decoded]:
    """A returned batch's rows as the Decoded items the indexer writes."""
    items = []
    for n, position in enumerate(batch["i"]):
        width, height = int(batch["width"][n]), int(batch["height"][n])
        items.append(
            Decoded(
                entries[int(position)],
                width=None if width < 0 else width,
                height=None if height < 0 else height,
                format=str(batch["format"][n]) or None,
                error=str(batch["error"][n]) or None,
                fingerprint=str(batch["fingerprint"][n]) or None,
                decode=str(batch["decode"][n]) or None,
            )
        )
    return items


@dataclass
class RayStream:
    """Embedded batches in the order of `entries`: (items, vectors of the ok items)."""

    workers: int
    dataset: Any
    entries: Sequence[FileEntry]
    batch_size: int
    #: The precision the actors' models run in (the catalog records it).
    precision: str | None = None

    def __iter__(self) -> Iterator[tuple[list[Decoded], np.ndarray]]:
        batches = self.dataset.iter_batches(
            batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2
        )
        with _ray_errors():
            for batch in batches:
                ok = batch["ok"].astype(bool)
                yield items_of(batch, self.entries), batch["vector"][ok]


@contextlib.contextmanager
def ray_embedding(
    entries: Sequence[FileEntry],
    *,
    local: bool,
    store: StoreOptions | None,
    embedder: Embedder,
    options: RayOptions,
    batch_size: int,
    max_pixels: int,
    decode_size: int | None,
    fetch_workers: int,
) -> Iterator[RayStream]:
    """Connect to (or start) Ray, and stream `entries` through decode tasks and embedding
    actors; Ray is shut down afterwards only if this call started it."""
    require_ray()
    import ray

    started = connect(options.address)
    try:
        with _quiet_data_context():
            yield _stream(
                ray, entries, local, store, embedder, options, batch_size, max_pixels,
                decode_size, fetch_workers,
            )  # fmt: skip
    finally:
        if started:
            ray.shutdown()


def _stream(
    ray, entries, local, store, embedder, options, batch_size, max_pixels, decode_size,
    fetch_workers,
) -> RayStream:  # fmt: skip
    from PIL import Image

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    workers, threads = plan_workers(options, ray.cluster_resources(), nodes)
    probe = decode_size or 256
    pixel_shape = tuple(embedder.preprocess(Image.new("RGB", (probe, probe))).shape)
    decode = DecodeTask(
        local, store, embedder.preprocess, pixel_shape, max_pixels, decode_size, fetch_workers
    )
    device = "cuda" if options.gpus_per_worker > 0 else "cpu"
    precision = embedder.precision if device == embedder.device else "auto"
    dataset = (
        _from_items(ray, to_rows(entries), block_count(len(entries), batch_size))
        # Decoding runs in tasks of its own (their max_calls keeps Ray Data from fusing
        # them into the actors, where they would run serially with the model).
        .map_batches(
            decode,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=1,
            max_calls=DECODE_CALLS,
        )
        .map_batches(
            EmbedWorker,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_args=(embedder.spec, device, precision, embedder.identity, threads),
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
        )
    )
    from clipdex.models.device import resolve_precision

    ran = resolve_precision(precision, device)
    return RayStream(workers, dataset, entries, batch_size, ran)


def _from_items(ray, rows: list[dict[str, Any]], blocks: int):
    try:
        return ray.data.from_items(rows, override_num_blocks=blocks)
    except TypeError:  # Ray before 2.10
        return ray.data.from_items(rows, parallelism=blocks)


@contextlib.contextmanager
def _quiet_data_context() -> Iterator[None]:
    """Ordered output (ids are given in commit order, as in-process), no progress bars or
    execution logs on the user's terminal; the process's own settings restored after."""
    from ray.data import DataContext

    context = DataContext.get_current()
    settings = {
        "enable_progress_bars": False,
        "print_on_execution_start": False,
        "enable_auto_log_stats": False,
        "verbose_stats_logs": False,
    }
    saved = {key: getattr(context, key) for key in settings if hasattr(context, key)}
    saved_order = context.execution_options.preserve_order
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    for key in saved:
        setattr(context, key, settings[key])
    context.execution_options.preserve_order = True
    data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(context, key, value)
        context.execution_options.preserve_order = saved_order
        data_logger.setLevel(saved_level)


@contextlib.contextmanager
def _ray_errors() -> Iterator[None]:
    """A clipdex error raised in a task or actor comes out as itself; Ray's own failures
    (a cluster that cannot be reached, a task that failed for good) as one BackendError."""
    import ray.exceptions

    try:
        yield
    except ClipdexError:
        raise
    except (ray.exceptions.RayError, ConnectionError, RuntimeError) as exc:
        cause = _clipdex_cause(exc)
        if cause is not None:
            raise cause from None
        raise BackendError(
            f"the Ray run failed: {first_line(exc)}; batches already committed are kept, "
            "run it again to resume"
        ) from exc


def _clipdex_cause(exc: BaseException) -> ClipdexError | None:
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClipdexError):
            return current
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and id(cause) not in seen:
            current = cause
        else:
            current = current.__cause__ or current.__context__
    return None
