"""Photo filters (--after/--before/--camera/--near, with --label) restrict the candidates
before ranking: equal to brute force over the filtered set, on flat and IVF stores;
--sort date; bad filter values are one-line errors; no match is an empty result."""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import clipdex
from clipdex.errors import QueryError
from clipdex.search.filters import Filters, Near, bounding_box, parse_near, parse_time
from clipdex.vectors import ivf as ivf_module
from conftest import TINY, run_cli
from exif_photos import exif_block, make_photo

CAMERAS = [("Google", "Pixel 7"), ("Google", "Pixel 8"), ("Apple", "iPhone 14"), (None, None)]
PLACES = [(48.8566, 2.3522), (51.5074, -0.1278), (40.7128, -74.006), None, (-16.5, 179.95)]


def truth(i: int) -> dict:
    """The metadata photo i is written with (and what a filter should see)."""
    make, model = CAMERAS[i % 4]
    place = PLACES[i % 5]
    if place is not None:  # spread around the place, up to ~40 km
        place = (place[0] + (i % 7 - 3) * 0.09, place[1] + (i % 3 - 1) * 0.12)
        place = (place[0], place[1] - 360 if place[1] > 180 else place[1])
    dated = i % 6 != 5
    local = datetime(2022 + i % 3, 1 + i % 12, 1 + i % 27, (i * 5) % 24, 30)
    offset = ["+02:00", "-05:00", None][i % 3]
    return {
        "camera": f"{make} {model}" if make else None,
        "place": place,
        "local": local if dated else None,
        "offset": offset if dated else None,
    }


def utc(t: dict) -> float | None:
    """The UTC epoch of a photo's capture time (its clock as UTC without an offset)."""
    if t["local"] is None:
        return None
    offset = t["offset"] or "+00:00"
    hours, minutes = offset[1:].split(":")
    shift = (int(hours) * 60 + int(minutes)) * (1 if offset[0] == "+" else -1)
    return t["local"].replace(tzinfo=timezone.utc).timestamp() - shift * 60


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    p1, p2 = math.radians(a[0]), math.radians(b[0])
    dl = math.radians(b[1] - a[1])
    cos = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0088 * math.acos(max(-1.0, min(1.0, cos)))


COUNT = 48


def write_photos(folder) -> None:
    for i in range(COUNT):
        t = truth(i)
        make, model = CAMERAS[i % 4]
        exif = exif_block(
            taken=t["local"].strftime("%Y:%m:%d %H:%M:%S") if t["local"] else None,
            offset=t["offset"],
            make=make,
            model=model,
            gps=t["place"],
        )
        make_photo(folder / f"p{i:02d}.jpg", seed=i, exif=exif)


@pytest.fixture
def small_ivf(monkeypatch):
    monkeypatch.setattr(ivf_module, "POINTS_PER_LIST", 4)
    monkeypatch.setattr(ivf_module, "MIN_NLIST", 4)
    monkeypatch.setattr(ivf_module.IVFStore, "min_train", 16)


