"""The Ray Data backend (`clipdex index --ray`) against a real local Ray started here.

One Ray instance serves the module (started once: it takes seconds); a second driver
connects to it by address. Every Ray process started here is gone when the module ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import clipdex
from clipdex.errors import BackendError
from clipdex.indexer.ray_run import (
    DecodeTask,
    RayOptions,
    block_count,
    entry_of_row,
    items_of,
    plan_workers,
    to_rows,
)
from clipdex.models.spec import ModelSpec
from clipdex.sources.local import FileEntry
from conftest import TINY, make_images, run_cli
from test_invariants import stored

TINY_SPEC = ModelSpec("clipdex-tiny")
#: Small batches, so that a run has many of them to be killed between.
BATCH = 4
COUNT = 48
#: Fake credentials for the moto endpoint: set before Ray starts, so its workers have them.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


# -- pure parts: no Ray needed -----------------------------------------------------------


def test_blocks_are_whole_batches_and_bounded():
    assert block_count(0, 64) == 1
    assert block_count(64, 64) == 1
    assert block_count(65, 64) == 2
    assert block_count(10_000_000, 64) <= 10_000
    assert block_count(10_000_000, 64) >= 9_000


def test_workers_default_to_gpus_or_nodes_and_threads_share_the_cpus():
    assert plan_workers(RayOptions(), {"CPU": 16.0}, nodes=1) == (1, 16)
    assert plan_workers(RayOptions(), {"CPU": 32.0}, nodes=2) == (2, 16)
    assert plan_workers(RayOptions(workers=4), {"CPU": 16.0}, nodes=1) == (4, 4)
    assert plan_workers(RayOptions(gpus_per_worker=1), {"CPU": 64.0, "GPU": 8.0}, 1)[0] == 8
    assert plan_workers(RayOptions(gpus_per_worker=0.5), {"CPU": 8.0, "GPU": 2.0}, 1)[0] == 4
    with pytest.raises(BackendError, match="need 3 GPUs; the cluster has 2"):
        plan_workers(RayOptions(workers=3, gpus_per_worker=1), {"CPU": 8.0, "GPU": 2.0}, 1)
    with pytest.raises(BackendError, match="the cluster has 0"):
        plan_workers(RayOptions(gpus_per_worker=1), {"CPU": 8.0}, 1)
    with pytest.raises(BackendError, match="leave no CPU of the cluster's 2 for reading"):
        plan_workers(RayOptions(workers=2), {"CPU": 2.0}, 1)
    with pytest.raises(BackendError, match="leave no CPU"):
        plan_workers(RayOptions(), {"CPU": 1.0}, 1)


def test_rows_carry_entries_exactly_and_decoded_batches_come_back_as_items(tmp_path):
    entries = [
        FileEntry("/a/b.jpg", 10, 123, None),  # local: no version
        FileEntry("s3://b/k.png", 20, 0, ""),  # an object without a validator
        FileEntry("s3://b/v.png", 30, 5, "etag:30:abc"),
    ]
    rows = to_rows(entries)
    batch = {key: np.array([row[key] for row in rows]) for key in rows[0]}
    assert [entry_of_row(batch, n) for n in range(3)] == entries
    # a decode task's output, one row a failure, read back as the indexer's items
    make_images(tmp_path / "pics", 1)
    good = next((tmp_path / "pics").iterdir())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    local = [FileEntry(str(good), good.stat().st_size, 1), FileEntry(str(bad), 12, 2)]
    rows = to_rows(local)
    task = DecodeTask(True, None, lambda image: _pixels(image), (3, 8, 8), 10**8, None, 1)
    out = task({key: np.array([row[key] for row in rows]) for key in rows[0]})
    assert out["ok"].tolist() == [True, False]
    assert out["pixels"].shape == (2, 3, 8, 8) and not out["pixels"][1].any()
    items = items_of(out, local)
    assert [item.entry for item in items] == local
    assert items[0].error is None and items[0].width and items[0].format
    assert items[0].fingerprint.startswith("sha256:")
    assert items[1].error and items[1].width is None and items[1].decode is None


def _pixels(image):
    import torch

    return torch.ones((3, 8, 8)) * image.size[0]


def test_without_ray_installed_the_run_says_how_to_install_it(
    runner, images, index_dir, monkeypatch
):
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = run_cli(runner, "index", str(images), *TINY, "--ray", expect=1)
    assert result.output.strip().splitlines() == [
        "Error: the Ray backend needs the ray package: pip install 'clipdex[ray]'"
    ]
    assert not index_dir.exists()  # nothing written
    result = run_cli(runner, "index", str(images), *TINY, "--ray-workers", "2", expect=2)
    assert "need --ray" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "nohost"])
def test_an_address_nobody_answers_fails_in_one_line_at_once(runner, images, index_dir, address):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port just freed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = address.format(port=port)
    started = time.monotonic()
    result = run_cli(
        runner, "index", str(images), *TINY, "--ray", "--ray-address", address, expect=1
    )
    assert time.monotonic() - started < 60  # ray.init alone: 5.5 min, then killed itself
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and address in line, line
    assert not index_dir.exists()  # checked before anything is created


# -- against a real Ray ------------------------------------------------------------------


def _processes(needle: bytes) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                if needle in handle.read():
                    found.append(int(name))
        except OSError:
            continue
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _wait_gone(pids, timeout: float = 20.0) -> set[int]:
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if os.path.exists(f"/proc/{pid}")}
        time.sleep(0.2)
    return alive


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module; its processes are all gone afterwards."""
    ray = pytest.importorskip("ray")
    saved = {key: os.environ.get(key) for key in AWS_ENV}
    os.environ.update(AWS_ENV)
    # 4 logical CPUs on 2 cores: the actor holds one, so three decode tasks run at once and
    # finish out of order; only preserved order then gives the in-process ids
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        started = _descendants(os.getpid())
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        left = _wait_gone(started)
        assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "photos"
    make_images(folder, COUNT, seed=5)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory):
    """The in-process index of `photos`: rows by uri, and vectors."""
    index_dir = tmp_path_factory.mktemp("reference") / "index"
    with clipdex.Index(index_dir) as index:
        index.add(photos, model=TINY_SPEC, batch_size=BATCH)
    return rows(index_dir), stored(index_dir)


