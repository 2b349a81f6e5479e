"""What a user asks for (ModelSpec), how it resolves to weights, and the one rule that
decides whether a spec names the model an index was built with."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from clipdex.errors import ModelLoadError, ModelMismatchError
from clipdex.models.builtin import (
    DEFAULT_MODEL,
    DEFAULT_TAGS,
    DEMO_MODEL,
    DEMO_TAG,
    TINY_MODEL,
    register_builtin_configs,
)
from clipdex.types import ModelIdentity

RANDOM_SEED = 0
#: The weights tag recorded for a model built with random weights from RANDOM_SEED.
RANDOM_WEIGHTS = f"random-seed-{RANDOM_SEED}"
NO_WEIGHTS = ("none", "random", RANDOM_WEIGHTS)
#: Name prefixes open_clip resolves itself (its `parse_model_name`): no tag applies.
HUB_PREFIXES = ("hf-hub", "local-dir")


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: an architecture and where its weights come from.

    `pretrained` is an open_clip tag, or None for the model's default (the
    recommended tag for the default model, random weights for `clipdex-tiny`).
    A `checkpoint` file, when given, overrides `pretrained`.
    """

    name: str = DEFAULT_MODEL
    pretrained: str | None = None
    checkpoint: str | None = None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _schema(name: str) -> str | None:
    """ "hf-hub" or "local-dir" for names open_clip resolves itself, else None."""
    head, sep, _ = name.partition(":")
    return head if sep and head in HUB_PREFIXES else None


def resolve_weights(spec: ModelSpec) -> tuple[str | None, str]:
    """Return (what to pass to open_clip as `pretrained`, the identity's weights string)."""
    import open_clip

    register_builtin_configs()
    if spec.checkpoint:
        path = Path(spec.checkpoint).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {spec.checkpoint}")
        return str(path.resolve()), "sha256:" + file_sha256(path)
    schema = _schema(spec.name)
    if schema is not None:
        return None, schema
    if spec.name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown model architecture '{spec.name}' (list them with `clipdex models`)"
        )
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    tag = spec.pretrained
    if spec.name == DEMO_MODEL and tag in (None, DEMO_TAG):
        return None, DEMO_TAG  # built with random weights, then the packaged ones loaded
    if tag is None:
        tag = DEFAULT_TAGS.get(spec.name) or (tags[0] if tags else "none")
    if tag.lower() in NO_WEIGHTS:
        return None, RANDOM_WEIGHTS
    if tag not in tags:
        known = ", ".join(tags) if tags else "none (random weights only)"
        raise ModelLoadError(f"unknown pretrained tag '{tag}' for {spec.name}; known tags: {known}")
    return tag, tag


def spec_for(identity: ModelIdentity) -> ModelSpec:
    """The ModelSpec that loads the model an index was built with."""
    if identity.weights.startswith("sha256:"):
        return ModelSpec(identity.name, checkpoint=identity.checkpoint_path)
    if identity.weights == RANDOM_WEIGHTS:
        return ModelSpec(identity.name, pretrained="none")
    if identity.weights in HUB_PREFIXES:
        return ModelSpec(identity.name)
    return ModelSpec(identity.name, pretrained=identity.weights)


def same_model(stored: ModelIdentity, spec: ModelSpec) -> bool:
    """Does `spec` name the model that made `stored`'s vectors?

    Decided without importing open_clip when the spec names a tag (a re-run names the
    model it built with); a checkpoint is compared by its SHA-256.
    """
    if stored.name != spec.name:
        return False
    pretrained = spec.pretrained if spec.pretrained is not None else DEFAULT_TAGS.get(spec.name)
    if spec.checkpoint is None and pretrained is not None:
        asked = RANDOM_WEIGHTS if pretrained.lower() in NO_WEIGHTS else pretrained
        if asked == stored.weights:
            return True
    _, weights = resolve_weights(spec)
    return stored.weights == weights


def check_same_identity(stored: ModelIdentity, loaded: ModelIdentity) -> None:
    """Refuse vectors of one model next to another's, naming both."""
    if stored != loaded:
        raise _mismatch(stored, loaded.describe())


def check_same_model(stored: ModelIdentity, spec: ModelSpec) -> None:
    """`same_model`, or ModelMismatchError naming both models (without loading `spec`'s)."""
    if not same_model(stored, spec):
        _, weights = resolve_weights(spec)
        raise _mismatch(stored, f"{spec.name} ({weights})")


def _mismatch(stored: ModelIdentity, other: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"this index was built with {stored.describe()}, not {other}; "
        "use the index's own model, or start over with a rebuild or another index folder",
        hint="other_model",
    )


__all__ = [
    "NO_WEIGHTS",
    "RANDOM_SEED",
    "RANDOM_WEIGHTS",
    "TINY_MODEL",
    "ModelSpec",
    "check_same_identity",
    "check_same_model",
    "file_sha256",
    "resolve_weights",
    "same_model",
    "spec_for",
]
