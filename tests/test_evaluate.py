"""Evaluation: exact pixel IoU on hand-made masks, object matching, AOI, reprojection, quicklook and summary."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from rasterfiles import write_geotiff, write_probability_raster
from shapely.geometry import box

from pixeldino.errors import InputError
from pixeldino.evaluate import evaluate_site, evaluate_sites

X0, Y0 = 600000.0, 7600000.0
GRID = Affine(10.0, 0.0, X0, 0.0, -10.0, Y0)


def pixel_box(r0: int, c0: int, r1: int, c1: int):
    """Polygon exactly covering pixel rows r0..r1-1 and columns c0..c1-1 of GRID."""
    return box(X0 + 10 * c0, Y0 - 10 * r1, X0 + 10 * c1, Y0 - 10 * r0)


def write_prob(path: Path, dn: np.ndarray, threshold: str = "0.5") -> Path:
    return write_probability_raster(
        path, dn, transform=GRID, tags={"THRESHOLD": threshold, "MODEL": "abc", "SCENE_ID": "S2X"}
    )


def write_polygons(path: Path, geoms: list, crs: str = "EPSG:32608", to_crs: str | None = None) -> Path:
    gdf = gpd.GeoDataFrame({"name": [f"p{i}" for i in range(len(geoms))]}, geometry=geoms, crs=crs)
    if to_crs:
        gdf = gdf.to_crs(to_crs)
    gdf.to_file(path)
    return path


def test_half_shifted_square_has_iou_one_third(tmp_path: Path) -> None:
    dn = np.zeros((50, 50), np.uint8)
    dn[10:20, 15:25] = 200  # prediction: the label square shifted by 5 columns
    prob = write_prob(tmp_path / "p.tif", dn)
    labels = write_polygons(tmp_path / "l.gpkg", [pixel_box(10, 10, 20, 20)])
    r = evaluate_site(prob, labels, site="square")
    px = r["pixel"]
    assert (px["tp"], px["fp"], px["fn"], px["tn"]) == (50, 50, 50, 2500 - 150)
    assert px["iou"] == pytest.approx(50 / 150)
    assert px["precision"] == px["recall"] == pytest.approx(0.5) and px["f1"] == pytest.approx(0.5)
    assert px["label_positive_fraction"] == pytest.approx(100 / 2500)
    assert r["object"]["recall"] == 1.0 and r["object"]["precision"] == 1.0
    assert r["threshold"] == 0.5 and r["model"] == "abc"


def test_labels_in_other_crs_are_reprojected(tmp_path: Path) -> None:
    dn = np.zeros((50, 50), np.uint8)
    dn[10:20, 15:25] = 200
    prob = write_prob(tmp_path / "p.tif", dn)
    for epsg in ("EPSG:4326", "EPSG:3413"):
        labels = write_polygons(tmp_path / f"l{epsg[5:]}.geojson", [pixel_box(10, 10, 20, 20)], to_crs=epsg)
        assert gpd.read_file(labels).crs.to_string() == epsg
        px = evaluate_site(prob, labels, site="reprojected")["pixel"]
        assert (px["tp"], px["fp"], px["fn"]) == (50, 50, 50)


def test_object_recall_and_precision_known_case(tmp_path: Path) -> None:
    dn = np.zeros((100, 100), np.uint8)
    dn[10:14, 10:14] = 220  # overlaps label A by 4 px only: A is detected (overlap matching)
    dn[40:60, 40:60] = 220  # covers label B
    dn[80:90, 80:90] = 220  # false positive
    prob = write_prob(tmp_path / "p.tif", dn)
    labels = write_polygons(
        tmp_path / "l.gpkg",
        [pixel_box(12, 12, 22, 22), pixel_box(45, 45, 55, 55), pixel_box(5, 70, 15, 80)],  # C is missed
    )
    obj = evaluate_site(prob, labels, site="objects")["object"]
    assert (obj["n_label_objects"], obj["label_objects_detected"]) == (3, 2)
    assert (obj["n_pred_objects"], obj["pred_objects_matched"]) == (3, 2)
    assert obj["recall"] == pytest.approx(2 / 3) and obj["precision"] == pytest.approx(2 / 3)
    assert obj["f1"] == pytest.approx(2 / 3)


def test_aoi_and_nodata_restrict_evaluation(tmp_path: Path) -> None:
    dn = np.zeros((100, 100), np.uint8)
    dn[10:20, 10:20] = 200  # true positive inside the AOI
    dn[70:80, 70:80] = 200  # false positive outside the AOI: ignored
    dn[30:40, 0:50] = 255  # nodata strip inside the AOI: ignored even though labelled
    prob = write_prob(tmp_path / "p.tif", dn)
    labels = write_polygons(tmp_path / "l.gpkg", [pixel_box(10, 10, 20, 20), pixel_box(30, 20, 40, 30)])
    aoi = write_polygons(tmp_path / "aoi.gpkg", [pixel_box(0, 0, 50, 50)], to_crs="EPSG:4326")
    r = evaluate_site(prob, labels, aoi_path=aoi, site="aoi")
    px = r["pixel"]
    assert (px["tp"], px["fp"], px["fn"]) == (100, 0, 0) and px["iou"] == 1.0
    assert px["n_pixels"] == 2500 - 500
    assert r["object"]["n_label_objects"] == 1  # the label under nodata has no evaluated pixel
    whole = evaluate_site(prob, labels, site="whole")["pixel"]
    assert (whole["tp"], whole["fp"], whole["fn"]) == (100, 100, 0)


def test_quicklook_and_multi_site_summary(tmp_path: Path) -> None:
    dn = np.zeros((60, 80), np.uint8)
    dn[10:20, 15:25] = 200
    prob = write_prob(tmp_path / "p.tif", dn, threshold="0.3")
    image = tmp_path / "scene.tif"
    bands = np.random.default_rng(0).integers(200, 3000, (4, 60, 80)).astype(np.uint16)
    write_geotiff(image, bands, transform=GRID, nodata=0, descriptions=("B02", "B03", "B04", "B08"))
    labels = write_polygons(tmp_path / "l.gpkg", [pixel_box(10, 10, 20, 20)])
    sites = [
        {
            "prob_path": prob,
            "labels_path": labels,
            "site": "a",
            "image_path": image,
            "quicklook_png": tmp_path / "a.png",
        },
        {"prob_path": prob, "labels_path": labels, "site": "b", "threshold": 0.9, "quicklook_png": tmp_path / "b.png"},
    ]
    doc = evaluate_sites(sites, tmp_path / "metrics.json")
    for name in ("a.png", "b.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["sites"]["a"]["pixel"]["iou"] == pytest.approx(1 / 3)
    assert on_disk["sites"]["a"]["threshold"] == 0.3
    assert on_disk["sites"]["b"]["pixel"]["iou"] == 0.0 and on_disk["sites"]["b"]["pixel"]["precision"] is None
    pooled = on_disk["summary"]["pooled"]
    assert (pooled["tp"], pooled["fp"], pooled["fn"]) == (50, 50, 150) and pooled["iou"] == pytest.approx(50 / 250)
    assert on_disk["summary"]["mean_over_sites"]["iou"] == pytest.approx((1 / 3 + 0) / 2)
    assert [row["site"] for row in doc["summary"]["table"]] == ["a", "b"]


def test_missing_labels_is_input_error(tmp_path: Path) -> None:
    prob = write_prob(tmp_path / "p.tif", np.zeros((20, 20), np.uint8))
    with pytest.raises(InputError, match="missing.gpkg"):
        evaluate_site(prob, tmp_path / "missing.gpkg", site="x")


def test_labels_that_miss_the_evaluated_area_are_refused(tmp_path: Path) -> None:
    dn = np.zeros((50, 50), np.uint8)
    dn[:, 25:] = 255  # the right half has no data
    prob = write_prob(tmp_path / "p.tif", dn)
    far = write_polygons(tmp_path / "far.gpkg", [pixel_box(500, 500, 510, 510)])
    with pytest.raises(InputError, match=r"the 1 label polygons of .*far\.gpkg do not overlap prediction .*p\.tif;"):
        evaluate_site(prob, far, site="x")
    over_nodata = write_polygons(tmp_path / "nodata.gpkg", [pixel_box(10, 30, 20, 40), pixel_box(30, 30, 40, 40)])
    with pytest.raises(InputError, match=r"the 2 label polygons of .*nodata\.gpkg lie only where prediction .* has no"):
        evaluate_site(prob, over_nodata, site="x")
    # an AOI of two squares: the labels lie within its bounding box, on data, but outside both squares
    aoi = write_polygons(tmp_path / "aoi.gpkg", [pixel_box(0, 0, 10, 10), pixel_box(20, 20, 30, 24)])
    inside = write_polygons(tmp_path / "inside.gpkg", [pixel_box(20, 5, 30, 15)])
    with pytest.raises(InputError, match=r"lie only outside the AOI .*aoi\.gpkg or where prediction"):
        evaluate_site(prob, inside, aoi_path=aoi, site="x")
    corner = write_polygons(tmp_path / "corner.gpkg", [pixel_box(40, 0, 45, 5)])  # beyond the AOI's box
    with pytest.raises(InputError, match=r"corner\.gpkg do not overlap prediction .*p\.tif within the AOI"):
        evaluate_site(prob, corner, aoi_path=aoi, site="x")
    # labels on data give metrics (IoU 0 here: nothing predicted), not an error
    assert evaluate_site(prob, inside, site="x")["pixel"]["iou"] == 0.0


def test_empty_labels_or_aoi_are_refused(tmp_path: Path) -> None:
    import pyogrio

    prob = write_prob(tmp_path / "p.tif", np.zeros((20, 20), np.uint8))
    empty = tmp_path / "empty.gpkg"
    pyogrio.write_dataframe(
        gpd.GeoDataFrame(geometry=gpd.GeoSeries([], crs="EPSG:32608")), empty, geometry_type="Polygon"
    )
    with pytest.raises(InputError, match=r"label file .*empty\.gpkg has no polygons \(it has no features\)"):
        evaluate_site(prob, empty, site="x")
    labels = write_polygons(tmp_path / "l.gpkg", [pixel_box(2, 2, 5, 5)])
    with pytest.raises(InputError, match=r"AOI file .*empty\.gpkg has no polygons"):
        evaluate_site(prob, labels, aoi_path=empty, site="x")
