"""Streaming writers for ``mapstream export``: GeoParquet, GeoPackage and GeoJSON, page by page.

Memory stays bounded by one page: each page is converted and written, then dropped. The output
is written under a temporary name beside the target (``.NAME.part-PID.EXT``) and renamed into
place only when every page is written, so a failure or Ctrl-C never leaves a file that looks
complete (:func:`atomic_output` removes the temporary file).

The first page fixes the columns: later pages get missing columns as nulls and lose columns the
first page did not have (counted in :attr:`PageWriter.dropped_columns`); GeoParquet requires one
schema per file and GeoPackage one per layer.

Real servers send schemas a format may not hold as they are: QGIS Server exposes a ``fid``
property, which a GeoPackage reserves for its feature id; SQLite column names are
case-insensitive, so ``Name`` and ``name`` are one column there; pages mix points, lines and
polygons, and some features have no geometry. Each writer renames what its format cannot hold
(:func:`safe_names`; the new names are in :attr:`PageWriter.renamed`, which the command
prints), writes every geometry type into one layer, and nulls as nulls. Any other failure of
the format's library is an :class:`ExportError` naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mapstream.layers.errors import LayersError

__all__ = ["FORMATS", "ExportError", "PageWriter", "atomic_output", "format_for", "open_writer", "safe_names"]

#: Output formats by file suffix.
FORMATS = {".parquet": "parquet", ".geoparquet": "parquet", ".gpkg": "gpkg", ".geojson": "geojson", ".json": "geojson"}


class ExportError(LayersError):
    """An export that cannot produce a complete file (the message says why)."""


def safe_names(
    names: list[str], *, reserved: tuple[str, ...] = (), fold_case: bool = False
) -> dict[str, str]:
    """New names for the columns a format cannot hold as they are: ``{old: new}``.

    A name in ``reserved``, empty, or equal to an earlier one (ignoring case when
    ``fold_case``, as SQLite does) gets ``_2``, ``_3``, ... until it is unique; names that
    need no change are not in the result.

    >>> safe_names(["id", "fid", "Name", "name", "a b"], reserved=("fid", "geom"), fold_case=True)
    {'fid': 'fid_2', 'name': 'name_2'}
    >>> safe_names(["FID", "", "geom"], reserved=("fid", "geom"), fold_case=True)
    {'FID': 'FID_2', '': 'field_2', 'geom': 'geom_2'}
    >>> safe_names(["Name", "name"])
    {}
    """
    key = str.lower if fold_case else (lambda n: n)
    taken = {key(r) for r in reserved}
    out: dict[str, str] = {}
    for name in names:
        base = name or "field"
        new, k = base, 1
        while key(new) in taken or not name and k == 1:
            k += 1
            new = f"{base}_{k}"
        taken.add(key(new))
        if new != name:
            out[name] = new
    return out


def format_for(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """The writer for ``path``: ``fmt`` if given, else by suffix, GeoParquet when there is none.

    Raises
    ------
    ValueError
        A suffix or format the exporter does not write.

    >>> format_for("out.gpkg"), format_for("out"), format_for("x.json", "gpkg")
    ('gpkg', 'parquet', 'gpkg')
    >>> format_for("out.shp")
    Traceback (most recent call last):
    ...
    ValueError: cannot write '.shp' files: use .parquet (GeoParquet), .gpkg or .geojson
    """
    if fmt is not None:
        return fmt
    suffix = Path(path).suffix.lower()
    if not suffix:
        return "parquet"
    try:
        return FORMATS[suffix]
    except KeyError:
        raise ValueError(
            f"cannot write {suffix!r} files: use .parquet (GeoParquet), .gpkg or .geojson"
        ) from None


def temp_path_for(path: Path) -> Path:
    """The temporary name an export writes before it renames into ``path``.

    >>> temp_path_for(Path("/d/out.gpkg")).name.startswith(".out.part-")
    True
    """
    return path.with_name(f".{path.stem}.part-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path; rename it to ``path`` on success, remove it on any failure.

    ``BaseException`` (Ctrl-C, cancellation) also removes it.
    """
    tmp = temp_path_for(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, path)


