"""Accuracy of a probability map against RTS label polygons: pixel and object metrics, and a quicklook PNG.

Everything is measured on the prediction's pixel grid. Label polygons (any CRS) are reprojected to the
prediction's CRS and rasterised by pixel centre. Only pixels inside the AOI (all valid pixels when no AOI is
given) and not nodata in the prediction are evaluated; with an AOI only the window covering it is read.

Pixel metrics are those of the RTS class: IoU = TP / (TP + FP + FN), precision, recall, F1. A ratio whose
denominator is zero (e.g. IoU when neither labels nor prediction have a positive pixel) is reported as ``null``.

Object metrics use overlap matching: a label object (one label polygon, which may be a MultiPolygon) counts as
detected when at least one of its evaluated pixels is predicted positive; a predicted object (an 8-connected
component of positive pixels) counts as correct when at least one of its pixels lies in a label polygon. Object
recall = detected label objects / label objects, object precision = correct predicted objects / predicted
objects, object F1 their harmonic mean. Label polygons without any evaluated pixel centre (outside the AOI,
over nodata, or smaller than a pixel) are not counted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window, from_bounds
from scipy import ndimage

from pixeldino.bands import band_indexes
from pixeldino.errors import ConfigError, InputError
from pixeldino.io import atomic_output, write_json
from pixeldino.labels import burn, read_labels
from pixeldino.metrics import f1_score, mean_of_defined, ratio
from pixeldino.probability import invalid_mask, positive_mask, read_probability, resolve_threshold
from pixeldino.rasters import open_raster, read_raster

_EIGHT = np.ones((3, 3), dtype=bool)
QUICKLOOK_BANDS = ("B04", "B03", "B02")
QUICKLOOK_MAX_PIXELS = 2000
MATCHING = "overlap: an object matches when it shares at least one evaluated pixel with the other set"


def _pixel_scores(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Pixel ``iou``, ``f1``, ``precision``, ``recall`` and the counts, as ``metrics.json`` reports them.

    The F1 is the harmonic mean of precision and recall (:func:`pixeldino.metrics.f1_score`), as ``metrics.json``
    has always reported it, not the Dice coefficient of :func:`pixeldino.metrics.confusion_metrics`.
    """
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "iou": ratio(tp, tp + fp + fn),
        "f1": f1_score(precision, recall),
        "precision": precision,
        "recall": recall,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _bounds_rows_cols(
    bounds: Sequence[float], transform: Affine, shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Row/column range ``(r0, r1, c0, c1)`` of the grid that covers ``bounds``; None when it misses the grid."""
    win = from_bounds(*bounds, transform=transform)
    r0, c0 = max(int(math.floor(win.row_off)), 0), max(int(math.floor(win.col_off)), 0)
    r1 = min(int(math.ceil(win.row_off + win.height)) + 1, shape[0])
    c1 = min(int(math.ceil(win.col_off + win.width)) + 1, shape[1])
    return (r0, r1, c0, c1) if r1 > r0 and c1 > c0 else None


def _label_object_pixels(
    geom: Any, transform: Affine, shape: tuple[int, int]
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Pixel-centre footprint of one polygon within its bounding window, or None if it misses the grid."""
    rows_cols = _bounds_rows_cols(geom.bounds, transform, shape)
    if rows_cols is None:
        return None
    r0, r1, c0, c1 = rows_cols
    sub = burn([geom], transform @ Affine.translation(c0, r0), (r1 - r0, c1 - c0))
    return (slice(r0, r1), slice(c0, c1)), sub


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-band 2-98 % percentile stretch to [0, 1] over valid pixels."""
    out = np.zeros(rgb.shape, np.float32)
    for i, band in enumerate(rgb):
        values = band[valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, [2, 98])
        out[i] = np.clip((band - lo) / max(hi - lo, 1e-6), 0, 1)
    out[:, ~valid] = 1.0  # nodata shown white
    return np.moveaxis(out, 0, -1)


def _read_true_colour(image_path: Path, crs: Any, transform: Affine, shape: tuple[int, int], step: int) -> np.ndarray:
    """B04, B03, B02 of ``image_path`` on the evaluation grid, decimated by ``step`` (a plain read when grids agree)."""
    fix = "give the scene the prediction was made from"
    try:
        with open_raster(image_path, "the image for the quicklook", fix) as src:
            indexes = band_indexes(
                src.descriptions,
                QUICKLOOK_BANDS,
                path=image_path,
                fix_hint="the true-colour quicklook needs them: give a scene with band descriptions B04, B03, B02",
            )
            with WarpedVRT(
                src,
                crs=crs,
                transform=transform,
                width=shape[1],
                height=shape[0],
                resampling=rasterio.enums.Resampling.bilinear,
                nodata=0,
            ) as vrt:
                out_shape = (len(QUICKLOOK_BANDS), -(-shape[0] // step), -(-shape[1] // step))
                return read_raster(vrt, indexes, out_shape=out_shape).astype(np.float32)
    except RasterioIOError as exc:
        raise InputError(f"{image_path}: cannot read the image for the quicklook ({exc})") from exc


def _write_quicklook(
    path: Path,
    *,
    background: np.ndarray,
    is_rgb: bool,
    labels: np.ndarray,
    predicted: np.ndarray,
    region: np.ndarray,
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    h, w = labels.shape
    scale = 8.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(max(w * scale, 3.0), max(h * scale, 3.0) + 0.5), dpi=150)
    try:
        if is_rgb:
            ax.imshow(background, interpolation="nearest")
        else:
            ax.imshow(background, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        for mask, colour in ((region, "white"), (labels, "cyan"), (predicted, "red")):
            if mask.any() and not mask.all():
                ax.contour(mask.astype(np.uint8), levels=[0.5], colors=[colour], linewidths=0.8)
        ax.legend(
            handles=[
                Line2D([], [], color=c, label=n)
                for c, n in (("cyan", "labels"), ("red", "prediction"), ("white", "AOI"))
            ],
            loc="lower right",
            fontsize=6,
            framealpha=0.6,
        )
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
        fig.tight_layout()
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def evaluate_site(
    prob_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    aoi_path: str | os.PathLike[str] | None = None,
    threshold: float | None = None,
    site: str,
    image_path: str | os.PathLike[str] | None = None,
    quicklook_png: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Pixel and object metrics of one probability raster against label polygons.

    Args:
        prob_path: probability raster (from :func:`pixeldino.predict.predict_scene`).
        labels_path: RTS label polygons, any vector format and CRS.
        aoi_path: optional polygons of the labelled area; pixels outside are not evaluated.
        threshold: probability threshold (``p >= threshold`` is RTS); None = the raster's THRESHOLD tag, else 0.5.
        site: name of the site (reported, and used in the quicklook title).
        image_path: optional scene GeoTIFF with bands B04, B03, B02 for a true-colour quicklook background.
        quicklook_png: optional PNG path for the quicklook (written atomically).

    Returns:
        ``{"site", "prediction", "labels", "aoi", "threshold", "model", "pixel": {...}, "object": {...},
        "quicklook"}``; see the module docs for the definitions.
    """
    prob_path, labels_path = Path(prob_path), Path(labels_path)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"evaluate threshold (--threshold) {threshold} must be a probability within [0, 1]")
    if not prob_path.exists():
        raise InputError(f"{prob_path}: probability raster not found; run `pixeldino predict` first")
    with open_raster(prob_path, "the probability raster", "re-run prediction on a georeferenced scene") as src:
        crs, full_transform, full_shape = src.crs, src.transform, (src.height, src.width)

    window = None
    aoi = None
    if aoi_path is not None:
        aoi = read_labels(aoi_path, crs, what="AOI file", require_polygons=True)
        rows_cols = _bounds_rows_cols(aoi.total_bounds, full_transform, full_shape)
        if rows_cols is None:
            raise InputError(f"{aoi_path}: the AOI does not overlap prediction {prob_path}; use the scene covering it")
        r0, r1, c0, c1 = rows_cols
        window = Window(c0, r0, c1 - c0, r1 - r0)
    values, info = read_probability(prob_path, window)
    transform, shape = info["transform"], values.shape
    thr = resolve_threshold(threshold, info["tags"], prob_path)

    region = ~invalid_mask(values, info)
    if aoi is not None:
        region &= burn(aoi, transform, shape)
    labels_gdf = read_labels(labels_path, crs, require_polygons=True)
    on_grid = burn(labels_gdf, transform, shape)
    label_mask = on_grid & region
    if not label_mask.any():
        # metrics against labels that are not there would read as a model that finds nothing (IoU 0 or n/a)
        within = f" within the AOI {aoi_path}" if aoi_path is not None else ""
        outside = f"outside the AOI {aoi_path} or " if aoi_path is not None else ""
        how = (
            f"lie only {outside}where prediction {prob_path} has no data"
            if on_grid.any()
            else f"do not overlap prediction {prob_path}{within}"
        )
        raise InputError(
            f"the {len(labels_gdf)} label polygons of {labels_path} {how}; give the labels of the area this "
            "scene covers, or the prediction of the scene that covers them"
        )
    predicted = positive_mask(values, info, thr) & region

    tp = int(np.count_nonzero(label_mask & predicted))
    fp = int(np.count_nonzero(predicted & ~label_mask))
    fn = int(np.count_nonzero(label_mask & ~predicted))
    n_eval = int(np.count_nonzero(region))
    pixel = {
        **_pixel_scores(tp, fp, fn),
        "tn": n_eval - tp - fp - fn,
        "n_pixels": n_eval,
        "label_positive_fraction": ratio(tp + fn, n_eval),
        "pred_positive_fraction": ratio(tp + fp, n_eval),
    }

    components, n_pred = ndimage.label(predicted, structure=_EIGHT)
    matched_pred = int(np.count_nonzero(np.unique(components[label_mask & predicted])))
    n_label_objects = detected = 0
    for geom in labels_gdf.geometry:
        found = _label_object_pixels(geom, transform, shape)
        if found is None:
            continue
        sl, sub = found
        sub &= region[sl]
        if not sub.any():
            continue
        n_label_objects += 1
        detected += bool(predicted[sl][sub].any())
    obj_precision, obj_recall = ratio(matched_pred, n_pred), ratio(detected, n_label_objects)
    objects = {
        "n_label_objects": n_label_objects,
        "n_pred_objects": int(n_pred),
        "label_objects_detected": detected,
        "pred_objects_matched": matched_pred,
        "recall": obj_recall,
        "precision": obj_precision,
        "f1": f1_score(obj_precision, obj_recall),
        "matching": MATCHING,
    }

    result: dict[str, Any] = {
        "site": site,
        "prediction": str(prob_path),
        "labels": str(labels_path),
        "aoi": str(aoi_path) if aoi_path is not None else None,
        "threshold": thr,
        "model": info["tags"].get("MODEL"),
        "scene_id": info["tags"].get("SCENE_ID"),
        "pixel": pixel,
        "object": objects,
        "quicklook": None,
    }

    if quicklook_png is not None:
        step = max(1, math.ceil(max(shape) / QUICKLOOK_MAX_PIXELS))  # a PNG never needs more than ~2000 px
        if image_path is not None:
            rgb = _read_true_colour(Path(image_path), crs, transform, shape, step)
            background, is_rgb = _stretch(rgb, np.asarray((rgb > 0).any(axis=0))), True
        else:
            sub = values[::step, ::step]
            background = np.where(invalid_mask(sub, info), np.nan, sub * info["scale"] + info["offset"])
            is_rgb = False
        iou_text = f"{pixel['iou']:.3f}" if pixel["iou"] is not None else "n/a"
        f1_text = f"{objects['f1']:.2f}" if objects["f1"] is not None else "n/a"
        _write_quicklook(
            Path(quicklook_png),
            background=background,
            is_rgb=is_rgb,
            labels=label_mask[::step, ::step],
            predicted=predicted[::step, ::step],
            region=region[::step, ::step],
            title=f"{site}: pixel IoU {iou_text}, object F1 {f1_text} (p >= {thr:.2f})",
        )
        result["quicklook"] = str(quicklook_png)
    return result


