"""Catalog files: loading, validation messages, secrets, example catalogs (never contacted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mapstream.layers.catalog import CATALOG_DIR, DEMO_CATALOG, Catalog, LayerSpec, build_layer, load_catalog
from mapstream.layers.errors import BadInputError, CatalogError
from mapstream.layers.sources.features import FeatureLayer
from mapstream.layers.sources.tiles import TileLayer
from mapstream.layers.sources.wms import WMSLayer

TILES = {"name": "base", "kind": "tiles", "url": "https://t.test/{z}/{x}/{y}.png"}
FEATURES = {"name": "pts", "kind": "features", "url": "https://f.test/api", "collection": "points"}


def write(tmp_path: Path, layers: list[dict] | None = None, **top) -> Path:
    path = tmp_path / "team.yml"
    data = dict(top)
    if layers is not None:
        data["layers"] = layers
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class Recorder:
    """Records what build_layer asks of the fetcher (the two calls of the contract)."""

    def __init__(self) -> None:
        self.limits: dict[str, int] = {}
        self.headers: dict[str, dict[str, str]] = {}

    def set_host_limit(self, host: str, n: int) -> None:
        self.limits[host] = n

    def set_source_headers(self, prefix: str, headers: dict[str, str] | None) -> None:
        self.headers[prefix] = dict(headers or {})


# ------------------------------------------------------------------ the demo catalog


def test_demo_catalog_is_the_default(monkeypatch):
    monkeypatch.delenv("MAPSTREAM_CATALOG", raising=False)
    catalog = load_catalog()
    assert catalog.path == DEMO_CATALOG
    assert catalog.uses_demo
    assert [s.name for s in catalog.layers] == ["basemap", "countries", "sensors", "borders", "elevation", "scenes"]
    assert [s.priority for s in catalog.layers] == sorted(s.priority for s in catalog.layers)
    kinds = {s.name: s.kind for s in catalog.layers}
    assert kinds == {
        "basemap": "tiles",
        "countries": "features",
        "sensors": "features",
        "borders": "features",
        "elevation": "cog",
        "scenes": "stac",
    }
    assert catalog.get("sensors").max_features >= 200_000
    assert catalog.get("sensors").style.cmap and catalog.get("countries").style.opacity < 1
    assert not catalog.get("borders").visible
    assert not catalog.get("elevation").visible and not catalog.get("scenes").visible
    assert catalog.get("scenes").url == "demo://stac" and catalog.get("scenes").asset == "elevation"


def test_env_variable_then_argument_choose_the_file(tmp_path, monkeypatch):
    env_file = write(tmp_path, [TILES], title="from env")
    monkeypatch.setenv("MAPSTREAM_CATALOG", str(env_file))
    assert load_catalog().title == "from env"
    assert load_catalog(DEMO_CATALOG).title != "from env"


def test_priority_orders_layers_and_defaults_to_file_order(tmp_path):
    layers = [
        {**TILES, "name": "late", "priority": 5},
        {**TILES, "name": "first"},
        {**TILES, "name": "early", "priority": 0},
    ]
    catalog = load_catalog(write(tmp_path, layers))
    assert [s.name for s in catalog.layers] == ["early", "first", "late"]
    assert catalog.get("first").priority == 1


def test_unknown_layer_lists_the_known_names(tmp_path):
    catalog = load_catalog(write(tmp_path, [TILES, FEATURES]))
    with pytest.raises(BadInputError, match=r"no layer 'nope'.*base, pts"):
        catalog.get("nope")


def test_toml_catalog(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        'title = "t"\n[[layers]]\nname = "base"\nkind = "tiles"\nprovider = "OpenStreetMap.Mapnik"\n'
    )
    assert load_catalog(path).get("base").provider == "OpenStreetMap.Mapnik"


# ------------------------------------------------------------------ bad catalogs


@pytest.mark.parametrize(
    ("layer", "key", "words"),
    [
        ({**TILES, "colour": "red"}, "colour", "unknown key"),
        ({**FEATURES, "url": "ftp://f.test"}, "url", "bad URL 'ftp://f.test'"),
        ({**FEATURES, "url": "not a url"}, "url", "bad URL"),
        (
            {"name": "base", "kind": "tiles", "provider": "No.Such"},
            "provider",
            "unknown tile provider 'No.Such'",
        ),
        (
            {**TILES, "headers": {"Authorization": "Bearer ${MAPSTREAM_TEST_UNSET}"}},
            "headers",
            "MAPSTREAM_TEST_UNSET, which is not set",
        ),
        ({**TILES, "url": "https://t.test/{x}/{y}.png"}, "url", "needs {z}"),
        ({**FEATURES, "collection": None}, "collection", "needs collection"),
        (
            {"name": "w", "kind": "wms", "url": "https://w.test/wms"},
            "wms_layers",
            "needs wms_layers",
        ),
        ({**TILES, "kind": "vector"}, "kind", "Input should be 'tiles', 'wms', 'features'"),
        ({**FEATURES, "style": {"opacity": 3}}, "style.opacity", "less than or equal to 1"),
        ({**FEATURES, "style": {"width": 3}}, "style.width", "unknown key"),
        ({**TILES, "min_zoom": 8, "max_zoom": 3}, "max_zoom", "below min_zoom"),
        ({**TILES, "concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({**FEATURES, "page_size": 0}, "page_size", "greater than or equal to 1"),
    ],
)
def test_bad_layer_is_one_message_naming_file_layer_and_key(
    tmp_path, monkeypatch, layer, key, words
):
    monkeypatch.delenv("MAPSTREAM_TEST_UNSET", raising=False)
    layer = {k: v for k, v in layer.items() if v is not None}
    path = write(tmp_path, [FEATURES if layer["name"] != "pts" else TILES, layer])
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"catalog {path}: layer {layer['name']!r}: key {key!r}: "), text
    assert words in text


@pytest.mark.parametrize(
    ("layer", "key", "hint"),
    [
        ({**TILES, "titel": "Base"}, "titel", "; did you mean 'title'? (allowed: name, title, "),
        ({**TILES, "max_zom": 3}, "max_zom", "; did you mean 'max_zoom'? (allowed: "),
        ({**TILES, "opacty": 0.5}, "opacty", "; did you mean 'style.opacity'? (allowed: "),
        ({**TILES, "style": {"colour": "red"}}, "style.colour", "; did you mean 'color'? (allowed: cmap, color, "),
    ],
)
def test_unknown_key_suggests_the_nearest_field(tmp_path, layer, key, hint):
    path = write(tmp_path, [layer])
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"catalog {path}: layer 'base': key {key!r}: unknown key{hint}"), str(info.value)


def test_unknown_key_far_from_every_field_has_no_hint(tmp_path):
    path = write(tmp_path, [{**TILES, "zzzzzz": 1}])
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert "did you mean" not in str(info.value)
    assert "key 'zzzzzz': unknown key (allowed: name, title," in str(info.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("layers:\n  - name: a\n   kind: [\n", "not valid YAML at line 3"),
        ("- just\n- a list\n", "expected a mapping with a 'layers' list"),
        ("layer: []\n", "key 'layer': unknown key; did you mean 'layers'? (allowed: title, description, layers)"),
        ("title: empty\nlayers: []\n", "key 'layers'"),
    ],
)
def test_bad_file_is_one_message_naming_the_file(tmp_path, content, words):
    path = tmp_path / "bad.yml"
    path.write_text(content)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"catalog {path}: ") and words in str(info.value)


def test_duplicate_names_and_unreadable_files(tmp_path):
    with pytest.raises(CatalogError, match="key 'name': two layers are named 'base'"):
        load_catalog(write(tmp_path, [TILES, TILES]))
    missing = tmp_path / "missing.yml"
    with pytest.raises(
        CatalogError, match=f"catalog {missing}: cannot read the file: No such file"
    ):
        load_catalog(missing)
    with pytest.raises(CatalogError, match="cannot read the file"):
        load_catalog(tmp_path)  # a directory


# ------------------------------------------------------------------ secrets


def test_header_values_are_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPSTREAM_TEST_TOKEN", "t0ps3cret")
    layer = {
        **FEATURES,
        "headers": {"Authorization": "Bearer ${MAPSTREAM_TEST_TOKEN}", "X-Key": "literal-k3y"},
    }
    catalog = load_catalog(write(tmp_path, [layer]))
    spec = catalog.get("pts")
    for text in (repr(spec), str(spec), repr(catalog), str(catalog)):
        assert (
            "t0ps3cret" not in text
            and "literal-k3y" not in text
            and "MAPSTREAM_TEST_TOKEN" not in text
        )
        assert "Authorization" in text
    assert spec.resolved_headers() == {"Authorization": "Bearer t0ps3cret", "X-Key": "literal-k3y"}
    # A later error in the same file does not echo the header either.
    bad = {**layer, "name": "bad", "url": "gopher://x"}
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, [layer, bad]))
    assert "t0ps3cret" not in str(info.value) and "literal-k3y" not in str(info.value)


async def test_build_layer_applies_concurrency_and_headers_read_now(monkeypatch):
    monkeypatch.setenv("MAPSTREAM_TEST_TOKEN", "first")
    spec = LayerSpec(
        **{
            **FEATURES,
            "concurrency": 3,
            "page_size": 250,
            "headers": {"Authorization": "Bearer ${MAPSTREAM_TEST_TOKEN}"},
        }
    )
    monkeypatch.setenv("MAPSTREAM_TEST_TOKEN", "rotated")
    rec = Recorder()
    layer = await build_layer(spec, rec)
    assert (
        isinstance(layer, FeatureLayer)
        and layer.collection == "points"
        and layer.url == "https://f.test/api"
        and layer.limit == 250
    )
    assert rec.limits == {"f.test": 3}
    assert rec.headers == {"https://f.test/api/": {"Authorization": "Bearer rotated"}}
    monkeypatch.delenv("MAPSTREAM_TEST_TOKEN")
    with pytest.raises(CatalogError, match="MAPSTREAM_TEST_TOKEN is not set"):
        await build_layer(spec, rec)


# ------------------------------------------------------------------ shipped example catalogs


@pytest.mark.parametrize("path", sorted(CATALOG_DIR.glob("*.yml")), ids=lambda p: p.name)
def test_every_shipped_catalog_validates(path):
    catalog = load_catalog(path)
    assert isinstance(catalog, Catalog) and catalog.layers


async def test_public_catalog_builds_without_contacting_anything():
    catalog = load_catalog(CATALOG_DIR / "osm.yml")
    assert not catalog.uses_demo
    kinds = {s.kind for s in catalog.layers}
    assert kinds == {"tiles", "wms", "features"}
    rec = Recorder()
    built = {s.name: await build_layer(s, rec) for s in catalog.layers}
    osm = built["osm"]
    assert isinstance(osm, TileLayer) and "tile.openstreetmap.org" in osm.url_template
    # OSM's usage policy: at most 2 connections (our User-Agent is the fetcher's default).
    assert rec.limits["tile.openstreetmap.org"] == 2
    assert isinstance(built["terrestris"], WMSLayer)
    assert all(isinstance(built[n], FeatureLayer) for n in ("lakes", "obs"))
    assert all(n <= 2 for n in rec.limits.values())


# ------------------------------------------------------------------ hostile catalogs (issue 17)


@pytest.mark.parametrize(
    "text",
    [
        "layers: " + "[" * 10_000 + "]" * 10_000 + "\n",  # flow style, 10 000 levels
        "layers:\n" + "".join("  " * i + "- \n" for i in range(1, 200)),  # block style
        "title: x\nlayers: [{name: a, kind: tiles, url: 'https://t.test/{z}/{x}/{y}.png', "
        "style: " + "{a: " * 5000 + "1" + "}" * 5000 + "}]\n",  # deep inside a layer
    ],
    ids=["flow", "block", "in-a-layer"],
)
def test_a_deeply_nested_catalog_is_refused_before_it_is_built(tmp_path, text):
    path = tmp_path / "deep.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CatalogError, match="nested deeper than 32 levels") as info:
        load_catalog(path)
    assert str(path) in str(info.value)


def test_a_deeply_nested_toml_catalog_is_refused(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(CatalogError, match="nested deeper than"):
        load_catalog(path)
    path.write_text("x = " + "[" * 40 + "]" * 40 + "\n", encoding="utf-8")  # parses; too deep
    with pytest.raises(CatalogError, match="nested deeper than"):
        load_catalog(path)


def test_a_huge_catalog_is_refused_by_its_size_without_parsing_it(tmp_path):
    from mapstream.layers.catalog import MAX_CATALOG_BYTES

    path = tmp_path / "big.yml"
    line = "  - {name: osm%d, kind: tiles, url: 'https://t.test/{z}/{x}/{y}.png'}\n"
    with path.open("w", encoding="utf-8") as fh:
        fh.write("layers:\n")
        i = 0
        while fh.tell() <= 100 * 2**20:  # the 100 MB
            fh.write("".join(line % (i + j) for j in range(1000)))
            i += 1000
    with pytest.raises(CatalogError, match="larger than 2 MiB") as info:
        load_catalog(path)
    assert str(path) in str(info.value)
    # the limit is on bytes, so a catalog just under it still loads
    small = tmp_path / "small.yml"
    small.write_text("layers:\n" + line % 0 + "#" * (MAX_CATALOG_BYTES - 200) + "\n", encoding="utf-8")
    assert load_catalog(small).names == ["osm0"]


def test_an_endless_catalog_file_is_refused(tmp_path):
    path = tmp_path / "zero.yml"
    path.symlink_to("/dev/zero")  # never ends: only the bounded read can answer
    with pytest.raises(CatalogError, match="larger than|cannot read"):
        load_catalog(path)


@pytest.mark.parametrize("value", ["abc\r\nHost: evil.test", "abc\nX-Injected: 1", "abc\revil"])
def test_a_header_from_the_environment_with_a_line_break_is_refused(tmp_path, monkeypatch, value):
    monkeypatch.setenv("MAPSTREAM_TEST_KEY", value)
    layer = {**TILES, "headers": {"X-Api-Key": "${MAPSTREAM_TEST_KEY}"}}
    with pytest.raises(CatalogError) as info:
        load_catalog(write(tmp_path, [layer]))
    message = str(info.value)
    assert "layer 'base'" in message and "'X-Api-Key'" in message and "line break" in message
    assert "${MAPSTREAM_TEST_KEY}" in message and "evil" not in message and "abc" not in message


def test_a_literal_header_with_a_nul_is_refused(tmp_path):
    path = tmp_path / "nul.yml"
    path.write_text('layers:\n  - {name: t, kind: tiles, url: "https://t.test/{z}/{x}/{y}.png", '
                    'headers: {X-Key: "a\\0b"}}\n', encoding="utf-8")
    with pytest.raises(CatalogError, match="'X-Key' contains a line break or NUL"):
        load_catalog(path)


async def test_a_header_that_turns_bad_after_loading_is_refused_when_built(monkeypatch):
    monkeypatch.setenv("MAPSTREAM_TEST_KEY", "fine")
    spec = LayerSpec(**{**TILES, "headers": {"X-Api-Key": "${MAPSTREAM_TEST_KEY}"}})
    monkeypatch.setenv("MAPSTREAM_TEST_KEY", "rotated\r\nHost: evil.test")
    with pytest.raises(CatalogError, match="line break"):
        await build_layer(spec, Recorder())


def test_the_cli_refuses_a_header_with_a_line_break_without_a_traceback(tmp_path):
    from tests.support.cli import cli_env, one_line_error, run_mapstream, write_catalog

    catalog = write_catalog(
        tmp_path / "bad.yml", [{**TILES, "headers": {"X-Api-Key": "${MAPSTREAM_TEST_KEY}"}}]
    )
    env = cli_env(tmp_path / "cache", MAPSTREAM_TEST_KEY="abc\r\nHost: evil.test")
    result = run_mapstream(["check", "--catalog", str(catalog)], env=env, timeout=60)
    assert result.returncode != 0
    line = one_line_error(result.stderr)  # asserts there is no traceback
    assert "line break" in line and "X-Api-Key" in line and "evil" not in result.stderr + result.stdout


async def test_allow_private_redirects_is_applied_to_the_layers_prefixes():
    from mapstream.layers.http.redirects import RedirectGuard

    class WithGuard(Recorder):
        redirects = RedirectGuard()

    rec = WithGuard()
    await build_layer(LayerSpec(**{**TILES, "url": "https://intra.test/{z}/{x}/{y}.png",
                                   "allow_private_redirects": True}), rec)
    await build_layer(LayerSpec(**{**TILES, "name": "other"}), rec)
    assert rec.redirects.allows("https://intra.test/3/1/2.png")
    assert not rec.redirects.allows("https://t.test/3/1/2.png")


def test_the_cli_refuses_a_deep_catalog_in_one_line(tmp_path):
    from tests.support.cli import cli_env, one_line_error, run_mapstream

    catalog = tmp_path / "deep.yml"
    catalog.write_text("layers: " + "[" * 10_000 + "]" * 10_000 + "\n", encoding="utf-8")
    result = run_mapstream(["check", "--catalog", str(catalog)], env=cli_env(tmp_path / "cache"), timeout=60)
    assert result.returncode != 0
    assert "nested deeper than 32 levels" in one_line_error(result.stderr)  # no RecursionError
