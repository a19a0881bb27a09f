"""Layer catalogs: which layers a map offers, read from a YAML (or TOML) file and validated.

A catalog is data. A newcomer gets the embedded demo catalog (``layers/catalogs/demo.yml``,
services on loopback, no internet needed); a team points ``--catalog PATH`` or
``MAPSTREAM_CATALOG`` at its own file::

    title: My team's map
    layers:
      - name: osm
        title: OpenStreetMap
        kind: tiles                # tiles | wms | features
        provider: OpenStreetMap.Mapnik   # an xyzservices name, or url: with {z}/{x}/{y}
        concurrency: 2             # requests at once to this host
        priority: 0                # preload order, lower first
      - name: parcels
        kind: features
        url: https://features.example.org     # the OGC API landing page
        collection: parcels
        headers: {Authorization: "Bearer ${PARCELS_TOKEN}"}   # from the environment
        style: {cmap: viridis, line_width: 0.5, opacity: 0.8}

The URLs ``demo://ogc`` (OGC API Features) and ``demo://tiles`` (the basemap) name the embedded
demo services; :func:`build_layer` starts them on first use.

:func:`build_layer` does not know the kinds: it asks the sources' registry
(:func:`mapstream.layers.sources.layer_class`) for the class of ``spec.kind`` and calls its
``from_spec``. The kinds a catalog accepts (:data:`KINDS`) are checked against that registry by
the tests.

Validation happens on load (pydantic, unknown keys rejected): a wrong key, a bad URL, an unknown
provider or a missing environment variable is one :class:`~mapstream.layers.errors.CatalogError` naming
the file, the layer and the key. Header values are secrets: they never appear in a repr, a
``str`` or an error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import BadInputError, CatalogError

if TYPE_CHECKING:  # pragma: no cover
    from .http import Fetcher
    from .types import Layer

__all__ = [
    "DEMO_CATALOG",
    "KINDS",
    "Catalog",
    "LayerSpec",
    "Style",
    "build_layer",
    "catalog_path",
    "expand_env",
    "load_catalog",
]

CATALOG_DIR = Path(__file__).with_name("catalogs")
DEMO_CATALOG = CATALOG_DIR / "demo.yml"
DEMO_URLS = ("demo://ogc", "demo://tiles", "demo://stac")
#: A COG served by the demo's tile server: ``demo://cogs/<file>.tif``.
_DEMO_COG = re.compile(r"^demo://cogs/[A-Za-z0-9_.-]+\.tif$")
#: The ``kind`` values a catalog accepts: one per source registered in
#: :mod:`mapstream.layers.sources` (validation must not import the sources and their
#: dependencies, so the list is written here; a test checks it against the registry).
KINDS = ("tiles", "wms", "features", "cog", "stac")
Kind = Literal[KINDS]  # type: ignore[valid-type]
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REDACTED = "***"
#: The largest catalog file read (a catalog of a thousand layers is ~200 kB): a bigger file is
#: refused before it is read, not parsed for a minute.
MAX_CATALOG_BYTES = 2 * 2**20
#: The deepest nesting of mappings and lists a catalog may have (a real one has 4 or 5):
#: checked before the document is built, so no parser or validator recurses 10 000 levels.
MAX_CATALOG_DEPTH = 32


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    """Replace every ``${VAR}`` in ``value`` with the environment variable's value.

    Raises
    ------
    KeyError
        A referenced variable is not set (its name is the key).

    >>> expand_env("Bearer ${TOKEN}", {"TOKEN": "abc"})
    'Bearer abc'
    >>> expand_env("${NOPE}", {})
    Traceback (most recent call last):
    ...
    KeyError: 'NOPE'
    """
    env = os.environ if environ is None else environ
    return _VAR.sub(lambda m: env[m.group(1)], value)


def _check_url(url: str) -> str:
    if url in DEMO_URLS or _DEMO_COG.match(url):
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
        raise ValueError(
            f"bad URL {url!r}: expected http(s)://host/..., {DEMO_URLS[0]} or {DEMO_URLS[1]}"
        )
    return url


class Style(BaseModel):
    """How a layer is drawn.

    >>> Style(cmap="viridis", opacity=0.5).opacity
    0.5
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    cmap: str | None = None
    color: str | None = None
    line_width: float = Field(1.0, gt=0)
    point_size: float = Field(2.0, gt=0)
    opacity: float = Field(1.0, ge=0, le=1)


