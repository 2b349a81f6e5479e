"""Duplicates (issue 15, part 5): near-duplicate groups from the stored vectors, no hub
chaining, best copy first; byte-identical groups by content hash; every output format."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex.api import open_index
from clipdex.models.builtin import DEMO_MODEL
from clipdex.samples import draw_shape
from clipdex.storage.catalog import Catalog, ImageRecord
from clipdex.types import ModelIdentity
from conftest import run_cli

T0 = 1_600_000_000


@pytest.fixture(scope="module")
def photos_index(tmp_path_factory):
    """Demo-model index of: an original, its exact copy, a JPEG re-encoded at quality 30,
    a half-size copy, another red circle (same scene type) and a blue star."""
    root = tmp_path_factory.mktemp("dupes")
    photos = root / "photos"
    photos.mkdir()
    draw_shape("red", "circle", 128, seed=1).save(photos / "a.png")
    shutil.copy(photos / "a.png", photos / "a_copy.png")
    Image.open(photos / "a.png").convert("RGB").save(photos / "a_q30.jpg", quality=30)
    Image.open(photos / "a.png").resize((64, 64)).save(photos / "a_small.png")
    draw_shape("red", "circle", 128, seed=7).save(photos / "other_circle.png")
    draw_shape("blue", "star", 128, seed=3).save(photos / "star.png")
    # the original is the oldest of the full-size copies; the small one is older still
    ages = {"a.png": 0, "a_copy.png": 10, "a_q30.jpg": 20, "a_small.png": -100}
    for name, age in ages.items():
        os.utime(photos / name, (T0 + age, T0 + age))
    from clipdex.models.spec import ModelSpec

    with open_index(root / "index") as index:
        index.add(photos, model=ModelSpec(DEMO_MODEL), workers=0)
    return root / "index"


def _names(rows: list[dict]) -> list[str]:
    return [Path(r["uri"]).name for r in rows]


def test_copies_group_together_best_first_and_other_photos_stay_out(photos_index, runner):
    out = run_cli(runner, "duplicates", "--index", str(photos_index), "--format", "json")
    rows = json.loads(out.stdout)
    assert {r["group"] for r in rows} == {1}
    # most pixels first, then the oldest; the half-size copy (oldest of all) comes last
    assert _names(rows) == ["a.png", "a_copy.png", "a_q30.jpg", "a_small.png"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["score"] == 1.0 and all(0.95 <= r["score"] <= 1.0 for r in rows)
    assert (rows[0]["width"], rows[0]["height"], rows[3]["width"]) == (128, 128, 64)
    assert rows[0]["modified"] == "2020-09-13T12:26:40+00:00"
    assert "1 groups, 4 images" in out.stderr


def test_exact_groups_identical_bytes_only(photos_index, runner):
    out = run_cli(
        runner, "duplicates", "--index", str(photos_index), "--exact", "--format", "jsonl"
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert _names(rows) == ["a.png", "a_copy.png"]
    assert [r["score"] for r in rows] == [1.0, 1.0]


@pytest.mark.slow
def test_every_format_says_the_same(photos_index, runner):
    base = ["duplicates", "--index", str(photos_index)]
    as_json = json.loads(run_cli(runner, *base, "--format", "json").stdout)
    jsonl = [json.loads(x) for x in run_cli(runner, *base, "--format", "jsonl").stdout.splitlines()]
    table = csv.DictReader(io.StringIO(run_cli(runner, *base, "--format", "csv").stdout))
    assert jsonl == as_json
    assert [(int(r["group"]), int(r["id"]), r["uri"]) for r in table] == [
        (r["group"], r["id"], r["uri"]) for r in as_json
    ]
    text = run_cli(runner, *base).stdout.splitlines()
    assert text[0].split() == ["group", "rank", "score", "width", "height", "uri"]
    assert [line.split()[-1] for line in text[1:]] == [r["uri"] for r in as_json]


@pytest.mark.slow
def test_a_high_threshold_splits_what_a_low_one_joins(photos_index):
    with open_index(photos_index) as index:
        strict = [[Path(c.uri).name for c in g.copies] for g in index.duplicates(0.9999)]
        loose = [[Path(c.uri).name for c in g.copies] for g in index.duplicates(0.85)]
    assert "a_q30.jpg" not in {n for g in strict for n in g}  # re-encoding moved it
    assert any({"a.png", "a_copy.png"} <= set(g) for g in strict)
    assert any({"a.png", "other_circle.png"} <= set(g) for g in loose)  # the same scene
    assert "star.png" not in {n for g in loose for n in g}


# -- the grouping rule, on vectors made by hand --------------------------------------------


def _vector_index(folder: Path, vectors: np.ndarray, kind: str | None = None) -> list[int]:
    """An index holding these vectors (no model needed to find duplicates); their ids."""
    folder.mkdir(parents=True)
    catalog = Catalog(folder)
    try:
        catalog.claim_model(ModelIdentity("hand-made", "", vectors.shape[1]))
        if kind is not None:
            catalog.set_index_settings(kind, None)
        source = catalog.source_id("/v", "folder")
        records = [
            ImageRecord(f"/v/{i:04d}.jpg", 1, T0 * 10**9 + i, vector=v, width=10, height=10)
            for i, v in enumerate(vectors.astype(np.float32))
        ]
        catalog.write_batch(source, records)
        return sorted(_ids(catalog))
    finally:
        catalog.close()


def _ids(catalog: Catalog) -> list[int]:
    return [int(i) for ids, _ in catalog.iter_vectors() for i in ids]


def _on_circle(*degrees: float) -> np.ndarray:
    """Unit vectors in 4-d at these angles on one great circle."""
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r), np.zeros_like(r), np.zeros_like(r)], axis=1)


def _groups(folder: Path, threshold: float, **options) -> list[list[int]]:
    with open_index(folder) as index:
        return [[c.id for c in g.copies] for g in index.duplicates(threshold, **options)]


def test_no_chain_through_a_hub(tmp_path):
    # a ~ b (cos 0.961) and b ~ c (cos 0.961), but a !~ c (cos 0.848): never one group
    a, b, c = _vector_index(tmp_path / "i", _on_circle(0, 16, 32))
    groups = _groups(tmp_path / "i", 0.95)
    assert len(groups) == 1 and len(groups[0]) == 2 and b in groups[0]
    assert {a, c} - set(groups[0])  # one of the ends is left alone
    # a star: a hub with three spokes far from each other joins one spoke only
    hub_and_spokes = np.vstack(
        [
            [1, 0, 0, 0],
            *(
                np.array([1, 0, 0, 0]) * 0.96 + np.eye(4)[i] * np.sqrt(1 - 0.96**2)
                for i in (1, 2, 3)
            ),
        ]
    )
    ids = _vector_index(tmp_path / "star", hub_and_spokes)
    groups = _groups(tmp_path / "star", 0.95)
    assert groups == [[ids[0], ids[1]]] or (len(groups) == 1 and len(groups[0]) == 2)
    # at a threshold every pair reaches, all four are one group
    assert sorted(_groups(tmp_path / "star", 0.9)[0]) == ids


def test_every_two_members_of_a_group_are_within_the_threshold(tmp_path):
    rng = np.random.default_rng(0)
    vectors = _on_circle(*np.sort(rng.uniform(0, 60, 40)))  # a dense arc: long chains
    ids = _vector_index(tmp_path / "i", vectors)
    by_id = dict(zip(ids, vectors, strict=True))
    groups = _groups(tmp_path / "i", 0.99)
    assert groups and all(len(g) >= 2 for g in groups)
    for group in groups:
        block = np.stack([by_id[i] for i in group])
        assert (block @ block.T).min() >= 0.99 - 1e-6
    seen = [i for g in groups for i in g]
    assert len(seen) == len(set(seen))  # an image is in one group at most


def test_more_copies_than_the_first_neighbours_still_form_one_group(tmp_path):
    # 12 identical vectors: more than the 8 neighbours asked for first
    vectors = np.vstack([np.tile([1.0, 0, 0, 0], (12, 1)), _on_circle(90, 180)])
    ids = _vector_index(tmp_path / "i", vectors)
    assert _groups(tmp_path / "i", 0.95) == [ids[:12]]  # equal size and age: by id
    capped = _groups(tmp_path / "i", 0.95, max_group=5)
    assert capped and all(len(g) <= 5 for g in capped) and len(capped[0]) == 5


def test_an_ivf_store_finds_the_planted_pairs(tmp_path):
    rng = np.random.default_rng(3)
    base = rng.normal(size=(400, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[:30] + rng.normal(size=(30, 16)) * 0.03
    vectors = np.vstack([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    ids = _vector_index(tmp_path / "ivf", vectors, kind="ivf")
    with open_index(tmp_path / "ivf") as index:
        groups = [sorted(c.id for c in g.copies) for g in index.duplicates(0.95)]
        assert index.vectors.stats().parameters["trained"] is True
    assert sorted(groups) == [[ids[i], ids[400 + i]] for i in range(30)]


# -- edges ---------------------------------------------------------------------------------


def test_empty_index_and_no_duplicates_exit_0_with_a_note(tmp_path, runner):
    (tmp_path / "empty").mkdir()
    Catalog(tmp_path / "empty").close()
    out = run_cli(runner, "duplicates", "--index", str(tmp_path / "empty"), "--format", "json")
    assert json.loads(out.stdout) == [] and "no duplicates at threshold 0.95 found" in out.stderr
    _vector_index(tmp_path / "apart", np.eye(4))
    out = run_cli(runner, "duplicates", "--index", str(tmp_path / "apart"), "--format", "csv")
    assert out.stdout.splitlines() == [
        "group,rank,id,uri,score,width,height,bytes,taken_at,modified"
    ]
    assert "no duplicates" in out.stderr
    out = run_cli(runner, "duplicates", "--index", str(tmp_path / "apart"), "--exact")
    assert "no byte-identical files found" in out.stderr


def test_bad_options(tmp_path, runner):
    _vector_index(tmp_path / "i", np.eye(4))
    for args in (["--threshold", "0"], ["--threshold", "1.5"], ["--max-group", "1"]):
        assert run_cli(runner, "duplicates", "--index", str(tmp_path / "i"), *args, expect=2)
    missing = run_cli(runner, "duplicates", "--index", str(tmp_path / "nothing"), expect=1)
    assert "no index" in missing.output and "Traceback" not in missing.output
    from clipdex.errors import QueryError

    with open_index(tmp_path / "i") as index, pytest.raises(QueryError, match="at most 1"):
        index.duplicates(1.2)


def test_most_pixels_then_the_earliest_capture_time_then_mtime(tmp_path):
    import sqlite3

    ids = _vector_index(tmp_path / "i", np.tile([1.0, 0, 0, 0], (4, 1)))
    # the last one is larger; the third was taken (EXIF) before the others' mtimes
    with sqlite3.connect(tmp_path / "i" / "catalog.sqlite") as conn:
        conn.execute("UPDATE images SET width = 20 WHERE id = ?", (ids[3],))
        conn.execute(
            "INSERT INTO photo_meta (image_id, taken_at) VALUES (?, ?)", (ids[2], T0 - 3600.0)
        )
    with open_index(tmp_path / "i") as index:
        (group,) = index.duplicates(0.99)
    assert [c.id for c in group.copies] == [ids[3], ids[2], ids[0], ids[1]]
    rows = list(group.rows())
    assert rows[1]["taken_at"] == "2020-09-13T11:26:40+00:00" and rows[0]["taken_at"] is None
