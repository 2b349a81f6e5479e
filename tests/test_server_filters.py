"""The API's photo filters (after, before, camera, near): the same candidates as
`Index.search(filters=...)`, batched or not, by text, upload or stored image; rows carry
the photo's metadata; a bad filter value is a 400 with one message."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from clipdex.api import Index
from clipdex.models.spec import ModelSpec
from clipdex.search.filters import Filters
from clipdex.server import create_app
from serve_helpers import FP32, wait_ready
from test_filters import write_photos

pytestmark = pytest.mark.slow  # indexes 48 photos with EXIF and serves them

FILTERS = [
    {"camera": "pixel"},
    {"after": "2023-01-01", "before": "2024-01-01"},
    {"near": "48.8566,2.3522,60km"},
    {"camera": "Pixel 8", "near": "48.8566,2.3522,60km"},
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    write_photos(root / "p")
    folder = root / "index"
    with Index(folder, precision="fp32") as index:
        index.add(root / "p", model=ModelSpec("clipdex-tiny"), workers=0)
    return root


@pytest.mark.parametrize("batching", [True, False])
def test_filters_restrict_text_searches_as_the_library_does(photos, batching):
    app = create_app(photos / "index", options=replace(FP32, batching=batching))
    with TestClient(app) as client, Index(photos / "index", precision="fp32") as index:
        wait_ready(client)
        for where in FILTERS:
            got = client.get("/api/v1/search", params={"q": "a photo", "k": 48, **where})
            assert got.status_code == 200, got.text
            rows = got.json()["results"]
            expected = index.search("a photo", k=48, filters=Filters(**where))
            assert [r["id"] for r in rows] == [h.id for h in expected]
            assert rows and len(rows) < 48  # each filter keeps some photos, not all
            if "camera" in where:
                assert all(where["camera"].lower() in (r["camera"] or "").lower() for r in rows)
            assert got.json()["query"]["camera"] == where.get("camera")


def test_filters_apply_to_uploads_and_stored_images(photos):
    app = create_app(photos / "index", options=FP32)
    with TestClient(app) as client, Index(photos / "index", precision="fp32") as index:
        wait_ready(client)
        allowed = {h.id for h in index.search("x", k=48, filters=Filters(camera="iphone"))}
        data = (photos / "p" / "p00.jpg").read_bytes()
        upload = client.post(
            "/api/v1/search",
            files={"image": ("q.jpg", io.BytesIO(data), "image/jpeg")},
            data={"k": "48", "camera": "iphone"},
        )
        assert upload.status_code == 200, upload.text
        assert {r["id"] for r in upload.json()["results"]} == allowed
        like = client.get("/api/v1/search", params={"like": 1, "k": 48, "camera": "iphone"})
        assert {r["id"] for r in like.json()["results"]} == allowed - {1}


@pytest.mark.parametrize(
    "bad",
    [{"after": "yesterday"}, {"near": "48.8,2.3"}, {"near": "91,0,1km"}, {"camera": " "}],
)
def test_a_bad_filter_value_is_a_400_with_one_message(photos, bad):
    app = create_app(photos / "index", options=FP32)
    with TestClient(app) as client:
        wait_ready(client)  # the model's loading thread is done before the app closes
        got = client.get("/api/v1/search", params={"q": "x", **bad})
        assert got.status_code == 400
        assert "\n" not in got.json()["detail"] and got.json()["detail"]