class LayerSpec(BaseModel):
    """One layer of a catalog.

    Attributes
    ----------
    name, title
        Identifier (letters, digits, ``_.-``) and display name (the name by default).
    kind
        ``"tiles"``, ``"wms"``, ``"features"``, ``"cog"`` or ``"stac"``.
    url
        Tile URL template, WMS endpoint or OGC API landing page (or ``demo://...``).
    provider
        An xyzservices provider name (tiles only, instead of ``url``).
    collection
        OGC API collection id (features).
    wms_layers
        WMS layer names (wms).
    gutter
        Pixels of the neighbours asked for around each WMS tile and cropped away, so symbols
        are whole at tile edges (wms; default 32; 0: one tile per GetMap).
    priority
        Preload order, lower first (default: position in the file).
    visible
        Shown when the map opens.
    min_zoom, max_zoom
        Zoom levels where the layer has data (``max_zoom`` None: the service's own).
    concurrency
        Requests at once to the layer's host (None: the fetcher's default).
    headers
        Extra request headers; values may reference ``${VAR}``. Never printed, and never sent
        to another origin a redirect points to.
    allow_private_redirects
        Follow redirects from the layer's (public) server to loopback, private or link-local
        addresses, refused by default (:class:`~mapstream.layers.http.redirects.RedirectGuard`).
    style
        :class:`Style`.
    max_features
        Feature cap per load (features).
    urls, bands, rescale
        A cog layer's files (instead of ``url``: a first-valid mosaic), 1-based band numbers
        and the (low, high) drawn at the colormap's ends (``style.cmap``). A stac layer's
        ``url`` or ``urls`` are STAC API landing pages, all searched at once; ``bands`` and
        ``rescale`` apply to its mosaic.
    collections, asset, datetime, max_items
        A stac layer's collections (searched in every catalog), the asset key of the COGs it
        mosaics, the RFC 3339 instant or interval searched (``2024-01-01T00:00:00Z/..``) and
        the item cap per load.
    page_size
        Features per request (the OGC API ``limit``; features). Bigger pages mean fewer round
        trips for dense layers; the server may answer with fewer.
    filter, filter_lang, filter_fallback
        A CQL2 filter (text, or a mapping for CQL2 JSON) for a features layer, its language,
        and what happens on a server that cannot filter (no OGC API Features Part 3):
        ``error`` (the default: the layer fails, naming the missing conformance class) or
        ``client`` (the unfiltered features are loaded and filtered here).
    attribution
        Credit line.

    >>> spec = LayerSpec(name="t", kind="tiles", url="https://t.test/{z}/{x}/{y}.png",
    ...                  headers={"Authorization": "Bearer s3cret"})
    >>> "s3cret" in repr(spec) or "s3cret" in str(spec)
    False
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    title: str = ""
    kind: Kind
    url: str | None = None
    provider: str | None = None
    collection: str | None = None
    wms_layers: list[str] | None = None
    gutter: int | None = Field(None, ge=0, le=256)
    priority: int | None = None
    visible: bool = True
    min_zoom: int = Field(0, ge=0, le=30)
    max_zoom: int | None = Field(None, ge=0, le=30)
    concurrency: int | None = Field(None, ge=1, le=64)
    headers: dict[str, str] = Field(default_factory=dict)
    allow_private_redirects: bool = False
    style: Style = Field(default_factory=Style)
    max_features: int = Field(200_000, ge=1)
    page_size: int = Field(1000, ge=1, le=100_000)
    urls: list[str] | None = None
    bands: list[int] | None = None
    rescale: tuple[float, float] | None = None
    collections: list[str] | None = None
    asset: str | None = None
    datetime: str | None = None
    max_items: int | None = Field(None, ge=1)
    filter: str | dict[str, Any] | None = None
    filter_lang: Literal["cql2-text", "cql2-json"] | None = None
    filter_fallback: Literal["error", "client"] = "error"
    attribution: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)

    @field_validator("urls")
    @classmethod
    def _urls(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [_check_url(u) for u in v]

    @field_validator("wms_layers", mode="before")
    @classmethod
    def _wms_layers(cls, v: Any) -> Any:
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("provider")
    @classmethod
    def _provider(cls, v: str | None) -> str | None:
        if v is not None:
            import xyzservices

            try:
                xyzservices.providers.query_name(v)
            except (ValueError, KeyError):
                raise ValueError(
                    f"unknown tile provider {v!r} (see xyzservices.providers)"
                ) from None
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            for var in _VAR.findall(value):
                if var not in os.environ:
                    raise ValueError(
                        f"header {key!r} needs environment variable {var}, which is not set"
                    )
            _check_header(key, value, expand_env(value))
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LayerSpec:
        def need(key: str, why: str) -> None:
            raise ValueError(f"{key}: {why}")

        if self.kind == "tiles":
            if (self.url is None) == (self.provider is None):
                need(
                    "url",
                    "a tiles layer needs exactly one of url (a {z}/{x}/{y} template) or provider",
                )
            if self.url is not None and self.url not in DEMO_URLS:
                for part in ("{z}", "{x}"):
                    if part not in self.url:
                        need("url", f"tile URL template needs {part}: {self.url!r}")
                if "{y}" not in self.url and "{-y}" not in self.url:
                    need("url", f"tile URL template needs {{y}} or {{-y}}: {self.url!r}")
        elif self.kind == "stac":
            if (self.url is None) == (not self.urls):
                need("url", "a stac layer needs exactly one of url or urls (STAC API landing pages)")
            if not self.collections:
                need("collections", "a stac layer needs collections (the collection ids searched)")
            if not self.asset:
                need("asset", "a stac layer needs asset (the key of the COG asset to mosaic)")
        elif self.kind == "cog":
            if (self.url is None) == (not self.urls):
                need("url", "a cog layer needs exactly one of url (a COG) or urls (a mosaic)")
            if self.bands is not None and (not self.bands or min(self.bands) < 1):
                need("bands", f"bands are 1-based band numbers, got {self.bands}")
            if self.rescale is not None and self.rescale[0] == self.rescale[1]:
                need("rescale", f"rescale needs two different numbers, got {list(self.rescale)}")
        else:
            if self.provider is not None:
                need("provider", f"provider is for tiles layers, not {self.kind}")
            if self.url is None:
                need("url", f"a {self.kind} layer needs url")
        if self.kind == "wms" and not self.wms_layers:
            need("wms_layers", "a wms layer needs wms_layers (the WMS layer names)")
        if self.gutter is not None and self.kind != "wms":
            need("gutter", f"gutter is for wms layers, not {self.kind}")
        if self.kind == "features" and not self.collection:
            need("collection", "a features layer needs collection")
        if self.max_zoom is not None and self.max_zoom < self.min_zoom:
            need("max_zoom", f"max_zoom {self.max_zoom} is below min_zoom {self.min_zoom}")
        for u in [self.url, *(self.urls or [])]:
            if u is not None and _DEMO_COG.match(u) and self.kind != "cog":
                need("url", f"{u} is a COG of the demo: for cog layers")
        if self.url is not None and self.url in DEMO_URLS:
            expected = {"tiles": "demo://tiles", "stac": "demo://stac"}.get(self.kind, "demo://ogc")
            if self.url != expected:
                need("url", f"a {self.kind} layer of the demo uses {expected}")
        if not self.title:
            object.__setattr__(self, "title", self.name)
        return self

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            if key == "headers":
                value = {k: _REDACTED for k in value}
            yield key, value

    @property
    def uses_demo(self) -> bool:
        """Whether the layer is served by the embedded demo services."""
        return any(
            u in DEMO_URLS or _DEMO_COG.match(u) for u in [self.url, *(self.urls or [])] if u
        )

    def resolved_headers(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Header values with ``${VAR}`` replaced (secrets: do not log the result).

        Raises
        ------
        CatalogError
            A referenced variable is no longer set.
        """
        try:
            resolved = {k: expand_env(v, environ) for k, v in self.headers.items()}
        except KeyError as exc:
            raise CatalogError(
                f"layer {self.name!r}: key 'headers': environment variable {exc.args[0]} is not set"
            ) from None
        for key, value in resolved.items():
            try:
                _check_header(key, self.headers[key], value)
            except ValueError as exc:
                raise CatalogError(f"layer {self.name!r}: key 'headers': {exc}") from None
        return resolved


