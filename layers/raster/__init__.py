"""Rasters read in windows over HTTP ranges: the building blocks of the COG source.

- :mod:`.store`: :class:`~.store.RangeStore`, ranged reads of one file through the fetcher
  (merged, checked, pinned to the first response's ``ETag``).
- :mod:`.reader`: a COG's header read once (async-geotiff), the overview for a resolution,
  the internal tiles under a window, decoded to float arrays with NaN for no data.
- :mod:`.warp`: windows warped onto a viewport's EPSG:3857 grid (GDAL on in-memory arrays),
  first-valid mosaics.
- :mod:`.colorize`: values to RGBA (rescale and a colormap, or RGB(A) as is).

The layer itself is :class:`mapstream.layers.sources.cog.COGLayer`.
"""
