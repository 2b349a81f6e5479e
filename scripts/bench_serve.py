"""Benchmark: `clipdex serve` under load, micro-batching on vs off, side by side.

    python scripts/bench_serve.py                 # 100,000 vectors, ViT-B-32-256 random weights
    python scripts/bench_serve.py --tiny          # seconds: clipdex-tiny, 3,000 vectors
    python scripts/bench_serve.py --text-paths tower,full --modes batched --kind auto
    python scripts/bench_serve.py --encode-only   # in process: full model vs text tower

An index of synthetic vectors (scripts/_synthetic.py; the catalog records the model
served, so text queries go through its real text tower) is served by a `clipdex serve`
process on 127.0.0.1, once with micro-batching and once with --no-batching. An asyncio +
httpx load generator runs 1, 8, 32 and 128 concurrent clients of text queries (distinct
texts, k=20), then thumbnail requests (made on demand from real JPEGs behind the first
ids: a cold pass, then cached). Every level asks texts no earlier level asked (the
server keeps query vectors in memory); a last row asks the first level's texts again.
Reported: p50/p99 latency, queries/s, errors.

`--text-paths tower,full` serves the same index once per way of encoding text queries
(the text tower's shorter pass, the default, or the whole open_clip model: `serve
--text-path`), side by side; `--kind` picks the vector store (`auto`: what a new index of
this size gets, vectors/auto.py).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _synthetic import build_index, clustered

#: Vector sizes of the models this benchmark serves (random weights: no download).
DIMS = {"clipdex-tiny": 64, "clipdex-tiny-96": 96}
WORDS = ("dog", "cat", "beach", "car", "tree", "house", "river", "snow", "bird", "boat")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_photos(root: Path, count: int) -> None:
    """Real JPEGs behind ids 1..count (build_index names rows ROOT/NNNNNNN.jpg)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        x = np.linspace(0, 255, 1024)[None, :, None]
        y = np.linspace(0, 255, 768)[:, None, None]
        tint = rng.integers(0, 255, 3)
        pixels = (x * 0 + y * 0 + tint + rng.normal(0, 20, (768, 1024, 3))).clip(0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{i:07d}.jpg", quality=85)


class Server:
    """`clipdex serve` in a child process, ready when /readyz says so."""

    def __init__(self, index: Path, batching: bool, text_path: str = "tower"):
        import httpx

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "clipdex", "serve", "--index", str(index)]
        command += ["--port", str(self.port)] + ([] if batching else ["--no-batching"])
        command += ["--text-path", text_path]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise SystemExit("the server exited before it was ready")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server was not ready within 300 s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


async def load(base: str, clients: int, requests: int, paths) -> tuple[list[float], int, float]:
    """`clients` concurrent clients share `requests` GETs of paths(i); latencies, errors, s."""
    import httpx

    latencies: list[float] = []
    errors = 0
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client_loop(client) -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            try:
                response = await client.get(paths(i))
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:
        await client.get("/healthz")
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def text_path(i: int) -> str:
    words = f"a photo of a {WORDS[i % len(WORDS)]} and a {WORDS[(i // 7) % len(WORDS)]} {i}"
    return f"/api/v1/search?k=20&q={words.replace(' ', '+')}"


def thumb_path(i: int, ids: int) -> str:
    return f"/api/v1/images/{1 + i % ids}/thumbnail"


def row(name: str, clients: int, latencies: list[float], errors: int, elapsed: float) -> float:
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    rate = len(latencies) / elapsed
    print(
        f"{name:28} {clients:>7} {len(latencies):>8} {p50:>8.1f} {p99:>8.1f} {rate:>9.1f} {errors:>6}"
    )
    return rate


