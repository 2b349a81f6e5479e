"""EXIF metadata: read once per image at index time, sanity-checked, stored in photo_meta,
filled in for older images by the next run (nothing re-embedded), shown in search rows,
status and the Python API."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
from datetime import datetime, timezone

import pytest
from PIL import Image

import clipdex
from clipdex.media import exif as exif_module
from clipdex.media.decode import load_image_for, read_photo_meta
from clipdex.media.exif import capture_time, photo_meta
from clipdex.types import PhotoMeta
from conftest import TINY, make_images, run_cli
from exif_photos import exif_block, make_photo


def meta_of(**fields) -> PhotoMeta:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 30, 10)).save(
        buffer, format="JPEG", exif=exif_block(**fields).tobytes()
    )
    loaded = load_image_for(buffer.getvalue())
    assert read_photo_meta(buffer.getvalue()) == loaded.meta  # header-only read agrees
    return loaded.meta


def test_exif_fields_are_read():
    meta = meta_of(
        taken="2023:06:01 14:03:00",
        offset="+02:00",
        make="Canon",
        model="Canon EOS R5",
        gps=(-33.8568, -151.2153),
        orientation=3,
    )
    assert meta.taken_at == datetime(2023, 6, 1, 12, 3, tzinfo=timezone.utc).timestamp()
    assert meta.taken_local == "2023-06-01T14:03:00+02:00"
    assert meta.camera == "Canon EOS R5"  # the make is not said twice
    assert meta.lat == pytest.approx(-33.8568, abs=1e-6)
    assert meta.lon == pytest.approx(-151.2153, abs=1e-6)
    assert meta.orientation == 3
    # without an offset: the camera's clock, read as UTC for the epoch
    plain = meta_of(taken="2021:12:31 23:59:59", make="Google", model="Pixel 7")
    assert plain.taken_local == "2021-12-31T23:59:59"
    assert plain.taken_at == datetime(2021, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()
    assert plain.camera == "Google Pixel 7" and plain.lat is None and plain.orientation is None
    assert meta_of() == PhotoMeta()


@pytest.mark.parametrize(
    "fields",
    [
        {"taken": "1900:01:01 00:00:00"},  # a reset clock
        {"taken": "2100:01:01 00:00:00"},  # the future
        {"taken": "0000:00:00 00:00:00"},
        {"taken": "2023:13:01 10:00:00"},
        {"taken": "2023:02:30 10:00:00"},
        {"taken": "    :  :     :  :  "},
        {"taken": "yesterday"},
    ],
)
def test_lying_dates_are_dropped(fields):
    assert meta_of(**fields, make="Nikon").taken_at is None
    assert meta_of(**fields, make="Nikon").taken_local is None
    assert meta_of(**fields, make="Nikon").camera == "Nikon"  # the rest still counts


@pytest.mark.parametrize(
    "gps_raw",
    [
        {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (2.0, 0.0, 0.0)},  # latitude beyond 90
        {1: "N", 2: (45.0, 0.0, 0.0), 3: "E", 4: (181.0, 0.0, 0.0)},
        {1: "X", 2: (45.0, 0.0, 0.0), 3: "E", 4: (2.0, 0.0, 0.0)},  # not N or S
        {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)},  # no fix: 0,0
        {1: "N", 2: (45.0, 0.0, 0.0)},  # a latitude alone
    ],
)
def test_lying_positions_are_dropped(gps_raw):
    meta = meta_of(gps_raw=gps_raw, taken="2020:01:01 10:00:00")
    assert (meta.lat, meta.lon) == (None, None) and meta.taken_at is not None


def test_offsets_and_odd_values():
    assert capture_time("2023:06:01 14:03:00", "-05:30")[1] == "2023-06-01T14:03:00-05:30"
    assert capture_time("2023:06:01 14:03:00", "+25:00")[1] == "2023-06-01T14:03:00"  # ignored
    assert capture_time(b"2023:06:01 14:03:00\x00", None)[1] == "2023-06-01T14:03:00"
    assert capture_time(12345, None) == (None, None)
    assert meta_of(orientation=9).orientation is None


def _tiff(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A big-endian TIFF header and one IFD of (tag, type, count, 4-byte value) entries."""
    out = b"MM\x00*" + struct.pack(">IH", 8, len(entries))
    for tag, kind, count, value in entries:
        out += struct.pack(">HHI", tag, kind, count) + value
    return out + struct.pack(">I", 0)