def summarise(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A per-site table, pixel/object metrics pooled over all sites, and unweighted means over sites."""
    table = [
        {
            "site": name,
            "iou": r["pixel"]["iou"],
            "f1": r["pixel"]["f1"],
            "precision": r["pixel"]["precision"],
            "recall": r["pixel"]["recall"],
            "object_precision": r["object"]["precision"],
            "object_recall": r["object"]["recall"],
            "object_f1": r["object"]["f1"],
        }
        for name, r in results.items()
    ]
    tp = sum(r["pixel"]["tp"] for r in results.values())
    fp = sum(r["pixel"]["fp"] for r in results.values())
    fn = sum(r["pixel"]["fn"] for r in results.values())
    obj_p = ratio(
        sum(r["object"]["pred_objects_matched"] for r in results.values()),
        sum(r["object"]["n_pred_objects"] for r in results.values()),
    )
    obj_r = ratio(
        sum(r["object"]["label_objects_detected"] for r in results.values()),
        sum(r["object"]["n_label_objects"] for r in results.values()),
    )
    pooled = {
        **_pixel_scores(tp, fp, fn),
        "object_precision": obj_p,
        "object_recall": obj_r,
        "object_f1": f1_score(obj_p, obj_r),
    }
    mean = {k: mean_of_defined([row[k] for row in table]) for k in ("iou", "f1", "precision", "recall", "object_f1")}
    return {"table": table, "pooled": pooled, "mean_over_sites": mean}


def evaluate_sites(sites: Sequence[dict[str, Any]], out_json: str | os.PathLike[str]) -> dict[str, Any]:
    """Evaluate several sites and write one JSON: ``{"sites": {name: result}, "summary": {...}}``.

    Args:
        sites: one dict per site with the keyword arguments of :func:`evaluate_site` (``prob_path``,
            ``labels_path`` and ``site`` required; ``aoi_path``, ``threshold``, ``image_path``,
            ``quicklook_png`` optional).
        out_json: output JSON (written atomically).

    Returns:
        The written document.
    """
    names = [s.get("site") for s in sites]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"every evaluation site needs a unique 'site' name; got {names}")
    results = {}
    for spec in sites:
        kwargs = dict(spec)
        results[spec["site"]] = evaluate_site(kwargs.pop("prob_path"), kwargs.pop("labels_path"), **kwargs)
    document = {"sites": results, "summary": summarise(results)}
    write_json(out_json, document)
    return document


def scene_for_aoi(aoi_path: str | os.PathLike[str], scenes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The manifest scene whose footprint covers most of the AOI."""
    from shapely.geometry import box

    from pixeldino.tiles import load_aoi

    aoi = load_aoi(aoi_path)
    best = max(scenes, key=lambda s: box(*s["bbox"]).intersection(aoi).area, default=None)
    if best is None or box(*best["bbox"]).intersection(aoi).area == 0:
        raise InputError(f"{aoi_path}: no scene in the manifest covers this evaluation AOI; widen the search")
    return best


def run_evaluate(
    sites: Sequence[dict[str, Any]],
    *,
    scenes: Sequence[dict[str, Any]],
    predictions: Sequence[str | os.PathLike[str]],
    images: Sequence[str | os.PathLike[str]],
    quicklooks: Sequence[str | os.PathLike[str]],
    out_json: str | os.PathLike[str],
    threshold: float | None = None,
) -> dict[str, Any]:
    """The evaluate stage: every configured site on the prediction of the scene that covers it; one JSON.

    Every path is given by the caller (the workflow's rule): nothing is derived from a folder and a file-name
    convention.

    Args:
        sites: the config's ``evaluate.sites`` (``name``, ``labels``, optional ``aoi``).
        scenes: the manifest's scene records (``id``, ``bbox``), in the order of ``predictions`` and ``images``.
        predictions: one probability raster per scene.
        images: one scene COG per scene (quicklook background).
        quicklooks: one PNG per site, in the order of ``sites``.
        out_json: the metrics JSON to write.
        threshold: probability threshold (None: each raster's calibrated one).
    """
    if not (len(scenes) == len(predictions) == len(images)) or len(quicklooks) != len(sites):
        raise ConfigError(
            f"evaluate: {len(scenes)} scenes, {len(predictions)} predictions and {len(images)} images, "
            f"{len(sites)} sites and {len(quicklooks)} quicklooks: the lists must correspond"
        )
    index = {scene["id"]: i for i, scene in enumerate(scenes)}
    specs = []
    for site, quicklook in zip(sites, quicklooks):
        i = index[scene_for_aoi(site.get("aoi") or site["labels"], scenes)["id"]]
        specs.append(
            {
                "site": site["name"],
                "prob_path": predictions[i],
                "labels_path": site["labels"],
                "aoi_path": site.get("aoi"),
                "threshold": threshold,
                "image_path": images[i],
                "quicklook_png": quicklook,
            }
        )
    return evaluate_sites(specs, out_json)
