"""Kill-safety loop: SIGKILL `index`, `classify` and `check --repair` at random points.

    python scripts/kill_loop.py                      # 20 trials of each, 300 images
    python scripts/kill_loop.py --trials 50 --commands index
    python scripts/kill_loop.py --tiny               # 2 trials of each on 40 images

Each trial starts the real CLI (`python -m clipdex ... --model clipdex-tiny`) in a
subprocess, SIGKILLs it after a random delay (uniform over the length of an unkilled run
of the same kind), re-runs the same command at once to completion, then asks the library
(`Index.check()`) whether the index is sound, with exact counts:
  - index:    between trials the folder changes (images added, removed, rewritten) and
              every fourth trial starts from an empty index; after the re-run, check must
              be ok with as many images and vectors as the folder holds images;
  - classify: alternates between two label sets; right after the kill the latest labels
              must be the previous complete run or the new run complete, never a partial
              run; after the re-run, the new run, complete;
  - repair:   the FAISS file is deleted, truncated or its sidecar removed first; after
              the re-run of `check --repair`, check must be ok with exact counts.
A re-run refused with "being updated" (a lock left behind) is a failure too.
Prints one summary line per command (trials, ok, failures) and the failures; exits 1 if
there was any.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = ["--model", "clipdex-tiny"]
LABEL_SETS = (["red", "green", "blue"], ["cat", "dog", "car", "tree"])


@dataclass
class Tally:
    command: str
    trials: int = 0
    ok: int = 0
    killed_mid_run: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.command}: {self.trials} trials, {self.ok} ok, {len(self.failures)} failures "
            f"({self.killed_mid_run} killed mid-run, the others had finished first)"
        )


class Photos:
    """A folder of generated images that changes between trials."""

    def __init__(self, folder: Path, count: int, seed: int):
        self.folder = folder
        self.rng = np.random.default_rng(seed)
        self.serial = 0
        folder.mkdir(parents=True)
        for _ in range(count):
            self.add()

    def add(self) -> None:
        self._write(self.folder / f"img{self.serial:06d}.jpg")
        self.serial += 1

    def _write(self, path: Path) -> None:
        height, width = (int(v) for v in self.rng.integers(48, 160, size=2))
        pixels = self.rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=85)

    def files(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def change(self, count: int) -> None:
        """Add `count` images, remove `count // 2`, rewrite `count // 2` with new content."""
        existing = self.files()
        picked = self.rng.choice(len(existing), size=min(len(existing), count), replace=False)
        half = len(picked) // 2
        for i in picked[:half]:
            existing[i].unlink()
        for i in picked[half : 2 * half]:
            self._write(existing[i])
        for _ in range(count):
            self.add()


class Loop:
    def __init__(self, root: Path, photos: Photos, rng: random.Random):
        self.index = root / "index"
        self.logs = root / "logs"
        self.logs.mkdir()
        self.photos = photos
        self.rng = rng
        self.runs = 0
        self.spans: dict[str, float] = {}  # an unkilled run of each kind, seconds

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "clipdex", *args, "--index", str(self.index)]

    def run(self, kind: str, *args: str, calibrate: bool = False) -> str | None:
        """Run to completion; None, or why it failed. A `calibrate` run sets how long a
        run of its kind lasts (re-runs after a kill only finish the rest: shorter)."""
        started = time.monotonic()
        done = subprocess.run(self.command(*args), capture_output=True, text=True, timeout=900)
        if calibrate:
            self.spans[kind] = time.monotonic() - started
        if done.returncode != 0:
            return f"re-run exited {done.returncode}: {done.stderr.strip()[-300:]}"
        return None

    def run_killed(self, kind: str, *args: str) -> bool:
        """Start, SIGKILL after a random delay; True if it was still running then."""
        self.runs += 1
        log = open(self.logs / f"{self.runs:04d}.log", "w")  # noqa: SIM115
        # Output to a file: a pipe would stay open while any child of the killed process lives.
        process = subprocess.Popen(self.command(*args), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            process.wait(timeout=self.rng.uniform(0, self.spans.get(kind, 5.0)))
            return False
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return True

    def verify(self) -> str | None:
        """None if check is ok with as many images and vectors as the folder holds."""
        from clipdex.api import Index

        expected = len(self.photos.files())
        with Index(self.index) as index:
            report = index.check()
        if not report.ok:
            return f"check: {'; '.join(report.problems)}"
        if (report.images, report.vectors) != (expected, expected):
            return f"check: {report.images} images, {report.vectors} vectors, expected {expected}"
        return None

    def labels(self) -> tuple[list[str], int]:
        """The latest classification run's labels and how many images it labelled."""
        from clipdex.api import Index

        with Index(self.index) as index:
            _, counts = index.label_counts()
        return [name for name, _ in counts], sum(count for _, count in counts)


def trial(tally: Tally, body: Callable[..., tuple[bool, str | None]], *args) -> None:
    """Run one trial: body(*args) returns (killed mid-run, None or what went wrong)."""
    tally.trials += 1
    try:
        killed, problem = body(*args)
    except Exception as exc:  # a crash of the harness is a failed trial, not the end
        killed, problem = False, f"{type(exc).__name__}: {exc}"
    tally.killed_mid_run += killed
    if problem:
        tally.failures.append(f"trial {tally.trials}: {problem}")
    else:
        tally.ok += 1


