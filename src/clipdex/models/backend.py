"""EmbeddingBackend: what the indexer, search, classification and training need from a
model. open_clip's Embedder (models/open_clip.py) is today's implementation; a distributed
backend (Ray actors) implements the same protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from clipdex.types import ModelIdentity


@runtime_checkable
class EmbeddingBackend(Protocol):
    """Images and texts to L2-normalised float32 vectors of one model."""

    #: What made the vectors: recorded in the catalog, compared on every read and write.
    identity: ModelIdentity
    #: PIL image -> the (3, H, W) tensor the model takes.
    preprocess: Callable[[Any], torch.Tensor]
    #: exp(logit scale): turns cosines into logits for zero-shot probabilities.
    logit_scale: float
    #: The short side images are decoded at (at least) before `preprocess`; None: full size.
    decode_size: int | None

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """A batch of preprocessed images (N, 3, H, W) -> (N, dim) unit vectors."""
        ...

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (N, dim) unit vectors."""
        ...
