"""Reading an image's bytes from wherever it lives (local disk, an object store, the web).

Each object is fetched with retries (exponential backoff with jitter) for transient
errors; permanent ones (403, 404, not an image) become a recorded failure with its reason.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from clipdex.errors import ImageDecodeError
from clipdex.media.decode import open_regular
from clipdex.sources.remote import StoreOptions, filesystem, scheme_of, strip_scheme

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


def fetch_bytes(fs: Any, uri: str, retry: RetryPolicy | None = None) -> bytes:
    """An object's bytes, retrying transient errors; ImageDecodeError for permanent ones.

    Only network and I/O errors are retried (and then recorded as a failure); any other
    exception is a bug and propagates. `fs` None reads a local file, once. `retry`
    defaults to a RetryPolicy() made at call time.
    """
    if fs is None:
        return _read_local(uri)
    retry = retry if retry is not None else RetryPolicy()
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
