"""The Python API: open an index, add sources, search, inspect. No click, no printing."""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from clipdex.classify.runs import (
    Classification,
    ClassifyOptions,
    build_label_matrix,
    classify_index,
    nearest_per_label,
)
from clipdex.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FETCH_WORKERS,
    DEFAULT_INDEX_DIR,
    DEFAULT_WORKERS,
    INDEX_ENV,
)
from clipdex.errors import (
    ImageDecodeError,
    IndexNotFoundError,
    IndexReadOnlyError,
    ModelMismatchError,
    QueryError,
    SourceError,
)
from clipdex.indexer.run import IndexReport, RunOptions, forget_source, index_source
from clipdex.media.decode import sniff_format
from clipdex.models.device import DEFAULT_DEVICE, DEFAULT_PRECISION
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec, check_same_model, same_model, spec_for
from clipdex.search.query import SearchResult, query_vector, search_vectors
from clipdex.sources import open_source
from clipdex.sources.fetch import FileSystems, fetch_bytes
from clipdex.sources.remote import StoreOptions, is_remote
from clipdex.storage.catalog import CATALOG_FILE, Catalog
from clipdex.storage.labels import LabelStore
from clipdex.storage.lock import WriterLock
from clipdex.types import LabelSet, ModelIdentity, ProgressCallback
from clipdex.vectors import (
    DEFAULT_KIND,
    INDEX_FILE,
    LoadReport,
    VectorStore,
    catch_up,
    open_store,
)
from clipdex.vectors.check import CheckReport, check_index


def default_index_dir() -> Path:
    """$CLIPDEX_INDEX, else ./.clipdex (clipdex/defaults.py)."""
    return Path(os.environ.get(INDEX_ENV) or DEFAULT_INDEX_DIR)


class SourceStatus(NamedTuple):
    uri: str
    kind: str
    indexed_at: float | None
    images: int
    #: The folder, file or list file is gone (a renamed folder, an unplugged drive).
    missing: bool = False


