"""Remote sources against a real S3 HTTP endpoint (moto in server mode) and http.server."""

from __future__ import annotations

import functools
import http.server
import io
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import clipdex
from clipdex.errors import SourceError
from clipdex.models.spec import ModelSpec
from clipdex.sources import fetch
from clipdex.sources.remote import filesystem, scheme_of, strip_scheme
from conftest import TINY, make_images, run_cli

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

TINY_SPEC = ModelSpec("clipdex-tiny")
#: Images in a fresh bucket (img0000..): enough for every key the tests name.
COUNT = 40


def png_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def endpoint():
    """A local S3 endpoint on 127.0.0.1, started by the tests themselves."""
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(endpoint, request):
    """A fresh bucket with COUNT images under nested prefixes, and some non-images."""
    s3 = boto3.client("s3", endpoint_url=endpoint)
    name = "photos-" + request.node.name.replace("_", "-").lower()[:40]
    s3.create_bucket(Bucket=name)
    put_images(s3, name, range(COUNT))
    s3.put_object(Bucket=name, Key="2024/notes.txt", Body=b"not an image")
    s3.put_object(Bucket=name, Key="2024/01/fake.png", Body=b"text pretending")
    s3.put_object(Bucket=name, Key="elsewhere/img.png", Body=png_bytes(999))
    return s3, name


def put_images(s3, name: str, numbers) -> None:
    for i in numbers:
        key = f"2024/{i % 4:02d}/{'deep/' if i % 3 == 0 else ''}img{i:04d}.png"
        s3.put_object(Bucket=name, Key=key, Body=png_bytes(i))


def index_bucket(index, s3_uri, endpoint, **options):
    return index.add(s3_uri, model=TINY_SPEC, endpoint_url=endpoint, **options)


@pytest.mark.slow
def test_index_a_bucket_prefix_and_search_it(runner, bucket, endpoint, index_dir):
    _, name = bucket
    out = run_cli(runner, "index", f"s3://{name}/2024/", "--endpoint-url", endpoint, *TINY).stdout
    assert f"{COUNT + 1} added" in out and "1 failed" in out  # the images, the fake png; no .txt
    paths = run_cli(runner, "search", "a red car", "-k", "5", "--format", "paths").stdout.split()
    assert len(paths) == 5 and all(p.startswith(f"s3://{name}/2024/") for p in paths)
    text = run_cli(runner, "status").stdout
    assert "fake.png: not an image" in text
    assert f"s3://{name}/2024  (bucket, {COUNT + 1} files" in text
    again = run_cli(runner, "index", f"s3://{name}/2024", "--endpoint-url", endpoint).stdout
    assert f"{COUNT + 1} unchanged" in again and "0 embedded" in again


@pytest.mark.slow
def test_deleted_overwritten_and_new_objects_are_counted_exactly(bucket, endpoint, index_dir):
    s3, name = bucket
    with clipdex.open_index(index_dir) as index:
        index_bucket(index, f"s3://{name}/2024", endpoint)
        for i in range(10):
            s3.delete_object(
                Bucket=name, Key=f"2024/{i % 4:02d}/{'deep/' if i % 3 == 0 else ''}img{i:04d}.png"
            )
        for i in range(10, 15):
            key = f"2024/{i % 4:02d}/{'deep/' if i % 3 == 0 else ''}img{i:04d}.png"
            s3.put_object(Bucket=name, Key=key, Body=png_bytes(5000 + i))
        for i in range(7):
            s3.put_object(Bucket=name, Key=f"2024/new/n{i}.png", Body=png_bytes(7000 + i))
        report = index_bucket(index, f"s3://{name}/2024", endpoint)
        assert (report.added, report.updated, report.removed) == (7, 5, 10)
        assert report.unchanged == COUNT + 1 - 10 - 5
        uris = {hit.uri for hit in index.search("x", k=500)}
        assert len(uris) == COUNT - 10 + 7
        assert f"s3://{name}/2024/00/deep/img0000.png" not in uris


@pytest.mark.slow
def test_moved_object_reuses_its_vector_by_etag(bucket, endpoint, index_dir):
    s3, name = bucket
    with clipdex.open_index(index_dir) as index:
        index_bucket(index, f"s3://{name}/2024", endpoint)
        calls = index.loaded_model.images_encoded
        s3.copy_object(
            Bucket=name,
            Key="2024/moved/img0001.png",
            CopySource={"Bucket": name, "Key": "2024/01/img0001.png"},
        )
        s3.delete_object(Bucket=name, Key="2024/01/img0001.png")
        report = index_bucket(index, f"s3://{name}/2024", endpoint)
        assert (report.added, report.removed, report.reused) == (1, 1, 1)
        assert index.loaded_model.images_encoded == calls


def test_object_deleted_between_listing_and_fetching(bucket, endpoint, index_dir):
    s3, name = bucket

    def delete_one(phase, done, total):
        if phase == "embed" and done == 0:
            s3.delete_object(Bucket=name, Key="2024/02/img0002.png")

    with clipdex.open_index(index_dir) as index:
        report = index_bucket(index, f"s3://{name}/2024", endpoint, on_progress=delete_one)
        assert report.failed == 2  # the fake png and the vanished object
        failures = dict(index.catalog.failures())
        assert failures[f"s3://{name}/2024/02/img0002.png"] == (
            "object vanished before it could be fetched"
        )