MALFORMED = {
    "garbage": b"MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(range(256)) * 2,
    "pointers out of the file": _tiff(
        [
            (0x8769, 4, 1, struct.pack(">I", 0x7FFFFFF0)),
            (0x8825, 4, 1, struct.pack(">I", 0xFFFFFF00)),
        ]
    ),
    "sub-IFDs pointing at themselves": _tiff(
        [(0x8769, 4, 1, struct.pack(">I", 8)), (0x8825, 4, 1, struct.pack(">I", 8))]
    ),
    "a camera name longer than the file": _tiff([(0x010F, 2, 0x7FFFFFFF, struct.pack(">I", 9))]),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_exif_leaves_metadata_empty_not_the_image(name):
    """A JPEG whose APP1 EXIF block is broken still decodes; its metadata is empty."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 10)).save(
        buffer, format="JPEG", exif=b"Exif\x00\x00" + MALFORMED[name]
    )
    loaded = load_image_for(buffer.getvalue())
    assert loaded.image.size == (32, 32) and loaded.meta == PhotoMeta()
    assert read_photo_meta(buffer.getvalue()) == PhotoMeta()


def test_metadata_reading_never_raises():
    """Whatever Pillow raises while parsing metadata, the image keeps empty fields."""

    class Exif(dict):
        def get_ifd(self, tag):
            raise SyntaxError("not a TIFF IFD")

    class Hostile:
        def __init__(self):
            self.info = {}

        def getexif(self):
            raise OSError("truncated EXIF")

    class Odd:
        def __init__(self):
            self.info = {"original_orientation": "6"}

        def getexif(self):
            return Exif({0x010F: b"Fuji\x00\x00", 0x0110: 17, 0x0112: 6})

    assert photo_meta(Hostile()) == PhotoMeta()
    assert photo_meta(Odd()) == PhotoMeta(camera="Fuji")


@pytest.mark.slow
def test_a_broken_exif_block_never_fails_the_image(tmp_path):
    photos = tmp_path / "photos"
    for number, block in enumerate(MALFORMED.values()):
        make_photo(photos / f"b{number}.jpg", seed=number)
        with Image.open(photos / f"b{number}.jpg") as image:
            image.load()
            image.save(photos / f"b{number}.jpg", exif=b"Exif\x00\x00" + block)
    report = clipdex.open_index(tmp_path / "idx").add(
        photos, model=clipdex.ModelSpec("clipdex-tiny"), workers=0
    )
    assert report.added == len(MALFORMED) and report.failed == 0


def _photos(folder, count=6):
    for i in range(count):
        make_photo(
            folder / f"p{i}.jpg",
            seed=i,
            exif=exif_block(
                taken=f"2022:0{i + 1}:15 10:00:00",
                offset="+01:00",
                make="Google",
                model=f"Pixel {i % 2 + 7}",
                gps=(48.0 + i, 2.0),
            ),
        )


def test_search_rows_status_and_api_show_metadata(runner, tmp_path, index_dir):
    photos = tmp_path / "photos"
    _photos(photos)
    make_images(photos, 2, prefix="plain")  # no EXIF: empty fields
    run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    rows = json.loads(run_cli(runner, "search", "x", "-k", "8", "--format", "json").stdout)
    by_name = {row["uri"].rsplit("/", 1)[1]: row for row in rows}
    assert by_name["p2.jpg"]["taken_at"] == "2022-03-15T10:00:00+01:00"
    assert by_name["p2.jpg"]["camera"] == "Google Pixel 7"
    assert by_name["p2.jpg"]["lat"] == pytest.approx(50.0) and by_name["p2.jpg"]["lon"] == 2.0
    assert by_name["plain0000.png"]["taken_at"] is None and by_name["plain0001.jpg"]["lat"] is None
    status = json.loads(run_cli(runner, "status", "--format", "json").stdout)["photos"]
    assert status["dated"] == 6 and status["placed"] == 6 and status["with_camera"] == 6
    assert status["cameras"] == 2 and status["unread"] == 0
    first = datetime(2022, 1, 15, 9, tzinfo=timezone.utc).timestamp()
    assert status["first_taken"] == first
    table = run_cli(runner, "status").stdout
    assert "photos:   6 dated (2022-01-15 to 2022-06-15), 6 with a place" in table
    with clipdex.open_index(index_dir) as index:
        hit = next(h for h in index.search("x", k=8) if h.uri.endswith("p0.jpg"))
        assert hit.camera == "Google Pixel 7" and hit.taken_utc == first


@pytest.mark.slow
def test_older_images_get_metadata_without_reembedding(runner, tmp_path, index_dir):
    """Rows missing (an index made before schema 5) are read by the next run; nothing is
    embedded again, and a re-embedded (changed) image gets its new metadata."""
    photos = tmp_path / "photos"
    _photos(photos, 5)
    make_photo(photos / "broken.jpg", seed=1).write_bytes(b"\xff\xd8\xff not really")
    run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    with sqlite3.connect(index_dir / "catalog.sqlite") as db:
        db.execute("DELETE FROM photo_meta")
    db.close()
    assert json.loads(run_cli(runner, "status", "--format", "json").stdout)["photos"]["unread"] == 5
    assert "5 not read yet" in run_cli(runner, "status").stdout
    phases = []
    with clipdex.open_index(index_dir) as index:
        report = index.add(photos, workers=0, on_progress=lambda p, d, t: phases.append((p, d, t)))
    assert report.meta_filled == 5 and report.embedded == 0 and report.unchanged == 6
    assert ("metadata", 5, 5) in phases
    status = json.loads(run_cli(runner, "status", "--format", "json").stdout)["photos"]
    assert status["unread"] == 0 and status["dated"] == 5
    # a second run has nothing left to read
    out = run_cli(runner, "index", str(photos), "--workers", "0")
    assert "photo metadata" not in out.output
    # content changed: re-embedded, with the new file's metadata
    make_photo(photos / "p0.jpg", seed=40, exif=exif_block(taken="2024:02:29 08:00:00"))
    run_cli(runner, "index", str(photos), "--workers", "0")
    with clipdex.open_index(index_dir) as index:
        hit = next(h for h in index.search("x", k=6) if h.uri.endswith("p0.jpg"))
    assert hit.taken_at == "2024-02-29T08:00:00" and hit.camera is None


def test_switched_off_reading_leaves_rows_for_the_next_run(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    _photos(photos, 3)
    index = clipdex.open_index(tmp_path / "idx")
    monkeypatch.setattr(exif_module, "READ_EXIF", False)
    report = index.add(photos, model=clipdex.ModelSpec("clipdex-tiny"), workers=0)
    assert report.meta_filled == 0 and index.status().photos.unread == 3
    monkeypatch.setattr(exif_module, "READ_EXIF", True)
    assert index.add(photos, workers=0).meta_filled == 3
    assert index.status().photos.dated == 3


@pytest.mark.slow
def test_a_schema_4_catalog_reads_without_photos_then_fills_them_in(tmp_path):
    """A catalog made before photo_meta: read-only opens search without metadata and refuse
    photo filters in one line; the next index run migrates it and reads every photo's."""
    from clipdex.errors import QueryError
    from clipdex.search.filters import Filters, candidate_ids, with_photo_meta
    from clipdex.storage.catalog import Catalog
    from clipdex.storage.photo_meta import PhotoMetaStore

    photos = tmp_path / "photos"
    _photos(photos, 4)
    index_dir = tmp_path / "idx"
    clipdex.open_index(index_dir).add(photos, model=clipdex.ModelSpec("clipdex-tiny"), workers=0)
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    db.executescript(
        "DROP TABLE photo_meta; UPDATE meta SET value = '4' WHERE key = 'schema_version';"
    )
    db.close()
    catalog = Catalog(index_dir, read_only=True)
    try:
        store = PhotoMetaStore(catalog)
        assert not store.available and store.summary().dated == 0 and store.of([1, 2]) == {}
        with pytest.raises(QueryError, match="older clipdex"):
            candidate_ids(catalog, Filters(camera="Pixel"))
        assert with_photo_meta(catalog, []) == []
    finally:
        catalog.close()
    with clipdex.open_index(index_dir) as index:
        report = index.add(photos, workers=0)
        assert report.meta_filled == 4 and report.embedded == 0
        assert [h.camera for h in index.search("x", k=4, filters=Filters(camera="pixel 8"))] == [
            "Google Pixel 8"
        ] * 2