@dataclass(frozen=True)
class IndexStatus:
    folder: str
    model: ModelIdentity | None
    images: int
    failed: int
    vectors: int
    index_type: str
    index_vectors: int
    index_bytes: int
    catalog_bytes: int
    change_seq: int
    sources: list[SourceStatus]
    failures: list[tuple[str, str]]
    index_load: LoadReport | None
    classify_run: int | None = None
    label_counts: list[tuple[str, int]] = field(default_factory=list)


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
    ):
        self.folder = Path(folder) if folder is not None else default_index_dir()
        self.device = device
        self.precision = precision
        self._catalog: Catalog | None = None
        self._vectors: VectorStore | None = None
        self._load_report: LoadReport | None = None
        self._embedder: Embedder | None = None
        self._vectors_model: ModelIdentity | None = None  # the model self._vectors came from
        self._lock = threading.RLock()

    # -- reading ---------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.folder / CATALOG_FILE).is_file()

    @property
    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self._require_index()
                self._catalog = Catalog(self.folder, read_only=not _writable(self.folder))
            return self._catalog

    @property
    def vectors(self) -> VectorStore:
        """The vector store, caught up in memory with the catalog's latest change (readers
        never write it); reopened when the index was rebuilt with another model."""
        with self._lock:
            catalog = self.catalog
            if self._vectors is not None and self._vectors.seq != catalog.change_seq():
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
                self._vectors, self._load_report = open_store(self.folder, catalog)
                self._vectors_model = model
            return self._vectors

    def _vectors_of(self, embedder: Embedder) -> VectorStore:
        """The caught-up vectors, which must come from `embedder`'s model (call with the lock)."""
        vectors = self.vectors
        if self._vectors_model != embedder.identity:
            raise ModelMismatchError(
                f"the index was rebuilt with {self._vectors_model.describe()} while this "
                "request ran; run it again"
            )
        return vectors

    def model_identity(self) -> ModelIdentity | None:
        return self.catalog.model_identity()

    def embedder(self, spec: ModelSpec | None = None) -> Embedder:
        """The index's own model (or `spec`, which must match it); the default for a new one.

        The loaded model's identity (a checkpoint's SHA-256) must be the one the index
        records: a checkpoint file overwritten since indexing is refused, not used.
        """
        with self._lock:
            stored = self.catalog.model_identity()
            if spec is None:
                spec = spec_for(stored) if stored is not None else ModelSpec()
            elif stored is not None:
                check_same_model(stored, spec)
            return self._load_model(spec, stored)

    def _load_model(self, spec: ModelSpec, want: ModelIdentity | None = None) -> Embedder:
        """`spec`'s model, reusing the loaded one when it is the same; `want` must match."""
        with self._lock:
            cached = self._embedder
            if cached is not None and (
                cached.identity == want if want is not None else same_model(cached.identity, spec)
            ):
                return cached  # weights in memory: a file changed since cannot affect them
            embedder = Embedder(spec, self.device, self.precision)
            if want is not None and embedder.identity != want:
                where = f"checkpoint {spec.checkpoint}" if spec.checkpoint else spec.name
                raise ModelMismatchError(
                    f"this index was built with {want.describe()}, but {where} now loads "
                    f"{embedder.identity.describe()}; restore the weights the index was built "
                    "with, or rebuild the index with the new ones",
                    hint="rebuild",
                )
            self._embedder = embedder
            return embedder

    def search(
        self,
        text: str | None = None,
        *,
        image: str | Path | None = None,
        k: int = 10,
        min_score: float | None = None,
        label: str | None = None,
    ) -> list[SearchResult]:
        """Nearest images to a text, an image file, or both, best first (cosine scores).

        `label` restricts the search to images whose top label it is in the latest
        classification run that has that label.
        """
        if k < 1:
            raise QueryError(f"k must be at least 1 (got {k})")
        if text is not None and not text.strip():
            raise QueryError("the query text is empty")
        _ = self.vectors  # an empty index says so before any model loads
        among = None
        if label is not None:
            among = LabelStore(self.catalog).ids_with_label(label)
            if len(among) == 0:
                raise QueryError(
                    f"no image is labelled '{label}'; label images first with `clipdex classify`"
                )
        embedder = self.embedder()
        query = query_vector(embedder, text, image)
        with self._lock:  # FAISS may not be searched while another thread catches it up
            vectors = self._vectors_of(embedder)
            return search_vectors(self.catalog, vectors, query, k, min_score, among)

    def classify(
        self,
        labels: LabelSet,
        options: ClassifyOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Classification:
        """Give every image its nearest label(s); saved as a run unless options.save is False."""
        options = options or ClassifyOptions()
        if options.save:
            self._require_writable()
        _ = self.vectors  # an empty index says so before any model loads
        embedder = self.embedder()
        with self._lock:
            vectors = self._vectors_of(embedder)
            return classify_index(self.catalog, vectors, embedder, labels, options, on_progress)

    def nearest_per_label(
        self, labels: LabelSet, k: int, templates: str = "openai"
    ) -> dict[str, list[SearchResult]]:
        """The k images nearest to each label's vector, best first."""
        if k < 1:
            raise QueryError(f"k (images per label) must be at least 1 (got {k})")
        _ = self.vectors  # an empty index says so before any model loads
        embedder = self.embedder()
        _, matrix = build_label_matrix(embedder, labels, templates)
        with self._lock:
            found = nearest_per_label(self._vectors_of(embedder), matrix, k)
        rows = self.catalog.images(i for hits in found for i, _ in hits)
        return {
            name: [
                SearchResult(i, rows[i].uri, s, rows[i].width, rows[i].height)
                for i, s in hits
                if i in rows
            ]
            for name, hits in zip(labels.names, found, strict=True)
        }

    def label_counts(self) -> tuple[int | None, list[tuple[str, int]]]:
        """(latest classification run, [(label, images whose top label it is)])."""
        return LabelStore(self.catalog).latest_counts()

    def status(self, failures: int | None = 20) -> IndexStatus:
        catalog = self.catalog
        counts = catalog.counts()
        index_file = self.folder / INDEX_FILE
        vectors = self.vectors if catalog.model_identity() is not None else None
        run_id, label_counts = self.label_counts()
        return IndexStatus(
            folder=str(self.folder),
            model=catalog.model_identity(),
            images=counts["ok"],
            failed=counts["failed"],
            vectors=counts["vectors"],
            index_type=vectors.kind if vectors else DEFAULT_KIND,
            index_vectors=vectors.ntotal if vectors else 0,
            index_bytes=index_file.stat().st_size if index_file.exists() else 0,
            catalog_bytes=(self.folder / CATALOG_FILE).stat().st_size,
            change_seq=catalog.change_seq(),
            sources=[
                SourceStatus(*row, _root_missing(row[0], row[1])) for row in catalog.sources()
            ],
            failures=catalog.failures(failures),
            index_load=self._load_report,
            classify_run=run_id,
            label_counts=label_counts,
        )

    # -- writing ---------------------------------------------------------------------------

    def add(
        self,
        path: str | Path,
        *,
        model: ModelSpec | None = None,
        rebuild: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = DEFAULT_WORKERS,
        include_hidden: bool = False,
        allow_empty: bool = False,
        verify: bool = False,
        wait: bool = False,
        from_list: bool = False,
        endpoint_url: str | None = None,
        fetch_workers: int = DEFAULT_FETCH_WORKERS,
        follow_symlinks: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> IndexReport:
        """Index a folder, an image file, a bucket prefix (`s3://...`), or with `from_list`
        a file of uris: embed what is new or changed, forget what is gone.

        A known source whose folder, file or list is gone is refused, or with
        `allow_empty` forgotten (see `forget`). Symbolic links inside a folder (to files
        or folders) are skipped unless `follow_symlinks`, which follows both and never loops.
        """
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
            self._load_model(model or ModelSpec())
        self._prepare_folder()
        lock = WriterLock(self.folder)
        lock.acquire(wait=wait)
        try:
            self.close_readers()
            catalog = self._catalog = Catalog(self.folder)
            stored = catalog.model_identity()
            if stored is not None and model is not None and not same_model(stored, model):
                if not rebuild:
                    check_same_model(stored, model)
                # Load the new model first: if it fails, the index is left as it was. Only
                # then forget every source's vectors, which the old model made.
                self._load_model(model)
                catalog.reset()
            options = RunOptions(
                rebuild=rebuild,
                batch_size=batch_size,
                workers=workers,
                allow_empty=allow_empty,
                verify=verify,
                fetch_workers=fetch_workers,
            )
            return index_source(
                self.folder, catalog, source, lambda: self.embedder(model), options, on_progress
            )
        finally:
            self.close_readers()
            lock.release()

    def forget(self, source: str | Path, *, wait: bool = False) -> IndexReport:
        """Drop a source (a folder, file, bucket prefix or list file, as it was indexed,
        whether or not it still exists): its images are removed unless another source
        lists them too (those are counted as kept)."""
        if not self.exists:
            raise IndexNotFoundError(f"no index at {self.folder}")
        self._require_writable()
        lock = WriterLock(self.folder)
        lock.acquire(wait=wait)
        try:
            self.close_readers()
            catalog = self._catalog = Catalog(self.folder)
            known = {row[0] for row in catalog.sources()}
            uri = next((u for u in _uris_for(source) if u in known), None)
            if uri is None:
                raise SourceError(f"{source} is not a source of this index (its status lists them)")
            return forget_source(self.folder, catalog, uri)
        finally:
            self.close_readers()
            lock.release()

    def _gone_source(self, path: str | Path, from_list: bool) -> SourceStatus | None:
        """The known local source `path` names, if its folder, file or list is gone."""
        if not self.exists or is_remote(str(path)):
            return None
        local = os.path.abspath(os.path.expanduser(str(path)))
        if os.path.lexists(local):
            return None
        uri = f"list:{local}" if from_list else local
        try:
            rows = self.catalog.sources()
        finally:
            self.close_readers()
        return next((SourceStatus(*row, True) for row in rows if row[0] == uri), None)

    def check(self, repair: bool = False, wait: bool = False) -> CheckReport:
        """Verify the index's invariants; with `repair`, rebuild what is derived."""
        if not repair:
            return check_index(self.folder, self.catalog)
        self._require_writable()
        lock = WriterLock(self.folder)
        lock.acquire(wait=wait)
        try:
            self.close_readers()
            return check_index(self.folder, self.catalog, repair=True)
        finally:
            self.close_readers()
            lock.release()

    def image_bytes(self, image_id: int) -> bytes:
        """The bytes of an indexed image, from wherever it came from (for previews).

        Only images indexed successfully: a failed row may name any file (a list can name
        anything), and bytes that are no longer an image are refused too.
        """
        row = self.catalog.images([image_id]).get(image_id)
        if row is None or row.status != "ok":
            state = "no such image" if row is None else "it failed to index"
            raise SourceError(f"{image_id} is not an indexed image ({state})")
        uri, _, options = self.catalog.source_of(image_id)
        files = FileSystems(StoreOptions(**options))
        try:
            data = fetch_bytes(files.for_uri(uri), uri)
        except ImageDecodeError as exc:
            raise SourceError(f"cannot read image {image_id} ({uri}): {exc}") from exc
        if sniff_format(data[:16]) is None:
            raise SourceError(f"image {image_id} ({uri}) is no longer an image")
        return data

    def _require_index(self) -> None:
        if not self.exists:
            raise IndexNotFoundError(
                f"no index at {self.folder}; create one with `clipdex index FOLDER`"
            )

    def _require_writable(self) -> None:
        self._require_index()
        if not _writable(self.folder):
            raise IndexReadOnlyError(f"index folder {self.folder} is read-only")

    def _prepare_folder(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexReadOnlyError(
                f"cannot create index folder {self.folder}: {exc.strerror}"
            ) from exc
        if not _writable(self.folder):
            raise IndexReadOnlyError(f"index folder {self.folder} is read-only")

    def close_readers(self) -> None:
        with self._lock:
            if self._catalog is not None:
                self._catalog.close()
            self._catalog = None
            self._vectors = None

    def close(self) -> None:
        with self._lock:
            self.close_readers()
            self._embedder = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_index(folder: str | Path | None = None, **options) -> Index:
    """Open the index at `folder` (default: $CLIPDEX_INDEX or ./.clipdex)."""
    return Index(folder, **options)


def _uris_for(source: str | Path) -> list[str]:
    """The uris a user may mean by `source`: as given, a remote uri, a local path, a list."""
    text = str(source)
    if is_remote(text):
        return [text, text.rstrip("/")]
    local = os.path.abspath(os.path.expanduser(text))
    return [text, local, f"list:{local}"]


def _root_missing(uri: str, kind: str) -> bool:
    """Whether a local source's folder, file or list file no longer exists."""
    if kind == "list":
        return not os.path.exists(uri.removeprefix("list:"))
    if kind in ("folder", "file"):
        return not os.path.exists(uri)
    return False  # a bucket or object: not checked without a network round trip


def _writable(folder: Path) -> bool:
    """A real write attempt: os.access says yes to root even on a read-only mount."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
