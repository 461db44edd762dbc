"""Synthetic Arctic domain-shift benchmark: supervised baselines vs FixMatchSeg vs PixelDINO on held-out regions.

Mirrors the PixelDINO paper's protocol on scenes from :mod:`pixeldino.synthetic` (procedural tundra with REAL
RTS outlines pasted in):

* **labelled** regions Banks_Island, Horton, Tuktoyaktuk, Kolguev: train chips from scenes with seeds 0..2 (random
  windows, about half containing RTS), validation chips by regular tiling of a scene with seed 50. Validation
  and threshold calibration use ONLY these val chips;
* **unlabelled target**: Herschel and Lena scenes with seeds 100..102 (random windows, no labels used);
* **test**: Herschel and Lena scenes with seeds 1000..1002 — other scenes than the unlabelled ones, so the test
  pixels are never seen in training, not even unlabelled — plus in-domain test scenes of the labelled regions
  (seeds 1000..) to measure the domain gap. Whole scenes go through the exported model in one forward pass (the
  UNet is fully convolutional), pixel IoU of the RTS class is accumulated over a region's test scenes.

The scene data is fixed (data seeds above); ``--seeds`` vary model initialisation, chip sampling order and
augmentations. Each finished run appends one JSON line to ``--out``.

Example (the recorded run, see BENCHMARKS.md)::

    .venv/bin/python benchmarks/domain_shift.py --modes supervised supervised+aug fixmatch pixeldino \
        --seeds 0 1 2 --steps 600 --jobs 2 --out benchmarks/out/domain_shift.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pixeldino import synthetic  # noqa: E402
from pixeldino.labels import IGNORE  # noqa: E402

TRAIN_SEEDS = (0, 1, 2)
VAL_SEED = 50
UNLABELLED_SEEDS = (100, 101, 102)
TEST_SEEDS = (1000, 1001, 1002)


def _random_windows(
    scenes: list[synthetic.SyntheticScene], n: int, size: int, positive_fraction: float | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random windows from the scenes; with ``positive_fraction``, about that share holds RTS pixels."""
    images, masks = [], []
    n_pos = 0 if positive_fraction is None else int(round(n * positive_fraction))
    tries = 0
    while len(images) < n and tries < 200 * n:
        tries += 1
        sc = scenes[int(rng.integers(len(scenes)))]
        h, w = sc.mask.shape
        r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        m = sc.mask[r : r + size, c : c + size]
        if positive_fraction is not None:
            want_pos = len(images) < n_pos
            if bool(m.any()) != want_pos:
                continue
        images.append(sc.image[:, r : r + size, c : c + size])
        masks.append(m)
    return np.stack(images), np.stack(masks).astype(np.uint8)


