"""Small records shared across layers: no heavy imports, no behaviour beyond formatting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: on_progress(phase, done, total): how the library reports long work; total may be None.
ProgressCallback = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class ModelIdentity:
    """What made an index's vectors; stored in the catalog and compared on every write."""

    name: str
    weights: str  # an open_clip tag, RANDOM_WEIGHTS, "hf-hub", or "sha256:<hex>" of a checkpoint
    dim: int
    checkpoint_path: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        return f"{self.name} ({self.weights}, {self.dim}-d)"


@dataclass(frozen=True)
class LabelSet:
    """Label names in order, and the labels that bring their own prompts."""

    names: list[str]
    prompts: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class PhotoMeta:
    """What a photo says about itself (EXIF), after sanity checks; None where it says
    nothing believable. `taken_at` is a UTC epoch (the camera's clock read as UTC when the
    photo recorded no offset); `taken_local` is the capture time as the photo wrote it,
    ISO 8601, with its offset when it had one."""

    taken_at: float | None = None
    taken_local: str | None = None
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    orientation: int | None = None