#: (filters, which photos meet them, by their truth)
CASES = [
    (Filters(after="2023-01-01"), lambda t: t["local"] and t["local"] >= datetime(2023, 1, 1)),
    (
        Filters(after="2022-03-01", before="2023-09-01T12:00:00"),
        lambda t: t["local"] and datetime(2022, 3, 1) <= t["local"] < datetime(2023, 9, 1, 12),
    ),
    (
        Filters(before=datetime(2023, 6, 1, tzinfo=timezone.utc)),
        lambda t: t["local"] and utc(t) < datetime(2023, 6, 1, tzinfo=timezone.utc).timestamp(),
    ),
    (Filters(camera="pixel"), lambda t: t["camera"] and "pixel" in t["camera"].lower()),
    (
        Filters(near="48.8566,2.3522,20.5km"),  # corners of its box lie outside
        lambda t: t["place"] and km(t["place"], (48.8566, 2.3522)) <= 20.5,
    ),
    (
        Filters(near=(-16.5, -179.99, 30_000.0)),  # across the antimeridian
        lambda t: t["place"] and km(t["place"], (-16.5, -179.99)) <= 30,
    ),
    (
        Filters(after=date(2022, 6, 1), camera="Pixel 8", near="51.5,-0.13,40mi"),
        lambda t: (
            t["local"]
            and t["local"] >= datetime(2022, 6, 1)
            and t["camera"] == "Google Pixel 8"
            and t["place"]
            and km(t["place"], (51.5, -0.13)) <= 40 * 1.609344
        ),
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_filters_equal_brute_force_over_the_filtered_set(tmp_path, kind, small_ivf):
    photos = tmp_path / "photos"
    write_photos(photos)
    index = clipdex.open_index(tmp_path / "idx")
    index.add(photos, model=clipdex.ModelSpec("clipdex-tiny"), workers=0, index_type=kind)
    assert index.vectors.kind == kind
    assert index.vectors.stats().parameters.get("trained", True)
    chunks = list(index.catalog.iter_vectors())
    ids = np.concatenate([c[0] for c in chunks])
    vectors = np.concatenate([c[1] for c in chunks])
    uris = index.catalog.uris(ids.tolist())
    number = {int(i): int(Path(uris[int(i)]).stem[1:]) for i in ids}
    query = index.embedder().encode_texts(["a photo"])[0]
    scores = vectors @ query
    for filters, meets in CASES:
        wanted = np.array([bool(meets(truth(number[int(i)]))) for i in ids])
        assert 0 < wanted.sum() < COUNT, filters  # each case filters something
        order = np.argsort(-scores[wanted], kind="stable")
        for k in (3, 50):
            expected = ids[wanted][order][:k].tolist()
            hits = index.search("a photo", k=k, filters=filters)
            assert [h.id for h in hits] == expected, (filters, k)
            assert len(hits) == min(k, int(wanted.sum()))  # k from within when that many exist
            for hit in hits:
                assert hit.score == pytest.approx(float(scores[ids == hit.id][0]), abs=1e-5)
    index.close()


@pytest.mark.slow
def test_cli_filters_with_label_sort_and_no_match(runner, tmp_path, index_dir):
    photos = tmp_path / "photos"
    write_photos(photos)
    run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    run_cli(runner, "classify", "--labels", "red,green,blue")
    base = ("search", "a photo", "-k", "50", "--format", "json")
    labelled = {h["id"] for h in json.loads(run_cli(runner, *base, "--label", "red").stdout)}
    pixel = {h["id"] for h in json.loads(run_cli(runner, *base, "--camera", "Pixel").stdout)}
    both = json.loads(run_cli(runner, *base, "--label", "red", "--camera", "Pixel").stdout)
    assert {h["id"] for h in both} == labelled & pixel and both  # ANDed
    assert all("Pixel" in h["camera"] for h in both)
    # --sort date: the same k best, oldest first, the undated after them (by score)
    by_score = json.loads(run_cli(runner, *base[:3], "12", "--format", "json").stdout)
    by_date = json.loads(
        run_cli(runner, *base[:3], "12", "--format", "json", "--sort", "date").stdout
    )
    assert {h["id"] for h in by_date} == {h["id"] for h in by_score}
    with clipdex.open_index(index_dir) as index:
        hits = index.search("a photo", k=12, sort="date")
    dated = [h.taken_utc for h in hits if h.taken_utc is not None]
    assert dated == sorted(dated) and len(dated) < 12
    undated = [h for h in hits if h.taken_utc is None]
    assert hits[len(dated) :] == undated
    assert [h.score for h in undated] == sorted((h.score for h in undated), reverse=True)
    assert [h["id"] for h in by_date] == [h.id for h in hits]
    # nothing matches: an empty result, exit 0, a note on stderr
    none = run_cli(runner, *base, "--camera", "Nokia")
    assert json.loads(none.stdout) == [] and "no indexed image matches" in none.stderr
    none = run_cli(runner, "search", "x", "--after", "2030-01-01", "--before", "2031-01-01")
    assert "no indexed image matches" in none.stderr
    # the table shows the capture time when there is one
    table = run_cli(runner, "search", "a photo", "-k", "3", "--camera", "iPhone").stdout
    assert table.splitlines()[0].split() == ["rank", "score", "taken_at", "uri"]


BAD_VALUES = [
    (("--after", "2023-13-01"), "cannot read the date '2023-13-01'"),
    (("--before", "last week"), "cannot read the date 'last week'"),
    (("--near", "48.8,2.3,25"), "the radius needs a unit, km, m or mi"),
    (("--near", "48.8,2.3,25 parsecs"), "the radius needs a unit"),
    (("--near", "95,2.3,25km"), "latitude must be between -90 and 90"),
    (("--near", "48,-181,25km"), "longitude must be between -180 and 180"),
    (("--near", "48,2,0km"), "the radius must be more than 0"),
    (("--near", "48,2"), "a place is LAT,LON,RADIUS"),
    (("--near", "north,2,5km"), "latitude and longitude must be numbers"),
    (("--camera", "  "), "the camera filter is empty"),
    (("--sort", "size"), "Invalid value for '--sort'"),
]


def test_bad_filter_values_are_one_line_errors(runner, tmp_path):
    photos = tmp_path / "photos"
    make_photo(photos / "a.jpg")
    run_cli(runner, "index", str(photos), *TINY, "--workers", "0")
    for args, message in BAD_VALUES:
        out = run_cli(runner, "search", "x", *args, expect=2 if args[0] == "--sort" else 1)
        assert message in out.output and "Traceback" not in out.output, (args, out.output)


def test_parsing_rules():
    assert parse_time("2023-06-01") == (None, "2023-06-01T00:00:00")
    assert parse_time("2023-06-01 18:30") == (None, "2023-06-01T18:30:00")
    instant = datetime(2023, 6, 1, 16, 30, tzinfo=timezone.utc).timestamp()
    assert parse_time("2023-06-01T18:30:00+02:00") == (instant, None)
    assert parse_time("2023-06-01T16:30Z") == (instant, None)
    assert parse_near("1,2,3mi") == Near(1.0, 2.0, 3 * 1609.344)
    assert parse_near("1,2, 500 M") == Near(1.0, 2.0, 500.0)
    assert bounding_box(Near(89.9, 0, 50_000))[2:] == (-180.0, 180.0)  # reaches the pole
    _, _, west, east = bounding_box(Near(0, 179.9, 50_000))
    assert west > east  # crosses the antimeridian
    with pytest.raises(QueryError):
        Filters(near=(1.0, 2.0))
    with pytest.raises(QueryError):
        clipdex.open_index().search("x", sort="size")


def test_time_rule_local_clock_versus_instant(tmp_path):
    """01:00 on June 1st at +02:00 is still May 31st in UTC: a plain date compares the
    photo's own clock, a datetime with an offset the instant."""
    photos = tmp_path / "photos"
    make_photo(photos / "a.jpg", exif=exif_block(taken="2023:06:01 01:00:00", offset="+02:00"))
    make_photo(photos / "b.jpg", seed=1, exif=exif_block(taken="2023:05:31 23:30:00"))
    index = clipdex.open_index(tmp_path / "idx")
    index.add(photos, model=clipdex.ModelSpec("clipdex-tiny"), workers=0)

    def names(**filters) -> list[str]:
        hits = index.search("x", filters=Filters(**filters), sort="date")
        return [h.uri.rsplit("/", 1)[1] for h in hits]

    assert names(after="2023-06-01") == ["a.jpg"]
    assert names(after="2023-06-01T00:00:00Z") == []
    assert names(before="2023-06-01T00:00:00Z") == ["a.jpg", "b.jpg"]  # 23:00Z, 23:30Z
    assert names(before="2023-06-01") == ["b.jpg"]
    index.close()
