"""Fine-tuning from an exported model (train.init_from) and the frozen encoder (train.freeze_encoder_steps)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import BANDS, squares, squares_data, tiny

from pixeldino.config import validate_config
from pixeldino.errors import ConfigError, ModelError, TrainingError
from pixeldino.modelcard import read_model_card
from pixeldino.modelio import model_id, read_metadata
from pixeldino.train import Trainer, TrainingChips, TrainOutputs, run_train
from pixeldino.train.finetune import encoder_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def losses(out: Path) -> list[float]:
    with open(out / "training_log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def chips(data: dict[str, np.ndarray], bands: list[str] = BANDS) -> TrainingChips:
    return TrainingChips(bands=bands, **data)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return squares_data()


@pytest.fixture(scope="module")
def parent(data, tmp_path_factory) -> Path:
    """A model trained for 60 supervised steps on the squares task."""
    out = tmp_path_factory.mktemp("parent")
    run_train(tiny("supervised", 60, lr=1e-2), chips(data), TrainOutputs.in_dir(out), progress=False)
    return out / "model.safetensors"


def test_student_and_teacher_start_from_the_parent(data, parent, tmp_path) -> None:
    config = tiny("pixeldino", 4, init_from=str(parent))
    trainer = Trainer(chips(data), config, TrainOutputs.in_dir(tmp_path), progress=False)
    try:
        weights = load_file(str(parent))
        assert trainer.teacher is not None
        for model in (trainer.student, trainer.teacher):
            state = model.state_dict()
            assert state.keys() == weights.keys()
            assert all(torch.equal(state[k].cpu(), weights[k]) for k in weights)
        assert trainer.optimizer.state_dict()["state"] == {}  # the optimiser starts fresh
    finally:
        trainer.close_streams()


def test_fine_tuning_continues_where_the_parent_ended(data, parent, tmp_path) -> None:
    parent_losses = losses(parent.parent)
    run_train(
        tiny("supervised", 3, lr=1e-3, init_from=str(parent)), chips(data), TrainOutputs.in_dir(tmp_path / "ft"),
        progress=False,
    )  # fmt: skip
    run_train(tiny("supervised", 3, lr=1e-3), chips(data), TrainOutputs.in_dir(tmp_path / "fresh"), progress=False)
    first_fine_tune, first_fresh = losses(tmp_path / "ft")[0], losses(tmp_path / "fresh")[0]
    parent_end = float(np.mean(parent_losses[-5:]))
    # the fine-tune's first step sees the parent's final weights: its loss is the parent's final loss (another
    # batch of the same chips), far below the loss of freshly initialised weights
    assert parent_end < 0.35 * parent_losses[0]
    assert abs(first_fine_tune - parent_end) < 0.5 * parent_end + 0.02
    assert first_fine_tune < 0.35 * first_fresh
    meta = read_metadata(tmp_path / "ft" / "model.safetensors")
    assert meta["init_from"] == {"path": str(parent), "model_id": model_id(parent)}
    assert meta["training"]["init_from"] == str(parent)
    assert read_metadata(tmp_path / "fresh" / "model.safetensors")["init_from"] is None
    card = read_model_card(tmp_path / "ft" / "model.safetensors")["properties"]
    assert card["mlm:pretrained"] is True and model_id(parent) in card["mlm:pretrained_source"]
    assert card["pixeldino:init_from"] == meta["init_from"]


def test_fine_tuning_refuses_a_model_that_does_not_fit(data, parent, tmp_path) -> None:
    class Store:
        """A chip set read from a store at ``path`` whose bands are named differently."""

        path = Path("stores/other_bands.zarr")
        bands = ["B02", "B03", "B08"]

        def labelled(self, split: str = "train"):
            return (data["labelled_images"], data["labelled_masks"]) if split == "train" else (
                data["val_images"], data["val_masks"])  # fmt: skip

        def unlabelled(self):
            return data["unlabelled_images"]

    out = TrainOutputs.in_dir(tmp_path)
    with pytest.raises(ModelError) as info:
        run_train(tiny("supervised", 2, init_from=str(parent)), Store(), out, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message == (
        f"train.init_from: model {parent} has bands B02, B03, B04, the chips stores/other_bands.zarr have "
        "B02, B03, B08; train on the same bands or start from scratch (train.init_from: null)"
    )
    with pytest.raises(ModelError, match=r"has width 8, depth 2, the run on the chips in memory has width 16, "
                       r"depth 3; set train.width, train.depth to the model's"):  # fmt: skip
        run_train(tiny("supervised", 2, init_from=str(parent), width=16, depth=3), chips(data), out, progress=False)
    with pytest.raises(ModelError, match=r"normalises with logsigmoid, the run on .* with scale \(factor 0.0001\)"):
        run_train(
            tiny("supervised", 2, init_from=str(parent), normalisation={"method": "scale"}), chips(data), out,
            progress=False,
        )  # fmt: skip
    with pytest.raises(ModelError, match="model metadata not found"):
        run_train(tiny("supervised", 2, init_from=str(tmp_path / "none.safetensors")), chips(data), out, progress=False)
    assert not out.model.exists()


def test_zscore_fine_tune_takes_the_parents_statistics(data, tmp_path) -> None:
    zscore = {"method": "zscore"}
    run_train(
        tiny("supervised", 2, normalisation=zscore), chips(data), TrainOutputs.in_dir(tmp_path / "p"), progress=False
    )
    parent_spec = read_metadata(tmp_path / "p" / "model.safetensors")["normalisation"]
    li, lm = squares(48, 9)
    other = dict(data, labelled_images=(li * 1.5).astype(np.uint16), labelled_masks=lm)  # brighter chips
    run_train(
        tiny("supervised", 2, normalisation=zscore, init_from=str(tmp_path / "p" / "model.safetensors")),
        chips(other), TrainOutputs.in_dir(tmp_path / "ft"), progress=False,
    )  # fmt: skip
    assert read_metadata(tmp_path / "ft" / "model.safetensors")["normalisation"] == parent_spec
    run_train(
        tiny("supervised", 1, normalisation=zscore), chips(other), TrainOutputs.in_dir(tmp_path / "own"), progress=False
    )
    assert read_metadata(tmp_path / "own" / "model.safetensors")["normalisation"] != parent_spec


def test_frozen_encoder_stays_put_for_n_steps_then_trains(data, parent, tmp_path) -> None:
    config = tiny("supervised", 6, lr=1e-2, warmup_steps=1, init_from=str(parent), freeze_encoder_steps=3)
    trainer = Trainer(chips(data), config, TrainOutputs.in_dir(tmp_path), progress=False)
    try:
        encoder = encoder_parameters(trainer.student)
        encoder_ids = {id(p) for p in encoder}
        rest = [p for p in trainer.student.parameters() if id(p) not in encoder_ids]
        start = [p.detach().clone() for p in encoder]
        start_rest = [p.detach().clone() for p in rest]
        for _ in range(3):
            trainer.train_step()
            assert all(torch.equal(p, s) for p, s in zip(encoder, start))  # bit for bit: no update, no weight decay
        assert not all(torch.equal(p, s) for p, s in zip(rest, start_rest))  # decoder and heads trained
        trainer.train_step()  # step 4: the encoder trains
        changed = [not torch.equal(p, s) for p, s in zip(encoder, start)]
        assert sum(changed) > len(encoder) // 2
    finally:
        trainer.close_streams()


def test_resume_of_a_fine_tune_equals_an_uninterrupted_one(data, parent, tmp_path, monkeypatch) -> None:
    config = tiny("supervised", 6, init_from=str(parent), freeze_encoder_steps=4, checkpoint_every=3, val_every=3)
    run_train(config, chips(data), TrainOutputs.in_dir(tmp_path / "full"), progress=False)
    original = Trainer.train_step

    def killed_after_3(self):  # the process dies while working on step 4, with the encoder still frozen
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", killed_after_3)
    with pytest.raises(KeyboardInterrupt):
        run_train(config, chips(data), TrainOutputs.in_dir(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    run_train(config, chips(data), TrainOutputs.in_dir(tmp_path / "resumed"), progress=False)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    assert losses(tmp_path / "full") == losses(tmp_path / "resumed")

    # another freeze: the checkpoint cannot be continued
    with pytest.raises(TrainingError, match="checkpoint has freeze_encoder_steps=4"):
        run_train(
            replace(config, freeze_encoder_steps=2), chips(data), TrainOutputs.in_dir(tmp_path / "resumed"),
            progress=False,
        )  # fmt: skip


def test_checkpoints_from_before_the_fine_tuning_fields_resume(data, tmp_path) -> None:
    config = tiny("supervised", 2)
    out = TrainOutputs.in_dir(tmp_path)
    run_train(config, chips(data), out, progress=False)
    state_file = out.checkpoint_dir / "state.json"
    state = json.loads(state_file.read_text())
    for name in ("init_from", "freeze_encoder_steps", "model_license"):
        del state["config"][name]
    state_file.write_text(json.dumps(state))
    metrics = run_train(replace(config, steps=3), chips(data), out, progress=False)
    assert metrics["step"] == 3 and len(losses(tmp_path)) == 3


def test_the_config_checks_that_init_from_exists(tmp_path) -> None:
    cfg = {
        "run": "x",
        "stac": {"catalog": str(tmp_path)},
        "search": {"tiles": ["08WMA"]},
        "labels": {"file": None},
        "train": {"model": None, "init_from": "models/parent.safetensors"},
    }
    with pytest.raises(ConfigError, match=r"train.init_from: file models/parent.safetensors does not exist"):
        validate_config(json.loads(json.dumps(cfg)))
    with pytest.raises(ConfigError, match=r"train.freeze_encoder_steps: -1 is less than the minimum of 0"):
        validate_config(dict(json.loads(json.dumps(cfg)), train={"freeze_encoder_steps": -1}))


def test_a_checkpoint_does_not_continue_from_another_parent(data, tmp_path) -> None:
    from test_modelcard import save_tiny_model

    parent = save_tiny_model(tmp_path / "parent" / "model.safetensors", seed=0)
    config = tiny("supervised", 2, width=4, depth=1, n_pseudo_classes=3, init_from=str(parent))
    out = TrainOutputs.in_dir(tmp_path / "ft")
    run_train(config, chips(data), out, progress=False)
    first = model_id(parent)
    save_tiny_model(parent, seed=1)  # the same path holds another model now
    with pytest.raises(TrainingError, match=f"continues a run started from model {first}, train.init_from is model"):
        run_train(replace(config, steps=3), chips(data), out, progress=False)
    run_train(replace(config, steps=3), chips(data), out, resume=False, progress=False)
    assert read_metadata(out.model)["init_from"]["model_id"] == model_id(parent) != first
