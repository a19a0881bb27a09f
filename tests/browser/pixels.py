"""The map canvas measured by its pixels: screenshots, background fractions, waiting for stillness.

What the interactive benchmark (:mod:`benchmarks.interactive`) and the browser tests read off
the screen instead of the status text. A *frame* is an ``(h, w, 3)`` ``uint8`` RGB array of the
plot's canvas box (the toolbar left out, as :func:`tests.browser.served.plot_box` cuts it),
read from the page's canvases (:func:`grab`; a screenshot where they cannot be read); the *background* is the plot's own fill colour (what the
canvas shows where no layer drew anything), read from the Bokeh document.

The vocabulary, precisely:

- ``background_mask(frame, bg)``: the pixels within ``tol`` (sum of absolute channel
  differences) of the background colour.
- ``background_fraction(frame, bg)``: their share of the canvas.
- ``lost_fraction(before, frame, after, bg)``: the share of the canvas that is background in
  ``frame`` although it showed content both in ``before`` (the settled view before an input)
  and in ``after`` (the settled view after it): area where content existed and the map went
  blank during the transition. Positions that are background in the settled result (beyond
  the world's edge, say) do not count.
- ``changed_fraction(a, b)``: the share of pixels that differ by more than ``tol``.
- :func:`watch` samples frames until the picture has been still for a while and reports when
  the final picture first appeared (and stayed): the time a view took to be complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO

import numpy as np

from .served import plot_box

__all__ = [
    "WHITE", "Frame", "Watch", "background_colour", "background_fraction", "background_mask",
    "changed_fraction", "grab", "lost_fraction", "screenshot", "watch",
]

WHITE = (255, 255, 255)

#: The plot's background fill, from the first Bokeh plot model of the page's documents.
_BACKGROUND_JS = """() => {
  if (!window.Bokeh || !Bokeh.documents) return null;
  for (const doc of Bokeh.documents) {
    const models = doc._all_models ? Array.from(doc._all_models.values()) : [];
    for (const m of models) {
      if (m.type === 'Plot' || (m.constructor && m.constructor.__name__ === 'Plot')
          || (m.background_fill_color !== undefined && m.renderers !== undefined)) {
        const c = m.background_fill_color;
        return c == null ? null : (typeof c === 'string' ? c : Array.from(c));
      }
    }
  }
  return null;
}"""


def background_colour(page, default: tuple[int, int, int] = WHITE) -> tuple[int, int, int]:
    """The plot's background fill colour as RGB, read from the page's Bokeh document.

    Falls back to ``default`` when the page has no Bokeh plot yet or its fill is ``None``
    (then the page behind the canvas shows, white in the app).
    """
    from PIL import ImageColor

    value = page.evaluate(_BACKGROUND_JS)
    if value is None:
        return default
    if isinstance(value, list):
        return tuple(int(v) for v in value[:3])  # type: ignore[return-value]
    try:
        return ImageColor.getrgb(value)[:3]  # type: ignore[return-value]
    except ValueError:
        return default


#: The largest canvas's pixels in ``box`` (page coordinates), every ``stride``-th pixel: the
#: canvases of its Bokeh canvas view (its layers: primary, overlays) composited over white, as
#: base64 RGBA. Walks the shadow roots, where Bokeh puts its canvases.
_CANVAS_JS = """([box, stride]) => {
  const all = [];
  const walk = (root) => { for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS') all.push(el);
    if (el.shadowRoot) walk(el.shadowRoot);
  } };
  walk(document);
  let best = null, area = 0;
  for (const c of all) {
    const r = c.getBoundingClientRect();
    if (r.width > 200 && r.height > 200 && r.width * r.height > area) { best = c; area = r.width * r.height; }
  }
  if (!best) return null;
  const r = best.getBoundingClientRect();
  const w = Math.floor(box.width / stride), h = Math.floor(box.height / stride);
  const out = document.createElement('canvas');
  out.width = w; out.height = h;
  const ctx = out.getContext('2d', {willReadFrequently: true});
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, w, h);
  for (const c of all.filter(c => c.parentNode === best.parentNode)) {
    const cr = c.getBoundingClientRect();
    const sx = c.width / cr.width, sy = c.height / cr.height;
    ctx.drawImage(c, (box.x - cr.x) * sx, (box.y - cr.y) * sy, box.width * sx, box.height * sy, 0, 0, w, h);
  }
  const bytes = ctx.getImageData(0, 0, w, h).data;
  let s = '';
  for (let i = 0; i < bytes.length; i += 32768) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
  return [w, h, btoa(s)];
}"""


def grab(page, box: dict | None = None, stride: int = 1) -> np.ndarray:
    """A frame: the plot's canvas box (or ``box``), ``(h, w, 3)`` uint8 RGB, every ``stride``-th pixel.

    Read from the page's canvases themselves (tens of milliseconds, where a screenshot of the
    box takes a few hundred on this machine); a screenshot when a canvas cannot be read (one
    tainted by cross-origin images, or no canvas yet).
    """
    import base64

    box = box or plot_box(page)
    try:
        got = page.evaluate(_CANVAS_JS, [box, stride])
    except Exception:  # a tainted canvas (SecurityError): what the screen shows instead
        got = None
    if got:
        w, h, data = got
        return np.frombuffer(base64.b64decode(data), dtype=np.uint8).reshape(h, w, 4)[..., :3]
    return screenshot(page, box)[::stride, ::stride]


def screenshot(page, box: dict | None = None) -> np.ndarray:
    """The plot's canvas box (or ``box``) as shown on screen, ``(h, w, 3)`` uint8 RGB (slow)."""
    from PIL import Image

    png = page.screenshot(clip=box or plot_box(page))
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"))


