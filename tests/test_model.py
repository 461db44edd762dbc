"""The UNet and its safetensors + JSON model files."""

from __future__ import annotations

import json

import pytest
import torch

from pixeldino.errors import ModelError
from pixeldino.model import UNetConfig, build_model
from pixeldino.modelio import load_model, read_metadata, save_model

CONFIG = UNetConfig(in_channels=3, width=4, depth=2, n_pseudo_classes=5)
META = {"bands": ["B02", "B03", "B04"], "normalisation": {"method": "logsigmoid"}, "chip_size": 16, "threshold": 0.4}


def test_forward_shapes() -> None:
    model = build_model(CONFIG).eval()
    rts, pseudo = model(torch.rand(2, 3, 16, 16))
    assert rts.shape == (2, 1, 16, 16)
    assert pseudo.shape == (2, 5, 16, 16)
    rts, _ = model(torch.rand(1, 3, 20, 12))  # any multiple of 2**depth = 4
    assert rts.shape == (1, 1, 20, 12)


def test_size_must_be_a_multiple() -> None:
    model = build_model(CONFIG)
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.rand(1, 3, 18, 16))


def test_group_norm_variant() -> None:
    model = build_model(UNetConfig(in_channels=2, width=8, depth=3, n_pseudo_classes=3, norm="group")).eval()
    rts, pseudo = model(torch.rand(1, 2, 16, 16))
    assert rts.shape == (1, 1, 16, 16) and pseudo.shape == (1, 3, 16, 16)


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model(CONFIG)
    model.train()
    model(torch.rand(4, 3, 16, 16))  # move the batch-norm running statistics away from their defaults
    model.eval()
    path = save_model(tmp_path / "model.safetensors", model, META)
    loaded, meta = load_model(path)
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))
    assert meta["architecture"] == CONFIG.to_dict()
    assert meta["threshold"] == 0.4 and meta["bands"] == META["bands"]
    assert read_metadata(tmp_path / "model.json")["format"] == "pixeldino-model"
    assert not list(tmp_path.glob(".*tmp*"))


def test_corrupt_weights_raise_model_error(tmp_path) -> None:
    path = save_model(tmp_path / "model.safetensors", build_model(CONFIG), META)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="corrupt model weights"):
        load_model(path)


def test_missing_or_wrong_metadata_raise_model_error(tmp_path) -> None:
    path = save_model(tmp_path / "model.safetensors", build_model(CONFIG), META)
    meta_file = tmp_path / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["architecture"]["width"] = 8
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_model(path)
    meta_file.unlink()
    with pytest.raises(ModelError, match="metadata not found"):
        load_model(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_asking_for_cuda_without_a_gpu_is_one_clear_error() -> None:
    from pixeldino.errors import ConfigError
    from pixeldino.model import resolve_device

    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="train.device is 'cuda' but no CUDA GPU is visible"):
        resolve_device("cuda", "train.device")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bands": ["B02", "B03", "B04", "B08"]}, "4 bands .* but the architecture takes 3 input channels"),
        ({"bands": []}, "'bands' must be a non-empty list of band names"),
        ({"threshold": 1.7}, r"'threshold' 1.7 is not a probability in \[0, 1\]"),
        ({"chip_size": -16}, "'chip_size' -16 is not a positive number of pixels"),
        ({"normalisation": {"method": "magic"}}, "invalid 'normalisation' .*'magic' is not one of"),
        ({"normalisation": {"method": "zscore", "center": [1], "scale": [1]}}, "zscore 'center' has 1 values for 3"),
    ],
)
def test_inconsistent_metadata_is_refused(tmp_path, change: dict, message: str) -> None:
    path = save_model(tmp_path / "model.safetensors", build_model(CONFIG), META)
    meta_file = tmp_path / "model.json"
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()), **change}))
    with pytest.raises(ModelError, match=message) as err:
        load_model(path)
    assert str(meta_file) in str(err.value) and "re-export the model" in str(err.value)


def test_unknown_architecture_or_no_model_at_all(tmp_path) -> None:
    path = save_model(tmp_path / "model.safetensors", build_model(CONFIG), META)
    meta_file = tmp_path / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["architecture"]["attention"] = True  # from a pixeldino this one does not know
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"model\.json: invalid 'architecture' \(.*attention"):
        load_model(path)
    with pytest.raises(ModelError, match=r"nowhere\.safetensors: model not found; train one"):
        load_model(tmp_path / "nowhere.safetensors")
