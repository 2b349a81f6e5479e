"""The reader's state of one index: its catalog and the in-memory vectors, caught up with
the catalog's change sequence under one lock, so several threads may read at once."""

from __future__ import annotations

import threading
from pathlib import Path

from clipdex.api.folder import require_index, writable
from clipdex.errors import ModelMismatchError
from clipdex.models.open_clip import Embedder
from clipdex.storage.catalog import Catalog
from clipdex.types import ModelIdentity
from clipdex.vectors import LoadReport, VectorStore, catch_up, open_store


class Reader:
    """Opens the catalog and the vectors lazily and keeps them current; readers never
    write the FAISS file (only the writer, holding the folder's lock, saves it)."""

    def __init__(self, folder: Path, lock: threading.RLock):
        self.folder = folder
        self.lock = lock
        self._catalog: Catalog | None = None
        self._vectors: VectorStore | None = None
        self._vectors_model: ModelIdentity | None = None  # the model self._vectors came from
        #: How the vectors were last opened (loaded, caught up, rebuilt); None before.
        self.load_report: LoadReport | None = None

    @property
    def catalog(self) -> Catalog:
        with self.lock:
            if self._catalog is None:
                require_index(self.folder)
                self._catalog = Catalog(self.folder, read_only=not writable(self.folder))
            return self._catalog

    def refresh(self) -> bool:
        """Catch the vectors up with the catalog; whether anything changed (see Index)."""
        with self.lock:
            catalog = self.catalog
            changed = False
            if self._vectors is not None and self._vectors.seq != catalog.change_seq():
                changed = True
                if catalog.model_identity() == self._vectors_model:
                    try:
                        catch_up(self._vectors, catalog)
                    except BaseException:
                        self._vectors = None  # half caught up: reopen on the next read
                        raise
                if catalog.model_identity() != self._vectors_model:
                    self._vectors = None
            if self._vectors is None:
                model = catalog.model_identity()
                # memory-mapped when current: opening reads almost nothing (a catch-up
                # later copies it into memory first)
                self._vectors, self.load_report = open_store(self.folder, catalog, mmap=True)
                self._vectors_model = model
                changed = True
            return changed

    @property
    def vectors(self) -> VectorStore:
        with self.lock:
            self.refresh()
            return self._vectors

    def vectors_of(self, embedder: Embedder) -> VectorStore:
        """The caught-up vectors, which must come from `embedder`'s model (call with the lock)."""
        return self.vectors_for(embedder.identity)

    def vectors_for(self, identity: ModelIdentity) -> VectorStore:
        """The caught-up vectors, which must come from model `identity` (call with the lock)."""
        vectors = self.vectors
        if self._vectors_model != identity:
            raise ModelMismatchError(
                f"the index was rebuilt with {self._vectors_model.describe()} while this "
                "request ran; run it again"
            )
        return vectors

    def open_for_writing(self) -> Catalog:
        """Close what is open and open the catalog for writing (the caller holds the lock)."""
        with self.lock:
            self.close()
            self._catalog = Catalog(self.folder)
            return self._catalog

    def close(self) -> None:
        """Close the catalog and drop the vectors; the next read opens them again."""
        with self.lock:
            if self._catalog is not None:
                self._catalog.close()
            self._catalog = None
            self._vectors = None
