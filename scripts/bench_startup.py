"""Benchmark: `clipdex search "text"` from process start to its output, side by side in
one run: a new query through the torch text tower, a new query through the numpy text
tower (no torch import), and a repeated query (the query cache); then each path's phases
timed in a fresh process, and text encoding speed of both towers.

    python scripts/bench_startup.py --index DIR --checkpoint FILE [--runs 5]
    python scripts/bench_startup.py --tiny          # seconds: clipdex-tiny, 2,000 vectors

DIR is an index whose model is FILE (a ViT-B-32-256 checkpoint: its random weights saved
with torch.save; scripts/_synthetic.py build_index(DIR, clustered(1_000_000, 512),
identity=...) writes 1M vectors). The tower cache is a scratch folder (CLIPDEX_CACHE),
filled by one search before timing; the torch runs set CLIPDEX_TEXT_BACKEND=torch. Runs
alternate between the three paths; wall and CPU (user + sys of the process) are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
PATHS = ("torch", "numpy", "cached")
LABELS = {
    "torch": "new query, torch text tower",
    "numpy": "new query, numpy text tower",
    "cached": "repeated query (query cache)",
}

#: Run in a fresh process: each phase of a text search, timed (wall, CPU), as the command
#: does it, for one path: torch (the torch text tower), numpy (the cached numpy tower) or
#: cached (the query cache holds the vector).
PHASES = r"""
import json, resource, sys, time
start = time.perf_counter()
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
out, mark = {}, [start, cpu()]
def phase(name):
    now = [time.perf_counter(), cpu()]
    out[name] = [now[0] - mark[0], now[1] - mark[1]]
    mark[:] = now
folder, text, path = sys.argv[1], sys.argv[2], sys.argv[3]
import clipdex.cli, clipdex.api
from clipdex.api import Index
from clipdex.models.spec import spec_for
phase("imports (cli, api, sqlalchemy, numpy)")
index = Index(folder, precision="fp32")
identity = index.model_identity()
phase("catalog open")
if path == "cached":
    from clipdex.storage.query_cache import QueryCache
    query = QueryCache(index.catalog).get(identity, text)
    assert query is not None, "not cached"
    phase("query cache lookup")
elif path == "torch":
    import torch
    phase("import torch")
    from clipdex.models.text_encoder import load_text_encoder
    model = load_text_encoder(spec_for(identity), "cpu", "fp32")
    phase("text tower: build, load, SHA-256 (thread)")
else:
    from clipdex.models.numpy_tower import load_numpy_text_encoder
    model = load_numpy_text_encoder(spec_for(identity), identity, "cpu", "fp32")
    assert model is not None, "no tower cache"
    phase("numpy tower: recorded SHA-256, memory-map")
    from clipdex.models.bpe import tokenizer
    import ftfy
    tokenizer()
    phase("tokenizer: vocabulary, ftfy")
if path != "cached":
    assert model.identity == identity
    query = model.encode_texts([text])[0]
    phase("encode the query")
store = index.vectors
phase("open the vector index")
store.search(query[None, :], 10)
phase("search")
out["total"] = [time.perf_counter() - start, cpu()]
out["torch imported"] = "torch" in sys.modules
print(json.dumps(out))
"""

#: Text encoding speed in one process: the torch text tower and the numpy one, both with
#: the shorter pass: ms for one query, queries/s batched by 256.
ENCODE = r"""
import json, sys, time
from clipdex.models.numpy_tower import load_numpy_text_encoder
from clipdex.models.spec import ModelSpec
from clipdex.models.text_encoder import load_text_encoder
name, checkpoint, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = ModelSpec(name, checkpoint=checkpoint)
words = ["dog", "red car", "beach at night with a lighthouse"]
texts = [f"a photo of a {words[i % 3]} number {i}" for i in range(n)]
def timed(model):
    model.encode_texts(texts[:2])  # warm
    t = time.perf_counter()
    for text in texts[:20]:
        model.encode_texts([text])
    one = (time.perf_counter() - t) / 20 * 1000
    t = time.perf_counter()
    model.encode_texts(texts, batch_size=256)
    return one, n / (time.perf_counter() - t)
