"""A cheap content fingerprint: size plus SHA-256 of the first and last 64 KiB.

It recognises a moved, copied or merely touched file without decoding it, so its stored
vector can be reused instead of embedding it again.
"""

from __future__ import annotations

import hashlib

BLOCK = 64 * 1024


def fingerprint(path: str, size: int | None = None) -> str | None:
    """`size:hash` of the file at `path`, or None if it cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(BLOCK)
            if size is None or len(head) < BLOCK:
                size = handle.seek(0, 2)
            digest = hashlib.sha256(head)
            if size > BLOCK:
                handle.seek(max(BLOCK, size - BLOCK))
                digest.update(handle.read(BLOCK))
    except OSError:
        return None
    return f"{size}:{digest.hexdigest()[:40]}"
