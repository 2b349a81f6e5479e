"""Remote sources through fsspec: s3://, gs://, az://, http(s)://.

Object stores are listed prefix by prefix (like folders), and an object's ETag (with its
size) decides whether it changed; a web server's Content-MD5, Digest, ETag or
Last-Modified does (see `_version`), and an object without any is fetched every run. Fetching is network-bound, so it runs in a thread pool
(`fetch.py`); this module only lists and names things.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from clipdex.errors import SourceError
from clipdex.media.decode import IMAGE_EXTENSIONS
from clipdex.sources.local import FileEntry

#: uri scheme -> (fsspec protocol, the package that provides it, the clipdex extra)
SCHEMES = {
    "s3": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gcs"),
    "gcs": ("gcs", "gcsfs", "gcs"),
    "az": ("az", "adlfs", "azure"),
    "abfs": ("abfs", "adlfs", "azure"),
    "http": ("http", "aiohttp", "http"),
    "https": ("https", "aiohttp", "http"),
}


def scheme_of(uri: str) -> str | None:
    """The remote scheme of a uri (`s3`, `gs`, ...), or None for a local path."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.lower() in SCHEMES else None


def is_remote(uri: str) -> bool:
    return scheme_of(uri) is not None


@dataclass(frozen=True)
class StoreOptions:
    """How to reach a store: stored with the source so that bytes can be fetched later."""

    endpoint_url: str | None = None
    anon: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("endpoint_url", self.endpoint_url), ("anon", self.anon)) if v}


def filesystem(uri: str, options: StoreOptions | None = None):
    """The fsspec filesystem for a remote uri, or SourceError naming the missing extra."""
    scheme = scheme_of(uri)
    if scheme is None:
        raise SourceError(f"not a remote uri: {uri}")
    protocol, package, extra = SCHEMES[scheme]
    try:
        __import__(package)
        import fsspec
    except ImportError:
        raise SourceError(
            f"{scheme}:// sources need the {package} package: pip install 'clipdex[{extra}]'"
        ) from None
    options = options or StoreOptions()
    kwargs: dict[str, Any] = {}
    if protocol == "s3":
        if options.endpoint_url:
            kwargs["endpoint_url"] = options.endpoint_url
        if options.anon:
            kwargs["anon"] = True
    elif protocol in ("http", "https"):
        kwargs["block_size"] = 0  # fetch whole objects, no range requests
    return fsspec.filesystem(protocol, **kwargs)


def strip_scheme(uri: str) -> str:
    """`s3://bucket/key` -> `bucket/key`, as fsspec's object stores name paths."""
    return uri.split("://", 1)[1] if scheme_of(uri) in ("s3", "gs", "gcs", "az", "abfs") else uri


def entry_of(uri: str, info: dict[str, Any]) -> FileEntry:
    modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
    mtime_ns = 0
    if hasattr(modified, "timestamp"):
        mtime_ns = int(modified.timestamp() * 1e9)
    size = int(info.get("size") or 0)
    return FileEntry(uri, size, mtime_ns, _version(uri, info, size))


def _version(uri: str, info: dict[str, Any], size: int) -> str:
    """What the catalog stores to tell an object's versions apart (see fingerprint.py).

    An object store's ETag or MD5 names the content: `etag:SIZE:ETag`, shared by copies.
    A web server's Content-MD5 or Digest names the content too; its ETag or Last-Modified
    only names this url's version (`version:SIZE:...`: servers derive ETags from size and
    date, so two urls may share one). With none of these: "", fetched again every run.
    """

    def first(*keys: str) -> str | None:
        values = (str(info[key]).strip() for key in keys if info.get(key))
        return next(values, None)

    if scheme_of(uri) in ("http", "https"):
        if md5 := first("Content-MD5"):
            return f"md5:{size}:{md5}"
        if digest := first("Digest"):
            return f"digest:{size}:{digest}"
        if validator := first("ETag", "Last-Modified"):
            return f"version:{size}:{validator}"
        return ""
    if etag := first("ETag", "etag", "md5Hash"):
        etag = etag.strip('"')
        return f"etag:{size}:{etag}"
    if modified := first("last_modified", "Last-Modified", "LastModified"):
        return f"version:{size}:{modified}"
    return ""


def _is_image_key(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


@dataclass
class RemoteSource:
    """A bucket prefix (or a single object) in an object store."""

    uri: str
    options: StoreOptions = field(default_factory=StoreOptions)
    include_hidden: bool = False
    is_file: bool = False
    fs: Any = None
    #: Bytes come over the network: the indexer fetches them in a thread pool.
    local: ClassVar[bool] = False

    @property
    def store(self) -> StoreOptions:
        """How to reach the store: remembered with the source, used to fetch bytes later."""
        return self.options

    @classmethod
    def from_uri(
        cls, uri: str, options: StoreOptions | None = None, include_hidden: bool = False, fs=None
    ) -> RemoteSource:
        uri = uri.rstrip("/")
        options = options or StoreOptions()
        fs = fs or filesystem(uri, options)
        path = strip_scheme(uri)
        fs.invalidate_cache()  # fsspec caches listings per instance: list the store afresh
        try:
            is_file = fs.isfile(path)
            if not is_file and not fs.isdir(path):
                raise SourceError(f"no such bucket, prefix or object: {uri}")
        except SourceError:
            raise
        except PermissionError as exc:
            raise SourceError(f"access denied to {uri}: {exc}") from exc
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot reach {uri}: {str(exc).splitlines()[0]}") from exc
        return cls(uri, options, include_hidden, is_file, fs)

    @property
    def kind(self) -> str:
        return "object" if self.is_file else "bucket"

    @property
    def prefix(self) -> str:
        return self.uri if self.is_file else self.uri + "/"

    def folders(self) -> Iterator[tuple[str, list[FileEntry] | None]]:
        """(prefix uri, its image objects) for each prefix under the source, in order."""
        scheme = scheme_of(self.uri)
        path = strip_scheme(self.uri)
        try:
            if self.is_file:
                info = self.fs.info(path)
                yield posixpath.dirname(self.uri), [entry_of(self.uri, info)]
                return
            for root, _dirs, files in self.fs.walk(path, detail=True):
                parts = root[len(path) :].split("/")
                if not self.include_hidden and any(p.startswith(".") for p in parts if p):
                    continue
                folder = f"{scheme}://{root}"
                entries = [
                    entry_of(f"{folder}/{name}", info)
                    for name, info in sorted(files.items())
                    if _is_image_key(name) and (self.include_hidden or not name.startswith("."))
                ]
                yield folder, entries
        except FileNotFoundError as exc:
            raise SourceError(f"prefix disappeared while it was being listed: {self.uri}") from exc
        except PermissionError as exc:
            raise SourceError(f"access denied while listing {self.uri}: {exc}") from exc
        except OSError as exc:
            raise SourceError(f"listing {self.uri} failed: {str(exc).splitlines()[0]}") from exc
