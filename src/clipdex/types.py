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
