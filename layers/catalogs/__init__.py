"""Catalog files shipped with mapstream (data only: see :mod:`mapstream.layers.catalog`)."""
