"""Network-bound fetching: a thread pool feeding decode and preprocess, with bounded memory.

Each object is fetched with retries (exponential backoff with jitter) for transient
errors; permanent ones (403, 404, not an image) become a recorded failure with its reason.
At most `fetch_workers` requests and `max_bytes_in_flight` bytes are outstanding at once.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import ImageDecodeError
from .decode import DEFAULT_MAX_PIXELS, load_image, open_regular
from .fingerprint import fingerprint_bytes
from .pipeline import Batch, Decoded, collate
from .remote import StoreOptions, filesystem, scheme_of, strip_scheme
from .sources import FileEntry

#: An object larger than this is refused rather than held in memory.
MAX_OBJECT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_s: float = 0.2
    cap_s: float = 10.0

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**attempt))."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


class FileSystems:
    """One fsspec filesystem per scheme, made on first use; None for local paths."""

    def __init__(self, options: StoreOptions | None = None):
        self.options = options or StoreOptions()
        self._made: dict[str, Any] = {}
        self._lock = threading.Lock()

    def for_uri(self, uri: str) -> Any:
        scheme = scheme_of(uri)
        if scheme is None:
            return None
        with self._lock:
            if scheme not in self._made:
                self._made[scheme] = filesystem(uri, self.options)
            return self._made[scheme]


def fetch_bytes(fs: Any, uri: str, retry: RetryPolicy = RetryPolicy()) -> bytes:
    """An object's bytes, retrying transient errors; ImageDecodeError for permanent ones.

    Only network and I/O errors are retried (and then recorded as a failure); any other
    exception is a bug and propagates. `fs` None reads a local file, once.
    """
    if fs is None:
        return _read_local(uri)
    path = strip_scheme(uri)
    transient = _transient_errors()
    last: BaseException | None = None
    for attempt in range(retry.attempts):
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            raise ImageDecodeError("object vanished before it could be fetched") from None
        except PermissionError as exc:
            raise ImageDecodeError(f"access denied: {_first_line(exc)}") from None
        except transient as exc:  # timeouts, 5xx, throttling, dropped connections
            status = getattr(exc, "status", None)  # an HTTP response's status
            if isinstance(status, int) and 400 <= status < 500 and status not in (408, 429):
                denied = "access denied: " if status in (401, 403) else ""
                raise ImageDecodeError(f"{denied}HTTP {status}: {_first_line(exc)}") from None
            last = exc
            if attempt + 1 < retry.attempts:
                time.sleep(retry.delay(attempt))
    raise ImageDecodeError(f"fetch failed after {retry.attempts} attempts: {_first_line(last)}")


def _transient_errors() -> tuple[type[BaseException], ...]:
    """What a network or a store raises for a failure worth retrying (OSError covers
    ConnectionError and TimeoutError); never TypeError, KeyError and other bugs."""
    kinds: list[type[BaseException]] = [OSError]
    if (aiohttp := sys.modules.get("aiohttp")) is not None:
        kinds.append(aiohttp.ClientError)
    if (botocore := sys.modules.get("botocore.exceptions")) is not None:
        kinds.append(botocore.BotoCoreError)
    return tuple(kinds)


def _read_local(path: str) -> bytes:
    """A local file's bytes: a regular file (never a FIFO or a device), size-capped."""
    try:
        with open_regular(path) as handle:
            data = handle.read(MAX_OBJECT_BYTES + 1)
    except FileNotFoundError:
        raise ImageDecodeError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read: {exc.strerror or _first_line(exc)}") from None
    if len(data) > MAX_OBJECT_BYTES:
        raise ImageDecodeError(f"too large: over {MAX_OBJECT_BYTES:,} bytes")
    return data


def _first_line(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text.splitlines()[0][:200] if text else type(exc).__name__


def fetch_batches(
    entries: Sequence[FileEntry],
    fs_for: Callable[[str], Any],
    preprocess: Callable,
    batch_size: int = 64,
    fetch_workers: int = 16,
    max_bytes_in_flight: int = 512 * 1024 * 1024,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    retry: RetryPolicy = RetryPolicy(),
) -> Iterator[Batch]:
    """Yield batches in the order of `entries`; fetching overlaps the caller's embedding."""

    def work(entry: FileEntry) -> tuple[Decoded, Any]:
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
            image, fmt = load_image(data, max_pixels)
            pixels = preprocess(image)
        except ImageDecodeError as exc:
            return Decoded(entry, error=str(exc), fingerprint=fingerprint), None
        except Exception as exc:  # a transform failing on a legal image is still one file
            return Decoded(
                entry, error=f"preprocessing failed: {exc}", fingerprint=fingerprint
            ), None
        return Decoded(entry, image.width, image.height, fmt, None, fingerprint), pixels

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