def _tiles(scene: synthetic.SyntheticScene, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Regular non-overlapping tiling of a scene into chips."""
    h, w = scene.mask.shape
    ims, ms = [], []
    for r in range(0, h - size + 1, size):
        for c in range(0, w - size + 1, size):
            ims.append(scene.image[:, r : r + size, c : c + size])
            ms.append(scene.mask[r : r + size, c : c + size])
    return np.stack(ims), np.stack(ms).astype(np.uint8)


def build_data(args: argparse.Namespace) -> dict[str, Any]:
    """Chips for training/validation and whole test scenes (deterministic: fixed data seeds)."""
    rng = np.random.default_rng(12345)
    size, scene = args.chip_size, args.scene_size
    li, lm, vi, vm = [], [], [], []
    for region in synthetic.LABELLED_REGIONS:
        train_scenes = [synthetic.generate_scene(region, s, scene) for s in TRAIN_SEEDS]
        ims, ms = _random_windows(train_scenes, args.chips_per_region, size, 0.5, rng)
        li.append(ims)
        lm.append(ms)
        ims, ms = _tiles(synthetic.generate_scene(region, VAL_SEED, scene), size)
        vi.append(ims)
        vm.append(ms)
    ui = []
    for region in args.unlabelled_regions:
        un_scenes = [synthetic.generate_scene(region, s, scene) for s in UNLABELLED_SEEDS]
        ims, _ = _random_windows(un_scenes, args.unlabelled_per_region, size, None, rng)
        ui.append(ims)
    test = {
        region: [synthetic.generate_scene(region, s, args.test_scene_size) for s in TEST_SEEDS]
        for region in (*synthetic.HELD_OUT_REGIONS, *synthetic.LABELLED_REGIONS)
    }
    data = {
        "labelled_images": np.concatenate(li),
        "labelled_masks": np.concatenate(lm),
        "val_images": np.concatenate(vi),
        "val_masks": np.concatenate(vm),
        "unlabelled_images": np.concatenate(ui),
    }
    assert set(np.unique(data["labelled_masks"]).tolist()) <= {0, 1, IGNORE}
    return {"chips": data, "test": test}


def scene_iou(model_path: Path, scenes: list[synthetic.SyntheticScene], thresholds: dict[str, float]) -> dict[str, Any]:
    """Pixel IoU over the scenes for each named threshold (whole-scene forward passes)."""
    import torch

    from pixeldino.modelio import load_model
    from pixeldino.normalise import normalise

    model, meta = load_model(model_path)
    counts = {k: np.zeros(3) for k in thresholds}
    with torch.no_grad():
        for sc in scenes:
            x = torch.from_numpy(normalise(sc.image, meta["normalisation"], band_axis=0)[None].astype(np.float32))
            p = torch.sigmoid(model(x)[0][0, 0]).numpy()
            y = sc.mask == 1
            for k, t in thresholds.items():
                pred = p >= t
                counts[k] += [np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)]
    out = {}
    for k, (tp, fp, fn) in counts.items():
        out[k] = float(tp / (tp + fp + fn)) if tp + fp + fn else None
    return out


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (mode, seed) and evaluate it; returns the JSON record."""
    import torch

    torch.set_num_threads(job["threads"])
    from pixeldino.train import TrainConfig, train

    args = argparse.Namespace(**job["args"])
    data = build_data(args)
    cfg = TrainConfig(
        mode=job["mode"], steps=args.steps, batch_labelled=args.batch, batch_unlabelled=args.batch,
        lr=args.lr, warmup_steps=max(1, args.steps // 10), width=args.width, depth=args.depth,
        n_pseudo_classes=args.k, norm=args.norm, ema_momentum=args.ema_momentum, beta=args.beta,
        teacher_temperature=args.teacher_temperature, center_momentum=args.center_momentum,
        fixmatch_threshold=args.fixmatch_threshold, val_every=max(1, args.steps // 6),
        checkpoint_every=args.steps, log_every=10, seed=job["seed"], num_threads=job["threads"], device="cpu",
        augment=json.loads(args.strong_augment) if args.strong_augment else {},
    )  # fmt: skip
    out_dir = Path(args.work_dir) / f"{job['tag']}-{job['mode'].replace('+', '_')}-s{job['seed']}"
    t0 = time.perf_counter()
    chips = data["chips"]
    if cfg.mode not in ("fixmatch", "pixeldino"):
        chips = {k: v for k, v in chips.items() if k != "unlabelled_images"}
    metrics = train(**chips, bands=list(synthetic.BANDS), out_dir=out_dir, config=cfg, resume=False, progress=False)
    seconds = time.perf_counter() - t0
    thresholds = {"p0.5": 0.5, "calibrated": float(metrics["threshold"])}
    test = {region: scene_iou(out_dir / "model.safetensors", scenes, thresholds) for region, scenes in data["test"].items()}
    last = {}
    log_path = out_dir / "training_log.csv"
    if log_path.exists():
        import csv

        rows = list(csv.DictReader(log_path.open()))
        for key in ("usage_entropy", "teacher_entropy", "agreement", "confident_fraction", "loss_unlabelled"):
            vals = [float(r[key]) for r in rows[-5:] if r.get(key) not in (None, "")]
            if vals:
                last[key] = float(np.mean(vals))
    return {
        "tag": job["tag"],
        "mode": job["mode"],
        "seed": job["seed"],
        "steps": cfg.steps,
        "val_iou": metrics["val"]["iou"] if metrics["val"] else None,
        "val_iou_calibrated": (metrics["val_at_threshold"] or {}).get("iou"),
        "threshold": metrics["threshold"],
        "test_iou": {r: v["p0.5"] for r, v in test.items()},
        "test_iou_calibrated": {r: v["calibrated"] for r, v in test.items()},
        "monitors_last50": last,
        "train_seconds": round(seconds, 1),
        "n_chips": {k: int(len(v)) for k, v in data["chips"].items()},
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("normalisation",)},
        "data": {k: v for k, v in job["args"].items() if k not in ("work_dir", "out")},
        "machine": f"{platform.node()} {os.cpu_count()} cpu",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def summarise(path: Path, tag: str) -> str:
    """Markdown tables (mean ± std over seeds) of the records with ``tag``: IoU at p = 0.5 and at the threshold
    calibrated on the labelled-region val chips."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r["tag"] == tag]
    modes = [m for m in ("supervised", "supervised+aug", "fixmatch", "pixeldino") if any(r["mode"] == m for r in recs)]
    regions = [*synthetic.HELD_OUT_REGIONS, *synthetic.LABELLED_REGIONS]
    lines = []
    for key, title in (("test_iou", "p = 0.5"), ("test_iou_calibrated", "val-calibrated threshold")):
        lines += [f"IoU (%) at {title}, tag `{tag}`:", ""]
        lines.append("| mode | seeds | val (labelled regions) | " + " | ".join(regions) + " | held-out mean |")
        lines.append("|---|---|---|" + "---|" * (len(regions) + 1))
        for m in modes:
            rs = [r for r in recs if r["mode"] == m]
            val_key = "val_iou" if key == "test_iou" else "val_iou_calibrated"

            def fmt(vals: list[float]) -> str:
                a = 100 * np.asarray(vals, dtype=float)
                return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"

            cells = [fmt([r[val_key] or 0.0 for r in rs])]
            cells += [fmt([r[key][reg] or 0.0 for r in rs]) for reg in regions]
            cells.append(fmt([np.mean([r[key][reg] or 0.0 for reg in synthetic.HELD_OUT_REGIONS]) for r in rs]))
            lines.append(f"| {m} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def target_positive_rate(args: argparse.Namespace, tag: str) -> str:
    """Label-free check of every run of ``tag``: the share of UNLABELLED target pixels the exported model calls
    RTS (at its calibrated threshold), next to the RTS share of the labelled training chips. Slumps cover a few
    per cent of a chip at most, so a model that calls a large share of the target RTS is broken, and this is
    visible without any target label."""
    import torch

    from pixeldino.modelio import load_model
    from pixeldino.normalise import normalise

    torch.set_num_threads(args.threads or 1)
    chips = build_data(args)["chips"]
    x = torch.from_numpy(normalise(chips["unlabelled_images"], {"method": "logsigmoid"}, band_axis=1).astype(np.float32))
    lines = [f"labelled train chips: {100 * float((chips['labelled_masks'] == 1).mean()):.1f} % RTS pixels", "",
             "| run | val IoU (cal.) | unlabelled target pixels called RTS (%) |", "|---|---|---|"]  # fmt: skip
    recs = {(r["mode"], r["seed"]): r for r in map(json.loads, Path(args.out).read_text().splitlines()) if r["tag"] == tag}
    for (mode, seed), rec in sorted(recs.items()):
        run = Path(args.work_dir) / f"{tag}-{mode.replace('+', '_')}-s{seed}" / "model.safetensors"
        model, meta = load_model(run)
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(model(x[i : i + 64])[0]) for i in range(0, len(x), 64)])
        rate = float((p >= meta["threshold"]).float().mean())
        lines.append(f"| {mode} s{seed} | {100 * (rec['val_iou_calibrated'] or 0):.1f} | {100 * rate:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=["supervised", "supervised+aug", "fixmatch", "pixeldino"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--norm", default="batch", choices=["batch", "group"])
    p.add_argument("--k", type=int, default=24, help="pseudo-classes")
    p.add_argument("--ema-momentum", type=float, default=0.99)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--teacher-temperature", type=float, default=0.5)
    p.add_argument("--center-momentum", type=float, default=0.9)
    p.add_argument("--fixmatch-threshold", type=float, default=0.9)
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--scene-size", type=int, default=256)
    p.add_argument("--test-scene-size", type=int, default=320)
    p.add_argument("--chips-per-region", type=int, default=96)
    p.add_argument("--unlabelled-per-region", type=int, default=192)
    p.add_argument("--unlabelled-regions", nargs="+", default=list(synthetic.HELD_OUT_REGIONS))
    p.add_argument("--strong-augment", default=None,
                   help="JSON overrides of StrongAugmentConfig for this run (ablation), e.g. '{\"brightness\": 0}'")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (one torch thread each)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 if jobs > 1)")
    p.add_argument("--tag", default="main")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "out" / "domain_shift_runs"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "domain_shift.jsonl"))
    p.add_argument("--report", action="store_true", help="print the tables of --tag from --out and exit")
    args = p.parse_args(argv)
    if args.report:
        print(summarise(Path(args.out), args.tag))
        print(target_positive_rate(args, args.tag))
        return
    threads = args.threads or (1 if args.jobs > 1 else max(1, (os.cpu_count() or 1)))
    job_args = {k: v for k, v in vars(args).items() if k not in ("modes", "seeds", "jobs", "threads", "tag")}
    jobs = [
        {"mode": m, "seed": s, "tag": args.tag, "threads": threads, "args": job_args}
        for s in args.seeds
        for m in args.modes
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def record(rec: dict[str, Any]) -> None:
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        iou = " ".join(f"{r}={v:.3f}" for r, v in rec["test_iou"].items() if v is not None)
        print(f"[{rec['tag']}] {rec['mode']:15s} seed {rec['seed']}: val {rec['val_iou']:.3f} | {iou} "
              f"({rec['train_seconds']:.0f}s)", flush=True)

    if args.jobs <= 1:
        for job in jobs:
            record(run_one(job))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(run_one, job) for job in jobs]
            for fut in as_completed(futures):
                record(fut.result())


if __name__ == "__main__":
    main()
