"""Parallel decode and preprocess in worker processes, batched for the embedder.

A torch DataLoader runs `load_image_for` + the model's preprocessing in `workers` processes
and hands the main process ready batches (with `decode_size`, decoded no larger than the
model needs: media/decode.py); a file that fails to decode travels through the
batch as a failure with its reason, so one bad file never stops a run.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipdex.defaults import DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS
from clipdex.errors import ImageDecodeError
from clipdex.indexer.balance import available_cores, split_cores
from clipdex.media.decode import DEFAULT_MAX_PIXELS, LoadedImage, load_image_for
from clipdex.media.thumbnails import make_thumbnail
from clipdex.sources.fingerprint import read_fingerprinted
from clipdex.sources.local import FileEntry
from clipdex.types import PhotoMeta

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class Decoded:
    """One file after decoding: image size and format, or the reason it failed; `decode`
    says whether the model saw the full decode ("exact") or a smaller one ("draft"), or
    the batched tensor decode's ("tensor", indexer/tensor_pipeline.py)."""

    entry: FileEntry
    width: int | None = None
    height: int | None = None
    format: str | None = None
    error: str | None = None
    fingerprint: str | None = None
    decode: str | None = None
    meta: PhotoMeta | None = None
    #: (encoded bytes, format) of a thumbnail made from the decoded image, when asked for.
    thumbnail: tuple[bytes, str] | None = None


@dataclass
class Batch:
    items: list[Decoded]
    #: Preprocessed pixels of the items without an error, in order.
    pixels: torch.Tensor | None


class _DecodeDataset:
    """Map-style dataset: index -> (Decoded, pixels or None)."""

    def __init__(
        self,
        entries: Sequence[FileEntry],
        preprocess: Callable,
        max_pixels: int,
        decode_size: int | None = None,
        thumbnails: bool = False,
    ):
        self.entries = entries
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.decode_size = decode_size
        self.thumbnails = thumbnails

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, position: int) -> tuple[Decoded, Any]:
        return decode_file(
            self.entries[position],
            self.preprocess,
            self.max_pixels,
            self.decode_size,
            self.thumbnails,
        )


def decode_file(
    entry: FileEntry,
    preprocess: Callable,
    max_pixels: int,
    decode_size: int | None,
    thumbnail: bool = False,
) -> tuple[Decoded, Any]:
    """One local file -> (Decoded, preprocessed pixels or None): the one decode of local
    files, in DataLoader workers or Ray tasks alike (with a thumbnail if asked)."""
    content, readable = read_fingerprinted(entry.uri)  # the bytes hashed are decoded
    try:
        loaded = load_image_for(readable, max_pixels, decode_size)
    except ImageDecodeError as exc:
        return Decoded(entry, error=str(exc), fingerprint=content), None
    try:
        pixels = preprocess(loaded.image)
    except Exception as exc:  # a transform failing on a legal image is still one file
        return Decoded(entry, error=f"preprocessing failed: {exc}", fingerprint=content), None
    return decoded(entry, loaded, content, thumbnail), pixels


def decoded(
    entry: FileEntry, loaded: LoadedImage, fingerprint: str | None, thumbnail: bool = False
) -> Decoded:
    """The Decoded of an image that loaded (with a thumbnail of it, if asked for)."""
    return Decoded(
        entry,
        loaded.width,
        loaded.height,
        loaded.format,
        None,
        fingerprint,
        loaded.decode,
        loaded.meta,
        make_thumbnail(loaded.image) if thumbnail else None,
    )


def collate(samples: list[tuple[Decoded, Any]]) -> Batch:
    """(Decoded, pixels or None) samples -> a Batch with the pixels of the decoded ones."""
    import torch

    items = [decoded for decoded, _ in samples]
    tensors = [pixels for _, pixels in samples if pixels is not None]
    return Batch(items, torch.stack(tensors) if tensors else None)


def decode_batches(
    entries: Sequence[FileEntry],
    preprocess: Callable,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = DEFAULT_DECODE_WORKERS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    decode_size: int | None = None,
    thumbnails: bool = False,
) -> Iterator[Batch]:
    """Yield batches of decoded, preprocessed images in the order of `entries`; with
    `decode_size`, images are decoded no smaller than that on their short side; with
    `thumbnails`, each carries a thumbnail made from its decoded image."""
    if not entries:
        return
    workers = pool_size(len(entries), batch_size, workers, available_cores())
    dataset = _DecodeDataset(entries, preprocess, max_pixels, decode_size, thumbnails)
    yield from worker_loader(dataset, batch_size, workers, collate)


def worker_loader(dataset, batch_size: int, workers: int, collate_fn):
    """A DataLoader over `dataset` in order, in `workers` forked processes (0: in this
    one) that die with this process, each a few batches ahead."""
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn,
        prefetch_factor=4 if workers else None,
        multiprocessing_context="fork" if workers else None,
        worker_init_fn=functools.partial(die_with_parent, os.getpid()) if workers else None,
    )


def pool_size(count: int, batch_size: int, workers: int | None, cores: int) -> int:
    """Decode processes for `count` files: none for a couple of batches (starting them
    costs more than decoding those); `workers` None: chosen from `cores` (balance.py)."""
    if count <= 2 * batch_size:
        return 0
    if workers is None:
        return split_cores(cores).workers
    return workers


def die_with_parent(parent: int, _worker_id: int = 0) -> None:
    """Worker start-up: end this worker as soon as `parent` dies, even by SIGKILL.

    Without it a worker blocked handing a batch to a killed parent lives on as an orphan
    (holding its memory). Linux: the kernel sends SIGKILL when the parent goes; elsewhere
    a daemon thread polls for it. A parent already gone ends the worker at once.
    """
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _set_parent_death_signal(signum: int) -> bool:
    """Linux prctl(PR_SET_PDEATHSIG). The signal comes when the thread that started the
    workers (the one iterating the loader) ends, so iterate from a thread that outlives it."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_pdeathsig = 1
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
