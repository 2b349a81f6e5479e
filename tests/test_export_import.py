"""`clipdex export` and `clipdex import`: round trips, clip-retrieval's own layout, bad
input refused in one line with nothing written, a killed import resumed, and a later
`clipdex index` reusing imported vectors."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipdex.storage.catalog import Catalog
from conftest import TINY, make_images, run_cli

TINY_ID = {"name": "clipdex-tiny", "pretrained": "random-seed-0", "dim": 64}


def vectors_by_uri(folder: Path) -> dict[str, np.ndarray]:
    catalog = Catalog(folder, read_only=True)
    try:
        out = {}
        for ids, vectors in catalog.iter_vectors():
            uris = catalog.uris(ids.tolist())
            out.update({uris[int(i)]: v.copy() for i, v in zip(ids, vectors, strict=True)})
        return out
    finally:
        catalog.close()


@contextlib.contextmanager
def opened(folder: Path) -> Iterator[Catalog]:
    catalog = Catalog(folder, read_only=True)
    try:
        yield catalog
    finally:
        catalog.close()


def catalog_state(folder: Path) -> tuple:
    """What a refused import must leave as it was: change sequence, counts, sources."""
    catalog = Catalog(folder, read_only=True)
    try:
        return catalog.change_seq(), catalog.counts(), sorted(catalog.sources())
    finally:
        catalog.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(a folder of 12 images, an index of them made with clipdex-tiny), built once."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("built")
    make_images(root / "photos", 12)
    run_cli(CliRunner(), "index", str(root / "photos"), *TINY, "--index", str(root / "index"))
    return root / "photos", root / "index"


def clip_retrieval_layout(folder: Path, parts: list[tuple[list[str], np.ndarray]], **columns):
    """clip-retrieval's inference output by hand: img_emb/img_emb_N.npy (as given, e.g.
    float16) and metadata/metadata_N.parquet with image_path (plus `columns` per part)."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    for n, (uris, vectors) in enumerate(parts):
        np.save(folder / "img_emb" / f"img_emb_{n}.npy", vectors)
        table = {"image_path": uris, **{k: v[n] for k, v in columns.items()}}
        pq.write_table(pa.table(table), folder / "metadata" / f"metadata_{n}.parquet")
    return folder


def unit(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# -- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [("parquet", ()), ("npy", ()), ("clip-retrieval", ("--dtype", "float32"))],
)
def test_export_then_import_gives_back_the_same_uris_and_vectors(
    runner, tmp_path, built, fmt, extra
):
    _, index = built
    out = tmp_path / "out"
    shown = run_cli(runner, "export", str(out), "--format", fmt, "--index", str(index), *extra)
    assert "exported 12 vectors" in shown.stdout
    manifest = json.loads((out / "clipdex-export.json").read_text())
    assert manifest["model"] == TINY_ID and manifest["rows"] == 12
    assert not list(tmp_path.glob("out.tmp-*"))
    run_cli(runner, "import", str(out), "--index", str(tmp_path / "copy"))
    original, copied = vectors_by_uri(index), vectors_by_uri(tmp_path / "copy")
    assert sorted(copied) == sorted(original)
    for uri, vector in original.items():
        np.testing.assert_array_equal(copied[uri], vector)
    with opened(tmp_path / "copy") as c:
        assert c.decode_counts().get("imported") == 12
        assert c.model_identity().describe() == "clipdex-tiny (random-seed-0, 64-d)"
        assert [(kind, count) for _, kind, _, count in c.sources()] == [("import", 12)]
    run_cli(runner, "check", "--index", str(tmp_path / "copy"))


def export_with_photo_meta(runner, tmp_path, built):
    """A Parquet export of a copy of `built` whose image 1 has photo metadata."""
    _, source = built
    index = tmp_path / "index"
    shutil.copytree(source, index)
    with sqlite3.connect(index / "catalog.sqlite") as db:
        db.execute(
            "INSERT OR REPLACE INTO photo_meta (image_id, taken_at, camera, lat, lon) "
            "VALUES (1, 1700000000.0, 'Acme One', 48.85, 2.35)"
        )
    run_cli(runner, "export", str(tmp_path / "out"), "--index", str(index))
    (path,) = (tmp_path / "out").glob("*.parquet")
    return path


