"""Which source an image belongs to: overlapping sources, renamed roots, lists, forget.

One uri is one row, linked to every source that listed it; a source's scan only drops
its own link, and the row (and its vector) goes when no source links it any more.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

import clipdex
from clipdex.errors import CatalogError
from clipdex.models.spec import ModelSpec
from conftest import TINY, make_images, run_cli

TINY_SPEC = ModelSpec("clipdex-tiny")


def _uris(runner) -> list[str]:
    rows = json.loads(run_cli(runner, "search", "x", "-k", "500", "--format", "json").stdout)
    return sorted(row["uri"] for row in rows)


def _sources(runner) -> dict[str, dict]:
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    return {source["uri"]: source for source in data["sources"]}


# -- item 4: a renamed folder --------------------------------------------------------------


def _renamed(runner, tmp_path):
    old = tmp_path / "photos"
    make_images(old, 6)
    run_cli(runner, "index", str(old), *TINY)
    new = tmp_path / "photos-2024"
    old.rename(new)
    out = run_cli(runner, "index", str(new)).stdout
    assert "6 added" in out and "6 reused" in out and "0 embedded" in out
    return old, new


def test_a_renamed_folder_is_missing_and_can_be_forgotten(runner, tmp_path, index_dir):
    old, new = _renamed(runner, tmp_path)
    result = run_cli(runner, "index", str(old), expect=1)
    assert "no such file or folder" in result.stderr and "6 images" in result.stderr
    assert "Traceback" not in result.output
    assert len(_uris(runner)) == 12  # not removed by a failed run

    sources = _sources(runner)
    assert sources[str(old)]["missing"] is True and sources[str(new)]["missing"] is False
    status = run_cli(runner, "status").stdout
    old_line = next(line for line in status.splitlines() if line.strip().startswith(f"{old} "))
    assert "missing" in old_line
    assert "missing" not in next(line for line in status.splitlines() if str(new) in line)

    out = run_cli(runner, "forget", str(old)).stdout
    assert "6 removed, 0 kept" in out
    assert _uris(runner) == sorted(str(p) for p in new.iterdir())
    assert list(_sources(runner)) == [str(new)]
    assert "ok:" in run_cli(runner, "check").stdout
    result = run_cli(runner, "forget", str(old), expect=1)
    assert "not a source" in result.stderr and "Traceback" not in result.output


def test_allow_empty_on_a_missing_root_removes_its_rows(runner, tmp_path):
    old, new = _renamed(runner, tmp_path)
    out = run_cli(runner, "index", str(old), "--allow-empty").stdout
    assert "6 removed" in out
    assert _uris(runner) == sorted(str(p) for p in new.iterdir())
    assert list(_sources(runner)) == [str(new)]
    # A path the index never knew is still an error, with or without --allow-empty.
    result = run_cli(runner, "index", str(tmp_path / "never"), "--allow-empty", expect=1)
    assert "no such file or folder" in result.stderr


def test_forget_keeps_images_another_source_holds(tmp_path, index_dir):
    parent = tmp_path / "lib"
    make_images(parent, 3)
    make_images(parent / "sub", 4, seed=2)
    with clipdex.open_index(index_dir) as index:
        index.add(parent / "sub", model=TINY_SPEC)
        first = index.add(parent)
        assert (first.added, first.unchanged) == (3, 4)
        report = index.forget(str(parent / "sub"))
        assert (report.removed, report.kept) == (0, 4)
        assert len(index.search("x", k=50)) == 7
        report = index.forget(str(parent))
        assert (report.removed, report.kept) == (7, 0)
        with pytest.raises(CatalogError, match="empty"):
            index.search("x", k=50)


# -- item 5: a parent scan never removes another source's rows -----------------------------


def test_a_parent_scan_leaves_other_sources_in_skipped_folders(runner, tmp_path):
    lib, ext = tmp_path / "lib", tmp_path / "ext"
    make_images(lib, 4)
    make_images(lib / ".private", 3, seed=1)
    make_images(lib / "@eaDir", 2, seed=2)
    make_images(ext, 3, seed=3)
    (lib / "phone").symlink_to(ext, target_is_directory=True)
    for sub in (".private", "@eaDir", "phone"):
        run_cli(runner, "index", str(lib / sub), *TINY)
    everything = _uris(runner)
    assert len(everything) == 8
    out = run_cli(runner, "index", str(lib)).stdout
    assert "4 added" in out and "0 removed" in out
    for _ in range(2):
        out = run_cli(runner, "index", str(lib)).stdout
        assert "0 removed" in out and "4 unchanged" in out
    assert _uris(runner) == sorted(everything + [str(p) for p in lib.glob("img*")])
    counts = {uri: s["images"] for uri, s in _sources(runner).items()}
    assert counts == {
        str(lib / ".private"): 3,
        str(lib / "@eaDir"): 2,
        str(lib / "phone"): 3,
        str(lib): 4,
    }


def test_a_parent_indexed_first_then_a_child_keeps_both(runner, tmp_path):
    lib = tmp_path / "lib"
    make_images(lib, 2)
    make_images(lib / "sub", 3, seed=1)
    run_cli(runner, "index", str(lib), *TINY)
    out = run_cli(runner, "index", str(lib / "sub")).stdout
    assert "0 added" in out and "3 unchanged" in out
    (lib / "sub" / "img0000.png").unlink()
    out = run_cli(runner, "index", str(lib)).stdout  # unlinks it from lib; sub still has it
    assert "0 removed" in out and "1 kept" in out
    out = run_cli(runner, "index", str(lib / "sub")).stdout
    assert "1 removed" in out and "2 unchanged" in out
    assert len(_uris(runner)) == 4


# -- item 6: a list shares rows with a folder ----------------------------------------------


@pytest.mark.slow
def test_a_list_shares_a_folders_rows_and_shortening_it_keeps_them(runner, tmp_path):
    photos, loose = tmp_path / "photos", tmp_path / "loose"
    paths = make_images(photos, 8)
    extra = make_images(loose, 2, seed=7)
    run_cli(runner, "index", str(photos), *TINY)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(str(p) for p in paths + extra) + "\n")
    out = run_cli(runner, "index", "--from-list", str(listing)).stdout
    assert "2 added" in out and "8 unchanged" in out
    listing.write_text("\n".join(str(p) for p in paths[:5]) + "\n")
    out = run_cli(runner, "index", "--from-list", str(listing)).stdout
    assert "2 removed" in out and "3 kept" in out and "5 unchanged" in out
    assert _uris(runner) == sorted(str(p) for p in paths)
    counts = {uri: s["images"] for uri, s in _sources(runner).items()}
    assert counts == {str(photos): 8, f"list:{listing}": 5}
    out = run_cli(runner, "index", str(photos)).stdout
    assert "0 removed" in out and "8 unchanged" in out
    out = run_cli(runner, "forget", str(photos)).stdout
    assert "3 removed, 5 kept" in out
    assert _uris(runner) == sorted(str(p) for p in paths[:5])


def test_migration_links_every_image_to_its_source(runner, tmp_path, index_dir):
    """A version-2 catalog (one source per image) gets its links from images.source_id."""
    photos = tmp_path / "photos"
    make_images(photos, 5)
    run_cli(runner, "index", str(photos), *TINY)
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    db.executescript(
        "DROP TABLE image_sources; ALTER TABLE images DROP COLUMN decode;"
        "UPDATE meta SET value = '2' WHERE key = 'schema_version';"
    )
    db.close()
    out = run_cli(runner, "index", str(photos)).stdout
    assert "5 unchanged" in out
    assert _sources(runner)[str(photos)]["images"] == 5
    assert "5 removed" in run_cli(runner, "forget", str(photos)).stdout


# -- item 14: counts -----------------------------------------------------------------------


def test_embedded_counts_only_images_that_were_embedded(runner, tmp_path, index_dir):
    folder = tmp_path / "mixed"
    make_images(folder, 2)
    (folder / "bad1.jpg").write_bytes(b"not an image at all")
    (folder / "bad2.png").write_bytes(b"")
    out = run_cli(runner, "index", str(folder), *TINY).stdout
    assert "4 added" in out and "2 failed" in out and "2 embedded" in out


def test_one_file_under_three_spellings_in_a_list_is_one_row(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = make_images(tmp_path / "photos", 4)
    first = paths[0].name
    listing = tmp_path / "list.txt"
    spellings = [str(paths[0]), f"photos/{first}", f"./photos/../photos/{first}"]
    listing.write_text("\n".join(spellings + [str(p) for p in paths[1:]]) + "\n")
    with clipdex.open_index() as index:
        report = index.add(listing, from_list=True, model=TINY_SPEC)
        assert (report.added, report.embedded, report.failed) == (4, 4, 0)
        assert sorted(hit.uri for hit in index.search("x", k=50)) == sorted(map(str, paths))
        again = index.add(listing, from_list=True)
        assert (again.added, again.unchanged, again.removed) == (0, 4, 0)


def test_status_marks_a_missing_list_file(runner, tmp_path):
    paths = make_images(tmp_path / "photos", 2)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, paths)) + "\n")
    run_cli(runner, "index", "--from-list", str(listing), *TINY)
    listing.unlink()
    assert _sources(runner)[f"list:{listing}"]["missing"] is True
    out = run_cli(runner, "index", "--from-list", str(listing), "--allow-empty").stdout
    assert "2 removed" in out
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert (data["images"], data["sources"]) == (0, [])