tower = load_numpy_text_encoder(spec, None, "cpu", "fp32")
tower.load_torch_tower = None  # its own batches too (it hands large ones to torch)
out = {"numpy text tower": timed(tower)}
out["torch text tower"] = timed(load_text_encoder(spec, "cpu", "fp32"))
print(json.dumps(out))
"""


def env_for(cache: Path, **extra: str) -> dict:
    paths = [str(SRC), str(HERE)] + [p for p in sys.path if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1")
    env.pop("CLIPDEX_TEXT_BACKEND", None)
    return {**env, "CLIPDEX_CACHE": str(cache), **extra}


def run(args: list[str], env: dict) -> tuple[float, float, str]:
    """(wall, CPU of the child, stdout) of one process."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu, done.stdout


def search(folder: Path, text: str, env: dict) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "clipdex", "search", text, "-k", "10", "--index", str(folder)]
    wall, cpu, out = run([*cmd, "--precision", "fp32"], env)
    assert "/" in out, out
    return wall, cpu


def median_pair(pairs: list[tuple[float, float]]) -> str:
    wall = statistics.median(p[0] for p in pairs)
    cpu = statistics.median(p[1] for p in pairs)
    return f"{wall:6.2f} s wall {cpu:6.2f} s CPU"


def tiny_setup(root: Path) -> tuple[Path, Path]:
    import numpy as np
    import torch

    from _synthetic import build_index, clustered
    from clipdex.models.open_clip import Embedder
    from clipdex.models.spec import ModelSpec

    checkpoint = root / "tiny.pt"
    torch.save(Embedder(ModelSpec("clipdex-tiny")).model.state_dict(), checkpoint)
    identity = Embedder(ModelSpec("clipdex-tiny", checkpoint=str(checkpoint))).identity
    folder = root / "index"
    folder.mkdir()
    build_index(folder, clustered(2_000, identity.dim).astype(np.float32), identity=identity)
    return folder, checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--model", default="ViT-B-32-256")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--encode", type=int, default=256, help="texts for queries/s (0: skip)")
    parser.add_argument("--tiny", action="store_true", help="clipdex-tiny, 2,000 vectors")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    cache = Path(scratch.name) / "cache"
    if args.tiny:
        args.index, args.checkpoint = tiny_setup(Path(scratch.name))
        args.model, args.runs, args.encode = "clipdex-tiny", 1, 64
    if args.index is None or args.checkpoint is None:
        parser.error("give --index and --checkpoint (or --tiny)")
    envs = {
        "torch": env_for(cache, CLIPDEX_TEXT_BACKEND="torch"),
        "numpy": env_for(cache),
        "cached": env_for(cache),
    }
    stamp = int(time.time())
    kind = json.loads((args.index / "vectors.json").read_text()).get("type", "?")
    print(f"index {args.index} ({args.model}, {kind}), {args.runs} runs each, medians")
    search(args.index, f"fills the tower cache {stamp}", envs["numpy"])  # torch, then cached
    repeated = f"a repeated query {stamp}"
    search(args.index, repeated, envs["numpy"])
    times: dict[str, list] = {path: [] for path in PATHS}
    for i in range(args.runs):  # alternating, so load changes hit all three alike
        for path in PATHS:
            text = repeated if path == "cached" else f"cold query {path} {stamp} {i}"
            times[path].append(search(args.index, text, envs[path]))
    for path in PATHS:
        print(f"{LABELS[path]:32} {median_pair(times[path])}")
    for path in PATHS:
        runs = []
        for i in range(args.runs):
            text = repeated if path == "cached" else f"phase {path} {stamp} {i}"
            cmd = [sys.executable, "-c", PHASES, str(args.index), text, path]
            runs.append(json.loads(run(cmd, envs[path])[2]))
        imported = "imports torch" if runs[0].pop("torch imported") else "no torch import"
        for r in runs[1:]:
            r.pop("torch imported")
        print(f"{LABELS[path]}: phases (median wall s / CPU s), {imported}")
        for name in runs[0]:
            wall = statistics.median(r[name][0] for r in runs)
            cpu = statistics.median(r[name][1] for r in runs)
            print(f"  {name:46} {wall:6.2f} {cpu:6.2f}")
    if args.encode:
        cmd = [sys.executable, "-c", ENCODE, args.model, str(args.checkpoint), str(args.encode)]
        out = json.loads(run(cmd, envs["numpy"])[2])
        print("text query encoding (fp32, shorter pass):")
        for name, (ms, per_s) in out.items():
            print(f"  {name:20} {ms:7.1f} ms/query  {per_s:8.1f} queries/s batched")


if __name__ == "__main__":
    main()
