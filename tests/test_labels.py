"""Tests for pixeldino.labels: reading, repairing, rasterising labels and expert agreement."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer
from shapely.geometry import LineString, Polygon, box

from pixeldino.errors import InputError
from pixeldino.labels import (
    IGNORE,
    clean_polygons,
    consensus_mask,
    expert_agreement,
    pixel_iou,
    rasterize_labels,
    read_labels,
)

DEMO = Path(__file__).resolve().parents[1] / "resources" / "demo"
# 10 x 10 grid of 10 m pixels, top-left corner at (0, 100) in a UTM-like CRS
TRANSFORM = Affine(10.0, 0.0, 0.0, 0.0, -10.0, 100.0)
SHAPE = (10, 10)


def test_rasterize_known_squares_by_pixel_centre() -> None:
    # x 2..38 and y 62..98 contain the centres x 5,15,25,35 and y 95,85,75,65: 4 x 4 pixels
    a = box(2, 62, 38, 98)
    # x 51..69 contains centres 55, 65; y 11..29 contains 15, 25: 2 x 2 pixels; it touches 3 x 3 pixels
    b = box(51, 11, 69, 29)
    gdf = gpd.GeoDataFrame(geometry=[a, b], crs="EPSG:32608")
    mask = rasterize_labels(gdf, TRANSFORM, SHAPE)
    assert mask.dtype == np.uint8
    assert int((mask == 1).sum()) == 16 + 4
    assert mask[0:4, 0:4].all() and mask[7:9, 5:7].all()
    assert set(np.unique(mask)) == {0, 1}


def test_ignore_outside_footprint_and_over_nodata() -> None:
    gdf = gpd.GeoDataFrame(geometry=[box(0, 80, 20, 100)], crs="EPSG:32608")  # top-left 2 x 2 pixels
    footprint = box(0, 0, 50, 100)  # left half of the grid
    nodata = np.zeros(SHAPE, dtype=bool)
    nodata[0, 1] = True
    mask = rasterize_labels(gdf, TRANSFORM, SHAPE, footprint=footprint, nodata_mask=nodata)
    assert int((mask == IGNORE).sum()) == 50 + 1
    assert (mask[:, 5:] == IGNORE).all()
    assert int((mask == 1).sum()) == 3  # 4 RTS pixels, one of them over nodata
    assert int((mask == 0).sum()) == 100 - 51 - 3
    custom = rasterize_labels(gdf, TRANSFORM, SHAPE, footprint=footprint, ignore_value=9)
    assert int((custom == 9).sum()) == 50


def test_read_labels_reprojects(tmp_path: Path) -> None:
    # a 200 m square in UTM 8N, stored in EPSG:4326 (densified so the edges stay straight in UTM)
    square = box(472_000, 7_548_000, 472_200, 7_548_200)
    to_wgs = Transformer.from_crs(32608, 4326, always_xy=True)
    dense = shapely.segmentize(square, 5.0)
    wgs = shapely.transform(dense, lambda xy: np.column_stack(to_wgs.transform(xy[:, 0], xy[:, 1])))
    path = tmp_path / "labels_wgs84.gpkg"
    gpd.GeoDataFrame({"id": [1]}, geometry=[wgs], crs="EPSG:4326").to_file(path, layer="rts")

    gdf = read_labels(path, "EPSG:32608")
    assert gdf.crs.to_epsg() == 32608
    assert gdf.geometry.iloc[0].area == pytest.approx(200 * 200, rel=1e-4)
    transform = Affine(10.0, 0.0, 471_900.0, 0.0, -10.0, 7_548_300.0)
    mask = rasterize_labels(gdf, transform, (40, 40))
    assert int((mask == 1).sum()) == 20 * 20


def test_bow_tie_is_repaired(tmp_path: Path) -> None:
    bow_tie = Polygon([(0, 0), (40, 40), (40, 0), (0, 40), (0, 0)])
    assert not bow_tie.is_valid
    path = tmp_path / "bowtie.gpkg"
    gpd.GeoDataFrame({"id": [1]}, geometry=[bow_tie], crs="EPSG:32608").to_file(path)
    gdf = read_labels(path, "EPSG:32608")
    geom = gdf.geometry.iloc[0]
    assert geom.is_valid and geom.geom_type == "MultiPolygon"
    assert geom.area == pytest.approx(2 * 0.5 * 40 * 20)  # two triangles of base 40 and height 20


def test_clean_polygons_drops_non_polygonal_parts() -> None:
    collection = shapely.GeometryCollection([box(0, 0, 10, 10), LineString([(20, 20), (30, 30)])])
    gdf = gpd.GeoDataFrame(
        {"id": [1, 2, 3]}, geometry=[collection, LineString([(0, 0), (1, 1)]), box(5, 5, 6, 6)], crs="EPSG:32608"
    )
    out = clean_polygons(gdf)
    assert list(out["id"]) == [1, 3]
    assert out.geometry.iloc[0].equals(box(0, 0, 10, 10))


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_read_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_labels(tmp_path / "missing.gpkg", "EPSG:32608")
    garbage = tmp_path / "garbage.gpkg"
    garbage.write_bytes(b"this is not a geopackage")
    with pytest.raises(InputError, match="cannot read label file"):
        read_labels(garbage, "EPSG:32608")
    no_crs = tmp_path / "no_crs.shp"
    gpd.GeoDataFrame({"id": [1]}, geometry=[box(0, 0, 1, 1)]).to_file(no_crs)
    with pytest.raises(InputError, match="has no CRS"):
        read_labels(no_crs, "EPSG:32608")


def test_consensus_and_agreement_on_toy_experts() -> None:
    full = box(0, 80, 30, 100)  # 3 x 2 pixels
    part = box(0, 80, 20, 100)  # 2 x 2 pixels
    experts = {"#01": [full], "#02": [part], "#03": [part], "#04": []}
    cons = consensus_mask(list(experts.values()), TRANSFORM, SHAPE, 0.5)
    assert int(cons.sum()) == 4  # 3 of 4 experts agree on the 2 x 2 part; the third column has 1 of 4
    ag = expert_agreement(experts, TRANSFORM, SHAPE)
    # #01 vs others' consensus (>= 1.5 of 3, i.e. 2: the 2 x 2 part) = 4 / 6
    assert ag["per_expert"]["#01"] == pytest.approx(4 / 6)
    assert ag["per_expert"]["#02"] == pytest.approx(1.0)
    assert ag["per_expert"]["#04"] == pytest.approx(0.0)
    assert ag["n_experts"] == 4
    assert pixel_iou(np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)) == 1.0


def _demo_experts(site: str) -> tuple[dict[str, gpd.GeoDataFrame], Affine, tuple[int, int], gpd.GeoDataFrame]:
    experts_all = gpd.read_file(DEMO / "labels" / f"experts_{site}.gpkg")
    experts = {name: g for name, g in experts_all.groupby("expert")}
    tile = {"peel": "S2_08WMA_20210821", "bykovsky": "S2_52WEE_20210721"}[site]
    item = json.loads((DEMO / "stac" / "sentinel-2-l1c" / tile / f"{tile}.json").read_text())
    transform = Affine(*item["properties"]["proj:transform"][:6])
    shape = tuple(item["properties"]["proj:shape"])
    aoi = read_labels(DEMO / "aoi" / f"{site}.geojson", experts_all.crs)
    return experts, transform, shape, aoi


@pytest.mark.skipif(not (DEMO / "labels").is_dir(), reason="resources/demo is not built")
@pytest.mark.parametrize(
    ("site", "n_experts", "mean", "lo", "hi"),
    [
        ("peel", 12, 0.67, 0.51, 0.80),
        ("bykovsky", 10, 0.28, 0.00, 0.73),
    ],
)
def test_expert_agreement_on_demo(site: str, n_experts: int, mean: float, lo: float, hi: float) -> None:
    experts, transform, shape, aoi = _demo_experts(site)
    ag = expert_agreement(experts, transform, shape, footprint=aoi)
    assert ag["n_experts"] == n_experts
    assert ag["mean"] == pytest.approx(mean, abs=0.03)
    assert ag["min"] == pytest.approx(lo, abs=0.01)
    assert ag["max"] == pytest.approx(hi, abs=0.01)


@pytest.mark.skipif(not (DEMO / "labels").is_dir(), reason="resources/demo is not built")
@pytest.mark.parametrize("site", ["peel", "bykovsky"])
def test_demo_consensus_file_matches_experts(site: str) -> None:
    experts, transform, shape, aoi = _demo_experts(site)
    cons = consensus_mask(list(experts.values()), transform, shape, 0.5, footprint=aoi)
    shipped = read_labels(DEMO / "labels" / f"{site}_consensus.gpkg", experts[next(iter(experts))].crs, layer="rts")
    assert set(shipped["n_experts"]) == {len(experts)}
    assert np.array_equal(rasterize_labels(shipped, transform, shape) == 1, cons)


def _write(path: Path, geoms: list, layer: str | None = None, crs: str = "EPSG:32608") -> Path:
    import pyogrio

    gdf = gpd.GeoDataFrame({"id": range(len(geoms))}, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
    pyogrio.write_dataframe(gdf, path, layer=layer, geometry_type=None if geoms else "Polygon")
    return path


def test_multi_layer_files_are_read_only_when_it_is_clear_which_layer(tmp_path: Path, caplog) -> None:
    from shapely.geometry import Point

    mixed = _write(tmp_path / "mixed.gpkg", [box(0, 0, 10, 10)], layer="rts")
    _write(mixed, [Point(5, 5)], layer="centres")
    with caplog.at_level("INFO", logger="pixeldino.labels"):
        gdf = read_labels(mixed, "EPSG:32608")
    assert len(gdf) == 1 and gdf.geometry.iloc[0].area == 100
    assert "reading layer 'rts', its only polygon layer (of rts, centres)" in caplog.text

    two = _write(tmp_path / "two.gpkg", [box(0, 0, 10, 10)], layer="rts")
    _write(two, [box(0, 0, 50, 50)], layer="footprint")
    with pytest.raises(InputError, match=r"two\.gpkg has 2 layers \(rts, footprint\) and it is not clear which"):
        read_labels(two, "EPSG:32608")
    assert read_labels(two, "EPSG:32608", layer="footprint").geometry.iloc[0].area == 2500
    with pytest.raises(InputError, match=r"has no layer 'slumps' \(it has rts, footprint\)"):
        read_labels(two, "EPSG:32608", layer="slumps")


def test_files_without_polygons_are_refused_when_polygons_are_required(tmp_path: Path, caplog) -> None:
    empty = _write(tmp_path / "empty.gpkg", [])
    assert len(read_labels(empty, "EPSG:32608")) == 0  # an empty set of labels is a valid value ...
    with pytest.raises(InputError, match=r"label file .*empty\.gpkg has no polygons \(it has no features\)"):
        read_labels(empty, "EPSG:32608", require_polygons=True)  # ... unless the caller needs polygons
    # zero-area rings collapse to lines when repaired, and lines are no labels
    flat = _write(tmp_path / "flat.gpkg", [Polygon([(0, 0), (5, 0), (10, 0), (0, 0)]), LineString([(0, 0), (1, 1)])])
    with caplog.at_level("WARNING", logger="pixeldino.labels"):
        with pytest.raises(InputError, match="none of its 2 features is a polygon with an area, even after repair"):
            read_labels(flat, "EPSG:32608", what="hold-out", require_polygons=True)
    assert "hold-out" in caplog.text and "2 of 2 features left out" in caplog.text


def test_repairs_are_reported_and_crs_none_keeps_the_files_crs(tmp_path: Path, caplog) -> None:
    bow_tie = Polygon([(0, 0), (40, 40), (40, 0), (0, 40), (0, 0)])
    path = _write(tmp_path / "bowtie.gpkg", [bow_tie, box(50, 50, 60, 60)], crs="EPSG:32652")
    with caplog.at_level("WARNING", logger="pixeldino.labels"):
        gdf = read_labels(path, None)
    assert gdf.crs.to_epsg() == 32652 and len(gdf) == 2
    assert "repaired 1 invalid geometries" in caplog.text and "left out" not in caplog.text