def background_mask(frame: np.ndarray, bg: tuple[int, int, int], tol: int = 6) -> np.ndarray:
    """Where ``frame`` shows the background: within ``tol`` of ``bg`` (sum over channels).

    >>> f = np.array([[[255, 255, 255], [250, 250, 250]]], dtype=np.uint8)
    >>> background_mask(f, (255, 255, 255)).tolist()
    [[True, False]]
    """
    return np.abs(frame.astype(np.int16) - np.array(bg, dtype=np.int16)).sum(-1) <= tol


def background_fraction(frame: np.ndarray, bg: tuple[int, int, int], tol: int = 6) -> float:
    """Share of the canvas showing the background colour (0 = fully drawn, 1 = blank).

    >>> f = np.zeros((2, 2, 3), dtype=np.uint8); f[0, 0] = 255
    >>> background_fraction(f, (255, 255, 255))
    0.25
    """
    return float(background_mask(frame, bg, tol).mean())


def lost_fraction(before: np.ndarray, frame: np.ndarray, after: np.ndarray, bg: tuple[int, int, int],
                  tol: int = 6) -> float:
    """Share of the canvas blank in ``frame`` where ``before`` and ``after`` both had content.

    >>> bg = (255, 255, 255)
    >>> before = np.zeros((1, 4, 3), dtype=np.uint8)
    >>> after = before.copy(); after[0, 3] = 255          # the settled view is blank at 3
    >>> frame = before.copy(); frame[0, 2:] = 255         # the transition is blank at 2 and 3
    >>> lost_fraction(before, frame, after, bg)
    0.25
    """
    if before.shape != frame.shape or after.shape != frame.shape:
        return float("nan")
    had = ~background_mask(before, bg, tol) & ~background_mask(after, bg, tol)
    return float((background_mask(frame, bg, tol) & had).mean())


def changed_fraction(a: np.ndarray, b: np.ndarray, tol: int = 6) -> float:
    """Share of pixels that differ between two frames by more than ``tol`` (1.0 if shapes differ).

    >>> a = np.zeros((1, 2, 3), dtype=np.uint8); b = a.copy(); b[0, 1] = 9
    >>> changed_fraction(a, b)
    0.5
    """
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(-1) > tol).mean())


