"""Content fingerprints: `sha256:SIZE:HEX` of a whole file, and which fingerprints identify content.

A fingerprint recognises a moved, copied or merely touched file, so its stored vector can
be reused instead of embedding it again. Only a full-content match may reuse a vector:
sampling misses edits in the middle of uncompressed files (BMP, TIFF). Fingerprints of
older clipdex versions (`SIZE:HEX`, sampled) never equal these, so they are never reused.

Remote objects carry what their store says instead (see `remote.py`): `etag:`, `md5:` and
`digest:` identify content; `version:` (an HTTP ETag or Last-Modified) only tells one
object's versions apart, so it never matches another object.
"""

from __future__ import annotations

import hashlib

from clipdex.errors import ImageDecodeError
from clipdex.media.decode import open_regular

CHUNK = 1024 * 1024
#: Files up to this size are read once: hashed and decoded from the same bytes.
INLINE_BYTES = 64 * 1024 * 1024
#: Prefixes of fingerprints that name content, so equal ones may share a vector.
IDENTITIES = ("sha256:", "etag:", "md5:", "digest:")


def fingerprint_bytes(data: bytes) -> str:
    return f"sha256:{len(data)}:{hashlib.sha256(data).hexdigest()}"


def fingerprint(path: str, size: int | None = None) -> str | None:
    """`sha256:SIZE:HEX` of the whole file at `path`, or None if it is not a readable file.

    `size` is accepted for callers that know it; the size stored is what was read.
    """
    digest = hashlib.sha256()
    read = 0
    try:
        with open_regular(path) as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                read += len(chunk)
    except (OSError, ImageDecodeError):
        return None
    return f"sha256:{read}:{digest.hexdigest()}"


def read_fingerprinted(path: str, limit: int = INLINE_BYTES) -> tuple[str | None, bytes | str]:
    """(fingerprint, what to decode) for a local file.

    A file of at most `limit` bytes is read once, so the fingerprint is of exactly the bytes
    decoded; a larger one is hashed in a streaming read and decoded from its path. When
    the file cannot be read, the fingerprint is None and decoding the path says why.
    """
    try:
        with open_regular(path) as handle:
            data = handle.read(limit + 1)
    except (OSError, ImageDecodeError):
        return None, path
    if len(data) > limit:
        return fingerprint(path), path
    return fingerprint_bytes(data), data


def is_content_identity(value: str | None) -> bool:
    """Whether equal fingerprints mean equal content (so a stored vector may be reused)."""
    return value is not None and value.startswith(IDENTITIES)
