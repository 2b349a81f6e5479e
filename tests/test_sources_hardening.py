"""Hostile sources: stale fingerprints, objects without validators, symlinks, special files,
deep trees, binary lists, corrupt EXIF, and retries that must not hide programming errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import clipdex
from clipdex.errors import ClipdexError, ImageDecodeError, SourceError
from clipdex.media.decode import load_image
from clipdex.models.spec import ModelSpec
from clipdex.sources import fetch
from clipdex.sources.fingerprint import fingerprint
from conftest import TINY, make_images, run_cli

TINY_SPEC = ModelSpec("clipdex-tiny")


def bmp(path: Path, color: str, rectangle: str | None = None, size: int = 600) -> Path:
    """An uncompressed BMP; `rectangle` is drawn over rows 60..size-61, away from both ends."""
    image = Image.new("RGB", (size, size), color)
    if rectangle:
        ImageDraw.Draw(image).rectangle((0, 60, size - 1, size - 61), fill=rectangle)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "BMP")
    return path


def nearest(index, image: Path) -> tuple[str, float]:
    hit = index.search(image=image, k=1)[0]
    return hit.uri, hit.score


# -- item 7: the content fingerprint is of the whole file -----------------------------------


def test_an_edit_in_the_middle_of_a_bmp_is_embedded_not_reused(tmp_path, index_dir):
    folder = tmp_path / "scans"
    target = bmp(folder / "scan.bmp", "red")
    with clipdex.open_index(index_dir) as index:
        index.add(folder, model=TINY_SPEC)
        bmp(target, "red", rectangle="blue")
        os.utime(target, ns=(10**18, 10**18))
        report = index.add(folder)
        assert (report.updated, report.embedded, report.reused) == (1, 1, 0)
        uri, score = nearest(index, target)
        assert uri == str(target) and score > 0.999


def test_same_size_scans_with_equal_margins_get_their_own_vectors(tmp_path, index_dir):
    folder = tmp_path / "scans"
    bmp(folder / "a.bmp", "white", rectangle="black")
    with clipdex.open_index(index_dir) as index:
        index.add(folder, model=TINY_SPEC)
        other = bmp(folder / "b.bmp", "white", rectangle="green")
        report = index.add(folder)
        assert (report.added, report.embedded, report.reused) == (1, 1, 0)
        assert nearest(index, other)[0] == str(other)
        copy = folder / "copy of b.bmp"
        copy.write_bytes(other.read_bytes())
        assert index.add(folder).reused == 1  # a true copy still reuses


def test_fingerprint_is_a_whole_file_sha256_unlike_the_old_scheme(tmp_path):
    path = bmp(tmp_path / "x.bmp", "red", size=64)
    data = path.read_bytes()
    assert fingerprint(str(path)) == f"sha256:{len(data)}:{hashlib.sha256(data).hexdigest()}"
    assert fingerprint(str(tmp_path / "missing.bmp")) is None


def old_fingerprint(path: Path) -> str:
    """The scheme of clipdex 0.x: size + SHA-256 of the first and last 64 KiB."""
    data = path.read_bytes()
    digest = hashlib.sha256(data[:65536] + data[max(65536, len(data) - 65536) :])
    return f"{len(data)}:{digest.hexdigest()[:40]}"


def test_rows_with_old_scheme_fingerprints_are_never_reused(tmp_path, index_dir):
    folder = tmp_path / "scans"
    bmp(folder / "a.bmp", "white", rectangle="black")
    with clipdex.open_index(index_dir) as index:
        index.add(folder, model=TINY_SPEC)
    with sqlite3.connect(index_dir / "catalog.sqlite") as db:  # as an older clipdex stored it
        db.execute("UPDATE images SET fingerprint = ?", (old_fingerprint(folder / "a.bmp"),))
    with clipdex.open_index(index_dir) as index:
        other = bmp(folder / "b.bmp", "white", rectangle="green")
        report = index.add(folder)
        assert (report.added, report.reused) == (1, 0)
        assert nearest(index, other)[0] == str(other)


# -- item 3: http objects without ETag or Last-Modified -------------------------------------


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `validators` says which of ETag/Last-Modified/Content-MD5 it sends."""

    validators: tuple[str, ...] = ()

    def log_message(self, *args):
        pass

    def send_header(self, keyword, value):
        if keyword.lower() in ("etag", "last-modified") and keyword not in self.validators:
            return
        super().send_header(keyword, value)

    def end_headers(self):
        path = self.translate_path(self.path)
        if "Content-MD5" in self.validators and os.path.isfile(path):
            digest = hashlib.md5(Path(path).read_bytes()).digest()
            super().send_header("Content-MD5", __import__("base64").b64encode(digest).decode())
        super().end_headers()


@pytest.fixture
def serve(tmp_path):
    pytest.importorskip("aiohttp")
    servers = []

    def start(folder: Path, *validators: str) -> str:
        handler = type("H", (Handler,), {"validators": validators})
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def index_list(index, urls: Path, names: list[str], base: str, **options):
    urls.write_text("".join(f"{base}/{name}\n" for name in names))
    return index.add(urls, from_list=True, **options)


