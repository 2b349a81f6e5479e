"""Hostile requests against `clipdex serve`: traversal, deleted ids, huge and fake uploads,
malformed multipart, oversized parameters, tokens. Each is refused with a 4xx and one
JSON message; none reaches a file by a path from the request, none costs a 5xx.

The index here is synthetic (real images, random vectors, a model that never loads): the
guards and the upload checks all run before a model would.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipdex.server import create_app
from clipdex.server.options import ServerOptions
from clipdex.storage.catalog import Catalog, ImageRecord
from clipdex.types import ModelIdentity
from conftest import run_cli

SECRET = "root:x:0:0:the secret next to the index"
TOKEN = "s3cret-token-0123456789"
LIMIT = 1024 * 1024  # a 1 MB upload limit keeps the streamed uploads small


def synthetic_index(root: Path, count: int = 4) -> Path:
    """`count` real PNGs in a catalog with random unit vectors (a model that cannot load)."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        path = photos / f"p{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(path)
        vector = rng.normal(size=8).astype(np.float32)
        records.append(
            ImageRecord(
                str(path), path.stat().st_size, 0, vector / np.linalg.norm(vector), 50, 40, "PNG"
            )
        )
    (root / "secret.txt").write_text(SECRET)
    folder = root / "index"
    folder.mkdir()
    catalog = Catalog(folder)
    catalog.claim_model(ModelIdentity("no-such-model", "none", 8))
    catalog.write_batch(catalog.source_id(str(photos), "folder"), records)
    catalog.close()
    return folder


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    folder = synthetic_index(root)
    app = create_app(folder, options=ServerOptions(max_upload_bytes=LIMIT))
    with TestClient(app) as client:
        yield client, root, app


def refused(response, *statuses: int) -> str:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert SECRET not in response.text
    if response.headers.get("content-type", "").startswith("application/json"):
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail
        return detail
    return ""


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/images/%2e%2e/%2e%2e/secret.txt",
        "/api/v1/images/..%2f..%2fsecret.txt/original",
        "/api/v1/images/%252e%252e%252fsecret.txt/original",
        "/api/v1/images/1%2f..%2f..%2f..%2fsecret.txt/original",
        "/api/v1/images/%2ftmp%2fsecret.txt/original",
        "/api/v1/images/0/original",
        "/api/v1/images/-1/thumbnail",
        "/api/v1/images/99999999999999999999999999/original",
        "/api/v1/images/1e3/original",
        "/static/../secret.txt",
        "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2f..%2fsecret.txt",
        "/static/%2fetc%2fpasswd",
        "/static//etc/passwd",
        "/static/%00",
        "/api/v1/search?like=..%2F..%2Fsecret.txt",
        "/api/v1/search?like=%2Fetc%2Fpasswd",
    ],
)
def test_paths_from_requests_never_reach_files(hostile, path):
    client, root, _ = hostile
    absolute = path.replace("secret.txt", str(root / "secret.txt").lstrip("/"))
    for each in {path, absolute}:
        refused(client.get(each), 400, 404, 422)


@pytest.mark.slow
def test_deleted_ids_and_files_turned_into_symlinks_are_404(hostile, tmp_path):
    client, root, app = hostile
    catalog = app.state.clipdex.index.catalog
    assert client.get("/api/v1/images/4").status_code == 200
    # The indexed file is swapped for a link to a secret: its bytes are no image, refused.
    image = Path(catalog.images([4])[4].uri)
    image.unlink()
    image.symlink_to(root / "secret.txt")
    refused(client.get("/api/v1/images/4/original"), 404)
    refused(client.get("/api/v1/images/4/thumbnail"), 404, 415)
    writer = Catalog(catalog.folder)
    writer.delete_images([3])
    writer.close()
    for tail in ("", "/original", "/thumbnail"):
        assert "3" in refused(client.get(f"/api/v1/images/3{tail}"), 404)
    refused(client.get("/api/v1/search", params={"like": 3}), 404)


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header declares 3.6 gigapixels (its data is a few bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("route", ["/api/v1/search", "/api/v1/runs/1/classify"])
@pytest.mark.parametrize(
    "name, data, status",
    [
        ("bomb.png", png_bomb(), 413),
        ("notes.png", b"just some text, not an image\n" * 10, 415),
        ("half.png", png_bomb()[:20], 415),
        ("empty.png", b"", 400),
        ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (LIMIT + 10), 413),
    ],
)
def test_bad_uploads(hostile, route, name, data, status):
    client, _, _ = hostile
    refused(client.post(route, files={"image": (name, data, "image/png")}), status)


@pytest.mark.parametrize(
    "headers, body",
    [
        ({"content-type": "multipart/form-data; boundary=zzz"}, b"--zzz\r\ngarbage without end"),
        ({"content-type": "multipart/form-data"}, b"no boundary at all"),
        ({"content-type": "multipart/form-data; boundary=zzz"}, b""),
        ({"content-type": "application/json"}, b'{"image": "/etc/passwd"}'),
        ({"content-type": "application/x-www-form-urlencoded"}, b"image=%2Fetc%2Fpasswd&q=x"),
        ({"content-type": "text/plain"}, b"\xff\xfe\x00"),
    ],
)
def test_malformed_multipart(hostile, headers, body):
    client, _, _ = hostile
    refused(client.post("/api/v1/search", content=body, headers=headers), 400, 413, 415, 422)


def scope_of(method: str, path: str, query: bytes = b"", headers: list | None = None) -> dict:
    """An ASGI request scope, for requests no HTTP client would send (too long, too big)."""
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers or [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }


