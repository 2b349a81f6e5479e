"""Opening a catalog's schema: create a new one, upgrade an older one step by step, refuse
one a newer clipdex wrote (read-only catalogs are never upgraded, only checked)."""

from __future__ import annotations

import time

from clipdex.errors import CatalogError
from clipdex.storage.db import Database, get_meta, set_meta, write
from clipdex.storage.schema import MIGRATIONS, SCHEMA_VERSION, Base


def create_or_migrate(db: Database) -> None:
    """Create the tables of a new catalog, or bring an older one to SCHEMA_VERSION."""
    with write(db) as conn:
        fresh = not conn.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE name = 'meta'").first()
        version = None if fresh else get_meta(conn, "schema_version")
        if version is None:
            Base.metadata.create_all(conn)
            set_meta(conn, "schema_version", str(SCHEMA_VERSION))
            set_meta(conn, "change_seq", "0")
            set_meta(conn, "created_at", str(time.time()))
            return
        current = int(version)
        if current > SCHEMA_VERSION:
            raise CatalogError(
                f"{db.path} was written by a newer clipdex (schema {current}, "
                f"this one reads up to {SCHEMA_VERSION}); upgrade clipdex"
            )
        while current < SCHEMA_VERSION:
            MIGRATIONS[current](conn)
            current += 1
            set_meta(conn, "schema_version", str(current))


#: The oldest schema a read-only open still reads (4 added images.decode, 5 the photo_meta
#: and query_vectors tables, 6 images.precision: readers check `schema_version` before
#: using them).
OLDEST_READABLE = 3


def check_version(db: Database) -> int:
    """The schema of a catalog opened read-only; refuse one this clipdex cannot read."""
    with db.engine.connect() as conn:
        version = get_meta(conn, "schema_version")
    if version is None or not OLDEST_READABLE <= int(version) <= SCHEMA_VERSION:
        raise CatalogError(
            f"{db.path} has schema {version}, expected {SCHEMA_VERSION}; "
            "open it once with write access to migrate it"
        )
    return int(version)