def test_parquet_records_the_model_in_its_schema_and_photo_metadata_when_present(
    runner, tmp_path, built
):
    path = export_with_photo_meta(runner, tmp_path, built)
    schema = pq.read_schema(path)
    assert json.loads(schema.metadata[b"clipdex"])["model"] == TINY_ID
    assert schema.field("vector").type == pa.list_(pa.float32(), 64)
    table = pq.read_table(path).to_pylist()
    assert [row["id"] for row in table] == list(range(1, 13))
    first = table[0]
    assert (first["camera"], first["lat"], first["lon"]) == ("Acme One", 48.85, 2.35)
    assert table[1]["camera"] is None and first["size"] > 0 and first["width"] > 0


def test_clip_retrieval_export_is_float16_by_default_and_reads_back_closely(
    runner, tmp_path, built
):
    _, index = built
    out = tmp_path / "out"
    run_cli(runner, "export", str(out), "--format", "clip-retrieval", "--index", str(index))
    emb = np.load(out / "img_emb" / "img_emb_0.npy")
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet")
    assert emb.dtype == np.float16 and emb.shape == (12, 64)
    assert meta.column_names[0] == "image_path" and meta.num_rows == 12
    run_cli(runner, "import", str(out), "--index", str(tmp_path / "copy"))
    original, copied = vectors_by_uri(index), vectors_by_uri(tmp_path / "copy")
    cosines = [float(original[u] @ copied[u]) for u in original]
    assert sorted(copied) == sorted(original) and min(cosines) > 0.9999


def test_files_are_bounded_and_subsets_exported(runner, tmp_path, built):
    _, index = built
    out = tmp_path / "out"
    run_cli(
        runner, "export", str(out), "--format", "npy", "--rows-per-file", "5", "--index", str(index)
    )
    assert [np.load(p).shape[0] for p in sorted(out.glob("vectors_*.npy"))] == [5, 5, 2]
    assert [pq.read_metadata(p).num_rows for p in sorted(out.glob("rows_*.parquet"))] == [5, 5, 2]
    later = run_cli(
        runner,
        "export",
        str(tmp_path / "none"),
        "--since",
        "2999-01-01",
        "--index",
        str(index),
        expect=1,
    )
    assert later.stderr.strip() == "Error: nothing to export: no image matches"
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob("none.tmp-*"))
    label = run_cli(
        runner, "export", str(tmp_path / "l"), "--label", "dog", "--index", str(index), expect=1
    )
    assert label.stderr.strip() == "Error: no image is labelled 'dog'"


def test_label_subset(runner, tmp_path, built):
    _, source = built
    index = tmp_path / "index"
    shutil.copytree(source, index)
    run_cli(runner, "classify", "--labels", "red,green", "--index", str(index), "--format", "json")
    with sqlite3.connect(index / "catalog.sqlite") as db:
        red = sorted(
            r[0]
            for r in db.execute(
                "SELECT image_id FROM assignments a JOIN run_labels l ON l.run_id = a.run_id "
                "AND l.position = a.position WHERE a.rank = 1 AND l.label = 'red'"
            )
        )
    assert 0 < len(red) < 12
    run_cli(runner, "export", str(tmp_path / "out"), "--label", "red", "--index", str(index))
    (path,) = (tmp_path / "out").glob("*.parquet")
    assert pq.read_table(path, columns=["id"]).column("id").to_pylist() == red


