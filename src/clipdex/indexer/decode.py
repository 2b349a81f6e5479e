"""Safe image loading: format sniffing, a decompression-bomb guard, EXIF orientation, RGB."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from ..errors import ImageDecodeError

#: Extensions clipdex indexes without looking inside the file.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)
#: Formats Pillow may decode: anything else (PDF, PSD, EPS...) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
#: Default pixel limit: about 89 megapixels, Pillow's own bomb threshold.
DEFAULT_MAX_PIXELS = 89_478_485


def sniff_format(header: bytes) -> str | None:
    """The image format named by a file's first bytes, or None."""
    if header.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if header.startswith(b"BM"):
        return "BMP"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "WEBP"
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def load_image(path: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS):
    """Open an image (a file path, or bytes already fetched) as (upright RGB PIL image,
    source format), or raise ImageDecodeError with the reason."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _open(path) as handle:
            header = handle.read(16)
            if not header:
                raise ImageDecodeError("empty file")
            if sniff_format(header) is None:
                raise ImageDecodeError("not an image (unrecognised header)")
            handle.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
                if image.format not in ALLOWED_FORMATS:
                    raise ImageDecodeError(f"unsupported format {image.format}")
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"too large: {width}x{height} pixels (limit {max_pixels:,})"
                    )
                image.load()
                source_format = image.format
                image = ImageOps.exif_transpose(image) or image
                return to_rgb(image), source_format
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError("file vanished before it could be read") from None
    except PermissionError:
        raise ImageDecodeError("permission denied") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"corrupt or truncated: {reason}") from None


def _open(path: str | Path | bytes):
    if isinstance(path, (bytes, bytearray)):
        return io.BytesIO(path)
    return open(path, "rb")


def to_rgb(image):
    """Convert any Pillow mode to RGB: alpha over white, 16-bit scaled to 8-bit."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
