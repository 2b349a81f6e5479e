"""SQLite plumbing for the catalog: the engine and its pragmas, write transactions that
raise typed errors, and the meta table's key-value helpers."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from ..errors import CatalogError, IndexReadOnlyError
from .schema import Meta

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog

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
    if read_only:
        url = f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true"
    else:
        url = f"sqlite:///{path}"
    engine = create_engine(url)

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


def database_error(path: Path, exc: DatabaseError) -> Exception:
    message = str(exc.orig) if getattr(exc, "orig", None) else str(exc)
    if "readonly" in message or "read-only" in message:
        return IndexReadOnlyError(f"index {path.parent} is read-only ({message})")
    if "disk is full" in message or "database or disk is full" in message:
        return CatalogError(f"disk full while writing {path}; free space and run again")
    if isinstance(exc, OperationalError) and "unable to open" in message:
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
