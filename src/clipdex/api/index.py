"""The Index facade: one index folder, read by many threads, written under its lock.

Readers (catalog, vectors, refresh, search, classify, status) need no lock: each read first
catches the in-memory FAISS index up with the catalog's change sequence. Writers (add,
forget, check with repair) take the folder's writer lock for the whole run. No click, no
printing, no exits: errors are `clipdex.errors` types.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

from clipdex.api.folder import default_index_dir, index_exists, prepare_folder, require_writable
from clipdex.api.models import ModelLoader
from clipdex.api.reader import Reader
from clipdex.api.searching import Searcher
from clipdex.api.sources import find_gone_source, gone_local_uri, read_image, uris_for
from clipdex.api.status import IndexStatus, SourceStatus, index_status
from clipdex.classify.runs import (
    Classification,
    ClassifyOptions,
    classify_index,
)
from clipdex.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DECODE_WORKERS,
    DEFAULT_FETCH_WORKERS,
)
from clipdex.errors import IndexNotFoundError, SourceError
from clipdex.indexer.ray_connect import check_address
from clipdex.indexer.ray_run import RayOptions, require_ray
from clipdex.indexer.run import IndexReport, RunOptions, forget_source, index_source
from clipdex.indexer.tensor_pipeline import decode_path_from_env
from clipdex.models.device import DEFAULT_DEVICE, DEFAULT_PRECISION
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec, check_same_model, same_model
from clipdex.models.text_encoder import TextEncoder
from clipdex.search.algebra import Term
from clipdex.search.duplicates import (
    DEFAULT_MAX_GROUP,
    DEFAULT_THRESHOLD,
    DuplicateGroup,
)
from clipdex.search.filters import Filters
from clipdex.search.query import (
    SearchResult,
)
from clipdex.sources import open_source
from clipdex.sources.remote import StoreOptions
from clipdex.storage.catalog import Catalog
from clipdex.storage.labels import LabelStore
from clipdex.storage.lock import WriterLock
from clipdex.types import LabelSet, ModelIdentity, ProgressCallback
from clipdex.vectors import (
    LoadReport,
    VectorStore,
)
from clipdex.vectors.check import CheckReport, check_index
from clipdex.vectors.settings import apply_settings, check_settings


class Index:
    """One index folder: `catalog.sqlite` (the truth) and `vectors.faiss` (derived).

    Reading needs no lock; `add` takes the folder's writer lock for the whole run. One
    Index may serve searches from several threads: each read first catches the in-memory
    FAISS index up with the catalog's change sequence (other processes' writes), under a lock.
    """

    def __init__(
        self,
        folder: str | Path | None = None,
        *,
        device: str = DEFAULT_DEVICE,
        precision: str = DEFAULT_PRECISION,
        loaded_model: Embedder | None = None,
    ):
        """Args:
        folder: the index folder (default: $CLIPDEX_INDEX or ./.clipdex); nothing is
            read or created until it is used.
        device: where the model runs ("auto", "cpu", "cuda", "cuda:1", "mps").
        precision: the model's precision ("auto", "fp32", "fp16", "bf16"; "int8": CPU
            only, dynamic int8 linear layers, never chosen by "auto").
        loaded_model: a model already in memory, used whenever the index needs that
            same model (its identity is checked like any other load's).
        """
        self.folder = Path(folder) if folder is not None else default_index_dir()
        self._lock = threading.RLock()
        self._reader = Reader(self.folder, self._lock)
        self._models = ModelLoader(device, precision, self._lock, loaded_model)
        ran = getattr(loaded_model, "precision", None) or precision  # keys cached queries
        self._searcher = Searcher(self._reader, self._lock, self.embedder, ran)

    # -- reading ---------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return index_exists(self.folder)

    @property
    def catalog(self) -> Catalog:
        """The catalog, opened on first use (read-only when the folder cannot be written)."""
        return self._reader.catalog

    def refresh(self) -> bool:
        """Catch the in-memory vectors up with the catalog's change sequence (other
        processes' writes). Every read does this itself; call it to catch up ahead of time
        (a server between requests). Thread-safe; readers never write the FAISS file.

        Returns:
            True when anything changed: the vectors were opened, caught up, or reopened
            because the index was rebuilt with another model; False when already current.
        Raises CatalogError when the index has no model yet (nothing indexed).
        """
        return self._reader.refresh()

    @property
    def vectors(self) -> VectorStore:
        """The vector store, caught up in memory with the catalog's latest change (see
        `refresh`); reopened when the index was rebuilt with another model."""
        return self._reader.vectors

    @property
    def load_report(self) -> LoadReport | None:
        """How the vectors were last opened (loaded, caught up, rebuilt); None before."""
        return self._reader.load_report

    @property
    def loaded_model(self) -> Embedder | TextEncoder | None:
        """The model in memory, or None: a model loads only when something needs it."""
        return self._models.loaded

    def model_identity(self) -> ModelIdentity | None:
        return self.catalog.model_identity()

    def embedder(
        self, spec: ModelSpec | None = None, *, text_only: bool = False
    ) -> Embedder | TextEncoder:
        """The index's own model (or `spec`, which must match it); the default for a new one.
        With `text_only`, possibly its text tower alone (for text queries: faster to load).

        The loaded model's identity (a checkpoint's SHA-256) must be the one the index
        records: a checkpoint file overwritten since indexing is refused, not used.
        """
        with self._lock:
            return self._models.for_index(self.catalog.model_identity(), spec, text_only)

    def search(
        self,
        text: str | None = None,
        *,
        image: str | Path | None = None,
        k: int = 10,
        min_score: float | None = None,
        label: str | None = None,
        like: int | None = None,
        exact: bool = False,
        filters: Filters | None = None,
        sort: str = "score",
        terms: Sequence[Term] | None = None,
    ) -> list[SearchResult]:
        """Nearest images to a query, best first (cosine scores). The query is the weighted
        sum of its terms' unit vectors, renormalised (search/algebra.py): `text`, `image`
        and `like` are terms of weight 1, `terms` adds more.

        Args:
            text: a text query.
            image: an image file to search by (with `text` too: their normalised sum).
            k: how many results at most (>= 1).
            min_score: leave out results scoring below it.
            label: search only images whose top label it is in the latest
                classification run that has that label.
            like: the id of a stored image to search by (its stored vector: nothing is
                embedded); the image itself is left out of the results.
            exact: scan every stored vector exactly (streamed from the catalog),
                whatever the kind of the vector store.
            filters: capture date, camera and place conditions (search.filters.Filters),
                ANDed with `label`; they restrict the candidates before ranking. No image
                meeting them: an empty list.
            sort: "score" (best first) or "date" (the k best, oldest first by capture
                time; undated ones last, by score).
            terms: more weighted terms (`Term.text("snow", 0.5)`, `Term.image(path)`,
                `Term.like(id)`; a negative weight subtracts); stored images named by
                `like` terms are left out of the results.
        """
        return self._searcher.search(
            text, image, k, min_score, label, like, exact, filters, sort, terms
        )

    def search_many(
        self,
        queries: np.ndarray,
        k: int = 10,
        *,
        label: str | None = None,
        filters: Filters | None = None,
        model=None,
    ) -> list[list[SearchResult]]:
        """Nearest images to each row of `queries` (unit vectors), best first, in one
        vector-store search: a server answers concurrent queries together this way.

        Args:
            queries: (n, dim) float32 unit vectors.
            k: results per query (>= 1).
            label: search only images whose top label it is (as in `search`).
            filters: photo conditions, as in `search` (none met: empty lists).
            model: the Embedder that made the queries: the index must still hold its
                vectors (a rebuild with another model meanwhile is refused).
        """
        return self._searcher.search_many(queries, k, label, model, filters)

    def duplicates(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        exact: bool = False,
        max_group: int = DEFAULT_MAX_GROUP,
        on_progress: ProgressCallback | None = None,
    ) -> Iterator[DuplicateGroup]:
        """Groups of near-duplicate images, best copy first (search/duplicates.py).

        The pairs are found now (under the lock); the groups stream as they are read.

        Args:
            threshold: the cosine two images' vectors must reach (0 < t <= 1); every two
                images of a group reach it.
            exact: group byte-identical files (equal content fingerprints) instead; no
                vectors are compared.
            max_group: the most images a group holds (>= 2); more copies form more groups.
            on_progress: called as on_progress("duplicates", done, total).
        """
        return self._searcher.duplicates(threshold, exact, max_group, on_progress)

    def classify(
        self,
        labels: LabelSet,
        options: ClassifyOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Classification:
        """Give every image its nearest label(s); saved as a run unless options.save is False.

        Args:
            labels: the labels and their prompts.
            options: templates, how many labels per image, threshold, whether to save
                (default: ClassifyOptions()).
            on_progress: called as on_progress(phase, done, total).
        """
        options = options or ClassifyOptions()
        if options.save:
            require_writable(self.folder)
        _ = self.vectors  # an empty index says so before any model loads
        embedder = self.embedder(text_only=True)  # labels are texts
        with self._lock:
            vectors = self._reader.vectors_of(embedder)
            return classify_index(self.catalog, vectors, embedder, labels, options, on_progress)

    def nearest_per_label(
        self, labels: LabelSet, k: int, templates: str = "openai"
    ) -> dict[str, list[SearchResult]]:
        """The k images nearest to each label's vector, best first.

        Args:
            labels: the labels and their prompts.
            k: images per label (>= 1).
            templates: the prompt template set the label vectors are made with.
        """
        return self._searcher.nearest_per_label(labels, k, templates)

    def label_counts(self) -> tuple[int | None, list[tuple[str, int]]]:
        """(latest classification run, [(label, images whose top label it is)])."""
        return LabelStore(self.catalog).latest_counts()

    def status(self, failures: int | None = 20) -> IndexStatus:
        """Counts, model, vectors, sources, failures and the latest labels of the index.

        Args:
            failures: list at most this many failed files (None: all of them).
        """
        return index_status(self, failures)

    # -- writing ---------------------------------------------------------------------------

    def add(
        self,
        path: str | Path,
        *,
        model: ModelSpec | None = None,
        rebuild: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int | None = DEFAULT_DECODE_WORKERS,
        include_hidden: bool = False,
        allow_empty: bool = False,
        verify: bool = False,
        wait: bool = False,
        from_list: bool = False,
        endpoint_url: str | None = None,
        fetch_workers: int = DEFAULT_FETCH_WORKERS,
        follow_symlinks: bool = False,
        exact_decode: bool = False,
        index_type: str | None = None,
        target_recall: float | None = None,
        thumbnails: bool = True,
        memory_budget: int | str | None = None,
        ray: RayOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> IndexReport:
        """Index a folder, an image file, a bucket prefix (`s3://...`), or with `from_list`
        a file of uris: embed what is new or changed, forget what is gone.

        Args:
            path: the source (a folder, an image file, a bucket uri, or a list file).
            model: the model; a new index defaults to the default model, a known one
                to its own (another one is refused unless `rebuild`).
            rebuild: re-embed everything; with another `model`, forget every source's
                vectors first (the other sources must be indexed again).
            batch_size: images per forward pass.
            workers: decoding processes for local files; None: chosen from the cores,
                with the model's torch threads taking the rest (report.balance).
            include_hidden: index hidden files and folders too.
            allow_empty: accept a source with no images now (its images are removed);
                a known source whose folder, file or list is gone is forgotten
                (see `forget`) instead of refused.
            verify: also compare content fingerprints of files whose size and mtime
                match.
            wait: wait for another writer to finish instead of failing at once.
            from_list: `path` is a file listing uris, one a line.
            endpoint_url: the object store's endpoint (an S3-compatible server).
            fetch_workers: threads fetching remote objects.
            follow_symlinks: follow symbolic links inside a folder (to files or folders;
                never looping); skipped otherwise.
            exact_decode: decode every image at full size, for open_clip's preprocessing
                bit for bit; by default large images are decoded at twice the model's
                input size (JPEG DCT scaling, exact integer box filters), much faster.
            index_type: the vector store's kind ("auto", the default of a new index, or
                one of vectors.KINDS: flat, ivf, ivf-sq8, ivf-pq), kept by later runs; a
                change rebuilds it from the stored vectors. An index built before "auto"
                existed keeps its kind unless asked.
            target_recall: the recall@10 against exact search an IVF's nprobe is tuned to
                reach (0 < r <= 1; default 0.95), kept by later runs.
            thumbnails: store a small WebP/JPEG of each image embedded (made from the
                pixels decoded for the model) in the index folder, for viewers.
            memory_budget: bytes (or "500MB", "2GB", "25%") the automatic kind may hold
                in memory (default: a quarter of memory), kept by later runs.
            ray: embed through Ray Data (a local Ray, or a cluster: RayOptions) instead
                of in this process; the plan, the catalog and its writes stay here.
            on_progress: called as on_progress(phase, done, total).
        """
        budget = check_settings(index_type, target_recall, memory_budget)
        decode_path_from_env()  # a bad CLIPDEX_DECODE_PATH fails before anything is written
        if ray is not None:
            require_ray()  # before anything is opened or written
            check_address(ray.address)
        try:
            source = open_source(
                path,
                from_list=from_list,
                include_hidden=include_hidden,
                exclude=(self.folder.resolve(),),
                options=StoreOptions(endpoint_url=endpoint_url),
                follow_symlinks=follow_symlinks,
            )
        except SourceError as exc:
            gone = self._gone_source(path, from_list)
            if gone is None:
                raise
            if allow_empty:
                return self.forget(gone.uri, wait=wait)
            raise SourceError(
                f"{exc} (the index still holds {gone.images} images from it; "
                "forget the source to remove them)"
            ) from None
        if not self.exists:
            # A model that cannot load must not leave a new, empty index behind.
            self._models.load(model or ModelSpec())
        prepare_folder(self.folder)
        with self._writing(wait) as catalog:
            forgotten: tuple[str, ...] = ()
            stored = catalog.model_identity()
            if stored is not None and model is not None and not same_model(stored, model):
                if not rebuild:
                    check_same_model(stored, model)
                # Load the new model first: if it fails, the index is left as it was. Only
                # then forget every source's vectors, which the old model made.
                self._models.load(model)
                forgotten = tuple(uri for uri in catalog.reset() if uri != source.uri)
            apply_settings(self.folder, catalog, index_type, target_recall, budget)
            options = RunOptions(
                rebuild=rebuild,
                batch_size=batch_size,
                workers=workers,
                allow_empty=allow_empty,
                verify=verify,
                fetch_workers=fetch_workers,
                exact_decode=exact_decode,
                thumbnails=thumbnails,
                ray=ray,
            )
            report = index_source(
                self.folder, catalog, source, lambda: self.embedder(model), options, on_progress
            )
            return replace(report, forgotten_sources=forgotten)

    def forget(self, source: str | Path, *, wait: bool = False) -> IndexReport:
        """Drop a source: its images are removed unless another source lists them too
        (those are counted as kept).

        Args:
            source: the folder, file, bucket prefix or list file, as it was indexed,
                whether or not it still exists.
            wait: wait for another writer to finish instead of failing at once.
        """
        if not self.exists:
            raise IndexNotFoundError(f"no index at {self.folder}")
        require_writable(self.folder)
        with self._writing(wait) as catalog:
            known = {row[0] for row in catalog.sources()}
            uri = next((u for u in uris_for(source) if u in known), None)
            if uri is None:
                raise SourceError(f"{source} is not a source of this index (its status lists them)")
            return forget_source(self.folder, catalog, uri)

    def _gone_source(self, path: str | Path, from_list: bool) -> SourceStatus | None:
        """The known local source `path` names, if its folder, file or list is gone."""
        uri = gone_local_uri(path, from_list)
        if uri is None or not self.exists:
            return None
        try:
            return find_gone_source(self.catalog, uri)
        finally:
            self.close_readers()

    def check(self, repair: bool = False, wait: bool = False) -> CheckReport:
        """Verify the index's invariants.

        Args:
            repair: also rebuild what is derived (the FAISS file, vectors to re-embed),
                under the writer lock.
            wait: with `repair`, wait for another writer instead of failing at once.
        """
        if not repair:
            return check_index(self.folder, self.catalog)
        require_writable(self.folder)
        with self._writing(wait) as catalog:
            return check_index(self.folder, catalog, repair=True)

    def image_bytes(self, image_id: int) -> bytes:
        """The bytes of an indexed image, from wherever it came from (for previews).

        Only images indexed successfully: a failed row may name any file (a list can name
        anything), and bytes that are no longer an image are refused too.

        Args:
            image_id: the image's id (a search result's `id`).
        """
        return read_image(self.catalog, image_id)

    @contextmanager
    def _writing(self, wait: bool) -> Iterator[Catalog]:
        """Hold the writer lock with a fresh writable catalog; readers reopen afterwards."""
        lock = WriterLock(self.folder)
        lock.acquire(wait=wait)
        try:
            yield self._reader.open_for_writing()
        finally:
            self.close_readers()
            lock.release()

    def close_readers(self) -> None:
        """Close the catalog and drop the vectors; the next read opens them again."""
        self._reader.close()

    def close(self) -> None:
        """Close the readers and drop the model from memory."""
        with self._lock:
            self.close_readers()
            self._models.loaded = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_index(folder: str | Path | None = None, **options) -> Index:
    """Open the index at `folder`; nothing is read or created until it is used.

    Args:
        folder: the index folder (default: $CLIPDEX_INDEX or ./.clipdex).
        **options: `Index` keywords: device, precision, loaded_model.
    """
    return Index(folder, **options)
