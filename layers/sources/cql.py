"""CQL2 evaluated on a loaded frame: the client-side filter for servers without Part 3.

A server that does not declare OGC API Features Part 3 ignores ``filter=`` and answers every
feature (MapServer 8, QGIS Server 3.22). When the caller asks for it (``FeatureLayer(...,
client_filter=True)``, catalog ``filter_fallback: client``), the layer loads the unfiltered
pages and keeps only the rows a :class:`ClientFilter` accepts.

The filter is parsed by pygeofilter (CQL2 text or CQL2 JSON) and evaluated by its GeoPandas
backend, with what that backend lacks added here: temporal predicates (``T_AFTER``, ``T_BEFORE``,
``T_DURING``, ``T_EQUALS``, ``T_INTERSECTS``), timestamps compared with string columns, ``BBOX``
literals, and spatial literals in CRS84 compared with the frame's geometry taken back to CRS84
(frames are in EPSG:3857). A property a page does not have is a column of nulls: it matches
``IS NULL`` and no comparison, as on a server.

>>> import geopandas as gpd, shapely
>>> frame = gpd.GeoDataFrame({"num": [1, 5, 9], "kind": ["a", "b", "a"]},
...                          geometry=[shapely.Point(0, 0)] * 3, crs="EPSG:3857")
>>> ClientFilter("num > 2 AND kind = 'a'").apply(frame)["num"].tolist()
[9]
>>> ClientFilter({"op": "<", "args": [{"property": "num"}, 6]}).apply(frame)["num"].tolist()
[1, 5]
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson
import pandas as pd

from ..errors import BadInputError

__all__ = ["ClientFilter", "filter_language", "parse_cql2"]

GEOMETRY_NAMES = frozenset({"geometry", "geom", "the_geom", "shape", "wkb_geometry"})


def filter_language(filter: str | Mapping[str, Any], lang: str | None = None) -> str:
    """``"cql2-text"`` or ``"cql2-json"``: what ``filter`` is written in.

    >>> filter_language("a = 1"), filter_language({"op": "=", "args": []}), filter_language("{}", "cql2-json")
    ('cql2-text', 'cql2-json', 'cql2-json')
    """
    if lang:
        return lang.lower()
    return "cql2-json" if isinstance(filter, Mapping) else "cql2-text"


def _bbox_to_polygon(node: Any) -> Any:
    # pygeofilter 0.4 builds a CQL2-JSON {"bbox": [...]} into an Envelope with its axes mixed
    # up (x2 takes miny): a bbox is given to it as the polygon it stands for.
    if isinstance(node, dict):
        if set(node) == {"bbox"} and isinstance(node["bbox"], list) and len(node["bbox"]) in (4, 6):
            b = node["bbox"]
            w, s, e, n = (b[0], b[1], b[2], b[3]) if len(b) == 4 else (b[0], b[1], b[3], b[4])
            ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
            return {"type": "Polygon", "coordinates": [ring]}
        return {k: _bbox_to_polygon(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_bbox_to_polygon(v) for v in node]
    return node


def parse_cql2(filter: str | Mapping[str, Any], lang: str | None = None) -> Any:
    """The pygeofilter AST of a CQL2 text or JSON filter.

    Raises
    ------
    BadInputError
        Not valid CQL2 in that language, or a language other than cql2-text / cql2-json.

    >>> parse_cql2("num > 2")
    GreaterThan(lhs=ATTRIBUTE num, rhs=2)
    >>> try:
    ...     parse_cql2("num >")
    ... except BadInputError as exc:
    ...     print(exc)
    not valid cql2-text: 'num >'
    """
    language = filter_language(filter, lang)
    try:
        if language == "cql2-json":
            from pygeofilter.parsers.cql2_json import parse as parse_json

            doc = orjson.loads(filter) if isinstance(filter, (str, bytes)) else dict(filter)
            return parse_json(_bbox_to_polygon(doc))
        if language == "cql2-text":
            from pygeofilter.parsers.cql2_text import parse as parse_text

            return parse_text(str(filter))
    except Exception as exc:  # lark and pygeofilter raise many kinds: all mean "not CQL2"
        text = filter if isinstance(filter, str) else orjson.dumps(filter).decode()
        raise BadInputError(f"not valid {language}: {text[:200]!r}") from exc
    raise BadInputError(f"filter-lang {language!r}: only cql2-text and cql2-json are understood")


def _as_time(value: Any) -> Any:
    """A column or literal as UTC timestamps (strings parsed; dates at midnight UTC)."""
    if isinstance(value, pd.Series):
        if pd.api.types.is_datetime64_any_dtype(value):
            return value if value.dt.tz is not None else value.dt.tz_localize("UTC")
        return pd.to_datetime(value, utc=True, errors="coerce")
    if isinstance(value, (_dt.datetime, _dt.date, str)):
        ts = pd.Timestamp(value)
        return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    if value is None:
        return None
    return value


def _is_time(value: Any) -> bool:
    return isinstance(value, (_dt.datetime, _dt.date, pd.Timestamp)) or (
        isinstance(value, pd.Series) and pd.api.types.is_datetime64_any_dtype(value)
    )


def _evaluator(frame: Any) -> Any:
    import shapely
    from pygeofilter import ast, values
    from pygeofilter.backends.evaluator import handle
    from pygeofilter.backends.geopandas.evaluate import GeoPandasEvaluator
    from pygeofilter.backends.geopandas import filters

    class FrameEvaluator(GeoPandasEvaluator):
        """pygeofilter's GeoPandas evaluator, completed for our frames (see the module)."""

        _lonlat: Any = None

        def _geometry(self) -> Any:
            if self._lonlat is None:
                self._lonlat = self.df.geometry.to_crs("OGC:CRS84")
            return self._lonlat

        @handle(ast.Attribute)
        def attribute(self, node: Any) -> Any:
            name = node.name
            if name == self.df.geometry.name or (name in GEOMETRY_NAMES and name not in self.df.columns):
                return self._geometry()
            if name not in self.df.columns:
                return pd.Series([None] * len(self.df), index=self.df.index, dtype=object)
            return self.df[name]

        @handle(ast.Comparison, subclasses=True)
        def comparison(self, node: Any, lhs: Any, rhs: Any) -> Any:
            if _is_time(lhs) or _is_time(rhs):
                lhs, rhs = _as_time(lhs), _as_time(rhs)
            return filters.compare(lhs, rhs, node.op.value)

        @handle(ast.Between)
        def between(self, node: Any, lhs: Any, low: Any, high: Any) -> Any:
            if _is_time(low) or _is_time(high):
                lhs, low, high = _as_time(lhs), _as_time(low), _as_time(high)
            return filters.between(lhs, low, high, node.not_)

        @handle(ast.Like)
        def like(self, node: Any, lhs: Any) -> Any:
            mask = filters.like(lhs.astype("string"), node.pattern, node.nocase, node.wildcard,
                                node.singlechar, node.escapechar, False)
            mask = mask.fillna(False).astype(bool)
            return ~mask if node.not_ else mask

        @handle(ast.TemporalPredicate, subclasses=True)
        def temporal(self, node: Any, lhs: Any, rhs: Any) -> Any:
            col = _as_time(lhs)
            if isinstance(rhs, tuple):  # an interval (start, end); None or ".." is open
                start, end = (None if v in (None, "..") else _as_time(v) for v in rhs)
            else:
                start = end = _as_time(rhs)
            op = node.op.name
            lo = col >= start if start is not None else pd.Series(True, index=col.index)
            hi = col <= end if end is not None else pd.Series(True, index=col.index)
            if op == "AFTER":
                return col > end if end is not None else pd.Series(False, index=col.index)
            if op == "BEFORE":
                return col < start if start is not None else pd.Series(False, index=col.index)
            if op in ("DURING", "INTERSECTS", "TOVERLAPS", "EQUALS", "DISJOINT"):
                inside = lo & hi
                if op == "DURING" and start is not None and end is not None:
                    inside = (col > start) & (col < end)
                if op == "EQUALS":
                    inside = (col == start) & (col == end)
                return ~inside & col.notna() if op == "DISJOINT" else inside
            raise NotImplementedError(f"temporal operator {op}")

        @handle(ast.Function)
        def function(self, node: Any, *arguments: Any) -> Any:
            if node.name.lower() == "bbox" and len(arguments) in (4, 6):
                a = arguments
                w, s, e, n = (a[0], a[1], a[2], a[3]) if len(a) == 4 else (a[0], a[1], a[3], a[4])
                return shapely.box(w, s, e, n)
            raise NotImplementedError(f"function {node.name}")

        @handle(values.Interval)
        def interval(self, node: Any, start: Any, end: Any) -> Any:
            return (start, end)

        @handle(type(None))
        def open_end(self, node: Any) -> Any:  # an interval's open end ("..")
            return None

    return FrameEvaluator(frame)


