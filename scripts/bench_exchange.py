"""Benchmark: `clipdex import` and `clipdex export` of N x 512 vectors: vectors/s and peak memory.

    python scripts/bench_exchange.py                 # 1,000,000 x 512
    python scripts/bench_exchange.py --n 200000
    python scripts/bench_exchange.py --tiny          # seconds: checks that it runs

Writes N clustered unit vectors (scripts/_synthetic.py) as clip-retrieval's inference
would (img_emb/img_emb_N.npy float32 + metadata/metadata_N.parquet, 100,000 rows a part)
with a clipdex-export.json naming a synthetic model, so no model is loaded. Then runs the
real CLI, each step in its own process (peak memory = that process's VmHWM, from wait4):
  1. import it into a new index (flat store: the FAISS file is built and saved too);
  2. export the index as parquet, npy and clip-retrieval (float16), one after the other;
  3. import the Parquet export into a second index (the round trip), and compare.
Rates divide by the command's own reported seconds (the whole import or export: checks,
catalog writes, the FAISS file); "wall" is the process, Python start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PART = 100_000


def write_layout(folder: Path, vectors: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    parts = range(0, len(vectors), PART)
    width = len(str(len(parts) - 1))
    for n, start in enumerate(parts):
        rows = vectors[start : start + PART]
        name = str(n).zfill(width)
        np.save(folder / "img_emb" / f"img_emb_{name}.npy", rows)
        uris = [f"/synthetic/{start + i:08d}.jpg" for i in range(len(rows))]
        table = pa.table({"image_path": uris, "size": np.full(len(rows), 50_000, np.int64)})
        pq.write_table(table, folder / "metadata" / f"metadata_{name}.parquet")
    model = {"name": "synthetic", "pretrained": "random", "dim": vectors.shape[1]}
    manifest = {"format": "clip-retrieval", "version": 1, "model": model}
    (folder / "clipdex-export.json").write_text(json.dumps(manifest))


def measured(*args: str) -> tuple[str, float, float, float]:
    """Run `clipdex ARGS`: (stdout, wall s, peak RSS MB, CPU s (user + system)) of that
    process. This process stays small (the layout is written by a child): a forked child's
    peak starts at its parent's size."""
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "clipdex", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out = child.stdout.read().decode()
    err = child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"clipdex {' '.join(args)} failed:\n{err}")
    return out, wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime


def rate(out: str) -> str:
    found = re.search(r"in ([\d.]+) s \(([\d,]+) vectors/s\)", out)
    return f"{found.group(2)} vectors/s ({found.group(1)} s)" if found else out.strip()


def digest(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--tiny", action="store_true", help="3,000 vectors")
    parser.add_argument(
        "--formats", default="parquet,npy,clip-retrieval", help="exports to time (parquet first)"
    )
    args = parser.parse_args()
    if args.tiny:
        args.n = 3_000
    work = Path(tempfile.mkdtemp(prefix="bench-exchange-"))
    try:
        layout = (
            "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
            "from bench_exchange import write_layout; from _synthetic import clustered; "
            "write_layout(Path(sys.argv[2]), clustered(int(sys.argv[3]), int(sys.argv[4])))"
        )
        where = str(Path(__file__).parent)
        subprocess.run(
            [sys.executable, "-c", layout, where, str(work / "src"), str(args.n), str(args.dim)],
            check=True,
        )
        print(f"n={args.n:,} x {args.dim}: layout {du(work / 'src'):,.0f} MB")
        index, copy = work / "index", work / "copy"
        out, wall, peak, cpu = measured("import", str(work / "src"), "--index", str(index))
        store = (index / "vectors.faiss").stat().st_size / 1e6
        print(
            f"import clip-retrieval: {rate(out)}, wall {wall:.1f} s, CPU {cpu:.1f} s "
            f"({args.n / cpu:,.0f} vectors/CPU-s), peak {peak:,.0f} MB "
            f"(the flat store alone {store:,.0f} MB; catalog {du(index) - store:,.0f} MB)"
        )
        for fmt in dict.fromkeys(["parquet", *args.formats.split(",")]):
            target = work / f"out-{fmt}"
            out, wall, peak, cpu = measured(
                "export", str(target), "--format", fmt, "--index", str(index)
            )
            print(
                f"export {fmt}: {rate(out)}, wall {wall:.1f} s, CPU {cpu:.1f} s "
                f"({args.n / cpu:,.0f} vectors/CPU-s), peak {peak:,.0f} MB, "
                f"{du(target):,.0f} MB written"
            )
            if fmt != "parquet":
                shutil.rmtree(target)
        out, wall, peak, cpu = measured("import", str(work / "out-parquet"), "--index", str(copy))
        print(
            f"import parquet (round trip): {rate(out)}, wall {wall:.1f} s, CPU {cpu:.1f} s "
            f"({args.n / cpu:,.0f} vectors/CPU-s), peak {peak:,.0f} MB"
        )
        same = digest(index / "vectors.faiss") == digest(copy / "vectors.faiss")
        print(f"round trip: FAISS files identical: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