def rows(index_dir: Path) -> dict[str, tuple]:
    """uri -> (id, status, error, width, height, format, fingerprint, decode, precision)."""
    db = sqlite3.connect(index_dir / "catalog.sqlite")
    try:
        return {
            row[0]: row[1:]
            for row in db.execute(
                "SELECT uri, id, status, error, width, height, format, fingerprint, decode, "
                "precision FROM images"
            )
        }
    finally:
        db.close()


def committed(index_dir: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{index_dir / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return db.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            db.close()
    except sqlite3.OperationalError:
        return 0


def assert_same_index(index_dir: Path, reference) -> None:
    """Same ids, statuses and decode results per uri; vectors cosine >= 0.9999."""
    reference_rows, reference_vectors = reference
    assert rows(index_dir) == reference_rows
    vectors = stored(index_dir)
    assert vectors.keys() == reference_vectors.keys()
    for uri, vector in reference_vectors.items():
        assert float(vectors[uri] @ vector) >= 0.9999, uri


@pytest.mark.slow
def test_an_index_built_with_ray_equals_the_in_process_one(
    runner, ray_cluster, photos, reference, index_dir
):
    result = run_cli(runner, "index", str(photos), *TINY, "--batch-size", str(BATCH), "--ray")
    assert f"{COUNT + 1} added" in result.stdout and "1 failed" in result.stdout
    assert "embedded through Ray by 1 worker" in result.stdout
    assert_same_index(index_dir, reference)
    assert run_cli(runner, "check").stdout.startswith(f"ok: {COUNT} images")
    again = run_cli(runner, "index", str(photos), *TINY, "--ray")
    assert f"{COUNT + 1} unchanged" in again.stdout and "Ray" not in again.stdout


@pytest.mark.slow
def test_a_ray_worker_killed_mid_run_loses_nothing_committed(
    ray_cluster, photos, reference, index_dir
):
    killed: list[tuple[int, int]] = []

    def kill_the_embedding_actor(phase, done, total):
        if phase == "embed" and done >= BATCH and not killed:
            for pid in _processes(b"EmbedWorker"):
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, done))

    options = RayOptions(workers=1)
    with clipdex.Index(index_dir) as index:
        # Ray restarts the actor and retries its batches; were the run to fail instead,
        # the next one would resume
        with contextlib.suppress(BackendError):
            index.add(
                photos,
                model=TINY_SPEC,
                batch_size=BATCH,
                ray=options,
                on_progress=kill_the_embedding_actor,
            )
        assert killed and killed[0][1] < COUNT, "the actor was not killed mid-run"
        report = index.add(photos, model=TINY_SPEC, batch_size=BATCH, ray=options)
    assert report.added + report.unchanged == COUNT + 1
    assert_same_index(index_dir, reference)


@pytest.mark.slow
def test_a_driver_killed_mid_run_resumes_to_the_same_index(
    ray_cluster, photos, reference, index_dir
):
    """A second driver, connected by address, killed -9 after a batch is committed."""
    command = [
        sys.executable,
        "-m",
        "clipdex",
        "index",
        str(photos),
        "--index",
        str(index_dir),
        *TINY,
        "--batch-size",
        str(BATCH),
        "--ray",
        "--ray-address",
        ray_cluster,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while committed(index_dir) < BATCH:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the run ended before the kill: {process.communicate()}")
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()
    process.stderr.close()
    before = committed(index_dir)
    assert BATCH <= before < COUNT + 1
    # the cluster ends the dead driver's actors
    assert not _wait_gone(_processes(b"EmbedWorker"))
    # any next run resumes (here one in this process: a clean Ray run is pinned above)
    with clipdex.Index(index_dir) as index:
        report = index.add(photos, model=TINY_SPEC, batch_size=BATCH)
    # the resumed run embeds exactly what was not committed
    assert (report.added, report.unchanged) == (COUNT + 1 - before, before)
    assert_same_index(index_dir, reference)


@pytest.mark.slow
def test_an_s3_bucket_through_ray_equals_the_in_process_index(ray_cluster, tmp_path):
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("s3fs")
    from test_remote import png_bytes

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="photos")
        for i in range(10):
            s3.put_object(Bucket="photos", Key=f"2024/{i % 2}/img{i}.png", Body=png_bytes(i))
        s3.put_object(Bucket="photos", Key="2024/fake.png", Body=b"text pretending")
        runs = {}
        for name, ray in (("here", None), ("ray", RayOptions())):
            with clipdex.Index(tmp_path / name) as index:
                report = index.add(
                    "s3://photos", model=TINY_SPEC, endpoint_url=endpoint, batch_size=BATCH, ray=ray
                )
            assert (report.added, report.failed) == (11, 1)
            assert report.ray_workers == (1 if ray else 0)
            runs[name] = (rows(tmp_path / name), stored(tmp_path / name))
        assert_same_index(tmp_path / "ray", runs["here"])
        assert runs["ray"][0]["s3://photos/2024/0/img0.png"][6].startswith("etag:")
    finally:
        server.stop()