class ClientFilter:
    """A CQL2 filter evaluated on frames in EPSG:3857 (see the module).

    Parameters
    ----------
    filter
        CQL2 text, or CQL2 JSON (a mapping, or text with ``lang="cql2-json"``).
    lang
        ``"cql2-text"`` or ``"cql2-json"``; by default from the type of ``filter``.

    Raises
    ------
    BadInputError
        The filter is not valid CQL2 (checked at construction, before anything is loaded).
    """

    def __init__(self, filter: str | Mapping[str, Any], lang: str | None = None) -> None:
        self.language = filter_language(filter, lang)
        self.ast = parse_cql2(filter, self.language)
        self.source = (filter, lang)

    def __repr__(self) -> str:
        return f"ClientFilter({self.ast!r})"

    @property
    def properties(self) -> frozenset[str]:
        """The property names the filter reads.

        >>> sorted(ClientFilter("num > 2 AND kind = 'a'").properties)
        ['kind', 'num']
        """
        from pygeofilter import ast

        names: set[str] = set()
        stack = [self.ast]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.Attribute):
                names.add(node.name)
            elif isinstance(node, ast.Node):
                stack.extend(node.get_sub_nodes())
            elif isinstance(node, (list, tuple)):
                stack.extend(node)
        return frozenset(names)

    def can_check(self, frame: Any) -> bool:
        """Whether every property the filter reads is a column of ``frame`` (or its geometry):
        only then does a row that fails the filter prove the server did not apply it."""
        have = set(frame.columns) | GEOMETRY_NAMES
        return self.properties <= have

    def mask(self, frame: Any) -> np.ndarray:
        """A boolean array: which rows of ``frame`` match.

        Raises
        ------
        BadInputError
            The filter uses what cannot be evaluated here (an unknown function, an operator
            between types that do not compare).
        """
        if not len(frame):
            return np.zeros(0, dtype=bool)
        try:
            result = _evaluator(frame).evaluate(self.ast)
        except (NotImplementedError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(f"cannot evaluate the CQL2 filter on the client: {exc}") from exc
        if isinstance(result, (bool, np.bool_)):
            return np.full(len(frame), bool(result))
        series = pd.Series(result, index=frame.index) if not isinstance(result, pd.Series) else result
        return series.fillna(False).astype(bool).to_numpy()

    def apply(self, frame: Any) -> Any:
        """The rows of ``frame`` that match (a new frame; ``frame`` is not modified).

        Raises
        ------
        BadInputError
            As :meth:`mask`.
        """
        return frame[self.mask(frame)]
