"""Image-caption pairs for fine-tuning: a CSV, a JSONL file, or a folder of images + .txt."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClipdexError
from ..indexer.decode import IMAGE_EXTENSIONS


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
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise PairsError(f"{path}:{number}: not JSON ({exc.msg})") from None
    else:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    pairs = []
    for number, row in enumerate(rows, 1):
        image, caption = row.get("image"), row.get("caption")
        if not image or not caption or not str(caption).strip():
            raise PairsError(f"{path}: row {number} needs an 'image' and a 'caption'")
        full = image if os.path.isabs(image) else str(path.parent / image)
        pairs.append(Pair(full, str(caption).strip(), row.get("group") or None))
    if not pairs:
        raise PairsError(f"{path} holds no pairs")
    return pairs


def _from_folder(folder: Path) -> list[Pair]:
    pairs = []
    for image in sorted(folder.rglob("*")):
        if image.suffix.lower() in IMAGE_EXTENSIONS and image.with_suffix(".txt").is_file():
            caption = image.with_suffix(".txt").read_text(encoding="utf-8").strip()
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