def test_objects_without_validators_never_share_vectors(serve, tmp_path, index_dir):
    served = tmp_path / "served"
    bmp(served / "a.bmp", "red", size=64)
    bmp(served / "b.bmp", "blue", size=64)  # same size as a.bmp
    base, urls = serve(served), tmp_path / "urls.txt"
    with clipdex.open_index(index_dir) as index:
        index_list(index, urls, ["a.bmp"], base, model=TINY_SPEC)
        report = index_list(index, urls, ["a.bmp", "b.bmp"], base)
        assert (report.added, report.updated, report.reused, report.embedded) == (1, 1, 0, 2)
        assert nearest(index, served / "b.bmp") == (f"{base}/b.bmp", pytest.approx(1, abs=1e-3))
        bmp(served / "a.bmp", "green", size=64)  # overwritten in place, same size
        report = index_list(index, urls, ["a.bmp", "b.bmp"], base)
        assert (report.updated, report.unchanged, report.reused) == (2, 0, 0)
        assert nearest(index, served / "a.bmp") == (f"{base}/a.bmp", pytest.approx(1, abs=1e-3))


def test_last_modified_is_a_version_not_a_content_identity(serve, tmp_path, index_dir):
    served = tmp_path / "served"
    for name, color in (("a.bmp", "red"), ("b.bmp", "blue")):
        os.utime(bmp(served / name, color, size=64), (10**9, 10**9))  # same size and date
    base, urls = serve(served, "Last-Modified"), tmp_path / "urls.txt"
    with clipdex.open_index(index_dir) as index:
        index_list(index, urls, ["a.bmp"], base, model=TINY_SPEC)
        report = index_list(index, urls, ["a.bmp", "b.bmp"], base)
        assert (report.added, report.unchanged, report.reused) == (1, 1, 0)
        assert nearest(index, served / "b.bmp")[0] == f"{base}/b.bmp"
        os.utime(bmp(served / "a.bmp", "green", size=64), (2 * 10**9, 2 * 10**9))
        report = index_list(index, urls, ["a.bmp", "b.bmp"], base)
        assert (report.updated, report.unchanged, report.reused) == (1, 1, 0)
        assert nearest(index, served / "a.bmp")[0] == f"{base}/a.bmp"


def test_content_md5_identifies_copies(serve, tmp_path, index_dir):
    served = tmp_path / "served"
    bmp(served / "a.bmp", "red", size=64)
    (served / "copy.bmp").write_bytes((served / "a.bmp").read_bytes())
    base, urls = serve(served, "Content-MD5"), tmp_path / "urls.txt"
    with clipdex.open_index(index_dir) as index:
        index_list(index, urls, ["a.bmp"], base, model=TINY_SPEC)
        report = index_list(index, urls, ["a.bmp", "copy.bmp"], base)
        assert (report.added, report.unchanged, report.reused) == (1, 1, 1)


# -- item 18: symlinks, and image_bytes for ok rows only ------------------------------------


@pytest.fixture
def linked(tmp_path) -> Path:
    photos = tmp_path / "photos"
    make_images(photos, 2)
    outside = make_images(tmp_path / "outside", 3, seed=5)
    (photos / "link.jpg").symlink_to(outside[1])
    (photos / "linked dir").symlink_to(tmp_path / "outside")
    (photos / "sub").mkdir()
    (photos / "sub" / "loop").symlink_to(photos)  # a cycle, and an ancestor
    return photos


def test_symlinks_are_not_followed_by_default(runner, linked):
    assert "2 added" in run_cli(runner, "index", str(linked), *TINY).stdout
    paths = run_cli(runner, "search", "x", "-k", "50", "--format", "paths").stdout.split()
    assert sorted(Path(p).name for p in paths) == ["img0000.png", "img0001.jpg"]


def test_follow_symlinks_follows_files_and_folders_without_looping(runner, linked):
    out = run_cli(runner, "index", str(linked), "--follow-symlinks", *TINY).stdout
    assert "6 added" in out and "0 failed" in out
    rows = json.loads(run_cli(runner, "search", "x", "-k", "50", "--format", "json").stdout)
    assert sorted(os.path.relpath(row["uri"], linked) for row in rows) == [
        "img0000.png",
        "img0001.jpg",
        "link.jpg",
        "linked dir/img0000.png",
        "linked dir/img0001.jpg",
        "linked dir/img0002.jpg",
    ]
    assert "4 removed" in run_cli(runner, "index", str(linked)).stdout  # links not asked for


