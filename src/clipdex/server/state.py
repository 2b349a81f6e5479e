"""What one server keeps between requests: the Index (catalog and vectors caught up by
change sequence), the model loaded once in the background, label vectors per run, and
thumbnails made on demand. Requests read it; none changes it for another."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from clipdex.api import Index
from clipdex.errors import CatalogError, ClipdexError
from clipdex.media.decode import load_image, sniff_format
from clipdex.media.thumbnails import thumbnail_format, thumbnail_from_bytes
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import spec_for
from clipdex.models.text_encoder import TextEncoder
from clipdex.models.text_tower import text_tower_of
from clipdex.search.filters import Filters
from clipdex.search.results import SearchResult
from clipdex.server.options import ServerOptions
from clipdex.server.text_queries import TextQueryVectors
from clipdex.storage.image_info import ImageDetails, image_details, run_labels
from clipdex.storage.thumbs import ThumbnailStore
from clipdex.types import LabelSet


class ModelNotReady(Exception):
    """The model is still loading (or cannot load yet: the index has no model)."""


class ServerState:
    """The index, its warm model and the caches of one server process."""

    def __init__(self, index_folder: str | Path, options: ServerOptions):
        self.options = options
        self.index = Index(index_folder, device=options.device, precision=options.precision)
        self.folder = self.index.folder
        self.thumbs = ThumbnailStore(self.folder)
        self.started = time.time()
        self.model: Embedder | None = None
        #: What encodes text queries: the model's text tower (its shorter pass), or the model.
        self.text_model: TextEncoder | Embedder | None = None
        self.text_vectors = TextQueryVectors(options.query_cache_entries)
        self.model_error: str | None = None
        self._stop = threading.Event()
        self._loader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._label_matrices: dict[tuple, np.ndarray] = {}
        self._thumb_cache: OrderedDict[tuple[int, int], tuple[bytes, str]] = OrderedDict()
        self._thumb_bytes = 0

    # -- the model -------------------------------------------------------------------------

    def start_loading(self) -> None:
        """Load the index's model on a background thread (readyz says when it is warm);
        an index without a model yet is retried until one appears."""
        self._loader = threading.Thread(target=self._load, name="clipdex-model", daemon=True)
        self._loader.start()

    def _load(self) -> None:
        while not self._stop.is_set():
            try:
                self._load_once()
                return
            except ClipdexError as exc:
                self.model_error = str(exc)
            except Exception as exc:  # a broken model must not kill the server; report it
                self.model_error = f"{type(exc).__name__}: {exc}"
            self._stop.wait(2.0)

    def _load_once(self) -> None:
        """Load the model holding no lock of the Index (requests that need no model go on
        meanwhile), then swap in an Index that keeps it."""
        identity = self.index.model_identity()
        if identity is None:
            raise CatalogError("the index has no model yet; index some images first")
        options = self.options
        model = Embedder(spec_for(identity), options.device, options.precision)
        tower = text_tower_of(model) if options.text_tower else None
        text_model = tower or model
        text_model.encode_texts(["warm up"])  # the first forward pass is the slowest
        index = Index(
            self.folder, device=options.device, precision=options.precision, loaded_model=model
        )
        index.embedder()  # the identity check: the weights must be the index's own
        self.text_model = text_model
        self.index, self.model, self.model_error = index, model, None

    def embedder(self) -> Embedder:
        """The warm model, or ModelNotReady while it loads."""
        model = self.model
        if model is None:
            why = f": {self.model_error}" if self.model_error else ""
            raise ModelNotReady(f"the model is not loaded yet{why}; try again shortly")
        if model.identity != self.index.model_identity():
            # The index was rebuilt with another model: load that one.
            self.model = None
            self.start_loading()
            raise ModelNotReady("the index changed its model; loading the new one")
        return model

    def stop(self) -> None:
        self._stop.set()
        self.index.close()

    # -- queries ---------------------------------------------------------------------------

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Unit vectors of query texts: cached, else one pass of the text tower (the
        model's own weights, so the vectors are the model's; server/text_queries.py)."""
        model = self.embedder()
        text_model = self.text_model
        if text_model is None or text_model.identity != model.identity:
            text_model = model
        return self.text_vectors.vectors(text_model, texts, lambda: self.index.catalog)

    def search_vectors(
        self, queries: np.ndarray, k: int, label: str | None, filters: Filters | None = None
    ) -> list[list[SearchResult]]:
        return self.index.search_many(queries, k, label=label, filters=filters, model=self.model)

    def decode(self, data: bytes):
        """Uploaded bytes as an upright RGB image (ImageDecodeError if they are not one;
        the pixel limit is checked from the header, before decoding)."""
        picture, _ = load_image(data, self.options.max_upload_pixels)
        return picture

    def image_vector(self, data: bytes) -> np.ndarray:
        """The unit vector of uploaded image bytes (ImageDecodeError if they are not one)."""
        picture = self.decode(data)  # a bad upload is refused before the model is asked for
        return self.embedder().image_vector(picture)

    def label_matrix(self, run_id: int) -> tuple[list[str], np.ndarray] | None:
        """A classification run's labels and their vectors (made once a run), or None."""
        from clipdex.classify.runs import build_label_matrix

        found = run_labels(self.index.catalog, run_id)
        if found is None:
            return None
        templates, names = found
        model = self.embedder()
        key = (run_id, templates, tuple(names), model.identity)
        with self._lock:
            matrix = self._label_matrices.get(key)
        if matrix is None:
            source = templates.removeprefix("file:")
            _, matrix = build_label_matrix(model, LabelSet(names), source)
            with self._lock:
                if len(self._label_matrices) > 32:
                    self._label_matrices.clear()
                self._label_matrices[key] = matrix
        return names, matrix

    # -- images ----------------------------------------------------------------------------

    def details(self, image_id: int) -> ImageDetails | None:
        """The row of a live, indexed image, or None."""
        row = image_details(self.index.catalog, image_id)
        return row if row is not None and row.status == "ok" else None

    def thumbnail(self, row: ImageDetails) -> tuple[bytes, str]:
        """(bytes, format) of an image's thumbnail: the stored one, else one made from its
        bytes (from disk or a bucket, through the library) and kept in memory."""
        stored = self.thumbs.read(row.id)
        if stored is not None and sniff_format(stored[:16]) in ("WEBP", "JPEG"):
            return stored, sniff_format(stored[:16])
        key = (row.id, row.seq)
        with self._lock:
            cached = self._thumb_cache.get(key)
            if cached is not None:
                self._thumb_cache.move_to_end(key)
                return cached
        made = thumbnail_from_bytes(self.index.image_bytes(row.id))
        with self._lock:
            if key not in self._thumb_cache:
                self._thumb_cache[key] = made
                self._thumb_bytes += len(made[0])
            while self._thumb_bytes > self.options.thumbnail_cache_bytes and self._thumb_cache:
                _, (old, _) = self._thumb_cache.popitem(last=False)
                self._thumb_bytes -= len(old)
        return made

    @property
    def thumbnail_format(self) -> str:
        return thumbnail_format()
