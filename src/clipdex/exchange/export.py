"""Export an index's vectors to a folder (Parquet, npy or clip-retrieval's layout).

Streams from one catalog snapshot a chunk at a time (memory: a chunk, not the index), into
files of at most `rows_per_file` rows, inside `DIR.tmp-XXXX`, renamed to DIR when whole: a
reader or a crash sees the finished export or nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdex.errors import ExchangeError, QueryError
from clipdex.exchange.layouts import (
    FORMATS,
    LAYOUT_VERSION,
    MANIFEST,
    METADATA_KEY,
    identity_to_json,
    part_names,
    pyarrow,
    read_manifest,
)
from clipdex.storage.catalog import Catalog
from clipdex.storage.catalog_bulk import ExportChunk, export_snapshot
from clipdex.storage.labels import LabelStore
from clipdex.types import ProgressCallback

#: Rows read from the catalog at a time: 32 MB of 512-d vectors, held in about four
#: copies (SQLite's rows, the joined bytes, Arrow's arrays, the Parquet writer's pages).
CHUNK = 16_384
#: Rows per exported file by default (2 GB of float32 512-d vectors).
ROWS_PER_FILE = 1_000_000


@dataclass(frozen=True)
class ExportOptions:
    fmt: str = "parquet"
    #: Only images whose top label this is (the latest classification run that has it).
    label: str | None = None
    #: Only images indexed (embedded or imported) at or after this UTC epoch.
    since: float | None = None
    overwrite: bool = False
    rows_per_file: int = ROWS_PER_FILE
    #: The npy files' dtype: float32, or float16 (clip-retrieval's own default).
    dtype: str | None = None
    chunk: int = CHUNK


@dataclass(frozen=True)
class ExportReport:
    folder: str
    format: str
    rows: int
    files: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def export_catalog(
    catalog: Catalog,
    out: Path,
    options: ExportOptions,
    on_progress: ProgressCallback | None = None,
) -> ExportReport:
    """Write the catalog's live vectors (optionally a subset) to `out` in `options.fmt`."""
    started = time.perf_counter()
    if options.fmt not in FORMATS:
        raise QueryError(f"unknown export format {options.fmt!r} (known: {', '.join(FORMATS)})")
    if options.rows_per_file < 1:
        raise QueryError("an export file must hold at least one row")
    identity = catalog.model_identity()
    if identity is None:
        raise ExchangeError("the index is empty: nothing to export")
    pyarrow()  # every layout writes Parquet rows: say so before any work
    check_target(out, options.overwrite)
    keep = None
    if options.label is not None:
        keep = np.sort(LabelStore(catalog).ids_with_label(options.label))
        if len(keep) == 0:
            raise QueryError(f"no image is labelled '{options.label}'")
    dtype = options.dtype or ("float16" if options.fmt == "clip-retrieval" else "float32")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        with export_snapshot(catalog, options.since) as reader:
            ids = reader.ids()
            if keep is not None:
                ids = ids[np.isin(ids, keep)]
            total = len(ids)
            if total == 0:
                raise ExchangeError("nothing to export: no image matches")
            writer = _PartWriter(tmp, options.fmt, dtype, identity_to_json(identity))
            sizes = [
                min(options.rows_per_file, total - s)
                for s in range(0, total, options.rows_per_file)
            ]
            writer.plan(sizes)
            done = 0
            for chunk in reader.chunks(options.chunk, keep if keep is not None else None):
                writer.write(chunk)
                done += len(chunk.ids)
                if on_progress:
                    on_progress("export", done, total)
            writer.close()
            photo = reader.photo
        manifest = {
            "format": options.fmt,
            "version": LAYOUT_VERSION,
            "model": identity_to_json(identity),
            "rows": total,
            "dtype": dtype,
            "files": writer.files,
            "photo_columns": photo,
            "exported_at": time.time(),
            "filters": {"label": options.label, "since": options.since},
        }
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportReport(str(out), options.fmt, total, len(sizes), time.perf_counter() - started)


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing DIR unless `overwrite`, and then only an earlier export or an
    empty folder (never a folder of other files)."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise ExchangeError(
            f"{out} exists; choose another folder or overwrite it", hint="overwrite"
        )
    if not out.is_dir() or out.is_symlink():
        raise ExchangeError(f"{out} exists and is not a folder; not overwriting it")
    if any(out.iterdir()) and read_manifest_safely(out) is None:
        raise ExchangeError(f"{out} is not a clipdex export; not overwriting it")


