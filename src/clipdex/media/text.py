"""Text files a user hands in (labels, templates, captions, pairs): UTF-8 or a clear error."""

from __future__ import annotations

from pathlib import Path


def read_utf8(path: Path, error: type[Exception]) -> str:
    """A text file's contents (UTF-8, a BOM allowed); `error` names a binary or unreadable
    file in one line instead of a UnicodeDecodeError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
