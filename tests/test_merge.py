"""Arctic merge: detections from overlapping tiles in different UTM zones become one slump with provenance."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from affine import Affine
from pyproj import Transformer
from rasterfiles import write_probability_raster
from rasterio.features import rasterize
from shapely.geometry import box
from shapely.ops import transform

from pixeldino.merge import MERGED_SCHEMA, MergeParams, run_merge
from pixeldino.polygonize import PolygonizeParams, run_polygonize

# The UTM 8N / 9N boundary is at 132 W. A slump of ~300 m x 200 m just east of it, seen from both zones.
SLUMP_LONLAT = box(-131.998, 69.000, -131.9905, 69.0018)
OTHER_LONLAT = box(-132.030, 69.010, -132.025, 69.012)  # only in the zone-8 scene, far from the first


def scene_gpkg(tmp_path: Path, epsg: int, scene_id: str, tile: str, date: str, slumps: list) -> Path:
    to_utm = Transformer.from_crs(4326, epsg, always_xy=True).transform
    utm = [transform(to_utm, s) for s in slumps]
    cx, cy = utm[0].centroid.x, utm[0].centroid.y
    x0, y0 = round(cx / 10) * 10 - 2500, round(cy / 10) * 10 + 1500
    grid = Affine(10.0, 0.0, x0, 0.0, -10.0, y0)
    dn = rasterize([(g, 220) for g in utm], out_shape=(300, 500), transform=grid, fill=0, dtype="uint8")
    tags = {"SCENE_ID": scene_id, "TILE": tile, "DATETIME": date, "THRESHOLD": "0.5", "MODEL": "m1"}
    prob = write_probability_raster(tmp_path / f"{scene_id}.tif", dn, transform=grid, crs=f"EPSG:{epsg}", tags=tags)
    return _polygonize(prob, tmp_path / f"{scene_id}.gpkg")


def _polygonize(prob: Path, out: Path) -> Path:
    run_polygonize(PolygonizeParams(min_area_m2=0), prob, out)
    return out


@pytest.fixture
def two_zones(tmp_path: Path) -> list[Path]:
    a = scene_gpkg(
        tmp_path, 32608, "S2A_20230701_T08WNA", "08WNA", "2023-07-01T20:11:29Z", [SLUMP_LONLAT, OTHER_LONLAT]
    )
    b = scene_gpkg(tmp_path, 32609, "S2B_20230815_T09WMA", "09WMA", "2023-08-15T20:21:19Z", [SLUMP_LONLAT])
    return [a, b]


def test_same_slump_in_two_utm_zones_is_one_polygon(tmp_path: Path, two_zones: list[Path]) -> None:
    assert pyogrio.read_info(two_zones[0], layer="rts")["crs"] == "EPSG:32608"
    assert pyogrio.read_info(two_zones[1], layer="rts")["crs"] == "EPSG:32609"
    merged = run_merge(MergeParams(), two_zones, tmp_path / "merged.gpkg", tmp_path / "merged.parquet")
    assert len(merged) == 2
    slump = merged[merged.n_detections == 2].iloc[0]
    assert slump.scenes == "S2A_20230701_T08WNA,S2B_20230815_T09WMA"
    assert slump.tiles == "08WNA,09WMA"
    assert slump.first_date == "2023-07-01" and slump.last_date == "2023-08-15"
    assert slump.n_scenes == 2 and slump.prob_max == pytest.approx(220 / 254)
    true_area = gpd.GeoSeries([SLUMP_LONLAT], crs=4326).to_crs(6931).area.iloc[0]
    assert slump.area_m2 == pytest.approx(true_area, rel=0.08)  # union of two 10 m rasterisations
    # EPSG:3413 is conformal: the geodesic area it reports equals the planar area in equal-area EPSG:6931
    ease = run_merge(MergeParams(crs="EPSG:6931"), two_zones, tmp_path / "ease.gpkg")
    ease_slump = ease[ease.n_detections == 2].iloc[0]
    assert slump.area_m2 == pytest.approx(ease_slump.geometry.area, rel=1e-6)
    assert ease_slump.area_m2 == pytest.approx(ease_slump.geometry.area)
    other = merged[merged.n_detections == 1].iloc[0]
    assert other.scenes == "S2A_20230701_T08WNA" and other.first_date == other.last_date == "2023-07-01"

    back = gpd.read_file(tmp_path / "merged.gpkg", layer="rts")
    assert back.crs.to_epsg() == 3413 and list(back.columns) == [*MERGED_SCHEMA, "geometry"]
    assert back.geometry.is_valid.all()
    parquet = gpd.read_parquet(tmp_path / "merged.parquet")
    assert list(parquet.rts_id) == list(back.rts_id)


def test_ids_are_stable_across_reruns_and_input_order(tmp_path: Path, two_zones: list[Path]) -> None:
    first = run_merge(MergeParams(), two_zones, tmp_path / "a.gpkg")
    second = run_merge(MergeParams(), list(reversed(two_zones)), tmp_path / "b.gpkg")
    assert list(first.rts_id) == list(second.rts_id)
    assert all(rid.startswith("RTS_") for rid in first.rts_id)
    point = first.geometry.representative_point().iloc[0]
    x_km, y_km = (float(v) for v in first.rts_id.iloc[0].split("_")[1:3])
    assert abs(x_km - point.x / 1000) <= 0.005 and abs(y_km - point.y / 1000) <= 0.005
    assert first.geometry.iloc[0].equals(second.geometry.iloc[0])


def test_non_overlapping_detections_stay_separate_and_chains_join(tmp_path: Path) -> None:
    def layer(name: str, geoms: list, epsg: int = 32608) -> Path:
        gdf = gpd.GeoDataFrame(
            {
                "scene_id": [name] * len(geoms),
                "tile": ["08WNA"] * len(geoms),
                "datetime": ["2022-07-03T20:00:00Z"] * len(geoms),
                "prob_max": [0.9] * len(geoms),
                "touches_nodata": [False] * len(geoms),
            },
            geometry=geoms,
            crs=f"EPSG:{epsg}",
        )
        path = tmp_path / f"{name}.gpkg"
        gdf.to_file(path, layer="rts")
        return path

    a = layer(
        "A",
        [box(0, 0, 100, 100), box(1000, 0, 1100, 100)],
    )
    b = layer("B", [box(90, 0, 190, 100), box(5000, 0, 5100, 100)])
    c = layer("C", [box(180, 0, 280, 100)])  # overlaps B's first box only: A-B-C is one chain
    out = run_merge(MergeParams(crs="EPSG:32608", geometry="union"), [a, b, c], tmp_path / "m.gpkg")
    assert sorted(out.n_detections) == [1, 1, 3]
    chain = out[out.n_detections == 3].iloc[0]
    assert chain.scenes == "A,B,C"
    assert chain.geometry.area == pytest.approx(280 * 100)
    # best-detection rule: a 10 % overlap is not the same slump, so all five stay
    best = run_merge(MergeParams(crs="EPSG:32608"), [a, b, c], tmp_path / "b.gpkg")
    assert sorted(best.n_detections) == [1, 1, 1, 1, 1]
    # ... but a detection covering 80 % of another is a duplicate: one slump, the better-ranked outline
    d = layer("D", [box(20, 0, 120, 100)])
    dup = run_merge(MergeParams(crs="EPSG:32608"), [a, d], tmp_path / "d.gpkg")
    assert sorted(dup.n_detections) == [1, 2]
    assert dup[dup.n_detections == 2].iloc[0].geometry.area == pytest.approx(100 * 100)
    prov = gpd.read_file(tmp_path / "d.gpkg", layer="rts_detections")
    assert len(prov) == 3 and prov.chosen.sum() == 2  # every detection is kept as provenance


def _ellipse(x: float, y: float, rx: float, ry: float, angle: float):
    from shapely import affinity
    from shapely.geometry import Point

    return affinity.rotate(affinity.scale(Point(x, y).buffer(1.0, 64), rx, ry), angle)


def test_two_utm_grids_merge_without_inflation(tmp_path: Path) -> None:
    """Issue 11: the same slumps rasterised on two grids in different UTM zones merge to one grid's area (1 %)."""
    rng = np.random.default_rng(4)
    to_lonlat = Transformer.from_crs(32609, 4326, always_xy=True).transform
    # 40 slumps of 40-150 m radius just east of the 8N/9N boundary (132 W), described in UTM 9N then in lon/lat
    x0, y0 = 413_000.0, 7_655_000.0
    local = [
        _ellipse(
            x0 + rng.uniform(0, 4000),
            y0 + rng.uniform(0, 2500),
            rng.uniform(40, 150),
            rng.uniform(40, 150),
            rng.uniform(0, 180),
        )
        for _ in range(40)
    ]
    local = [s for k, s in enumerate(local) if not any(s.distance(t) < 50 for t in local[:k])]
    slumps = [transform(to_lonlat, s) for s in local]
    assert len(slumps) >= 20
    files = []
    for epsg, name, tile in ((32608, "S2A_20230701_T08WNA", "08WNA"), (32609, "S2B_20230702_T09WMA", "09WMA")):
        to_utm = Transformer.from_crs(4326, epsg, always_xy=True).transform
        utm = [transform(to_utm, s) for s in slumps]
        xmin, ymin, xmax, ymax = gpd.GeoSeries(utm).total_bounds
        grid = Affine(
            10.0,
            0.0,
            np.floor(xmin / 10) * 10 - 300 + (3.7 if epsg == 32609 else 0),
            0.0,
            -10.0,
            np.ceil(ymax / 10) * 10 + 300,
        )
        shape = (int((ymax - ymin) / 10) + 60, int((xmax - xmin) / 10) + 60)
        dn = rasterize([(g, 220) for g in utm], out_shape=shape, transform=grid, fill=0, dtype="uint8")
        tags = {"SCENE_ID": name, "TILE": tile, "DATETIME": "2023-07-01T20:00:00Z", "THRESHOLD": "0.5"}
        prob = write_probability_raster(
            tmp_path / f"{name}.tif", dn, transform=grid, crs=f"EPSG:{epsg}", tags=tags, blockxsize=256, blockysize=256
        )
        files.append(_polygonize(prob, tmp_path / f"{name}.gpkg"))
    one_grid = run_merge(MergeParams(), files[:1], tmp_path / "one.gpkg")
    merged = run_merge(MergeParams(), files, tmp_path / "both.gpkg")
    assert len(merged) == len(one_grid) == len(slumps)
    assert (merged.n_detections == 2).all()
    assert merged.area_m2.sum() == pytest.approx(one_grid.area_m2.sum(), rel=0.01)
    # per slump, the merged outline is one of its two detections: within 1 % of that grid's area
    other_grid = run_merge(MergeParams(), files[1:], tmp_path / "other.gpkg")
    for _, slump in merged.iterrows():
        areas = [g.area_m2[g.intersects(slump.geometry)].iloc[0] for g in (one_grid, other_grid)]
        assert min(abs(slump.area_m2 / a - 1) for a in areas) < 0.01
    union = run_merge(MergeParams(geometry="union"), files, tmp_path / "union.gpkg")
    assert union.area_m2.sum() > 1.01 * one_grid.area_m2.sum()  # the union inflates: what the rule avoids


