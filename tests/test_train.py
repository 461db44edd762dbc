"""Training on a synthetic, learnable task: bright squares (RTS) on noise."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pixeldino.errors import TrainingError
from pixeldino.metrics import calibrate_threshold, confusion_metrics
from pixeldino.modelio import load_model, read_metadata
from pixeldino.train import (
    TrainConfig,
    Trainer,
    TrainingChips,
    TrainOutputs,
    ema_momentum_at,
    lr_at,
    run_train,
)
from pixeldino.train import trainer as trainer_module

BANDS = ["B02", "B03", "B04"]
SIZE = 32


def squares(n: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """uint16 noise chips with 1-2 bright squares each; mask 1 on the squares, a 255 ignore border on some."""
    rng = np.random.default_rng(seed)
    images = rng.integers(500, 1500, size=(n, len(BANDS), size, size)).astype(np.uint16)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            s = int(rng.integers(5, 10))
            y, x = rng.integers(0, size - s, 2)
            images[i, :, y : y + s, x : x + s] += np.array([3000, 1500, 300], np.uint16)[:, None, None]
            masks[i, y : y + s, x : x + s] = 1
        if i % 4 == 0:
            masks[i, :, -3:] = 255
    return images, masks


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def squares_data() -> dict[str, np.ndarray]:
    """The arrays of :class:`TrainingChips` for the squares task: 48 labelled, 12 validation, 48 unlabelled."""
    li, lm = squares(48, 0)
    vi, vm = squares(12, 1)
    ui, _ = squares(48, 2)
    return {"labelled_images": li, "labelled_masks": lm, "val_images": vi, "val_masks": vm, "unlabelled_images": ui}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return squares_data()


def tiny(mode: str, steps: int, **kw: object) -> TrainConfig:
    base = dict(
        mode=mode, steps=steps, batch_labelled=8, batch_unlabelled=8, warmup_steps=max(1, steps // 10), width=8,
        depth=2, n_pseudo_classes=6, val_every=steps, checkpoint_every=steps, log_every=1, seed=0, num_threads=1,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def run(data: dict[str, np.ndarray], out: Path, config: TrainConfig, resume: bool = True) -> dict:
    """Train on the in-memory chips ``data`` with everything written to ``out`` (the CLI's layout)."""
    chips = TrainingChips(bands=BANDS, **data)
    return run_train(config, chips, TrainOutputs.in_dir(out), resume=resume, progress=False)


def read_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def strip_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Log rows without the wall-clock column, which legitimately differs between runs."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_supervised_learns_the_squares(data, tmp_path) -> None:
    metrics = run(data, tmp_path, tiny("supervised", 100, lr=1e-2, val_every=50))
    assert metrics["val"]["iou"] > 0.5
    meta = read_metadata(tmp_path / "model.json")
    assert 0.05 <= meta["threshold"] <= 0.95 and meta["threshold"] == metrics["threshold"]
    assert meta["bands"] == BANDS and meta["chip_size"] == SIZE and meta["mode"] == "supervised"
    assert meta["normalisation"] == {"method": "logsigmoid"}
    assert meta["training"]["steps"] == 100 and meta["metrics"]["exported"] == "student"
    assert meta["metrics"]["val_at_threshold"]["iou"] >= metrics["val"]["iou"] - 1e-9
    rows = read_log(tmp_path / "training_log.csv")
    assert [int(r["step"]) for r in rows] == list(range(1, 101))
    assert rows[49]["val_iou"] != "" and rows[48]["val_iou"] == ""
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    model, _ = load_model(tmp_path / "model.safetensors")
    assert model.config.width == 8


def test_pixeldino_runs_and_exports_the_teacher(data, tmp_path) -> None:
    metrics = run(data, tmp_path, tiny("pixeldino", 8, export="teacher"))
    rows = read_log(tmp_path / "training_log.csv")
    for r in rows:
        assert math.isfinite(float(r["loss_unlabelled"])) and float(r["loss_unlabelled"]) > 0
        for monitor in ("usage_entropy", "teacher_entropy", "agreement"):
            assert 0.0 <= float(r[monitor]) <= 1.0 + 1e-6
    exported = load_file(str(tmp_path / "model.safetensors"))
    teacher = load_file(str(tmp_path / "checkpoint" / "teacher.safetensors"))
    student = load_file(str(tmp_path / "checkpoint" / "student.safetensors"))
    assert exported.keys() == teacher.keys()
    assert all(torch.equal(exported[k], teacher[k]) for k in exported)
    assert not all(torch.equal(exported[k], student[k]) for k in exported)
    meta = read_metadata(tmp_path / "model.json")
    assert meta["mode"] == "pixeldino" and meta["metrics"]["exported"] == "teacher"
    assert meta["training"]["student_temperature"] == 1.0 and "threshold" in meta
    assert metrics["step"] == 8
    assert set(metrics["candidates"]) == {"student", "teacher"}
    assert all(r["val_student_iou"] != "" and r["val_teacher_iou"] != "" for r in rows if r["val_iou"] != "")


@pytest.mark.parametrize("mode", ["supervised+aug", "fixmatch"])
def test_other_modes_run(data, tmp_path, mode) -> None:
    metrics = run(data, tmp_path, tiny(mode, 4, fixmatch_threshold=[0.6, 0.6]))
    rows = read_log(tmp_path / "training_log.csv")
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    if mode == "fixmatch":
        assert all(0.0 <= float(r["confident_fraction"]) <= 1.0 for r in rows)
    assert metrics["exported"] in (("teacher", "student") if mode == "fixmatch" else ("student",))


def test_same_seed_gives_the_same_loss_curve(data, tmp_path) -> None:
    curves = []
    for name in ("a", "b"):
        run(data, tmp_path / name, tiny("pixeldino", 5))
        curves.append(strip_seconds(read_log(tmp_path / name / "training_log.csv")))
    assert curves[0] == curves[1]
    run(data, tmp_path / "c", tiny("pixeldino", 5, seed=1))
    other = strip_seconds(read_log(tmp_path / "c" / "training_log.csv"))
    assert other != curves[0]


def test_resume_after_a_kill_equals_an_uninterrupted_run(data, tmp_path, monkeypatch) -> None:
    config = tiny("pixeldino", 6, checkpoint_every=3, val_every=3)
    run(data, tmp_path / "full", config)

    original = Trainer.train_step

    def killed_after_3(self):  # the process dies while working on step 4
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", killed_after_3)
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path / "resumed", config)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    run(data, tmp_path / "resumed", config, resume=True)

    for name in ("model.safetensors", "checkpoint/student.safetensors", "checkpoint/optimizer.safetensors"):
        a = load_file(str(tmp_path / "full" / name))
        b = load_file(str(tmp_path / "resumed" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k].double(), b[k].double(), atol=1e-6, rtol=0), (name, k)
    full_log = strip_seconds(read_log(tmp_path / "full" / "training_log.csv"))
    assert full_log == strip_seconds(read_log(tmp_path / "resumed" / "training_log.csv"))

    with pytest.raises(TrainingError, match="checkpoint has lr"):
        run(data, tmp_path / "resumed", replace(config, lr=5e-4))


