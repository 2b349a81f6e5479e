"""Seams of the restructuring in storage and api: a catalog composed of parts, one
transaction helper for every write, the reader's public refresh(), public names only."""

from __future__ import annotations

import ast
import inspect
import threading
from pathlib import Path

import pytest

import clipdex
from clipdex.api import Index
from clipdex.errors import CatalogError, IndexReadOnlyError
from clipdex.models.spec import ModelSpec
from clipdex.storage import db
from clipdex.storage.catalog import Catalog, ImageRecord
from conftest import make_images

TINY_SPEC = ModelSpec("clipdex-tiny")
PACKAGE = Path(clipdex.__file__).parent
TESTS = Path(__file__).parent


def _record(uri: str, vector=None) -> ImageRecord:
    import numpy as np

    if vector is None:
        vector = np.ones(4, dtype="float32") / 2
    return ImageRecord(uri=uri, size=1, mtime_ns=1, vector=vector)


# -- the catalog is composed, not mixed in --------------------------------------------------


def test_catalog_is_composed_of_scan_queries_and_source_links(tmp_path):
    assert Catalog.__mro__ == (Catalog, object)
    from clipdex.types import ModelIdentity

    catalog = Catalog(tmp_path)
    try:
        catalog.claim_model(ModelIdentity("m", "", 4))
        source = catalog.source_id(str(tmp_path / "photos"), "folder")
        folder = str(tmp_path / "photos")
        catalog.write_batch(source, [_record(f"{folder}/a.png"), _record(f"{folder}/b.png")])
        known = catalog.scan.known_in_folder(folder, source)
        assert sorted(known) == [f"{folder}/a.png", f"{folder}/b.png"]
        assert catalog.links.unlink(source, [known[f"{folder}/a.png"].id]) == (1, 0)
        assert catalog.counts() == {"ok": 1, "failed": 0, "vectors": 1}
        assert catalog.links.forget(source) == (1, 0)
        assert catalog.sources() == []
    finally:
        catalog.close()


# -- one transaction helper ---------------------------------------------------------------


def test_only_storage_db_begins_commits_or_rolls_back():
    """Every write goes through db.write / db.raw_write (reads through db.raw_read)."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "storage" / "db.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(PACKAGE)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("begin", "commit", "rollback", "raw_connection"):
                    wrong.append(f"{where} calls .{node.func.attr}()")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))
            ):
                wrong.append(f"{where} runs {node.value.split()[0]}")
    assert not wrong, "transactions outside storage/db.py:\n" + "\n".join(wrong)


def _fill_up(run) -> None:
    """Cap the file at its current size, then write more than fits: SQLite's disk full."""
    run("PRAGMA max_page_count = 1")
    run("INSERT INTO meta (key, value) VALUES ('big', ?)", ("x" * 1_000_000,))


def _body_sqlalchemy(catalog):
    with db.write(catalog) as conn:
        conn.exec_driver_sql("INSERT INTO meta (key, value) VALUES ('probe', '1')")
        _fill_up(lambda sql, *args: conn.exec_driver_sql(sql, *args))


def _body_raw(catalog):
    with db.raw_write(catalog) as scope:
        scope.cursor.execute("INSERT INTO meta (key, value) VALUES ('probe', '1')")
        _fill_up(scope.cursor.execute)


@pytest.mark.parametrize("body", [_body_sqlalchemy, _body_raw], ids=["write", "raw_write"])
def test_write_and_raw_write_map_errors_alike_and_roll_back(tmp_path, body):
    catalog = Catalog(tmp_path)
    try:
        with pytest.raises(CatalogError) as failed:
            body(catalog)
        assert str(failed.value) == (
            f"disk full while writing {tmp_path / 'catalog.sqlite'}; free space and run again"
        )
        with catalog.engine.connect() as conn:
            assert db.get_meta(conn, "probe") is None  # rolled back
    finally:
        catalog.close()
    reader = Catalog(tmp_path, read_only=True)
    try:
        with pytest.raises(IndexReadOnlyError, match=f"index folder {tmp_path} is read-only"):
            body(reader)
    finally:
        reader.close()


