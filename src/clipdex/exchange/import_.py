"""Import embeddings made elsewhere (a clipdex export, clip-retrieval's inference output).

Two passes over the folder, a chunk at a time. The first (`check_import`) validates
everything and writes nothing: the model, the dimension, vectors that are finite and not
zero, uris present and unique; a refused import leaves the catalog as it was. The second
(`write_import`) commits a chunk per transaction, with its progress in the same
transaction, so a killed import resumes after the last committed chunk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdex.errors import ExchangeError
from clipdex.exchange.layouts import Part, find_parts
from clipdex.exchange.reading import Chunk, iter_part, recorded_identity
from clipdex.media.exif import believable
from clipdex.models.spec import ModelSpec, resolve_weights
from clipdex.storage.catalog import Catalog
from clipdex.storage.catalog_bulk import (
    PHOTO_COLUMNS,
    ImportRows,
    clear_progress,
    read_progress,
    write_imported,
)
from clipdex.types import ModelIdentity, PhotoMeta, ProgressCallback

#: Rows per transaction (32 MB of 512-d float32 vectors in flight, in a few copies).
CHUNK = 16_384
#: How far from 1 a vector's norm may be before it is normalised (and counted).
UNIT_TOLERANCE = 1e-3
#: Rows closer than this to unit length are stored as they are (float32 rounding).
EXACT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class ImportPlan:
    """A validated folder: what it holds and which model made it."""

    folder: Path
    format: str
    parts: list[Part]
    identity: ModelIdentity
    rows: int
    #: Vectors whose norm was not 1 (they are normalised when written).
    not_unit: int
    chunk: int

    @property
    def source_uri(self) -> str:
        return str(self.folder)

    def signature(self) -> list:
        """What the folder held when planned: a resumed import must see the same files."""
        out: list = []
        for part in self.parts:
            for path in dict.fromkeys((part.vectors, part.rows)):
                stat = path.stat()
                out.append([path.name, stat.st_size, stat.st_mtime_ns])
        return out


@dataclass(frozen=True)
class ImportReport:
    source: str
    format: str
    rows: int
    added: int
    updated: int
    normalised: int
    resumed: int  # rows a previous, killed run had committed
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def declared_identity(spec: ModelSpec) -> ModelIdentity:
    """The identity of the model a user names, without loading it (dimension from its
    open_clip config; 0 when open_clip resolves the name itself, e.g. hf-hub)."""
    import open_clip

    path, weights = resolve_weights(spec)
    config = open_clip.get_model_config(spec.name) or {}
    checkpoint = path if spec.checkpoint else None
    return ModelIdentity(spec.name, weights, int(config.get("embed_dim", 0)), checkpoint)


def choose_identity(
    recorded: ModelIdentity | None, declared: ModelIdentity | None, where: Path
) -> ModelIdentity:
    """The model the folder's vectors come from: what it records, which a declared model
    must match; what is declared when it records none."""
    if recorded is not None and declared is not None:
        if (recorded.name, recorded.weights) != (declared.name, declared.weights):
            raise ExchangeError(
                f"{where} holds vectors of {recorded.describe()}, not of {declared.describe()}"
            )
        return ModelIdentity(
            recorded.name, recorded.weights, recorded.dim, declared.checkpoint_path
        )
    if recorded is not None:
        return recorded
    if declared is not None:
        return declared
    raise ExchangeError(
        f"{where} does not record which model made its vectors; name the model and its "
        "pretrained weights",
        hint="model",
    )


def check_import(
    folder: Path,
    declared: ModelIdentity | None,
    chunk: int = CHUNK,
    on_progress: ProgressCallback | None = None,
) -> ImportPlan:
    """Validate a folder of embeddings without writing anything (ExchangeError on the
    first problem)."""
    folder = folder.resolve()
    fmt, parts = find_parts(folder)
    identity = choose_identity(recorded_identity(folder, fmt, parts), declared, folder)
    rows = not_unit = 0
    hashes: list[np.ndarray] = []
    dim = identity.dim
    for piece in _chunks(fmt, parts, chunk):
        n, d = piece.vectors.shape if piece.vectors.ndim == 2 else (len(piece.uris), 0)
        if dim == 0:
            dim = d
        if d != dim:
            raise ExchangeError(
                f"{piece.where}: vectors are {d}-d, but {identity.name} makes {dim}-d vectors"
            )
        bad = [i for i, uri in enumerate(piece.uris) if not isinstance(uri, str) or not uri]
        if bad:
            raise ExchangeError(f"{piece.where}: row {bad[0] + 1} has no uri")
        norms = _norms(piece)
        not_unit += int(np.count_nonzero(np.abs(norms - 1) > UNIT_TOLERANCE))
        hashes.append(np.fromiter((hash(u) for u in piece.uris), np.int64, n))
        rows += n
        if on_progress:
            on_progress("check", rows, None)
    if rows == 0:
        raise ExchangeError(f"{folder} holds no vectors")
    _refuse_duplicates(fmt, parts, chunk, np.concatenate(hashes), folder)
    if identity.dim == 0:
        identity = ModelIdentity(identity.name, identity.weights, dim, identity.checkpoint_path)
    return ImportPlan(folder, fmt, parts, identity, rows, not_unit, chunk)


def _chunks(fmt: str, parts: list[Part], chunk: int) -> Iterator[Chunk]:
    for part in parts:
        yield from iter_part(fmt, part, chunk)


def row_norms(vectors: np.ndarray) -> np.ndarray:
    """Row norms in float32 (no float64 copy of the chunk): good to ~1e-6."""
    with np.errstate(all="ignore"):
        rows = np.asarray(vectors, np.float32)
        return np.sqrt(np.einsum("ij,ij->i", rows, rows))


def _norms(piece: Chunk) -> np.ndarray:
    norms = row_norms(piece.vectors)
    broken = np.flatnonzero(~np.isfinite(norms) | (norms < 1e-6))
    if len(broken):
        raise ExchangeError(
            f"{piece.where}: the vector of {piece.uris[broken[0]]!r} is zero or not finite"
        )
    return norms


def _refuse_duplicates(
    fmt: str, parts: list[Part], chunk: int, hashes: np.ndarray, folder: Path
) -> None:
    """One uri twice in the folder is refused (which vector would it keep?). Hashes find
    candidates in 8 bytes a row; a second pass confirms one with the uris themselves."""
    ordered = np.sort(hashes)
    candidates = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not candidates:
        return
    seen: set[str] = set()
    for piece in _chunks(fmt, parts, chunk):
        for uri in piece.uris:
            if hash(uri) in candidates:
                if uri in seen:
                    raise ExchangeError(f"{folder}: the uri {uri!r} appears more than once")
                seen.add(uri)


def write_import(
    catalog: Catalog,
    plan: ImportPlan,
    on_progress: ProgressCallback | None = None,
) -> ImportReport:
    """Write a checked folder's rows and vectors to the catalog, a chunk per transaction,
    linked to a source (kind "import") for the folder. The model must be claimed first."""
    started = time.perf_counter()
    source_id = catalog.source_id(plan.source_uri, "import")
    key = f"import_progress:{plan.source_uri}"
    signature = plan.signature()
    progress = read_progress(catalog, key)
    skip = progress["rows"] if progress and progress.get("signature") == signature else 0
    added = updated = done = 0
    for piece in _chunks(plan.format, plan.parts, plan.chunk):
        start, done = done, done + len(piece.uris)
        if done <= skip:
            continue
        if start < skip:  # committed rows are a prefix of the folder's rows, in order
            piece = piece.tail(skip - start)
        n = len(piece.uris)
        vectors = _unit(piece.vectors)
        sizes, mtimes = _sizes(piece)
        rows = ImportRows(
            uris=piece.uris,
            sizes=sizes,
            mtimes=mtimes,
            widths=piece.widths or [None] * n,
            heights=piece.heights or [None] * n,
            vectors=vectors,
            photo=_photo(piece) if piece.photo else None,
        )
        value = json.dumps({"signature": signature, "rows": done})
        new, old = write_imported(catalog, source_id, rows, (key, value))
        added, updated = added + new, updated + old
        if on_progress:
            on_progress("import", done, plan.rows)
    clear_progress(catalog, key)
    catalog.mark_source_indexed(source_id)
    return ImportReport(
        source=plan.source_uri,
        format=plan.format,
        rows=plan.rows,
        added=added,
        updated=updated,
        normalised=plan.not_unit,
        resumed=skip,
        seconds=time.perf_counter() - started,
    )


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float32 unit vectors; rows already of unit length (to float32 rounding) are kept
    bit for bit, so an export imported again gives back the same vectors."""
    out = vectors.astype(np.float32)  # a copy: the source may be memory-mapped
    near = np.flatnonzero(np.abs(row_norms(out) - 1) > EXACT_TOLERANCE / 2)
    if len(near):  # decided in float64, on the few rows that may be off
        norms = np.linalg.norm(out[near].astype(np.float64), axis=1)
        off = np.abs(norms - 1) > EXACT_TOLERANCE
        out[near[off]] /= norms[off, None].astype(np.float32)
    return out


