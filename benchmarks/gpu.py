"""The GPU path in one command (``make bench-gpu``): full-tile inference end to end and the training step.

1. **Inference.** A synthetic full Sentinel-2 tile (``--size`` 10980 px square, ``--bands`` 7, uint16 DEFLATE
   GeoTIFF, made once in ``--workdir``) runs end to end on the GPU: read -> probability and pseudo-class COGs
   (:func:`pixeldino.predict.predict_scene`, backend torch, bf16, channels_last) -> polygons
   (:func:`pixeldino.polygonize.run_polygonize`). Reported: wall time of each stage, patches/s against the raw
   forward of the same engine and batch (``ratio``, target >= 0.8), peak GPU memory, the device name.
2. **Training.** ``benchmarks/train_step.py`` at the paper's scale (16 labelled + 16 unlabelled chips of 192 px,
   12 bands, UNet width 16, PixelDINO, bf16 autocast) without and with ``torch.compile``: steps/s and the share of a
   step spent outside the model (the data path).

    .venv/bin/python benchmarks/gpu.py [--size 10980] [--batch-size 32] [--workdir DIR] [--out benchmarks/out/gpu.jsonl]

Prints one JSON line per measurement and a summary; without a CUDA GPU it stops with one ``error:`` line.
Targets (issue 12): full tile end to end <= 30 s on an H100-class GPU, >= 50 PixelDINO steps/s, data path < 15 %.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

PAPER_SCALE = [
    "--chip-size",
    "192",
    "--batch-labelled",
    "16",
    "--batch-unlabelled",
    "16",
    "--bands",
    "12",
    "--width",
    "16",
    "--depth",
    "4",
    "--mode",
    "pixeldino",
    "--device",
    "cuda",
]


def require_gpu() -> str:
    """The CUDA device name; exits with one clear line when there is none."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "error: benchmarks/gpu.py needs a CUDA GPU, but torch sees none "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); run it on a GPU node"
        )
    return torch.cuda.get_device_name(0)


def raw_forward(model_path: Path, patch: int, batch: int, batches: int) -> dict:
    """The torch engine alone on the GPU: patches/s on random batches of the scene run's shape."""
    import torch

    from pixeldino.engines import load_engine
    from pixeldino.modelio import load_model

    device = torch.device("cuda")
    model, meta = load_model(model_path, device)
    engine = load_engine(
        "torch",
        model,
        device,
        model_path=model_path,
        model_id="gpu-bench",
        patch=patch,
        batch_size=batch,
        precision="bfloat16",
    )
    x = torch.rand(batch, len(meta["bands"]), patch, patch, device=device)

    def run() -> None:
        rts, pseudo = engine(x)
        torch.sigmoid(rts).cpu()
        pseudo.argmax(dim=1).to(torch.uint8).cpu()

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(batches):
        run()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    return {
        "mode": "forward",
        "patches": batches * batch,
        "wall_s": round(wall, 3),
        "patches_per_s": round(batches * batch / wall, 1),
    }


def scene_inference(a: argparse.Namespace, work: Path, device_name: str) -> dict:
    import torch
    from predict import grid_patches, save_random_model, synthesise_scene

    from pixeldino.polygonize import PolygonizeParams, run_polygonize
    from pixeldino.predict import PredictParams, predict_scene

    scene, model = work / f"scene_{a.size}x{a.bands}.tif", work / "model.safetensors"
    if not scene.exists():
        print(f"synthesising {scene} (once)", file=sys.stderr)
        synthesise_scene(scene, a.size, a.bands)
    save_random_model(model, a.bands, 16, a.patch_size)
    forward = raw_forward(model, a.patch_size, a.batch_size, a.forward_batches)
    print(json.dumps(forward), flush=True)

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    prob = predict_scene(
        PredictParams(
            patch_size=a.patch_size, overlap=a.overlap, batch_size=a.batch_size, device="cuda", backend="torch"
        ),
        scene,
        model,
        work / "prob.tif",
        out_pseudo=work / "pseudo.tif",
    )
    t1 = time.perf_counter()
    polygons = run_polygonize(PolygonizeParams(threshold=0.5, min_area_m2=500), prob, work / "rts.gpkg")
    t2 = time.perf_counter()
    stride = max(1, round(a.patch_size * (1 - a.overlap)))
    patches = grid_patches(a.size, a.patch_size, stride)
    result = {
        "mode": "tile",
        "device": device_name,
        "size": a.size,
        "bands": a.bands,
        "patch_size": a.patch_size,
        "batch_size": a.batch_size,
        "patches": patches,
        "predict_s": round(t1 - t0, 2),
        "polygonize_s": round(t2 - t1, 2),
        "end_to_end_s": round(t2 - t0, 2),
        "polygons": len(polygons),
        "patches_per_s": round(patches / (t1 - t0), 1),
        "forward_patches_per_s": forward["patches_per_s"],
        "ratio": round(patches / (t1 - t0) / forward["patches_per_s"], 3),
        "peak_gpu_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20),
        "peak_gpu_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20),
    }
    print(json.dumps(result), flush=True)
    return result


def train_steps(a: argparse.Namespace) -> list[dict]:
    results = []
    for compiled in (False, True):
        args = [
            sys.executable,
            str(HERE / "train_step.py"),
            *PAPER_SCALE,
            "--steps",
            str(a.train_steps),
            "--warmup",
            str(a.train_warmup),
        ] + (["--compile"] if compiled else [])
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(
                f"error: train_step.py {'with' if compiled else 'without'} torch.compile failed: "
                f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}"
            )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        r.update(
            mode="train_step",
            compile=compiled,
            steps_per_s=round(1.0 / r["step_s"], 1),
            data_share=round(r["data_aug_s"] / r["step_s"], 3),
        )
        print(json.dumps(r), flush=True)
        results.append(r)
    return results


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=10980, help="tile width = height in pixels")
    p.add_argument("--bands", type=int, default=7)
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--forward-batches", type=int, default=50)
    p.add_argument("--train-steps", type=int, default=50, help="timed training steps per variant")
    p.add_argument("--train-warmup", type=int, default=10, help="untimed steps first (compilation happens here)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--workdir", type=Path, help="keep the synthetic tile here (default: a temp dir)")
    p.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    a = p.parse_args(argv)

    device_name = require_gpu()
    with tempfile.TemporaryDirectory(prefix="pixeldino-gpu-bench-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        lines = [scene_inference(a, work, device_name)]
        if not a.skip_train:
            lines += train_steps(a)
    summary = {
        "mode": "summary",
        "device": device_name,
        "date": time.strftime("%Y-%m-%d"),
        "tile_end_to_end_s": lines[0]["end_to_end_s"],
        "tile_ratio_vs_forward": lines[0]["ratio"],
        "peak_gpu_allocated_mb": lines[0]["peak_gpu_allocated_mb"],
    }
    for r in lines[1:]:
        key = "compiled" if r["compile"] else "eager"
        summary[f"train_steps_per_s_{key}"] = r["steps_per_s"]
        summary[f"train_data_share_{key}"] = r["data_share"]
    print(json.dumps(summary), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with a.out.open("a") as f:
            for r in (*lines, summary):
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
