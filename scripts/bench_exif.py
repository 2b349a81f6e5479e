"""Benchmark: what reading EXIF (capture time, camera, GPS, orientation) costs an index run.

    python scripts/bench_exif.py                  # 120 photos, 2000x1500, the demo model
    python scripts/bench_exif.py --images 400 --size 4000x3000
    python scripts/bench_exif.py --tiny           # seconds: checks that it runs

Writes camera-like JPEGs (clipdex.samples.draw_photo, quality 90) with a full EXIF block
(DateTimeOriginal + offset, make, model, GPS, orientation), then indexes them into fresh
index folders with metadata reading on and off (media.exif.READ_EXIF), alternating the two
`--repeats` times (a busy machine slows both alike), one process (`workers=0`), so the
difference is CPU per image. Also times the extraction itself on opened images (what the
decoder adds per image) and the fill-in of images indexed before (headers read again).
Last, the cost of turning filters into candidate ids on a synthetic catalog of
`--filter-rows` photos (scripts/_synthetic.py; dates over 10 years, 20 cameras, places
around the world).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def write_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    from PIL import Image

    from clipdex.samples import draw_photo

    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x0112] = "Google", f"Pixel {7 + i % 2}", 1
        sub = exif.get_ifd(0x8769)
        sub[0x9003], sub[0x9011] = f"2023:{1 + i % 12:02d}:{1 + i % 28:02d} 10:00:00", "+02:00"
        gps = exif.get_ifd(0x8825)
        gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 23.8), "E", (2.0, 21.0, 7.9)
        path = folder / f"photo{i:04d}.jpg"
        draw_photo(width, height, seed=i).save(path, quality=90, exif=exif.tobytes())
        paths.append(path)
    return paths


def filter_costs(rows: int) -> list[tuple[str, int, float]]:
    """(filter, matching ids, ms: median of 5) on a synthetic catalog of `rows` photos."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _synthetic import build_index, clustered
    from clipdex.search.filters import Filters, candidate_ids
    from clipdex.storage.catalog import Catalog
    from clipdex.storage.photo_meta import PhotoMetaStore
    from clipdex.types import PhotoMeta

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(Path(tmp), clustered(rows, 16))
        catalog = Catalog(Path(tmp))
        store = PhotoMetaStore(catalog)
        start_2015 = 1420070400.0
        for first in range(1, rows + 1, 10_000):
            metas = []
            for image_id in range(first, min(first + 10_000, rows + 1)):
                taken = start_2015 + rng.uniform(0, 10 * 365.25 * 86400)
                local = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(taken))
                lat, lon = rng.uniform(-60, 70), rng.uniform(-180, 180)
                camera = f"Maker{image_id % 5} Model {image_id % 20}"
                metas.append((image_id, PhotoMeta(taken, local, camera, lat, lon, 1)))
            store.save(metas)
        cases = {
            "after/before (1 year)": Filters(after="2020-01-01", before="2021-01-01"),
            "camera substring": Filters(camera="model 7"),
            "near 500km": Filters(near="48.8566,2.3522,500km"),
            "all three": Filters(after="2018-01-01", camera="Maker2", near="0,0,3000km"),
        }
        out = []
        for name, filters in cases.items():
            times = []
            for _ in range(5):
                started = time.perf_counter()
                found = candidate_ids(catalog, filters)
                times.append((time.perf_counter() - started) * 1000)
            out.append((name, len(found), statistics.median(times)))
        catalog.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--size", default="2000x1500", help="WIDTHxHEIGHT of generated photos")
    parser.add_argument("--model", default="clipdex-demo-shapes")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side")
    parser.add_argument("--filter-rows", type=int, default=100_000)
    parser.add_argument("--tiny", action="store_true", help="8 photos of 320x240, tiny model")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.size, args.model, args.repeats = 8, "320x240", "clipdex-tiny", 1
        args.filter_rows = 2000
    width, height = (int(v) for v in args.size.split("x"))

    import clipdex
    from clipdex.media import exif
    from clipdex.media.decode import register_plugins

    register_plugins()
    spec = clipdex.ModelSpec(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        photos = write_photos(root / "photos", args.images, width, height)
        warm = clipdex.open_index(root / "warm")
        warm.add(photos[0].parent, model=spec, workers=0)
        model = warm.embedder()  # loaded once: the runs time the images, not the model load
        times: dict[bool, list[float]] = {True: [], False: []}
        for repeat in range(args.repeats):
            for on in (True, False) if repeat % 2 == 0 else (False, True):
                exif.READ_EXIF = on
                index = clipdex.open_index(root / f"run{repeat}-{on}", loaded_model=model)
                started = time.perf_counter()
                report = index.add(photos[0].parent, model=spec, workers=0)
                times[on].append(time.perf_counter() - started)
                assert report.embedded == args.images and report.meta_filled == 0
                dated = index.status().photos.dated
                assert dated == (args.images if on else 0), dated
                index.close()
        exif.READ_EXIF = True
        on_s, off_s = statistics.median(times[True]), statistics.median(times[False])
        per_image_ms = on_s / args.images * 1000

        # the extraction alone, on images the decoder has opened (what a run adds)
        from PIL import Image

        sample = photos[:40]
        rounds = max(1, 2000 // len(sample))
        started = time.perf_counter()
        for _ in range(rounds):
            for path in sample:
                with Image.open(path) as image:
                    image.getexif()
        parse_s = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(rounds):
            for path in sample:
                with Image.open(path) as image:
                    exif.photo_meta(image)
        extract_us = (time.perf_counter() - started - parse_s) / (rounds * len(sample)) * 1e6
        extract_us = max(extract_us, 0.0)

        # the fill-in for images indexed before (no row): headers read again, no embedding
        index = clipdex.open_index(root / f"run0-{False}", loaded_model=model)
        started = time.perf_counter()
        filled = index.add(photos[0].parent, workers=0).meta_filled
        fill_s = time.perf_counter() - started
        index.close()

    print(
        f"{args.images} photos {width}x{height}, {args.model}, median of {args.repeats} "
        f"runs each, one process"
    )
    print(
        f"index run: exif on {on_s:.2f} s, off {off_s:.2f} s "
        f"({(on_s - off_s) / off_s * 100:+.1f}%, {per_image_ms:.1f} ms/image)"
    )
    print(
        f"photo_meta {extract_us:.0f} us/image (EXIF already parsed for orientation) "
        f"= {extract_us / 1000 / per_image_ms * 100:.3f}% of the run"
    )
    print(
        f"fill-in of {filled} images indexed before: {fill_s:.2f} s "
        f"({fill_s / max(filled, 1) * 1000:.2f} ms/image, nothing embedded)"
    )
    for name, found, ms in filter_costs(args.filter_rows):
        print(f"filter over {args.filter_rows:,} photos, {name}: {found:,} ids in {ms:.1f} ms")


if __name__ == "__main__":
    main()
