"""Image bytes to RGBA arrays, decoded off the event loop.

PNG, JPEG, WebP and anything else Pillow reads become ``(size, size, 4)`` ``uint8`` arrays.
Decoding a 256 px tile costs a millisecond or more of CPU, so :func:`decode_tile` always runs in
a worker thread (:func:`asyncio.to_thread`); :func:`decode_rgba` is the blocking function it calls.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np

from .errors import ParseError

__all__ = ["decode_rgba", "decode_tile"]


def decode_rgba(content: bytes, size: int | None = None, *, url: str | None = None) -> np.ndarray:
    """Decode an image to a read-only RGBA ``uint8`` array (blocking: call it in a thread).

    Parameters
    ----------
    content
        The encoded image (PNG, JPEG, WebP, GIF, ...).
    size
        When given, an image of another size is resampled to ``size`` x ``size`` (a server that
        answers 256 px tiles to a 512 px layer still lines up).
    url
        Where the bytes came from, for the error message.

    Raises
    ------
    ParseError
        The bytes are not an image Pillow can read.

    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (4, 4), (10, 20, 30)).save(buf, "PNG")
    >>> decode_rgba(buf.getvalue())[0, 0].tolist()
    [10, 20, 30, 255]
    >>> decode_rgba(buf.getvalue(), 8).shape
    (8, 8, 4)
    >>> decode_rgba(b"<html>oops</html>")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.ParseError: not a decodable image: cannot identify image file ...
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as img:
            img = img.convert("RGBA")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ParseError(f"not a decodable image: {exc}", url=url) from exc
    arr.setflags(write=False)  # shared through the memory cache: nobody may paint on it
    return arr


async def decode_tile(
    content: bytes, size: int | None = None, *, url: str | None = None
) -> np.ndarray:
    """:func:`decode_rgba` in a worker thread, so the event loop never decodes.

    Raises
    ------
    ParseError
        As :func:`decode_rgba`.
    """
    return await asyncio.to_thread(decode_rgba, content, size, url=url)
