"""The index folder: where it is by default, and whether it exists and may be written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from clipdex.defaults import DEFAULT_INDEX_DIR, INDEX_ENV
from clipdex.errors import IndexNotFoundError, IndexReadOnlyError
from clipdex.storage.catalog import CATALOG_FILE


def default_index_dir() -> Path:
    """$CLIPDEX_INDEX, else ./.clipdex (clipdex/defaults.py)."""
    return Path(os.environ.get(INDEX_ENV) or DEFAULT_INDEX_DIR)


def index_exists(folder: Path) -> bool:
    return (folder / CATALOG_FILE).is_file()


def require_index(folder: Path) -> None:
    if not index_exists(folder):
        raise IndexNotFoundError(f"no index at {folder}; create one with `clipdex index FOLDER`")


def require_writable(folder: Path) -> None:
    """The index exists and its folder may be written (else a typed error)."""
    require_index(folder)
    if not writable(folder):
        raise IndexReadOnlyError(f"index folder {folder} is read-only")


def prepare_folder(folder: Path) -> None:
    """Create the index folder if needed; refuse one that cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexReadOnlyError(f"cannot create index folder {folder}: {exc.strerror}") from exc
    if not writable(folder):
        raise IndexReadOnlyError(f"index folder {folder} is read-only")


def writable(folder: Path) -> bool:
    """A real write attempt: os.access says yes to root even on a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
