"""run_train on a REAL chip store: run_chip over small synthetic scenes with real RTS outlines."""

from __future__ import annotations

import json
from dataclasses import replace

import geopandas as gpd
import pytest
import torch
import zarr
from rasterfiles import write_synthetic_pair
from safetensors.torch import load_file
from shapely.geometry import box

from pixeldino import synthetic
from pixeldino.chip import ChipParams, run_chip
from pixeldino.chipstore import STORE_VERSION, ChipRows, ChipStore
from pixeldino.errors import PixeldinoError, TrainingError
from pixeldino.modelio import load_model, read_metadata
from pixeldino.train import TrainConfig, TrainOutputs, load_chips, run_train

BANDS = list(synthetic.BANDS)
CHIP = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A labelled Horton scene (with its outlines and a west hold-out strip) and an unlabelled Herschel scene."""
    d = tmp_path_factory.mktemp("scenes")
    lab, paths = write_synthetic_pair(d, 128)
    left, top = lab.transform.c, lab.transform.f
    strip = box(left, top - 128 * 10, left + CHIP * 10, top)  # the west 32 px
    gpd.GeoDataFrame(geometry=[strip], crs=lab.crs).to_file(d / "holdout.geojson", driver="GeoJSON")
    paths["holdout"] = d / "holdout.geojson"
    return paths


@pytest.fixture(scope="module")
def store(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("chips") / "chips.zarr"
    stats = run_chip(
        ChipParams(size=CHIP, n_labelled=16, n_unlabelled=16, seed=0),
        scenes=[scenes["scene"]], bands=BANDS, out=out, labels=scenes["labels"], holdout=scenes["holdout"],
        unlabelled_scenes=[scenes["unlabelled"]],
    )  # fmt: skip
    assert stats["counts"]["train"] == 16 and stats["counts"]["val"] >= 1 and stats["counts"]["unlabelled"] == 16
    assert stats["counts"]["train_positive"] > 0
    return out


def tiny(mode: str, steps: int = 3) -> TrainConfig:
    return TrainConfig(
        mode=mode, steps=steps, batch_labelled=4, batch_unlabelled=4, warmup_steps=1, width=4, depth=2,
        n_pseudo_classes=4, val_every=steps, checkpoint_every=steps, log_every=1, seed=0, num_threads=1,
        ema_momentum=0.9,
    )  # fmt: skip


def test_train_from_a_real_store_exports_the_store_layout(store, tmp_path) -> None:
    chip_store = ChipStore(store)
    metrics = run_train(tiny("pixeldino"), store, TrainOutputs.in_dir(tmp_path), bands=BANDS, progress=False)
    assert metrics["step"] == 3 and metrics["exported"] == "teacher"
    assert metrics["val"] is not None  # the hold-out strip became validation chips
    meta = read_metadata(tmp_path / "model.json")
    assert meta["bands"] == chip_store.bands == BANDS
    assert meta["chip_size"] == chip_store.chip_size == CHIP
    assert meta["architecture"]["in_channels"] == len(BANDS)
    json.loads((tmp_path / "model.json").read_text())
    model, _ = load_model(tmp_path / "model.safetensors")
    assert model.config.in_channels == len(BANDS)


def test_store_bands_must_match(store, tmp_path) -> None:
    wanted = ["B02", "B03", "B04", "B08"]
    with pytest.raises(TrainingError, match="expects B02, B03, B04, B08") as info:
        run_train(tiny("supervised"), store, TrainOutputs.in_dir(tmp_path), bands=wanted, progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "model.safetensors").exists()


def test_store_without_labelled_chips_is_a_one_line_error(scenes, tmp_path) -> None:
    out = tmp_path / "unlabelled_only.zarr"
    run_chip(ChipParams(size=CHIP, n_labelled=0, n_unlabelled=4), scenes=[], bands=BANDS, out=out,
             unlabelled_scenes=[scenes["unlabelled"]])  # fmt: skip
    with pytest.raises(TrainingError, match="no labelled training chips") as info:
        run_train(tiny("supervised"), out, TrainOutputs.in_dir(tmp_path / "model"), progress=False)
    assert "\n" not in str(info.value)


def test_empty_store_is_a_one_line_error(tmp_path) -> None:
    # run_chip refuses to write a store without chips; one written otherwise (by hand, by another tool) is refused
    out = tmp_path / "empty.zarr"
    root = zarr.open_group(str(out), mode="w")
    c = len(BANDS)
    root.create_array("labelled/image", shape=(0, c, CHIP, CHIP), chunks=(1, c, CHIP, CHIP), dtype="uint16")
    root.create_array("labelled/mask", shape=(0, CHIP, CHIP), chunks=(1, CHIP, CHIP), dtype="uint8")
    root.create_array("labelled/split", shape=(0,), chunks=(1,), dtype="uint8")
    root.create_array("unlabelled/image", shape=(0, c, CHIP, CHIP), chunks=(1, c, CHIP, CHIP), dtype="uint16")
    root.attrs.update({"pixeldino_chips": STORE_VERSION, "bands": BANDS, "chip_size": CHIP, "ignore_value": 255})
    with pytest.raises(PixeldinoError, match="no chips") as info:
        run_train(tiny("supervised"), out, TrainOutputs.in_dir(tmp_path / "model"), progress=False)
    assert "\n" not in str(info.value)


def test_a_store_beyond_the_memory_budget_streams_to_the_same_model(store, tmp_path) -> None:
    """The real store streamed (budget 0) and read into memory give a bit-identical model and checkpoint."""
    streamed = replace(tiny("pixeldino"), memory_budget_mb=0)
    chips = load_chips(store, streamed, BANDS)
    assert chips.streamed == ["train", "val", "unlabelled"] and isinstance(chips.unlabelled_images, ChipRows)
    assert load_chips(store, tiny("pixeldino"), BANDS).streamed == []  # the default budget holds it in memory
    for name, config in (("memory", tiny("pixeldino")), ("streamed", streamed)):
        run_train(config, store, TrainOutputs.in_dir(tmp_path / name), bands=BANDS, progress=False)
    for name in ("model.safetensors", "checkpoint/student.safetensors", "checkpoint/optimizer.safetensors"):
        a, b = load_file(str(tmp_path / "memory" / name)), load_file(str(tmp_path / "streamed" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