def test_image_bytes_only_for_ok_images(tmp_path, index_dir):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0\n")
    good = make_images(tmp_path / "pics", 1)[0]
    urls = tmp_path / "list.txt"
    urls.write_text(f"{secret}\n{good}\n")
    with clipdex.open_index(index_dir) as index:
        assert index.add(urls, from_list=True, model=TINY_SPEC).failed == 1
        with sqlite3.connect(index_dir / "catalog.sqlite") as db:
            ids = dict(db.execute("SELECT status, id FROM images").fetchall())
        with pytest.raises(SourceError, match="not an indexed image"):
            index.image_bytes(ids["failed"])
        with pytest.raises(ClipdexError):
            index.image_bytes(ids["ok"] + 100)
        assert index.image_bytes(ids["ok"]) == good.read_bytes()
        good.write_text("replaced by text")
        with pytest.raises(SourceError, match="no longer an image"):
            index.image_bytes(ids["ok"])


# -- item 19 and 23: list files and their lines ---------------------------------------------


@pytest.mark.slow
def test_special_files_in_a_list_are_failures_not_hangs(tmp_path, index_dir):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    good = make_images(tmp_path / "pics", 1)[0]
    urls = tmp_path / "list.txt"
    urls.write_text(f"{fifo}\n/dev/zero\n{good}\n")
    command = [sys.executable, "-m", "clipdex", "index", "--from-list", str(urls), *TINY]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3 added" in done.stdout and "2 failed" in done.stdout
    failures = subprocess.run(
        [sys.executable, "-m", "clipdex", "status", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert failures.count("not a regular file") == 2


def test_list_file_must_be_a_small_regular_utf8_file(runner, tmp_path):
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x89\x82\xff\x00 not text")
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as handle:
        handle.truncate(200 * 1024 * 1024)  # sparse
    for path, reason in (
        (fifo, "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (binary, "not UTF-8 text"),
        (huge, "too large"),
    ):
        result = run_cli(runner, "index", "--from-list", str(path), *TINY, expect=1)
        assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- item 25: deep trees and paths longer than PATH_MAX -------------------------------------


@pytest.fixture
def nest():
    """nest(root, names, image): root/names[0]/.../deep.png, made through directory fds
    (any depth); removed afterwards with rm, as shutil.rmtree recurses and pytest's own
    clean-up of old temporary folders would fail on it."""
    made: list[Path] = []

    def make(root: Path, names: list[str], image: bytes) -> None:
        made.append(root)
        fd = os.open(root, os.O_RDONLY)
        try:
            for name in names:
                os.mkdir(name, dir_fd=fd)
                inner = os.open(name, os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = inner
            out = os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
            os.write(out, image)
            os.close(out)
        finally:
            os.close(fd)

    yield make
    for root in made:
        subprocess.run(["rm", "-rf", str(root)], check=True)


def png_bytes(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_a_tree_1100_folders_deep_is_indexed(runner, tmp_path, nest):
    root = tmp_path / "deep"
    make_images(root, 1)
    nest(root, ["d"] * 1100, png_bytes("red"))
    assert "2 added" in run_cli(runner, "index", str(root), *TINY).stdout


def test_a_folder_beyond_path_max_is_skipped_not_fatal(runner, tmp_path, nest):
    root = tmp_path / "long"
    make_images(root, 1)
    nest(root, ["x" * 200] * 25, png_bytes("red"))  # over 5,000 characters
    out = run_cli(runner, "index", str(root), *TINY).stdout
    assert "1 added" in out and "0 failed" in out


# -- decode warnings and fetch retries ------------------------------------------------------


def jpeg_with_corrupt_exif() -> bytes:
    ifd = struct.pack("<2sHIH", b"II", 42, 8, 5) + struct.pack("<HHII", 0x0112, 3, 1, 6)
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buffer, "JPEG", exif=b"Exif\x00\x00" + ifd)
    return buffer.getvalue()


def test_corrupt_exif_is_silent_and_other_warnings_are_untouched():
    filters = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, fmt = load_image(jpeg_with_corrupt_exif())
        warnings.warn("still shown", UserWarning, stacklevel=1)
    assert (image.size, fmt) == ((20, 20), "JPEG")
    assert [str(w.message) for w in caught] == ["still shown"]
    assert warnings.filters == filters


class FakeFs:
    def __init__(self, *errors: BaseException):
        self.errors = list(errors)
        self.calls = 0

    def cat_file(self, path):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return b"data"


def test_fetch_retries_network_errors_but_not_programming_errors():
    quick = fetch.RetryPolicy(base_s=0.001)
    flaky = FakeFs(ConnectionError("reset"), TimeoutError("slow"))
    assert fetch.fetch_bytes(flaky, "s3://b/k.jpg", quick) == b"data" and flaky.calls == 3
    broken = FakeFs(TypeError("a bug"))
    with pytest.raises(TypeError):
        fetch.fetch_bytes(broken, "s3://b/k.jpg", quick)
    assert broken.calls == 1
    with pytest.raises(ImageDecodeError, match="fetch failed after 5 attempts"):
        fetch.fetch_bytes(FakeFs(*[OSError("503")] * 5), "s3://b/k.jpg", quick)
