"""The folder layouts clipdex exports and imports, and what they record of the model.

- parquet: `embeddings_NNNNN.parquet`, columns id, uri, size, width, height, vector
  (fixed-size list of float32) and photo metadata when the index has any; the model's
  identity in the schema metadata (key `clipdex`).
- npy: `vectors_NNNNN.npy` (float32, N x d) beside `rows_NNNNN.parquet` (the same
  columns but the vector).
- clip-retrieval: `img_emb/img_emb_N.npy` (float16 by default, as clip-retrieval's
  inference writes) beside `metadata/metadata_N.parquet` (column `image_path`, then the
  rest): what autofaiss and clip-retrieval's back end read, and what its inference writes.

Every export also writes `clipdex-export.json`, the manifest: layout, model, rows, files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipdex.errors import ExchangeError
from clipdex.types import ModelIdentity

FORMATS = ("parquet", "npy", "clip-retrieval")
MANIFEST = "clipdex-export.json"
#: Schema metadata key of a Parquet export: the manifest's model and layout, as JSON.
METADATA_KEY = b"clipdex"
LAYOUT_VERSION = 1
INSTALL_HINT = "reading and writing Parquet needs pyarrow: pip install 'clipdex[exchange]'"


def pyarrow():
    """(pyarrow, pyarrow.parquet), or a one-line error saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExchangeError(INSTALL_HINT) from None
    return pa, pq


def identity_to_json(identity: ModelIdentity) -> dict[str, Any]:
    """The model as an export records it: name, pretrained (an open_clip tag, or the
    checkpoint's sha256), dimension."""
    out = {"name": identity.name, "pretrained": identity.weights, "dim": identity.dim}
    if identity.weights.startswith("sha256:"):
        out["checkpoint_sha256"] = identity.weights.removeprefix("sha256:")
    return out


def identity_from_json(data: Any, where: str) -> ModelIdentity:
    try:
        return ModelIdentity(str(data["name"]), str(data["pretrained"]), int(data["dim"]))
    except (TypeError, KeyError, ValueError):
        raise ExchangeError(f"{where} records no readable model (name, pretrained, dim)") from None


@dataclass(frozen=True)
class Part:
    """One piece of an export: its vectors and its rows (the same file for Parquet)."""

    vectors: Path
    rows: Path


def part_names(fmt: str, index: int, width: int) -> tuple[str, str]:
    """The (vectors, rows) file names of part `index`, relative to the export folder."""
    n = str(index).zfill(width)
    if fmt == "parquet":
        return f"embeddings_{n}.parquet", f"embeddings_{n}.parquet"
    if fmt == "npy":
        return f"vectors_{n}.npy", f"rows_{n}.parquet"
    return f"img_emb/img_emb_{n}.npy", f"metadata/metadata_{n}.parquet"


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExchangeError(f"{path} is not a readable manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") not in FORMATS:
        raise ExchangeError(f"{path} is not a clipdex export manifest")
    return data


def _numbered(paths: list[Path], prefix: str) -> dict[str, Path]:
    """Files named PREFIX_<digits>.ext by their number as written (leading zeros kept)."""
    out = {}
    for path in paths:
        found = re.fullmatch(re.escape(prefix) + r"_?(\d+)", path.stem)
        if found:
            out[found.group(1)] = path
    return out


def find_parts(folder: Path) -> tuple[str, list[Part]]:
    """The layout of `folder` and its parts in order; ExchangeError when it is none."""
    if not folder.is_dir():
        raise ExchangeError(f"{folder} is not a folder of exported embeddings")
    manifest = read_manifest(folder)
    if manifest is not None:
        fmt = manifest["format"]
    elif (folder / "img_emb").is_dir():
        fmt = "clip-retrieval"
    elif any(folder.glob("vectors_*.npy")):
        fmt = "npy"
    elif any(folder.glob("*.parquet")):
        fmt = "parquet"
    else:
        raise ExchangeError(
            f"{folder} holds no embeddings clipdex can read (Parquet files, vectors_N.npy "
            "with rows_N.parquet, or clip-retrieval's img_emb/ and metadata/)"
        )
    if fmt == "parquet":
        files = sorted(folder.glob("*.parquet"))
        return fmt, [Part(path, path) for path in files]
    if fmt == "npy":
        vectors = _numbered(list(folder.glob("vectors_*.npy")), "vectors")
        rows = _numbered(list(folder.glob("rows_*.parquet")), "rows")
        kind = "rows_N.parquet"
    else:
        vectors = _numbered(list((folder / "img_emb").glob("*.npy")), "img_emb")
        rows = _numbered(list((folder / "metadata").glob("*.parquet")), "metadata")
        kind = "metadata/metadata_N.parquet"
    if not vectors:
        raise ExchangeError(f"{folder} holds no vector files for its {fmt} layout")
    missing = sorted(set(vectors) ^ set(rows))
    if missing:
        raise ExchangeError(
            f"{folder}: part {missing[0]} has vectors without {kind} or the reverse "
            "(each .npy needs its rows file)"
        )
    order = sorted(vectors, key=lambda n: (int(n), n))
    return fmt, [Part(vectors[n], rows[n]) for n in order]
