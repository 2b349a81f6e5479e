"""Defects found by a hostile review of the merged fixes and restructuring."""

from __future__ import annotations

import json
import sqlite3

import pytest

import clipdex
from clipdex.api import Index
from clipdex.storage.catalog import CATALOG_FILE
from conftest import TINY, make_images, run_cli
from test_model_safety import tiny_checkpoint


def test_weights_without_a_model_are_for_the_index_architecture(runner, tmp_path, index_dir):
    make_images(tmp_path / "a", 4)
    make_images(tmp_path / "b", 3, seed=1)
    checkpoint = tiny_checkpoint(tmp_path / "ck.pt", seed=1)
    run_cli(runner, "index", str(tmp_path / "a"), *TINY, "--checkpoint", checkpoint)
    out = run_cli(runner, "index", str(tmp_path / "b"), "--checkpoint", checkpoint).stdout
    assert "3 added" in out
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["model"]["name"] == "clipdex-tiny" and data["images"] == 7


def test_per_label_refuses_the_options_it_would_ignore(runner, images):
    run_cli(runner, "index", str(images), *TINY)
    result = run_cli(
        runner, "classify", "--labels", "a,b", "--per-label", "2", "--threshold", "0.9", expect=2
    )
    assert "--threshold" in result.output and "--per-label" in result.output


def test_out_into_a_missing_folder_saves_no_run(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    result = run_cli(
        runner, "classify", "--labels", "a,b", "--out", str(images / "nodir" / "x.csv"), expect=1
    )
    assert "no such folder" in result.stderr
    with Index(index_dir) as index:
        assert index.label_counts() == (None, [])


@pytest.mark.slow
def test_min_score_outside_minus_one_to_one_is_refused(runner, images):
    run_cli(runner, "index", str(images), *TINY)
    result = run_cli(runner, "search", "x", "--min-score", "5", expect=1)
    assert "between -1 and 1" in result.stderr


def test_a_read_only_open_reads_a_schema_3_catalog(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    db = sqlite3.connect(index_dir / CATALOG_FILE)
    db.executescript(
        "ALTER TABLE images DROP COLUMN decode;"
        "UPDATE meta SET value = '3' WHERE key = 'schema_version';"
    )
    db.close()
    from clipdex.storage.catalog import Catalog

    catalog = Catalog(index_dir, read_only=True)
    try:
        assert catalog.schema_version == 3
        assert catalog.decode_counts() == {"exact": 0, "draft": 0, "unknown": 50}
        assert catalog.counts()["ok"] == 50
    finally:
        catalog.close()
    with clipdex.open_index(index_dir) as index:  # a writer's open migrates it
        assert index.catalog.schema_version == 6


def test_a_rebuild_with_another_model_names_the_sources_it_forgot(runner, tmp_path):
    make_images(tmp_path / "a", 3)
    make_images(tmp_path / "b", 2, seed=1)
    run_cli(runner, "index", str(tmp_path / "a"), *TINY)
    run_cli(runner, "index", str(tmp_path / "b"))
    result = run_cli(
        runner, "index", str(tmp_path / "a"), "--model", "clipdex-tiny-96", "--rebuild"
    )
    assert "3 added" in result.stdout
    assert "forgot 1 other source(s)" in result.stderr and str(tmp_path / "b") in result.stderr
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert [s["uri"] for s in data["sources"]] == [str(tmp_path / "a")]
