"""Benchmark: `clipdex search "text"` from process start to its output, cold, broken down
by phase; a repeated (cached) query; text query encoding, whole model vs text tower.

    python scripts/bench_coldstart.py --index DIR --checkpoint FILE [--before OLD_SRC]
    python scripts/bench_coldstart.py --tiny          # seconds: clipdex-tiny, 2,000 vectors

DIR is an index whose model is FILE (a ViT-B-32-256 checkpoint: its random weights saved
with torch.save; scripts/_synthetic.py build_index(DIR, clustered(1_000_000, 512),
identity=...) writes 1M vectors). `--before` runs the same commands with another clipdex
source tree first on PYTHONPATH (e.g. `git archive OLD src | tar -x -C /tmp/old`): side by
side. Each cold run asks a new query (no cache); wall and CPU (user + sys) are medians.
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

#: Run in a fresh process: each phase of a text search, timed (wall, CPU), as the command
#: does it. NEW: the text tower and the query cache's path; OLD: any clipdex (the whole model).
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
folder, text, new = sys.argv[1], sys.argv[2], sys.argv[3] == "new"
import clipdex.cli, clipdex.api
from clipdex.api import Index
from clipdex.models.spec import spec_for
phase("imports (cli, api, sqlalchemy, numpy)")
index = Index(folder, precision="fp32")
identity = index.model_identity()
phase("catalog open")
if new:
    import torch
    phase("import torch")
    from clipdex.models.text_encoder import load_text_encoder
    model = load_text_encoder(spec_for(identity), precision="fp32")
    phase("text tower: build, load, hash")
else:
    import open_clip
    phase("import torch + open_clip")
    from clipdex.models.open_clip import Embedder
    model = Embedder(spec_for(identity), precision="fp32")
    phase("whole model: build (random init), load, hash")
assert model.identity == identity
query = model.encode_texts([text])[0]
phase("encode the query")
store = index.vectors
phase("open the vector index")
store.search(query[None, :], 10)
phase("search")
out["total"] = [time.perf_counter() - start, cpu()]
print(json.dumps(out))
"""

#: Text encoding throughput in one process: the whole model (open_clip) vs the text tower,
#: its shorter pass off and on.
ENCODE = r"""
import json, sys, time
import torch
from clipdex.models.open_clip import Embedder
from clipdex.models.spec import ModelSpec
from clipdex.models.text_encoder import load_text_encoder
name, checkpoint, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
spec = ModelSpec(name, checkpoint=checkpoint)
texts = [f"a photo of a {w} number {i}" for i, w in enumerate(["dog", "red car", "beach at night with a lighthouse"] * n)][:n]
def timed(model):
    model.encode_texts(texts[:2])  # warm
    t = time.perf_counter()
    for text in texts[:20]:
        model.encode_texts([text])
    one = (time.perf_counter() - t) / 20 * 1000
    t = time.perf_counter()
    model.encode_texts(texts, batch_size=256)
    return one, n / (time.perf_counter() - t)
torch.set_num_threads(torch.get_num_threads())
out = {"whole model (open_clip, 77 tokens)": timed(Embedder(spec, precision="fp32"))}
tower = load_text_encoder(spec, precision="fp32")
tower.net.shorter = False
out["text tower, 77 tokens"] = timed(tower)
tower.net.shorter = True
out["text tower, shorter pass"] = timed(tower)
print(json.dumps(out))
"""


def env_for(src: Path) -> dict:
    paths = [str(src), str(HERE)] + [p for p in sys.path if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1")


def run(args: list[str], src: Path) -> tuple[float, float, str]:
    """(wall, CPU of the child, stdout) of one process."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env_for(src), timeout=900)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return wall, cpu, done.stdout


def search(folder: Path, text: str, src: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "clipdex", "search", text, "-k", "10", "--index", str(folder)]
    wall, cpu, out = run([*cmd, "--precision", "fp32"], src)
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
    parser.add_argument("--before", type=Path, help="another clipdex src tree (side by side)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--encode", type=int, default=1000, help="texts for queries/s")
    parser.add_argument("--tiny", action="store_true", help="clipdex-tiny, 2,000 vectors")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory()
    if args.tiny:
        args.index, args.checkpoint = tiny_setup(Path(scratch.name))
        args.model, args.runs, args.encode = "clipdex-tiny", 1, 64
    if args.index is None or args.checkpoint is None:
        parser.error("give --index and --checkpoint (or --tiny)")
    trees = [("before", args.before), ("after", SRC)] if args.before else [("after", SRC)]
    stamp = int(time.time())
    print(f"index {args.index} ({args.model}), {args.runs} runs each, medians")
    for label, src in trees:
        cold = [
            search(args.index, f"cold query {label} {stamp} {i}", src) for i in range(args.runs)
        ]
        print(f"{label:6} cold search  {median_pair(cold)}")
    repeated = f"a repeated query {stamp}"
    search(args.index, repeated, SRC)
    warm = [search(args.index, repeated, SRC) for _ in range(args.runs)]
    print(f"after  repeated query (cached) {median_pair(warm)}")
    for label, src in trees:
        new = "new" if label == "after" else "old"
        runs = [
            json.loads(
                run(
                    [sys.executable, "-c", PHASES, str(args.index), f"phase {stamp} {i}", new],
                    src,
                )[2]
            )
            for i in range(args.runs)
        ]
        print(f"{label} phases (median wall s / CPU s):")
        for name in runs[0]:
            wall = statistics.median(r[name][0] for r in runs)
            cpu = statistics.median(r[name][1] for r in runs)
            print(f"  {name:46} {wall:6.2f} {cpu:6.2f}")
    out = json.loads(
        run(
            [sys.executable, "-c", ENCODE, args.model, str(args.checkpoint), str(args.encode)],
            SRC,
        )[2]
    )
    print("text query encoding (fp32):")
    for name, (ms, per_s) in out.items():
        print(f"  {name:36} {ms:7.1f} ms/query  {per_s:8.1f} queries/s batched")


if __name__ == "__main__":
    main()
