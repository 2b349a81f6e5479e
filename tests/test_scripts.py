"""Every script in scripts/ runs at its tiny size and prints its numbers, so none can rot."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clipdex.models.demo_weights import weights_path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"

#: What each script's output must show; a script not listed must print some number.
EXPECTED = {
    "bench_index.py": r"end-to-end [\d.]+ images/s .* run [\d.]+ images/s .* no-op re-index",
    "bench_classify.py": r"n=2,000 .* bare matmul [\d,]+ images/s, assignment [\d,]+ images/s",
    "bench_reindex.py": r"no-op re-index: [\d.]+ s wall(.|\n)* 0 embedded, 100 reused",
    "bench_decode.py": r"exact [\d.]+ ms/image .* draft [\d.]+ ms/image .* speed-up [\d.]+x",
    "bench_decode.py --tensor": r"exact [\d.]+ ms/image .* speed-up [\d.]+x(.|\n)*"
    r"tensor \(cpu, .*\): [\d.]+ ms/image .* PSNR min vs exact [\d.]+ dB(.|\n)*"
    r"thumbnail from the cpu tensor [\d.]+ ms/image",
    "bench_startup.py": r"new query, torch text tower +[\d.]+ s wall(.|\n)*new query, numpy text "
    r"tower +[\d.]+ s wall(.|\n)*repeated query \(query cache\) +[\d.]+ s wall(.|\n)*numpy text "
    r"tower: phases .*no torch import(.|\n)*numpy text tower +[\d.]+ ms/query",
    "bench_precision.py": r"fp32 +[\d.]+ +[\d.]+ (.|\n)*int8 +[\d.]+ +[\d.]+ +[\d.]+ +0\.9\d+ +0\.9\d+"
    r"(.|\n)*int8/fp32: images [\d.]+x, text [\d.]+x",
    "bench_search.py": r"flat .* 1\.000 (.|\n)*ivf .*nprobe=\d+(.|\n)*ivf-pq .*recall=[\d.]+",
    "bench_remote.py": r"folder [\d.]+ images/s, s3 [\d.]+ images/s, s3 \+ 50 ms [\d.]+",
    "bench_exif.py": r"exif on [\d.]+ s, off [\d.]+ s (.|\n)*photo_meta \d+ us/image .* [\d.]+% of the run",
    "bench_ray.py": r"in-process [\d.]+ images/s, ray [\d.]+ images/s, ray/in-process [\d.]+; "
    r"min cosine (1\.0+|0\.9999)",
    "train_demo_model.py": r"zero-shot top-1 over 48 labels: seen [\d.]+%",
    "screenshot.py": r"screenshot .*: \d+x\d+ px, \d+ KB; \d+\+? results? for",
    "bench_serve.py": r"text tower batched +1 (.|\n)*thumbnails \(cached\)(.|\n)*"
    r"text tower unbatched +128 (.|\n)*errors: 0",
    "bench_exchange.py": r"import clip-retrieval: [\d,]+ vectors/s(.|\n)*export parquet: [\d,]+ "
    r"vectors/s(.|\n)*export clip-retrieval(.|\n)*FAISS files identical: True",
    "bench_scale.py": r"write_batch, 32 rows a transaction: [\d,]+ rows/s(.|\n)*bulk import(.|\n)*"
    r"faiss ivf-pq: .*bytes/vector(.|\n)*S3 prefix .*: [\d,]+ objects/s",
    "bench_duplicates.py": r"threshold precision +recall(.|\n)* 0\.950 +[\d.]+ +[\d.]+(.|\n)*"
    r"n=5,000: duplicates [\d.]+ s, peak RSS \d+ MB; [\d,]+ groups, planted pairs recall [\d.]+",
    "bench_index.py --paths": r"best images/s bare [\d.]+, draft [\d.]+, exact [\d.]+; "
    r"draft/bare [\d.]+, .* draft [\d.]+ images/s per core, exact [\d.]+",
    "kill_loop.py": r"index: 2 trials, 2 ok, 0 failures(.|\n)*"
    r"classify: 2 trials(.|\n)*check --repair: 2 trials, 2 ok, 0 failures",
}


def scripts() -> list[str]:
    """Every script, and each extra mode listed in EXPECTED as "SCRIPT --FLAG"."""
    names = sorted(path.name for path in SCRIPTS.glob("*.py") if not path.name.startswith("_"))
    return names + sorted(name for name in EXPECTED if " " in name)


def test_every_script_is_covered():
    assert set(EXPECTED) <= set(scripts()), "a listed script is gone"


@pytest.mark.slow
@pytest.mark.parametrize("name", scripts())
def test_script_runs_at_its_tiny_size(name, tmp_path):
    shipped = hashlib.sha256(weights_path().read_bytes()).hexdigest()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), TMPDIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name.split()[0]), "--tiny", *name.split()[1:]],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert re.search(EXPECTED.get(name, r"\d"), done.stdout), done.stdout
    # no tiny run may overwrite the shipped demo weights
    assert hashlib.sha256(weights_path().read_bytes()).hexdigest() == shipped
