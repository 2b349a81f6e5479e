"""Thumbnails: made while indexing from the decoded image, stored by id in the index
folder, replaced when the image changes, removed with it; `--no-thumbnails` stores none."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipdex.api import Index
from clipdex.media.thumbnails import THUMB_SIDE, make_thumbnail, thumbnail_from_bytes
from clipdex.models.spec import ModelSpec
from clipdex.storage.catalog import Catalog, ImageRecord
from clipdex.storage.thumbs import ThumbnailStore
from clipdex.types import ModelIdentity
from conftest import TINY, make_images, run_cli


def decoded(data: bytes) -> Image.Image:
    picture = Image.open(io.BytesIO(data))
    assert picture.format in ("WEBP", "JPEG")
    picture.load()
    return picture


def test_a_thumbnail_fits_the_side_keeps_the_shape_and_is_never_enlarged():
    wide = Image.new("RGB", (1000, 500), (200, 30, 30))
    data, fmt = make_thumbnail(wide)
    assert decoded(data).size == (THUMB_SIDE, THUMB_SIDE // 2) and fmt in ("WEBP", "JPEG")
    small = Image.new("RGB", (50, 40), (0, 0, 255))
    assert decoded(make_thumbnail(small)[0]).size == (50, 40)
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 3000), (0, 128, 0)).save(buffer, "JPEG")
    picture = decoded(thumbnail_from_bytes(buffer.getvalue())[0])
    assert picture.size == (THUMB_SIDE * 2 // 3, THUMB_SIDE)
    assert picture.getpixel((10, 10))[1] > 100  # still green


def test_the_store_writes_by_id_and_prunes_deleted_images(tmp_path):
    catalog = Catalog(tmp_path)
    catalog.claim_model(ModelIdentity("m", "w", 2))
    source = catalog.source_id("/x", "folder")
    vector = np.array([1, 0], np.float32)
    catalog.write_batch(source, [ImageRecord(f"/x/{i}.png", 1, 1, vector) for i in range(3)])
    store = ThumbnailStore(tmp_path)
    for image_id in (1, 2, 3):
        store.write(image_id, b"RIFF....WEBP" + bytes([image_id]), "WEBP")
    store.write(2, b"\xff\xd8\xff\xe0 a jpeg now", "JPEG")  # replaces the WebP
    assert store.read(2).startswith(b"\xff\xd8") and not store.path_for(2, "WEBP").exists()
    catalog.delete_images([1, 2])
    assert store.prune(catalog) == 2
    assert store.read(1) is None and store.read(2) is None and store.read(3).endswith(b"\x03")
    assert store.prune(catalog) == 0  # pruned up to the current change sequence
    catalog.close()


@pytest.mark.slow
def test_indexing_stores_replaces_and_removes_thumbnails(tmp_path, runner):
    photos = tmp_path / "photos"
    paths = make_images(photos, 8)
    big = photos / "big.jpg"
    Image.new("RGB", (1200, 900), (10, 200, 10)).save(big)
    folder = tmp_path / "index"
    with Index(folder) as index:
        index.add(photos, model=ModelSpec("clipdex-tiny"), workers=0)
        rows = index.catalog.images(range(1, 20))
    store = ThumbnailStore(folder)
    by_uri = {row.uri: row for row in rows.values()}
    assert len(by_uri) == 9
    for row in rows.values():
        picture = decoded(store.read(row.id))
        if row.uri != str(big):
            assert picture.size == (row.width, row.height)  # small images: their own size
        else:  # made from the pixels decoded for the model: smaller, same shape
            assert max(picture.size) <= THUMB_SIDE
            assert picture.size[0] / picture.size[1] == pytest.approx(4 / 3, rel=0.05)
    # A rewritten image gets a new thumbnail; deleted ones lose theirs.
    changed = by_uri[str(paths[1])]
    before = store.read(changed.id)
    Image.new("RGB", (30, 20), (255, 255, 0)).save(paths[1])
    for path in paths[2:4]:
        path.unlink()
    run_cli(runner, "index", str(photos), "--index", str(folder))
    after = decoded(store.read(changed.id))
    assert after.size == (30, 20) and store.read(changed.id) != before
    for path in paths[2:4]:
        assert store.read(by_uri[str(path)].id) is None
    assert store.read(by_uri[str(paths[0])].id) is not None
    before_move = store.read(by_uri[str(paths[0])].id)
    # A moved file reuses its vector, and its thumbnail comes along.
    kept = by_uri[str(paths[0])]
    moved = photos / "moved.png"
    paths[0].rename(moved)
    run_cli(runner, "index", str(photos), "--index", str(folder))
    with Index(folder) as index:
        new_id = next(
            hit.id for hit in index.search(like=changed.id, k=20) if hit.uri == str(moved)
        )
    assert new_id != kept.id and store.read(new_id) == before_move
    assert store.read(kept.id) is None  # the old id's was pruned with it
    run_cli(runner, "forget", str(photos), "--index", str(folder))
    assert [p for p in store.root.rglob("*") if p.is_file() and p.name != ".pruned"] == []


@pytest.mark.slow
def test_no_thumbnails_stores_none(tmp_path, runner):
    make_images(tmp_path / "photos", 3)
    run_cli(
        runner,
        "index",
        str(tmp_path / "photos"),
        "--index",
        str(tmp_path / "i"),
        *TINY,
        "--no-thumbnails",
    )
    assert not (tmp_path / "i" / "thumbs").exists()
