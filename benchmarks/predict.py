"""Scene inference throughput and memory, per inference engine: streamed prediction vs the engine's raw forward
vs a naive in-memory peer, side by side in one run.

Synthesises a uint16 scene (``--size`` squared, ``--bands`` bands) on disk in strips, saves a randomly initialised
UNet of ``--width`` (the model's default norm unless ``--norm``), then runs each measurement in its own child
process so that peak RSS is that run's alone::

    python benchmarks/predict.py --size 2745 --backends torch openvino
    python benchmarks/predict.py --size 5490 --backends torch onnxruntime openvino --inmemory --repeats 3
    python benchmarks/predict.py --size 10980 --backends openvino --forward-batches 4
    python benchmarks/predict.py --size 2745 --device cuda --batch-size 32 --backends torch

Prints one JSON line per measurement and a final summary line per engine:

* ``forward``: the engine alone (:func:`pixeldino.engines.load_engine`, exported once into the work dir's cache,
  so the scene runs find it ready, like the 2nd to 1000th scene job of a workflow) on random tensors of the same
  patch and batch size (``--forward-batches`` batches after one warm-up batch), timed in the main thread and in a
  worker thread (where predict runs it); the faster counts;
* ``predict``: :func:`pixeldino.predict.predict_scene` end to end with that engine (read, normalise, forward,
  blend, write, COG); ``patches`` is the number of distinct patches on the global grid, ``forwarded`` how many
  the model actually ran (all-nodata patches are skipped; a patch straddling a chunk border is run once);
* ``inmemory`` (with ``--inmemory``): the peers' approach with their engine, eager PyTorch: the whole scene read
  into RAM, every patch cut into one array up front, whole-scene float accumulators;
* ``summary``: ``ratio`` = (distinct patches / predict wall time) / raw forward patches per second (the mean of
  the forward runs right before and right after that scene run; with ``--repeats N`` the runs alternate
  forward, scene, forward, ... and the median ratio and its range are reported); ``ratio_cpu_time`` the same
  with process CPU time, which is less sensitive to other load on a shared machine; ``speedup_vs_inmemory``
  (median peer wall time / median scene wall time) and ``rss_inmemory_vs_predict``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BANDS = ["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12", "B01", "B09"]


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthesise_scene(path: Path, size: int, n_bands: int, seed: int = 0) -> None:
    """Write a ``size`` x ``size`` uint16 scene strip by strip (never the whole scene in memory)."""
    import rasterio
    from affine import Affine

    from pixeldino.io import TILED_GTIFF_PROFILE

    profile = dict(
        TILED_GTIFF_PROFILE,
        width=size,
        height=size,
        count=n_bands,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32608",
        transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 7700000.0),
    )
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 512):
            h = min(512, size - row)
            dst.write(
                rng.integers(1, 4000, (n_bands, h, size), dtype=np.uint16),
                window=rasterio.windows.Window(0, row, size, h),
            )
        dst.descriptions = tuple(BANDS[:n_bands])
        dst.update_tags(SCENE_ID="BENCHMARK", TILE="08WMC", DATETIME="2023-07-01T20:00:00Z")


def save_random_model(path: Path, n_bands: int, width: int, patch: int, norm: str | None = None) -> None:
    import torch

    from pixeldino.model import UNetConfig, build_model
    from pixeldino.modelio import save_model

    torch.manual_seed(0)
    model = build_model(UNetConfig(in_channels=n_bands, width=width, **({"norm": norm} if norm else {})))
    save_model(path, model, {"bands": BANDS[:n_bands], "normalisation": {"method": "logsigmoid"}, "chip_size": patch})


def cpu_name() -> str:
    """The CPU's model name and core count, for the record."""
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else 'unknown CPU'} x {os.cpu_count()}"