def test_no_positive_pixels_is_an_error(data, tmp_path) -> None:
    bad = dict(data, labelled_masks=np.zeros_like(data["labelled_masks"]))
    with pytest.raises(TrainingError, match="no RTS pixels"):
        run(bad, tmp_path, tiny("supervised", 2))


def test_input_errors(data, tmp_path) -> None:
    with pytest.raises(TrainingError, match="no labelled training chips"):
        empty = dict(data, labelled_images=data["labelled_images"][:0], labelled_masks=data["labelled_masks"][:0])
        run(empty, tmp_path, tiny("supervised", 2))
    with pytest.raises(TrainingError, match="needs unlabelled chips"):
        run(dict(data, unlabelled_images=None), tmp_path, tiny("pixeldino", 2))
    masks = data["labelled_masks"].copy()
    masks[0, 0, 0] = 7
    with pytest.raises(TrainingError, match="only 0, 1 and 255"):
        run(dict(data, labelled_masks=masks), tmp_path, tiny("supervised", 2))
    with pytest.raises(TrainingError, match="multiple of 64"):
        run(data, tmp_path, tiny("supervised", 2, depth=6))
    with pytest.raises(TrainingError, match="is not one of"):
        run(data, tmp_path, tiny("dino", 2))


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch) -> None:
    original = trainer_module.labelled_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(trainer_module, "labelled_loss", poisoned)
    with pytest.raises(TrainingError) as info:
        run(data, tmp_path, tiny("supervised", 10, checkpoint_every=2))
    message = str(info.value)
    assert "step 5" in message and "lower train.lr" in message and "\n" not in message
    state = (tmp_path / "checkpoint" / "state.json").read_text()
    assert '"step": 4' in state
    student = load_file(str(tmp_path / "checkpoint" / "student.safetensors"))
    assert all(torch.isfinite(v.double()).all() for v in student.values())
    assert not (tmp_path / "model.safetensors").exists()


