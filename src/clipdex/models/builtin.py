"""Models clipdex ships or names by default: the default model and tag, clipdex-tiny and
clipdex-demo-shapes (registered with open_clip from `model_configs/`, like any other)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from clipdex.models.demo_weights import DEMO_MODEL, DEMO_TAG

DEFAULT_MODEL = "ViT-B-32-256"
DEFAULT_PRETRAINED = "datacomp_s34b_b86k"
#: A tiny architecture initialised from a fixed seed: exercises every path, means nothing.
TINY_MODEL = "clipdex-tiny"
#: The same, with another embedding dimension (tests of "another model").
TINY_MODEL_2 = "clipdex-tiny-96"

#: The tag a name means when none is given (None: open_clip's first tag, else random).
DEFAULT_TAGS = {
    DEFAULT_MODEL: DEFAULT_PRETRAINED,
    TINY_MODEL: "none",
    TINY_MODEL_2: "none",
    DEMO_MODEL: DEMO_TAG,
}

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DEFAULT_TAGS",
    "DEMO_MODEL",
    "DEMO_TAG",
    "TINY_MODEL",
    "TINY_MODEL_2",
    "list_architectures",
    "register_builtin_configs",
]


def register_builtin_configs() -> None:
    """Make clipdex's own architectures known to open_clip (once per process)."""
    import open_clip

    if TINY_MODEL in open_clip.list_models():
        return
    folder = resources.files("clipdex") / "model_configs"
    open_clip.add_model_config(Path(str(folder)))


def list_architectures() -> list[tuple[str, list[str]]]:
    """Every open_clip architecture with its pretrained tags (empty for random-only)."""
    import open_clip

    register_builtin_configs()
    return [
        (name, [DEMO_TAG] if name == DEMO_MODEL else open_clip.list_pretrained_tags_by_model(name))
        for name in open_clip.list_models()
    ]