def grid_patches(size: int, patch: int, stride: int) -> int:
    """Distinct patches of the global grid that touch a ``size`` x ``size`` scene."""
    first = ((0 - patch) // stride + 1) * stride
    return len(range(first, size, stride)) ** 2


def child_predict(a: argparse.Namespace) -> dict:
    import torch

    from pixeldino import patches, predict

    forwarded = 0
    original = patches.PatchPredictor.forward

    def counting_forward(self, x):  # noqa: ANN001, ANN202 - instrumentation only
        nonlocal forwarded
        forwarded += x.shape[0]
        return original(self, x)

    patches.PatchPredictor.forward = counting_forward
    torch.set_num_threads(a.threads)
    t, cpu = time.perf_counter(), time.process_time()
    predict.predict_scene(
        predict.PredictParams(
            patch_size=a.patch_size,
            overlap=a.overlap,
            batch_size=a.batch_size,
            chunk_size=a.chunk_size,
            device=a.device,
            num_threads=a.threads,
            backend=a.backend,
            precision=a.precision,
        ),
        a.scene,
        a.model,
        a.out,
        out_pseudo=a.out.with_name("pseudo.tif") if a.pseudo else None,
    )
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    stride = max(1, round(a.patch_size * (1 - a.overlap)))
    patches = grid_patches(a.size, a.patch_size, stride)
    return {
        "mode": "predict",
        "backend": a.backend,
        "size": a.size,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "px_per_s": round(a.size**2 / wall),
        "patches_per_cpu_s": round(patches / cpu, 3),
        "patches": patches,
        "forwarded": forwarded,
        "patches_per_s": round(patches / wall, 2),
        "peak_rss_mb": round(peak_rss_mb()),
        "chunk_size": a.chunk_size,
    }


def child_forward(a: argparse.Namespace) -> dict:
    import torch

    from pixeldino.engines import load_engine, resolve_engine, resolve_precision
    from pixeldino.modelio import load_model
    from pixeldino.predict import model_id

    torch.set_num_threads(a.threads)
    backend, device = resolve_engine(a.backend, a.device, a.precision)
    model, meta = load_model(a.model, device if backend == "torch" else "cpu")
    engine = load_engine(
        backend,
        model,
        device,
        model_path=a.model,
        model_id=model_id(a.model),
        patch=a.patch_size,
        batch_size=a.batch_size,
        num_threads=a.threads,
        precision=resolve_precision(a.precision, backend, device),
    )
    x = torch.rand(a.batch_size, len(meta["bands"]), a.patch_size, a.patch_size).to(engine.device)

    def run() -> None:
        with torch.inference_mode():
            rts, _ = engine(x)
            torch.sigmoid(rts).cpu()

    def timed() -> None:
        run()
        t, cpu = time.perf_counter(), time.process_time()
        for _ in range(a.forward_batches):
            run()
        timings.append((time.perf_counter() - t, time.process_time() - cpu))

    # predict_scene runs the model in a dask worker thread; time it in a worker thread too, and in the main
    # thread, and keep the faster.
    timings: list[tuple[float, float]] = []
    timed()
    worker = threading.Thread(target=timed)
    worker.start()
    worker.join()
    wall, cpu = min(timings)
    n = a.forward_batches * a.batch_size
    return {
        "mode": "forward",
        "backend": backend,
        "patches": n,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "main_vs_thread_wall_s": [round(t[0], 2) for t in timings],
        "patches_per_s": round(n / wall, 2),
        "patches_per_cpu_s": round(n / cpu, 3),
        "px_per_s": round(n * a.patch_size**2 / wall),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def child_inmemory(a: argparse.Namespace) -> dict:
    """The naive peer: whole scene, all patches and whole-scene accumulators in RAM, one write at the end."""
    import rasterio
    import torch

    from pixeldino.model import resolve_device
    from pixeldino.modelio import load_model
    from pixeldino.normalise import normalise
    from pixeldino.patches import patch_window

    torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    t = time.perf_counter()
    model, meta = load_model(a.model, device)
    with rasterio.open(a.scene) as src:
        image = src.read()
        profile = dict(src.profile, count=1, dtype="uint8", nodata=255)
    p, s = a.patch_size, max(1, round(a.patch_size * (1 - a.overlap)))
    x = normalise(np.pad(image, ((0, 0), (p, p), (p, p)), mode="symmetric"), meta["normalisation"])
    origins = range(((0 - p) // s + 1) * s, a.size, s)
    patches = np.stack([x[:, oy + p : oy + 2 * p, ox + p : ox + 2 * p] for oy in origins for ox in origins])
    acc = np.zeros(x.shape[1:], np.float32)
    wsum = np.zeros(x.shape[1:], np.float32)
    win = patch_window(p)
    coords = [(oy, ox) for oy in origins for ox in origins]
    with torch.inference_mode():
        for i in range(0, len(patches), a.batch_size):
            rts, _ = model(torch.from_numpy(patches[i : i + a.batch_size]).to(device))
            probs = torch.sigmoid(rts)[:, 0].float().cpu().numpy()
            for (oy, ox), prob in zip(coords[i : i + a.batch_size], probs):
                acc[oy + p : oy + 2 * p, ox + p : ox + 2 * p] += win * prob
                wsum[oy + p : oy + 2 * p, ox + p : ox + 2 * p] += win
    out = np.rint(acc[p:-p, p:-p] / wsum[p:-p, p:-p] * 254).astype(np.uint8)
    with rasterio.open(a.out, "w", **profile) as dst:
        dst.write(out, 1)
    wall = time.perf_counter() - t
    return {
        "mode": "inmemory",
        "size": a.size,
        "wall_s": round(wall, 2),
        "px_per_s": round(a.size**2 / wall),
        "patches": len(coords),
        "peak_rss_mb": round(peak_rss_mb()),
    }


def _run_child(mode: str, a: argparse.Namespace, backend: str = "torch", **paths: Path) -> dict:
    args = [sys.executable, __file__, "--child", mode, "--backend", backend] + (["--pseudo"] if a.pseudo else [])
    for key in (
        "size",
        "bands",
        "width",
        "patch_size",
        "overlap",
        "batch_size",
        "chunk_size",
        "threads",
        "device",
        "forward_batches",
        "precision",
    ):
        args += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
    for key, value in paths.items():
        args += [f"--{key}", str(value)]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2745, help="scene width = height in pixels (2745, 5490, 10980)")
    p.add_argument("--bands", type=int, default=7)
    p.add_argument("--width", type=int, default=16, help="UNet width")
    p.add_argument("--norm", help="UNet norm (default: the model's default)")
    p.add_argument(
        "--backends",
        nargs="+",
        default=["torch"],
        help="engines to measure, each side by side; ENGINE:PRECISION (openvino:bfloat16) overrides --precision",
    )
    p.add_argument("--pseudo", action="store_true", help="also write the pseudo-class map (as the workflow does)")
    p.add_argument("--precision", default="auto", help="predict.precision of the engines (auto, float32, bfloat16)")
    p.add_argument("--patch-size", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2, help="torch threads (and the CPU budget of each run)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--forward-batches", type=int, default=8, help="timed batches of the raw forward measurement")
    p.add_argument("--inmemory", action="store_true", help="also run the naive whole-scene-in-RAM peer")
    p.add_argument("--repeats", type=int, default=1, help="scene runs per engine (and of the peer); medians count")
    p.add_argument("--workdir", type=Path, help="keep the scene, model and outputs here (default: a temp dir)")
    p.add_argument("--child", choices=["predict", "forward", "inmemory"], help=argparse.SUPPRESS)
    p.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    p.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)

    if a.child:
        result = {"predict": child_predict, "forward": child_forward, "inmemory": child_inmemory}[a.child](a)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="pixeldino-bench-") as tmp:
        work = a.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scene, model = work / f"scene_{a.size}x{a.bands}.tif", work / "model.safetensors"
        if not scene.exists():
            synthesise_scene(scene, a.size, a.bands)
        save_random_model(model, a.bands, a.width, a.patch_size, a.norm)
        naives = []
        for _ in range(a.repeats if a.inmemory else 0):
            naives.append(_run_child("inmemory", a, scene=scene, model=model, out=work / "prob_inmemory.tif"))
            print(json.dumps(naives[-1]), flush=True)
        for spec in a.backends:
            backend, _, precision = spec.partition(":")
            b = argparse.Namespace(**{**vars(a), "precision": precision or a.precision})
            # Forward, scene, forward, scene, ..., forward: each scene run is compared with the raw forward runs
            # right before and after it (their mean), so that slow phases of a shared machine hit both sides.
            forwards = [_run_child("forward", b, backend, model=model)]
            print(json.dumps(forwards[-1]), flush=True)
            preds = []
            for _ in range(a.repeats):
                preds.append(_run_child("predict", b, backend, scene=scene, model=model, out=work / "prob.tif"))
                forwards.append(_run_child("forward", b, backend, model=model))
                for r in preds[-1], forwards[-1]:
                    print(json.dumps(r), flush=True)
            ratios, ratios_cpu = [], []
            for i, pred in enumerate(preds):
                around = forwards[i : i + 2]
                ratios.append(pred["patches_per_s"] / statistics.mean(f["patches_per_s"] for f in around))
                ratios_cpu.append(pred["patches_per_cpu_s"] / statistics.mean(f["patches_per_cpu_s"] for f in around))
            pred = sorted(preds, key=lambda r: r["wall_s"])[len(preds) // 2]  # the median run (upper for even n)
            summary = {
                "mode": "summary",
                "backend": backend,
                "precision": b.precision,
                "size": a.size,
                "bands": a.bands,
                "patch_size": a.patch_size,
                "batch_size": a.batch_size,
                "threads": a.threads,
                "device": a.device,
                "repeats": a.repeats,
                "forward_patches_per_s": round(statistics.median(f["patches_per_s"] for f in forwards), 2),
                "predict_patches_per_s": pred["patches_per_s"],
                "ratio": round(statistics.median(ratios), 3),
                "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                "ratio_cpu_time": round(statistics.median(ratios_cpu), 3),
                "redundant_forward_share": round(max(r["forwarded"] for r in preds) / pred["patches"] - 1, 3),
                "predict_wall_s": pred["wall_s"],
                "predict_wall_s_range": [min(r["wall_s"] for r in preds), max(r["wall_s"] for r in preds)],
                "predict_peak_rss_mb": max(r["peak_rss_mb"] for r in preds),
                "load_avg_1min": round(os.getloadavg()[0], 2),
                "cpu": cpu_name(),
            }
            if naives:
                naive_wall = statistics.median(r["wall_s"] for r in naives)
                summary["inmemory_wall_s"] = naive_wall
                summary["speedup_vs_inmemory"] = round(naive_wall / pred["wall_s"], 3)
                summary["rss_inmemory_vs_predict"] = round(
                    max(r["peak_rss_mb"] for r in naives) / summary["predict_peak_rss_mb"], 2
                )
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
