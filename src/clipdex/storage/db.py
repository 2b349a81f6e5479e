"""SQLite plumbing for the catalog: the engine and its pragmas, connections that raise
typed errors, write transactions, and the meta table's key-value helpers."""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import create_engine, event, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.pool import QueuePool

from clipdex.errors import CatalogError, IndexReadOnlyError
from clipdex.storage.schema import Meta

if TYPE_CHECKING:  # pragma: no cover
    from clipdex.storage.catalog import Catalog

#: SQLite page cache per connection (negative: KiB), above the 2 MB default for big scans.
CACHE_KIB = -65536


class WriteScope:
    """engine.begin() that turns SQLite's write failures into typed errors."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.context = catalog.engine.begin()

    def __enter__(self) -> Connection:
        try:
            return self.context.__enter__()
        except DatabaseError as exc:
            raise database_error(self.catalog.path, exc) from exc

    def __exit__(self, *exc_info) -> bool:
        try:
            return bool(self.context.__exit__(*exc_info))
        except DatabaseError as exc:
            raise database_error(self.catalog.path, exc) from exc


def make_engine(path: Path, read_only: bool) -> Engine:
    """An engine over `path`, opened by sqlite3 itself (so no character of the path is read as
    URL syntax) with connections whose errors are typed (see MappedConnection)."""
    engine = create_engine(
        "sqlite://", creator=lambda: connect(path, read_only), poolclass=QueuePool
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: sqlite3.Connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 30000")
        cursor.execute(f"PRAGMA cache_size = {CACHE_KIB}")
        if not read_only:
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine


def connect(path: Path, read_only: bool) -> sqlite3.Connection:
    """A sqlite3 connection to the catalog; read-only ones read the write-ahead log too.

    SQLite reads a WAL database without write access only if its -shm file exists. With
    no WAL to read (a cleanly closed catalog), `immutable=1` opens the file alone; with
    a WAL it cannot read, we refuse rather than serve a stale catalog.
    """
    try:
        if not read_only:
            return _open(path, str(path))
        url = f"file:{quote(str(path))}?mode=ro"
        try:
            conn = _open(path, url)
            sqlite3.Connection.execute(conn, "SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            if "unable to open" not in str(exc):
                raise
            wal = path.with_name(path.name + "-wal")
            if wal.exists() and wal.stat().st_size > 0:
                raise CatalogError(
                    f"cannot read the write-ahead log of {path}: the folder is read-only and "
                    f"has no {path.name}-shm file; open the index once with write access "
                    "(any clipdex command folds the log into the catalog)"
                ) from exc
        return _open(path, url + "&immutable=1")
    except sqlite3.DatabaseError as exc:
        raise database_error(path, exc) from exc


def _open(path: Path, target: str) -> MappedConnection:
    conn = sqlite3.connect(
        target, uri=target.startswith("file:"), check_same_thread=False, factory=MappedConnection
    )
    conn.path = path
    return conn


def _typed(method):
    """Wrap a sqlite3 method so that operational and corruption errors become clipdex
    errors; integrity and programming errors (bugs, or handled by callers) stay as they are."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
                raise
            conn = self if isinstance(self, sqlite3.Connection) else self.connection
            raise database_error(conn.path, exc) from exc

    return wrapper


class MappedCursor(sqlite3.Cursor):
    """Raw connections and SQLAlchemy statements (transaction bodies too) raise the same
    typed errors, whichever path reached the damaged or read-only file."""

    execute = _typed(sqlite3.Cursor.execute)
    executemany = _typed(sqlite3.Cursor.executemany)
    fetchone = _typed(sqlite3.Cursor.fetchone)
    fetchmany = _typed(sqlite3.Cursor.fetchmany)
    fetchall = _typed(sqlite3.Cursor.fetchall)
    __next__ = _typed(sqlite3.Cursor.__next__)


class MappedConnection(sqlite3.Connection):
    path: Path

    def cursor(self, factory=MappedCursor):
        return super().cursor(factory)

    def execute(self, *args):
        return self.cursor().execute(*args)

    def executemany(self, *args):
        return self.cursor().executemany(*args)

    commit = _typed(sqlite3.Connection.commit)


def database_error(path: Path, exc: Exception) -> Exception:
    """The clipdex error for a SQLite (or SQLAlchemy-wrapped) error on the catalog `path`."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig)
    code = getattr(orig, "sqlite_errorname", "") or ""
    if "readonly" in message or "read-only" in message:
        return IndexReadOnlyError(f"index {path.parent} is read-only ({message})")
    if "disk is full" in message or "database or disk is full" in message:
        return CatalogError(f"disk full while writing {path}; free space and run again")
    if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in message:
        return CatalogError(
            f"the catalog {path} is damaged ({message}); recover it with sqlite3's "
            ".recover, or delete the index folder and index the sources again"
        )
    if (
        isinstance(exc, (OperationalError, sqlite3.OperationalError))
        and "unable to open" in message
    ):
        return IndexReadOnlyError(f"cannot open {path} ({message})")
    return CatalogError(f"{path}: {message}")


def get_meta(conn: Connection, key: str) -> str | None:
    return conn.execute(select(Meta.value).where(Meta.key == key)).scalar()


def set_meta(conn: Connection, key: str, value: str) -> None:
    statement = sqlite_insert(Meta).values(key=key, value=value)
    conn.execute(statement.on_conflict_do_update(index_elements=["key"], set_={"value": value}))


def bump_seq(conn: Connection) -> int:
    seq = int(get_meta(conn, "change_seq") or 0) + 1
    set_meta(conn, "change_seq", str(seq))
    return seq