def read_manifest_safely(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except ExchangeError:
        return None


def replace_folder(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` onto `out` (an old export is moved aside, then removed)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        os.replace(out, old / "export")
    try:
        os.replace(tmp, out)
    except OSError:
        if old is not None:
            os.replace(old / "export", out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    _fsync_path(out.parent)


class _PartWriter:
    """Writes chunks into numbered parts of planned sizes, splitting chunks at part ends."""

    def __init__(self, folder: Path, fmt: str, dtype: str, model: dict):
        self.folder = folder
        self.fmt = fmt
        self.dtype = np.dtype(dtype)
        self.model = model
        self.files: list[dict] = []
        self.sizes: list[int] = []
        self.part = -1
        self.left = 0
        self.rows_writer = None
        self.vectors_file = None

    def plan(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.width = max(1, len(str(len(sizes) - 1)))
        for sub in ("img_emb", "metadata") if self.fmt == "clip-retrieval" else ():
            (self.folder / sub).mkdir()

    def write(self, chunk: ExportChunk) -> None:
        start = 0
        while start < len(chunk.ids):
            if self.left == 0:
                self._next_part(chunk)
            n = min(self.left, len(chunk.ids) - start)
            self._write_rows(chunk, start, start + n)
            self.left -= n
            start += n

    def _next_part(self, chunk: ExportChunk) -> None:
        self._close_part()
        self.part += 1
        rows = self.sizes[self.part]
        vectors_name, rows_name = part_names(self.fmt, self.part, self.width)
        dim = chunk.vectors.shape[1]
        self.files.append({"vectors": vectors_name, "rows": rows_name, "count": rows})
        pa, pq = pyarrow()
        schema = _schema(pa, self.fmt, dim, chunk.photo, self.model)
        # Float vectors hardly compress: snappy would only cost CPU (reads 3x slower).
        compression = {name: "snappy" for name in schema.names} | {"vector": "none"}
        self.rows_writer = pq.ParquetWriter(
            str(self.folder / rows_name), schema, compression=compression, use_dictionary=False
        )
        if self.fmt != "parquet":
            self.vectors_file = open(self.folder / vectors_name, "wb")  # noqa: SIM115
            header = {"descr": self.dtype.str, "fortran_order": False, "shape": (rows, dim)}
            np.lib.format.write_array_header_1_0(self.vectors_file, header)
        self.left = rows

    def _write_rows(self, chunk: ExportChunk, start: int, end: int) -> None:
        pa, _ = pyarrow()
        vectors = chunk.vectors[start:end]
        columns = {
            "id": pa.array(chunk.ids[start:end], pa.int64()),
            "uri": pa.array(chunk.uris[start:end], pa.string()),
            "size": pa.array(chunk.sizes[start:end], pa.int64()),
            "width": pa.array(chunk.widths[start:end], pa.int32()),
            "height": pa.array(chunk.heights[start:end], pa.int32()),
        }
        if self.fmt == "clip-retrieval":
            columns = {"image_path": columns.pop("uri"), **columns}
        for name, values in chunk.photo.items():
            columns[name] = pa.array(values[start:end], _PHOTO_TYPES[name](pa))
        if self.fmt == "parquet":
            flat = pa.array(np.ascontiguousarray(vectors, np.float32).ravel(), pa.float32())
            columns["vector"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        else:
            self.vectors_file.write(np.ascontiguousarray(vectors, self.dtype).tobytes())
        table = pa.Table.from_pydict(columns, schema=self.rows_writer.schema)
        self.rows_writer.write_table(table)

    def _close_part(self) -> None:
        if self.rows_writer is not None:
            self.rows_writer.close()
            self.rows_writer = None
        if self.vectors_file is not None:
            self.vectors_file.flush()
            os.fsync(self.vectors_file.fileno())
            self.vectors_file.close()
            self.vectors_file = None

    def close(self) -> None:
        self._close_part()
        for entry in self.files:
            _fsync_path(self.folder / entry["rows"])


_PHOTO_TYPES = {
    "taken_at": lambda pa: pa.float64(),
    "camera": lambda pa: pa.string(),
    "lat": lambda pa: pa.float64(),
    "lon": lambda pa: pa.float64(),
}


def _schema(pa, fmt: str, dim: int, photo: dict, model: dict):
    path = "image_path" if fmt == "clip-retrieval" else "uri"
    fields = [pa.field(path, pa.string(), nullable=False)] if fmt == "clip-retrieval" else []
    fields += [pa.field("id", pa.int64(), nullable=False)]
    if fmt != "clip-retrieval":
        fields.append(pa.field(path, pa.string(), nullable=False))
    fields += [
        pa.field("size", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
    fields += [pa.field(name, _PHOTO_TYPES[name](pa)) for name in photo]
    if fmt == "parquet":
        fields.append(pa.field("vector", pa.list_(pa.float32(), dim), nullable=False))
    meta = {"format": fmt, "version": LAYOUT_VERSION, "model": model}
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(meta).encode()})


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    for sub in (path, *(p for p in path.iterdir() if p.is_dir())):
        _fsync_path(sub)
