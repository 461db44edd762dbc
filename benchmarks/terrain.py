"""Does terrain add information? Held-out IoU with and without DEM layers on the synthetic Arctic benchmark.

The scenes of :mod:`pixeldino.synthetic` (the same regions, seeds and chips as ``benchmarks/domain_shift.py``)
carry the slump signal in their reflectance as before; each also has a DEM (30 m, ~1 m noise; slumps carved in
as a lowered floor under a headwall scarp with a runout lobe, for ``dem_slump_share`` of them; hills, steep-sided
valleys and flat lakes elsewhere). The benchmark runs the real auxiliary-layer path on every scene:
:func:`pixeldino.synthetic.write_scene` + :func:`pixeldino.synthetic.write_dem`, then
:func:`pixeldino.auxlayers.add_aux_layers` with ``aux.dem: file`` (bilinear warp to 10 m, slope, relative
elevation), and reads the bands back from the COG.

Two arms, paired by seed, differing ONLY in the input bands:

* ``spectral``: B02-B08 (what a model without ``aux`` gets);
* ``terrain``: B02-B08 + ``slope`` + ``relative_elevation`` (the same chips: windows cut once, bands selected).

Everything else is the same: chips (labelled regions' windows, val tiling), model, steps, optimiser, seed (which
sets initialisation and chip order), supervised mode (no colour augmentation, which would also jitter the terrain
channels). Each run is evaluated on whole test scenes of every region (pixel IoU at the val-calibrated threshold,
exported model); ``--summary`` writes mean ± sd per arm and the paired difference terrain − spectral with its
95 % t interval.

Example (the recorded run, see BENCHMARKS.md)::

    .venv/bin/python benchmarks/terrain.py --seeds 0 1 2 --jobs 2 --tag t1 \
        --summary benchmarks/out/terrain_summary.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import domain_shift  # noqa: E402  (its chip sampling, scene IoU and paired statistics)

from pixeldino import synthetic  # noqa: E402

AUX_LAYERS = ("slope", "relative_elevation")
ARMS = {"spectral": len(synthetic.BANDS), "terrain": len(synthetic.BANDS) + len(AUX_LAYERS)}
DATA_KEYS = ("chip_size", "scene_size", "test_scene_size", "test_scenes", "chips_per_region", "labelled_regions",
             "held_out_regions", "scene_seed_offset", "relative_radius_m")  # fmt: skip


class _Scene:
    """What :func:`domain_shift._random_windows` and ``_tiles`` read: the image (all bands) and the mask."""

    def __init__(self, image: np.ndarray, mask: np.ndarray) -> None:
        self.image, self.mask = image, mask


def scene_with_terrain(region: str, seed: int, size: int, work: Path, radius_m: float) -> tuple[_Scene, int]:
    """A synthetic scene with its slope and relative elevation from its DEM, through the auxiliary-layer path."""
    import rasterio

    from pixeldino.auxlayers import AuxParams, add_aux_layers

    sc = synthetic.generate_scene(region, seed, size)
    stem = work / f"{region}_{seed}_{size}"
    scene, dem = synthetic.write_scene(sc, f"{stem}.tif"), synthetic.write_dem(sc, f"{stem}_dem.tif")
    add_aux_layers(scene, AuxParams(dem="file", dem_file=str(dem), terrain=list(AUX_LAYERS),
                                    relative_radius_m=radius_m))  # fmt: skip
    with rasterio.open(scene) as src:
        assert src.descriptions == (*synthetic.BANDS, *AUX_LAYERS), src.descriptions
        image = src.read()
    scene.unlink()
    dem.unlink()
    return _Scene(image, sc.mask), len(sc.slumps)


def build_data(args: argparse.Namespace) -> dict[str, Any]:
    """Chips and test scenes with all nine bands (deterministic: the data seeds of domain_shift)."""
    rng = np.random.default_rng(12345)
    off, size, scene_px = args.scene_seed_offset, args.chip_size, args.scene_size
    work = Path(args.work_dir) / f"scenes-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    li, lm, vi, vm = [], [], [], []
    for region in args.labelled_regions:
        train = [scene_with_terrain(region, off + s, scene_px, work, args.relative_radius_m)[0]
                 for s in domain_shift.TRAIN_SEEDS]  # fmt: skip
        ims, ms = domain_shift._random_windows(train, args.chips_per_region, size, 0.5, rng)  # type: ignore[arg-type]
        li.append(ims)
        lm.append(ms)
        val, _ = scene_with_terrain(region, off + domain_shift.VAL_SEED, scene_px, work, args.relative_radius_m)
        ims, ms = domain_shift._tiles(val, size)  # type: ignore[arg-type]
        vi.append(ims)
        vm.append(ms)
    test: dict[str, Any] = {}
    for region in (*args.held_out_regions, *args.labelled_regions):
        made = [scene_with_terrain(region, off + domain_shift.TEST_SEED + k, args.test_scene_size, work,
                                   args.relative_radius_m) for k in range(args.test_scenes)]  # fmt: skip
        test[region] = {
            "images": np.stack([s.image for s, _ in made]), "masks": np.stack([s.mask for s, _ in made]),
            "n_slumps": int(sum(n for _, n in made)),
        }  # fmt: skip
    work.rmdir()
    chips = {"labelled_images": np.concatenate(li), "labelled_masks": np.concatenate(lm),
             "val_images": np.concatenate(vi), "val_masks": np.concatenate(vm)}  # fmt: skip
    return {"chips": chips, "test": test}


def cached_data(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`build_data`, cached in ``--work-dir`` by the data arguments and the sources that make the data."""
    sources = (*domain_shift.SCENE_SOURCES, "terrain.py", "auxlayers.py", "dem.py")
    return domain_shift.cached_npz(args, DATA_KEYS, sources, build_data)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (arm, seed) on the chips' first ``ARMS[arm]`` bands; evaluate on every region's test scenes."""
    import torch

    torch.set_num_threads(job["threads"])
    from pixeldino.train import TrainConfig, Trainer, TrainingChips, TrainOutputs

    args = argparse.Namespace(**job["args"])
    data = cached_data(args)
    n = ARMS[job["arm"]]
    bands = [*synthetic.BANDS, *AUX_LAYERS][:n]
    chips = {k: (v[:, :n] if k.endswith("images") else v) for k, v in data["chips"].items()}
    cfg = TrainConfig(
        mode="supervised", steps=args.steps, batch_labelled=args.batch, lr=args.lr, width=args.width,
        depth=args.depth, norm="layer", val_every=max(1, args.steps // 5), checkpoint_every=args.steps,
        log_every=10, seed=job["seed"], num_threads=job["threads"], device="cpu",
    )  # fmt: skip
    out_dir = Path(args.work_dir) / f"{job['tag']}-{job['arm']}-s{job['seed']}"
    t0 = time.perf_counter()
    trainer = Trainer(TrainingChips(bands=bands, **chips), cfg, TrainOutputs.in_dir(out_dir), progress=False)
    metrics = trainer.run(resume=False)
    seconds = time.perf_counter() - t0
    cand = metrics["candidates"][metrics["exported"]]
    thresholds = {"p0.5": 0.5, "calibrated": float(cand["threshold"])}
    per_region = {
        r: domain_shift.scene_iou(trainer.final_models[metrics["exported"]], trainer.spec,
                                  {**t, "images": t["images"][:, :n]}, thresholds)
        for r, t in data["test"].items()
    }  # fmt: skip
    return {
        "tag": job["tag"], "arm": job["arm"], "seed": job["seed"], "bands": bands, "steps": cfg.steps,
        "normalisation": trainer.spec, "exported": metrics["exported"],
        "val_iou_calibrated": (cand["val_at_threshold"] or {}).get("iou"), "threshold": cand["threshold"],
        "test_iou": {r: v["p0.5"] for r, v in per_region.items()},
        "test_iou_calibrated": {r: v["calibrated"] for r, v in per_region.items()},
        "train_seconds": round(seconds, 1), "n_chips": {k: int(len(v)) for k, v in chips.items()},
        "n_test_slumps": {r: t["n_slumps"] for r, t in data["test"].items()},
        "data": {k: v for k, v in job["args"].items() if k not in ("work_dir", "out", "summary")},
        "machine": f"{platform.node()} {os.cpu_count()} cpu", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


def summary(recs: list[dict[str, Any]], held_out: list[str], labelled: list[str]) -> dict[str, Any]:
    """Per arm: held-out and in-domain mean IoU (%) ± sd over seeds, per region; paired terrain − spectral."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for r in recs:
        by_arm.setdefault(r["arm"], {})[r["seed"]] = r

    def mean_iou(rec: dict[str, Any], regions: list[str]) -> float:
        return 100.0 * float(np.mean([rec["test_iou_calibrated"][g] or 0.0 for g in regions]))

    arms: dict[str, Any] = {}
    for arm, runs in by_arm.items():
        held = np.array([mean_iou(r, held_out) for r in runs.values()])
        dom = np.array([mean_iou(r, labelled) for r in runs.values()])
        arms[arm] = {
            "seeds": sorted(runs), "held_out_mean": float(held.mean()),
            "held_out_sd": float(held.std(ddof=1)) if len(held) > 1 else 0.0,
            "in_domain_mean": float(dom.mean()), "in_domain_sd": float(dom.std(ddof=1)) if len(dom) > 1 else 0.0,
            "per_region": {g: float(np.mean([100 * (r["test_iou_calibrated"][g] or 0) for r in runs.values()]))
                           for g in (*held_out, *labelled)},
            "val_iou_calibrated": float(np.mean([100 * (r["val_iou_calibrated"] or 0) for r in runs.values()])),
            "train_seconds": float(np.mean([r["train_seconds"] for r in runs.values()])),
        }  # fmt: skip
    out: dict[str, Any] = {"arms": arms, "paired": {}}
    if {"terrain", "spectral"} <= set(by_arm):
        seeds = sorted(set(by_arm["terrain"]) & set(by_arm["spectral"]))
        for name, regions in (("held_out", held_out), ("in_domain", labelled)):
            out["paired"][name] = domain_shift.paired(
                [mean_iou(by_arm["terrain"][s], regions) for s in seeds],
                [mean_iou(by_arm["spectral"][s], regions) for s in seeds],
            )
        for g in (*held_out, *labelled):
            out["paired"][g] = domain_shift.paired(
                [100 * (by_arm["terrain"][s]["test_iou_calibrated"][g] or 0) for s in seeds],
                [100 * (by_arm["spectral"][s]["test_iou_calibrated"][g] or 0) for s in seeds],
            )
    if recs:
        out["test_slumps"] = recs[0]["n_test_slumps"]
    return out


