"""Real-data check: train on the Peel expert consensus, predict both demo scenes, score Peel hold-out and Bykovsky.

Uses the demo data (``resources/demo``, two real Sentinel-2 L1C chips of 251 x 251 px) with the settings of
``config/config.yaml`` and the library stages the workflow runs:

1. stack each demo STAC item's single-band COGs (B02..B08) into one scene GeoTIFF with named bands (what
   ``pixeldino fetch`` writes for this catalog: L1C processing baseline 03.00, no harmonisation offset);
2. ``run_chip`` (Peel consensus labels inside the Peel study area, the west 64 px hold-out strip as
   validation chips, Bykovsky as unlabelled chips);
3. ``run_train`` per mode and seed;
4. ``predict_scene`` on both whole scenes and ``evaluate_site`` on the Peel hold-out strip and on Bykovsky
   (labels: the Bykovsky expert consensus, never used in training), at the threshold calibrated on the Peel
   hold-out chips and at p = 0.5.

Note that the Peel hold-out strip is also the validation split used for threshold calibration, so its IoU at the
calibrated threshold is optimistic; Bykovsky is a clean test.

Example (the recorded run, see BENCHMARKS.md)::

    .venv/bin/python benchmarks/real_data.py --modes supervised pixeldino --seeds 0 1 \
        --out benchmarks/out/real_data.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pixeldino.chip import ChipParams, run_chip  # noqa: E402
from pixeldino.evaluate import evaluate_site  # noqa: E402
from pixeldino.params import from_config  # noqa: E402
from pixeldino.predict import PredictParams, predict_scene  # noqa: E402
from pixeldino.train import TrainConfig, TrainOutputs, run_train  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from domain_shift import MODE_CONFIG  # noqa: E402  (benchmark mode -> TrainConfig mode and overrides)

DEMO = ROOT / "resources" / "demo"
ITEMS = {"peel": "S2_08WMA_20210821", "bykovsky": "S2_52WEE_20210721"}
EXPERT_AGREEMENT = {"Peel_holdout": 0.67, "Bykovsky": 0.28}  # mean expert-vs-consensus IoU (resources/demo)


def stack_item(item: str, bands: list[str], out: Path) -> Path:
    """One multi-band uint16 GeoTIFF (band descriptions = band names) from a demo STAC item's band COGs."""
    if out.exists():
        return out
    folder = DEMO / "stac" / "sentinel-2-l1c" / item
    arrays, profile = [], None
    for band in bands:
        with rasterio.open(folder / f"{band}.tif") as src:
            arrays.append(src.read(1))
            if profile is None:
                profile = src.profile.copy()
    assert profile is not None
    profile.update(count=len(bands), driver="GTiff", compress="deflate", nodata=0, tiled=False)
    for key in ("blockxsize", "blockysize", "interleave"):
        profile.pop(key, None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(np.stack(arrays))
        for i, band in enumerate(bands, start=1):
            dst.set_band_description(i, band)
    tmp.replace(out)
    return out


def _val_curve(log_csv: Path) -> list[float]:
    """Validation IoU (p = 0.5) of the exported candidate at every validation step of a run."""
    import csv

    with log_csv.open(newline="") as fh:
        return [float(r["val_iou"]) for r in csv.DictReader(fh) if r.get("val_iou") not in (None, "")]


def summarise(path: Path) -> str:
    """Markdown table of all records: pixel IoU (%) per site, mean ± std over seeds, per tag and mode."""
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r.get("tag", "main"), r["mode"]), []).append(r)

    def fmt(vals: list[float | None]) -> str:
        a = 100 * np.asarray([v or 0.0 for v in vals], dtype=float)
        return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"

    lines = [
        "| run | mode | seeds | threshold | Peel hold-out (calibrated) | Peel hold-out (p = 0.5) "
        "| Bykovsky (calibrated) | Bykovsky (p = 0.5) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (tag, mode), rs in groups.items():
        thr = ", ".join(f"{r['threshold']:.2f}" for r in rs)
        cells = [fmt([r[f"{site}_{k}"]["iou"] for r in rs]) for site in ("Peel_holdout", "Bykovsky")
                 for k in ("calibrated", "p0.5")]  # fmt: skip
        lines.append(f"| {tag} | {mode} | {len(rs)} | {thr} | " + " | ".join(cells) + " |")
    lines.append(
        f"| experts (mean IoU vs consensus of the others) | | | | {100 * EXPERT_AGREEMENT['Peel_holdout']:.0f} "
        f"(whole Peel site) | | {100 * EXPERT_AGREEMENT['Bykovsky']:.0f} | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = [m for m in MODE_CONFIG if m != "oracle"]  # no target labels to give an oracle here
    p.add_argument(
        "--modes", nargs="+", default=["supervised", "supervised+aug", "pixeldino-beta0", "pixeldino"], choices=modes
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--train-json", default=None, help="JSON overrides of any train field (ablations)")
    p.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="main")
    p.add_argument(
        "--strong-augment",
        default=None,
        help="JSON overrides of StrongAugmentConfig (ablation), e.g. '{\"brightness\": 0.1}'",
    )
    p.add_argument("--work-dir", default=str(ROOT / "benchmarks" / "out" / "real_data"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "real_data.jsonl"))
    p.add_argument("--report", action="store_true", help="print the table of --out and exit")
    args = p.parse_args(argv)
    if args.report:
        print(summarise(Path(args.out)))
        return
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(Path(args.config).read_text())
    bands = list(cfg["bands"])
    work = Path(args.work_dir)
    scenes = {site: stack_item(item, bands, work / "scenes" / f"{item}.tif") for site, item in ITEMS.items()}
    chips_cfg = cfg["chips"]
    store = work / "chips.zarr"
    stats = run_chip(
        ChipParams(**{k: v for k, v in chips_cfg.items() if k != "unlabelled_tiles"}),
        scenes=[scenes["peel"]], bands=bands, out=store, labels=ROOT / cfg["labels"]["file"],
        footprint=ROOT / cfg["labels"]["footprint"], holdout=ROOT / cfg["labels"]["holdout"],
        unlabelled_scenes=[scenes["bykovsky"]], stats_out=work / "chips_stats.json",
    )  # fmt: skip
    print("chips:", json.dumps(stats["counts"]), flush=True)
    sites = {
        "Peel_holdout": (
            scenes["peel"],
            DEMO / "labels" / "peel_consensus.gpkg",
            DEMO / "aoi" / "peel_holdout.geojson",
        ),
        "Bykovsky": (
            scenes["bykovsky"],
            DEMO / "labels" / "bykovsky_consensus.gpkg",
            DEMO / "aoi" / "bykovsky.geojson",
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for mode in args.modes:
            base_mode, overrides = MODE_CONFIG[mode]
            train_cfg = dict(cfg["train"], mode=base_mode, seed=seed, device="cpu", **overrides)
            if args.strong_augment:
                train_cfg["augment"] = json.loads(args.strong_augment)
            train_cfg.update(json.loads(args.train_json) if args.train_json else {})
            config = from_config(TrainConfig, train_cfg, num_threads=args.threads)
            run_dir = work / f"{args.tag}-{mode.replace('+', '_')}-s{seed}"
            t0 = time.perf_counter()
            outputs = TrainOutputs.in_dir(run_dir)
            metrics = run_train(config, store, outputs, bands=bands, resume=False, progress=False)
            seconds = time.perf_counter() - t0
            result: dict[str, Any] = {
                "tag": args.tag, "strong_augment": args.strong_augment, "mode": mode, "seed": seed,
                "threshold": metrics["threshold"], "val_iou": (metrics["val"] or {}).get("iou"),
                "exported": metrics["exported"], "val_ious": _val_curve(outputs.log_csv),
                "train_seconds": round(seconds, 1),
            }  # fmt: skip
            for site, (scene, labels, aoi) in sites.items():
                prob = run_dir / f"{site}_probability.tif"
                predict_params = PredictParams(
                    device="cpu", num_threads=args.threads, overlap=cfg["predict"]["overlap"],
                    batch_size=cfg["predict"]["batch_size"],
                )  # fmt: skip
                predict_scene(predict_params, scene, outputs.model, prob)
                for name, thr in (("calibrated", None), ("p0.5", 0.5)):
                    r = evaluate_site(prob, labels, aoi_path=aoi, threshold=thr, site=site)
                    result[f"{site}_{name}"] = {
                        k: r["pixel"][k] for k in ("iou", "precision", "recall", "tp", "fp", "fn")
                    }
                    result[f"{site}_{name}"]["threshold"] = r["threshold"]
            result["chips"] = stats["counts"]
            result["config"] = {k: train_cfg[k] for k in sorted(train_cfg)}
            result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            with out.open("a") as fh:
                fh.write(json.dumps(result) + "\n")
            print(f"[{args.tag}] {mode:12s} seed {seed}: thr {result['threshold']:.2f} | Peel hold-out IoU "
                  f"{result['Peel_holdout_calibrated']['iou']} | Bykovsky IoU {result['Bykovsky_calibrated']['iou']} "
                  f"(p0.5: {result['Peel_holdout_p0.5']['iou']}, {result['Bykovsky_p0.5']['iou']}) ({seconds:.0f}s)",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
