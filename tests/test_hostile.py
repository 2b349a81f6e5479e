"""Hostile conditions: a full disk, a source that vanishes, files that change mid-run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import clipdex
from clipdex.errors import CatalogError, SourceError
from clipdex.models.spec import ModelSpec
from conftest import TINY, make_images, run_cli


def can_mount() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount(), reason="needs a private mount namespace for a tiny tmpfs")
def test_disk_full_ends_cleanly_and_keeps_committed_batches(tmp_path):
    photos, index = tmp_path / "photos", tmp_path / "index"
    make_images(photos, 400)
    index.mkdir()
    cli = f"{sys.executable} -m clipdex"
    script = (
        f"mount -t tmpfs -o size=400k tmpfs '{index}' && "
        f"{cli} index '{photos}' --index '{index}' {' '.join(TINY)} --batch-size 16; "
        f"echo exit=$?; {cli} status --index '{index}' --format json; "
        f"{cli} check --repair --index '{index}' >/dev/null 2>&1; "
        f"{cli} search x -k 1000 --format paths --index '{index}' | wc -l"
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert "disk full" in done.stderr or "No space left" in done.stderr
    assert "exit=1" in done.stdout
    status = json.loads(done.stdout[done.stdout.index("{") : done.stdout.rindex("}") + 1])
    assert status["images"] >= 16 and status["images"] % 16 == 0  # whole batches only
    assert int(done.stdout.strip().splitlines()[-1]) == status["images"]


def test_source_vanishing_mid_run_is_recorded_not_fatal(images, index_dir):
    moved_away = images.parent / "elsewhere"

    def pull_the_drive(phase, done, total):
        if phase == "embed" and done == 0:
            images.rename(moved_away)

    with clipdex.open_index(index_dir) as index:
        report = index.add(images, model=ModelSpec("clipdex-tiny"), on_progress=pull_the_drive)
        assert report.failed == 50
        assert {e for _, e in index.catalog.failures()} == {"file vanished before it could be read"}
        with pytest.raises(SourceError, match="no such file or folder"):
            index.add(images)
        moved_away.rename(images)
        again = index.add(images)
        assert again.updated == 0 and again.unchanged == 50  # failures keep their stat
        with pytest.raises(CatalogError, match="the index is empty"):  # as before any vector
            index.search("x", k=100)


def test_folder_removed_between_runs_loses_nothing(runner, images, tmp_path):
    run_cli(runner, "index", str(images), *TINY)
    shutil.move(images, tmp_path / "away")
    result = run_cli(runner, "index", str(images), expect=1)
    assert "no such file or folder" in result.stderr
    assert json.loads(run_cli(runner, "status", "--format", "json").stdout)["images"] == 50


def test_file_rewritten_while_the_run_reads_it(images, index_dir, tmp_path):
    target = images / "img0002.png" if (images / "img0002.png").exists() else images / "img0001.jpg"
    replacement = make_images(tmp_path / "other", 1, seed=77)[0]

    def rewrite(phase, done, total):
        if phase == "embed" and done == 0:
            target.write_bytes(replacement.read_bytes() + b"\0" * 7)

    with clipdex.open_index(index_dir) as index:
        index.add(images, model=ModelSpec("clipdex-tiny"), on_progress=rewrite)
        # the run stored the stat it listed; the next run sees the file as changed
        assert index.add(images).updated == 1
        assert index.add(images).updated == 0
