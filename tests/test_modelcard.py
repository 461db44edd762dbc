"""The model card: a STAC item with the MLM extension written beside every exported model, read back and checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from pyproj import Transformer
from shapely.geometry import box
from test_train import BANDS, squares_data, tiny

from pixeldino.chip import ChipParams, run_chip
from pixeldino.errors import InputError, ModelError
from pixeldino.model import UNetConfig, build_model
from pixeldino.modelcard import card_summary, describe_training_data, read_model_card, write_model_card
from pixeldino.modelio import load_model, model_card_path, model_id, read_metadata, save_model
from pixeldino.normalise import normalise
from pixeldino.stac_checks import MLM, check_extension_fields, validate_stac_file
from pixeldino.train import TrainingChips, TrainOutputs, run_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def save_tiny_model(
    path: Path, bands: list[str] = BANDS, normalisation: dict | None = None, seed: int = 0, card: bool = True
) -> Path:
    """An untrained width-4 UNet saved as a pixeldino model at ``path`` (with its model card unless ``card`` is
    False): a real model file, without the cost of training."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(UNetConfig(in_channels=len(bands), width=4, depth=1, n_pseudo_classes=3))
    meta = {
        "bands": list(bands),
        "normalisation": normalisation or {"method": "logsigmoid"},
        "chip_size": 32,
        "threshold": 0.4,
        "mode": "supervised",
        "training": {"mode": "supervised", "steps": 1},
        "metrics": {"mode": "supervised", "step": 1, "val": {"iou": 0.5}, "threshold": 0.4},
    }
    save_model(path, model, meta)
    if card:
        write_model_card(path, model=model)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A model trained for 20 steps on the squares task (chips in memory), exported with its card."""
    out = tmp_path_factory.mktemp("card")
    chips = TrainingChips(bands=BANDS, **squares_data())
    run_train(tiny("supervised", 20, lr=1e-2), chips, TrainOutputs.in_dir(out), progress=False)
    return out / "model.safetensors"


def test_training_writes_a_card_that_reads_back(trained: Path) -> None:
    card_file = model_card_path(trained)
    assert card_file == trained.with_name("model.stac.json") and card_file.exists()
    card = read_model_card(trained)
    assert card == json.loads(card_file.read_text())
    meta = read_metadata(trained)
    props = card["properties"]
    assert card["id"] == f"pixeldino-model-{model_id(trained)}" and card["stac_extensions"] == [MLM]
    assert props["mlm:architecture"] == "U-Net" and props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:framework"] == "PyTorch" and props["mlm:framework_version"] == torch.__version__.split("+")[0]
    model, _ = load_model(trained)
    n_params = sum(p.numel() for p in model.parameters())
    assert props["mlm:total_parameters"] == n_params and props["mlm:memory_size"] == 4 * n_params  # float32, no buffers
    assert props["mlm:pretrained"] is False and props["mlm:pretrained_source"] is None
    # inputs: the bands, [-1, C, P, P] with P the default inference patch (32 px chips -> 64 px patches)
    (inp,) = props["mlm:input"]
    assert inp["bands"] == BANDS == meta["bands"]
    assert inp["input"] == {
        "shape": [-1, 3, 64, 64],
        "dim_order": ["batch", "channel", "height", "width"],
        "data_type": "float32",
    }
    assert props["pixeldino:auxiliary_layers"] == [] and props["pixeldino:normalisation"] == {"method": "logsigmoid"}
    rts, pseudo = props["mlm:output"]
    assert rts["result"]["shape"] == [-1, 1, 64, 64] and pseudo["result"]["shape"] == [-1, 6, 64, 64]
    assert [c["name"] for c in rts["classification:classes"]] == ["background", "rts"]
    assert len(pseudo["classification:classes"]) == 6 and pseudo["classification:classes"][0]["color_hint"] == "1F77B4"
    # metrics and threshold of the training run
    assert props["pixeldino:threshold"] == meta["threshold"] == props["mlm:hyperparameters"]["threshold"]
    val = props["pixeldino:metrics"]["val_at_threshold"]
    assert val == meta["metrics"]["val_at_threshold"] and val["iou"] > 0.5
    assert props["pixeldino:metrics"]["step"] == 20 and props["mlm:hyperparameters"]["steps"] == 20
    assert props["license"] == "CC-BY-4.0"
    # chips in memory: no footprint, said so; the item's time is when the model was made
    assert card["geometry"] is None and "bbox" not in card
    assert "in memory" in props["pixeldino:training_data"]["note"]
    assert props["datetime"] == meta["created"]
    model_asset = card["assets"]["model"]
    assert model_asset["href"] == "./model.safetensors" and model_asset["mlm:artifact_type"] == "safetensors"
    assert {"mlm:model", "mlm:weights"} <= set(model_asset["roles"])
    assert [b["name"] for b in model_asset["bands"]] == BANDS
    assert card["assets"]["metadata"]["href"] == "./model.json"
    assert "validation IoU at it" in card_summary(card) and "B02, B03, B04" in card_summary(card)


def test_card_validates_offline(trained: Path) -> None:
    card = read_model_card(trained)
    assert check_extension_fields(card) == []
    assert validate_stac_file(model_card_path(trained)) is True  # pystac core schemas + MLM checks, no network


def test_value_scaling_computes_the_models_normalisation(trained: Path, tmp_path: Path) -> None:
    dn = np.array([[[0, 1, 250, 1000, 3000, 12000]]] * 3, dtype=np.uint16)  # (3 bands, 1, 6)
    expected = normalise(dn, {"method": "logsigmoid"})
    (scaling,) = read_model_card(trained)["properties"]["mlm:input"][0]["value_scaling"]
    assert scaling["type"] == "processing" and scaling["format"] == "gdal-calc"
    a = dn.astype(np.float64)  # gdal-calc evaluates the expression with numpy, the band as A
    got = eval(scaling["expression"], {"exp": np.exp, "log": np.log, "A": a})  # noqa: S307 (our own expression)
    assert np.allclose(got, expected, atol=1e-6)

    spec = {"method": "zscore", "center": [800.0, 900.0, 700.0], "scale": [300.0, 350.0, 250.0]}
    zscore = save_tiny_model(tmp_path / "z" / "model.safetensors", normalisation=spec)
    scaling = read_model_card(zscore)["properties"]["mlm:input"][0]["value_scaling"]
    assert [s["type"] for s in scaling] == ["z-score"] * 3
    mean = np.array([s["mean"] for s in scaling])[:, None, None]
    std = np.array([s["stddev"] for s in scaling])[:, None, None]
    assert np.allclose((dn - mean) / std, normalise(dn, spec), atol=1e-5)

    scale = save_tiny_model(tmp_path / "s" / "model.safetensors", normalisation={"method": "scale", "factor": 1e-4})
    (scaling,) = read_model_card(scale)["properties"]["mlm:input"][0]["value_scaling"]
    assert scaling == {"type": "scale", "value": pytest.approx(10000.0)}


def test_broken_cards_are_refused(tmp_path: Path) -> None:
    weights = save_tiny_model(tmp_path / "m" / "model.safetensors")
    card_file = model_card_path(weights)
    good = json.loads(card_file.read_text())
    assert read_model_card(card_file)["id"] == good["id"]

    meta_file = weights.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(dict(meta, bands=["B02", "B03", "B08"])))
    with pytest.raises(ModelError, match=r"the card's bands B02, B03, B04 are not the model's .*B08") as info:
        read_model_card(weights)
    assert "\n" not in str(info.value)
    meta_file.write_text(json.dumps(meta))

    save_tiny_model(weights, seed=1, card=False)  # other weights, the old card left beside them
    with pytest.raises(ModelError, match="the card describes model .* but model.safetensors is model"):
        read_model_card(weights)
    assert read_model_card(weights, check_weights=False)["id"] == good["id"]
    write_model_card(weights)
    good = json.loads(card_file.read_text())

    broken = json.loads(json.dumps(good))
    broken["properties"]["mlm:tasks"] = ["segmenting"]
    card_file.write_text(json.dumps(broken))
    with pytest.raises(ModelError, match="invalid model card: properties: mlm:tasks must be distinct MLM tasks"):
        read_model_card(weights)
    with pytest.raises(InputError, match="mlm:tasks"):
        validate_stac_file(card_file)

    broken = json.loads(json.dumps(good))
    del broken["assets"]["model"]["mlm:artifact_type"]
    broken["properties"]["mlm:pretrained_source"] = "ImageNet"
    broken["properties"]["mlm:unknown"] = 1
    broken["assets"]["metadata"]["mlm:name"] = "x"
    broken["assets"]["model"]["bands"] = broken["assets"]["model"]["bands"][:2]
    problems = check_extension_fields(broken)
    for expected in (
        "assets.model: an mlm:model asset needs mlm:artifact_type",
        "properties: a model trained from scratch needs mlm:pretrained_source null",
        "properties: mlm:unknown is not an MLM item field",
        "assets.metadata: mlm:name is not allowed in an asset",
        "properties: mlm:input[0] bands ['B04'] are not defined by the mlm:model asset",
    ):
        assert expected in problems, problems

    card_file.unlink()
    with pytest.raises(ModelError, match="model card not found"):
        read_model_card(weights)


X0, Y0 = 400_000.0, 7_600_000.0  # top-left corner of the scene, UTM 8N (EPSG:32608)


def _write_scene(tmp_path: Path) -> tuple[Path, Path]:
    """A 128 x 128 px 3-band scene with bright RTS squares, its fetch sidecar (with the date) and labels."""
    rng = np.random.default_rng(3)
    data = rng.integers(500, 1500, (3, 128, 128)).astype(np.uint16)
    squares = [(10, 10), (40, 60), (80, 20), (90, 90)]
    for r, c in squares:
        data[:, r : r + 10, c : c + 10] += np.array([3000, 1500, 300], np.uint16)[:, None, None]
    scene = tmp_path / "S2A_20210715_T08WMA.tif"
    profile = dict(driver="GTiff", width=128, height=128, count=3, dtype="uint16", crs="EPSG:32608", nodata=0)
    with rasterio.open(scene, "w", transform=Affine(10, 0, X0, 0, -10, Y0), **profile) as dst:
        dst.write(data)
        for i, b in enumerate(BANDS, start=1):
            dst.set_band_description(i, b)
    scene.with_suffix(".json").write_text(json.dumps({"scene_id": scene.stem, "datetime": "2021-07-15T20:00:00Z"}))
    polygons = [box(X0 + 10 * c, Y0 - 10 * (r + 10), X0 + 10 * (c + 10), Y0 - 10 * r) for r, c in squares]
    labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=polygons, crs="EPSG:32608").to_file(labels, layer="rts")
    return scene, labels


def test_card_footprint_comes_from_the_chip_store(tmp_path: Path) -> None:
    scene, labels = _write_scene(tmp_path)
    store = tmp_path / "chips.zarr"
    stats = run_chip(
        ChipParams(size=32, n_labelled=8, n_unlabelled=0, positive_fraction=0.5, seed=0),
        scenes=[scene], bands=BANDS, out=store, labels=labels,
    )  # fmt: skip
    footprint = stats["scene_footprint"]
    lon_lat = Transformer.from_crs("EPSG:32608", "EPSG:4326", always_xy=True)
    corners = [lon_lat.transform(x, y) for x in (X0, X0 + 1280) for y in (Y0, Y0 - 1280)]
    west, south, east, north = footprint["bbox"]
    assert west <= min(c[0] for c in corners) and east >= max(c[0] for c in corners)
    assert south <= min(c[1] for c in corners) and north >= max(c[1] for c in corners)
    assert east - west < 0.05 and north - south < 0.02  # the 1.28 km scene, not more
    assert footprint["start_datetime"] == footprint["end_datetime"] == "2021-07-15T20:00:00+00:00"
    assert footprint["n_scenes"] == 1

    out = TrainOutputs.in_dir(tmp_path / "model")
    run_train(tiny("supervised", 2, val_every=0), store, out, bands=BANDS, progress=False)
    card = read_model_card(out.model)
    assert card["bbox"] == footprint["bbox"] and card["geometry"]["type"] == "Polygon"
    assert card["properties"]["start_datetime"] == "2021-07-15T20:00:00+00:00"
    assert card["properties"]["datetime"] is None
    data = card["properties"]["pixeldino:training_data"]
    assert data["chips"] == str(store) and data["counts"]["train"] == 8 and data["n_scenes"] == 1
    assert "note" not in data
    assert validate_stac_file(model_card_path(out.model))


def test_training_data_without_a_recorded_footprint() -> None:
    class OldStore:
        """Reads like a chip store made before stores recorded their footprint."""

        path = Path("old/chips.zarr")

        def stats(self) -> dict:
            return {"counts": {"train": 4}}

    old = describe_training_data(OldStore())
    assert old["chips"] == "old/chips.zarr" and old["counts"] == {"train": 4} and old["footprint"] is None
    assert "re-run chip" in old["note"]
    assert describe_training_data(None)["note"].startswith("chips given in memory")


def test_cards_are_read_without_torch(trained: Path) -> None:
    """The catalog and chip stages run in the geo environment, which has no torch."""
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None\n"
        "import pixeldino.chip, pixeldino.catalog\n"
        "from pixeldino.modelcard import read_model_card\n"
        f"print(read_model_card({str(trained)!r})['id'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"pixeldino-model-{model_id(trained)}"


def test_card_verb_checks_and_summarises_a_card(trained: Path, tmp_path: Path, capsys) -> None:
    from pixeldino.cli import main

    assert main(["card", str(trained)]) == 0
    out = capsys.readouterr().out
    assert f"{model_card_path(trained)}: valid model card" in out
    assert f"pixeldino-model-{model_id(trained)}: pixeldino-rts-unet8 (U-Net" in out and "B02, B03, B04" in out
    with pytest.raises(SystemExit) as info:
        main(["card", str(tmp_path / "none.safetensors")])
    assert info.value.code != 0
    assert "model card not found" in capsys.readouterr().err
