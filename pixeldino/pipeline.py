"""Glue between a workflow configuration and the stage functions, shared by the Snakemake scripts and the CLI."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from pixeldino.errors import ConfigError, InputError
from pixeldino.io import read_json

log = logging.getLogger(__name__)


def given(section: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments from a config section: ``names`` maps config keys to parameter names.

    Keys set to null are left out, so the library function's own default applies: a default lives in one place.
    """
    return {param: section[key] for key, param in names.items() if section.get(key) is not None}


def manifest_scene(manifest_path: str | os.PathLike[str], scene_id: str) -> dict[str, Any]:
    """The manifest entry of one scene."""
    scenes = read_json(manifest_path)["scenes"]
    for scene in scenes:
        if scene["id"] == scene_id:
            return scene
    raise InputError(f"{manifest_path}: no scene {scene_id!r} in the manifest; re-run the search")


def scenes_of_tiles(
    scenes: list[Path], tiles: list[str], manifest_path: str | os.PathLike[str]
) -> list[Path]:
    """The scene rasters (named ``<scene id>.tif``) whose MGRS tile is in ``tiles``; all of them if ``tiles`` is empty."""
    if not tiles:
        return list(scenes)
    tile_of = {s["id"]: s["tile"] for s in read_json(manifest_path)["scenes"]}
    wanted = {t.upper().lstrip("0") for t in tiles}
    chosen = [p for p in scenes if str(tile_of.get(Path(p).stem, "")).upper().lstrip("0") in wanted]
    if not chosen:
        raise ConfigError(
            f"chips.unlabelled_tiles {tiles} matches none of the scenes found ({sorted(set(tile_of.values()))}); "
            "fix the tile list or leave it empty to use every scene"
        )
    return chosen


def train_config_from(train: dict[str, Any], normalisation: dict[str, Any], threads: int | None = None) -> Any:
    """Build a :class:`pixeldino.train.TrainConfig` from the ``train`` and ``normalisation`` config sections."""
    from pixeldino.train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    kwargs = {k: v for k, v in train.items() if k in known}
    kwargs["normalisation"] = dict(normalisation)
    if threads and "num_threads" in known:
        kwargs["num_threads"] = threads
    return TrainConfig(**kwargs)


def predict_scene_on(dask_scheduler: str | None, scene: str | os.PathLike[str], model: str | os.PathLike[str],
                     out_prob: str | os.PathLike[str], **kwargs: Any) -> Path:
    """Run :func:`pixeldino.predict.predict_scene` here, or as one task on a dask distributed cluster.

    ``dask_scheduler`` is None (run in this process), a scheduler address (``tcp://host:8786``) or a scheduler file
    (``*.json``, as written by ``dask scheduler --scheduler-file`` or dask-jobqueue). The worker must see the same
    file system and have pixeldino installed; paths are made absolute so it finds them from its own working dir.
    """
    from pixeldino.predict import predict_scene

    if not dask_scheduler:
        return predict_scene(scene, model, out_prob, **kwargs)
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError(
            "predict.dask_scheduler is set but the 'distributed' package is missing; pip install 'pixeldino[dask]'"
        ) from None
    absolute = {k: (str(Path(v).resolve()) if k in ("out_pseudo", "quality_mask") and v else v) for k, v in kwargs.items()}
    connect = {"scheduler_file": dask_scheduler} if dask_scheduler.endswith(".json") else {"address": dask_scheduler}
    try:
        client = Client(timeout="60s", **connect)
    except OSError as exc:
        raise ConfigError(f"cannot reach the dask scheduler {dask_scheduler} ({exc}); is the cluster running?") from None
    with client:
        log.info("predicting %s on dask cluster %s", scene, client.scheduler.address)
        future = client.submit(
            predict_scene, str(Path(scene).resolve()), str(Path(model).resolve()), str(Path(out_prob).resolve()),
            pure=False, **absolute,
        )
        return Path(future.result())


def scene_for_aoi(aoi_path: str | os.PathLike[str], scenes: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest scene whose footprint covers most of the AOI."""
    from shapely.geometry import box

    from pixeldino.search import load_aoi

    aoi = load_aoi(aoi_path)
    best = max(scenes, key=lambda s: box(*s["bbox"]).intersection(aoi).area, default=None)
    if best is None or box(*best["bbox"]).intersection(aoi).area == 0:
        raise InputError(f"{aoi_path}: no scene in the manifest covers this evaluation AOI; widen the search")
    return best


def evaluate_configured_sites(
    sites: list[dict[str, Any]],
    *,
    manifest: str | os.PathLike[str],
    predictions_dir: str | os.PathLike[str],
    scenes_dir: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """Evaluate every configured site on the prediction of the scene that covers it; write one JSON."""
    from pixeldino.evaluate import evaluate_sites

    scenes = read_json(manifest)["scenes"]
    out_dir = Path(out_json).parent
    specs = []
    for site in sites:
        scene = scene_for_aoi(site.get("aoi") or site["labels"], scenes)
        specs.append(
            {
                "site": site["name"],
                "prob_path": Path(predictions_dir) / f"{scene['id']}_prob.tif",
                "labels_path": site["labels"],
                "aoi_path": site.get("aoi"),
                "threshold": threshold,
                "image_path": Path(scenes_dir) / f"{scene['id']}.tif",
                "quicklook_png": out_dir / f"quicklook_{site['name']}.png",
            }
        )
    document = evaluate_sites(specs, out_json)
    for name, result in document["sites"].items():
        log.info("%s: pixel IoU %s, object recall %s", name, result["pixel"]["iou"], result["object"]["recall"])
    return document