async def answer_of(app, scope: dict, receive) -> tuple[int, bytes]:
    out: dict = {"body": b""}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"]


@pytest.mark.parametrize("query", [b"q=" + b"x" * 100_000, b"q=x&label=" + b"y" * 100_000])
def test_a_100_kb_query_is_refused(hostile, query):
    _, _, app = hostile

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    status, body = asyncio.run(answer_of(app, scope_of("GET", "/api/v1/search", query), receive))
    assert status == 422 and (b"at most 1000 characters" in body or b"500 characters" in body)


@pytest.mark.parametrize(
    "params",
    [
        {"q": "x" * 1001},
        {"q": "x", "k": 10**9},
        {"q": "x", "k": 10**30},
        {"q": "x", "k": "many"},
        {"q": "x", "offset": 10**9},
        {"q": "x", "min_score": "nan"},
        {"q": "x", "min_score": "inf"},
        {"like": 0},
        {"like": 2**63},
    ],
)
def test_oversized_and_invalid_parameters(hostile, params):
    client, _, _ = hostile
    refused(client.get("/api/v1/search", params=params), 422)


def test_a_body_over_the_limit_is_refused_before_it_is_read(hostile):
    """A declared 100 MB body is refused from its header; a chunked one (no length) after
    the limit: the app reads at most ~LIMIT bytes of it, and nothing is allocated here."""
    _, _, app = hostile
    chunk = b"\0" * 65536
    part = (
        b"--zzz\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n"
        b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n"
    )

    async def post(headers: list) -> tuple[int, int]:
        sent = 0

        async def receive():
            nonlocal sent
            sent += 1
            body = part if sent == 1 else chunk
            return {"type": "http.request", "body": body, "more_body": sent < 1600}  # 100 MB

        boundary = [(b"content-type", b"multipart/form-data; boundary=zzz")]
        scope = scope_of("POST", "/api/v1/search", headers=boundary + headers)
        status, _ = await answer_of(app, scope, receive)
        return status, sent

    assert asyncio.run(post([(b"content-length", str(100 * 2**20).encode())])) == (413, 0)
    status, chunks = asyncio.run(post([]))
    assert status == 413 and chunks * len(chunk) <= LIMIT + 2 * 65536 + len(chunk)


@pytest.mark.slow
def test_a_token_is_required_when_set(tmp_path):
    app = create_app(synthetic_index(tmp_path), token=TOKEN)
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            detail = refused(client.get("/api/v1/status", headers=headers), 401)
            assert "token" in detail
        refused(client.get("/api/v1/images/1/thumbnail", params={"token": TOKEN[:-1]}), 401)
        refused(client.get("/api/v1/status", params={"token": "é" * 30}), 401)
        good = client.get("/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status_code == 200
        assert client.get("/api/v1/images/1/original", params={"token": TOKEN}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_another_host_without_a_token_is_refused(runner, tmp_path):
    folder = synthetic_index(tmp_path)
    result = run_cli(runner, "serve", "--index", str(folder), "--host", "0.0.0.0", expect=1)
    assert "--token-file" in result.output and len(result.output.strip().splitlines()) == 1
    short = tmp_path / "token.txt"
    short.write_text("abc\n")
    result = run_cli(
        runner,
        "serve",
        "--index",
        str(folder),
        "--host",
        "0.0.0.0",
        "--token-file",
        str(short),
        expect=1,
    )
    assert "at least 16" in result.output
    result = run_cli(runner, "serve", "--index", str(tmp_path / "none"), expect=1)
    assert "no index" in result.output


@pytest.mark.slow
def test_the_server_never_writes_the_index(tmp_path):
    folder = synthetic_index(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if "sqlite" not in p.name}
    app = create_app(folder)
    with TestClient(app) as client:
        for image_id in (1, 2):
            assert client.get(f"/api/v1/images/{image_id}/thumbnail").status_code == 200
        client.get("/api/v1/search", params={"like": 1})
    after = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if "sqlite" not in p.name}
    assert after == before and not (folder / "thumbs").exists()


@pytest.mark.slow
def test_no_cors_unless_an_origin_is_allowed(tmp_path):
    folder = synthetic_index(tmp_path)
    preflight = {
        "Origin": "http://other.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(folder)) as client:
        answer = client.get("/api/v1/status", headers={"Origin": "http://other.example"})
        assert "access-control-allow-origin" not in answer.headers
        assert (
            "access-control-allow-origin"
            not in client.options("/api/v1/status", headers=preflight).headers
        )
    options = ServerOptions(token=TOKEN, cors_origin="http://other.example")
    with TestClient(create_app(folder, options=options)) as client:
        answer = client.options("/api/v1/status", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == "http://other.example"
        refused(client.get("/api/v1/status", headers={"Origin": "http://other.example"}), 401)
        evil = client.get(
            "/api/v1/status",
            headers={"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"},
        )
        assert evil.status_code == 200 and "access-control-allow-origin" not in evil.headers


def test_a_request_past_the_time_limit_is_a_503_and_the_app_is_cancelled():
    from clipdex.server.guards import Guards

    events = []

    async def slow_app(scope, receive, send):
        try:
            await asyncio.sleep(30)  # a client sending its body slowly, a stuck model
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    guarded = Guards(slow_app, token=None, max_body=10, timeout_s=0.05)
    status, body = asyncio.run(answer_of(guarded, scope_of("GET", "/api/v1/status"), receive))
    assert status == 503 and b"longer than 0.05 s" in body and events == ["cancelled"]
