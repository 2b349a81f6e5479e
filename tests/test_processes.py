"""Processes: a SIGKILLed writer leaves no lock behind and no decode worker alive."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdex.api import Index
from clipdex.storage.lock import WriterLock
from conftest import TINY, run_cli

pytestmark = pytest.mark.slow


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (a /proc scan: no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _stat(int(entry)) == (pid, True):
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    stat = _stat(pid)
    return stat is not None and stat[1]


def _stat(pid: int) -> tuple[int, bool] | None:
    """(parent pid, not a zombie) from /proc/PID/stat; None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), fields[0] not in ("Z", "X")


def committed(index: Path) -> int:
    """Images the catalog holds now (0 before it exists)."""
    try:
        with sqlite3.connect(f"file:{index / 'catalog.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:
        return 0


def write_photos(folder: Path, count: int) -> None:
    """Photo-sized noisy JPEGs: slow enough to decode that a run lasts a few seconds."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"p{i:04d}.jpg", quality=90)


def clipdex(*args: str, log: Path | None = None) -> subprocess.Popen:
    """`python -m clipdex ARGS`, output piped, or written to `log` (a killed process's
    pipes stay open as long as any child of it lives, so reading them would wait)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        [sys.executable, "-m", "clipdex", *args],
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_mid_index_leaves_no_worker_and_no_lock(tmp_path):
    """Issue 15: an orphaned DataLoader worker kept the lock after its parent was killed."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    write_photos(photos, 400)
    args = ["index", str(photos), "--index", str(index), *TINY, "--batch-size", "8"]
    first = clipdex(*args, "--workers", "2", log=tmp_path / "first.log")
    deadline = time.monotonic() + 120
    while committed(index) == 0:
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline, "no batch was committed"
        time.sleep(0.02)
    # Stop the parent as if busy in a long forward pass: the workers fill their prefetch
    # queue and wait on it, as they do under a real model.
    first.send_signal(signal.SIGSTOP)
    time.sleep(1.5)
    workers = children_of(first.pid)
    assert workers, "the decode workers should be running"
    first.send_signal(signal.SIGKILL)
    first.wait()

    again = clipdex(*args)  # at once
    gone_by = time.monotonic() + 3
    while any(alive(pid) for pid in workers) and time.monotonic() < gone_by:
        time.sleep(0.05)
    survivors = [pid for pid in workers if alive(pid)]
    for pid in survivors:  # do not leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    _, err = again.communicate(timeout=300)
    assert "being updated" not in err
    assert again.returncode == 0, err
    assert survivors == [], "decode workers outlived their killed parent"
    report = Index(index).check()
    assert report.ok, report.problems
    assert (report.images, report.vectors, committed(index)) == (400, 400, 400)


HOLDER = """
import os, sys, time
from pathlib import Path
from clipdex.api import Index
from clipdex.storage.lock import WriterLock
lock = WriterLock(Path(sys.argv[1]))
lock.acquire()
if sys.argv[2] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    time.sleep(60)
else:
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    released = time.time()
    lock.release()
    print(released, flush=True)
    time.sleep(60)
"""


def holder(folder: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_forked_child_does_not_keep_a_dead_writers_lock(tmp_path):
    folder = tmp_path / "index"
    folder.mkdir()
    writer = holder(folder, "fork")
    child = int(writer.stdout.readline())
    try:
        with pytest.raises(Exception, match=f"being updated by process {writer.pid}"):
            WriterLock(folder).acquire()
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        assert alive(child)  # still there, with the lock file open
        lock = WriterLock(folder)
        lock.acquire()
        lock.release()
    finally:
        writer.kill()
        os.kill(child, signal.SIGKILL)


def test_wait_blocks_on_a_writer_in_another_process(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    writer = holder(index_dir, "3")
    try:
        assert writer.stdout.readline().strip() == "locked"
        refused = run_cli(runner, "index", str(images), expect=1)
        assert f"being updated by process {writer.pid}" in refused.stderr
        out = run_cli(runner, "index", str(images), "--wait").stdout
        finished = time.time()
        released = float(writer.stdout.readline())
    finally:
        writer.kill()
        writer.wait()
    assert "50 unchanged" in out
    assert finished > released  # it waited for the release
