"""Image bytes to RGBA arrays, decoded off the event loop.

PNG, JPEG, WebP, GIF, BMP and TIFF become ``(size, size, 4)`` ``uint8`` arrays. Decoding a
256 px tile costs a millisecond or more of CPU, so :func:`decode_tile` always runs in a worker
thread (:func:`asyncio.to_thread`); :func:`decode_rgba` is the blocking function it calls.

The bytes come from servers we do not control, so before anything is decoded the size the
image *declares* (read from its header: Pillow's ``Image.open`` is lazy) is checked against a
pixel budget (:data:`MAX_PIXELS`; for tiles :func:`tile_pixel_budget`): a "decompression
bomb" (20 000 x 20 000 px in 100 kB, 1.6 GB once decoded) is refused in microseconds as one
bad image, never decoded. Only the raster
formats tiles come in are opened, so no Pillow plugin that runs an external program (EPS) or
parses an exotic container can be reached from a tile server.
"""

from __future__ import annotations

import asyncio
import io
import re

import numpy as np

from .errors import ParseError

__all__ = ["FORMATS", "MAX_PIXELS", "decode_rgba", "decode_tile", "tile_pixel_budget"]

#: The most pixels an image may declare: 4096 x 4096 (64 MiB as RGBA), 256 times a 256 px tile.
MAX_PIXELS = 4096 * 4096
#: The Pillow formats an image may be in.
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def decode_rgba(
    content: bytes, size: int | None = None, *, url: str | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
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
    max_pixels
        The most pixels (width x height) the image may declare; checked before decoding.

    Raises
    ------
    ParseError
        The bytes are not an image in one of :data:`FORMATS`, are corrupt, or declare more
        than ``max_pixels`` pixels.

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
    >>> decode_rgba(buf.getvalue(), max_pixels=15)
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.ParseError: image of 4 x 4 px is over the 15-pixel budget: refused without decoding it
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(content), formats=FORMATS) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise ParseError(
                    f"image of {width} x {height} px is over the {max_pixels}-pixel budget: "
                    "refused without decoding it",
                    url=url,
                )
            img = img.convert("RGBA")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except ParseError:
        raise
    except Image.DecompressionBombError as exc:
        # Over twice Pillow's own limit, Image.open refuses before we see the size.
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{pixels.group(1)} pixels" if pixels else "too many pixels"
        raise ParseError(
            f"image declares {declared}, over the {max_pixels}-pixel budget: refused without "
            "decoding it",
            url=url,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - see below
        # Pillow's plugins fail on hostile bytes with anything (OSError, SyntaxError,
        # struct.error, IndexError, EOFError, DecompressionBombError, MemoryError ...): any
        # failure to decode untrusted bytes is one bad image, never a failed layer.
        raise ParseError(f"not a decodable image: {exc}", url=url) from exc
    arr.setflags(write=False)  # shared through the memory cache: nobody may paint on it
    return arr


async def decode_tile(
    content: bytes, size: int | None = None, *, url: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """:func:`decode_rgba` in a worker thread, so the event loop never decodes.

    ``max_pixels`` defaults to :func:`tile_pixel_budget` of ``size`` (:data:`MAX_PIXELS`
    without one).

    Raises
    ------
    ParseError
        As :func:`decode_rgba`.
    """
    budget = max_pixels if max_pixels is not None else tile_pixel_budget(size)
    return await asyncio.to_thread(decode_rgba, content, size, url=url, max_pixels=budget)


def tile_pixel_budget(size: int | None) -> int:
    """The pixels a tile of ``size`` px may declare: 4 times its side each way (a server that
    answers 512 px tiles to a 256 px layer is fine, one that answers 4096 px costs 64 MiB a
    tile in every decoding thread), at most :data:`MAX_PIXELS`.

    >>> tile_pixel_budget(256) == 1024 * 1024, tile_pixel_budget(None) == MAX_PIXELS
    (True, True)
    """
    return MAX_PIXELS if size is None else min(MAX_PIXELS, 16 * size * size)
