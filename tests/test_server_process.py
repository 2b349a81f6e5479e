"""`clipdex serve` as a real uvicorn process on 127.0.0.1: ready after the model loads,
new images appear while `clipdex index` runs in another process (no 5xx meanwhile, no
deleted rows), hostile requests over a real socket, Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from clipdex.samples import write_samples
from serve_helpers import build_index

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(process: subprocess.Popen, base: str, timeout: float) -> None:
    """Until the server answers /readyz with 200; fails if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (its last test stops it)."""
    folder = build_index(tmp_path_factory.mktemp("process"), count=12)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-m", "clipdex", "serve", "--index", str(folder), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, 120)
        yield base, folder, process, env
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_hostile_requests_over_a_socket(server):
    base, _, _, _ = server
    port = int(base.rsplit(":", 1)[1])

    def raw(request: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(request)
            return conn.recv(65536)

    long_query = b"GET /api/v1/search?q=" + b"x" * 100_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    assert raw(long_query).split(b" ", 2)[1].startswith(b"4")
    traversal = b"GET /static/../../../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n"
    answer = raw(traversal)
    assert answer.split(b" ", 2)[1].startswith(b"4") and b"root:" not in answer

    def hundred_megabytes():
        yield (
            b"--zzz\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n"
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n"
        )
        block = b"\0" * (1 << 20)
        for _ in range(100):
            yield block

    try:
        response = httpx.post(
            f"{base}/api/v1/search",
            content=hundred_megabytes(),
            headers={"content-type": "multipart/form-data; boundary=zzz"},
            timeout=60,
        )
        assert response.status_code == 413, response.text
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered 413 and closed while the client still sent: also refused
    assert httpx.get(f"{base}/healthz").status_code == 200  # still up
    assert httpx.get(f"{base}/api/v1/search", params={"k": 10**9, "q": "x"}).status_code == 422


def test_images_indexed_by_another_process_appear_without_a_restart(server, tmp_path):
    base, folder, process, env = server
    assert f"127.0.0.1:{base.rsplit(':', 1)[1]}" in process.stdout.readline()
    write_samples(tmp_path / "more", 24, seed=5, size=48)
    statuses: list[int] = []
    seen: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            while not stop.is_set():
                found = client.get("/api/v1/search", params={"q": "a shape", "k": 100})
                statuses.append(found.status_code)
                if found.status_code == 200:
                    rows = found.json()["results"]
                    seen.update(row["id"] for row in rows)
                    for row in rows[:3]:
                        statuses.append(client.get(row["thumbnail_url"]).status_code)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        writer = subprocess.run(
            [
                sys.executable,
                "-m",
                "clipdex",
                "index",
                str(tmp_path / "more"),
                "--index",
                str(folder),
                "--batch-size",
                "8",
                "--workers",
                "0",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert writer.returncode == 0, writer.stderr
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert statuses and all(status == 200 for status in statuses), sorted(set(statuses))
    found = httpx.get(f"{base}/api/v1/search", params={"q": "x", "k": 1000}).json()["results"]
    assert len(found) == 36 == len({row["id"] for row in found})
    assert seen <= {row["id"] for row in found}
    status = httpx.get(f"{base}/api/v1/status").json()
    assert status["images"] == 36


def test_ctrl_c_stops_the_server(server):
    _, _, process, _ = server
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


def test_demo_serve_serves_the_demo_index_until_ctrl_c(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TMPDIR=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "clipdex", "demo", "--serve", "--port", str(port), "--count", "48"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, base, 300)
        found = httpx.get(f"{base}/api/v1/search", params={"q": "a red circle", "k": 1}).json()
        assert "red-circle" in found["results"][0]["uri"]
        runs = httpx.get(f"{base}/api/v1/runs").json()
        assert len(runs) == 1 and len(runs[0]["labels"]) == 48  # saved: the page filters by it
        thumb = httpx.get(f"{base}{found['results'][0]['thumbnail_url']}")
        assert thumb.headers["content-type"] in ("image/webp", "image/jpeg")
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert f"at http://127.0.0.1:{port}" in out
    assert not list(tmp_path.glob("clipdex-demo-*"))  # its temporary index is gone
