"""Auxiliary layers end to end: the fetch adds them as named bands and records them, a change of the aux settings
fetches again, and chip -> train -> predict carry them; predict refuses a scene without them in one line."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterfiles import write_geotiff
from rasterio.transform import from_origin
from shapely.geometry import box

from pixeldino.auxlayers import AuxParams, add_aux_layers, aux_request, input_bands
from pixeldino.chip import ChipParams, run_chip
from pixeldino.errors import ConfigError, InputError
from pixeldino.fetch import fetch_scene
from pixeldino.modelio import read_metadata
from pixeldino.normalise import lookup_table
from pixeldino.predict import PredictParams, predict_scene
from pixeldino.sidecar import is_finished
from pixeldino.terrain import ENCODINGS
from pixeldino.train import TrainConfig, TrainOutputs, run_train

UTM = "EPSG:32608"
X0, Y0 = 500_000.0, 7_600_000.0
BANDS = ["B03", "B04", "B08"]


def write(path: Path, data: np.ndarray, transform: Affine, dtype: str, nodata: float | None) -> str:
    return str(write_geotiff(path, data.astype(dtype), transform=transform, crs=UTM, nodata=nodata))


def slumped_dem(size: int, squares: list[tuple[int, int, int]]) -> np.ndarray:
    """Elevations (m) on the 10 m grid: a gentle slope with a 6 m deep flat-floored pit under every square."""
    rows, cols = np.mgrid[0:size, 0:size]
    z = 100.0 + 0.03 * 10 * cols
    for r, c, s in squares:
        z[r : r + s, c : c + s] -= 6.0
    return z


@pytest.fixture
def manifest_scene(tmp_path: Path) -> dict:
    """A manifest entry with three 10 m band files (48 x 48 px) and a DEM file of the same area at 10 m."""
    t = from_origin(X0, Y0, 10, 10)
    rng = np.random.default_rng(3)
    assets = {}
    for b in BANDS:
        data = rng.integers(300, 3000, (48, 48)).astype(np.uint16)
        data[:6, :6] = 0  # no data in a corner
        assets[b] = write(tmp_path / f"{b}.tif", data, t, "uint16", 0)
    write(tmp_path / "dem.tif", slumped_dem(48, [(20, 20, 8)]).astype(np.float32), t, "float32", -9999.0)
    return {"id": "SYN_08WMA_20220701", "tile": "08WMA", "datetime": "2022-07-01T21:00:00+00:00", "crs": UTM,
            "processing_baseline": "03.00", "assets": assets, "_dem": str(tmp_path / "dem.tif")}  # fmt: skip


def test_fetch_adds_the_layers_as_named_bands_and_records_them(manifest_scene: dict, tmp_path: Path) -> None:
    aux = AuxParams(dem="file", dem_file=manifest_scene["_dem"], relative_radius_m=100, indices=["ndvi"])
    out = fetch_scene(manifest_scene, BANDS, tmp_path / "out" / "scene.tif", aux=aux)
    with rasterio.open(out) as src:
        assert src.descriptions == ("B03", "B04", "B08", "slope", "relative_elevation", "ndvi")
        assert src.count == 6 and src.dtypes == ("uint16",) * 6 and src.nodata == 0
        assert src.scales[3:] == (0.01, 0.01, 0.0001) and src.offsets[3] == pytest.approx(-0.01)
        assert src.tags()["aux_layers"] == "slope,relative_elevation,ndvi"
        data = src.read()
    # the Sentinel-2 bands are untouched; where the scene has no data every layer is 0 too
    for i, b in enumerate(BANDS):
        with rasterio.open(manifest_scene["assets"][b]) as band:
            assert np.array_equal(data[i], band.read(1))
    assert (data[:, :6, :6] == 0).all() and (data[3:, 6:, 6:] > 0).all()
    ndvi = ENCODINGS["ndvi"].decode(data[5])
    b04, b08 = data[1].astype(float), data[2].astype(float)
    b04, b08 = b04[10:, 10:], b08[10:, 10:]
    np.testing.assert_allclose(ndvi[10:, 10:], (b08 - b04) / (b08 + b04), atol=5e-5)
    # the pit floor lies metres below its surroundings' mean; the ground beside it, which the pit lowers, above
    rel = ENCODINGS["relative_elevation"].decode(data[4])
    assert rel[24, 24] < -4.0 and rel[24, 12] > 0.2
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["bands"] == BANDS
    assert sidecar["aux"]["layers"] == ["slope", "relative_elevation", "ndvi"]
    assert sidecar["aux"]["band_indexes"] == [4, 5, 6]
    assert sidecar["aux"]["dem"] == {"source": "file", "path": str(Path(manifest_scene["_dem"]).resolve())}
    assert sidecar["aux"]["dem_coverage"] == 1.0
    assert sidecar["completed"]["request"]["aux"] == aux_request(aux)


def test_other_aux_settings_fetch_again(manifest_scene: dict, tmp_path: Path) -> None:
    out = tmp_path / "scene.tif"
    aux = AuxParams(dem="file", dem_file=manifest_scene["_dem"], relative_radius_m=100)
    fetch_scene(manifest_scene, BANDS, out, aux=aux)
    first = out.stat().st_mtime_ns
    fetch_scene(manifest_scene, BANDS, out, aux=aux, overwrite=False)
    assert out.stat().st_mtime_ns == first  # the same request: reused
    fetch_scene(manifest_scene, BANDS, out, aux=AuxParams(dem="file", dem_file=manifest_scene["_dem"]),
                overwrite=False)  # fmt: skip
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["aux"]["relative_radius_m"] == 300.0  # fetched again with the new radius
    fetch_scene(manifest_scene, BANDS, out, overwrite=False)  # no layers: fetched again, without them
    with rasterio.open(out) as src:
        assert src.descriptions == tuple(BANDS)
    assert "aux" not in json.loads(out.with_suffix(".json").read_text())["completed"]["request"]


def test_adding_layers_again_replaces_them_and_keeps_the_scene_finished(manifest_scene: dict, tmp_path: Path) -> None:
    out = fetch_scene(manifest_scene, BANDS, tmp_path / "scene.tif")
    aux = AuxParams(dem="file", dem_file=manifest_scene["_dem"], terrain=["slope"], indices=["ndwi"])
    add_aux_layers(out, aux)
    add_aux_layers(out, aux)
    with rasterio.open(out) as src:
        assert src.descriptions == ("B03", "B04", "B08", "slope", "ndwi")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert is_finished(out, manifest_scene["id"], sidecar["completed"]["request"])


def test_a_failed_fetch_of_the_layers_leaves_nothing(manifest_scene: dict, tmp_path: Path) -> None:
    aux = AuxParams(dem="file", dem_file=str(tmp_path / "missing_dem.tif"))
    out = tmp_path / "scene.tif"
    with pytest.raises(InputError, match="missing_dem.tif: DEM not found"):
        fetch_scene(manifest_scene, BANDS, out, aux=aux)
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_input_bands_are_the_bands_then_the_enabled_layers() -> None:
    aux = {"dem": "stac", "terrain": ["curvature", "slope"], "indices": ["ndwi"]}
    assert input_bands(["green", "B8"], aux) == ["B03", "B08", "slope", "curvature", "ndwi"]
    assert input_bands(["B03"], None) == ["B03"]
    assert input_bands(["B03", "B08"], {"terrain": ["slope"]}) == ["B03", "B08"]  # no DEM: no terrain layers
    with pytest.raises(ConfigError, match="ndvi needs band"):
        input_bands(["B03", "B08"], {"indices": ["ndvi"]})
    with pytest.raises(ConfigError, match="aux.dem 'file' needs aux.dem_file"):
        AuxParams(dem="file")


# ---------------------------------------------------------------------------------------------------- end to end
def training_scene(tmp_path: Path, name: str, aux: AuxParams | None) -> tuple[Path, list]:
    """A 128 x 128 px scene with eight slumps: bright, bare squares that are also pits in the DEM."""
    size = 128
    t = from_origin(X0, Y0, 10, 10)
    squares = [(10, 10, 10), (15, 70, 12), (50, 40, 9), (60, 95, 11), (90, 15, 12), (95, 60, 10), (100, 100, 9),
               (35, 110, 8)]  # fmt: skip
    rng = np.random.default_rng(11)
    data = rng.integers(400, 1200, (3, size, size)).astype(np.uint16)
    for r, c, s in squares:
        data[:, r : r + s, c : c + s] += np.array([900, 900, 300], np.uint16)[:, None, None]
    scene = write_geotiff(tmp_path / f"{name}.tif", data, transform=t, crs=UTM, nodata=0, descriptions=BANDS)
    if aux is not None:
        add_aux_layers(scene, aux)
    polygons = [box(*(t * (c, r + s)), *(t * (c + s, r))) for r, c, s in squares]
    return scene, polygons


def test_chip_train_predict_with_auxiliary_layers(tmp_path: Path, one_torch_thread) -> None:
    dem = tmp_path / "dem.tif"
    aux = AuxParams(dem="file", dem_file=str(dem), relative_radius_m=100)
    size = 128
    write(dem, slumped_dem(size, []).astype(np.float32), from_origin(X0, Y0, 10, 10), "float32", None)
    scene, polygons = training_scene(tmp_path, "scene", aux)
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame({"id": range(len(polygons))}, geometry=polygons, crs=UTM).to_file(labels, layer="rts")
    bands = input_bands(BANDS, aux)
    assert bands == ["B03", "B04", "B08", "slope", "relative_elevation"]
    chips = tmp_path / "chips.zarr"
    run_chip(ChipParams(size=32, n_labelled=24, n_unlabelled=4, positive_fraction=0.5, seed=1), scenes=[scene],
             bands=bands, out=chips, labels=labels, unlabelled_scenes=[scene])  # fmt: skip
    config = TrainConfig(mode="supervised", steps=6, batch_labelled=4, width=4, depth=2, n_pseudo_classes=4,
                         val_every=6, checkpoint_every=6, log_every=1, seed=0, num_threads=1, device="cpu",
                         normalisation={"method": "zscore"})  # fmt: skip
    out = tmp_path / "model"
    run_train(config, chips, TrainOutputs.in_dir(out), bands=bands, progress=False)
    meta = read_metadata(out / "model.safetensors")
    assert meta["bands"] == bands
    assert [layer["name"] for layer in meta["auxiliary_layers"]] == ["slope", "relative_elevation"]
    spec = meta["normalisation"]
    # zscore statistics for the three Sentinel-2 bands only; the layers are scaled by their encodings
    assert spec["method"] == "zscore" and len(spec["center"]) == 3
    assert [e["band"] for e in spec["aux"]] == ["slope", "relative_elevation"]
    assert spec["aux"][0] == ENCODINGS["slope"].normalisation()
    table = lookup_table(spec, 5, np.uint16)
    assert table is not None and table[3, 4501] == pytest.approx(0.5)  # 45 degrees of slope -> 0.5
    prob = predict_scene(PredictParams(device="cpu", backend="torch"), scene, out / "model.safetensors",
                         tmp_path / "prob.tif")  # fmt: skip
    with rasterio.open(prob) as src:
        assert src.shape == (size, size) and src.tags()["BANDS"] == ",".join(bands)
        assert (src.read(1) <= 254).all()  # every pixel of the scene has data and a probability
    # a scene fetched without the layers: refused in one line that names the layer and the fix
    bare, _ = training_scene(tmp_path, "bare", None)
    with pytest.raises(InputError) as err:
        predict_scene(PredictParams(device="cpu", backend="torch"), bare, out / "model.safetensors",
                      tmp_path / "prob_bare.tif")  # fmt: skip
    message = str(err.value)
    assert "\n" not in message and "lacks band(s) slope, relative_elevation" in message
    assert "set aux: in the config" in message and "fetch the scene again" in message
    assert not (tmp_path / "prob_bare.tif").exists()