def markdown(summ: dict[str, Any], held_out: list[str], labelled: list[str]) -> str:
    """Tables for BENCHMARKS.md from a :func:`summary`."""
    regions = [*held_out, *labelled]
    lines = [
        "| inputs | seeds | val (cal.) | " + " | ".join(regions) + " | **held-out mean** | in-domain mean |",
        "|---|---|---|" + "---|" * len(regions) + "---|---|",
    ]
    for arm, a in summ["arms"].items():
        cells = " | ".join(f"{a['per_region'][g]:.1f}" for g in regions)
        lines.append(
            f"| {arm} | {len(a['seeds'])} | {a['val_iou_calibrated']:.1f} | {cells} | "
            f"**{a['held_out_mean']:.1f} ± {a['held_out_sd']:.1f}** | "
            f"{a['in_domain_mean']:.1f} ± {a['in_domain_sd']:.1f} |"
        )
    paired = {name.replace("_", " "): p for name, p in summ["paired"].items()}
    lines += domain_shift.paired_table("terrain − spectral (points)", paired)
    if summ.get("test_slumps"):
        lines += ["", "Test slumps per region: " + ", ".join(f"{g} {summ['test_slumps'][g]}" for g in regions)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    domain_shift.add_region_options(p)
    p.add_argument("--scene-seed-offset", type=int, default=0)
    p.add_argument("--relative-radius-m", type=float, default=300.0, help="aux.relative_radius_m")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--chip-size", type=int, default=64)
    p.add_argument("--scene-size", type=int, default=256)
    p.add_argument("--test-scene-size", type=int, default=384)
    p.add_argument("--test-scenes", type=int, default=6, help="test scenes per region")
    p.add_argument("--chips-per-region", type=int, default=96)
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (one torch thread each)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tag", default="main")
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "out" / "terrain_runs"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "terrain.jsonl"))
    p.add_argument("--summary", help="write the summary of --tag (all its records in --out) as JSON here")
    p.add_argument("--report", action="store_true", help="print the tables of --tag from --out and exit")
    args = p.parse_args(argv)
    if not args.report:
        threads = args.threads or (1 if args.jobs > 1 else max(1, os.cpu_count() or 1))
        job_args = {
            k: v for k, v in vars(args).items() if k not in ("arms", "seeds", "jobs", "threads", "tag", "report")
        }
        t0 = time.perf_counter()
        data = cached_data(args)  # once, before the workers start
        print(f"data ready in {time.perf_counter() - t0:.0f} s; test slumps:",
              {r: t["n_slumps"] for r, t in data["test"].items()}, flush=True)  # fmt: skip
        jobs = [{"arm": a, "seed": s, "tag": args.tag, "threads": threads, "args": job_args}
                for s in args.seeds for a in args.arms]  # fmt: skip
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)

        def record(rec: dict[str, Any]) -> None:
            domain_shift.append_record(out, rec)
            iou = " ".join(f"{r}={v:.3f}" for r, v in rec["test_iou_calibrated"].items() if v is not None)
            print(f"[{rec['tag']}] {rec['arm']:9s} seed {rec['seed']}: val {rec['val_iou_calibrated'] or 0:.3f} | "
                  f"{iou} ({rec['train_seconds']:.0f}s)", flush=True)  # fmt: skip

        domain_shift.run_jobs(jobs, args.jobs, run_one, record)
        print(f"wall time {time.perf_counter() - t0:.0f} s", flush=True)
    recs = domain_shift.records(Path(args.out), args.tag)
    summ = summary(recs, args.held_out_regions, args.labelled_regions)
    print(markdown(summ, args.held_out_regions, args.labelled_regions))
    if args.summary:
        domain_shift.write_summary(args.summary, summ)


if __name__ == "__main__":
    main()
