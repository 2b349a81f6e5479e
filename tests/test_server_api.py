"""`clipdex serve`'s API through FastAPI's TestClient: every endpoint answers what the
library answers, with the contract's shapes; errors are one JSON message."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipdex.api import Index
from clipdex.server import create_app
from clipdex.storage.catalog import Catalog
from serve_helpers import FP32, LABELS, build_index, wait_ready

pytestmark = pytest.mark.slow  # builds and serves a tiny-model index (~15 s on 2 busy cores)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = build_index(tmp_path_factory.mktemp("served"))
    app = create_app(folder, options=replace(FP32, batch_window_ms=30))
    with TestClient(app) as client, Index(folder, precision="fp32") as index:
        wait_ready(client)
        yield client, index, app


def top_label(client) -> str:
    """The label most images carry in the saved run (a random tiny model leaves some empty)."""
    run = client.get("/api/v1/runs").json()[0]
    return max(run["labels"], key=lambda x: x["count"])["label"]


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [row["id"] for row in response.json()["results"]]


def test_text_search_answers_what_the_library_answers(served):
    client, index, _ = served
    response = client.get("/api/v1/search", params={"q": "a red circle", "k": 5})
    body = response.json()
    expected = index.search("a red circle", k=5)
    assert ids(response) == [hit.id for hit in expected]
    assert [row["score"] for row in body["results"]] == pytest.approx(
        [hit.score for hit in expected], abs=1e-6
    )
    first = body["results"][0]
    assert set(first) == {
        *("id", "uri", "score", "width", "height", "thumbnail_url", "image_url"),
        *("taken_at", "camera", "lat", "lon"),  # the photo's metadata (null without EXIF)
    }
    assert first["uri"] == expected[0].uri and first["width"] == expected[0].width
    assert first["thumbnail_url"] == f"/api/v1/images/{first['id']}/thumbnail"
    assert body["k"] == 5 and body["offset"] == 0 and body["query"]["q"] == "a red circle"


def test_offset_pages_through_the_same_ranking(served):
    client, index, _ = served
    whole = [hit.id for hit in index.search("blue", k=12)]
    pages = [
        ids(client.get("/api/v1/search", params={"q": "blue", "k": 4, "offset": offset}))
        for offset in (0, 4, 8)
    ]
    assert [i for page in pages for i in page] == whole


def test_min_score_and_label_filter(served):
    client, index, _ = served
    scores = [hit.score for hit in index.search("green", k=36)]
    # cut in the widest gap of the middle half, so float noise between the server's text
    # path and the library's cannot move a row across it
    m = max(range(len(scores) // 4, 3 * len(scores) // 4), key=lambda i: scores[i - 1] - scores[i])
    cut = (scores[m - 1] + scores[m]) / 2
    kept = client.get("/api/v1/search", params={"q": "green", "k": 36, "min_score": cut}).json()
    assert all(row["score"] >= cut for row in kept["results"])
    assert len(kept["results"]) == m
    label = top_label(client)
    labelled = ids(client.get("/api/v1/search", params={"q": "x", "k": 36, "label": label}))
    assert labelled and labelled == [hit.id for hit in index.search("x", k=36, label=label)]
    for image_id in labelled:
        labels = client.get(f"/api/v1/images/{image_id}").json()["labels"]
        assert labels[0]["label"] == label


def test_like_searches_by_a_stored_image_and_leaves_it_out(served):
    client, index, _ = served
    found = ids(client.get("/api/v1/search", params={"like": 3, "k": 5}))
    assert found == [hit.id for hit in index.search(like=3, k=5)]
    assert 3 not in found and len(found) == 5


def test_upload_search_alone_and_with_text(served, tmp_path):
    client, index, _ = served
    path = next((index.folder.parent / "shapes").glob("*.png"))
    data = path.read_bytes()
    alone = client.post("/api/v1/search", files={"image": ("q.png", data, "image/png")})
    assert ids(alone) == [hit.id for hit in index.search(image=path, k=20)]
    assert alone.json()["results"][0]["uri"] == str(path)  # itself, at cosine 1
    both = client.post(
        "/api/v1/search",
        files={"image": ("q.png", data, "image/png")},
        data={"q": "a blue square", "k": "7", "offset": "1"},
    )
    assert ids(both) == [hit.id for hit in index.search("a blue square", image=path, k=8)][1:]


def test_image_metadata_original_and_thumbnail(served):
    client, index, _ = served
    row = index.catalog.images([5])[5]
    body = client.get("/api/v1/images/5").json()
    assert body["uri"] == row.uri and body["format"] == "PNG"
    stored = Path(row.uri).read_bytes()
    assert body["size"] == len(stored)
    assert (body["width"], body["height"]) == (row.width, row.height)
    assert [label["run"] for label in body["labels"]] == [1]
    original = client.get(body["image_url"])
    assert original.headers["content-type"] == "image/png"
    assert original.headers["x-content-type-options"] == "nosniff"
    assert original.content == stored
    thumb = client.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] in (
        "image/webp",
        "image/jpeg",
    )
    picture = Image.open(io.BytesIO(thumb.content))
    assert picture.size == (row.width, row.height)  # 64 px: never enlarged
    again = client.get(body["thumbnail_url"], headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_runs_and_zero_shot_labels_of_an_upload(served):
    client, index, _ = served
    runs = client.get("/api/v1/runs").json()
    assert len(runs) == 1 and [x["label"] for x in runs[0]["labels"]] == LABELS
    assert sum(x["count"] for x in runs[0]["labels"]) == index.status().images
    image_id = 7
    stored_top = client.get(f"/api/v1/images/{image_id}").json()["labels"][0]
    data = client.get(f"/api/v1/images/{image_id}/original").content
    answer = client.post(
        f"/api/v1/runs/{runs[0]['id']}/classify", files={"image": ("x.png", data, "image/png")}
    )
    rows = answer.json()
    assert sorted(row["label"] for row in rows) == sorted(LABELS)
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    assert sum(row["probability"] for row in rows) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["label"] == stored_top["label"]
    assert rows[0]["score"] == pytest.approx(stored_top["score"], abs=1e-4)
    missing = client.post("/api/v1/runs/99/classify", files={"image": ("x.png", data)})
    assert missing.status_code == 404 and "99" in missing.json()["detail"]


def test_status_probes_page_and_schema(served):
    client, index, _ = served
    status = client.get("/api/v1/status").json()
    assert status["ready"] and status["images"] == index.status().images
    assert status["model"].startswith("clipdex-tiny")
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    schema = client.get("/openapi.json").json()
    for path in (
        "/api/v1/search",
        "/api/v1/images/{image_id}",
        "/api/v1/images/{image_id}/original",
        "/api/v1/images/{image_id}/thumbnail",
        "/api/v1/runs",
        "/api/v1/runs/{run_id}/classify",
        "/api/v1/status",
    ):
        assert path in schema["paths"], path
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize(
    "params, status",
    [
        ({}, 400),
        ({"q": "   "}, 400),
        ({"q": "x", "k": 0}, 422),
        ({"q": "x", "k": 1001}, 422),
        ({"q": "x", "offset": -1}, 422),
        ({"q": "x", "min_score": 2}, 422),
        ({"q": "x", "label": "no such label"}, 400),
        ({"like": 10_000}, 404),
        ({"like": 1, "q": "x"}, 400),
    ],
)
def test_bad_searches_are_one_json_message(served, params, status):
    client, _, _ = served
    response = client.get("/api/v1/search", params=params)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail


def test_concurrent_queries_are_batched_and_each_gets_its_own_answer(served):
    client, index, app = served
    label = top_label(client)
    queries = [(f"shape number {i}", 1 + i % 5, label if i % 4 == 0 else None) for i in range(24)]

    def ask(query):
        q, k, label = query
        params = {"q": q, "k": k} | ({"label": label} if label else {})
        return ids(client.get("/api/v1/search", params=params))

    before = len(app.state.batcher.sizes)
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, queries))
    for (q, k, label), got in zip(queries, answers, strict=True):
        assert got == [hit.id for hit in index.search(q, k=k, label=label)]
    sizes = app.state.batcher.sizes[before:]
    assert sum(sizes) == len(queries) and max(sizes) > 1, sizes


def test_without_batching_answers_are_the_same(served):
    _, index, _ = served
    app = create_app(index.folder, options=replace(FP32, batching=False))
    with TestClient(app) as client:
        wait_ready(client)
        assert ids(client.get("/api/v1/search", params={"q": "red", "k": 6})) == [
            hit.id for hit in index.search("red", k=6)
        ]
        assert app.state.batcher.sizes == []


def test_images_indexed_meanwhile_appear_and_deleted_ones_go(tmp_path):
    folder = build_index(tmp_path, count=12)
    app = create_app(folder, options=FP32)
    with TestClient(app) as client:
        wait_ready(client)
        assert client.get("/api/v1/status").json()["images"] == 12
        from clipdex.samples import write_samples

        write_samples(tmp_path / "more", 6, seed=9, size=48)
        with Index(folder) as writer:
            writer.add(tmp_path / "more", workers=0)
        found = client.get("/api/v1/search", params={"q": "x", "k": 100}).json()["results"]
        assert len(found) == 18  # no restart
        new = max(row["id"] for row in found)
        assert client.get(f"/api/v1/images/{new}/thumbnail").status_code == 200
        with Index(folder) as writer:
            writer.forget(tmp_path / "more")
        found = client.get("/api/v1/search", params={"q": "x", "k": 100}).json()["results"]
        assert len(found) == 12 and new not in {row["id"] for row in found}
        for tail in ("", "/thumbnail", "/original"):
            gone = client.get(f"/api/v1/images/{new}{tail}")
            assert gone.status_code == 404, (tail, gone.text)


def test_not_ready_until_the_index_has_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    Catalog(tmp_path / "empty").close()  # an index folder with nothing indexed yet
    app = create_app(tmp_path / "empty")
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "model" in ready.json()["detail"]
        search = client.get("/api/v1/search", params={"q": "x"})
        assert search.status_code == 503 and search.headers["retry-after"]


def test_the_library_never_imports_fastapi():
    import subprocess
    import sys

    code = (
        "import sys, clipdex.api, clipdex.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unit_query_vectors(served):
    """A combined text+image query is the normalised mean, as Index.search makes it."""
    _, index, app = served
    state = app.state.clipdex
    path = next((index.folder.parent / "shapes").glob("*.png"))
    image = state.image_vector(path.read_bytes())
    text = state.encode_texts(["a red circle"])[0]
    mean = (image + text) / np.linalg.norm(image + text)
    expected = index.search("a red circle", image=path, k=1)[0]
    assert float(mean @ index.catalog.vector_of(expected.id)) == pytest.approx(
        expected.score, abs=1e-5
    )


def test_head_answers_like_get_without_a_body(served):
    client, _, _ = served
    for url in ("/healthz", "/api/v1/images/5/thumbnail", "/api/v1/images/5/original", "/"):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code == 200, url
        assert head.content == b"", url
        for name in ("content-type", "content-length", "etag", "x-content-type-options"):
            assert head.headers.get(name) == got.headers.get(name), (url, name)
    status = client.head("/api/v1/status")  # its length moves with the index: only asked
    assert status.status_code == 200 and status.content == b""
    assert status.headers["content-type"] == "application/json"
    assert client.head("/api/v1/images/999999").status_code == 404
    assert client.head("/api/v1/runs/1/classify").status_code == 405  # a POST-only route stays so
