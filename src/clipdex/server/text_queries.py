"""Text queries to vectors for a server: an in-memory LRU, then the catalog's query cache
(read only), then one batched pass of the text model for what is left.

Why in memory and read-only: the server only reads the index (`clipdex index` may run
meanwhile). Writing the catalog's cache would take SQLite's write lock from inside a
request, contending with an indexing run (a request could wait out the busy timeout), so
the server never writes it; it still reads what CLI and library searches cached. Every
key holds the model identity (storage/query_cache.py `query_key`: name, weights' SHA-256,
dimension), so a vector is only ever used for the model that made it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from clipdex.search.cached import TextModel
from clipdex.storage.catalog import Catalog
from clipdex.storage.query_cache import QueryCache, query_key


class TextQueryVectors:
    """Unit vectors of query texts, cached (see the module). Thread-safe."""

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self.lock = threading.Lock()
        #: Texts encoded by the model, and texts answered from a cache (tests read them).
        self.encoded = 0
        self.cached = 0

    def vectors(
        self, model: TextModel, texts: Sequence[str], catalog: Callable[[], Catalog]
    ) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors of `texts` under `model` (which has an
        `identity`); the texts a cache does not hold go through the model in one batch."""
        identity = model.identity
        precision = getattr(model, "precision", None)  # int8 vectors are keyed apart
        if not texts:
            return np.zeros((0, identity.dim), dtype=np.float32)
        keys = [query_key(identity, text, precision) for text in texts]
        found: dict[str, np.ndarray] = {}
        with self.lock:
            for key in keys:
                vector = self.memory.get(key)
                if vector is not None:
                    self.memory.move_to_end(key)
                    found[key] = vector
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            stored = QueryCache(catalog(), write=False)
            for i in missing:
                vector = stored.get(identity, texts[i], precision)
                if vector is not None:
                    found[keys[i]] = vector
        todo = list(dict.fromkeys(texts[i] for i, key in enumerate(keys) if key not in found))
        if todo:
            made = model.encode_texts(todo).astype(np.float32)
            for text, vector in zip(todo, made, strict=True):
                found[query_key(identity, text, precision)] = vector
        self.encoded += len(todo)
        self.cached += len(texts) - len(todo)
        self._keep(found)
        return np.stack([found[key] for key in keys])

    def _keep(self, found: dict[str, np.ndarray]) -> None:
        if self.max_entries <= 0:
            return
        with self.lock:
            for key, vector in found.items():
                self.memory[key] = vector
                self.memory.move_to_end(key)
            while len(self.memory) > self.max_entries:
                self.memory.popitem(last=False)