@pytest.mark.slow
def test_transient_errors_are_retried_and_permanent_ones_recorded(
    bucket, endpoint, index_dir, monkeypatch
):
    _, name = bucket
    attempts: dict[str, int] = {}
    real_for_uri = fetch.FileSystems.for_uri

    class Faulty:
        def __init__(self, fs):
            self.fs = fs

        def cat_file(self, path):
            attempts[path] = attempts.get(path, 0) + 1
            if "img0005" in path or "img0006" in path:
                raise PermissionError("403 Forbidden")
            if path.endswith(("0.png", "1.png")) and attempts[path] <= 2:
                raise ConnectionError("503 Slow Down")
            return self.fs.cat_file(path)

    monkeypatch.setattr(
        fetch.FileSystems, "for_uri", lambda self, uri: Faulty(real_for_uri(self, uri))
    )
    delays: list[int] = []

    class QuickRetry(fetch.RetryPolicy):
        def delay(self, attempt: int) -> float:
            delays.append(attempt)
            return 0.0

    monkeypatch.setattr(fetch, "RetryPolicy", QuickRetry)
    with clipdex.open_index(index_dir) as index:
        report = index.add(f"s3://{name}/2024", model=TINY_SPEC, endpoint_url=endpoint)
        failures = dict(index.catalog.failures())
    flaky = [p for p in attempts if p.endswith(("0.png", "1.png")) and "fake" not in p]
    assert flaky and all(attempts[p] == 3 for p in flaky)  # two failures, then success
    assert sorted(delays) == [0] * len(flaky) + [1] * len(flaky)  # the patched policy waited
    assert report.failed == 3
    denied = {u: e for u, e in failures.items() if "img0005" in u or "img0006" in u}
    assert len(denied) == 2 and all(e.startswith("access denied") for e in denied.values())


@pytest.mark.slow
def test_killed_run_resumes(bucket, endpoint, tmp_path):
    s3, name = bucket
    put_images(s3, name, range(COUNT, 200))  # room to kill the run mid-way
    index_dir = tmp_path / "index"
    command = [
        sys.executable,
        "-m",
        "clipdex",
        "index",
        f"s3://{name}/2024",
        "--index",
        str(index_dir),
        "--endpoint-url",
        endpoint,
        *TINY,
        "--batch-size",
        "16",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    from test_crash_and_concurrency import committed, kill_when

    kill_when(process, index_dir, lambda n: n >= 32)
    before = committed(index_dir)
    assert 32 <= before < 201
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"{201 - before} added" in done.stdout and f"{before} unchanged" in done.stdout
    check = subprocess.run(
        [sys.executable, "-m", "clipdex", "check", "--index", str(index_dir)],
        capture_output=True,
        text=True,
    )
    assert check.stdout.startswith("ok: 200 images"), check.stdout


@pytest.mark.slow
def test_image_bytes_come_back_from_the_bucket_and_from_disk(bucket, endpoint, index_dir, images):
    _, name = bucket
    with clipdex.open_index(index_dir) as index:
        index_bucket(index, f"s3://{name}/2024/03", endpoint)
        index.add(images)
        by_uri = {hit.uri: hit.id for hit in index.search("x", k=500)}
        s3_uri = f"s3://{name}/2024/03/img0007.png"
        assert index.image_bytes(by_uri[s3_uri]) == png_bytes(7)
        local = str(images / "img0001.jpg")
        assert index.image_bytes(by_uri[local]) == (images / "img0001.jpg").read_bytes()


@pytest.fixture
def http_folder(tmp_path):
    folder = tmp_path / "served"
    make_images(folder, 6)
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_index_a_list_of_http_urls(runner, http_folder, tmp_path, images):
    folder, base = http_folder
    names = sorted(p.name for p in folder.iterdir())
    urls = tmp_path / "urls.txt"
    lines = [f"{base}/{n}" for n in names] + [f"{base}/missing.jpg", str(images / "img0001.jpg")]
    urls.write_text("# my images\n" + "\n".join(lines) + "\n")
    out = run_cli(runner, "index", "--from-list", str(urls), *TINY).stdout
    assert "7 added" in out and "0 failed" in out
    paths = run_cli(runner, "search", "x", "-k", "20", "--format", "paths").stdout.split()
    assert sorted(paths) == sorted([f"{base}/{n}" for n in names] + [str(images / "img0001.jpg")])
    urls.write_text("\n".join(lines[2:]) + "\n")  # two urls taken off the list
    out = run_cli(runner, "index", "--from-list", str(urls)).stdout
    assert "2 removed" in out and "5 unchanged" in out


def test_uri_handling_for_other_stores(monkeypatch):
    assert scheme_of("gs://bucket/a/b.jpg") == "gs" and scheme_of("az://c/p") == "az"
    assert scheme_of("/local/path") is None and scheme_of("file.jpg") is None
    assert strip_scheme("gs://bucket/a/b.jpg") == "bucket/a/b.jpg"
    assert strip_scheme("https://host/x.jpg") == "https://host/x.jpg"
    for uri, package, extra in (("gs://b/p", "gcsfs", "gcs"), ("az://c/p", "adlfs", "azure")):
        monkeypatch.setitem(sys.modules, package, None)  # not installed, even where it is
        with pytest.raises(SourceError, match=re.escape(f"pip install 'clipdex[{extra}]'")):
            filesystem(uri)


def test_missing_bucket_is_a_clear_error(runner, endpoint):
    result = run_cli(
        runner, "index", "s3://no-such-bucket-here/x", "--endpoint-url", endpoint, *TINY, expect=1
    )
    assert "no such bucket" in result.stderr or "cannot reach" in result.stderr
    assert "Traceback" not in result.output