@dataclass
class Frame:
    """One sampled frame: seconds since the watch's start, and its pixels."""

    t: float
    pixels: np.ndarray


@dataclass
class Watch:
    """What :func:`watch` saw after an input.

    Attributes
    ----------
    frames
        Every sampled frame, in order (the last one is the settled picture).
    settled_at
        Seconds from the start until the final picture first appeared and then stayed (every
        later frame within ``still`` of the last one): the time to complete and stable.
    timed_out
        The picture never stayed still for ``quiet`` seconds before ``timeout``.
    """

    frames: list[Frame] = field(default_factory=list)
    settled_at: float = float("nan")
    timed_out: bool = False

    @property
    def final(self) -> np.ndarray:
        return self.frames[-1].pixels


def watch(pages: list, boxes: list[dict], start: float | list[float], *, quiet: float = 1.5, interval: float = 0.05,
          timeout: float = 120.0, still: float = 0.002, busy: Callable[[object], bool] | None = None,
          keep: bool = True, stride: int = 2, backgrounds: list[tuple[int, int, int]] | None = None,
          max_background: float = 0.5) -> list[Watch]:
    """Sample each page's canvas until its picture is still; when did the final picture appear?

    Pages are screenshot in turn (one Playwright thread: with several pages a page's samples are
    further apart than ``interval``). A page is settled once its picture has changed by no more
    than ``still`` (a share of pixels) for ``quiet`` seconds, ``busy(page)`` (for example
    "a status line says loading") is false and, given ``backgrounds`` (each page's background
    colour), no more than ``max_background`` of the picture is background; its ``settled_at`` is then the time of the earliest
    frame from which every later frame is within ``still`` of the final one.

    Parameters
    ----------
    pages, boxes
        The pages and their canvas boxes (:func:`tests.browser.served.plot_box`).
    start
        ``time.perf_counter()`` at the input (one for all pages, or one per page); each page's
        times are relative to its own.
    keep
        Keep every frame (for :func:`lost_fraction`); else the first and the latest only.
    stride
        Frames are kept at every ``stride``-th pixel in both directions (memory: a long step
        at 20 frames a second is hundreds of frames).
    """
    out = [Watch() for _ in pages]
    starts = list(start) if isinstance(start, list) else [start] * len(pages)
    last_change = [0.0] * len(pages)
    done = [False] * len(pages)
    deadline = min(starts) + timeout
    while not all(done):
        tick = time.perf_counter()
        for i, (page, box) in enumerate(zip(pages, boxes)):
            if done[i]:
                continue
            frame = Frame(time.perf_counter() - starts[i], grab(page, box, stride))
            frames = out[i].frames
            if not frames or changed_fraction(frames[-1].pixels, frame.pixels) > still:
                last_change[i] = frame.t  # the first frame: its picture was there by then
            if not keep and len(frames) > 1:
                frames.pop()
            frames.append(frame)
            blank = backgrounds is not None and background_fraction(frame.pixels, backgrounds[i]) > max_background
            if frame.t - last_change[i] >= quiet and not blank and not (busy and busy(page)):
                done[i] = True
            elif time.perf_counter() > deadline:
                done[i] = out[i].timed_out = True
        pause = interval - (time.perf_counter() - tick)
        if pause > 0 and not all(done):
            pages[0].wait_for_timeout(pause * 1000)
    for w, changed in zip(out, last_change):
        w.settled_at = _settled_at(w.frames, still) if keep else changed
    return out


def _settled_at(frames: list[Frame], still: float) -> float:
    """The earliest frame's time from which every frame is within ``still`` of the last."""
    final = frames[-1].pixels
    t = frames[-1].t
    for f in reversed(frames):
        if changed_fraction(f.pixels, final) > still:
            break
        t = f.t
    return t
