"""The main user journey through the CLI: index a folder, search it, read its status."""

from __future__ import annotations

import json

from conftest import TINY, make_images, run_cli


def test_index_then_search_by_text_and_image(runner, images, index_dir):
    result = run_cli(runner, "index", str(images), *TINY)
    assert "50 added, 0 updated, 0 removed, 0 unchanged, 0 failed" in result.stdout
    assert (index_dir / "catalog.sqlite").is_file()
    assert (index_dir / "vectors.faiss").is_file()

    result = run_cli(runner, "search", "a red car", "-k", "5", "--format", "json")
    rows = json.loads(result.stdout)
    assert [row["rank"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(set(row) >= {"id", "uri", "score"} for row in rows)
    scores = [row["score"] for row in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(row["uri"].startswith(str(images)) for row in rows)

    query = images / "img0004.jpg"
    result = run_cli(runner, "search", "--image", str(query), "-k", "1", "--format", "jsonl")
    best = json.loads(result.stdout.splitlines()[0])
    assert best["uri"] == str(query)
    assert best["score"] > 0.999


def test_search_formats(runner, images):
    run_cli(runner, "index", str(images), *TINY)
    table = run_cli(runner, "search", "a cat", "-k", "3").stdout.splitlines()
    assert table[0].split() == ["rank", "score", "uri"] and len(table) == 4
    paths = run_cli(runner, "search", "a cat", "-k", "3", "--format", "paths").stdout.splitlines()
    assert len(paths) == 3 and all(p.startswith(str(images)) for p in paths)
    csv_lines = run_cli(runner, "search", "a cat", "-k", "2", "--format", "csv").stdout.splitlines()
    assert (
        csv_lines[0] == "rank,id,uri,score,width,height,taken_at,camera,lat,lon"
        and len(csv_lines) == 3
    )


def test_k_larger_than_index_and_min_score(runner, tmp_path):
    folder = tmp_path / "few"
    make_images(folder, 3)
    run_cli(runner, "index", str(folder), *TINY)
    rows = json.loads(run_cli(runner, "search", "x", "-k", "50", "--format", "json").stdout)
    assert len(rows) == 3
    rows = json.loads(run_cli(runner, "search", "x", "--min-score", "1", "--format", "json").stdout)
    assert rows == []


def test_status_lists_model_counts_sources_and_failures(runner, images):
    (images / "broken.jpg").write_bytes(b"")
    run_cli(runner, "index", str(images), *TINY)
    text = run_cli(runner, "status").stdout
    assert "clipdex-tiny (random-seed-0, 64-d)" in text
    assert "50 indexed, 1 failed" in text
    assert "broken.jpg: empty file" in text
    assert str(images) in text
    data = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert data["images"] == 50 and data["failed"] == 1 and data["index_vectors"] == 50
    assert data["model"] == {"name": "clipdex-tiny", "weights": "random-seed-0", "dim": 64}
    assert data["sources"][0]["uri"] == str(images)


def test_single_file_source(runner, images):
    one = images / "img0001.jpg"
    result = run_cli(runner, "index", str(one), *TINY)
    assert "1 added" in result.stdout
    rows = json.loads(run_cli(runner, "search", "anything", "--format", "json").stdout)
    assert [row["uri"] for row in rows] == [str(one)]


def test_index_option_and_envvar(runner, images, tmp_path):
    other = tmp_path / "elsewhere"
    run_cli(runner, "--help")
    run_cli(runner, "index", str(images), "--index", str(other), *TINY)
    assert (other / "catalog.sqlite").is_file()
    rows = json.loads(
        run_cli(runner, "search", "x", "--index", str(other), "--format", "json").stdout
    )
    assert len(rows) == 10


def test_models_lists_default_and_tiny(runner):
    out = run_cli(runner, "models", "--format", "csv").stdout
    assert "ViT-B-32-256,datacomp_s34b_b86k,yes" in out
    assert "clipdex-tiny,none," in out
    assert "clipdex-demo-shapes,shapes-v1," in out


def test_hidden_and_system_folders_skipped_unless_asked(runner, tmp_path):
    folder = tmp_path / "p"
    make_images(folder, 2)
    make_images(folder / ".thumbnails", 2, prefix="h")
    make_images(folder / "@eaDir", 1, prefix="s")
    assert "2 added" in run_cli(runner, "index", str(folder), *TINY).stdout
    out = run_cli(runner, "index", str(folder), "--include-hidden").stdout
    assert "3 added" in out and "2 unchanged" in out


def test_extensionless_image_is_found_by_its_header(runner, tmp_path):
    folder = tmp_path / "p"
    paths = make_images(folder, 2)
    paths[0].rename(folder / "no_extension")
    (folder / "notes").write_text("not an image")
    assert "2 added" in run_cli(runner, "index", str(folder), *TINY).stdout
