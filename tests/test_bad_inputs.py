"""The bad-input corpus: every verb refuses every broken input at the door, in one line, leaving nothing behind.

Each case runs the real command in a subprocess (``python -m pixeldino VERB ...``) on tiny synthetic inputs made
here (rasters, vectors, models, manifests, chip stores) and asserts that

* it exits with status 1;
* stderr holds exactly one line that is not a log record, it starts with ``error:``, it names the offending file
  or key and says what is wrong (no traceback, no second line);
* nothing is left in the case's output folder: no final file and no temporary.

Log records (``<date> <time> LEVEL logger: message``) are the stage's progress log on stderr and are allowed
around the error line, each on one line of its own.

The subprocesses of the selected cases start together on a pool of two workers when the module's fixture is
first used, so the corpus takes the time of about half its cases run one after the other.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from shapely.geometry import LineString, Point, Polygon, box
from test_predict import make_model

from pixeldino.chip import ChipParams, run_chip
from pixeldino.polygonize import PolygonizeParams, run_polygonize

CRS = "EPSG:32608"
X0, Y0, PIXEL, SIZE = 500_000.0, 7_700_000.0, 10.0, 64
TRANSFORM = from_origin(X0, Y0, PIXEL, PIXEL)
SCENE_BANDS = ("B02", "B03", "B04", "B08")
#: A log record as pixeldino.runner formats it; anything else on stderr must be the one error line.
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) [\w.]+: ")
WORKERS = 2


# ---------------------------------------------------------------- synthetic inputs
def _xy(row: float, col: float) -> tuple[float, float]:
    return X0 + PIXEL * col, Y0 - PIXEL * row


def _box_px(r0: int, c0: int, r1: int, c1: int) -> Polygon:
    (x0, y1), (x1, y0) = _xy(r0, c0), _xy(r1, c1)
    return box(x0, y0, x1, y1)


def _raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = CRS,
    transform: object = TRANSFORM,
    descriptions: tuple[str, ...] | None = SCENE_BANDS,
    nodata: float | None = 0,
    tags: dict[str, str] | None = None,
    scale: float | None = None,
    driver: str = "GTiff",
    **options: object,
) -> Path:
    profile = {"driver": driver, "count": data.shape[0], "height": data.shape[1], "width": data.shape[2], **options}
    profile.update(dtype=data.dtype.name, nodata=nodata)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
        if tags:
            dst.update_tags(**tags)
        if scale is not None:
            dst.scales = (scale,)
    return path


def _vector(path: Path, geoms: list, crs: str | None = CRS, layer: str | None = None, **columns: list) -> Path:
    gdf = gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)
    pyogrio.write_dataframe(gdf, path, layer=layer, geometry_type="Unknown" if not geoms else None)
    return path


SCENE_TAGS = {"scene_id": "S2A_TEST", "tile": "08WMC", "datetime": "2021-07-01T20:11:29+00:00"}


def _make_inputs(d: Path) -> None:
    """Every input of the corpus, good and bad, in ``d``."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 6000, (len(SCENE_BANDS), SIZE, SIZE)).astype(np.uint16)
    _raster(d / "scene.tif", data, tags=SCENE_TAGS)
    _raster(d / "scene_nocrs.tif", data, crs=None)
    seven = ("B02", "B03", "B04", "B05", "B06", "B07", "B08")
    _raster(d / "scene_7band.tif", rng.integers(1, 6000, (7, SIZE, SIZE)).astype(np.uint16), descriptions=seven)
    _raster(d / "scene_nodata.tif", np.zeros_like(data), tags=SCENE_TAGS)
    _raster(d / "scene_otherbands.tif", data, descriptions=("B05", "B06", "B07", "B8A"), tags=SCENE_TAGS)
    _raster(d / "scene_undated.tif", data)
    (d / "not_a_tiff.tif").write_text("this is not a GeoTIFF\n")
    # truncated files: a COG keeps its header in front, so it opens and fails only when its tiles are read; a
    # plain GeoTIFF written by GDAL keeps its directory at the end, so it does not even open
    cog = _raster(d / "scene_cog.tif", data, tags=SCENE_TAGS, driver="COG", blocksize=16, compress="deflate")
    (d / "scene_truncated.tif").write_bytes(cog.read_bytes()[: int(cog.stat().st_size * 0.6)])
    (d / "not_a_vector.gpkg").write_text("this is not a GeoPackage\n")

    prob = np.zeros((1, SIZE, SIZE), np.uint8)
    prob[0, 20:30, 20:30] = 254
    prob_tags = {"THRESHOLD": "0.5", "SCENE_ID": "S2A_TEST", "TILE": "08WMC", "DATETIME": SCENE_TAGS["datetime"]}
    _raster(d / "prob.tif", prob, descriptions=None, nodata=255, tags=prob_tags, scale=1 / 254)
    _raster(d / "prob_nocrs.tif", prob, crs=None, descriptions=None, nodata=255, scale=1 / 254)
    whole = (d / "prob.tif").read_bytes()
    (d / "prob_truncated.tif").write_bytes(whole[: len(whole) // 2])
    half = from_origin(X0, Y0, 2 * PIXEL, 2 * PIXEL)
    _raster(d / "mask_other_grid.tif", np.zeros((1, 32, 32), np.uint8), transform=half, descriptions=None, nodata=None)

    # vectors
    _vector(d / "labels.gpkg", [_box_px(20, 20, 30, 30), _box_px(40, 40, 48, 50)], layer="rts")
    far = [box(X0 + 100_000, Y0 - 2_000, X0 + 100_200, Y0 - 1_800)]
    _vector(d / "labels_far.gpkg", far, layer="rts")
    _vector(d / "footprint_far.geojson", far)
    _vector(d / "holdout_far.geojson", far)
    _vector(d / "labels_empty.gpkg", [], layer="rts")
    _vector(d / "labels_two_layers.gpkg", [_box_px(20, 20, 30, 30)], layer="rts")
    _vector(d / "labels_two_layers.gpkg", [_box_px(0, 0, 64, 64)], layer="footprint_2021")
    # zero-area rings: make_valid turns them into lines, so no polygon is left
    flat = [Polygon([_xy(10, 10), _xy(10, 20), _xy(10, 30), _xy(10, 10)]), Polygon([_xy(5, 5), _xy(5, 9), _xy(5, 5)])]
    _vector(d / "labels_degenerate.gpkg", flat, layer="rts")
    _vector(d / "labels_lines.gpkg", [LineString([_xy(1, 1), _xy(9, 9)]), Point(_xy(3, 3))], layer="rts")
    _vector(d / "labels_nocrs.shp", [_box_px(20, 20, 30, 30)], crs=None)

    # models: a good one (bands B04, B03, B02) and broken copies
    make_model(d / "model" / "model.safetensors")
    (d / "model_nojson").mkdir()
    shutil.copy(d / "model" / "model.safetensors", d / "model_nojson" / "model.safetensors")
    (d / "model_truncated").mkdir()
    weights = (d / "model" / "model.safetensors").read_bytes()
    (d / "model_truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copy(d / "model" / "model.json", d / "model_truncated" / "model.json")
    meta = json.loads((d / "model" / "model.json").read_text())
    for name, change in {
        "model_fourbands": {"bands": ["B02", "B03", "B04", "B08"]},  # 4 bands, 3 input channels
        "model_wide": {"architecture": {**meta["architecture"], "width": 8}},  # weights are width 4
    }.items():
        (d / name).mkdir()
        shutil.copy(d / "model" / "model.safetensors", d / name / "model.safetensors")
        (d / name / "model.json").write_text(json.dumps({**meta, **change}))
    (d / "model_badjson").mkdir()
    shutil.copy(d / "model" / "model.safetensors", d / "model_badjson" / "model.safetensors")
    (d / "model_badjson" / "model.json").write_text('{"format": "pixeldino-model", "bands": [')

    # polygons (per-scene GeoPackages, layer rts), all of 2021
    run_polygonize(PolygonizeParams(min_area_m2=0), d / "prob.tif", d / "polygons_a.gpkg")
    shutil.copy(d / "polygons_a.gpkg", d / "polygons_b.gpkg")
    _vector(d / "polygons_other_layer.gpkg", [_box_px(20, 20, 30, 30)], layer="slumps")
    _vector(d / "polygons_undated.gpkg", [_box_px(20, 20, 30, 30)], layer="rts", datetime=[None])

    # JSON: fetch sidecar, manifests, co-registration, catalog
    sidecar = {"scene_id": "S2A_TEST", "tile": "08WMC", "datetime": SCENE_TAGS["datetime"], "quality_mask": None}
    (d / "scene.json").write_text(json.dumps(sidecar))
    (d / "other_scene.json").write_text(json.dumps({**sidecar, "scene_id": "S2B_OTHER"}))
    (d / "not_json.json").write_text('{"scenes": [')
    (d / "not_stac.json").write_text(json.dumps({"hello": "world"}))
    for band in ("B02", "B03", "B04"):
        _raster(d / f"band_{band}.tif", data[:1], descriptions=None)
    scene = {
        "id": "S2A_TEST",
        "tile": "08WMC",
        "datetime": SCENE_TAGS["datetime"],
        "crs": CRS,
        "assets": {b: str(d / f"band_{b}.tif") for b in ("B02", "B03", "B04")},
    }
    manifest = {"pixeldino_manifest": 1, "query": {"bands": ["B02", "B03", "B04"]}, "scenes": [scene]}
    (d / "manifest.json").write_text(json.dumps(manifest))
    lacking = {**scene, "assets": {"B02": scene["assets"]["B02"]}}
    (d / "manifest_missing_assets.json").write_text(json.dumps({**manifest, "scenes": [lacking]}))
    gone = {**scene, "assets": {**scene["assets"], "B03": str(d / "gone" / "B03.tif")}}
    (d / "manifest_missing_file.json").write_text(json.dumps({**manifest, "scenes": [gone]}))
    junk = {**scene, "assets": {**scene["assets"], "B03": str(d / "not_a_tiff.tif")}}
    (d / "manifest_not_geotiff.json").write_text(json.dumps({**manifest, "scenes": [junk]}))

    # a STAC catalog with one item, for search
    import pystac

    catalog = pystac.Catalog("corpus", "one item")
    item = pystac.Item(
        "S2A_08WMC_20210701",
        {"type": "Polygon", "coordinates": [[[-135, 69], [-134, 69], [-134, 69.5], [-135, 69.5], [-135, 69]]]},
        [-135, 69, -134, 69.5],
        dt.datetime(2021, 7, 1, 20, 11, 29, tzinfo=dt.timezone.utc),
        {"eo:cloud_cover": 1.0, "grid:code": "MGRS-08WMC"},
    )
    for band in ("B02", "B03", "B04"):
        item.add_asset(band, pystac.Asset(str(d / f"band_{band}.tif"), media_type=pystac.MediaType.COG))
    catalog.add_item(item)
    catalog.normalize_and_save(str(d / "stac"), pystac.CatalogType.SELF_CONTAINED)

    # chip stores: one with unlabelled chips only, and a folder that is no store
    run_chip(
        ChipParams(size=16, n_labelled=0, n_unlabelled=4),
        scenes=[d / "scene.tif"],
        bands=["B02", "B03", "B04"],
        out=d / "unlabelled.zarr",
        unlabelled_scenes=[d / "scene.tif"],
    )
    (d / "not_a_store.zarr").mkdir()
    (d / "not_a_store.zarr" / "readme.txt").write_text("not zarr\n")

    # model cards
    for name, text in (("bad_card", '{"type": '), ("not_a_card", json.dumps({"type": "Feature"}))):
        (d / name).mkdir()
        (d / name / "model.stac.json").write_text(text)

    # configs
    (d / "bad_value.yaml").write_text("train:\n  steps: -5\n")
    (d / "bad_yaml.yaml").write_text("train: {steps: 5\n")


# ---------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """One bad input: the command line, and what its one error line must say.

    ``args`` may hold ``{i}`` (the inputs folder) and ``{o}`` (this case's output folder, empty before the run).
    The error line must contain every string of ``names`` (the offending files or keys) and match ``says``.
    """

    id: str
    args: tuple[str, ...]
    names: tuple[str, ...]
    says: str

    def argv(self, inputs: Path, out: Path) -> list[str]:
        return [a.format(i=inputs, o=out) for a in self.args]


def case(id: str, args: str, names: str | tuple[str, ...], says: str) -> Case:
    return Case(id, tuple(args.split()), (names,) if isinstance(names, str) else names, says)


CHIP = "chip --bands B02,B03,B04 --size 16 --n-labelled 4 --n-unlabelled 4 --out {o}/chips.zarr"
PREDICT = "predict {i}/scene.tif --out {o}/prob.tif --device cpu --backend torch --threads 1"
CATALOG = "catalog --out {o}/stac --run corpus"

CASES = [
    # search
    case(
        "search-reversed-dates",
        "search --catalog {i}/stac/catalog.json --datetime 2021-09-01/2021-06-01 --out {o}/m.json",
        "search.datetime",
        "ends before it starts",
    ),
    case(
        "search-missing-catalog",
        "search --catalog {i}/nowhere/catalog.json --out {o}/m.json",
        "nowhere/catalog.json",
        "not found",
    ),
    case("search-not-stac", "search --catalog {i}/not_stac.json --out {o}/m.json", "not_stac.json", "STAC"),
    case(
        "search-missing-aoi",
        "search --catalog {i}/stac --aoi {i}/nowhere.gpkg --out {o}/m.json",
        "nowhere.gpkg",
        "not found",
    ),
    case(
        "search-empty-aoi",
        "search --catalog {i}/stac --aoi {i}/labels_empty.gpkg --out {o}/m.json",
        "labels_empty.gpkg",
        "no features",
    ),
    case(
        "search-bad-tile",
        "search --catalog {i}/stac --tiles 08WMC Peel --out {o}/m.json",
        ("search.tiles", "'Peel'"),
        "not an MGRS tile",
    ),
    case(
        "search-unknown-band",
        "search --catalog {i}/stac --bands B02,B99 --out {o}/m.json",
        ("--bands", "B99"),
        "unknown Sentinel-2 band",
    ),
    # fetch
    case("fetch-missing-manifest", "fetch --manifest {i}/nowhere.json --out-dir {o}", "nowhere.json", "not found"),
    case(
        "fetch-manifest-not-json", "fetch --manifest {i}/not_json.json --out-dir {o}", "not_json.json", "not valid JSON"
    ),
    case(
        "fetch-manifest-missing-assets",
        "fetch --manifest {i}/manifest_missing_assets.json --bands B02,B03,B04 --out-dir {o}",
        ("manifest_missing_assets.json", "S2A_TEST"),
        r"no asset for band\(s\) B03, B04",
    ),
    case(
        "fetch-asset-file-missing",
        "fetch --manifest {i}/manifest_missing_file.json --bands B02,B03,B04 --out-dir {o}",
        "gone/B03.tif",
        "not found|No such file|does not exist",
    ),
    case(
        "fetch-asset-not-geotiff",
        "fetch --manifest {i}/manifest_not_geotiff.json --bands B02,B03,B04 --out-dir {o}",
        "not_a_tiff.tif",
        "cannot read|not recognized",
    ),
    case(
        "fetch-unknown-scene",
        "fetch --manifest {i}/manifest.json --scene NOPE --bands B02,B03,B04 --out-dir {o}",
        ("manifest.json", "NOPE"),
        "no scene",
    ),
    # chip
    case(
        "chip-labels-overlap-no-scene",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels_far.gpkg",
        ("labels_far.gpkg", "scene.tif"),
        "overlap",
    ),
    case(
        "chip-empty-labels",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels_empty.gpkg",
        "labels_empty.gpkg",
        "no polygons",
    ),
    case(
        "chip-footprint-outside-scenes",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels.gpkg --footprint {i}/footprint_far.geojson",
        "footprint_far.geojson",
        "overlap",
    ),
    case(
        "chip-holdout-outside-scenes",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels.gpkg --holdout {i}/holdout_far.geojson",
        "holdout_far.geojson",
        "overlap",
    ),
    case(
        "chip-scene-lacks-bands",
        CHIP + " --scenes {i}/scene_otherbands.tif --labels {i}/labels.gpkg",
        "scene_otherbands.tif",
        r"lacks band\(s\) B02, B03, B04",
    ),
    case(
        "chip-scene-not-geotiff",
        CHIP + " --scenes {i}/not_a_tiff.tif --labels {i}/labels.gpkg",
        "not_a_tiff.tif",
        "cannot read|not recognized",
    ),
    case(
        "chip-scene-truncated",
        CHIP + " --scenes {i}/scene_truncated.tif --labels {i}/labels.gpkg",
        "scene_truncated.tif",
        "corrupt or truncated",
    ),
    case(
        "chip-scene-without-crs",
        CHIP + " --scenes {i}/scene_nocrs.tif --labels {i}/labels.gpkg",
        "scene_nocrs.tif",
        "no CRS",
    ),
    case(
        "chip-scene-all-nodata",
        CHIP + " --scenes {i}/scene_nodata.tif --labels {i}/labels.gpkg",
        "scene_nodata.tif",
        "nodata",
    ),
    case(
        "chip-unlabelled-scene-all-nodata",
        CHIP + " --scenes {i}/scene_nodata.tif",
        "scene_nodata.tif",
        "nodata",
    ),
    case(
        "chip-labels-two-layers",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels_two_layers.gpkg",
        ("labels_two_layers.gpkg", "rts", "footprint_2021"),
        "layers",
    ),
    case(
        "chip-labels-invalid-geometries",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels_degenerate.gpkg",
        "labels_degenerate.gpkg",
        "no polygons",
    ),
    case(
        "chip-labels-not-polygons",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels_lines.gpkg",
        "labels_lines.gpkg",
        "no polygons",
    ),
    case(
        "chip-labels-without-crs",
        CHIP + " --scenes {i}/scene.tif --labels {i}/labels_nocrs.shp",
        "labels_nocrs.shp",
        "no CRS",
    ),
    case(
        "chip-labels-not-vector",
        CHIP + " --scenes {i}/scene.tif --labels {i}/not_a_vector.gpkg",
        "not_a_vector.gpkg",
        "cannot read",
    ),
    case(
        "chip-holdout-without-labels",
        CHIP + " --scenes {i}/scene.tif --holdout {i}/labels.gpkg",
        "--holdout",
        "without labels",
    ),
    case(
        "chip-nothing-to-chip", CHIP + " --scenes {i}/scene.tif --n-unlabelled 0", "--n-unlabelled", "nothing to chip"
    ),
    # train
    case("train-missing-store", "train --chips {i}/nowhere.zarr --out-dir {o}", "nowhere.zarr", "not found"),
    case("train-not-a-store", "train --chips {i}/not_a_store.zarr --out-dir {o}", "not_a_store.zarr", "not a"),
    case(
        "train-no-labelled-chips",
        "train --chips {i}/unlabelled.zarr --out-dir {o} --mode supervised",
        "unlabelled.zarr",
        "no labelled training chips",
    ),
    # predict
    case(
        "predict-scene-without-crs",
        PREDICT.replace("scene.tif", "scene_nocrs.tif") + " --model {i}/model/model.safetensors",
        "scene_nocrs.tif",
        "no CRS",
    ),
    case(
        "predict-scene-lacks-model-bands",
        PREDICT.replace("scene.tif", "scene_otherbands.tif") + " --model {i}/model/model.safetensors",
        ("scene_otherbands.tif", "model.safetensors"),
        r"lacks band\(s\) B04, B03, B02",
    ),
    case(
        "predict-model-missing",
        PREDICT + " --model {i}/nowhere/model.safetensors",
        "nowhere/model.safetensors",
        "not found",
    ),
    case(
        "predict-model-without-json",
        PREDICT + " --model {i}/model_nojson/model.safetensors",
        "model_nojson/model.json",
        "not found",
    ),
    case(
        "predict-model-truncated",
        PREDICT + " --model {i}/model_truncated/model.safetensors",
        "model_truncated/model.safetensors",
        "corrupt",
    ),
    case(
        "predict-model-corrupt-json",
        PREDICT + " --model {i}/model_badjson/model.safetensors",
        "model_badjson/model.json",
        "corrupt",
    ),
    case(
        "predict-model-band-count-mismatch",
        PREDICT + " --model {i}/model_fourbands/model.safetensors",
        "model_fourbands/model.json",
        "4 bands",
    ),
    case(
        "predict-model-weights-mismatch",
        PREDICT + " --model {i}/model_wide/model.safetensors",
        "model_wide/model.safetensors",
        r"do not fit the architecture in model.json \(size mismatch for encoders",
    ),
    # polygonize
    case(
        "polygonize-7-band-scene",
        "polygonize {i}/scene_7band.tif --out {o}/p.gpkg",
        "scene_7band.tif",
        "7 bands; a probability raster has one",
    ),
    case("polygonize-without-crs", "polygonize {i}/prob_nocrs.tif --out {o}/p.gpkg", "prob_nocrs.tif", "no CRS"),
    case(
        "polygonize-truncated",
        "polygonize {i}/prob_truncated.tif --out {o}/p.gpkg",
        "prob_truncated.tif",
        "cannot read",
    ),
    case(
        "polygonize-quality-mask-other-grid",
        "polygonize {i}/prob.tif --quality-mask {i}/mask_other_grid.tif --out {o}/p.gpkg",
        "mask_other_grid.tif",
        "not on the grid",
    ),
    case(
        "polygonize-missing-water",
        "polygonize {i}/prob.tif --permanent-water {i}/nowhere_water.gpkg --out {o}/p.gpkg",
        "nowhere_water.gpkg",
        "not found",
    ),
    # merge
    case("merge-no-inputs", "merge --out {o}/m.gpkg", "m.gpkg", "no polygon files"),
    case(
        "merge-missing-input",
        "merge {i}/polygons_a.gpkg {i}/nowhere.gpkg --out {o}/m.gpkg",
        "nowhere.gpkg",
        "not found",
    ),
    case(
        "merge-no-rts-layer",
        "merge {i}/polygons_other_layer.gpkg --out {o}/m.gpkg",
        ("polygons_other_layer.gpkg", "slumps"),
        "no layer 'rts'",
    ),
    case("merge-not-vector", "merge {i}/not_a_vector.gpkg --out {o}/m.gpkg", "not_a_vector.gpkg", "cannot read"),
    # coregister
    case(
        "coregister-missing-scene",
        "coregister {i}/scene.tif {i}/nowhere.tif --out {o}/c.json",
        "nowhere.tif",
        "not found",
    ),
    case(
        "coregister-undated-scene",
        "coregister {i}/scene_undated.tif --out {o}/c.json",
        "scene_undated.tif",
        "no acquisition date",
    ),
    case(
        "coregister-missing-band",
        "coregister {i}/scene.tif --band B11 --out {o}/c.json",
        ("scene.tif", "B11"),
        "lacks band",
    ),
    # change
    case(
        "change-one-year-only",
        "change {i}/polygons_a.gpkg {i}/polygons_b.gpkg --out {o}/c.gpkg",
        ("2021", "polygons_a.gpkg"),
        "one year",
    ),
    case(
        "change-undated-polygons",
        "change {i}/polygons_undated.gpkg --out {o}/c.gpkg",
        "polygons_undated.gpkg",
        "no acquisition date",
    ),
    case(
        "change-coregistration-not-json",
        "change {i}/polygons_a.gpkg --years 2021 2023 --coregistration {i}/not_json.json --out {o}/c.gpkg",
        "not_json.json",
        "not valid JSON",
    ),
    case(
        "change-coregistration-missing",
        "change {i}/polygons_a.gpkg --years 2021 2023 --coregistration {i}/nowhere.json --out {o}/c.gpkg",
        "nowhere.json",
        "not found",
    ),
    case(
        "change-coregistration-not-a-record",
        "change {i}/polygons_a.gpkg --years 2021 2023 --coregistration {i}/not_stac.json --out {o}/c.gpkg",
        "not_stac.json",
        "not a co-registration record",
    ),
    # catalog
    case(
        "catalog-more-sidecars-than-probabilities",
        CATALOG + " --sidecars {i}/scene.json {i}/other_scene.json --probabilities {i}/prob.tif",
        ("--sidecars", "--probabilities"),
        "2 vs 1",
    ),
    case(
        "catalog-pseudo-list-mismatch",
        CATALOG + " --sidecars {i}/scene.json --probabilities {i}/prob.tif --pseudo {i}/prob.tif {i}/prob.tif",
        "--pseudo",
        "2 .*1",
    ),
    case(
        "catalog-sidecar-of-another-scene",
        CATALOG + " --sidecars {i}/other_scene.json --probabilities {i}/prob.tif",
        ("other_scene.json", "prob.tif", "S2B_OTHER", "S2A_TEST"),
        "same order",
    ),
    case(
        "catalog-missing-polygons",
        CATALOG + " --sidecars {i}/scene.json --probabilities {i}/prob.tif --polygons {i}/nowhere.gpkg",
        "nowhere.gpkg",
        "not found",
    ),
    case(
        "catalog-sidecar-not-json",
        CATALOG + " --sidecars {i}/not_json.json --probabilities {i}/prob.tif",
        "not_json.json",
        "not valid JSON",
    ),
    # evaluate
    case(
        "evaluate-labels-do-not-overlap",
        "evaluate --prediction {i}/prob.tif --labels {i}/labels_far.gpkg --out {o}/m.json",
        ("labels_far.gpkg", "prob.tif"),
        "overlap",
    ),
    case(
        "evaluate-empty-labels",
        "evaluate --prediction {i}/prob.tif --labels {i}/labels_empty.gpkg --out {o}/m.json",
        "labels_empty.gpkg",
        "no polygons",
    ),
    case(
        "evaluate-scene-as-prediction",
        "evaluate --prediction {i}/scene.tif --labels {i}/labels.gpkg --out {o}/m.json",
        "scene.tif",
        "4 bands",
    ),
    case(
        "evaluate-prediction-without-crs",
        "evaluate --prediction {i}/prob_nocrs.tif --labels {i}/labels.gpkg --out {o}/m.json",
        "prob_nocrs.tif",
        "no CRS",
    ),
    case(
        "evaluate-aoi-does-not-overlap",
        "evaluate --prediction {i}/prob.tif --labels {i}/labels.gpkg --aoi {i}/footprint_far.geojson --out {o}/m.json",
        "footprint_far.geojson",
        "overlap",
    ),
    case(
        "evaluate-threshold-out-of-range",
        "evaluate --prediction {i}/prob.tif --labels {i}/labels.gpkg --threshold 1.5 --out {o}/m.json",
        "--threshold",
        r"\[0, 1\]",
    ),
    case(
        "evaluate-image-lacks-bands",
        "evaluate --prediction {i}/prob.tif --labels {i}/labels.gpkg --image {i}/scene_otherbands.tif "
        "--quicklook {o}/q.png --out {o}/m.json",
        "scene_otherbands.tif",
        "lacks band",
    ),
    # card
    case("card-model-without-card", "card {i}/model/model.safetensors", "model/model.stac.json", "not found"),
    case("card-not-json", "card {i}/bad_card/model.stac.json", "bad_card/model.stac.json", "not valid JSON"),
    case("card-not-a-card", "card {i}/not_a_card/model.stac.json", "not_a_card/model.stac.json", "not a model card"),
    # config
    case("config-missing-file", "config {i}/nowhere.yaml", "nowhere.yaml", "not found"),
    case("config-bad-value", "config {i}/bad_value.yaml", "train.steps", "minimum"),
    case("config-bad-yaml", "config {i}/bad_yaml.yaml", "bad_yaml.yaml", "YAML"),
]


# ---------------------------------------------------------------- running them
@dataclass
class Outcome:
    """What one command did: its exit status, stderr, and what it left in its output folder."""

    returncode: int
    stderr: str
    left: list[str]


def _run(c: Case, inputs: Path, out: Path) -> Outcome:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "pixeldino", *c.argv(inputs, out)],
        capture_output=True,
        text=True,
        cwd=out.parent,
        env=env,
        timeout=300,
    )
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []
    return Outcome(proc.returncode, proc.stderr, left)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad_inputs")
    with warnings.catch_warnings():
        # the inputs without CRS are made on purpose
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        _make_inputs(d)
    return d


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, inputs: Path) -> Iterator[dict[str, Future[Outcome]]]:
    """The selected cases, all started at once on a pool of :data:`WORKERS` workers."""
    selected = [
        item.callspec.params["c"]
        for item in request.session.items
        if item.module is sys.modules[__name__] and hasattr(item, "callspec") and "c" in item.callspec.params
    ]
    outs = inputs.parent / "outputs"
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {}
        for c in selected:
            out = outs / c.id
            out.mkdir(parents=True)
            futures[c.id] = pool.submit(_run, c, inputs, out)
        yield futures
        for f in futures.values():
            f.cancel()


def test_the_corpus_covers_every_verb() -> None:
    from pixeldino.cli import VERBS

    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.args[0] for c in CASES} == set(VERBS)


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_and_leaves_nothing(c: Case, outcomes: dict[str, Future[Outcome]]) -> None:
    result = outcomes[c.id].result()
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if not LOG_RECORD.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.returncode == 1
    error = lines[0]
    for name in c.names:
        assert name in error, f"{name!r} not named in: {error}"
    assert re.search(c.says, error), f"{c.says!r} not in: {error}"
    assert result.left == [], f"left behind: {result.left}"
