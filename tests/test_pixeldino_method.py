"""The method's details that decide whether PixelDINO can beat its baselines: normalisation, batch-norm statistics,
schedules that scale with the run, the export choice, paired random streams, the ablation switches, and every
training field reachable from the CLI and the workflow config."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import BANDS, read_log, run, squares_data, tiny

from pixeldino import train as train_module
from pixeldino.cli import build_parser, main
from pixeldino.config import validate_config
from pixeldino.model import ChannelLayerNorm, UNetConfig, build_model
from pixeldino.modelio import load_model
from pixeldino.params import from_namespace
from pixeldino.train import (
    ChipSource,
    TrainConfig,
    Trainer,
    TrainingChips,
    TrainOutputs,
    ema_horizon_steps,
    ema_momentum_at,
    frozen_batch_norm_statistics,
    initial_ema_momentum,
    lr_at,
    recalibrated,
    warmup_steps_of,
)


def minimal_config() -> dict[str, object]:
    """The smallest valid workflow config: a run name, a scene provider and where to look."""
    return {"run": "test", "stac": {"provider": "earth-search"}, "search": {"tiles": ["08WMA"]}}


NO_PHOTOMETRIC = {"gamma_range": [1.0, 1.0], "brightness": 0.0, "contrast": 0.0, "blur_p": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return squares_data()


def trainer(data: dict[str, np.ndarray], out: Path, config: TrainConfig) -> Trainer:
    return Trainer(TrainingChips(bands=BANDS, **data), config, TrainOutputs.in_dir(out), progress=False)


# ---------------------------------------------------------------------------------------------- normalisation
def test_layer_norm_is_the_default_everywhere() -> None:
    assert TrainConfig().norm == "layer" and UNetConfig(in_channels=3).norm == "layer"
    assert validate_config(minimal_config(), check_files=False)["train"]["norm"] == "layer"
    args = build_parser().parse_args(["train", "--chips", "c.zarr", "--out-dir", "m"])
    assert from_namespace(TrainConfig, args).norm == "layer"
    model = build_model(UNetConfig(in_channels=3, width=4, depth=2))
    kinds = {type(m) for m in model.modules()}
    assert ChannelLayerNorm in kinds and torch.nn.BatchNorm2d not in kinds


def test_channel_layer_norm_normalises_each_pixel_over_channels() -> None:
    norm = ChannelLayerNorm(5)
    x = torch.randn(2, 5, 3, 4) * 7 + 3
    y = norm(x)
    assert torch.allclose(y.mean(dim=1), torch.zeros(2, 3, 4), atol=1e-5)
    assert torch.allclose(y.var(dim=1, unbiased=False), torch.ones(2, 3, 4), atol=1e-3)
    # one pixel's output does not depend on any other pixel or sample
    x2 = x.clone()
    x2[1] += 100.0
    x2[0, :, 0, 0] *= -1
    assert torch.equal(norm(x2)[0, :, 1:], y[0, :, 1:])


def test_frozen_batch_norm_keeps_running_statistics_but_uses_the_batch() -> None:
    model = build_model(UNetConfig(in_channels=3, width=4, depth=2, norm="batch")).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.rand(4, 3, 16, 16) * 5
    with frozen_batch_norm_statistics(model):
        out = model(x)[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" in k)
    assert torch.allclose(out, model(x)[0], atol=1e-5)  # the same batch statistics normalised it
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" in k)


def test_recalibrated_statistics_are_the_labelled_chips_statistics(data) -> None:
    model = build_model(UNetConfig(in_channels=3, width=4, depth=2, norm="batch"))
    source = ChipSource(data["labelled_images"], {"method": "logsigmoid"}, torch.device("cpu"), False)
    fitted = recalibrated(model, source, n_chips=16, batch_size=16, amp=False)
    assert fitted is not model and not fitted.training
    index = np.unique(np.linspace(0, len(source) - 1, 16).astype(int))
    first_conv = model.encoders[0][0]
    expected = first_conv(source.batch(index)).mean(dim=(0, 2, 3))
    assert torch.allclose(fitted.encoders[0][1].running_mean, expected, atol=1e-5)
    assert not torch.allclose(model.encoders[0][1].running_mean, expected, atol=1e-3)  # the original is untouched
    layer = build_model(UNetConfig(in_channels=3, width=4, depth=2))
    assert recalibrated(layer, source, 16, 16, False) is layer  # nothing to do without batch norm


def test_batch_norm_teacher_is_exported_with_recomputed_statistics(data, tmp_path) -> None:
    run(data, tmp_path, tiny("pixeldino", 4, norm="batch", export="teacher", bn_recalibration_chips=32))
    exported, meta = load_model(tmp_path / "model.safetensors")
    from safetensors.torch import load_file

    teacher = build_model(UNetConfig(**meta["architecture"]))
    teacher.load_state_dict(load_file(str(tmp_path / "checkpoint" / "teacher.safetensors")))
    source = ChipSource(data["labelled_images"], meta["normalisation"], torch.device("cpu"), False)
    fitted = recalibrated(teacher, source, 32, 16, False)
    for (name, a), b in zip(exported.state_dict().items(), fitted.state_dict().values()):
        if "running" in name:
            assert torch.allclose(a, b, atol=1e-5), name
    # and those are not the statistics the teacher carried during training (the student's)
    assert not torch.allclose(exported.encoders[0][1].running_var, teacher.encoders[0][1].running_var, atol=1e-4)


# ---------------------------------------------------------------------------------------------- schedules
def test_warm_up_and_ema_horizon_scale_with_the_run() -> None:
    short, long = TrainConfig(steps=300), TrainConfig(steps=200_000)
    assert warmup_steps_of(short) == 15 and warmup_steps_of(long) == 10_000
    assert lr_at(15, short) == pytest.approx(short.lr) and lr_at(14, short) < short.lr
    assert warmup_steps_of(TrainConfig(steps=300, warmup_steps=7)) == 7
    assert initial_ema_momentum(long) == pytest.approx(0.996)  # the reference at its length
    a, b = TrainConfig(steps=100_000), TrainConfig(steps=150_000)
    for cfg in (a, b):  # the same averaging window as a share of the run, at every stage of it
        for progress in (0.0, 0.5, 0.9):
            m = ema_momentum_at(int(progress * cfg.steps), cfg)
            assert ema_horizon_steps(m) / cfg.steps == pytest.approx(
                ema_horizon_steps(ema_momentum_at(int(progress * long.steps), long)) / long.steps, rel=1e-3
            )
    # a short run keeps the shortest window (in steps), not the reference's share of 1.6 steps
    assert ema_horizon_steps(initial_ema_momentum(short)) == pytest.approx(short.ema_min_horizon_steps)
    assert initial_ema_momentum(TrainConfig(steps=300, ema_min_horizon_steps=0)) == 0.0
    assert initial_ema_momentum(TrainConfig(steps=300, ema_momentum=0.9)) == 0.9
    assert ema_momentum_at(300, short) == pytest.approx(1.0)


def test_a_300_step_cli_run_reaches_its_peak_learning_rate(data, tmp_path, monkeypatch) -> None:
    run_train = train_module.run_train

    def from_arrays(params, chips, outputs, bands=None, resume=True, progress=True):  # the CLI's config, our chips
        return run_train(params, TrainingChips(bands=BANDS, **data), outputs, resume=resume, progress=False)

    monkeypatch.setattr(train_module, "run_train", from_arrays)
    out = tmp_path / "model"
    main(["train", "--chips", "unused.zarr", "--out-dir", str(out), "--mode", "supervised", "--steps", "300",
          "--width", "4", "--depth", "2", "--batch-labelled", "2", "--lr", "0.002", "--log-every", "1",
          "--val-every", "0", "--threads", "1", "--device", "cpu"])  # fmt: skip
    lrs = [float(r["lr"]) for r in read_log(out / "training_log.csv")]
    assert len(lrs) == 300 and max(lrs) == pytest.approx(0.002) and lrs.index(max(lrs)) == 14


# ---------------------------------------------------------------------------------------------- export
def test_best_export_compares_teacher_and_student_on_validation(data, tmp_path) -> None:
    t = trainer(data, tmp_path, tiny("pixeldino", 2, export="best"))
    good = np.array([[10.0, 1.0, 1.0]] * 19)  # IoU 0.83 everywhere
    bad = np.array([[5.0, 5.0, 5.0]] * 19)  # IoU 0.33
    assert t.choose_export({"student": ({}, good), "teacher": ({}, bad)}) == "student"
    assert t.choose_export({"student": ({}, bad), "teacher": ({}, good)}) == "teacher"
    assert t.choose_export({"student": ({}, good), "teacher": ({}, good)}) == "teacher"
    assert t.choose_export(None) == "teacher"
    t.config = dataclasses.replace(t.config, export="student")
    assert t.choose_export({"student": ({}, bad), "teacher": ({}, good)}) == "student"


def test_every_validation_logs_student_and_teacher(data, tmp_path) -> None:
    metrics = run(data, tmp_path, tiny("pixeldino", 6, val_every=2, export="best"))
    rows = [r for r in read_log(tmp_path / "training_log.csv") if r["val_iou"] != ""]
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(r["val_student_iou"] != "" and r["val_teacher_iou"] != "" for r in rows)
    assert all(math.isfinite(float(r["ema_horizon_steps"])) or r["step"] == "6" for r in rows)
    best = metrics["exported"]
    other = "teacher" if best == "student" else "student"
    cand = metrics["candidates"]
    assert (cand[best]["val_at_threshold"]["iou"] or 0) >= (cand[other]["val_at_threshold"]["iou"] or 0)


# ---------------------------------------------------------------------------------------------- paired streams
def _record_labelled(t: Trainer, steps: int) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    seen = []
    original = t.labelled_batch

    def recording():
        out = original()
        seen.append((out[0].copy(), out[1].clone(), out[2].clone()))
        return out

    t.labelled_batch = recording  # type: ignore[method-assign]
    for _ in range(steps):
        t.train_step()
    return seen


def test_beta_zero_sees_exactly_the_labelled_batches_of_beta_positive(data, tmp_path) -> None:
    streams = {}
    students = {}
    for name, mode, beta in (("b0", "pixeldino", 0.0), ("b1", "pixeldino", 0.5), ("sup", "supervised+aug", 0.1)):
        t = trainer(data, tmp_path / name, tiny(mode, 5, beta=beta))
        streams[name] = _record_labelled(t, 5)
        students[name] = t.student.state_dict()
    for (ia, xa, ya), (ib, xb, yb) in zip(streams["b0"], streams["b1"]):
        assert np.array_equal(ia, ib) and torch.equal(xa, xb) and torch.equal(ya, yb)
    for (ia, xa, _), (ib, xb, _) in zip(streams["b0"], streams["sup"]):
        assert np.array_equal(ia, ib) and torch.equal(xa, xb)
    # beta = 0 makes the student updates of supervised+aug (apart from the unused pseudo-class head) ...
    for k, v in students["b0"].items():
        if not k.startswith("pseudo_head"):
            assert torch.allclose(v, students["sup"][k], atol=1e-6), k
    # ... and beta > 0 does not
    assert not torch.allclose(students["b1"]["rts_head.weight"], students["b0"]["rts_head.weight"], atol=1e-6)


# ---------------------------------------------------------------------------------------------- ablations
@pytest.mark.parametrize("warp", ["shared", "independent"])
def test_target_warp_shared_or_independent(data, tmp_path, warp) -> None:
    t = trainer(data, tmp_path, tiny("pixeldino", 2, target_warp=warp, augment=NO_PHOTOMETRIC))
    v1 = t.unlabelled.batch(np.arange(8))
    image, target, valid = t._strong_view(v1, v1.clone())
    inside = valid.unsqueeze(1).expand_as(image)
    same = torch.allclose(image[inside], target[inside], atol=1e-5)
    assert same == (warp == "shared")
    if warp == "independent":  # the target's own warp is a real geometric transform of the target
        assert not torch.allclose(target, v1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"pseudo_resolution": "half"},
        {"target_warp": "independent"},
        {"grad_clip": 0.0},
        {"augment": {"band_gain": 0.2, "band_offset": 0.05, "band_gamma": [0.8, 1.25]}},
        {"norm": "group", "export": "student"},
    ],
)
def test_ablation_switches_train(data, tmp_path, overrides) -> None:
    metrics = run(data, tmp_path, tiny("pixeldino", 3, **overrides))
    rows = read_log(tmp_path / "training_log.csv")
    assert all(math.isfinite(float(r["loss_unlabelled"])) and float(r["loss_unlabelled"]) > 0 for r in rows)
    assert metrics["step"] == 3
    assert load_model(tmp_path / "model.safetensors")[1]["training"]["pseudo_resolution"] == overrides.get(
        "pseudo_resolution", "full"
    )


def test_per_band_photometric_changes_bands_independently() -> None:
    from pixeldino.augment import StrongAugmentConfig, photometric

    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 5, 8, 8), 0.5)
    cfg = StrongAugmentConfig(gamma_range=(1.0, 1.0), brightness=0.0, contrast=0.0, blur_p=0.0, band_gain=0.3)
    y = photometric(x, g, cfg, value_range=(0.0, 1.0))
    per_band = y[:, :, 0, 0]
    assert (per_band.std(dim=1) > 1e-3).all()  # bands of one sample differ
    assert y.min() >= 0.0 and y.max() <= 1.0
    off = StrongAugmentConfig(gamma_range=(1.0, 1.0), brightness=0.0, contrast=0.0, blur_p=0.0)
    assert torch.equal(photometric(x, torch.Generator().manual_seed(0), off, value_range=(0.0, 1.0)), x)


# ---------------------------------------------------------------------------------------------- one source of truth
def test_the_workflow_passes_every_field_through() -> None:
    from pixeldino.params import from_config

    overrides = {"export": "student", "target_warp": "independent", "warmup_fraction": 0.1, "ema_horizon": 0.02,
                 "norm": "batch"}  # fmt: skip
    section = validate_config(minimal_config() | {"train": overrides}, check_files=False)["train"]
    cfg = from_config(TrainConfig, section)
    assert (cfg.export, cfg.target_warp, cfg.warmup_fraction, cfg.ema_horizon, cfg.norm) == (
        "student",
        "independent",
        0.1,
        0.02,
        "batch",
    )
    assert dataclasses.asdict(cfg).keys() == dataclasses.asdict(train_module.TrainConfig()).keys()
