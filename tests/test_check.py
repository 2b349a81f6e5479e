"""`clipdex check` finds disagreement between FAISS and the catalog; --repair fixes it."""

from __future__ import annotations

import sqlite3

import faiss
import numpy as np

from clipdex.vectors import INDEX_FILE
from conftest import TINY, run_cli


def test_healthy_index_passes(runner, images):
    run_cli(runner, "index", str(images), *TINY)
    out = run_cli(runner, "check").stdout
    assert out.strip() == "ok: 50 images, 50 vectors, FAISS in agreement"


def test_deleted_or_corrupt_faiss_file_is_reported_and_rebuilt(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    expected = run_cli(runner, "search", "x", "-k", "50", "--format", "csv").stdout
    for damage in ("delete", "garbage"):
        path = index_dir / INDEX_FILE
        if damage == "delete":
            path.unlink()
        else:
            path.write_bytes(b"\x00" * 100)
        result = run_cli(runner, "check", expect=1)
        assert "problem: vectors.faiss" in result.stdout and "--repair" in result.stderr
        out = run_cli(runner, "check", "--repair").stdout
        assert "rebuilt vectors.faiss from 50 stored vectors" in out
        assert run_cli(runner, "check").stdout.startswith("ok: 50 images")
        assert run_cli(runner, "search", "x", "-k", "50", "--format", "csv").stdout == expected


def test_faiss_file_with_a_deleted_id_and_a_wrong_vector(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    path = index_dir / INDEX_FILE
    index = faiss.read_index(str(path))
    ids = faiss.vector_to_array(index.id_map)
    index.remove_ids(np.array([ids[0]], dtype=np.int64))
    index.add_with_ids(np.eye(1, 64, dtype=np.float32), np.array([999_999], dtype=np.int64))
    faiss.write_index(index, str(path))
    text = run_cli(runner, "check", expect=1).stdout
    assert "1 stored vectors are not searchable" in text
    assert "1 ids in the index are not in the catalog" in text
    run_cli(runner, "check", "--repair")
    assert run_cli(runner, "check").stdout.startswith("ok")


def test_rows_without_vectors_and_orphan_vectors(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    db.execute("PRAGMA foreign_keys = OFF")
    db.execute("DELETE FROM vectors WHERE image_id = (SELECT min(id) FROM images)")
    db.execute("INSERT INTO vectors VALUES (123456, ?)", (np.ones(64, "<f4").tobytes(),))
    db.commit()
    db.close()
    text = run_cli(runner, "check", expect=1).stdout
    assert "1 indexed images have no stored vector" in text
    assert "1 stored vectors belong to no indexed image" in text
    out = run_cli(runner, "check", "--repair").stdout
    assert "1 images will be embedded by the next index run" in out
    out = run_cli(runner, "index", str(images)).stdout
    assert "1 updated" in out and "1 embedded" in out
    assert run_cli(runner, "check").stdout.startswith("ok: 50 images, 50 vectors")
