"""Raster values as RGBA: a single band through ``rescale`` and a colormap, RGB(A) as is.

Pure and synchronous (a few passes over the pixels): callers run it in a worker thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BadInputError

__all__ = ["check_colormap", "to_rgba"]


def check_colormap(name: str | None) -> str | None:
    """``name`` if matplotlib knows the colormap (None stays None).

    Raises
    ------
    BadInputError
        An unknown colormap (the message names a few known ones).

    >>> check_colormap("viridis")
    'viridis'
    >>> check_colormap("nope")
    Traceback (most recent call last):
    ...
    mapstream.layers.errors.BadInputError: unknown colormap 'nope' (matplotlib's names, e.g. viridis, terrain, gray)
    """
    if name is None:
        return None
    import matplotlib

    if name not in matplotlib.colormaps:
        raise BadInputError(f"unknown colormap {name!r} (matplotlib's names, e.g. viridis, terrain, gray)")
    return name


def _scaled(values: np.ndarray, rescale: Sequence[float] | None) -> np.ndarray:
    """Values mapped to 0..1: ``rescale`` (lo, hi), or the data's own range."""
    if rescale is not None:
        lo, hi = float(rescale[0]), float(rescale[1])
    else:
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return np.zeros_like(values, dtype=np.float32)
        lo, hi = float(finite.min()), float(finite.max())
    span = hi - lo if hi != lo else 1.0
    return np.clip((values - lo) / span, 0.0, 1.0).astype(np.float32)


def to_rgba(
    data: np.ndarray, *, rescale: Sequence[float] | None = None, colormap: str | None = None
) -> np.ndarray:
    """(rows, cols, 4) uint8 of ``data`` (bands, rows, cols; NaN = no data, transparent).

    One band (or two: the first is drawn): ``rescale`` (lo, hi), default the data's range,
    then ``colormap`` (matplotlib, default ``gray``). Three bands or more: red, green, blue from
    the first three, scaled by ``rescale`` when given (else taken as 0..255), and alpha from a
    fourth band if there is one.

    >>> rgba = to_rgba(np.array([[[0.0, 5.0, np.nan]]]), rescale=(0, 10))
    >>> rgba[0].tolist()
    [[0, 0, 0, 255], [128, 128, 128, 255], [0, 0, 0, 0]]
    >>> to_rgba(np.array([[[10.0]], [[20.0]], [[30.0]]]))[0, 0].tolist()
    [10, 20, 30, 255]
    """
    if data.ndim != 3 or data.shape[0] < 1:
        raise BadInputError(f"expected (bands, rows, cols), got shape {data.shape}")
    valid = ~np.isnan(data).all(axis=0)
    if data.shape[0] < 3:
        import matplotlib

        cmap = matplotlib.colormaps[check_colormap(colormap) or "gray"]
        rgba = cmap(_scaled(data[0], rescale), bytes=True)
    else:
        rgb = data[:3]
        if rescale is not None:
            rgb = _scaled(rgb, rescale) * 255.0
        rgba = np.empty((*data.shape[1:], 4), dtype=np.uint8)
        rgba[..., :3] = np.clip(np.nan_to_num(np.moveaxis(rgb, 0, -1)), 0, 255).astype(np.uint8)
        rgba[..., 3] = 255
        if data.shape[0] >= 4:
            rgba[..., 3] = np.clip(np.nan_to_num(data[3]), 0, 255).astype(np.uint8)
    rgba[~valid] = 0
    return np.ascontiguousarray(rgba, dtype=np.uint8)
