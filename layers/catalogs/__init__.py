"""Catalog files shipped with mapstream (data only: see :mod:`layers.catalog`)."""