def test_empty_inputs_give_valid_empty_layer(tmp_path: Path) -> None:
    from pixeldino.errors import InputError

    # no input at all is a mistake (a map of nothing would look like a map without slumps) ...
    with pytest.raises(InputError, match="empty.gpkg: no polygon files to merge"):
        run_merge(MergeParams(), [], tmp_path / "empty.gpkg")
    assert not (tmp_path / "empty.gpkg").exists()
    # ... but a scene without detections is a valid input, and gives a valid empty layer
    dn = np.zeros((40, 40), np.uint8)
    prob = write_probability_raster(
        tmp_path / "p.tif", dn, transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 7600000.0)
    )
    scene = _polygonize(prob, tmp_path / "scene.gpkg")
    assert len(run_merge(MergeParams(), [scene], tmp_path / "m.gpkg")) == 0
    info = pyogrio.read_info(tmp_path / "m.gpkg", layer="rts")
    assert info["features"] == 0 and info["crs"] == "EPSG:3413" and list(info["fields"]) == list(MERGED_SCHEMA)


def test_input_without_the_rts_layer_names_its_layers(tmp_path: Path) -> None:
    from pixeldino.errors import InputError

    other = tmp_path / "other.gpkg"
    gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:32608").to_file(other, layer="slumps")
    with pytest.raises(InputError, match=r"other\.gpkg: no layer 'rts' \(it has slumps\); give the GeoPackage"):
        run_merge(MergeParams(), [other], tmp_path / "m.gpkg")
    assert not (tmp_path / "m.gpkg").exists()


def test_missing_input_is_input_error(tmp_path: Path) -> None:
    from pixeldino.errors import InputError

    with pytest.raises(InputError, match="nope.gpkg"):
        run_merge(MergeParams(), [tmp_path / "nope.gpkg"], tmp_path / "m.gpkg")
    assert not (tmp_path / "m.gpkg").exists()
