"""Generated photos with EXIF (capture time, camera, GPS, orientation) in JPEG, HEIC or AVIF,
for the format, metadata and filter tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from clipdex.media.decode import register_plugins

EXTENSIONS = {"JPEG": ".jpg", "HEIF": ".heic", "AVIF": ".avif", "PNG": ".png"}


def exif_block(
    taken: str | None = None,
    offset: str | None = None,
    make: str | None = None,
    model: str | None = None,
    gps: tuple[float, float] | None = None,
    orientation: int | None = None,
    gps_raw: dict | None = None,
) -> Image.Exif:
    """An EXIF block: `taken` "YYYY:MM:DD HH:MM:SS", `offset` "+HH:MM", `gps` (lat, lon)
    in signed degrees, or `gps_raw` tags written as given (lying positions)."""
    exif = Image.Exif()
    if make is not None:
        exif[0x010F] = make
    if model is not None:
        exif[0x0110] = model
    if orientation is not None:
        exif[0x0112] = orientation
    if taken is not None:
        sub = exif.get_ifd(0x8769)
        sub[0x9003] = taken
        if offset is not None:
            sub[0x9011] = offset
    if gps is not None or gps_raw is not None:
        block = exif.get_ifd(0x8825)
        if gps is not None:
            lat, lon = gps
            block[1], block[2] = ("N" if lat >= 0 else "S"), _dms(abs(lat))
            block[3], block[4] = ("E" if lon >= 0 else "W"), _dms(abs(lon))
        block.update(gps_raw or {})
    return exif


def _dms(value: float) -> tuple[float, float, float]:
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round((value - degrees - minutes / 60) * 3600, 4)
    return (float(degrees), float(minutes), seconds)


def pixels(seed: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    """Distinct smooth-ish pixels (a colour and noise), width x height = size."""
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 255, size=3)
    noise = rng.integers(-50, 50, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def make_photo(
    path: Path,
    seed: int = 0,
    fmt: str = "JPEG",
    size: tuple[int, int] = (64, 48),
    exif: Image.Exif | None = None,
) -> Path:
    """Write one photo in `fmt` (JPEG, HEIF, AVIF, PNG) with `exif`; return its path."""
    register_plugins()  # pillow-heif's saver
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"exif": exif.tobytes()} if exif is not None else {}
    if fmt in ("HEIF", "AVIF"):
        options["quality"] = 90
    Image.fromarray(pixels(seed, size)).save(path, format=fmt, **options)
    return path