def _check_header(name: str, raw: str, value: str) -> None:
    """Refuse a header whose name or value (``raw`` once expanded) holds a line break or NUL:
    it would split the request. The value is never shown (a secret).

    >>> _check_header("X-Key", "${K}", "a\\r\\nHost: evil")
    Traceback (most recent call last):
    ...
    ValueError: header 'X-Key' (from ${K}) contains a line break or NUL character: refused
    """
    if any(c in value or c in name for c in "\r\n\0"):
        source = ", ".join(f"${{{v}}}" for v in _VAR.findall(raw))
        raise ValueError(
            f"header {name!r}{f' (from {source})' if source else ''} contains a line break or "
            "NUL character: refused"
        )


class Catalog(BaseModel):
    """A validated catalog.

    Attributes
    ----------
    title
        The map's title.
    layers
        :class:`LayerSpec` in priority order (lower first; ties keep file order).
    path
        The file it came from (None when built in code).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = "mapstream"
    description: str = ""
    layers: list[LayerSpec] = Field(min_length=1)
    _path: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _order(self) -> Catalog:
        seen: set[str] = set()
        for spec in self.layers:
            if spec.name in seen:
                raise ValueError(f"name: two layers are named {spec.name!r}")
            seen.add(spec.name)
        for index, spec in enumerate(self.layers):
            if spec.priority is None:  # default: the position in the file
                object.__setattr__(spec, "priority", index)
        ranked = sorted(enumerate(self.layers), key=lambda p: (p[1].priority, p[0]))
        object.__setattr__(self, "layers", [spec for _, spec in ranked])
        return self

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.layers]

    @property
    def uses_demo(self) -> bool:
        """Whether any layer needs the embedded demo services."""
        return any(spec.uses_demo for spec in self.layers)

    def get(self, name: str) -> LayerSpec:
        """The layer called ``name``.

        Raises
        ------
        BadInputError
            No such layer (the message lists the known names).
        """
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise BadInputError(
            f"no layer {name!r} in the catalog; known layers: {', '.join(self.names)}"
        )


def catalog_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The catalog file to use: ``path``, else ``$MAPSTREAM_CATALOG``, else the demo catalog.

    >>> catalog_path("team.yml").name
    'team.yml'
    >>> catalog_path().name if not os.environ.get("MAPSTREAM_CATALOG") else "demo.yml"
    'demo.yml'
    """
    if path is not None:
        return Path(path)
    env = os.environ.get("MAPSTREAM_CATALOG")
    return Path(env) if env else DEMO_CATALOG