def test_run_train_reads_a_chip_set_and_checks_bands_and_emptiness(data, tmp_path) -> None:
    class FakeStore:
        """Reads like :class:`pixeldino.chipstore.ChipStore`; ``empty`` has no labelled chips, neither has val."""

        def __init__(self, path: Path) -> None:
            self.path = path
            self.bands = BANDS
            self.empty = path.name == "empty"

        def labelled(self, split: str = "train"):
            if self.empty or split == "val":
                return data["labelled_images"][:0], data["labelled_masks"][:0]
            return data["labelled_images"], data["labelled_masks"]

        def unlabelled(self):
            return data["unlabelled_images"]

    out = TrainOutputs.in_dir(tmp_path / "out")
    with pytest.raises(TrainingError, match="expects B02, B03, B08"):
        run_train(tiny("supervised", 2), FakeStore(tmp_path / "store"), out, bands=["B02", "B03", "B08"])
    with pytest.raises(TrainingError, match="empty: the chip store has no labelled training chips"):
        run_train(tiny("supervised", 2), FakeStore(tmp_path / "empty"), out)
    metrics = run_train(tiny("pixeldino", 2), FakeStore(tmp_path / "store"), out, bands=BANDS, progress=False)
    assert metrics["val"] is None and metrics["threshold"] == 0.5


def test_every_output_goes_where_the_caller_says(data, tmp_path) -> None:
    outputs = TrainOutputs(
        model=tmp_path / "models" / "m.safetensors", log_csv=tmp_path / "logs" / "log.csv",
        curves_png=tmp_path / "plots" / "curves.png", work_dir=tmp_path / "work",
    )  # fmt: skip
    chips = TrainingChips(bands=BANDS, **data)
    run_train(tiny("pixeldino", 2), chips, outputs, progress=False)
    assert read_metadata(tmp_path / "models" / "m.json")["mode"] == "pixeldino"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["m.json", "m.safetensors", "m.stac.json"]
    assert len(read_log(outputs.log_csv)) == 2 and outputs.curves_png.stat().st_size > 1000
    assert outputs.checkpoint_dir == tmp_path / "work" / "checkpoint"
    assert (outputs.checkpoint_dir / "state.json").exists()
    assert {p.name for p in (tmp_path / "work").iterdir()} <= {
        "checkpoint",
        "tensorboard",
        "training_log.in-progress.csv",
    }


def test_zscore_statistics_are_computed_and_stored(data, tmp_path) -> None:
    run(data, tmp_path, tiny("supervised", 2, normalisation={"method": "zscore"}))
    spec = read_metadata(tmp_path / "model.json")["normalisation"]
    assert spec["method"] == "zscore" and len(spec["center"]) == len(BANDS) and all(s > 0 for s in spec["scale"])


def test_schedules_and_threshold_calibration() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3)
    assert lr_at(5, cfg) == pytest.approx(5e-4) and lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(100, cfg) == pytest.approx(4e-5)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))
    assert ema_momentum_at(100, cfg) == pytest.approx(1.0)
    counts = np.array([[10, 10, 0]] * 19, dtype=float)
    counts[12] = [10, 1, 1]  # threshold 0.65
    assert calibrate_threshold(counts) == 0.65
    assert calibrate_threshold(np.zeros((19, 3))) == 0.5
    assert confusion_metrics(0, 0, 0)["iou"] is None


def test_augmentation_overrides_reach_the_trainer(data, tmp_path) -> None:
    from pixeldino.errors import TrainingError
    from pixeldino.train import strong_augment_config

    cfg = strong_augment_config({"brightness": 0.1, "gamma_range": [0.9, 1.11]})
    assert cfg.brightness == 0.1 and cfg.gamma_range == (0.9, 1.11) and cfg.contrast == 0.5
    with pytest.raises(TrainingError, match="unknown augmentation setting"):
        strong_augment_config({"brightnes": 0.1})
    # no colour change at all: the photometric part of the labelled augmentation is the identity
    run(
        data,
        tmp_path / "m",
        tiny(
            "supervised+aug", 2, augment={"brightness": 0.0, "contrast": 0.0, "gamma_range": [1.0, 1.0], "blur_p": 0.0}
        ),
    )
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["training"]["augment"]["brightness"] == 0.0


def test_tensorboard_event_log_has_the_loss_terms_and_monitors(data, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(data, tmp_path / "tb", tiny("pixeldino", 4, val_every=2, ema_momentum=0.9))
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = read_log(tmp_path / "tb" / "training_log.csv")
    assert len(rows) == 4
    for column in ("loss", "loss_labelled", "loss_unlabelled", "usage_entropy", "teacher_entropy", "agreement"):
        matching = [t for t in tags if t.split("/")[-1] == column]
        assert matching, (column, sorted(tags))
        values = [e.value for e in acc.Scalars(matching[0])]
        assert values == pytest.approx([float(r[column]) for r in rows], rel=1e-4)
    assert any(t.endswith("iou") for t in tags)
