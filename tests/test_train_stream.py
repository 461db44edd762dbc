"""Training data larger than memory: chip sets beyond ``train.memory_budget_mb`` stream from the chip store with
background prefetching, and where the chips come from never changes a run's numbers (bit for bit)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file
from test_train import BANDS, read_log, squares_data, strip_seconds, tiny

from pixeldino.chipstore import STORE_VERSION, ChipRows, ChipStore
from pixeldino.labels import IGNORE
from pixeldino.train import StreamSampler, TrainConfig, Trainer, TrainOutputs, load_chips, run_train
from pixeldino.train.chips import MB, memory_plan
from pixeldino.train.data import BatchPrefetcher

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: What a run writes whose every tensor must agree bit for bit between two runs that should be the same run.
WEIGHTS = (
    "model.safetensors",
    "checkpoint/student.safetensors",
    "checkpoint/teacher.safetensors",
    "checkpoint/optimizer.safetensors",
    "checkpoint/state.safetensors",
)


def write_store(path: Path, data: dict[str, np.ndarray], *, ignore_value: int = IGNORE) -> Path:
    """A chip store in the layout of ``pixeldino chip`` (one chunk per chip), from in-memory chips.

    The labelled train and val chips are interleaved in the store (``labelled/split``), as the chipper writes them
    when the hold-out area lies between training windows, so the views must map rows correctly.
    """
    li, lm, vi, vm = data["labelled_images"], data["labelled_masks"], data["val_images"], data["val_masks"]
    n = len(li) + len(vi)
    split = np.zeros(n, np.uint8)
    split[1::5][: len(vi)] = 1  # every fifth chip from the second on is a val chip, the rest train
    images = np.empty((n, *li.shape[1:]), np.uint16)
    masks = np.empty((n, *lm.shape[1:]), np.uint8)
    images[split == 0], masks[split == 0] = li, lm
    images[split == 1], masks[split == 1] = vi, vm
    if ignore_value != IGNORE:
        masks[masks == IGNORE] = ignore_value
    root = zarr.open_group(str(path), mode="w")
    c, s = li.shape[1], li.shape[-1]
    root.create_array("labelled/image", shape=images.shape, chunks=(1, c, s, s), dtype="uint16")[:] = images
    root.create_array("labelled/mask", shape=masks.shape, chunks=(1, s, s), dtype="uint8")[:] = masks
    root.create_array("labelled/split", shape=(n,), chunks=(n,), dtype="uint8")[:] = split
    un = data["unlabelled_images"]
    root.create_array("unlabelled/image", shape=un.shape, chunks=(1, c, s, s), dtype="uint16")[:] = un
    root.attrs.update(
        {"pixeldino_chips": STORE_VERSION, "bands": BANDS, "chip_size": s, "ignore_value": ignore_value, "nodata": 0}
    )
    return path


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    return squares_data()


@pytest.fixture(scope="module")
def store(data, tmp_path_factory) -> Path:
    return write_store(tmp_path_factory.mktemp("stream") / "chips.zarr", data)


def run_store(store: Path, out: Path, config: TrainConfig, resume: bool = True) -> dict:
    return run_train(config, store, TrainOutputs.in_dir(out), bands=BANDS, resume=resume, progress=False)


def assert_same_run(a: Path, b: Path) -> None:
    """Every weight, optimiser and generator state bit-identical, and the same training log (wall clock aside)."""
    for name in WEIGHTS:
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (name, k)
    assert strip_seconds(read_log(a / "training_log.csv")) == strip_seconds(read_log(b / "training_log.csv"))


# ---------------------------------------------------------------------------------------------- reading
def test_chip_rows_read_exactly_what_the_array_holds(data, store, tmp_path) -> None:
    chip_store = ChipStore(store)
    images, masks = chip_store.labelled_rows("val")
    assert isinstance(images, ChipRows) and images.shape == data["val_images"].shape and len(masks) == 12
    assert images.nbytes == data["val_images"].nbytes and images.dtype == np.uint16 and images.ndim == 4
    index = np.array([7, 2, 2, 11, 0])  # unsorted, with a repeat: what a sampler crossing an epoch can ask
    assert np.array_equal(images[index], data["val_images"][index])
    assert np.array_equal(masks[index], data["val_masks"][index])
    assert np.array_equal(images[3], data["val_images"][3])
    assert np.array_equal(images[2:9], data["val_images"][2:9])
    assert images[:0].shape == (0, *data["val_images"].shape[1:])
    assert np.array_equal(images.load(), data["val_images"]) and np.array_equal(np.asarray(masks), data["val_masks"])
    assert np.array_equal(np.concatenate(list(masks.blocks(5))), data["val_masks"])
    unlabelled = chip_store.unlabelled_rows()
    assert np.array_equal(unlabelled[np.arange(47, -1, -3)], data["unlabelled_images"][47::-3])

    # a store written with another ignore value: the views map it to training's 255, as the in-memory path does
    other = write_store(tmp_path / "ignore7.zarr", data, ignore_value=7)
    memory = load_chips(other, tiny("supervised", 1, memory_budget_mb=1e6))
    streamed = load_chips(other, tiny("supervised", 1, memory_budget_mb=0))
    assert isinstance(memory.labelled_masks, np.ndarray) and isinstance(streamed.labelled_masks, ChipRows)
    assert np.array_equal(memory.labelled_masks, data["labelled_masks"])
    assert np.array_equal(streamed.labelled_masks[np.arange(48)], data["labelled_masks"])
    assert np.array_equal(np.asarray(streamed.val_masks), data["val_masks"])


def test_memory_plan_fills_the_budget_in_order() -> None:
    sizes = {"unlabelled": 50 * MB, "val": 10 * MB, "train": 30 * MB}
    assert memory_plan(sizes, 90) == {"train": True, "val": True, "unlabelled": True}
    assert memory_plan(sizes, 89) == {"train": True, "val": True, "unlabelled": False}
    assert memory_plan(sizes, 39.9) == {"train": True, "val": False, "unlabelled": False}
    assert memory_plan(sizes, 29) == {"train": False, "val": True, "unlabelled": False}  # val still fits
    assert memory_plan(sizes, 0) == {"train": False, "val": False, "unlabelled": False}
    assert memory_plan({"train": 0, "val": 0}, 0) == {"train": True, "val": True}  # nothing to hold


def test_load_chips_streams_the_sets_beyond_the_budget(data, store) -> None:
    n_train = data["labelled_images"].nbytes + data["labelled_masks"].nbytes  # 48 chips of 3 x 32^2 + masks
    n_val = data["val_images"].nbytes + data["val_masks"].nbytes
    cases = {
        0: ["train", "val", "unlabelled"],
        (n_train + n_val) / MB: ["unlabelled"],
        TrainConfig().memory_budget_mb: [],  # the default budget holds a small store in memory
    }
    for budget, streamed in cases.items():
        chips = load_chips(store, tiny("pixeldino", 1, memory_budget_mb=budget), BANDS)
        assert chips.streamed == streamed, budget
        chips.check(tiny("pixeldino", 1))
        assert np.array_equal(np.asarray(chips.labelled_images), data["labelled_images"])
        assert np.array_equal(np.asarray(chips.unlabelled_images), data["unlabelled_images"])
    # a supervised run reads no unlabelled chips at all
    assert load_chips(store, tiny("supervised", 1, memory_budget_mb=0), BANDS).unlabelled_images is None
    assert TrainConfig().memory_budget_mb == 2048 and TrainConfig().prefetch_batches == 4


def test_prefetcher_serves_the_sampler_stream_and_follows_a_restored_sampler() -> None:
    reads: list[list[int]] = []

    def read(index: np.ndarray) -> list[int]:
        reads.append(index.tolist())
        return [10 * int(i) for i in index]

    reference = StreamSampler(10, [0, 1])
    expected = [reference.next(4) for _ in range(8)]  # crosses epochs of 10 chips
    sampler = StreamSampler(10, [0, 1])
    with ThreadPoolExecutor(2) as pool:
        stream = BatchPrefetcher(sampler, 4, read, pool, depth=3)
        for k in range(3):
            index, batch = stream.next()
            assert np.array_equal(index, expected[k]) and batch == [10 * int(i) for i in expected[k]]
        state = sampler.state()
        assert len(stream._queue) == 3  # three batches read ahead of the step
        for k in range(3, 6):
            assert np.array_equal(stream.next()[0], expected[k])
        sampler.set_state(state)  # a resume: the sampler goes back, what was read ahead is stale
        stream.reset()
        for k in range(3, 8):
            index, batch = stream.next()
            assert np.array_equal(index, expected[k]) and batch == [10 * int(i) for i in expected[k]]
        # the sampler moved by someone else: the stream notices and reads the right batch itself
        sampler.next(4)
        index, batch = stream.next()
        follow = StreamSampler(10, [0, 1])
        after = [follow.next(4) for _ in range(10)][-1]
        assert np.array_equal(index, after) and batch == [10 * int(i) for i in after]
        assert stream.wait_seconds >= 0.0
    # without a pool every batch is read when asked for, and nothing more
    reads.clear()
    plain = BatchPrefetcher(StreamSampler(10, [0, 1]), 4, read, None, depth=3)
    assert [plain.next()[0].tolist() for _ in range(2)] == reads == [e.tolist() for e in expected[:2]]


# ---------------------------------------------------------------------------------------------- bit identity
def test_streamed_and_in_memory_runs_are_bit_identical(store, tmp_path) -> None:
    """PixelDINO with batch norm and zscore statistics: the chip streams, the augmentations, the statistics, the
    batch-norm recalibration and the validation all read the same chips from the store as from memory."""
    base = dict(norm="batch", normalisation={"method": "zscore"}, val_every=3, bn_recalibration_chips=20)
    runs = {
        "memory": tiny("pixeldino", 6, memory_budget_mb=1e6, **base),
        "streamed": tiny("pixeldino", 6, memory_budget_mb=0, **base),
        "streamed_unprefetched": tiny("pixeldino", 6, memory_budget_mb=0, prefetch_batches=0, **base),
    }
    metrics = {name: run_store(store, tmp_path / name, config) for name, config in runs.items()}
    assert_same_run(tmp_path / "memory", tmp_path / "streamed")
    assert_same_run(tmp_path / "memory", tmp_path / "streamed_unprefetched")
    assert metrics["memory"]["val"] == metrics["streamed"]["val"] and metrics["memory"]["val"] is not None
    assert metrics["memory"]["threshold"] == metrics["streamed"]["threshold"]


def test_streamed_resume_after_a_kill_equals_an_uninterrupted_run(store, tmp_path, monkeypatch) -> None:
    config = tiny("pixeldino", 6, checkpoint_every=3, val_every=3, memory_budget_mb=0)
    run_store(store, tmp_path / "full", config)

    original = Trainer.train_step

    def killed_after_3(self):  # the process dies while working on step 4, with batches read ahead
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", killed_after_3)
    for name in ("resumed", "resumed_in_memory"):
        with pytest.raises(KeyboardInterrupt):
            run_store(store, tmp_path / name, config)
    monkeypatch.setattr(Trainer, "train_step", original)
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    run_store(store, tmp_path / "resumed", config)
    assert_same_run(tmp_path / "full", tmp_path / "resumed")
    # the budget does not change the numbers, so a streamed run may resume with its chips in memory
    run_store(store, tmp_path / "resumed_in_memory", TrainConfig(**{**vars(config), "memory_budget_mb": 1e6}))
    assert_same_run(tmp_path / "full", tmp_path / "resumed_in_memory")


def test_trainer_streams_and_closes_its_reading_threads(store, tmp_path) -> None:
    config = tiny("pixeldino", 2, memory_budget_mb=0)
    chips = load_chips(store, config, BANDS)
    trainer = Trainer(chips, config, TrainOutputs.in_dir(tmp_path), progress=False)
    assert isinstance(trainer.labelled.images, ChipRows) and isinstance(trainer.unlabelled.images, ChipRows)
    assert isinstance(trainer.val.images, ChipRows)
    trainer.run(resume=False)
    assert trainer._pool is None and trainer.stream_l.depth == 0  # no thread outlives the run
    assert 0.0 < trainer.data_wait_seconds < trainer.elapsed