def _read_text(path: Path) -> str:
    """The file's text, refused above :data:`MAX_CATALOG_BYTES` (read no further, so neither
    a huge file nor an endless one, ``/dev/zero``, is loaded)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CATALOG_BYTES + 1)
        if len(data) > MAX_CATALOG_BYTES:
            raise CatalogError(
                f"catalog {path}: larger than {MAX_CATALOG_BYTES // 2**20} MiB: refused (a catalog "
                "lists layers; data belongs on the services it points to)"
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CatalogError(f"catalog {path}: cannot read the file: {reason}") from exc


def _too_deep(path: Path) -> CatalogError:
    return CatalogError(
        f"catalog {path}: nested deeper than {MAX_CATALOG_DEPTH} levels: refused (a catalog "
        "needs 4 or 5)"
    )


def _check_depth(path: Path, data: Any) -> None:
    """Refuse parsed ``data`` nested deeper than :data:`MAX_CATALOG_DEPTH` (iteratively, so
    the check itself cannot recurse too deep)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > MAX_CATALOG_DEPTH:
                raise _too_deep(path)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)


def _read(path: Path) -> Any:
    text = _read_text(path)
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CatalogError(f"catalog {path}: not valid TOML: {exc}") from exc
        except RecursionError:  # tomllib recurses into nested arrays and inline tables
            raise _too_deep(path) from None
        _check_depth(path, data)
        return data
    import yaml

    try:
        # PyYAML's parser is iterative but its composer recurses once per level: count the
        # depth on the event stream first.
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_CATALOG_DEPTH:
                    raise _too_deep(path)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise CatalogError(f"catalog {path}: not valid YAML{at}: {problem}") from exc


def _model_at(loc: list[Any], in_layer: bool) -> type[BaseModel] | None:
    """The model whose field ``loc`` (inside a layer, or at the top) names, or None."""
    model: type[BaseModel] = LayerSpec if in_layer else Catalog
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        sub = getattr(field, "annotation", None) if field is not None else None
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            return None
        model = sub
    return model


def _unknown_key(loc: list[Any], in_layer: bool) -> str:
    """``unknown key``, with a "did you mean" hint for a near miss and the allowed keys.

    A key of a nested model is suggested by its dotted path (``opacty`` on a layer:
    ``style.opacity``).

    >>> _unknown_key(["layer"], False)
    "unknown key; did you mean 'layers'? (allowed: title, description, layers)"
    >>> _unknown_key(["style", "opacty"], True)
    "unknown key; did you mean 'opacity'? (allowed: cmap, color, line_width, point_size, opacity)"
    >>> _unknown_key(["colour"], True).split(" (")[0]
    "unknown key; did you mean 'style.color'?"
    """
    import difflib

    model = _model_at(loc, in_layer) if loc else None
    if model is None:
        return "unknown key"
    fields = list(model.model_fields)
    key = str(loc[-1])
    near = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    if not near:  # a key of a nested model (a style key written on the layer)
        nested = {
            name: f"{field}.{name}"
            for field, info in model.model_fields.items()
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)
            for name in info.annotation.model_fields
        }
        near = [nested[m] for m in difflib.get_close_matches(key, list(nested), n=1, cutoff=0.6)]
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown key{hint} (allowed: {', '.join(fields)})"


