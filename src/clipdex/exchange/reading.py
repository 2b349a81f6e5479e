"""Reading an export folder a chunk at a time: rows (uri, size, width, height) and vectors,
whatever the layout, with one-line errors for files that are not what they claim."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipdex.errors import ExchangeError
from clipdex.exchange.layouts import (
    METADATA_KEY,
    Part,
    identity_from_json,
    pyarrow,
    read_manifest,
)
from clipdex.storage.catalog_bulk import PHOTO_COLUMNS
from clipdex.types import ModelIdentity


@dataclass
class Chunk:
    """Rows of a part as read: uris, sizes/widths/heights (None: absent), vectors as
    stored, and the photo metadata columns present (PHOTO_COLUMNS: name -> values)."""

    uris: list
    sizes: list | None
    widths: list | None
    heights: list | None
    vectors: np.ndarray
    where: str  # "FILE rows A-B", for messages
    photo: dict[str, list] = field(default_factory=dict)

    def tail(self, skip: int) -> Chunk:
        """The rows after the first `skip`."""

        def cut(values: list | None) -> list | None:
            return values[skip:] if values is not None else None

        return Chunk(
            self.uris[skip:],
            cut(self.sizes),
            cut(self.widths),
            cut(self.heights),
            self.vectors[skip:],
            self.where,
            {name: values[skip:] for name, values in self.photo.items()},
        )


def recorded_identity(folder: Path, fmt: str, parts: list[Part]) -> ModelIdentity | None:
    """The model an export records (manifest, else the first Parquet file's schema
    metadata); None for clip-retrieval's own output, which records none."""
    manifest = read_manifest(folder)
    if manifest is not None:
        return identity_from_json(manifest.get("model"), str(folder / "clipdex-export.json"))
    _, pq = pyarrow()
    meta = _schema(pq, parts[0].rows).metadata or {}
    if METADATA_KEY in meta:
        try:
            model = json.loads(meta[METADATA_KEY]).get("model")
        except (ValueError, AttributeError):
            model = None
        return identity_from_json(model, str(parts[0].rows))
    return None


def _schema(pq, path: Path):
    try:
        return pq.read_schema(str(path))
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        raise ExchangeError(f"{path} is not a readable Parquet file ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def iter_part(fmt: str, part: Part, chunk: int) -> Iterator[Chunk]:
    """The rows of one part, `chunk` at a time."""
    pa, pq = pyarrow()
    schema = _schema(pq, part.rows)
    names = set(schema.names)
    uri = "uri" if fmt != "clip-retrieval" or "uri" in names else "image_path"
    if fmt == "clip-retrieval" and "image_path" in names:
        uri = "image_path"
    photo = [c for c in PHOTO_COLUMNS if c in names]
    wanted = [uri] + [c for c in ("size", "width", "height") if c in names] + photo
    if uri not in names:
        raise ExchangeError(
            f"{part.rows} has no '{uri}' column (its columns: {', '.join(schema.names)})"
        )
    vectors = None
    if fmt == "parquet":
        if "vector" not in names:
            raise ExchangeError(
                f"{part.rows} has no 'vector' column (its columns: {', '.join(schema.names)})"
            )
        kind = schema.field("vector").type
        if not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_floating(kind.value_type)
        ):
            raise ExchangeError(f"{part.rows}: column 'vector' holds {kind}, not lists of floats")
        wanted.append("vector")
    else:
        vectors = _load_npy(part.vectors)
        rows = pq.ParquetFile(str(part.rows)).metadata.num_rows
        if rows != len(vectors):
            raise ExchangeError(
                f"{part.vectors} holds {len(vectors)} vectors but {part.rows} {rows} rows"
            )
    start = 0
    try:
        # No pre-buffering: memory follows the batch, not the file (Parquet decodes whole
        # row groups, so exports write them no larger than a chunk).
        reader = pq.ParquetFile(str(part.rows), pre_buffer=False)
        batches = reader.iter_batches(batch_size=chunk, columns=wanted)
        for batch in batches:
            n = batch.num_rows
            where = f"{part.rows.name} rows {start + 1}-{start + n}"
            if vectors is not None:
                matrix = np.asarray(vectors[start : start + n])
            else:
                matrix = _list_matrix(pa, batch.column("vector"), where)
            yield Chunk(
                uris=batch.column(uri).to_pylist(),
                sizes=_column(batch, "size"),
                widths=_column(batch, "width"),
                heights=_column(batch, "height"),
                vectors=matrix,
                where=where,
                photo={name: batch.column(name).to_pylist() for name in photo},
            )
            start += n
    except (OSError, ValueError) as exc:
        raise ExchangeError(f"{part.rows} cannot be read ({_first_line(exc)})") from None


def _column(batch, name: str) -> list | None:
    return batch.column(name).to_pylist() if name in batch.schema.names else None


def _list_matrix(pa, column, where: str) -> np.ndarray:
    """An N x d matrix from a (fixed-size) list column; every list must have d values."""
    import pyarrow.compute as pc

    if column.null_count:
        raise ExchangeError(f"{where}: {column.null_count} rows have no vector")
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != dim).any():
            raise ExchangeError(f"{where}: vectors of different lengths ({dim} and others)")
    values = column.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(column), dim)


def _load_npy(path: Path) -> np.ndarray:
    """A memory-mapped 2-d float array, or a one-line error (truncated, not npy, 1-d)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ExchangeError(f"{path} is not a whole .npy file ({_first_line(exc)})") from None
    if array.ndim != 2 or array.dtype.kind != "f":
        raise ExchangeError(
            f"{path} holds a {array.dtype} array of shape {array.shape}, not N x d floats"
        )
    return array
