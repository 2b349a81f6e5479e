"""`clipdex demo`: zero-shot retrieval and classification, offline, in under a minute."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from clipdex.models.builtin import DEMO_MODEL
from clipdex.models.spec import ModelSpec
from clipdex.samples import COLOURS, HELD_OUT, SHAPES, labels, write_samples

QUERIES = ("a red circle", "a blue star", "a green square")


def run_demo(
    folder: Path | None = None, count: int = 288, index_folder: Path | None = None
) -> Iterator[str]:
    """Write samples, index them with the demo model, search and classify; yield lines.

    With `index_folder`, the index is kept there (with its classification run saved, so
    a server can filter by label); images then go to `folder` or beside the index.
    """
    from clipdex.api import open_index
    from clipdex.classify.runs import ClassifyOptions
    from clipdex.types import LabelSet

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clipdex-demo-") as tmp:
        base = Path(index_folder).parent if index_folder is not None else Path(tmp)
        images = Path(folder) if folder is not None else base / "shapes"
        samples = write_samples(images, count, seed=1, size=96)
        truth = {str(s.path): f"{s.colour} {s.shape}" for s in samples}
        where = images if folder is not None or index_folder else "a temporary folder"
        yield f"wrote {len(samples)} images of coloured shapes to {where}"
        held = sorted(HELD_OUT)[0]
        queries = [*QUERIES, f"a {held[0]} {held[1]}"]
        with open_index(index_folder or Path(tmp) / "index") as index:
            report = index.add(images, model=ModelSpec(DEMO_MODEL))
            yield (
                f"indexed them with {DEMO_MODEL} (a small model trained on generated shapes, "
                f"shipped with clipdex) at {report.images_per_s:.0f} images/s"
            )
            for query in queries:
                hits = index.search(query, k=5)
                right = sum(truth.get(h.uri) == query[2:] for h in hits)
                note = (
                    "  (a combination the model never saw in training)"
                    if query == queries[-1]
                    else ""
                )
                yield ""
                yield f'search "{query}": {right} of the top 5 are {query[2:]}s{note}'
                for hit in hits:
                    yield f"  {hit.score:.3f}  {Path(hit.uri).name}"
            result = index.classify(
                LabelSet(labels()), ClassifyOptions(templates="none", save=index_folder is not None)
            )
            records = list(result.records(index.catalog))
        correct = [r for r in records if truth.get(r["uri"]) == r["label"]]
        held_names = {f"{c} {s}" for c, s in HELD_OUT}
        held_rows = [r for r in records if truth.get(r["uri"]) in held_names]
        held_right = [r for r in held_rows if truth.get(r["uri"]) == r["label"]]
        yield ""
        yield (
            f"classify over all {len(COLOURS) * len(SHAPES)} colour x shape labels: "
            f"{len(correct)}/{len(records)} correct ({len(correct) / len(records):.0%}); "
            f"on combinations never seen in training "
            f"{len(held_right)}/{len(held_rows)} ({len(held_right) / max(1, len(held_rows)):.0%})"
        )
        yield f"done in {time.perf_counter() - started:.1f} s"
    yield ""
    yield "try next:"
    yield "  clipdex index ~/Photos                 # a real model (downloads ViT-B-32-256 once)"
    yield '  clipdex search "a dog on the beach"'
    yield '  clipdex classify --labels "cat,dog,giant panda"'
