"""SQLite plumbing for the catalog: the engine and its pragmas, connections that raise
typed errors, the write transactions (`write`, `raw_write`: the only two ways to write),
raw reads (`raw_read`), and the meta table's key-value helpers. No other module begins,
commits or rolls back a transaction."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from sqlalchemy import create_engine, event, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.pool import QueuePool

from clipdex.errors import CatalogError, ClipdexError, IndexReadOnlyError
from clipdex.storage.schema import Meta

#: SQLite page cache per connection (negative: KiB), above the 2 MB default for big scans.
CACHE_KIB = -65536


class Database(Protocol):
    """What a write path needs of a catalog: its engine, its file (for error messages) and
    whether it was opened read-only (Catalog has them)."""

    engine: Engine
    path: Path
    read_only: bool


@contextmanager
def write(db: Database) -> Iterator[Connection]:
    """One write transaction through SQLAlchemy: commit on success, rollback on error.

    Every SQLAlchemy write path of the catalog goes through here (plain SQL through
    `exec_driver_sql` too); SQLite's failures (read-only file, full disk, damage) come out
    as the errors `database_error` gives.
    """
    require_writable(db)
    try:
        with db.engine.begin() as conn:
            yield conn
    except (DatabaseError, sqlite3.Error) as exc:
        raise database_error(db.path, exc) from exc


@contextmanager
def raw_write(db: Database, *, cache_kib: int | None = None) -> Iterator[RawWrite]:
    """One write transaction on a raw sqlite3 connection, for bulk executemany paths.

    Takes the write lock at once (BEGIN IMMEDIATE): what the body reads cannot change
    before it commits. Commits when the body ends, unless it called `discard()`; rolls back
    on any error. `cache_kib` (KiB) widens the page cache for this transaction only.
    """
    require_writable(db)
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if cache_kib is not None:
            cursor.execute(f"PRAGMA cache_size = {-cache_kib}")
        cursor.execute("BEGIN IMMEDIATE")
        scope = RawWrite(cursor)
        yield scope
        if scope.discarded:
            raw.rollback()
        else:
            raw.commit()
    except sqlite3.Error as exc:
        _rollback(raw)
        raise database_error(db.path, exc) from exc
    except BaseException:
        _rollback(raw)
        raise
    finally:
        if cache_kib is not None:
            with contextlib.suppress(sqlite3.Error, ClipdexError):
                raw.cursor().execute(f"PRAGMA cache_size = {CACHE_KIB}")
        raw.close()


@dataclass
class RawWrite:
    """The body's view of a `raw_write` transaction."""

    cursor: sqlite3.Cursor
    discarded: bool = False

    def discard(self) -> None:
        """Roll back instead of committing when the body ends (nothing worth keeping)."""
        self.discarded = True


@contextmanager
def raw_read(engine: Engine, *, snapshot: bool = False) -> Iterator[sqlite3.Cursor]:
    """A cursor on a raw sqlite3 connection, for bulk reads (row objects would cost more
    than the work); with `snapshot`, inside one read transaction, so that every read
    sees the same commit. Never writes: nothing is committed."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if snapshot:
            cursor.execute("BEGIN")
        yield cursor
    finally:
        if snapshot:
            raw.rollback()
        raw.close()


def require_writable(db: Database) -> None:
    if db.read_only:
        raise IndexReadOnlyError(f"index folder {db.path.parent} is read-only")


def _rollback(raw) -> None:
    with contextlib.suppress(sqlite3.Error, ClipdexError):
        raw.rollback()


def _mapped(exc: Exception) -> bool:
    """Operational and corruption errors become clipdex errors; integrity and programming
    errors (bugs, or handled by callers) stay as they are."""
    orig = getattr(exc, "orig", None) or exc
    return type(orig) in (sqlite3.DatabaseError, sqlite3.OperationalError)


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
            if not _mapped(exc):
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
