"""Synthetic Arctic domain-shift benchmark: PixelDINO against its baselines and its own control, on held-out regions.

Mirrors the PixelDINO paper's protocol on scenes from :mod:`pixeldino.synthetic` (procedural tundra with REAL
RTS outlines pasted in; regions differ per band, in slump and tundra spectra, texture, phenology, water and snow):

* **labelled** regions (``--labelled-regions``): train chips from scenes with seeds 0..2 (random windows, about
  half containing RTS), validation chips by regular tiling of a scene with seed 50. Validation, threshold
  calibration, the ``best`` export and every hyperparameter choice use ONLY these val chips;
* **unlabelled target** (``--held-out-regions``): scenes with seeds 100..102 (random windows; their labels are used
  only by the ``oracle`` mode);
* **test**: ``--test-scenes`` scenes per region with seeds 1000.. — other scenes than the unlabelled ones, never
  seen in training in any form — for the held-out regions and, to measure the domain gap, the labelled regions.
  Whole scenes go through the model in one forward pass (the UNet is fully convolutional); pixel IoU of the RTS
  class is pooled over a region's test scenes. ``--scene-seed-offset`` adds to every data seed (fresh scenes).

Modes: ``supervised``, ``supervised+aug``, ``pixeldino-beta0`` (the PixelDINO pipeline with beta = 0: the control
that differs from ``pixeldino`` only by the unlabelled loss), ``fixmatch``, ``pixeldino`` and ``oracle``
(supervised+aug that also gets the labels of the target regions' unlabelled scenes: the upper bound). ``--seeds``
vary model initialisation, chip order and augmentations, and are paired across modes. Each run appends one JSON
line to ``--out``; ``--summary`` writes the paired comparison (mean differences with 95 % t intervals over seeds).

Example (the recorded run, see BENCHMARKS.md)::

    .venv/bin/python benchmarks/domain_shift.py --seeds 0 1 2 3 4 --jobs 2 --tag v2 \
        --summary benchmarks/out/domain_shift_summary.json
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pixeldino import synthetic  # noqa: E402
from pixeldino.labels import IGNORE  # noqa: E402
from pixeldino.synthetic_regions import HELD_OUT_REGIONS, LABELLED_REGIONS, REGIONS  # noqa: E402
from pixeldino.train import SEMI_MODES  # noqa: E402

TRAIN_SEEDS = (0, 1, 2)
VAL_SEED = 50
UNLABELLED_SEEDS = (100, 101, 102)
TEST_SEED = 1000
#: (benchmark mode) -> (TrainConfig.mode, overrides)
MODE_CONFIG: dict[str, tuple[str, dict[str, Any]]] = {
    "supervised": ("supervised", {}),
    "supervised+aug": ("supervised+aug", {}),
    "pixeldino-beta0": ("pixeldino", {"beta": 0.0}),
    "fixmatch": ("fixmatch", {}),
    "pixeldino": ("pixeldino", {}),
    "oracle": ("supervised+aug", {}),
}
MODES = tuple(MODE_CONFIG)


def demo_augment() -> str:
    """``train.augment`` of the demo config (milder colour changes than the paper's, chosen on validation chips)."""
    import yaml

    return json.dumps(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["train"].get("augment", {}))


PAIRS = (("pixeldino", "supervised+aug"), ("pixeldino", "pixeldino-beta0"), ("fixmatch", "supervised+aug"),
         ("pixeldino-beta0", "supervised+aug"))  # fmt: skip


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


DATA_KEYS = ("chip_size", "scene_size", "test_scene_size", "test_scenes", "chips_per_region", "unlabelled_per_region",
             "labelled_regions", "held_out_regions", "scene_seed_offset")  # fmt: skip


def build_data(args: argparse.Namespace) -> dict[str, Any]:
    """Chips for training/validation, oracle labels and whole test scenes (deterministic: fixed data seeds)."""
    rng = np.random.default_rng(12345)
    off, size, scene = args.scene_seed_offset, args.chip_size, args.scene_size
    li, lm, vi, vm = [], [], [], []
    for region in args.labelled_regions:
        train_scenes = [synthetic.generate_scene(region, off + s, scene) for s in TRAIN_SEEDS]
        ims, ms = _random_windows(train_scenes, args.chips_per_region, size, 0.5, rng)
        li.append(ims)
        lm.append(ms)
        ims, ms = _tiles(synthetic.generate_scene(region, off + VAL_SEED, scene), size)
        vi.append(ims)
        vm.append(ms)
    ui, um = [], []
    for region in args.held_out_regions:
        un_scenes = [synthetic.generate_scene(region, off + s, scene) for s in UNLABELLED_SEEDS]
        ims, ms = _random_windows(un_scenes, args.unlabelled_per_region, size, None, rng)
        ui.append(ims)
        um.append(ms)
    chips = {
        "labelled_images": np.concatenate(li), "labelled_masks": np.concatenate(lm),
        "val_images": np.concatenate(vi), "val_masks": np.concatenate(vm),
        "unlabelled_images": np.concatenate(ui), "unlabelled_masks": np.concatenate(um),
    }  # fmt: skip
    assert set(np.unique(chips["labelled_masks"]).tolist()) <= {0, 1, IGNORE}
    test: dict[str, Any] = {}
    for region in (*args.held_out_regions, *args.labelled_regions):
        scenes = [synthetic.generate_scene(region, off + TEST_SEED + k, args.test_scene_size)
                  for k in range(args.test_scenes)]  # fmt: skip
        test[region] = {
            "images": np.stack([s.image for s in scenes]), "masks": np.stack([s.mask for s in scenes]),
            "n_slumps": int(sum(len(s.slumps) for s in scenes)),
        }  # fmt: skip
    return {"chips": chips, "test": test}


#: The modules whose code makes the synthetic scenes: a change of any of them makes new data.
SCENE_SOURCES = ("synthetic.py", "synthetic_regions.py", "synthetic_terrain.py")


def cached_npz(
    args: argparse.Namespace, keys: tuple[str, ...], sources: tuple[str, ...], build: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """``build(args)`` (``{"chips": {name: array}, "test": {region: {name: array or int}}}``), cached in
    ``--work-dir`` as one .npz named by the data arguments ``keys`` and the code of the pixeldino modules
    ``sources``, so that every job of a run reads one file and changed code makes new data."""
    code = b"".join((ROOT / "pixeldino" / f).read_bytes() for f in sources)
    key = json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True) + hashlib.sha256(code).hexdigest()
    path = Path(args.work_dir) / f"data-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if not path.exists():
        data = build(args)
        flat = {f"chips/{k}": v for k, v in data["chips"].items()}
        for region, t in data["test"].items():
            flat.update({f"test/{region}/{k}": np.asarray(v) for k, v in t.items()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **flat)
        os.replace(tmp, path)
    with np.load(path) as z:
        out: dict[str, Any] = {"chips": {}, "test": {}}
        for name in z.files:
            parts = name.split("/")
            if parts[0] == "chips":
                out["chips"][parts[1]] = z[name]
            else:
                value = z[name]
                out["test"].setdefault(parts[1], {})[parts[2]] = int(value) if value.ndim == 0 else value
    return out


def cached_data(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`build_data`, cached in ``--work-dir`` by the data arguments (every job of a run reads one file)."""
    return cached_npz(args, DATA_KEYS, SCENE_SOURCES, build_data)


def scene_iou(model: Any, spec: dict[str, Any], test: dict[str, Any], thresholds: dict[str, float]) -> dict[str, Any]:
    """Pixel IoU pooled over a region's test scenes for each named threshold (whole-scene forward passes)."""
    import torch

    from pixeldino.metrics import ratio
    from pixeldino.normalise import normalise

    counts = {k: np.zeros(3) for k in thresholds}
    model.eval()
    with torch.no_grad():
        for image, mask in zip(test["images"], test["masks"]):
            x = torch.from_numpy(normalise(image, spec, band_axis=0)[None].astype(np.float32))
            p = torch.sigmoid(model(x)[0][0, 0]).numpy()
            y = mask == 1
            for k, t in thresholds.items():
                pred = p >= t
                counts[k] += [np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)]
    return {k: ratio(tp, tp + fp + fn) for k, (tp, fp, fn) in counts.items()}


def train_config(job: dict[str, Any]) -> Any:
    """The :class:`TrainConfig` of one benchmark run (``--train-json`` overrides last)."""
    from pixeldino.train import TrainConfig

    args = argparse.Namespace(**job["args"])
    mode, overrides = MODE_CONFIG[job["mode"]]
    base = dict(
        mode=mode, steps=args.steps, batch_labelled=args.batch, batch_unlabelled=args.batch, lr=args.lr,
        width=args.width, depth=args.depth, n_pseudo_classes=args.k, norm=args.norm, beta=args.beta,
        teacher_temperature=args.teacher_temperature, center_momentum=args.center_momentum,
        fixmatch_threshold=args.fixmatch_threshold, val_every=max(1, args.steps // 5), checkpoint_every=args.steps,
        log_every=10, seed=job["seed"], num_threads=job["threads"], device="cpu",
        augment=json.loads(args.strong_augment) if args.strong_augment else {},
    )  # fmt: skip
    base.update(json.loads(args.train_json) if args.train_json else {})
    base.update(overrides)
    return TrainConfig(**base)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (mode, seed); evaluate the exported model and the student on every region's test scenes."""
    import torch

    torch.set_num_threads(job["threads"])
    from pixeldino.train import Trainer, TrainingChips, TrainOutputs

    args = argparse.Namespace(**job["args"])
    data = cached_data(args)
    cfg = train_config(job)
    chips = dict(data["chips"])
    unl_images, unl_masks = chips.pop("unlabelled_images"), chips.pop("unlabelled_masks")
    if job["mode"] == "oracle":
        chips["labelled_images"] = np.concatenate([chips["labelled_images"], unl_images])
        chips["labelled_masks"] = np.concatenate([chips["labelled_masks"], unl_masks])
    out_dir = Path(args.work_dir) / f"{job['tag']}-{job['mode'].replace('+', '_')}-s{job['seed']}"
    t0 = time.perf_counter()
    training_chips = TrainingChips(
        bands=list(synthetic.BANDS), **chips, unlabelled_images=unl_images if cfg.mode in SEMI_MODES else None,
    )  # fmt: skip
    trainer = Trainer(training_chips, cfg, TrainOutputs.in_dir(out_dir), progress=False)
    metrics = trainer.run(resume=False)
    seconds = time.perf_counter() - t0
    evaluated: dict[str, Any] = {}
    for name in ("exported", "student"):
        key = metrics["exported"] if name == "exported" else "student"
        cand = metrics["candidates"][key]
        thresholds = {"p0.5": 0.5, "calibrated": float(cand["threshold"])}
        per_region = {
            r: scene_iou(trainer.final_models[key], trainer.spec, t, thresholds) for r, t in data["test"].items()
        }
        evaluated[name] = {
            "val_iou": (cand["val"] or {}).get("iou"),
            "val_iou_calibrated": (cand["val_at_threshold"] or {}).get("iou"),
            "threshold": cand["threshold"], "test_iou": {r: v["p0.5"] for r, v in per_region.items()},
            "test_iou_calibrated": {r: v["calibrated"] for r, v in per_region.items()},
        }  # fmt: skip
    last: dict[str, float] = {}
    rows = list(csv.DictReader(trainer.outputs.log_csv.open()))
    for key in ("usage_entropy", "teacher_entropy", "agreement", "confident_fraction", "loss_unlabelled"):
        vals = [float(r[key]) for r in rows[-5:] if r.get(key) not in (None, "")]
        if vals:
            last[key] = float(np.mean(vals))
    return {
        "tag": job["tag"], "mode": job["mode"], "seed": job["seed"], "steps": cfg.steps,
        "exported": metrics["exported"], **evaluated["exported"], "student": evaluated["student"],
        "monitors_last50": last, "train_seconds": round(seconds, 1),
        "n_chips": {k: int(len(v)) for k, v in data["chips"].items()},
        "n_test_slumps": {r: t["n_slumps"] for r, t in data["test"].items()},
        "config": {k: v for k, v in asdict(cfg).items() if k != "normalisation"},
        "data": {k: v for k, v in job["args"].items() if k not in ("work_dir", "out", "summary")},
        "machine": f"{platform.node()} {os.cpu_count()} cpu", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------------- reporting
def records(path: Path, tag: str) -> list[dict[str, Any]]:
    """The records of the runs tagged ``tag`` in the JSON-lines file ``path``."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if r["tag"] == tag]


def append_record(out: Path, rec: dict[str, Any]) -> None:
    """Append one run's record to the JSON-lines file ``out`` (as soon as the run ends: a crash keeps the others)."""
    with out.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")


def run_jobs(
    jobs: list[dict[str, Any]],
    workers: int,
    run_one: Callable[[dict[str, Any]], dict[str, Any]],
    record: Callable[[dict[str, Any]], None],
) -> None:
    """``run_one`` every job, here or in ``workers`` spawned processes, and ``record`` each result as it comes."""
    if workers <= 1:
        for job in jobs:
            record(run_one(job))
        return
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(run_one, job) for job in jobs]):
            record(fut.result())


def write_summary(path: str, summ: dict[str, Any]) -> None:
    """Write a ``--summary`` JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summ, indent=2) + "\n")


def add_region_options(p: argparse.ArgumentParser) -> None:
    """``--labelled-regions`` and ``--held-out-regions``: the regions split of the synthetic benchmarks."""
    p.add_argument("--labelled-regions", nargs="+", default=list(LABELLED_REGIONS), choices=list(REGIONS))
    p.add_argument("--held-out-regions", nargs="+", default=list(HELD_OUT_REGIONS), choices=list(REGIONS))


def _held_out_mean(rec: dict[str, Any], key: str, regions: list[str]) -> float:
    return 100.0 * float(np.mean([rec[key][r] or 0.0 for r in regions]))


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean of the paired differences ``a - b`` and its 95 % t interval (None with fewer than 2 pairs)."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return {"mean": float(d.mean()) if len(d) else None, "ci95": None, "n": int(len(d))}
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
    return {"mean": float(d.mean()), "ci95": [float(d.mean() - half), float(d.mean() + half)], "n": int(len(d))}


def summary(recs: list[dict[str, Any]], held_out: list[str], labelled: list[str]) -> dict[str, Any]:
    """The ``--summary`` JSON: per mode held-out mean/std/per-region IoU (%, calibrated, exported model), the same
    at p = 0.5 and for the student, in-domain IoU, the share of the oracle's gap closed, and paired differences."""
    by_mode: dict[str, dict[int, dict[str, Any]]] = {}
    for r in recs:
        by_mode.setdefault(r["mode"], {})[r["seed"]] = r

    def vals(mode: str, key: str, regions: list[str], student: bool = False) -> dict[int, float]:
        return {s: _held_out_mean(r["student"] if student else r, key, regions) for s, r in by_mode[mode].items()}

    modes: dict[str, Any] = {}
    for mode in [m for m in MODES if m in by_mode]:
        cal = vals(mode, "test_iou_calibrated", held_out)
        a = np.array(list(cal.values()))
        modes[mode] = {
            "seeds": sorted(cal), "held_out_mean": float(a.mean()),
            "held_out_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
            "per_region": {
                reg: float(np.mean([100 * (r["test_iou_calibrated"][reg] or 0) for r in by_mode[mode].values()]))
                for reg in held_out
            },
            "held_out_mean_p05": float(np.mean(list(vals(mode, "test_iou", held_out).values()))),
            "held_out_mean_student": float(np.mean(list(vals(mode, "test_iou_calibrated", held_out, True).values()))),
            "in_domain_mean": float(np.mean(list(vals(mode, "test_iou_calibrated", labelled).values()))),
            "val_iou_calibrated": float(
                np.mean([100 * (r["val_iou_calibrated"] or 0) for r in by_mode[mode].values()])
            ),
            "exported": sorted({r["exported"] for r in by_mode[mode].values()}),
        }  # fmt: skip
    out: dict[str, Any] = {"modes": modes, "paired": {}, "oracle_gap_closed": {}}
    for a_mode, b_mode in PAIRS:
        if a_mode in by_mode and b_mode in by_mode:
            seeds = sorted(set(by_mode[a_mode]) & set(by_mode[b_mode]))
            va, vb = vals(a_mode, "test_iou_calibrated", held_out), vals(b_mode, "test_iou_calibrated", held_out)
            out["paired"][f"{a_mode}-{b_mode}"] = paired([va[s] for s in seeds], [vb[s] for s in seeds])
    if "oracle" in modes and "supervised+aug" in modes:
        lo, hi = modes["supervised+aug"]["held_out_mean"], modes["oracle"]["held_out_mean"]
        for mode in ("pixeldino-beta0", "fixmatch", "pixeldino"):
            if mode in modes and hi > lo:
                out["oracle_gap_closed"][mode] = (modes[mode]["held_out_mean"] - lo) / (hi - lo)
    return out


def paired_table(title: str, paired: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines of a table of :func:`paired` differences (mean, 95 % interval, seeds), one row per name."""
    lines = ["", f"| {title} | mean | 95 % interval | seeds |", "|---|---|---|---|"]
    for name, p in paired.items():
        ci = f"[{p['ci95'][0]:+.1f}, {p['ci95'][1]:+.1f}]" if p["ci95"] else "n/a"
        lines.append(f"| {name} | {p['mean']:+.1f} | {ci} | {p['n']} |")
    return lines


def markdown(summ: dict[str, Any], recs: list[dict[str, Any]], held_out: list[str], labelled: list[str]) -> str:
    """Tables for BENCHMARKS.md from a :func:`summary`."""
    lines = [
        "| mode | seeds | val (cal.) | in-domain test | "
        + " | ".join(held_out)
        + " | **held-out mean** | at p = 0.5 | "
        "student | exported |",
        "|---|---|---|---|" + "---|" * len(held_out) + "---|---|---|---|",
    ]
    for mode, m in summ["modes"].items():
        regions = " | ".join(f"{m['per_region'][r]:.1f}" for r in held_out)
        lines.append(
            f"| {mode} | {len(m['seeds'])} | {m['val_iou_calibrated']:.1f} | {m['in_domain_mean']:.1f} | {regions} | "
            f"**{m['held_out_mean']:.1f} ± {m['held_out_std']:.1f}** | {m['held_out_mean_p05']:.1f} | "
            f"{m['held_out_mean_student']:.1f} | {', '.join(m['exported'])} |"
        )
    lines += paired_table("paired difference (held-out mean, points)", summ["paired"])
    if summ["oracle_gap_closed"]:
        lines += ["", "Share of the oracle's gap (oracle − supervised+aug) closed: " + ", ".join(
            f"{k} {100 * v:.0f} %" for k, v in summ["oracle_gap_closed"].items())]  # fmt: skip
    if recs:
        counts = recs[0]["n_test_slumps"]
        lines += ["", "Test slumps per region: " + ", ".join(f"{r} {counts[r]}" for r in (*held_out, *labelled))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    add_region_options(p)
    p.add_argument("--scene-seed-offset", type=int, default=0, help="added to every data seed: fresh scenes")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--norm", default="layer", choices=["layer", "batch", "group"])
    p.add_argument("--k", type=int, default=24, help="pseudo-classes")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--teacher-temperature", type=float, default=0.5)
    p.add_argument("--center-momentum", type=float, default=0.9)
    p.add_argument("--fixmatch-threshold", type=float, default=0.9)
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--scene-size", type=int, default=256)
    p.add_argument("--test-scene-size", type=int, default=384)
    p.add_argument("--test-scenes", type=int, default=8, help="test scenes per region")
    p.add_argument("--chips-per-region", type=int, default=96)
    p.add_argument("--unlabelled-per-region", type=int, default=192)
    p.add_argument(
        "--strong-augment",
        default=demo_augment(),
        help="JSON overrides of StrongAugmentConfig (train.augment); default: the demo's milder colour changes",
    )
    p.add_argument("--train-json", default=None, help="JSON overrides of any TrainConfig field (ablations)")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (one torch thread each)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: 1 if jobs > 1)")
    p.add_argument("--tag", default="main")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "out" / "domain_shift_runs"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "domain_shift.jsonl"))
    p.add_argument("--summary", help="write the paired comparison of --tag (all its records in --out) as JSON here")
    p.add_argument("--report", action="store_true", help="print the tables of --tag from --out and exit")
    args = p.parse_args(argv)
    if not args.report:
        threads = args.threads or (1 if args.jobs > 1 else max(1, (os.cpu_count() or 1)))
        skip = ("modes", "seeds", "jobs", "threads", "tag", "report")
        job_args = {k: v for k, v in vars(args).items() if k not in skip}
        data = cached_data(args)  # once, before the workers start
        print("test slumps per region:", {r: t["n_slumps"] for r, t in data["test"].items()}, flush=True)
        jobs = [{"mode": m, "seed": s, "tag": args.tag, "threads": threads, "args": job_args}
                for s in args.seeds for m in args.modes]  # fmt: skip
        # the longest runs first, so that two workers finish together
        jobs.sort(key=lambda j: MODE_CONFIG[j["mode"]][0] not in SEMI_MODES)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()

        def record(rec: dict[str, Any]) -> None:
            append_record(out, rec)
            iou = " ".join(f"{r}={v:.3f}" for r, v in rec["test_iou_calibrated"].items() if v is not None)
            print(f"[{rec['tag']}] {rec['mode']:15s} seed {rec['seed']}: val {rec['val_iou_calibrated'] or 0:.3f} | "
                  f"{iou} ({rec['train_seconds']:.0f}s, {rec['exported']})", flush=True)  # fmt: skip

        run_jobs(jobs, args.jobs, run_one, record)
        print(f"wall time {time.perf_counter() - t0:.0f} s", flush=True)
    recs = records(Path(args.out), args.tag)
    summ = summary(recs, args.held_out_regions, args.labelled_regions)
    print(markdown(summ, recs, args.held_out_regions, args.labelled_regions))
    if args.summary:
        write_summary(args.summary, summ)


if __name__ == "__main__":
    main()
