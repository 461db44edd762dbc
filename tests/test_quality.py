"""Quality policy: which SCL classes become nodata, what polygons record, and the permanent-water layer."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterfiles import write_geotiff, write_probability_raster
from rasterio.transform import from_origin
from shapely.geometry import box
from test_predict import H, W, make_model, scene_data, write_scene

from pixeldino import quality as q
from pixeldino.errors import ConfigError, InputError
from pixeldino.polygonize import PolygonizeParams, run_polygonize
from pixeldino.predict import PredictParams, predict_scene
from pixeldino.probability import NODATA_U8
from pixeldino.quality import WaterParams

FLOOR = (slice(40, 60), slice(40, 70))  # the slump floor the SCL calls water
CLOUD = (slice(100, 120), slice(20, 60))


def _mask(tmp_path: Path, scene: Path) -> Path:
    mask = np.zeros((H, W), np.uint8)
    mask[FLOOR] = q.WATER
    mask[CLOUD] = q.CLOUD
    mask[10:15, 100:110] = q.DARK_AREA
    path = tmp_path / "scene_mask.tif"
    with rasterio.open(scene) as src:
        profile = dict(src.profile, count=1, dtype="uint8", nodata=None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask, 1)
    return path


def test_scl_classes_map_to_distinct_mask_values() -> None:
    scl = np.arange(13, dtype=np.uint8)
    expected = [
        q.INVALID,
        q.INVALID,
        q.DARK_AREA,
        q.CLOUD_SHADOW,
        q.CLEAR,
        q.CLEAR,
        q.WATER,
        q.CLEAR,
        q.CLOUD,
        q.CLOUD,
        q.CIRRUS,
        q.SNOW,
        q.INVALID,
    ]
    assert list(q.scl_to_mask(scl)) == expected


def test_nodata_lookup_default_and_errors() -> None:
    table = q.nodata_lookup()
    assert [name for v, name in q.CLASS_NAMES.items() if table[v]] == ["invalid", "cloud", "cloud_shadow", "snow"]
    assert table[200]  # values without a class are never trusted
    assert q.nodata_lookup(["cloud", "water"])[q.WATER]
    with pytest.raises(ConfigError, match="unknown class.*'fog'"):
        q.nodata_lookup(["fog"])


def test_policy_keeps_a_slump_whose_floor_the_mask_calls_water(tmp_path: Path) -> None:
    data = scene_data()
    data[:] = np.maximum(data, 1)  # no nodata: every pixel is valid reflectance
    scene = write_scene(tmp_path / "scene.tif", data)
    mask = _mask(tmp_path, scene)
    model = make_model(tmp_path / "m.safetensors", constant_logit=4.0)  # every valid pixel is RTS
    predict_scene(PredictParams(device="cpu"), scene, model, tmp_path / "p.tif", quality_mask=mask)
    with rasterio.open(tmp_path / "p.tif") as src:
        prob = src.read(1)
    assert (prob[FLOOR] != NODATA_U8).all() and (prob[FLOOR] > 0.9 * 254).all()  # water: kept and predicted
    assert (prob[CLOUD] == NODATA_U8).all()  # cloud: nodata

    gdf = run_polygonize(PolygonizeParams(min_area_m2=0), tmp_path / "p.tif", tmp_path / "rts.gpkg", quality_mask=mask)
    big = gdf.loc[gdf.n_pixels.idxmax()]
    assert big.water_fraction == pytest.approx(20 * 30 / big.n_pixels)
    assert big.dark_area_fraction == pytest.approx(5 * 10 / big.n_pixels)
    assert big.cirrus_fraction == 0.0
    floor = box(500000 + 40 * 10, 7700000 - 60 * 10, 500000 + 70 * 10, 7700000 - 40 * 10)  # rows 40-60, cols 40-70
    assert gdf.geometry.contains(floor.buffer(-1)).any()  # the floor lies inside a polygon, not in a hole

    # the old behaviour, on request: water is nodata and the floor becomes a hole
    predict_scene(
        PredictParams(device="cpu"),
        scene,
        model,
        tmp_path / "p_old.tif",
        quality_mask=mask,
        nodata_classes=[*q.DEFAULT_NODATA_CLASSES, "water", "dark_area", "cirrus"],
    )
    with rasterio.open(tmp_path / "p_old.tif") as src:
        assert (src.read(1)[FLOOR] == NODATA_U8).all()


def _prob(tmp_path: Path) -> Path:
    dn = np.zeros((60, 60), np.uint8)
    dn[10:20, 10:20] = 220  # a detection that is a lake
    dn[35:50, 35:50] = 220  # a slump on land
    return write_probability_raster(tmp_path / "prob.tif", dn, transform=from_origin(500000, 7700000, 10, 10))


def test_permanent_water_vector_flags_or_drops(tmp_path: Path) -> None:
    prob = _prob(tmp_path)
    lake = gpd.GeoDataFrame(geometry=[box(500090, 7699790, 500210, 7699910)], crs=32608).to_crs(4326)
    lake.to_file(tmp_path / "water.gpkg")
    flagged = run_polygonize(
        PolygonizeParams(min_area_m2=0), prob, tmp_path / "a.gpkg", water=WaterParams(file=tmp_path / "water.gpkg")
    )
    assert sorted(flagged.in_permanent_water) == [False, True]
    assert sorted(flagged.permanent_water_fraction.round(3)) == [0.0, 1.0]
    dropped = run_polygonize(
        PolygonizeParams(min_area_m2=0),
        prob,
        tmp_path / "b.gpkg",
        water=WaterParams(file=tmp_path / "water.gpkg", action="drop"),
    )
    assert len(dropped) == 1 and dropped.iloc[0].n_pixels == 225
    with pytest.raises(ConfigError, match="action"):
        run_polygonize(
            PolygonizeParams(min_area_m2=0),
            prob,
            tmp_path / "c.gpkg",
            water=WaterParams(file=tmp_path / "water.gpkg", action="hide"),
        )


def test_permanent_water_occurrence_raster(tmp_path: Path) -> None:
    prob = _prob(tmp_path)
    occurrence = np.zeros((30, 30), np.uint8)  # a 20 m water-occurrence map (percent of time water)
    occurrence[5:10, 5:10] = 90  # the lake
    occurrence[17:25, 17:25] = 30  # seasonally wet ground under the slump: below the 50 % default
    write_geotiff(tmp_path / "occ.tif", occurrence, transform=from_origin(500000, 7700000, 20, 20))
    gdf = run_polygonize(
        PolygonizeParams(min_area_m2=0), prob, tmp_path / "a.gpkg", water=WaterParams(file=tmp_path / "occ.tif")
    )
    assert sorted(gdf.in_permanent_water) == [False, True]
    wet = run_polygonize(
        PolygonizeParams(min_area_m2=0),
        prob,
        tmp_path / "b.gpkg",
        water=WaterParams(file=tmp_path / "occ.tif", min_occurrence=25),
    )
    assert wet.in_permanent_water.all()


def _grid_raster(path: Path, transform: rasterio.Affine, shape: tuple[int, int] = (8, 8)) -> Path:
    return write_geotiff(path, np.zeros(shape, np.uint8), transform=transform)


def test_open_quality_mask_checks_the_grid_with_one_tolerance(tmp_path: Path) -> None:
    origin = rasterio.Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 7_700_000.0)
    grid = q.Grid(rasterio.crs.CRS.from_epsg(32608), origin, (8, 8))
    # write round-off far below a pixel is the same grid
    nearly = _grid_raster(tmp_path / "nearly.tif", origin * rasterio.Affine.translation(1e-8, 0))
    with q.open_quality_mask(nearly, grid, "scene.tif") as mask:
        assert mask.read(1).shape == (8, 8)
    shifted = _grid_raster(tmp_path / "shifted.tif", origin * rasterio.Affine.translation(1, 0))
    with pytest.raises(
        InputError,
        match=r"shifted\.tif: quality mask grid \(.*origin \(500010, 7700000\)\) is not "
        r"on the grid of scene\.tif \(.*origin \(500000, 7700000\)\); use the mask",
    ):
        with q.open_quality_mask(shifted, grid, "scene.tif"):
            pass
    smaller = _grid_raster(tmp_path / "smaller.tif", origin, (8, 7))
    with pytest.raises(InputError, match=r"7x8 px.*is not on the grid"):
        with q.open_quality_mask(smaller, grid, "scene.tif"):
            pass
    with pytest.raises(InputError, match=r"missing\.tif: quality mask not found"):
        with q.open_quality_mask(tmp_path / "missing.tif", grid, "scene.tif"):
            pass
    (tmp_path / "corrupt.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match=r"corrupt\.tif: cannot read the quality mask"):
        with q.open_quality_mask(tmp_path / "corrupt.tif", grid, "scene.tif"):
            pass
