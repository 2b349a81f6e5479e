"""Remote batches: a thread pool fetches, decodes and preprocesses objects, with bounded
memory, feeding the embedder in order. At most `fetch_workers` requests and
`max_bytes_in_flight` bytes are outstanding at once; fetching overlaps embedding.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from clipdex.defaults import DEFAULT_BATCH_SIZE, DEFAULT_FETCH_WORKERS
from clipdex.errors import ImageDecodeError
from clipdex.indexer.pipeline import Batch, Decoded, collate, decoded
from clipdex.media.decode import DEFAULT_MAX_PIXELS, load_image_for
from clipdex.sources.fetch import MAX_OBJECT_BYTES, RetryPolicy, fetch_bytes
from clipdex.sources.fingerprint import fingerprint_bytes
from clipdex.sources.local import FileEntry


def fetch_batches(
    entries: Sequence[FileEntry],
    fs_for: Callable[[str], Any],
    preprocess: Callable,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fetch_workers: int = DEFAULT_FETCH_WORKERS,
    max_bytes_in_flight: int = 512 * 1024 * 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    retry: RetryPolicy | None = None,
    decode_size: int | None = None,
    thumbnails: bool = False,
) -> Iterator[Batch]:
    """Yield batches in the order of `entries`; fetching overlaps the caller's embedding.
    With `decode_size`, images are decoded no smaller than that on their short side; with
    `thumbnails`, each carries a thumbnail made from its decoded image."""

    def work(entry: FileEntry) -> tuple[Decoded, Any]:
        return fetch_one(entry, fs_for, preprocess, max_pixels, retry, decode_size, thumbnails)

    pending: deque[tuple[FileEntry, Future]] = deque()
    in_flight = 0
    items: list[tuple[Decoded, Any]] = []
    with ThreadPoolExecutor(fetch_workers, thread_name_prefix="clipdex-fetch") as pool:
        position = 0
        while position < len(entries) or pending:
            while (
                position < len(entries)
                and len(pending) < 4 * fetch_workers
                and (not pending or in_flight + entries[position].size <= max_bytes_in_flight)
            ):
                entry = entries[position]
                pending.append((entry, pool.submit(work, entry)))
                in_flight += entry.size
                position += 1
            entry, future = pending.popleft()
            items.append(future.result())
            in_flight -= entry.size
            if len(items) == batch_size:
                yield collate(items)
                items = []
        if items:
            yield collate(items)


def fetch_one(
    entry: FileEntry,
    fs_for: Callable[[str], Any],
    preprocess: Callable,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    retry: RetryPolicy | None = None,
    decode_size: int | None = None,
    thumbnail: bool = False,
) -> tuple[Decoded, Any]:
    """One object -> (Decoded, preprocessed pixels or None): the one fetch and decode of
    remote objects, in this thread pool or in Ray tasks alike (with a thumbnail if asked)."""
    fingerprint = entry.stored_fingerprint
    try:
        if entry.size > MAX_OBJECT_BYTES:
            raise ImageDecodeError(f"object too large: {entry.size:,} bytes")
        data = fetch_bytes(fs_for(entry.uri), entry.uri, retry)
    except ImageDecodeError as exc:
        return Decoded(entry, error=str(exc), fingerprint=fingerprint), None
    # Without a version from the store (local files, servers that send none), the
    # content itself is the fingerprint.
    fingerprint = fingerprint or fingerprint_bytes(data)
    try:
        loaded = load_image_for(data, max_pixels, decode_size)
        pixels = preprocess(loaded.image)
    except ImageDecodeError as exc:
        return Decoded(entry, error=str(exc), fingerprint=fingerprint), None
    except Exception as exc:  # a transform failing on a legal image is still one file
        return Decoded(entry, error=f"preprocessing failed: {exc}", fingerprint=fingerprint), None
    return decoded(entry, loaded, fingerprint, thumbnail), pixels