def test_an_existing_folder_is_refused_unless_overwritten(runner, tmp_path, built):
    _, index = built
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    refused = run_cli(runner, "export", str(out), "--index", str(index), expect=1)
    assert refused.stderr.strip() == (
        f"Error: {out} exists; choose another folder or overwrite it (--overwrite)"
    )
    again = run_cli(runner, "export", str(out), "--overwrite", "--index", str(index), expect=1)
    assert again.stderr.strip() == f"Error: {out} is not a clipdex export; not overwriting it"
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    run_cli(runner, "export", str(tmp_path / "e"), "--format", "npy", "--index", str(index))
    run_cli(runner, "export", str(tmp_path / "e"), "--overwrite", "--index", str(index))
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [
        "clipdex-export.json",
        "embeddings_0.parquet",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e", "out"]  # no temporary left


def test_missing_pyarrow_is_a_one_line_install_hint(runner, tmp_path, built, monkeypatch):
    import sys

    _, index = built
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    shown = run_cli(runner, "export", str(tmp_path / "out"), "--index", str(index), expect=1)
    assert shown.stderr.strip() == (
        "Error: reading and writing Parquet needs pyarrow: pip install 'clipdex[exchange]'"
    )
    assert not (tmp_path / "out").exists()


# -- clip-retrieval's own output -----------------------------------------------------------


def test_a_hand_made_clip_retrieval_layout_imports_with_its_declared_model(runner, tmp_path):
    vectors = unit(30).astype(np.float16)
    uris = [f"/data/cats/{i:03d}.jpg" for i in range(30)]
    folder = clip_retrieval_layout(
        tmp_path / "cr",
        [(uris[:20], vectors[:20]), (uris[20:], vectors[20:])],
        caption=[[f"cat {i}" for i in range(20)], [f"cat {i}" for i in range(20, 30)]],
    )
    index = tmp_path / "index"
    unnamed = run_cli(runner, "import", str(folder), "--index", str(index), expect=1)
    assert unnamed.stderr.strip() == (
        f"Error: {folder} does not record which model made its vectors; name the model and "
        "its pretrained weights (--model and --pretrained)"
    )
    assert not index.exists()
    run_cli(runner, "import", str(folder), *TINY, "--pretrained", "none", "--index", str(index))
    stored = vectors_by_uri(index)
    assert sorted(stored) == uris
    expected = vectors.astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    for uri, row in zip(uris, expected, strict=True):
        np.testing.assert_allclose(stored[uri], row, atol=1e-6)
    found = run_cli(
        runner, "search", "--like", "1", "-k", "3", "--index", str(index), "--format", "paths"
    )
    assert found.stdout.splitlines()[0] in uris
    # unknown sizes (no such local file) never make a row "unchanged" for another source
    with sqlite3.connect(index / "catalog.sqlite") as db:
        assert db.execute("SELECT DISTINCT size FROM images").fetchall() == [(-1,)]


# -- bad input: one line, nothing written --------------------------------------------------


def _bad_layouts(tmp_path: Path, built_index: Path) -> dict[str, tuple[Path, tuple, str]]:
    """name -> (folder, extra import arguments, the expected error line)."""
    uris = [f"/data/{i}.jpg" for i in range(4)]
    out = {}
    folder = clip_retrieval_layout(tmp_path / "dim", [(uris, unit(4, dim=32))])
    out["wrong dimension"] = (
        folder,
        (*TINY, "--pretrained", "none"),
        "metadata_0.parquet rows 1-4: vectors are 32-d, but clipdex-tiny makes 64-d vectors",
    )
    folder = clip_retrieval_layout(tmp_path / "cols", [(uris, unit(4))])
    pq.write_table(pa.table({"path": uris}), folder / "metadata" / "metadata_0.parquet")
    out["missing column"] = (
        folder,
        (*TINY, "--pretrained", "none"),
        "metadata_0.parquet has no 'image_path' column (its columns: path)",
    )
    folder = clip_retrieval_layout(tmp_path / "trunc", [(uris, unit(4))])
    npy = folder / "img_emb" / "img_emb_0.npy"
    npy.write_bytes(npy.read_bytes()[:-100])
    out["truncated npy"] = (folder, (*TINY, "--pretrained", "none"), "is not a whole .npy file")
    folder = tmp_path / "other"
    folder.mkdir()
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), folder / "data.parquet")
    out["another schema"] = (
        folder,
        (*TINY, "--pretrained", "none"),
        "data.parquet has no 'uri' column (its columns: a, b)",
    )
    folder = clip_retrieval_layout(tmp_path / "dup", [(uris[:3] + uris[:1], unit(4))])
    out["duplicate uris"] = (
        folder,
        (*TINY, "--pretrained", "none"),
        "the uri '/data/0.jpg' appears more than once",
    )
    vectors = unit(4)
    vectors[2] = 0
    folder = clip_retrieval_layout(tmp_path / "zero", [(uris, vectors)])
    out["zero vector"] = (
        folder,
        (*TINY, "--pretrained", "none"),
        "the vector of '/data/2.jpg' is zero or not finite",
    )
    export = tmp_path / "export"
    run_cli_export(built_index, export)
    out["declared model mismatch"] = (
        export,
        ("--model", "clipdex-tiny-96", "--pretrained", "none"),
        "holds vectors of clipdex-tiny (random-seed-0, 64-d), not of clipdex-tiny-96 "
        "(random-seed-0, 96-d)",
    )
    return out


def run_cli_export(index: Path, out: Path) -> None:
    from click.testing import CliRunner

    run_cli(CliRunner(), "export", str(out), "--index", str(index))


