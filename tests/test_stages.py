"""Stage entry points: scene matching for evaluation, and prediction on a dask cluster."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import box
from test_predict import make_model, scene_data, write_scene

from pixeldino.errors import InputError
from pixeldino.evaluate import scene_for_aoi
from pixeldino.predict import PredictParams, run_predict


def _scene(scene_id: str, tile: str, bbox: list[float]) -> dict:
    return {"id": scene_id, "tile": tile, "bbox": bbox}


def test_scene_for_aoi_picks_the_scene_covering_most_of_it(tmp_path: Path) -> None:
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[box(10.0, 60.0, 11.0, 61.0)], crs=4326).to_file(aoi)
    scenes = [_scene("a", "32VNM", [9.0, 59.0, 10.2, 62.0]), _scene("b", "32VNN", [10.1, 59.0, 12.0, 62.0])]
    assert scene_for_aoi(aoi, scenes)["id"] == "b"  # covers 90 % of the AOI, "a" only 20 %
    with pytest.raises(InputError, match="no scene in the manifest covers"):
        scene_for_aoi(aoi, [_scene("c", "33VUC", [20.0, 60.0, 21.0, 61.0])])


def test_prediction_on_a_dask_cluster_equals_local(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    scene = write_scene(tmp_path / "scene.tif", scene_data())
    model = make_model(tmp_path / "model.safetensors")
    local = run_predict(PredictParams(patch_size=32, chunk_size=64), scene, model, tmp_path / "local.tif")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        params = PredictParams(patch_size=32, chunk_size=64, dask_scheduler=cluster.scheduler_address)
        remote = run_predict(params, scene, model, tmp_path / "remote.tif")
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        assert np.array_equal(a.read(), b.read())
        assert a.tags()["MODEL"] == b.tags()["MODEL"]
