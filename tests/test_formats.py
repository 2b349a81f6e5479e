"""HEIC/HEIF (pillow-heif) and AVIF (Pillow's plugin): recognised by extension and header,
decoded upright, indexed and searched; a truncated HEIC is a recorded failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import features

import clipdex
from clipdex.media.decode import IMAGE_EXTENSIONS, load_image_for, sniff_format
from conftest import TINY, run_cli
from exif_photos import exif_block, make_photo

needs_avif = pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF")


def test_heif_and_avif_are_recognised_by_header_and_extension(tmp_path):
    heic = make_photo(tmp_path / "a.heic", fmt="HEIF")
    assert sniff_format(heic.read_bytes()[:16]) == "HEIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00") == "HEIF"
    assert sniff_format(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00") == "AVIF"
    assert sniff_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00") is None  # an MP4 video
    assert {".heic", ".heif", ".avif"} <= IMAGE_EXTENSIONS
    # a HEIC without an extension is found by its header
    nameless = tmp_path / "folder" / "IMG_0001"
    nameless.parent.mkdir()
    nameless.write_bytes(heic.read_bytes())
    report = clipdex.open_index(tmp_path / "idx").add(
        nameless.parent, model=clipdex.ModelSpec("clipdex-tiny"), workers=0
    )
    assert report.added == 1 and report.failed == 0


@pytest.mark.parametrize("fmt", ["HEIF", pytest.param("AVIF", marks=needs_avif)])
def test_orientation_turns_heif_and_avif_upright_like_jpeg(tmp_path, fmt):
    """Left half white, EXIF orientation 6 (turn 90 degrees clockwise): upright, the white
    half is on top, and the stored size is the upright one, in every format."""
    from PIL import Image

    half = np.zeros((48, 64, 3), np.uint8)
    half[:, :32] = 255
    tops = {}
    for name in ("JPEG", fmt):
        path = tmp_path / f"turned.{name.lower()}"
        exif = exif_block(orientation=6).tobytes()
        Image.fromarray(half).save(path, format=name, exif=exif, quality=95)
        loaded = load_image_for(path)
        image = np.asarray(loaded.image, np.float64)
        assert (loaded.width, loaded.height) == (48, 64) == loaded.image.size
        tops[name] = (image[:32].mean(), image[32:].mean())
        assert loaded.meta.orientation == 6
    assert tops[fmt][0] > 200 and tops[fmt][1] < 50, tops
    assert tops["JPEG"][0] > 200 and tops["JPEG"][1] < 50, tops


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["HEIF", pytest.param("AVIF", marks=needs_avif)])
def test_heic_and_avif_index_and_search(runner, tmp_path, index_dir, fmt):
    photos = tmp_path / "photos"
    for i in range(4):
        make_photo(photos / f"p{i}.jpg", seed=i)
    query = make_photo(photos / f"phone{'.heic' if fmt == 'HEIF' else '.avif'}", seed=9, fmt=fmt)
    run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    status = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    assert status["images"] == 5 and status["failed"] == 0
    with clipdex.open_index(index_dir) as index:
        hit = index.search(image=query, k=1)[0]
        assert hit.uri == str(query) and hit.score > 0.999
        row = index.catalog.images([hit.id])[hit.id]
        assert row.format == fmt and (row.width, row.height) == (64, 48)
        # the stored vector is the model's vector of the decoded pixels
        picture = load_image_for(query).image
        expected = index.embedder().image_vector(picture)
        assert float(index.catalog.vector_of(hit.id) @ expected) > 0.9999


@pytest.mark.parametrize(
    "fmt", ["HEIF", pytest.param("AVIF", marks=[needs_avif, pytest.mark.slow])]
)
def test_truncated_heic_and_avif_are_recorded_failures(runner, tmp_path, fmt):
    photos = tmp_path / "photos"
    make_photo(photos / "good.jpg")
    whole = make_photo(tmp_path / "whole", seed=3, fmt=fmt, size=(120, 90)).read_bytes()
    extension = ".heic" if fmt == "HEIF" else ".avif"
    (photos / f"cut{extension}").write_bytes(whole[: len(whole) - 64])
    (photos / f"stub{extension}").write_bytes(whole[:40])
    out = run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    assert "2 failed" in out.stdout and "Traceback" not in out.output
    status = json.loads(run_cli(runner, "status", "--format", "json").stdout)
    failures = {f["uri"].rsplit("/", 1)[1]: f["error"] for f in status["failures"]}
    assert set(failures) == {f"cut{extension}", f"stub{extension}"}
    assert status["images"] == 1
