"""Re-indexing embeds only what is new or changed, forgets what is gone, and heals FAISS."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import clipdex
from clipdex.models.spec import ModelSpec
from clipdex.vectors import INDEX_FILE, SIDECAR_FILE
from conftest import TINY, make_images, run_cli

TINY_SPEC = ModelSpec("clipdex-tiny")


def test_second_run_embeds_nothing(images, index_dir):
    with clipdex.open_index(index_dir) as index:
        first = index.add(images, model=TINY_SPEC)
        assert (first.added, first.failed) == (50, 0)
        calls = index.loaded_model.images_encoded
        again = index.add(images)
        assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, 50)
        assert index.loaded_model.images_encoded == calls == 50


def test_changed_new_and_deleted_files(images, index_dir, tmp_path):
    with clipdex.open_index(index_dir) as index:
        index.add(images, model=TINY_SPEC)
        changed = images / "img0001.jpg"
        make_images(tmp_path / "new", 1, seed=99)
        (tmp_path / "new" / "img0000.png").replace(changed.with_suffix(".png"))
        changed.unlink()  # img0001.jpg gone, img0001.png new
        rewritten = images / "img0002.jpg"
        before = next(h for h in index.search("x", k=50) if h.uri == str(rewritten))
        make_images(tmp_path / "other", 3, seed=5)
        (tmp_path / "other" / "img0002.jpg").replace(rewritten)
        os.utime(rewritten, ns=(1, 1))
        report = index.add(images)
        assert (report.added, report.updated, report.removed) == (1, 1, 1)
        assert report.unchanged == 48
        hits = index.search("x", k=100)
        uris = {hit.uri for hit in hits}
        assert str(changed) not in uris and str(changed.with_suffix(".png")) in uris
        after = next(h for h in hits if h.uri == str(rewritten))
        assert after.id == before.id  # updated in place under the same id
        assert abs(after.score - before.score) > 1e-6
        assert index.loaded_model.images_encoded == 52


def test_rebuild_re_embeds_everything(runner, images):
    run_cli(runner, "index", str(images), *TINY)
    out = run_cli(runner, "index", str(images), "--rebuild").stdout
    assert "50 updated" in out and "0 unchanged" in out


def test_faiss_file_deleted_or_corrupt_is_rebuilt_from_catalog(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    expected = json.loads(run_cli(runner, "search", "x", "-k", "7", "--format", "json").stdout)
    (index_dir / INDEX_FILE).unlink()
    assert (
        json.loads(run_cli(runner, "search", "x", "-k", "7", "--format", "json").stdout) == expected
    )
    (index_dir / INDEX_FILE).write_bytes(b"garbage")
    (index_dir / SIDECAR_FILE).write_text('{"type": "flat", "dim": 64, "seq": 1, "ntotal": 5}')
    assert (
        json.loads(run_cli(runner, "search", "x", "-k", "7", "--format", "json").stdout) == expected
    )
    status = run_cli(runner, "status").stdout
    assert "50 vectors" in status and "rebuilt" in status


def test_lagging_faiss_file_is_caught_up(runner, images, index_dir, tmp_path):
    """A FAISS file from before the last run (as after a kill) is caught up, not trusted."""
    run_cli(runner, "index", str(images), *TINY)
    old_index = (index_dir / INDEX_FILE).read_bytes()
    old_sidecar = (index_dir / SIDECAR_FILE).read_text()
    gone = images / "img0005.jpg"
    gone.unlink()
    make_images(images, 2, seed=42, prefix="late")
    run_cli(runner, "index", str(images))
    (index_dir / INDEX_FILE).write_bytes(old_index)
    (index_dir / SIDECAR_FILE).write_text(old_sidecar)
    with clipdex.open_index(index_dir) as index:
        hits = index.search("x", k=100)
        assert index.load_report.action == "caught-up"
        uris = {h.uri for h in hits}
        assert len(hits) == 51 and str(gone) not in uris
        assert {str(images / "late0000.png"), str(images / "late0001.jpg")} <= uris
        catalog_ids = np.concatenate([ids for ids, _ in index.catalog.iter_vectors()])
        assert sorted(index.vectors.ids().tolist()) == sorted(catalog_ids.tolist())


def test_two_sources_in_one_index(runner, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_images(a, 3)
    make_images(b, 4, seed=3)
    run_cli(runner, "index", str(a), str(b), *TINY)
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert sorted((s["uri"], s["images"]) for s in data["sources"]) == [(str(a), 3), (str(b), 4)]
    for path in b.iterdir():
        path.unlink()
    run_cli(runner, "index", str(b), "--allow-empty")
    rows = json.loads(run_cli(runner, "search", "x", "--format", "json").stdout)
    assert {row["uri"].rsplit("/", 2)[1] for row in rows} == {"a"}


def test_moved_copied_and_touched_files_reuse_their_vectors(images, index_dir, tmp_path):
    with clipdex.open_index(index_dir) as index:
        index.add(images, model=TINY_SPEC)
        embedder = index.loaded_model
        before = {hit.uri: hit.score for hit in index.search("query", k=100)}
        calls = embedder.images_encoded
        moved_dir = images / "moved"
        moved_dir.mkdir()
        moved = sorted(images.glob("img000*"))  # 10 files
        for path in moved:
            path.rename(moved_dir / path.name)
        copy = images / "copy of img0011.jpg"
        copy.write_bytes((images / "img0011.jpg").read_bytes())
        touched = images / "img0013.jpg"
        os.utime(touched, ns=(10**18, 10**18))
        report = index.add(images)
        assert embedder.images_encoded == calls  # not one image embedded
        assert (report.added, report.updated, report.removed) == (11, 1, 10)
        assert report.reused == 12 and report.embedded == 0
        after = {hit.uri: hit.score for hit in index.search("query", k=100)}
        assert len(after) == 51
        for path in moved:
            assert after[str(moved_dir / path.name)] == pytest.approx(before[str(path)], abs=1e-6)
            assert str(path) not in after
        assert after[str(copy)] == pytest.approx(before[str(images / "img0011.jpg")], abs=1e-6)


def test_verify_catches_a_change_that_kept_size_and_mtime(images, index_dir):
    with clipdex.open_index(index_dir) as index:
        index.add(images, model=TINY_SPEC)
        target = images / "img0001.jpg"
        stat = target.stat()
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF  # same size, different bytes near the end
        target.write_bytes(bytes(data))
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert index.add(images).updated == 0
        report = index.add(images, verify=True)
        assert report.updated == 1 and report.unchanged == 49


def test_a_deleted_subfolder_is_forgotten(runner, images, index_dir):
    import shutil

    run_cli(runner, "index", str(images), *TINY)
    shutil.rmtree(images / "nested")
    out = run_cli(runner, "index", str(images)).stdout
    assert "10 removed" in out and "40 unchanged" in out
    rows = json.loads(run_cli(runner, "search", "x", "-k", "100", "--format", "json").stdout)
    assert len(rows) == 40 and not any("nested" in row["uri"] for row in rows)
