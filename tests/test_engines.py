"""Inference engines: agreement with torch on a trained model and on the edge patches predict feeds, the export
cache, backend choice, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from test_predict import MODEL_BANDS, read, scene_data, write_scene

from pixeldino import engines, patches, predict
from pixeldino.engines import (
    load_engine,
    resolve_engine,
    resolve_precision,
)
from pixeldino.errors import ConfigError
from pixeldino.model import UNetConfig, build_model
from pixeldino.modelio import load_model, save_model

REPO = Path(__file__).resolve().parents[1]
PATCH, BATCH = 64, 4


def _require(backend: str) -> None:
    for module in (backend, "onnx", "onnxscript"):
        pytest.importorskip(module)


def _supported_norm(norm: str) -> None:
    try:
        UNetConfig(in_channels=3, norm=norm)
        build_model(UNetConfig(in_channels=3, width=4, depth=1, norm=norm))
    except (TypeError, ValueError):
        pytest.skip(f"this model.py has no norm {norm!r}")


def trained_model(path: Path, norm: str, seed: int = 0) -> Path:
    """A tiny UNet trained for a few steps (weights off their init, batch-norm statistics of real batches)."""
    torch.manual_seed(seed)
    model = build_model(UNetConfig(in_channels=3, width=8, depth=2, n_pseudo_classes=5, norm=norm))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(15):
        x = torch.rand(4, 3, 32, 32, generator=gen)
        target = (x[:, :1] > 0.5).float()
        rts, pseudo = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(rts, target) + pseudo.logsumexp(1).mean() * 0.01
        opt.zero_grad()
        loss.backward()
        opt.step()
    meta = {"bands": MODEL_BANDS, "normalisation": {"method": "logsigmoid"}, "chip_size": PATCH, "threshold": 0.5}
    return save_model(path, model.eval(), meta)


def cpu_engine(backend: str, model_path: Path, model_id: str = "m0", **options: Any) -> engines.Engine:
    """``load_engine`` on the CPU for a saved test model, at the tests' patch and batch sizes."""
    model, _ = load_model(model_path)
    return load_engine(
        backend,
        model,
        torch.device("cpu"),
        model_path=model_path,
        model_id=model_id,
        patch=PATCH,
        batch_size=BATCH,
        **options,
    )


