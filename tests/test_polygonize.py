"""Polygonisation: exact areas and statistics, thresholds, minimum area, empty output, seams, QGIS style."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from rasterfiles import write_probability_raster

from pixeldino.polygonize import SCHEMA, PolygonizeParams, run_polygonize

ORIGIN = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 7600000.0)  # 10 m pixels, UTM 8N


def write_prob(path: Path, dn: np.ndarray, *, threshold: str | None = "0.5", tags: dict | None = None) -> Path:
    all_tags = {"SCENE_ID": "S2B_X", "TILE": "08WMC", "DATETIME": "2022-08-02T20:11:29Z", "MODEL": "abc123def456"}
    if threshold is not None:
        all_tags["THRESHOLD"] = threshold
    return write_probability_raster(path, dn, transform=ORIGIN, tags={**all_tags, **(tags or {})})


def test_known_squares_exact_area_pixels_and_probabilities(tmp_path: Path) -> None:
    dn = np.zeros((100, 120), np.uint8)
    dn[10:20, 10:20] = 200  # 10 x 10 px = 10 000 m2
    dn[10, 10] = 254
    dn[50:70, 60:90] = 127  # 20 x 30 px = 60 000 m2, p = 0.5 exactly (>= threshold)
    dn[90:100, 0:5] = 180  # touches the scene edge
    dn[40:44, 100:104] = 160  # next to nodata
    dn[40:44, 104:110] = 255
    prob = write_prob(tmp_path / "p.tif", dn)
    gdf = run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "rts.gpkg", attributes={"region": "test"})
    assert len(gdf) == 4
    by_pixels = gdf.set_index("n_pixels")
    sq = by_pixels.loc[100]
    assert sq.area_m2 == pytest.approx(10_000.0)
    assert sq.perimeter_m == pytest.approx(400.0)
    assert sq.prob_max == pytest.approx(1.0)
    assert sq.prob_mean == pytest.approx((99 * 200 + 254) / 100 / 254)
    assert not sq.touches_nodata
    rect = by_pixels.loc[600]
    assert rect.area_m2 == pytest.approx(60_000.0) and rect.prob_max == pytest.approx(0.5)
    assert by_pixels.loc[50].touches_nodata and by_pixels.loc[16].touches_nodata
    assert set(gdf.scene_id) == {"S2B_X"} and set(gdf.tile) == {"08WMC"} and set(gdf.region) == {"test"}
    assert set(gdf.model) == {"abc123def456"} and set(gdf.threshold) == {0.5}
    assert list(gdf.id) == [1, 2, 3, 4]
    assert gdf.geometry.is_valid.all()

    back = gpd.read_file(tmp_path / "rts.gpkg", layer="rts")
    assert back.crs.to_epsg() == 32608
    assert list(back.columns) == [*SCHEMA, "region", "geometry"]
    assert back.area.sum() == pytest.approx(10_000 + 60_000 + 5_000 + 1_600)
    assert back.touches_nodata.dtype == bool


def test_threshold_tag_explicit_threshold_and_min_area(tmp_path: Path) -> None:
    dn = np.zeros((60, 60), np.uint8)
    dn[5:15, 5:15] = 200  # p = 0.787
    dn[30:33, 30:33] = 120  # p = 0.472, 9 px = 900 m2
    prob = write_prob(tmp_path / "p.tif", dn, threshold="0.4")
    assert len(run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "a.gpkg")) == 2  # tag threshold 0.4
    assert len(run_polygonize(PolygonizeParams(min_area_m2=0, threshold=0.6), prob, tmp_path / "b.gpkg")) == 1
    kept = run_polygonize(PolygonizeParams(min_area_m2=1000), prob, tmp_path / "c.gpkg")
    assert list(kept.n_pixels) == [100]
    assert kept.threshold.iloc[0] == pytest.approx(0.4)


def test_default_threshold_without_tag_and_opening(tmp_path: Path) -> None:
    dn = np.zeros((60, 60), np.uint8)
    dn[5:25, 5:25] = 140
    dn[24, 25:40] = 140  # a one-pixel spur that an opening removes
    prob = write_prob(tmp_path / "p.tif", dn, threshold=None)
    plain = run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "a.gpkg")
    assert plain.threshold.iloc[0] == 0.5 and plain.n_pixels.iloc[0] == 415
    opened = run_polygonize(PolygonizeParams(min_area_m2=0, opening_radius=1), prob, tmp_path / "b.gpkg")
    assert opened.n_pixels.iloc[0] == 396  # the spur and the four square corners (radius-1 disk = cross)


def test_empty_prediction_writes_valid_empty_layer(tmp_path: Path) -> None:
    prob = write_prob(tmp_path / "p.tif", np.full((50, 50), 10, np.uint8))
    gdf = run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "rts.gpkg")
    assert len(gdf) == 0
    info = pyogrio.read_info(tmp_path / "rts.gpkg", layer="rts")
    assert info["features"] == 0 and info["geometry_type"] == "MultiPolygon"
    assert list(info["fields"]) == list(SCHEMA)
    back = gpd.read_file(tmp_path / "rts.gpkg", layer="rts")
    assert back.crs.to_epsg() == 32608


def test_slump_across_internal_tiles_is_one_polygon_and_diagonal_touch_joins(tmp_path: Path) -> None:
    dn = np.zeros((1100, 1100), np.uint8)
    dn[500:530, 490:540] = 220  # crosses the 512 px internal tile boundary in both directions
    dn[600:610, 600:610] = 220
    dn[610:620, 610:620] = 220  # touches the previous block only at a corner: same 8-connected object
    prob = write_prob(tmp_path / "p.tif", dn)
    gdf = run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "rts.gpkg")
    assert len(gdf) == 2
    big = gdf[gdf.n_pixels == 1500].iloc[0]
    assert big.area_m2 == pytest.approx(150_000.0)
    pair = gdf[gdf.n_pixels == 200].iloc[0]
    assert len(pair.geometry.geoms) == 2 and pair.geometry.is_valid


def test_qgis_style_is_embedded(tmp_path: Path) -> None:
    dn = np.zeros((30, 30), np.uint8)
    dn[5:10, 5:10] = 250
    run_polygonize(PolygonizeParams(min_area_m2=0), write_prob(tmp_path / "p.tif", dn), tmp_path / "rts.gpkg")
    with sqlite3.connect(tmp_path / "rts.gpkg") as con:
        row = con.execute("SELECT f_table_name, f_geometry_column, useAsDefault, styleQML FROM layer_styles").fetchone()
    assert row[:3] == ("rts", "geom", 1)
    assert 'name="outline_color" value="227,26,28,255"' in row[3] and 'name="style" value="no"' in row[3]
    layers = {name for name, _ in pyogrio.list_layers(tmp_path / "rts.gpkg")}
    assert layers == {"rts", "layer_styles"}


def test_missing_raster_is_input_error(tmp_path: Path) -> None:
    from pixeldino.errors import InputError

    with pytest.raises(InputError, match="not found"):
        run_polygonize(PolygonizeParams(min_area_m2=0), tmp_path / "nope.tif", tmp_path / "rts.gpkg")
    assert not (tmp_path / "rts.gpkg").exists()


def test_low_quality_fraction_from_the_quality_mask(tmp_path: Path) -> None:
    dn = np.zeros((40, 40), np.uint8)
    dn[10:20, 10:20] = 200  # a 10 x 10 object: its 8-connected one-pixel ring has 12 * 12 - 100 = 44 pixels
    dn[30:34, 30:34] = 200  # a second object with a clear surrounding
    prob = write_prob(tmp_path / "p.tif", dn)
    quality = np.zeros((40, 40), np.uint8)
    quality[9:21, 9] = 2  # cloud over the object's west ring column: 12 ring pixels
    mask_path = tmp_path / "mask.tif"
    with rasterio.open(prob) as src:
        profile = dict(src.profile, nodata=None)
    with rasterio.open(mask_path, "w", **profile) as dst:
        dst.write(quality, 1)
    gdf = run_polygonize(
        PolygonizeParams(min_area_m2=0), prob, tmp_path / "rts.gpkg", quality_mask=mask_path
    ).set_index("n_pixels")
    assert gdf.loc[100, "low_quality_fraction"] == pytest.approx(12 / 44)
    assert gdf.loc[16, "low_quality_fraction"] == 0.0
    without = run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "rts2.gpkg")
    assert without["low_quality_fraction"].isna().all()

    shifted = tmp_path / "shifted.tif"
    with rasterio.open(shifted, "w", **dict(profile, transform=ORIGIN * Affine.translation(1, 0))) as dst:
        dst.write(quality, 1)
    from pixeldino.errors import InputError

    with pytest.raises(InputError, match="not on the grid"):
        run_polygonize(PolygonizeParams(min_area_m2=0), prob, tmp_path / "rts3.gpkg", quality_mask=shifted)
