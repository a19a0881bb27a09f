"""A layer's results as images: what the plot shows while a load streams in.

:func:`iter_frames` turns the stream of a :class:`~mapstream.layers.types.Layer`'s ``load``
into :class:`Frame` objects, dispatching on each result's type (the layer's kind is never
asked): a :class:`~mapstream.layers.types.Mosaic` is converted to an image; each
:class:`~mapstream.layers.types.FeaturePage` is aggregated once (datashader, in a worker
thread) into the layer's aggregates, which are shaded at most every :data:`SHADE_EVERY`
seconds. A layer that yields pages and then mosaics (a STAC layer: its items' footprints, then
their COGs' mosaic) gets the pages drawn over each mosaic. Pure asyncio over
:mod:`mapstream.app.render`: no Panel, testable without a server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import numpy as np

from mapstream.layers.types import FeaturePage, Mosaic, Progress
from mapstream.layers.viewport import Viewport

from . import render
from .render import Image

__all__ = ["SHADE_EVERY", "Frame", "iter_frames"]

#: Seconds between two partial renders of a feature layer (the final page always renders).
SHADE_EVERY = 0.4


class Frame(NamedTuple):
    """One step of a layer's load, ready for the plot and the status line.

    Attributes
    ----------
    image
        The image to show now, or None when only the progress changed (a page arrived while
        the previous shading still runs).
    progress
        The load's progress after this step.
    errors
        Every error of the load so far.
    received
        Whether the load got anything to show (False: every tile failed, or no feature came).
    """

    image: Image | None
    progress: Progress
    errors: tuple[Any, ...]
    received: bool

    @property
    def complete(self) -> bool:
        return self.progress.complete


async def iter_frames(
    results: AsyncIterator[Mosaic | FeaturePage],
    viewport: Viewport,
    style: Any = None,
    *,
    canvas: Viewport | None = None,
    partial: bool = True,
) -> AsyncIterator[Frame]:
    """The frames of one load: a layer's ``load(viewport, fetcher)`` stream, drawn.

    Mosaics become images in a worker thread; feature pages are aggregated and shaded with
    ``style`` (:class:`_PageShader`). The last frame shows every result (for a complete load,
    it is complete).

    Parameters
    ----------
    canvas
        Where feature pages are shaded, when larger than ``viewport`` by the same number of
        pixels on every side (a tile's margin: points and lines on its edges drawn whole);
        their images are cropped to ``viewport``.
    partial
        Shade pages while they arrive (every :data:`SHADE_EVERY` seconds); False: only the
        last frame has an image (a tile).

    Raises
    ------
    TypeError
        The layer yielded something that is neither a ``Mosaic`` nor a ``FeaturePage``.
    """
    shader: _PageShader | None = None
    pages: Image | None = None  # the pages shaded once, drawn over the mosaics that follow
    try:
        async for result in results:
            if isinstance(result, Mosaic):
                image = await asyncio.to_thread(render.mosaic_image, result)
                if shader is not None and shader.pages:
                    if pages is None:
                        pages = (await shader.final()).image
                    image = _over(image, pages)
                p = result.progress
                received = image.opaque_pixels > 0 or p.failed < max(p.total or 0, 1)
                yield Frame(image, p, tuple(result.errors), received)
            elif isinstance(result, FeaturePage):
                if shader is None:
                    shader = _PageShader(canvas or viewport, style, viewport, partial)
                if result.progress.complete:
                    yield await shader.final(result)
                    return
                yield await shader.add(result)
            else:
                raise TypeError(f"a layer yielded {type(result).__name__}, not a Mosaic or FeaturePage")
        if shader is not None and shader.pages and pages is None:  # pages ended, none complete
            yield await shader.final()
    finally:
        if shader is not None:
            shader.cancel()


def _over(base: Image, top: Image | None) -> Image:
    """``top`` composited over ``base`` when both cover the same pixels (else ``base``)."""
    if top is None or top.rgba.shape != base.rgba.shape:
        return base
    return Image(render.over_rgba([base.rgba, top.rgba]), base.bounds)


class _PageShader:
    """A feature layer's aggregates for one viewport, shaded beside the pages.

    Each page is aggregated once and merged into the aggregates; an image shades the aggregates
    (a few passes over the pixels, however many features came before). Shading runs beside the
    pages, never holding them up: a frame carries the image of a shading that has finished, or
    None. The final frame waits for a shading of every page.
    """

    def __init__(self, viewport: Viewport, style: Any, shown: Viewport | None = None,
                 partial: bool = True) -> None:
        self.bounds = viewport.bounds
        self.size = (viewport.width, viewport.height)
        self.style = style
        self.partial = partial
        # pixels cropped on each side (a canvas larger than the view shown)
        self.margin = 0 if shown is None else max(0, (viewport.width - shown.width) // 2)
        self.shown = shown
        self.aggs: render.Aggregates = {}
        self.errors: list[Any] = []
        self.pages = 0
        self.progress: Progress | None = None
        self._shading: asyncio.Future[Image] | None = None
        self._last = 0.0

    def _merge(self, aggs: render.Aggregates, frame: Any) -> render.Aggregates:
        return render.merge_aggregates(aggs, render.aggregate_features(frame, self.bounds, *self.size))

    def _shade(self) -> asyncio.Future[Image]:
        aggs = self.aggs
        return asyncio.ensure_future(asyncio.to_thread(self._shade_now, aggs))

    def _shade_now(self, aggs: render.Aggregates) -> Image:
        image = render.shade_aggregates(aggs, self.bounds, *self.size, self.style)
        m = self.margin
        if m and self.shown is not None:
            rgba = np.ascontiguousarray(image.rgba[m:m + self.shown.height, m:m + self.shown.width])
            return Image(rgba, self.shown.bounds)
        return image

    async def _take(self, page: FeaturePage) -> Progress:
        if len(page.frame):
            self.aggs = await asyncio.to_thread(self._merge, self.aggs, page.frame)
        self.errors.extend(page.errors)
        self.pages += 1
        self.progress = page.progress
        return page.progress

    async def final(self, page: FeaturePage | None = None) -> Frame:
        """The last frame: ``page`` added, then every page shaded (a shading under way is dropped)."""
        if page is not None:
            await self._take(page)
        self.cancel()
        progress = self.progress or Progress(0, None, "pages")
        return Frame(await self._shade(), progress, tuple(self.errors), progress.features > 0)

    async def add(self, page: FeaturePage) -> Frame:
        """A partial frame for ``page``: the image of a finished shading, if any, else None."""
        progress = await self._take(page)
        image = None
        if self._shading is not None and self._shading.done():
            image, self._shading = self._shading.result(), None
        if (self.partial and self._shading is None and self.aggs
                and time.perf_counter() - self._last >= SHADE_EVERY):
            self._shading, self._last = self._shade(), time.perf_counter()
        return Frame(image, progress, tuple(self.errors), progress.features > 0)

    def cancel(self) -> None:
        """Drop a shading still under way (its thread finishes; its image is never shown)."""
        if self._shading is not None:
            self._shading.cancel()
            self._shading = None
