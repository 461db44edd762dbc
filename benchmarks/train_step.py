"""Seconds per training step, and the share spent outside the model (batch assembly + augmentation).

Runs the real :class:`pixeldino.train.Trainer` on synthetic uint16 chips and prints one JSON line::

    python benchmarks/train_step.py --chip-size 64 --batch-labelled 8 --batch-unlabelled 8 --steps 5
    python benchmarks/train_step.py --chip-size 192 --batch-labelled 16 --batch-unlabelled 16 --device cuda

Three timings, each the median over ``--steps`` after ``--warmup`` untimed steps:

* ``step_s``: one full ``Trainer.train_step`` (what training costs);
* ``model_s``: the model work of a step alone on pre-built tensors of the same shapes (teacher forward, student
  forward + backward, clipping, AdamW, EMA update);
* ``data_aug_s``: the data path alone (gather + copy + normalise both streams, weak and strong augmentation).

``outside_share = 1 - model_s / step_s`` is the fraction of the step not spent in the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pixeldino.augment import encode_label, strong_augment, weak_augment  # noqa: E402
from pixeldino.train import SEMI_MODES, TrainConfig, Trainer, TrainingChips, TrainOutputs, masks_to_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--batch-labelled", type=int, default=8)
    p.add_argument("--batch-unlabelled", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--mode", default="pixeldino", choices=["supervised", "supervised+aug", "fixmatch", "pixeldino"])
    p.add_argument("--bands", type=int, default=7)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-amp", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)

    s, c = args.chip_size, args.bands
    rng = np.random.default_rng(0)
    n_l, n_u = 4 * args.batch_labelled, 4 * args.batch_unlabelled
    labelled = rng.integers(1, 8000, size=(n_l, c, s, s), dtype=np.uint16)
    masks = (rng.random((n_l, s, s)) < 0.1).astype(np.uint8)
    unlabelled = rng.integers(1, 8000, size=(n_u, c, s, s), dtype=np.uint16)
    config = TrainConfig(
        mode=args.mode, steps=10**6, batch_labelled=args.batch_labelled, batch_unlabelled=args.batch_unlabelled,
        warmup_steps=10, width=args.width, depth=args.depth, device=args.device, num_threads=args.threads,
        amp=not args.no_amp, compile=args.compile,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        chips = TrainingChips(
            bands=[f"b{i}" for i in range(c)], labelled_images=labelled, labelled_masks=masks,
            unlabelled_images=unlabelled,
        )  # fmt: skip
        trainer = Trainer(chips, config, TrainOutputs.in_dir(tmp), progress=False)
    dev = trainer.device
    step_s = _median_time(trainer.train_step, args.steps, args.warmup, dev)

    semi = args.mode in SEMI_MODES
    g = trainer.gen_l  # the unlabelled stream (gen_u) costs the same; one generator keeps this simple

    def data_path() -> None:
        idx = trainer.sampler_l.next(args.batch_labelled)
        x, y = trainer.labelled.batch(idx), masks_to_device(masks, idx, dev)
        if args.mode != "supervised":
            x, y = weak_augment(x, y, generator=g)
            strong_augment(x, encode_label(y), g, trainer.aug_config, trainer.value_range)
        if semi:
            xu = trainer.unlabelled.batch(trainer.sampler_u.next(args.batch_unlabelled))
            (v1,) = weak_augment(xu, generator=g)
            k = config.n_pseudo_classes if args.mode == "pixeldino" else 2
            strong_augment(v1, torch.rand(v1.shape[0], k, s, s, device=dev), g, trainer.aug_config, trainer.value_range)

    data_aug_s = _median_time(data_path, args.steps, args.warmup, dev)

    x_l = trainer.labelled.batch(np.arange(args.batch_labelled))
    x_u = trainer.unlabelled.batch(np.arange(args.batch_unlabelled)) if semi else None
    autocast = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=trainer.amp)

    def model_work() -> None:
        x = x_l
        if semi:
            with torch.no_grad(), autocast:
                trainer.teacher(x_u)
            x = torch.cat([x_l, x_u])
        with autocast:
            rts, pseudo = trainer.forward(x)
        loss = rts.float().mean() + pseudo.float().mean()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.student.parameters(), 1.0)
        trainer.optimizer.step()
        if semi:
            with torch.no_grad():
                torch._foreach_lerp_(trainer._ema_pairs[0], trainer._ema_pairs[1], 0.004)

    model_s = _median_time(model_work, args.steps, args.warmup, dev)
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "mode": args.mode,
        "chip_size": s,
        "batch_labelled": args.batch_labelled,
        "batch_unlabelled": args.batch_unlabelled if semi else 0,
        "bands": c,
        "width": args.width,
        "depth": args.depth,
        "amp": trainer.amp,
        "steps_timed": args.steps,
        "step_s": round(step_s, 4),
        "model_s": round(model_s, 4),
        "data_aug_s": round(data_aug_s, 4),
        "outside_share": round(max(0.0, 1.0 - model_s / step_s), 3),
        "torch": torch.__version__,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