BAD = [
    "wrong dimension",
    "missing column",
    "truncated npy",
    "another schema",
    "duplicate uris",
    "zero vector",
    "declared model mismatch",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_in_one_line_and_nothing_is_written(runner, tmp_path, built, case):
    _, source = built
    index = tmp_path / "index"
    shutil.copytree(source, index)
    before = catalog_state(index)
    folder, args, message = _bad_layouts(tmp_path, source)[case]
    refused = run_cli(runner, "import", str(folder), *args, "--index", str(index), expect=1)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert catalog_state(index) == before
    fresh = run_cli(
        runner, "import", str(folder), *args, "--index", str(tmp_path / "new"), expect=1
    )
    assert fresh.stderr == refused.stderr and not (tmp_path / "new").exists()


@pytest.mark.slow
def test_vectors_of_another_model_than_the_index_are_refused(runner, tmp_path, built):
    photos, source = built
    other = tmp_path / "other"
    run_cli(runner, "index", str(photos), "--model", "clipdex-tiny-96", "--index", str(other))
    before = catalog_state(other)
    run_cli(runner, "export", str(tmp_path / "out"), "--index", str(source))
    refused = run_cli(runner, "import", str(tmp_path / "out"), "--index", str(other), expect=1)
    assert refused.stderr.strip() == (
        "Error: this index was built with clipdex-tiny-96 (random-seed-0, 96-d), not "
        "clipdex-tiny (random-seed-0, 64-d); use the index's own model, or start over with "
        "a rebuild or another index folder"
    )
    assert catalog_state(other) == before


def test_vectors_not_of_unit_length_are_normalised_and_said(runner, tmp_path):
    vectors = unit(6) * np.array([[1], [2], [1], [0.5], [1], [3]], np.float32)
    uris = [f"/data/{i}.jpg" for i in range(6)]
    folder = clip_retrieval_layout(tmp_path / "cr", [(uris, vectors)])
    index = tmp_path / "index"
    shown = run_cli(
        runner, "import", str(folder), *TINY, "--pretrained", "none", "--index", str(index)
    )
    assert shown.stderr.strip().splitlines()[-1] == (
        "normalised 3 vectors that were not of unit length"
    )
    stored = vectors_by_uri(index)
    norms = [float(np.linalg.norm(stored[u])) for u in uris]
    np.testing.assert_allclose(norms, 1, atol=1e-6)
    np.testing.assert_allclose(stored[uris[1]], unit(6)[1], atol=1e-6)


# -- reuse by a later index run ------------------------------------------------------------


@pytest.mark.slow
def test_a_later_index_run_reuses_imported_vectors_when_uri_and_size_match(runner, tmp_path, built):
    photos, _ = built
    mine = tmp_path / "photos"
    shutil.copytree(photos, mine)
    run_cli(runner, "index", str(mine), *TINY, "--index", str(tmp_path / "a"))
    run_cli(runner, "export", str(tmp_path / "out"), "--index", str(tmp_path / "a"))
    index = tmp_path / "b"
    run_cli(runner, "import", str(tmp_path / "out"), "--index", str(index))
    imported = vectors_by_uri(index)
    shown = run_cli(runner, "index", str(mine), "--index", str(index))
    assert "0 added, 0 updated, 0 removed, 12 unchanged, 0 failed; 0 embedded" in shown.stdout
    assert all(np.array_equal(v, imported[u]) for u, v in vectors_by_uri(index).items())
    with opened(index) as c:
        assert sorted((kind, n) for _, kind, _, n in c.sources()) == [
            ("folder", 12),
            ("import", 12),
        ]
    # a file whose size changed is embedded again
    changed = sorted(mine.glob("*.png"))[0]
    make_images(tmp_path / "bigger", 1, seed=9)
    shutil.copy(next((tmp_path / "bigger").iterdir()), changed)
    assert changed.stat().st_size != (photos / changed.name).stat().st_size
    shown = run_cli(runner, "index", str(mine), "--index", str(index))
    assert "0 added, 1 updated, 0 removed, 11 unchanged, 0 failed; 1 embedded" in shown.stdout
    with opened(index) as c:
        assert c.decode_counts()["imported"] == 11


# -- a killed import -----------------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from clipdex.api.exchange import import_embeddings

def progress(phase, done, total):
    print(phase, done, flush=True)

import_embeddings(Path(sys.argv[1]), Path(sys.argv[2]), chunk=500, on_progress=progress)
"""


@pytest.mark.slow
def test_a_killed_import_resumes_to_the_state_of_a_clean_one(runner, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    uris = [f"/data/{i:05d}.jpg" for i in range(6000)]
    vectors = unit(6000)
    folder = tmp_path / "parquet"  # records its model: the child never imports torch
    folder.mkdir()
    meta = {b"clipdex": json.dumps({"model": TINY_ID}).encode()}
    for n in (0, 1):
        rows = slice(3000 * n, 3000 * (n + 1))
        flat = pa.array(vectors[rows].ravel())
        table = pa.table({"uri": uris[rows], "vector": pa.FixedSizeListArray.from_arrays(flat, 64)})
        pq.write_table(table.replace_schema_metadata(meta), folder / f"part-{n}.parquet")
    index = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(index), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    for line in child.stdout:
        phase, done = line.split()
        if phase == "import" and int(done) >= 2000:
            child.send_signal(signal.SIGKILL)  # mid-run: the next chunk may be half written
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    with opened(index) as c:
        assert 2000 <= c.counts()["vectors"] < 6000
    args = (*TINY, "--pretrained", "none")  # declared too: must match what it records
    shown = run_cli(runner, "import", str(folder), *args, "--index", str(index))
    assert "already imported by an interrupted run" in shown.stdout
    run_cli(runner, "import", str(folder), *args, "--index", str(tmp_path / "clean"))
    killed, clean = vectors_by_uri(index), vectors_by_uri(tmp_path / "clean")
    assert sorted(killed) == sorted(clean) == uris
    assert all(np.array_equal(killed[u], clean[u]) for u in uris)
    with opened(index) as a, opened(tmp_path / "clean") as b:
        ids = lambda c: c.uris(list(range(1, 6001)))  # noqa: E731
        assert ids(a) == ids(b)  # the same ids too: a rolled-back chunk takes none
        assert a.counts() == b.counts() == {"ok": 6000, "failed": 0, "vectors": 6000}
    run_cli(runner, "check", "--index", str(index))


def test_import_takes_the_index_type_options_of_clipdex_index(runner, tmp_path, built):
    _, source = built
    run_cli(runner, "export", str(tmp_path / "out"), "--index", str(source))
    index = tmp_path / "index"
    run_cli(
        runner, "import", str(tmp_path / "out"), "--index-type", "ivf-sq8", "--index", str(index)
    )
    assert json.loads((index / "vectors.json").read_text())["type"] == "ivf-sq8"
    with opened(index) as c:
        assert c.index_settings() == ("ivf-sq8", None)
    run_cli(runner, "check", "--index", str(index))


def test_import_brings_the_exported_photo_metadata_and_drops_bad_values(runner, tmp_path, built):
    path = export_with_photo_meta(runner, tmp_path, built)
    table = pq.read_table(path)
    rows = table.to_pylist()
    # hostile values: a time far past any date, a camera of control characters and
    # megabytes, half a position; then one with only the camera sane (cut to 100)
    rows[2].update(taken_at=1e300, camera="\x1b[31m\n\x00", lat=48.0, lon=None)
    rows[3].update(taken_at=float("nan"), camera="Acme\x1b[2J " + "x" * 5_000_000, lat=123.0)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    run_cli(runner, "import", str(tmp_path / "out"), "--index", str(tmp_path / "copy"))
    with sqlite3.connect(tmp_path / "copy" / "catalog.sqlite") as db:
        meta = db.execute(
            "SELECT i.uri, p.taken_at, p.taken_local, p.camera, p.lat, p.lon FROM photo_meta p "
            "JOIN images i ON i.id = p.image_id ORDER BY i.uri"
        ).fetchall()
    # rows without believable metadata get none: the next index run reads their EXIF
    assert meta == sorted(
        [
            (rows[0]["uri"], 1700000000.0, "2023-11-14T22:13:20+00:00", "Acme One", 48.85, 2.35),
            (rows[2]["uri"], None, None, "[31m", None, None),  # the escapes' text only
            (rows[3]["uri"], None, None, "Acme[2J " + "x" * 92, None, None),
        ]
    )
    copy = ("--index", str(tmp_path / "copy"))
    assert "2023-11-14 to 2023-11-14" in run_cli(runner, "status", *copy).output
    with sqlite3.connect(tmp_path / "copy" / "catalog.sqlite") as db:  # by hand, or older
        db.execute("UPDATE photo_meta SET taken_at = 1e300 WHERE camera = '[31m'")
    assert "2023-11-14 to ?" in run_cli(runner, "status", *copy).output  # not a traceback
    with sqlite3.connect(tmp_path / "copy" / "catalog.sqlite") as db:
        db.execute("UPDATE photo_meta SET taken_at = NULL WHERE camera = '[31m'")
    found = run_cli(runner, "search", "a photo", "--camera", "Acme One", *copy)
    assert rows[0]["uri"] in found.output and rows[1]["uri"] not in found.output
    for dates in (("--after", "2023-11-01"), ("--before", "2023-12-01")):
        dated = run_cli(runner, "search", "a photo", *dates, *copy, "--format", "json")
        assert [hit["uri"] for hit in json.loads(dated.output)] == [rows[0]["uri"]]
