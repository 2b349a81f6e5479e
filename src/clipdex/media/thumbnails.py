"""Thumbnails: an upright RGB image made small (longest side THUMB_SIDE) and encoded as
WebP, or JPEG where Pillow lacks WebP. Made while indexing from the image already decoded
for the model, or on demand from an image's bytes."""

from __future__ import annotations

import functools
import io

from clipdex.media.decode import DEFAULT_MAX_PIXELS, load_image_for, sniff_format

#: The longest side of a thumbnail, in pixels: sharp in a grid on a high-density screen.
THUMB_SIDE = 320
QUALITY = 75
MEDIA_TYPES = {"WEBP": "image/webp", "JPEG": "image/jpeg"}


@functools.lru_cache(maxsize=1)
def thumbnail_format() -> str:
    """WEBP when this Pillow can encode it, else JPEG."""
    from PIL import features

    return "WEBP" if features.check("webp") else "JPEG"


def make_thumbnail(image, side: int = THUMB_SIDE) -> tuple[bytes, str]:
    """(encoded bytes, format) of an RGB PIL image shrunk to fit `side` (never enlarged)."""
    from PIL import Image

    small = image.copy() if max(image.size) > side else image
    if small is not image:
        small.thumbnail((side, side), Image.Resampling.BICUBIC, reducing_gap=2.0)
    fmt = thumbnail_format()
    out = io.BytesIO()
    if fmt == "WEBP":
        small.save(out, "WEBP", quality=QUALITY, method=2)
    else:
        small.save(out, "JPEG", quality=QUALITY + 5, optimize=False)
    return out.getvalue(), fmt


def thumbnail_from_bytes(
    data: bytes, side: int = THUMB_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[bytes, str]:
    """A thumbnail of an image's bytes, decoded no larger than it needs (ImageDecodeError
    when they are not an image)."""
    loaded = load_image_for(data, max_pixels, min_side=side)
    return make_thumbnail(loaded.image, side)


def media_type(data: bytes) -> str:
    """The content type of encoded image bytes (application/octet-stream if unknown)."""
    fmt = sniff_format(data[:16])
    return {
        "JPEG": "image/jpeg",
        "PNG": "image/png",
        "GIF": "image/gif",
        "BMP": "image/bmp",
        "WEBP": "image/webp",
        "TIFF": "image/tiff",
    }.get(fmt or "", "application/octet-stream")