def test_raw_write_discard_keeps_nothing(tmp_path):
    catalog = Catalog(tmp_path)
    try:
        with db.raw_write(catalog) as scope:
            scope.cursor.execute("INSERT INTO meta (key, value) VALUES ('probe', '1')")
            scope.discard()
        with db.raw_write(catalog, cache_kib=1024) as scope:
            scope.cursor.execute("INSERT INTO meta (key, value) VALUES ('kept', '1')")
        with catalog.engine.connect() as conn:
            assert (db.get_meta(conn, "probe"), db.get_meta(conn, "kept")) == (None, "1")
    finally:
        catalog.close()


# -- the reader's refresh ------------------------------------------------------------------


@pytest.mark.slow
def test_refresh_follows_another_writer_by_change_sequence(tmp_path, index_dir):
    make_images(tmp_path / "a", 3)
    make_images(tmp_path / "b", 2, seed=4)
    with clipdex.open_index(index_dir) as writer, clipdex.open_index(index_dir) as reader:
        writer.add(tmp_path / "a", model=TINY_SPEC)
        assert reader.refresh() is True  # opened
        assert reader.refresh() is False
        assert reader.vectors.ntotal == 3
        writer.add(tmp_path / "b")
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda: results.append(reader.refresh())) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(results) == [False, False, False, True]  # caught up once, under the lock
        assert reader.vectors.ntotal == 5
        assert reader.load_report is not None
        assert reader.refresh() is False


# -- public names --------------------------------------------------------------------------


def test_loaded_model_is_public_and_can_be_shared(tmp_path):
    make_images(tmp_path / "a", 3)
    with clipdex.open_index(tmp_path / "one") as first:
        assert first.loaded_model is None  # nothing loads a model before it is needed
        first.add(tmp_path / "a", model=TINY_SPEC)
        model = first.loaded_model
        assert model is not None and model.images_encoded == 3
    with clipdex.open_index(tmp_path / "two", loaded_model=model) as second:
        second.add(tmp_path / "a", model=TINY_SPEC)
        assert second.loaded_model is model and model.images_encoded == 6


#: Private names still reached across objects, owned by other parts of the restructuring
#: (vectors: flat.py's loader; training: the checkpoint writer); drop each when it lands.
ALLOWED = {
    ("src/clipdex/models/device.py", "_is_mkldnn_bf16_supported"),  # torch's own
    ("src/clipdex/indexer/pipeline.py", "_exit"),  # os._exit: public, despite its name
    # open_clip's own module-level SimpleTokenizer (its vocabulary is already read)
    ("src/clipdex/models/text_encoder.py", "_tokenizer"),
}


def test_no_private_names_reached_across_objects():
    root = TESTS.parent
    files = sorted(PACKAGE.rglob("*.py")) + sorted(TESTS.glob("*.py"))
    files += sorted((root / "scripts").glob("*.py"))
    wrong = []
    for path in files:
        rel = str(path.relative_to(root))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Attribute) and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            ):
                names = [node.attr]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("clipdex"):
                names = [alias.name for alias in node.names]
            for name in names:
                private = name.startswith("_") and not name.startswith("__")
                if private and (rel, name) not in ALLOWED:
                    wrong.append(f"{rel}:{node.lineno} {name}")
    assert not wrong, "private names used from outside their object:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "name",
    [
        "open_index",
        "__init__",
        "add",
        "forget",
        "search",
        "classify",
        "nearest_per_label",
        "status",
        "check",
        "image_bytes",
        "refresh",
    ],
)
def test_public_api_documents_its_arguments(name):
    method = clipdex.open_index if name == "open_index" else getattr(Index, name, None)
    assert method is not None, f"Index.{name} is missing"
    doc = inspect.getdoc(method) or ""
    assert "Args:" in doc or "Returns:" in doc
    for arg in inspect.signature(method).parameters:
        if arg != "self":
            assert f"{arg}:" in doc, f"{name} does not document {arg}"
