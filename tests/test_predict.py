"""Scene inference: seam-free chunking, nodata, band selection, tags and failure modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterfiles import write_geotiff
from rasterio.transform import from_origin

from pixeldino.errors import ConfigError, InputError, ModelError
from pixeldino.model import UNetConfig, build_model
from pixeldino.modelio import save_model
from pixeldino.normalise import normalise
from pixeldino.patches import patch_window
from pixeldino.predict import PredictParams, predict_scene, pseudo_class_palette
from pixeldino.probability import PROBABILITY_SCALE

MODEL_BANDS = ["B04", "B03", "B02"]
SCENE_BANDS = ("B02", "B03", "B04", "B08")  # one extra band the model does not use, in another order
H, W = 150, 170
GRID = from_origin(500000, 7700000, 10, 10)


def write_scene(path: Path, data: np.ndarray, descriptions: tuple[str, ...] = SCENE_BANDS) -> Path:
    tags = {"SCENE_ID": "S2A_TEST", "TILE": "08WMC", "DATETIME": "2023-07-01T20:11:29Z"}
    return write_geotiff(path, data.astype(np.uint16), transform=GRID, nodata=0, descriptions=descriptions, tags=tags)


def scene_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(1, 6000, (len(SCENE_BANDS), H, W)).astype(np.uint16)
    data[:, :20, :30] = 0  # a nodata corner
    data[:, 70:140, 100:170] = 0  # nodata larger than a patch: those patches must be skipped
    return data


def make_model(path: Path, *, constant_logit: float | None = None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model(UNetConfig(in_channels=3, width=4, depth=2, n_pseudo_classes=5))
    if constant_logit is not None:
        with torch.no_grad():
            model.rts_head.weight.zero_()
            model.rts_head.bias.fill_(constant_logit)
    meta = {"bands": MODEL_BANDS, "normalisation": {"method": "logsigmoid"}, "chip_size": 64, "threshold": 0.42}
    return save_model(path, model, meta)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_scene(tmp_path / "scene.tif", scene_data())


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_constant_head_gives_constant_map_across_chunks(tmp_path: Path, scene: Path) -> None:
    model = make_model(tmp_path / "const.safetensors", constant_logit=0.8)
    out = predict_scene(PredictParams(chunk_size=64, device="cpu"), scene, model, tmp_path / "p.tif")
    prob = read(out)
    valid = (scene_data() != 0).any(axis=0)
    expected = round(float(torch.sigmoid(torch.tensor(0.8))) * PROBABILITY_SCALE)
    assert np.all(prob[valid] == expected)
    assert np.all(prob[~valid] == 255)


def test_chunking_does_not_change_result(tmp_path: Path, scene: Path) -> None:
    model = make_model(tmp_path / "m.safetensors")
    small = predict_scene(
        PredictParams(chunk_size=32, device="cpu"), scene, model, tmp_path / "small.tif", out_pseudo=tmp_path / "qs.tif"
    )
    large = predict_scene(
        PredictParams(chunk_size=256, device="cpu"),
        scene,
        model,
        tmp_path / "large.tif",
        out_pseudo=tmp_path / "ql.tif",
    )
    a, b = read(small).astype(int), read(large).astype(int)
    assert np.abs(a - b).max() <= 1
    assert len(np.unique(a[a != 255])) > 10  # a real, varying map
    assert np.array_equal(read(tmp_path / "qs.tif"), read(tmp_path / "ql.tif"))


def test_matches_whole_scene_reference(tmp_path: Path, scene: Path) -> None:
    """Chunked dask inference equals a naive whole-scene sliding window over the mirrored scene."""
    model_path = make_model(tmp_path / "m.safetensors", seed=3)
    out = predict_scene(PredictParams(chunk_size=64, overlap=0.5, device="cpu"), scene, model_path, tmp_path / "p.tif")
    from pixeldino.modelio import load_model

    model, _ = load_model(model_path)
    data = scene_data()[[2, 1, 0]]  # B04, B03, B02
    p, s = 64, 32
    padded = np.pad(data, ((0, 0), (p, p), (p, p)), mode="symmetric")
    valid = (padded != 0).any(axis=0)
    acc = np.zeros((H + 2 * p, W + 2 * p))
    wsum = np.zeros_like(acc)
    win = patch_window(p)
    for oy in range(-p + s, H, s):
        for ox in range(-p + s, W, s):
            sl = (slice(oy + p, oy + 2 * p), slice(ox + p, ox + 2 * p))
            if not valid[sl].any():
                continue
            x = normalise(padded[(slice(None), *sl)], {"method": "logsigmoid"}) * valid[sl]
            with torch.no_grad():
                prob = torch.sigmoid(model(torch.from_numpy(x[None]))[0])[0, 0].numpy()
            acc[sl] += win * prob
            wsum[sl] += win
    ref = np.rint(acc[p:-p, p:-p] / wsum[p:-p, p:-p] * PROBABILITY_SCALE)
    got = read(out).astype(float)
    ok = (data != 0).any(axis=0)
    assert np.abs(got[ok] - ref[ok]).max() <= 1


def test_each_patch_runs_through_the_model_once(tmp_path: Path, scene: Path, monkeypatch) -> None:
    """Border patches are shared between blocks through the cache instead of being recomputed."""
    from pixeldino import patches, predict

    forwarded = []
    original = patches.PatchPredictor.forward

    def counting_forward(self, x):
        forwarded.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(patches.PatchPredictor, "forward", counting_forward)
    monkeypatch.setattr(predict, "_DASK_WORKERS", 1)  # deterministic: no two blocks in flight at once
    model = make_model(tmp_path / "m.safetensors")
    predict_scene(PredictParams(chunk_size=64, overlap=0.5, device="cpu"), scene, model, tmp_path / "p.tif")
    p, s = 64, 32
    valid = np.pad((scene_data() != 0).any(axis=0), p, mode="symmetric")
    expected = sum(
        valid[oy + p : oy + 2 * p, ox + p : ox + 2 * p].any()
        for oy in range(-p + s, H, s)
        for ox in range(-p + s, W, s)
    )
    assert sum(forwarded) == expected


def test_outputs_tags_scale_palette_and_nodata(tmp_path: Path, scene: Path) -> None:
    model = make_model(tmp_path / "m.safetensors")
    quality = np.zeros((H, W), np.uint8)
    quality[100:110, 10:20] = 1
    write_geotiff(tmp_path / "q.tif", quality, transform=GRID)
    predict_scene(
        PredictParams(tta=True, device="cpu"),
        scene,
        model,
        tmp_path / "p.tif",
        out_pseudo=tmp_path / "c.tif",
        quality_mask=tmp_path / "q.tif",
    )
    with rasterio.open(tmp_path / "p.tif") as src:
        prob, tags = src.read(1), src.tags()
        assert src.scales[0] == pytest.approx(1 / 254)
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        assert src.profile["tiled"]
    assert tags["THRESHOLD"] == "0.42" and tags["PROBABILITY_SCALE"] == "254"
    assert tags["SCENE_ID"] == "S2A_TEST" and tags["TILE"] == "08WMC" and tags["DATETIME"] == "2023-07-01T20:11:29Z"
    assert len(tags["MODEL"]) == 12
    assert np.all(prob[:20, :30] == 255) and np.all(prob[100:110, 10:20] == 255)
    assert np.all(prob[20:70, 30:100] <= 254)
    with rasterio.open(tmp_path / "c.tif") as src:
        classes, cmap = src.read(1), src.colormap(1)
    assert set(np.unique(classes)) <= set(range(5)) | {255}
    assert np.all(classes[:20, :30] == 255)
    palette = pseudo_class_palette(5)
    assert all(cmap[k] == palette[k] for k in range(5))
    assert len(set(pseudo_class_palette(24).values())) == 25  # 24 distinct colours + transparent nodata


def test_missing_band_is_input_error(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "s.tif", scene_data()[:2], descriptions=("B02", "B03"))
    model = make_model(tmp_path / "m.safetensors")
    with pytest.raises(InputError, match=r"s\.tif.*B04.*m\.safetensors"):
        predict_scene(PredictParams(device="cpu"), scene, model, tmp_path / "p.tif")
    assert not (tmp_path / "p.tif").exists()


def test_corrupt_model_is_model_error_and_leaves_no_output(tmp_path: Path, scene: Path) -> None:
    model = make_model(tmp_path / "m.safetensors")
    model.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="corrupt"):
        predict_scene(PredictParams(device="cpu"), scene, model, tmp_path / "p.tif")
    assert list(tmp_path.glob("p*")) == []


def test_failure_mid_run_leaves_no_output(tmp_path: Path, scene: Path) -> None:
    model = make_model(tmp_path / "m.safetensors")
    write_geotiff(tmp_path / "q.tif", np.zeros((H, W + 1), np.uint8), transform=GRID)
    with pytest.raises(InputError, match="quality mask grid"):
        predict_scene(
            PredictParams(device="cpu"),
            scene,
            model,
            tmp_path / "out" / "p.tif",
            out_pseudo=tmp_path / "out" / "c.tif",
            quality_mask=tmp_path / "q.tif",
        )
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_model_failure_during_streaming_leaves_no_output(tmp_path: Path, scene: Path, monkeypatch) -> None:
    from pixeldino import patches

    calls = []

    def failing_forward(self, x):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("simulated device failure")
        return original(self, x)

    original = patches.PatchPredictor.forward
    monkeypatch.setattr(patches.PatchPredictor, "forward", failing_forward)
    model = make_model(tmp_path / "m.safetensors")
    with pytest.raises(RuntimeError, match="simulated"):
        predict_scene(
            PredictParams(chunk_size=64, batch_size=1, device="cpu"),
            scene,
            model,
            tmp_path / "out" / "p.tif",
            out_pseudo=tmp_path / "out" / "c.tif",
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_bad_patch_size_is_config_error(tmp_path: Path, scene: Path) -> None:
    model = make_model(tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match="multiple of 4"):
        predict_scene(PredictParams(patch_size=66, device="cpu"), scene, model, tmp_path / "p.tif")
