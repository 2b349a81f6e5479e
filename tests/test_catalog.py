"""The catalog's schema version and migrations."""

from __future__ import annotations

import sqlite3

import pytest

from clipdex.errors import CatalogError
from clipdex.storage.catalog import Catalog
from clipdex.storage.schema import SCHEMA_VERSION
from conftest import TINY, run_cli


def test_a_version_1_catalog_is_migrated_and_keeps_its_images(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    db.executescript(
        "DROP TABLE assignments; DROP TABLE run_labels; DROP TABLE classify_runs;"
        "DROP INDEX ix_images_fingerprint; ALTER TABLE images DROP COLUMN fingerprint;"
        "DROP INDEX ix_images_folder; ALTER TABLE images DROP COLUMN folder;"
        "ALTER TABLE sources DROP COLUMN options; ALTER TABLE images DROP COLUMN decode;"
        "UPDATE meta SET value = '1' WHERE key = 'schema_version';"
    )
    db.close()
    out = run_cli(runner, "index", str(images)).stdout
    assert "50 unchanged" in out
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert int(version) == SCHEMA_VERSION == 6 and {"assignments", "image_sources"} <= tables
    assert "saved as run 1" in run_cli(runner, "classify", "--labels", "a,b").stderr


def test_a_catalog_from_a_newer_clipdex_is_refused(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="newer clipdex"):
        Catalog(index_dir)
    result = run_cli(runner, "index", str(images), expect=1)
    assert "newer clipdex" in result.stderr


def test_a_file_that_is_not_a_catalog(runner, index_dir):
    index_dir.mkdir()
    (index_dir / "catalog.sqlite").write_text("not a database at all, just text" * 10)
    result = run_cli(runner, "status", expect=1)
    assert "catalog.sqlite" in result.stderr and "Traceback" not in result.output
