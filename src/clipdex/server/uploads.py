"""Uploaded images: read within the limit, refused with the right status when they are
not an image, too large, or too many pixels."""

from __future__ import annotations

from fastapi import HTTPException, UploadFile

from clipdex.media.decode import sniff_format


async def read_upload(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes (413 over `limit`, 415 when they do not start like an image)."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(413, f"the image is larger than the limit of {limit:,} bytes")
    if not data:
        raise HTTPException(400, "the uploaded image is empty")
    if sniff_format(data[:16]) is None:
        raise HTTPException(
            415, "the upload is not an image (JPEG, PNG, WebP, GIF, BMP or TIFF expected)"
        )
    return data


def decode_error(exc: Exception) -> HTTPException:
    """An ImageDecodeError of an upload as an HTTP error: too large -> 413, else 415."""
    message = str(exc)
    status = 413 if message.startswith("too large") else 415
    return HTTPException(status, f"cannot read the uploaded image: {message}")
