"""Loading an index's model once and keeping it: a checkpoint changed since is refused."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from clipdex.errors import ModelMismatchError
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec, check_same_model, same_model, spec_for
from clipdex.models.text_encoder import TextEncoder, load_text_encoder
from clipdex.types import ModelIdentity

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.models.text_numpy import NumpyTextEncoder


class ModelLoader:
    """The one model an Index keeps in memory, and how to load another (thread-safe)."""

    def __init__(
        self,
        device: str,
        precision: str,
        lock: threading.RLock,
        loaded: Embedder | TextEncoder | NumpyTextEncoder | None = None,
    ):
        self.device = device
        self.precision = precision
        self.lock = lock
        #: The model in memory, or None until something needs one.
        self.loaded = loaded

    def for_index(
        self, stored: ModelIdentity | None, spec: ModelSpec | None, text_only: bool = False
    ) -> Embedder | TextEncoder | NumpyTextEncoder:
        """The model of an index that records `stored`: `spec` (which must be the same
        model), else its own, else (a new index) the default. With `text_only`, the text
        tower alone may do (models/text_encoder.py)."""
        if spec is None:
            spec = spec_for(stored) if stored is not None else ModelSpec()
        elif stored is not None:
            check_same_model(stored, spec)
        return self.load(spec, stored, text_only)

    def load(
        self, spec: ModelSpec, want: ModelIdentity | None = None, text_only: bool = False
    ) -> Embedder | TextEncoder | NumpyTextEncoder:
        """`spec`'s model, reusing the loaded one when it is the same; `want` must match.
        With `text_only`, the text tower alone when it can be loaded so (faster)."""
        with self.lock:
            cached = self.loaded
            if (
                cached is not None
                and (text_only or not getattr(cached, "text_only", False))
                and (
                    cached.identity == want
                    if want is not None
                    else same_model(cached.identity, spec)
                )
            ):
                return cached  # weights in memory: a file changed since cannot affect them
            # imported here: a cached query (no model) never pays for them
            from clipdex.models.numpy_tower import cache_text_tower, load_numpy_text_encoder

            embedder = None
            if text_only:  # numpy from the tower cache (no torch), else torch's text tower
                embedder = load_numpy_text_encoder(spec, want, self.device, self.precision)
                embedder = embedder or load_text_encoder(spec, self.device, self.precision)
            embedder = embedder or Embedder(spec, self.device, self.precision)
            if want is not None and embedder.identity != want:
                where = f"checkpoint {spec.checkpoint}" if spec.checkpoint else spec.name
                raise ModelMismatchError(
                    f"this index was built with {want.describe()}, but {where} now loads "
                    f"{embedder.identity.describe()}; restore the weights the index was built "
                    "with, or rebuild the index with the new ones",
                    hint="rebuild",
                )
            if not getattr(embedder, "from_cache", False):
                cache_text_tower(embedder)  # its identity checked: the next process may use it
            self.loaded = embedder
            return embedder
