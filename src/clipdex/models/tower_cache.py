"""A per-user cache of text towers as plain .npy files, memory-mapped on load, so a text
query can run the tower in numpy (models/text_numpy.py) without importing torch.

Layout, under `cache_root()` (CLIPDEX_CACHE, else $XDG_CACHE_HOME/clipdex, else
~/.cache/clipdex):

    text-towers/<name>-<key>/manifest.json   model name, weights string, architecture,
                                             each array's file, shape, dtype and size
    text-towers/<name>-<key>/NNN.npy         one array a file, float32
    checkpoints.json                         path -> (size, mtime_ns, ctime_ns, inode,
                                             device, sha256) of checkpoints hashed

One folder per model identity (name + weights: a checkpoint's SHA-256 or a tag). A folder
is written whole under a temporary name and renamed into place, so an export killed half
way leaves no cache; the MAX_TOWERS most recently written are kept; a folder whose files disagree with its manifest (short, missing,
another shape) is deleted and never used. A checkpoint's SHA-256 is its identity; the
record lets an unchanged file skip the rehash (0.45 s for 605 MB), and any change of its
size, times or inode rehashes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipdex.models.spec import file_sha256

#: Bumped when the layout changes: older folders are then ignored.
FORMAT = 2
#: A temporary export folder older than this was left by a killed export: removed.
STALE_PARTIAL_S = 3600.0
#: Towers kept (each ViT-B-32 text tower is 243 MB); the oldest written go first.
MAX_TOWERS = 4
#: Checkpoints remembered in checkpoints.json (the most recently hashed).
MAX_RECORDS = 64


def cache_root() -> Path:
    """The per-user cache folder (not created here)."""
    if os.environ.get("CLIPDEX_CACHE"):
        return Path(os.environ["CLIPDEX_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "clipdex"


def tower_folder(name: str, weights: str) -> Path:
    """The folder of the text tower of model `name` with `weights`."""
    key = hashlib.sha256(json.dumps([FORMAT, name, weights]).encode()).hexdigest()[:24]
    return cache_root() / "text-towers" / f"{_safe(name)}-{key}"


def any_tower(name: str) -> bool:
    """Whether any weights of model `name` are cached (else a checkpoint need not be
    hashed to look for its tower: torch's load hashes it anyway)."""
    folder = cache_root() / "text-towers"
    return folder.is_dir() and any(folder.glob(f"{_safe(name)}-*/manifest.json"))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]


def load_tower(
    name: str, weights: str, config: dict, verify: Callable[[dict, Any], bool] | None = None
) -> dict[str, np.ndarray] | None:
    """The cached arrays (memory-mapped, read-only) of `name`/`weights` built with
    `config`; None when there is no whole cache (a damaged one is deleted). `verify(arrays,
    check)` is given the `check` saved with them (a probe's result): False, the files
    changed since they were written (sizes and shapes alike): deleted too."""
    folder = tower_folder(name, weights)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        _remove(folder)
        return None
    try:
        if (manifest["format"], manifest["name"], manifest["weights"]) != (FORMAT, name, weights):
            raise ValueError("another model's cache")
        if manifest["config"] != config:
            raise ValueError("another architecture")
        arrays = {}
        for key, entry in manifest["arrays"].items():
            path = folder / entry["file"]
            if path.stat().st_size != entry["bytes"]:
                raise ValueError(f"{path} has the wrong size")
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
                raise ValueError(f"{path} has the wrong shape")
            arrays[key] = array
        if verify is not None and not verify(arrays, manifest["check"]):
            raise ValueError("its contents changed since they were written")
    except (OSError, ValueError, KeyError, TypeError):
        _remove(folder)
        return None
    return arrays


def save_tower(
    name: str, weights: str, config: dict, arrays: dict[str, np.ndarray], check: Any = None
) -> Path:
    """Write the arrays as `name`/`weights`'s cache, with `check` (what `load_tower`'s
    `verify` compares): to a temporary folder, renamed into place when whole (a
    concurrent writer's folder, when first, is kept)."""
    folder = tower_folder(name, weights)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder.parent)
    scratch = Path(tempfile.mkdtemp(prefix=".partial-", dir=folder.parent))
    try:
        entries = {}
        for i, (key, array) in enumerate(arrays.items()):
            file = f"{i:03d}.npy"
            array = np.ascontiguousarray(array, dtype=np.float32)
            np.save(scratch / file, array, allow_pickle=False)
            entries[key] = {
                "file": file,
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "bytes": (scratch / file).stat().st_size,
            }
        manifest = {
            "format": FORMAT,
            "name": name,
            "weights": weights,
            "config": config,
            "arrays": entries,
            "check": check,
        }
        (scratch / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            scratch.rename(folder)
        except OSError:
            if not (folder / "manifest.json").is_file():  # not a concurrent writer's
                _remove(folder)
                scratch.rename(folder)
    finally:
        _remove(scratch)
    _evict(folder.parent, keep=folder)
    return folder


def _evict(parent: Path, keep: Path) -> None:
    """Keep the MAX_TOWERS most recently written towers (fine-tuning makes a checkpoint
    an epoch): older ones are deleted (a process mapping one keeps its pages)."""
    towers = []
    for manifest in parent.glob("*/manifest.json"):
        with contextlib.suppress(OSError):
            towers.append((manifest.stat().st_mtime, manifest.parent))
    towers.sort(reverse=True)
    for _, folder in towers[MAX_TOWERS:]:
        if folder != keep:
            _remove(folder)


def checkpoint_sha256(path: Path) -> str:
    """The SHA-256 of the file at `path`, from the record when its size, modification and
    change times, inode and device are those recorded; else hashed (and recorded when the
    file did not change while it was read)."""
    path = path.resolve()
    record_file = cache_root() / "checkpoints.json"
    try:
        records = json.loads(record_file.read_text())
        if not isinstance(records, dict):
            records = {}
    except (OSError, ValueError):
        records = {}
    before = _stat_key(path)
    known = records.get(str(path))
    if isinstance(known, dict) and known.get("stat") == before and known.get("sha256"):
        return str(known["sha256"])
    digest = file_sha256(path)
    if _stat_key(path) != before:
        return digest  # changed while read: the caller's stat check decides, not recorded
    records.pop(str(path), None)
    records[str(path)] = {"stat": before, "sha256": digest}
    records = dict(list(records.items())[-MAX_RECORDS:])
    with contextlib.suppress(OSError):
        _write_atomic(record_file, json.dumps(records, indent=1))
    return digest


def _stat_key(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".partial-", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


def _remove_stale_partials(parent: Path) -> None:
    """Temporary folders of exports killed long ago (a running one is younger)."""
    now = time.time()
    for partial in parent.glob(".partial-*"):
        with contextlib.suppress(OSError):
            if now - partial.stat().st_mtime > STALE_PARTIAL_S:
                _remove(partial)


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
