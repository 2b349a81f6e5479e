"""Image-caption pairs for fine-tuning: a CSV, a JSONL file, or a folder of images + .txt."""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from clipdex.errors import ClipdexError
from clipdex.media.decode import IMAGE_EXTENSIONS
from clipdex.media.text import read_utf8


class PairsError(ClipdexError):
    """A pairs file or folder is missing, empty or malformed."""


@dataclass(frozen=True)
class Pair:
    image: str  # a local path (relative paths are resolved against the pairs file)
    caption: str
    #: Pairs of one group never share a batch (default: the caption): contrastive
    #: training must not treat two images of the same thing as negatives of each other.
    group: str | None = None

    @property
    def key(self) -> str:
        return self.group or self.caption


def load_pairs(source: str | Path) -> list[Pair]:
    """Read pairs from `image,caption[,group]` CSV, JSONL, or a folder with same-name .txt."""
    path = Path(source)
    if path.is_dir():
        return _from_folder(path)
    if not path.is_file():
        raise PairsError(f"pairs file or folder not found: {source}")
    text = read_utf8(path, PairsError)
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = _json_rows(path, text)
    else:
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise PairsError(f"{path}: not a CSV file ({exc})") from None
    pairs = []
    for number, row in enumerate(rows, 1):
        image, caption, group = row.get("image"), row.get("caption"), row.get("group")
        if not (isinstance(image, str) and image and isinstance(caption, str) and caption.strip()):
            raise PairsError(f"{path}: row {number} needs an 'image' and a 'caption'")
        if group is not None and not isinstance(group, str):
            raise PairsError(f"{path}: row {number}: 'group' must be text")
        full = image if os.path.isabs(image) else str(path.parent / image)
        pairs.append(Pair(full, caption.strip(), group or None))
    if not pairs:
        raise PairsError(f"{path} holds no pairs")
    return pairs


def _json_rows(path: Path, text: str) -> list[dict]:
    """One JSON object a line; blank lines skipped."""
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PairsError(f"{path}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise PairsError(f"{path}:{number}: not a JSON object")
        rows.append(row)
    return rows


def _from_folder(folder: Path) -> list[Pair]:
    pairs = []
    for image in sorted(folder.rglob("*")):
        if image.suffix.lower() in IMAGE_EXTENSIONS and image.with_suffix(".txt").is_file():
            caption = read_utf8(image.with_suffix(".txt"), PairsError).strip()
            if caption:
                pairs.append(Pair(str(image), caption))
    if not pairs:
        raise PairsError(f"{folder} holds no image with a same-name .txt caption")
    return pairs


def write_pairs_csv(pairs: list[Pair], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "group"])
        for pair in pairs:
            writer.writerow(
                [os.path.relpath(pair.image, path.parent), pair.caption, pair.group or ""]
            )
