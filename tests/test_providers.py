"""Tests for pixeldino.providers: presets, credentials from the environment, signing, server capabilities."""

from __future__ import annotations

import pytest

from pixeldino.errors import ConfigError
from pixeldino.providers import (
    PROVIDERS,
    Provider,
    StacParams,
    cql2_filter,
    infer_provider,
    resolve_provider,
    server_capabilities,
)


def resolve(provider: str | None = None, catalog: str | None = None, collection: str | None = None) -> Provider:
    """The provider of these ``stac`` settings."""
    return resolve_provider(StacParams(provider=provider, catalog=catalog, collection=collection))


def test_presets_resolve_endpoint_and_collection() -> None:
    es = resolve("earth-search")
    assert es.catalog == "https://earth-search.aws.element84.com/v1" and es.collection == "sentinel-2-l2a"
    assert es.is_api and es.tile_value("08WMA") == "MGRS-08WMA"
    pc = resolve("planetary-computer", collection="sentinel-2-l2a")
    assert pc.catalog.startswith("https://planetarycomputer.microsoft.com") and pc.tile_value("08WMA") == "08WMA"
    assert pc.tile_property == "s2:mgrs_tile" and pc.sign_assets
    assert resolve("cdse", collection="sentinel-2-l1c").collection == "sentinel-2-l1c"
    # presets ignore a catalog value (the schema's default demo path must not leak into them)
    assert resolve("earth-search", catalog="resources/demo/stac/catalog.json").is_api


def test_local_and_custom() -> None:
    local = resolve_provider(StacParams(catalog="resources/demo/stac/catalog.json"))  # a path: local
    assert local.name == "local" and not local.is_api and local.collection is None
    with pytest.raises(ConfigError, match="'local' needs stac.catalog"):  # no hidden default catalog
        resolve("local")
    custom = resolve("custom", "http://127.0.0.1:1/stac/", "sentinel-2-l2a")
    assert custom.catalog == "http://127.0.0.1:1/stac"
    assert infer_provider("http://x") == "custom" and infer_provider("cat.json") == "local"
    assert infer_provider(None) == "earth-search"
    with pytest.raises(ConfigError, match="needs stac.collection"):
        resolve("custom", "http://127.0.0.1:1/stac")
    with pytest.raises(ConfigError, match="STAC API URL"):
        resolve("custom", "catalog.json", "x")
    with pytest.raises(ConfigError, match="set stac.provider to 'custom'"):
        resolve("local", "https://example.org/stac")
    with pytest.raises(ConfigError, match="is not one of"):
        StacParams(provider="sentinel-hub")
    assert PROVIDERS == ("local", "earth-search", "planetary-computer", "cdse", "custom")
    assert resolve(catalog=None).name == "earth-search"  # nothing given: the recommended preset


def test_cdse_credentials_come_from_the_environment_only() -> None:
    cdse = resolve("cdse")
    with pytest.raises(ConfigError) as err:
        cdse.gdal_options({})
    msg = str(err.value)
    assert "CDSE_S3_ACCESS_KEY" in msg and "CDSE_S3_SECRET_KEY" in msg and "\n" not in msg
    opts = cdse.gdal_options({"CDSE_S3_ACCESS_KEY": "k3y", "CDSE_S3_SECRET_KEY": "s3cret"})
    assert opts["AWS_ACCESS_KEY_ID"] == "k3y" and opts["AWS_S3_ENDPOINT"] == "eodata.dataspace.copernicus.eu"
    # what goes into manifests and sidecars never holds them
    assert "k3y" not in repr(cdse.describe()) and "s3cret" not in repr(cdse.describe())
    assert resolve("earth-search").gdal_options({}) == {}


def test_planetary_computer_signs_only_blob_urls() -> None:
    pc = resolve("planetary-computer")
    href = "http://127.0.0.1:9/S2/B04.tif"
    assert pc.sign_href(href) == href  # not Azure blob storage: no token, no network
    assert resolve("earth-search").sign_href(href) == href


def test_server_capabilities_from_conformance() -> None:
    rustac_like = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search"]
    assert server_capabilities(rustac_like) == {"filter": False, "query": False}
    earth_search_like = rustac_like + [
        "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
        "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
        "https://api.stacspec.org/v1.0.0/item-search#query",
    ]
    assert server_capabilities(earth_search_like) == {"filter": True, "query": True}
    ogc_filter_without_json = rustac_like + ["http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter"]
    assert server_capabilities(ogc_filter_without_json)["filter"] is False


def test_cql2_filter() -> None:
    assert cql2_filter(max_cloud_cover=100, max_snow_cover=100) is None
    assert cql2_filter(max_cloud_cover=20) == {"op": "<=", "args": [{"property": "eo:cloud_cover"}, 20.0]}
    f = cql2_filter(max_cloud_cover=20, max_snow_cover=5, tile_property="grid:code", tile_values=["MGRS-08WMA"])
    assert f["op"] == "and" and len(f["args"]) == 3
    assert f["args"][2] == {"op": "in", "args": [{"property": "grid:code"}, ["MGRS-08WMA"]]}
