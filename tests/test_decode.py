"""Safe image loading: every odd file either becomes an upright RGB image or a clear reason."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipdex.errors import ImageDecodeError
from clipdex.media.decode import load_image, sniff_format


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_zero_byte_file(tmp_path):
    path = tmp_path / "zero.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        load_image(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(ImageDecodeError, match="not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    whole = tmp_path / "whole.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(whole)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[:600])
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        load_image(cut)


def test_png_declaring_30000_by_30000_pixels_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(30000, 30000))
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(path)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (60, 30), "red")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(path, exif=exif)
    upright, fmt = load_image(path)
    assert upright.size == (30, 60) and fmt == "JPEG"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("CMYK", (20, 20), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((20, 20), 40000, np.uint16)),
        lambda: Image.new("RGBA", (20, 20), (255, 0, 0, 0)),
        lambda: Image.new("P", (20, 20), 3),
        lambda: Image.new("L", (20, 20), 128),
    ],
    ids=["cmyk", "16bit", "alpha", "palette", "gray"],
)
def test_any_mode_becomes_rgb(tmp_path, make):
    image = make()
    path = tmp_path / ("x.tif" if image.mode == "CMYK" else "x.png")
    image.save(path)
    rgb, _ = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (20, 20)


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(path)
    rgb, _ = load_image(path)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(path)
    rgb, _ = load_image(path)
    assert rgb.getpixel((0, 0)) == (128, 128, 128)


def test_sniff_format():
    assert sniff_format(b"\xff\xd8\xff\xe0") == "JPEG"
    assert sniff_format(b"GIF89a....") == "GIF"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff_format(b"%PDF-1.7") is None