def index_trials(loop: Loop, trials: int, change: int) -> Tally:
    tally = Tally("index")
    index_args = ("index", str(loop.photos.folder), *MODEL, "--batch-size", "16")
    problem = loop.run("fresh", *index_args, calibrate=True)
    loop.photos.change(change)
    problem = problem or loop.run("update", *index_args, calibrate=True)
    if problem:
        raise SystemExit(f"index does not run: {problem}")
    for number in range(trials):
        trial(
            tally, index_trial, loop, index_args, "fresh" if number % 4 == 3 else "update", change
        )
    return tally


def index_trial(loop: Loop, index_args, kind: str, change: int) -> tuple[bool, str | None]:
    if kind == "fresh":
        shutil.rmtree(loop.index)
    else:
        loop.photos.change(change)
    killed = loop.run_killed(kind, *index_args)
    return killed, loop.run(kind, *index_args) or loop.verify()


def classify_trials(loop: Loop, trials: int) -> Tally:
    tally = Tally("classify")
    problem = loop.run("classify", *classify_args(LABEL_SETS[0]), calibrate=True)
    if problem:
        raise SystemExit(f"classify does not run: {problem}")
    for number in range(trials):
        trial(tally, classify_trial, loop, LABEL_SETS[number % 2], LABEL_SETS[(number + 1) % 2])
    return tally


def classify_args(labels: list[str]) -> tuple[str, ...]:
    return ("classify", "--labels", ",".join(labels), "--templates", "none", "--out", os.devnull)


def classify_trial(loop: Loop, previous: list[str], new: list[str]) -> tuple[bool, str | None]:
    """`previous` is the last complete run; kill a run of `new`, then run it to the end."""
    images = len(loop.photos.files())
    killed = loop.run_killed("classify", *classify_args(new))
    names, labelled = loop.labels()
    if names not in (previous, new) or labelled != images:
        return killed, (
            f"after the kill: labels {names} on {labelled} of {images} images "
            f"(expected {previous} or {new}, complete)"
        )
    problem = loop.run("classify", *classify_args(new))
    names, labelled = loop.labels()
    if not problem and (names != new or labelled != images):
        problem = f"after the re-run: labels {names} on {labelled} of {images} images"
    return killed, problem or loop.verify()


def repair_trials(loop: Loop, trials: int) -> Tally:
    tally = Tally("check --repair")
    from clipdex.vectors import INDEX_FILE

    (loop.index / INDEX_FILE).unlink(missing_ok=True)
    if loop.run("repair", "check", "--repair", calibrate=True):
        raise SystemExit("check --repair does not run")
    for number in range(trials):
        trial(tally, repair_trial, loop, number % 3)
    return tally


def repair_trial(loop: Loop, damage: int) -> tuple[bool, str | None]:
    """Damage the derived FAISS file (0: delete, 1: truncate, 2: drop its sidecar)."""
    from clipdex.vectors import INDEX_FILE, SIDECAR_FILE

    faiss_file = loop.index / INDEX_FILE
    if damage == 0:
        faiss_file.unlink(missing_ok=True)
    elif damage == 1 and faiss_file.exists():
        faiss_file.write_bytes(faiss_file.read_bytes()[: faiss_file.stat().st_size // 2])
    else:
        (loop.index / SIDECAR_FILE).unlink(missing_ok=True)
    killed = loop.run_killed("repair", "check", "--repair")
    return killed, loop.run("repair", "check", "--repair") or loop.verify()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, help="per command (default 20; --tiny: 2)")
    parser.add_argument("--images", type=int, help="(default 300; --tiny: 40)")
    parser.add_argument(
        "--commands", default="index,classify,repair", help="comma-separated: index,classify,repair"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="2 trials of each on 40 images")
    args = parser.parse_args()
    trials = args.trials if args.trials is not None else (2 if args.tiny else 20)
    images = args.images or (40 if args.tiny else 300)
    commands = args.commands.split(",")
    unknown = set(commands) - {"index", "classify", "repair"}
    if unknown:
        parser.error(f"unknown commands: {', '.join(sorted(unknown))}")
    rng = random.Random(args.seed)
    tallies = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Photos(Path(tmp) / "photos", images, args.seed)
        loop = Loop(Path(tmp), photos, rng)
        if "index" in commands:
            tallies.append(index_trials(loop, trials, change=max(2, images // 20)))
            print(tallies[-1].summary(), flush=True)
        elif loop.run("fresh", "index", str(photos.folder), *MODEL):
            raise SystemExit("index does not run")
        if "classify" in commands:
            tallies.append(classify_trials(loop, trials))
            print(tallies[-1].summary(), flush=True)
        if "repair" in commands:
            tallies.append(repair_trials(loop, trials))
            print(tallies[-1].summary(), flush=True)
    for tally in tallies:
        for failure in tally.failures:
            print(f"  {tally.command} {failure}")
    sys.exit(1 if any(tally.failures for tally in tallies) else 0)


if __name__ == "__main__":
    main()