def encode_only(identity, precision: str, repeats: int = 5) -> None:
    """In this process: one text, and a batch of 32 texts of different lengths, through the
    whole model's text path and the text tower's shorter pass (the same weights)."""
    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import spec_for
    from clipdex.models.text_tower import text_tower_of

    full = Embedder(spec_for(identity), "cpu", precision)
    tower = text_tower_of(full)
    texts = [text_path(i).split("q=")[1].replace("+", " ") + " here" * (i % 9) for i in range(32)]
    gap = float(np.abs(full.encode_texts(texts) - tower.encode_texts(texts)).max())
    singly = np.concatenate([tower.encode_texts([text]) for text in texts])
    same = float(np.abs(tower.encode_texts(texts) - singly).max())
    print(f"encode in process ({full.precision}); tower vs full max |diff| {gap:.1e}, ", end="")
    print(f"tower batch vs one by one {same:.1e}")
    tower32 = text_tower_of(full, "fp32")
    models = [("full", full), (f"tower {tower.precision}", tower), ("tower fp32", tower32)]
    for name, model in models[:2] if full.precision == "fp32" else models:
        model.encode_texts(["warm up"])
        started = time.perf_counter()
        for i in range(repeats):
            model.encode_texts([texts[i]])
        one = (time.perf_counter() - started) / repeats * 1000
        started = time.perf_counter()
        model.encode_texts(texts)
        batch = (time.perf_counter() - started) * 1000
        print(
            f"{name:6} one text {one:7.1f} ms   batch of 32 {batch:7.1f} ms ({batch / 32:.1f}/text)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the index")
    parser.add_argument("--model", default="ViT-B-32-256")
    parser.add_argument("--levels", default="1,8,32,128", help="concurrent clients")
    parser.add_argument("--requests", type=int, default=256, help="text queries per level")
    parser.add_argument("--photos", type=int, default=64, help="real images for thumbnails")
    parser.add_argument("--tiny", action="store_true", help="seconds: clipdex-tiny, 3,000")
    parser.add_argument("--text-paths", default="tower", help="tower,full: side by side")
    parser.add_argument("--modes", default="batched,unbatched", help="batched,unbatched")
    parser.add_argument("--kind", default="flat", help="vector store: flat, ivf, auto, ...")
    parser.add_argument("--encode-only", action="store_true", help="in process: full vs tower")
    parser.add_argument("--precision", default="auto", help="of --encode-only")
    args = parser.parse_args()
    if args.tiny:
        args.n, args.model, args.requests, args.photos = 3000, "clipdex-tiny", 64, 8
    from clipdex.models.spec import RANDOM_WEIGHTS
    from clipdex.types import ModelIdentity

    dim = DIMS.get(args.model, 512)
    identity = ModelIdentity(args.model, RANDOM_WEIGHTS, dim)
    if args.encode_only:
        encode_only(identity, args.precision)
        return
    levels = [int(x) for x in args.levels.split(",")]
    kind = args.kind
    if kind == "auto":
        from clipdex.vectors.auto import choose

        kind = choose(args.n, dim).kind
    configs = [
        (path, mode) for path in args.text_paths.split(",") for mode in args.modes.split(",")
    ]
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        write_photos(photos, args.photos)
        index.mkdir()
        started = time.perf_counter()
        build_index(index, clustered(args.n, dim), identity, kind=kind, root=str(photos))
        print(
            f"n={args.n:,} model={args.model} (random weights, {dim}-d) {kind} index built in "
            f"{time.perf_counter() - started:.1f} s; {os.cpu_count()} cores; "
            f"{args.requests} text queries (k=20) per level"
        )
        print(
            f"{'':28} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'queries/s':>9} {'errors':>6}"
        )
        rates: dict[tuple[str, int], float] = {}
        total_errors = 0
        for number, (path, batching_mode) in enumerate(configs):
            batching = batching_mode == "batched"
            mode = f"{path} {batching_mode}"
            server = Server(index, batching, path)
            try:
                # every level asks texts no earlier one asked (the server caches vectors)
                warm = functools.partial(lambda i, at: text_path(at + i), at=1_000_000)
                asyncio.run(load(server.base, 1, 8, warm))  # warm up
                start = 0
                for clients in levels:
                    requests = max(args.requests, 2 * clients)
                    paths = functools.partial(lambda i, at: text_path(at + i), at=start)
                    lat, errors, s = asyncio.run(load(server.base, clients, requests, paths))
                    rates[mode, clients] = row(f"text {mode}", clients, lat, errors, s)
                    total_errors += errors
                    start += requests
                # the first level's texts again: answered from the server's memory
                lat, errors, s = asyncio.run(load(server.base, 1, args.requests, text_path))
                row(f"text {mode} repeated", 1, lat, errors, s)
                total_errors += errors
                if number == 0:
                    ids = args.photos
                    thumb = functools.partial(thumb_path, ids=ids)

                    for name in ("thumbnails (cold)", "thumbnails (cached)"):
                        lat, errors, s = asyncio.run(load(server.base, min(8, ids), ids, thumb))
                        row(name, min(8, ids), lat, errors, s)
                        total_errors += errors
                    lat, errors, s = asyncio.run(load(server.base, 32, 4 * args.requests, thumb))
                    row("thumbnails (cached)", 32, lat, errors, s)
                    total_errors += errors
            finally:
                server.stop()
        high = 32 if 32 in levels else levels[-1]
        for mode in (f"{path} {batching_mode}" for path, batching_mode in configs):
            one, many = rates.get((mode, 1)), rates.get((mode, high))
            if one and many:
                print(
                    f"{mode}: {many:.1f} queries/s at {high} clients = {many / one:.2f}x "
                    f"the one-client rate ({one:.1f})"
                )
        for path in args.text_paths.split(","):
            if (f"{path} batched", high) in rates and (f"{path} unbatched", high) in rates:
                gain = rates[f"{path} batched", high] / rates[f"{path} unbatched", high]
                print(f"batching ({path}) at {high} clients: {gain:.2f}x the unbatched rate")
        print(f"errors: {total_errors}")


if __name__ == "__main__":
    main()
