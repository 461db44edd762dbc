"""Peak training memory against chip-store size, streamed from the store versus held in memory.

Builds synthetic chip stores (the layout ``pixeldino chip`` writes: zarr v3, one chunk per chip; smooth field plus
noise, so compression is realistic) at 1x, 4x and 16x a base size, and for every size runs a short PixelDINO
training in a fresh subprocess three times: with ``memory_budget_mb=0`` (every chip set streams from the store,
read ahead by ``prefetch_batches`` batches on background threads), with an unlimited budget (the whole store read
into memory first), and streamed without reading ahead (``prefetch_batches=0``: what reading costs when it is not
hidden behind the model). Each child reports its peak resident memory (``VmHWM`` of ``/proc/self/status``; the
parent also prints ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the largest child), the mean time per step, and the
share of step time the steps spent waiting for chips (:attr:`pixeldino.train.Trainer.data_wait_seconds`). Prints a
table and one JSON line::

    python benchmarks/train_memory.py --base-chips 500 --chip-size 64 --steps 40 --budget-mb 256

The training itself is the real :class:`pixeldino.train.Trainer` (steps, then the final validation, batch-norm
recalibration and export of :meth:`~pixeldino.train.Trainer.finish`), with a tiny UNet so that the run is short.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
#: Shares of a store's chips: labelled train, labelled val (the rest is unlabelled).
TRAIN_SHARE, VAL_SHARE = 0.4, 0.1


def write_store(path: Path, n_chips: int, chip_size: int, n_bands: int, seed: int = 0) -> dict[str, int]:
    """A chip store of ``n_chips`` chips (40 % labelled train, 10 % val, 50 % unlabelled), written block by block.

    Returns:
        The chip counts per set.
    """
    import zarr

    from pixeldino.chipstore import STORE_VERSION
    from pixeldino.labels import IGNORE

    rng = np.random.default_rng(seed)
    n_train, n_val = int(TRAIN_SHARE * n_chips), int(VAL_SHARE * n_chips)
    n_lab, n_unl = n_train + n_val, n_chips - n_train - n_val
    s, c = chip_size, n_bands
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    root = zarr.open_group(str(path), mode="w")
    arrays = {
        name: root.create_array(name, shape=(n, c, s, s), chunks=(1, c, s, s), dtype="uint16")
        for name, n in (("labelled/image", n_lab), ("unlabelled/image", n_unl))
    }
    mask_array = root.create_array("labelled/mask", shape=(n_lab, s, s), chunks=(1, s, s), dtype="uint8")
    split = np.zeros(n_lab, np.uint8)
    split[n_train:] = 1
    root.create_array("labelled/split", shape=(n_lab,), chunks=(max(1, n_lab),), dtype="uint8")[:] = split
    block = 256
    for name, n in (("labelled/image", n_lab), ("unlabelled/image", n_unl)):
        for start in range(0, n, block):
            k = min(block, n - start)
            phase = rng.uniform(0, 2 * np.pi, size=(k, c, 1, 1)).astype(np.float32)
            field = 1500 + 800 * np.sin(xx / 17 + phase) * np.cos(yy / 23 + phase)
            images = np.clip(field + rng.normal(0, 120, field.shape), 1, 10000).astype(np.uint16)
            if name == "labelled/image":
                masks = np.zeros((k, s, s), np.uint8)
                for i in range(k):  # one bright square per chip: the RTS pixels
                    w = int(rng.integers(s // 8, s // 3))
                    y, x = rng.integers(0, s - w, 2)
                    images[i, :, y : y + w, x : x + w] += 2000
                    masks[i, y : y + w, x : x + w] = 1
                masks[:, :, -2:] = IGNORE
                mask_array[start : start + k] = masks
            arrays[name][start : start + k] = images
    root.attrs.update(
        {"pixeldino_chips": STORE_VERSION, "bands": BANDS[:c], "chip_size": s, "ignore_value": IGNORE, "nodata": 0}
    )
    return {"train": n_train, "val": n_val, "unlabelled": n_unl}


def _vm_hwm_mb() -> float:
    """Peak resident set size of this process in MB (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def child(args: argparse.Namespace) -> dict[str, object]:
    """One training run on ``args.store``: peak memory, time per step and the share spent waiting for chips."""
    import torch

    from pixeldino.train import TrainConfig, Trainer, TrainOutputs, load_chips

    config = TrainConfig(
        mode="pixeldino", steps=args.warmup + args.steps, batch_labelled=args.batch, batch_unlabelled=args.batch,
        warmup_steps=1, width=args.width, depth=3, n_pseudo_classes=8, val_every=0, checkpoint_every=0,
        log_every=10, device=args.device, num_threads=args.threads, memory_budget_mb=args.memory_budget_mb,
        prefetch_batches=args.prefetch,
    )  # fmt: skip
    rss_start = _vm_hwm_mb()
    t0 = time.perf_counter()
    chips = load_chips(args.store, config)
    chips.check(config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(chips, config, TrainOutputs.in_dir(tmp), progress=False)
        trainer.outputs.make_dirs()
        load_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            trainer.train_step()
        wait0 = trainer.data_wait_seconds
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        trainer.check_finite()  # one sync at the end, as the loop does every few steps
        train_s = time.perf_counter() - t0
        wait_s = trainer.data_wait_seconds - wait0
        trainer.close_streams()
        trainer.elapsed = train_s
        t0 = time.perf_counter()
        metrics = trainer.finish()  # final validation (and recalibration) reads the val chips too
        finish_s = time.perf_counter() - t0
    return {
        "streamed": chips.streamed,
        "peak_rss_mb": round(_vm_hwm_mb(), 1),
        "rss_before_mb": round(rss_start, 1),
        "load_s": round(load_s, 2),
        "step_s": round(train_s / args.steps, 4),
        "data_wait_share": round(wait_s / train_s, 4),
        "finish_s": round(finish_s, 2),
        "exported": metrics["exported"],
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-chips", type=int, default=500, help="chips of the 1x store (all sets together)")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--bands", type=int, default=7)
    p.add_argument("--steps", type=int, default=40, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, default=16, help="labelled and unlabelled chips per step each")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training")
    p.add_argument("--prefetch", type=int, default=4, help="train.prefetch_batches")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--budget-mb", type=float, default=256, help="the budget the 'auto' column reports on")
    p.add_argument("--workdir", type=Path, default=None, help="where to build the stores (default: a temp dir)")
    # the child mode: one training run, JSON on stdout
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--memory-budget-mb", type=float, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = child(args)
        print(json.dumps(result))
        return result

    from pixeldino.train.chips import MB

    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for scale in args.scales:
            n = args.base_chips * scale
            store = Path(tmp) / f"chips_{scale}x.zarr"
            t0 = time.perf_counter()
            counts = write_store(store, n, args.chip_size, args.bands)
            build_s = time.perf_counter() - t0
            disk_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / MB
            memory_mb = n * args.bands * args.chip_size**2 * 2 / MB + (counts["train"] + counts["val"]) * (
                args.chip_size**2 / MB
            )
            row: dict[str, object] = {
                "scale": scale, "chips": n, "in_memory_mb": round(memory_mb, 1), "on_disk_mb": round(disk_mb, 1),
                "build_s": round(build_s, 1), "auto": "stream" if memory_mb > args.budget_mb else "memory",
            }  # fmt: skip
            for path, budget, prefetch in (
                ("streamed", 0.0, args.prefetch), ("memory", 1e9, args.prefetch), ("streamed_sync", 0.0, 0),
            ):  # fmt: skip
                cmd = [
                    sys.executable, __file__, "--child", "--store", str(store), "--memory-budget-mb", str(budget),
                    "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                    "--width", str(args.width), "--threads", str(args.threads), "--prefetch", str(prefetch),
                    "--device", args.device,
                ]  # fmt: skip
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                row[path] = result
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    children_max_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e6
    print(
        "\n| store | chips | in memory | on disk | peak RSS streamed | peak RSS in memory | s/step streamed "
        "| s/step in memory | data wait streamed | data wait in memory | data wait streamed, no prefetch "
        "| auto (budget) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, m, n = r["streamed"], r["memory"], r["streamed_sync"]
        assert isinstance(s, dict) and isinstance(m, dict) and isinstance(n, dict)
        print(
            f"| {r['scale']}x | {r['chips']:,} | {r['in_memory_mb']:.0f} MB | {r['on_disk_mb']:.0f} MB "
            f"| {s['peak_rss_mb']:.0f} MB | {m['peak_rss_mb']:.0f} MB | {s['step_s']:.3f} | {m['step_s']:.3f} "
            f"| {100 * s['data_wait_share']:.1f} % | {100 * m['data_wait_share']:.1f} % "
            f"| {100 * n['data_wait_share']:.1f} % | {r['auto']} ({args.budget_mb:.0f} MB) |"
        )
    summary = {"rows": rows, "children_max_rss_mb": round(children_max_mb, 1), "args": {
        k: v for k, v in vars(args).items() if k not in ("child", "store", "memory_budget_mb", "workdir")}}  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