def recorded_batches(scene: Path, model_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The normalised batches predict_scene feeds the model (edge patches mirrored, nodata zeroed), via torch."""
    batches: list[np.ndarray] = []
    original = patches.PatchPredictor.forward

    def recording_forward(self, x):  # noqa: ANN001, ANN202
        batches.append(x.copy())
        return original(self, x)

    with monkeypatch.context() as m:
        m.setattr(patches.PatchPredictor, "forward", recording_forward)
        predict.predict_scene(
            predict.PredictParams(chunk_size=64, batch_size=BATCH, device="cpu", backend="torch"),
            scene,
            model_path,
            out,
        )
    return batches


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("norm", ["layer", "batch", "group"])
def test_exported_engine_agrees_with_torch_on_edge_patches(
    tmp_path: Path, backend: str, norm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require(backend)
    _supported_norm(norm)
    model_path = trained_model(tmp_path / "model.safetensors", norm)
    scene = write_scene(tmp_path / "scene.tif", scene_data())
    batches = recorded_batches(scene, model_path, tmp_path / "ref.tif", monkeypatch)
    assert len(batches) > 3 and any(len(b) < BATCH for b in batches)  # partial batches are exercised too
    edge = np.concatenate(batches)
    assert (edge == 0).all(axis=1).any()  # patches over nodata and the mirrored border are among them

    model, _ = load_model(model_path)
    reference = engines.TorchEngine(model, torch.device("cpu"))
    engine = cpu_engine(backend, model_path, num_threads=1)
    worst_prob = worst_logit = 0.0
    for x in batches:
        xt = torch.from_numpy(x)
        want_rts, want_pseudo = (t.clone() for t in reference(xt))
        got_rts, got_pseudo = (t.clone() for t in engine(xt))
        assert got_rts.shape == want_rts.shape and got_pseudo.shape == want_pseudo.shape
        worst_prob = max(worst_prob, float((torch.sigmoid(got_rts) - torch.sigmoid(want_rts)).abs().max()))
        worst_logit = max(worst_logit, float((got_pseudo - want_pseudo).abs().max()))
    assert worst_prob < 1e-3
    assert worst_logit < 1e-2
    assert float(torch.sigmoid(want_rts).std()) > 1e-3  # a model whose output varies, not a constant


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("tta", [False, True])
def test_scene_prediction_is_the_same_on_every_engine(tmp_path: Path, backend: str, tta: bool) -> None:
    _require(backend)
    model_path = trained_model(tmp_path / "model.safetensors", "batch", seed=1)
    scene = write_scene(tmp_path / "scene.tif", scene_data())
    outputs = {}
    for name in ("torch", backend):
        prob = predict.predict_scene(
            predict.PredictParams(chunk_size=64, batch_size=BATCH, tta=tta, device="cpu", backend=name),
            scene,
            model_path,
            tmp_path / f"{name}.tif",
            out_pseudo=tmp_path / f"{name}_q.tif",
        )
        with rasterio.open(prob) as src:
            assert src.tags()["ENGINE"] == name
        outputs[name] = (read(prob).astype(int), read(tmp_path / f"{name}_q.tif"))
    (p_torch, q_torch), (p_engine, q_engine) = outputs["torch"], outputs[backend]
    valid = p_torch != 255
    assert np.array_equal(valid, p_engine != 255)
    assert len(np.unique(p_torch[valid])) > 10
    assert np.abs(p_torch - p_engine).max() <= 1  # one uint8 step is 1/254
    assert (q_torch == q_engine).mean() > 0.999


def test_export_is_cached_by_model_id_and_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require("onnxruntime")
    model_path = trained_model(tmp_path / "model" / "model.safetensors", "batch")
    model, _ = load_model(model_path)
    exports: list[Path] = []
    original = engines.export_onnx

    def counting_export(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        exports.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(engines, "export_onnx", counting_export)
    cpu = torch.device("cpu")
    mid = predict.model_id(model_path)
    for _ in range(2):  # a second scene job reuses the export
        load_engine("onnxruntime", model, cpu, model_path=model_path, model_id=mid, patch=PATCH, batch_size=BATCH)
    assert exports == [tmp_path / "model" / "model.engines" / f"{mid}-3x{PATCH}x{PATCH}.onnx"]
    load_engine("onnxruntime", model, cpu, model_path=model_path, model_id=mid, patch=2 * PATCH, batch_size=BATCH)
    assert exports[-1].name == f"{mid}-3x{2 * PATCH}x{2 * PATCH}.onnx"
    files = sorted(p.name for p in (tmp_path / "model" / "model.engines").iterdir())
    assert files == sorted(p.name for p in exports)  # no temporary files left behind


def test_openvino_ir_is_converted_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require("openvino")
    model_path = trained_model(tmp_path / "model.safetensors", "batch")
    model, _ = load_model(model_path)
    conversions: list[Path] = []
    original = engines.convert_openvino
    monkeypatch.setattr(engines, "convert_openvino", lambda *a: conversions.append(a[1]) or original(*a))
    for _ in range(2):
        load_engine(
            "openvino", model, torch.device("cpu"), model_path=model_path, model_id="abc", patch=PATCH, batch_size=BATCH
        )
    assert len(conversions) == 1
    ir = tmp_path / "model.engines" / f"abc-3x{PATCH}x{PATCH}.openvino"
    assert sorted(p.name for p in ir.iterdir()) == ["model.bin", "model.xml"]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_openvino_runs_a_short_batch_at_its_own_size(tmp_path: Path, precision: str) -> None:
    """A block's last, smaller batch is not padded to the compiled batch: it gives exactly its own outputs, equal to
    what the same patches give inside a full batch (full and short batches run on separate compiles)."""
    _require("openvino")
    model_path = trained_model(tmp_path / "model.safetensors", "layer")
    engine = cpu_engine("openvino", model_path, num_threads=1, precision=precision)
    x = torch.rand(BATCH, 3, PATCH, PATCH, generator=torch.Generator().manual_seed(3))
    full_rts, full_pseudo = (t.clone() for t in engine(x))
    for n in (1, BATCH - 1):
        rts, pseudo = engine(x[:n])
        assert rts.shape == (n, 1, PATCH, PATCH) and pseudo.shape == (n, 5, PATCH, PATCH)
        assert engine._partial.get_input_tensor(0).shape[0] == n  # the model ran on n patches, not on padding
        tol = 1e-4 if precision == "float32" else 5e-2  # bf16: two compiles may block the arithmetic differently
        assert float((rts - full_rts[:n]).abs().max()) < tol
        assert float((pseudo - full_pseudo[:n]).abs().max()) < tol
    assert float(full_rts.std()) > 1e-3  # a model whose output varies, not a constant


def test_losing_an_export_race_keeps_the_winner(tmp_path: Path) -> None:
    final = tmp_path / "key.openvino"
    final.mkdir()
    (final / "model.xml").write_text("winner")
    mine = tmp_path / ".key.openvino.tmp-1"
    mine.mkdir()
    (mine / "model.xml").write_text("loser")
    engines._publish_dir(mine, final)
    assert (final / "model.xml").read_text() == "winner" and not mine.exists()


def test_unwritable_model_folder_caches_in_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_path = tmp_path / "ro" / "model.safetensors"
    model_path.parent.mkdir()
    model_path.with_suffix(".engines").write_text("")  # not a folder: cannot hold the cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    paths = engines.engine_cache_paths(model_path, "abc", 7, 256)
    assert paths["onnx"] == tmp_path / "cache" / "pixeldino" / "engines" / "abc-7x256x256.onnx"


def test_auto_picks_the_fastest_installed_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    present: set[str] = {"onnx", "onnxscript", "onnxruntime", "openvino"}
    monkeypatch.setattr(engines, "installed", lambda module: module in present)
    assert resolve_engine("auto", "cpu") == ("onnxruntime", torch.device("cpu"))
    assert resolve_engine("auto", "cpu", "bfloat16")[0] == "openvino"  # ONNX Runtime runs float32 only
    present.discard("onnxruntime")
    assert resolve_engine("auto", "cpu")[0] == "openvino"
    present.discard("onnxscript")  # no exporter: nothing to run the engines on
    assert resolve_engine("auto", "cpu")[0] == "torch"
    assert resolve_engine("torch", "cpu")[0] == "torch"


def test_engine_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "installed", lambda module: module != "openvino")
    with pytest.raises(ConfigError) as err:
        resolve_engine("openvino", "auto")
    assert "\n" not in str(err.value) and "pixeldino[engines]" in str(err.value)
    with pytest.raises(ConfigError, match="not one of"):
        resolve_engine("tensorrt", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        resolve_engine("onnxruntime", "cuda")
    assert resolve_engine("onnxruntime", "auto") == ("onnxruntime", torch.device("cpu"))
    assert resolve_engine("auto", "auto")[0] == "torch"  # on a GPU


def test_precision_defaults_to_float32_on_cpu_and_bfloat16_on_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", "openvino", cpu) == "float32"
    assert resolve_precision("auto", "torch", gpu) == "bfloat16"
    assert resolve_precision("bfloat16", "openvino", cpu) == "bfloat16"
    with pytest.raises(ConfigError, match="float32 only"):
        resolve_precision("bfloat16", "onnxruntime", cpu)
    monkeypatch.setattr(engines, "installed", lambda module: module != "openvino")
    assert resolve_engine("auto", "cpu", "bfloat16")[0] == "torch"  # onnxruntime has no bfloat16
    assert resolve_engine("auto", "cpu", "float32")[0] == "onnxruntime"


@pytest.mark.parametrize("backend", ["torch", "openvino"])
def test_bfloat16_on_cpu_stays_close(tmp_path: Path, backend: str) -> None:
    if backend != "torch":
        _require(backend)
    model_path = trained_model(tmp_path / "model.safetensors", "batch", seed=2)
    model, _ = load_model(model_path)
    x = torch.rand(BATCH, 3, PATCH, PATCH)
    want = torch.sigmoid(engines.TorchEngine(model, torch.device("cpu"))(x)[0])
    engine = cpu_engine(backend, model_path, model_id="bf", precision="bfloat16")
    got = torch.sigmoid(engine(x)[0])
    assert float((got - want).abs().max()) < 5e-2


def test_all_nodata_scene_is_never_forwarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forwarded: list[int] = []
    original = patches.PatchPredictor.forward

    def counting_forward(self, x):  # noqa: ANN001, ANN202
        forwarded.append(len(x))
        return original(self, x)

    monkeypatch.setattr(patches.PatchPredictor, "forward", counting_forward)
    model_path = trained_model(tmp_path / "model.safetensors", "batch")
    empty = write_scene(tmp_path / "empty.tif", np.zeros_like(scene_data()))
    out = predict.predict_scene(
        predict.PredictParams(chunk_size=64, device="cpu", backend="torch"), empty, model_path, tmp_path / "p.tif"
    )
    assert forwarded == [] and np.all(read(out) == 255)