def _message(path: Path, data: Any, exc: ValidationError) -> str:
    # An unknown key explains the rest (a misspelt key is also a missing one): report it first.
    errors = sorted(
        exc.errors(include_url=False, include_input=False),
        key=lambda e: e["type"] != "extra_forbidden",
    )
    err = errors[0]
    loc = list(err["loc"])
    where = f"catalog {path}"
    in_layer = len(loc) >= 2 and loc[0] == "layers" and isinstance(loc[1], int)
    if in_layer:
        index = loc[1]
        raw = data.get("layers")[index] if isinstance(data, dict) else None
        name = raw.get("name") if isinstance(raw, dict) else None
        where += f": layer {name!r}" if name else f": layer #{index + 1}"
        loc = loc[2:]
    text = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        text = _unknown_key(loc, in_layer)
    if not loc and ":" in text.split(" ")[0]:  # a model-level check names its key first
        key, _, text = text.partition(": ")
        loc = [key]
    if loc:
        where += f": key {'.'.join(str(p) for p in loc)!r}"
    more = (
        f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        if len(errors) > 1
        else ""
    )
    return f"{where}: {text}{more}"


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Read and validate a catalog (see :func:`catalog_path` for which file).

    Raises
    ------
    CatalogError
        The file cannot be read or parsed, or does not validate. One message naming the file,
        the layer and the key.

    >>> catalog = load_catalog(DEMO_CATALOG)
    >>> catalog.uses_demo, catalog.layers[0].kind
    (True, 'tiles')
    """
    file = catalog_path(path)
    data = _read(file)
    if not isinstance(data, dict):
        raise CatalogError(
            f"catalog {file}: expected a mapping with a 'layers' list, got {type(data).__name__}"
        )
    try:
        catalog = Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(_message(file, data, exc)) from None
    catalog._path = file
    return catalog


async def build_layer(spec: LayerSpec, fetcher: Fetcher) -> Layer:
    """The engine layer for ``spec``, with the fetcher set up for its host.

    The layer class is the one registered for ``spec.kind``; its ``from_spec(spec, url,
    **zooms)`` builds it and its ``request_prefixes()`` say which URLs get the limits and headers.

    Starts the demo services first (without blocking the event loop) when the spec uses them.
    Applies ``spec.concurrency`` (``fetcher.set_host_limit``) and ``spec.headers``
    (``fetcher.set_source_headers``, values read from the environment now).

    Raises
    ------
    CatalogError
        A header's environment variable is no longer set.
    BadInputError
        The layer class rejects the settings.
    LayersError
        The demo services could not start.
    """
    from .sources import layer_class

    url = spec.url
    demo_max_zoom = None
    if spec.uses_demo:
        from mapstream.demo import ensure_demo  # the demo is a room of its own, started on first use

        services = await ensure_demo()
        demo = {"demo://tiles": services.tiles_url, "demo://ogc": services.ogc_url, "demo://stac": services.stac_url}
        cogs = services.tiles_url.split("/tiles/", 1)[0] + "/cogs/"  # the tile server's files

        def resolve(u: str) -> str:
            return cogs + u.removeprefix("demo://cogs/") if _DEMO_COG.match(u) else demo.get(u, u)

        url = resolve(spec.url) if spec.url else None
        if spec.urls:
            url = [resolve(u) for u in spec.urls]  # type: ignore[assignment]
        demo_max_zoom = services.max_zoom if spec.kind != "cog" else None
    zooms: dict[str, Any] = {"min_zoom": spec.min_zoom}
    max_zoom = spec.max_zoom if spec.max_zoom is not None else demo_max_zoom
    if max_zoom is not None:
        zooms["max_zoom"] = max_zoom
    layer = layer_class(spec.kind).from_spec(spec, url, **zooms)
    headers = spec.resolved_headers()
    for prefix in layer.request_prefixes():
        if spec.concurrency is not None:
            fetcher.set_host_limit(urlsplit(prefix).netloc, spec.concurrency)
        if headers:
            fetcher.set_source_headers(prefix, headers)
        if spec.allow_private_redirects:
            fetcher.redirects.allow(prefix)
    return layer
