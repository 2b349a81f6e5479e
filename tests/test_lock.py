"""One writer at a time: a second `clipdex index` exits at once, naming the writer."""

from __future__ import annotations

import os

import pytest

from clipdex.storage.lock import WriterLock
from conftest import TINY, run_cli


def test_second_writer_is_refused_while_first_holds_the_lock(runner, images, index_dir):
    run_cli(runner, "index", str(images), *TINY)
    lock = WriterLock(index_dir)
    lock.acquire()
    try:
        result = run_cli(runner, "index", str(images), expect=1)
        assert f"index is being updated by process {os.getpid()}" in result.stderr
        # readers are not blocked by a writer
        assert (
            run_cli(runner, "search", "x", "-k", "2", "--format", "paths").stdout.count("\n") == 2
        )
    finally:
        lock.release()
    assert "50 unchanged" in run_cli(runner, "index", str(images)).stdout


@pytest.mark.slow
def test_wait_blocks_until_the_writer_is_done(runner, images, index_dir):
    import threading

    run_cli(runner, "index", str(images), *TINY)
    lock = WriterLock(index_dir)
    lock.acquire()
    result = {}

    def second_writer():
        result["out"] = run_cli(runner, "index", str(images), "--wait").stdout

    waiter = threading.Thread(target=second_writer)
    waiter.start()
    try:
        waiter.join(timeout=1.5)
        assert waiter.is_alive(), "index --wait did not wait for the first writer"
        assert "out" not in result
    finally:
        lock.release()
    waiter.join(timeout=120)
    assert "50 unchanged" in result["out"]


def test_is_locked_sees_a_writer_in_this_process_and_in_another(tmp_path):
    import subprocess
    import sys

    from clipdex.storage.lock import is_locked

    assert not is_locked(tmp_path)
    with WriterLock(tmp_path):
        assert is_locked(tmp_path)
        assert is_locked(tmp_path)  # probing drops nothing
    assert not is_locked(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from clipdex.storage.lock import "
            "WriterLock; WriterLock(Path(sys.argv[1])).acquire(); print('held', flush=True); "
            "time.sleep(30)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not is_locked(tmp_path)