def _photo(piece: Chunk) -> list[PhotoMeta | None]:
    """The photo metadata of each row, where the export carried any, under the sanity
    rules of a photo's own EXIF (media/exif.py `believable`): what fails them is dropped.
    A row with none gets no photo_meta row: the next `clipdex index` of the file reads
    its EXIF itself."""
    columns = [piece.photo.get(name) or [None] * len(piece.uris) for name in PHOTO_COLUMNS]
    out: list[PhotoMeta | None] = []
    for taken_at, camera, lat, lon in zip(*columns, strict=True):
        meta = believable(taken_at, camera, lat, lon)
        out.append(meta if meta != PhotoMeta() else None)
    return out


def _sizes(piece: Chunk) -> tuple[list[int], list[int]]:
    """Sizes as recorded; where none is, a local file's own size and mtime (so that
    indexing it later reuses the vector), else -1: unknown, never matched."""
    n = len(piece.uris)
    if piece.sizes is not None and all(s is not None for s in piece.sizes):
        return [int(s) for s in piece.sizes], [0] * n
    sizes, mtimes = [], []
    for i, uri in enumerate(piece.uris):
        recorded = piece.sizes[i] if piece.sizes is not None else None
        if recorded is not None:
            sizes.append(int(recorded))
            mtimes.append(0)
            continue
        try:
            stat = os.stat(uri) if os.path.isabs(uri) else None
        except (OSError, ValueError):
            stat = None
        sizes.append(stat.st_size if stat else -1)
        mtimes.append(stat.st_mtime_ns if stat else 0)
    return sizes, mtimes