def _remove(tmp: Path) -> None:
    # SQLite (GeoPackage) may leave a journal beside the file.
    for p in (tmp, *(tmp.with_name(tmp.name + s) for s in ("-journal", "-wal", "-shm"))):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


class PageWriter:
    """Base: aligns each page's columns to the first page's, renames what the format cannot
    hold (:attr:`reserved`, :attr:`fold_case`), then hands the page to ``_write``.

    Raises
    ------
    ExportError
        From :meth:`write` and :meth:`close`: the format's library failed (the message names
        the file and the reason).
    """

    #: Column names the format keeps for itself.
    reserved: tuple[str, ...] = ()
    #: Whether the format's column names ignore case.
    fold_case = False
    #: What the format is called in messages.
    label = "file"
    #: Whether object and array values (and columns of mixed types) become JSON text.
    nested_as_json = True

    def __init__(self, path: Path, *, crs: str, layer_name: str) -> None:
        self.path = path
        self.crs = crs
        self.layer_name = layer_name
        self.columns: list[str] | None = None
        self.rows = 0
        self.dropped_columns: set[str] = set()
        self.renamed: dict[str, str] = {}

    def write(self, frame: Any) -> None:
        """Write one page (a GeoDataFrame in any CRS; reprojected to the writer's)."""
        if frame is None or len(frame) == 0:
            return
        with self._translated():
            frame = frame.to_crs(self.crs) if frame.crs is not None else frame.set_crs(self.crs)
            geom = frame.geometry.name
            if self.columns is None:
                self.columns = [c for c in frame.columns if c != geom] + [geom]
                props = [str(c) for c in self.columns[:-1]]
                self.renamed = safe_names(props, reserved=self.reserved, fold_case=self.fold_case)
            else:
                extra = set(frame.columns) - set(self.columns)
                self.dropped_columns |= extra
                frame = frame.reindex(columns=self.columns)
            if self.renamed:
                frame = frame.rename(columns=self.renamed)
            if self.nested_as_json:
                frame = _flatten_objects(frame)
            self._write(frame)
        self.rows += len(frame)

    def close(self) -> None:
        """Finish the file; writes a valid empty file when no page had rows."""
        with self._translated():
            if self.columns is None:
                import geopandas as gpd

                self._write(gpd.GeoDataFrame({"geometry": []}, geometry="geometry", crs=self.crs))
            self._close()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Any failure but ours as an :class:`ExportError` (pyogrio, pyarrow, OS errors)."""
        try:
            yield
        except LayersError:
            raise
        except Exception as exc:  # the format libraries raise many unrelated types
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise ExportError(f"cannot write {self.label} {self.path.name}: {reason}") from exc

    def abort(self) -> None:
        """Release the file after a failure (the caller removes it)."""

    def _write(self, frame: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:
        pass


class GeoParquetWriter(PageWriter):
    """GeoParquet 1.x (WKB geometry, ``geo`` metadata) through one ``pyarrow`` ParquetWriter."""

    label = "GeoParquet"

    _writer = None
    _schema = None

    def _write(self, frame: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from geopandas.io.arrow import _geopandas_to_arrow

        table = _geopandas_to_arrow(frame, index=False)
        if self._writer is None:
            # A column all-null on the first page would fix its type to null: use string.
            fields = [
                pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema
            ]
            meta = dict(table.schema.metadata or {})
            geo = json.loads(meta[b"geo"])
            for col in geo.get("columns", {}).values():
                # Per-file facts that only the first page would describe.
                col.pop("bbox", None)
                col["geometry_types"] = []
            meta[b"geo"] = json.dumps(geo).encode()
            self._schema = pa.schema(fields, metadata=meta)
            self._writer = pq.ParquetWriter(self.path, self._schema)
        arrays = []
        for f in self._schema:
            col = table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ExportError(
                        f"column {f.name!r} changes type between pages ({f.type} then {col.type})"
                    ) from exc
            arrays.append(col)
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self._schema))

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()


class GeoPackageWriter(PageWriter):
    """GeoPackage through pyogrio, appending each page to one layer.

    The layer's feature id column is ``fid`` and its geometry column ``geom``, so properties
    of those names are renamed, as are names equal but for case (SQLite's columns ignore
    case). The layer's geometry type is ``GEOMETRY``: any mix of types, and null geometries.
    """

    reserved = ("fid", "geom")
    fold_case = True
    label = "GeoPackage"
    _started = False

    def _write(self, frame: Any) -> None:
        import pyogrio

        pyogrio.write_dataframe(
            frame,
            self.path,
            layer=self.layer_name,
            driver="GPKG",
            append=self._started,
            geometry_type="Unknown",  # one layer for points, lines and polygons alike
            layer_options={"FID": "fid", "GEOMETRY_NAME": "geom"},
        )
        self._started = True


class GeoJSONWriter(PageWriter):
    """An RFC 7946 FeatureCollection (always EPSG:4326), written feature by feature."""

    label = "GeoJSON"
    nested_as_json = False  # GeoJSON holds objects and arrays as they are

    def __init__(self, path: Path, *, crs: str, layer_name: str) -> None:
        super().__init__(path, crs="EPSG:4326", layer_name=layer_name)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in _close
        self._fh.write('{"type": "FeatureCollection", "features": [\n')
        self._first = True

    def _write(self, frame: Any) -> None:
        for feat in frame.iterfeatures(na="null", drop_id=True):
            if not self._first:
                self._fh.write(",\n")
            self._fh.write(json.dumps(feat, separators=(",", ":"), default=_json_value))
            self._first = False

    def close(self) -> None:
        # An empty collection needs no schema: skip the base class's empty-frame write.
        with self._translated():
            self._close()

    def _close(self) -> None:
        self._fh.write("\n]}\n")
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()


def _flatten_objects(frame: Any) -> Any:
    """``frame`` with object columns that hold objects, arrays or values of several types as
    JSON text (a GeoPackage or Parquet column has one scalar type); other columns as they are.

    >>> import pandas as pd
    >>> frame = pd.DataFrame({"a": [{"k": 1}, "x", 2], "b": ["u", "v", "w"]})
    >>> out = _flatten_objects(frame)
    >>> out["a"].tolist(), out["b"].tolist()
    (['{"k": 1}', 'x', '2'], ['u', 'v', 'w'])
    """
    geom = getattr(frame, "_geometry_column_name", None)
    out = None
    for col in frame.columns:
        if col == geom or frame[col].dtype != object:
            continue
        values = frame[col].tolist()
        kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) <= 1 and not kinds & {dict, list, tuple}:
            continue
        if out is None:
            out = frame.copy()
        out[col] = [
            None if v is None or (isinstance(v, float) and v != v)
            else v if isinstance(v, str) else json.dumps(v, default=_json_value)
            for v in values
        ]
    return frame if out is None else out


def _json_value(value: Any) -> Any:
    """JSON for what ``json`` cannot encode: timestamps as ISO 8601, NumPy scalars as Python.

    >>> import pandas as pd, numpy as np
    >>> _json_value(pd.Timestamp("2024-05-01T12:00Z")), _json_value(np.int64(3))
    ('2024-05-01T12:00:00+00:00', 3)
    """
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write a {type(value).__name__} to GeoJSON")


def open_writer(fmt: str, path: Path, *, crs: str, layer_name: str) -> PageWriter:
    """A writer for ``fmt`` (``parquet``, ``gpkg`` or ``geojson``) writing to ``path``."""
    cls = {"parquet": GeoParquetWriter, "gpkg": GeoPackageWriter, "geojson": GeoJSONWriter}[fmt]
    return cls(path, crs=crs, layer_name=layer_name)
