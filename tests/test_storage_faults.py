"""Storage faults: racing readers, read-only folders, damaged catalogs and FAISS files."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from sqlalchemy import event

import clipdex
from clipdex.errors import CatalogError
from clipdex.models.spec import ModelSpec
from clipdex.search.query import search_vectors
from clipdex.storage.catalog import Catalog, ImageRecord
from clipdex.storage.lock import WriterLock
from clipdex.vectors import INDEX_FILE, SIDECAR_FILE, open_store
from conftest import TINY, make_images, run_cli

CATALOG = "catalog.sqlite"


def can_mount() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs a private mount namespace")


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def csv_ids(text: str) -> list[int]:
    return [int(line.split(",")[1]) for line in text.strip().splitlines()[1:]]


def search_ids(runner, *args: str) -> list[int]:
    return csv_ids(run_cli(runner, "search", "x", "-k", "100", "--format", "csv", *args).stdout)


def rewrite(catalog: Catalog, uri: str, seed: int) -> None:
    """Commit a new vector for an indexed image, as a re-embedding would."""
    vector = np.random.default_rng(seed).normal(size=64).astype(np.float32)
    record = ImageRecord(uri=uri, size=1, mtime_ns=seed, vector=vector / np.linalg.norm(vector))
    source = catalog.sources()[0][0]
    catalog.write_batch(catalog.find_source_id(source), [record])


# -- 8: a reader's catch-up reads one snapshot ---------------------------------------------


def test_catch_up_is_one_snapshot_when_a_batch_commits_in_between(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    writer = Catalog(index_dir)
    uris = sorted(writer.uris(list(range(1, 51))).values())
    rewrite(writer, uris[0], seed=1)  # the saved FAISS file is now one change behind
    reader = Catalog(index_dir)
    reader.engine.dispose()
    fired = []

    def trace(sql: str) -> None:
        # A batch commits while the reader is between its two reads.
        if "vectors" in sql and "image_id" in sql and not fired:
            fired.append(sql)
            rewrite(writer, uris[1], seed=2)

    @event.listens_for(reader.engine, "connect")
    def _trace(dbapi_connection, _record) -> None:
        dbapi_connection.set_trace_callback(trace)

    vectors, report = open_store(index_dir, reader)
    assert fired and report.action == "caught-up"
    ids = vectors.ids()
    assert len(ids) == len(set(ids.tolist())) == 50
    hits = search_vectors(reader, vectors, np.ones(64, np.float32) / 8, k=100)
    assert sorted(hit.id for hit in hits) == sorted(ids.tolist())
    reader.close()
    writer.close()


def test_search_never_returns_an_id_twice(images, index_dir):
    with clipdex.open_index(index_dir) as index:
        index.add(images, model=ModelSpec("clipdex-tiny"))
        vectors, catalog = index.vectors, index.catalog
        first = next(catalog.iter_vectors(chunk=3))
        vectors.add(*first)
        vectors.add(*first)
        hits = search_vectors(catalog, vectors, first[1][0], k=10)
    assert len(hits) == len({hit.id for hit in hits})
    assert hits[0].id == first[0][0] and hits[0].score == pytest.approx(1, abs=1e-5)


# -- 12: read-only folders read the write-ahead log ------------------------------------------


@pytest.mark.slow
@needs_mount
def test_read_only_folder_reads_the_write_ahead_log(runner, images, index_dir, tmp_path):
    run_cli(runner, "index", str(images), *TINY)
    gone = [str(p) for p in sorted(images.glob("img001*"))]
    writer = Catalog(index_dir)
    ids = {uri: i for i, uri in writer.uris(list(range(1, 51))).items()}
    deleted = [ids[uri] for uri in gone]
    writer.delete_images(deleted)  # committed to the WAL, kept open: not checkpointed
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_catalog = Catalog(fresh)  # a schema that lives only in the WAL
    copies = {
        "wal": tmp_path / "w?a#l %3F",
        "no-shm": tmp_path / "no-shm",
        "fresh": tmp_path / "fr",
    }
    for name, folder in copies.items():
        source = fresh if name == "fresh" else index_dir
        shutil.copytree(source, folder, ignore=shutil.ignore_patterns("lock"))
        assert (folder / f"{CATALOG}-wal").stat().st_size > 0
        if name == "no-shm":
            (folder / f"{CATALOG}-shm").unlink()
    writer.close()
    fresh_catalog.close()
    cli = f"{sys.executable} -m clipdex"
    mounts = " && ".join(f"mount --bind -o ro '{f}' '{f}'" for f in copies.values())
    script = (
        f"{mounts} && "
        f"{cli} search x -k 100 --format csv --index '{copies['wal']}'; echo exit=$?; "
        f"{cli} status --format json --index '{copies['fresh']}'; echo exit=$?; "
        f"{cli} search x -k 100 --index '{copies['no-shm']}'; echo exit=$?"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert [line for line in out.splitlines() if line.startswith("exit=")] == [
        "exit=0",
        "exit=0",
        "exit=1",
    ], (out, done.stderr)
    found = {line.split(",")[2] for line in out.splitlines()[1:] if line.count(",") >= 4}
    assert len(found) == 50 - len(gone) and not found & set(gone)
    assert '"images": 0' in out
    assert "write-ahead log" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# -- 13: a garbled or duplicated vectors.faiss is rebuilt ------------------------------------


def _rewrite_faiss(index_dir: Path, change) -> None:
    path = index_dir / INDEX_FILE
    index = faiss.read_index(str(path))
    change(index)
    faiss.write_index(index, str(path))
    sidecar = json.loads((index_dir / SIDECAR_FILE).read_text())
    sidecar["ntotal"] = int(index.ntotal)
    (index_dir / SIDECAR_FILE).write_text(json.dumps(sidecar))


def test_faiss_file_holding_ids_twice(runner, tmp_path, index_dir):
    folder = tmp_path / "three"
    make_images(folder, 3)
    run_cli(runner, "index", str(folder), *TINY)
    expected = search_ids(runner)

    def duplicate(index) -> None:
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        index.add_with_ids(index.index.reconstruct_n(0, index.ntotal), ids)

    _rewrite_faiss(index_dir, duplicate)
    assert search_ids(runner) == expected
    result = run_cli(runner, "check", expect=1)
    assert "duplicate" in result.stdout and "--repair" in result.stderr
    run_cli(runner, "check", "--repair")
    assert run_cli(runner, "check").stdout.startswith("ok: 3 images")


def test_faiss_file_with_garbled_vectors(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    expected = run_cli(runner, "search", "x", "-k", "5", "--format", "csv").stdout

    def garble(index) -> None:
        flat = faiss.downcast_index(index.index)
        matrix = faiss.rev_swig_ptr(flat.get_xb(), index.ntotal * index.d)
        matrix[::7] = 3.0e18

    _rewrite_faiss(index_dir, garble)
    assert run_cli(runner, "search", "x", "-k", "5", "--format", "csv").stdout == expected
    with clipdex.open_index(index_dir) as index:  # `status` alone reads only the sidecar
        assert index.vectors.ntotal == 50 and index.status().index_load.action == "rebuilt"
    result = run_cli(runner, "check", expect=1)
    assert "problem: vectors.faiss" in result.stdout
    run_cli(runner, "check", "--repair")
    assert run_cli(runner, "check").stdout.startswith("ok: 50 images")


# -- 17: index paths with URL characters ------------------------------------------------------


@pytest.mark.parametrize("name", ["my?index", "a#b", "sp ace%20x"])
def test_index_path_with_url_characters(runner, tmp_path, name):
    folder = tmp_path / "p"
    make_images(folder, 3)
    parent = tmp_path / "indexes"
    parent.mkdir()
    index = parent / name
    run_cli(runner, "index", str(folder), "--index", str(index), *TINY)
    assert (index / CATALOG).is_file()
    assert sorted(p.name for p in parent.iterdir()) == [name]
    assert len(search_ids(runner, "--index", str(index))) == 3
    assert run_cli(runner, "check", "--index", str(index)).stdout.startswith("ok: 3 images")


# -- 20: a sidecar of the wrong shape ----------------------------------------------------------


@pytest.mark.parametrize(
    "sidecar",
    ["[1, 2]", '"flat"', "null", '{"seq": "a"}', '{"type": 3, "dim": 64, "seq": 1, "ntotal": 3}'],
)
@pytest.mark.slow
def test_sidecar_of_the_wrong_shape(runner, tmp_path, index_dir, sidecar):
    folder = tmp_path / "p"
    make_images(folder, 3)
    run_cli(runner, "index", str(folder), *TINY)
    (index_dir / SIDECAR_FILE).write_text(sidecar)
    assert len(search_ids(runner)) == 3
    assert "problem: vectors.faiss" in run_cli(runner, "check", expect=1).stdout
    run_cli(runner, "check", "--repair")
    assert run_cli(runner, "check").stdout.startswith("ok: 3 images")
    make_images(folder, 1, seed=9, prefix="more")
    (index_dir / SIDECAR_FILE).write_text(sidecar)
    assert "1 added" in run_cli(runner, "index", str(folder)).stdout
    assert len(search_ids(runner)) == 4


# -- 21/22: a damaged or read-only catalog -----------------------------------------------------


def _damage_interior_page(index_dir: Path, table: str) -> None:
    db = sqlite3.connect(index_dir / CATALOG)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    db.close()
    with open(index_dir / CATALOG, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        assert handle.read(1) == b"\x05"  # an interior table b-tree page
        handle.seek((root - 1) * page_size)
        handle.write(b"\xff" * page_size)


@pytest.mark.parametrize("table", ["vectors", "images"])
def test_damaged_catalog_is_one_clear_line(runner, images, index_dir, table):
    run_cli(runner, "index", str(images), *TINY)
    _damage_interior_page(index_dir, table)
    for command in (["status"], ["check"], ["check", "--repair"]):
        result = run_cli(runner, *command, expect=None)
        one_line_error(result, "is damaged", ".recover", str(index_dir / CATALOG))
    for command in (["index", str(images)], ["search", "x"]):
        # These may not read the damaged page: then they work, else they say so.
        result = run_cli(runner, *command, expect=None)
        assert result.exit_code == 0 or one_line_error(result, "is damaged")
    catalog = Catalog(index_dir)
    with pytest.raises(CatalogError, match="is damaged"):  # raw sqlite3 reads too
        list(catalog.iter_vectors()) if table == "vectors" else catalog.uris(list(range(50)))
    catalog.close()


@pytest.mark.slow
@needs_mount
def test_read_only_catalog_file_in_a_writable_folder(runner, images, index_dir, tmp_path):
    run_cli(runner, "index", str(images), *TINY)
    more = tmp_path / "more"
    make_images(more, 2, seed=7)
    catalog = index_dir / CATALOG
    cli = f"{sys.executable} -m clipdex"
    script = (
        f"mount --bind -o ro '{catalog}' '{catalog}' && "
        f"{cli} index '{more}' --index '{index_dir}'; echo exit=$?; "
        f"{cli} search x -k 100 --format paths --index '{index_dir}' | wc -l"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "read-only" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "exit=1" in done.stdout and done.stdout.split()[-1] == "50"
    assert json.loads(run_cli(runner, "status", "--format", "json").stdout)["images"] == 50


# -- 27: check and search while an index is first built ---------------------------------------


def test_check_while_an_index_run_holds_the_lock(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    (index_dir / INDEX_FILE).unlink()  # a first run has not saved FAISS yet
    (index_dir / SIDECAR_FILE).unlink()
    lock = WriterLock(index_dir)
    lock.acquire()
    try:
        result = run_cli(runner, "check")
        assert "--repair" not in result.output and "problem" not in result.output
        assert "in progress" in result.stdout
    finally:
        lock.release()
    result = run_cli(runner, "check", expect=1)
    assert "no saved index" in result.stdout and "--repair" in result.stderr


def test_check_after_a_repair_that_queued_images(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    db = sqlite3.connect(index_dir / CATALOG)
    db.execute("DELETE FROM vectors WHERE image_id IN (SELECT id FROM images LIMIT 2)")
    db.commit()
    db.close()
    assert "--repair" in run_cli(runner, "check", expect=1).stderr
    assert "2 images will be embedded" in run_cli(runner, "check", "--repair").stdout
    result = run_cli(runner, "check", expect=1)
    assert "--repair" not in result.output
    assert "2 images wait to be embedded" in result.stdout and "clipdex index" in result.stderr
    run_cli(runner, "index", str(images))
    assert run_cli(runner, "check").stdout.startswith("ok: 50 images, 50 vectors")


def test_empty_catalog_beside_a_faiss_file(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    (index_dir / CATALOG).write_bytes(b"")
    result = run_cli(runner, "check", expect=1)
    assert "problem:" in result.stdout and "50" in result.stdout
    assert "ok:" not in result.stdout


def test_search_before_any_vector_is_stored(runner, index_dir, tmp_path):
    index_dir.mkdir()
    catalog = Catalog(index_dir)
    catalog.close()
    one_line_error(run_cli(runner, "search", "x", expect=1), "the index is empty")
    from clipdex.models.open_clip import Embedder

    catalog = Catalog(index_dir)
    catalog.claim_model(Embedder(ModelSpec("clipdex-tiny"), "cpu").identity)
    catalog.close()
    one_line_error(run_cli(runner, "search", "x", expect=1), "the index is empty")
