"""The model card: a STAC item with the Machine Learning Model (MLM) extension v1.4.0 beside every exported model.

Training writes ``model.stac.json`` next to ``model.safetensors`` and ``model.json``
(:func:`pixeldino.modelio.model_card_path`). It says, in the terms of
https://github.com/stac-extensions/mlm (v1.4.0), what the model is and how to run it:

* ``mlm:name``, ``mlm:architecture`` (U-Net), ``mlm:tasks`` (semantic-segmentation), ``mlm:framework`` (PyTorch)
  and its version, ``mlm:total_parameters``, ``mlm:memory_size`` (bytes of the weights and buffers),
  ``mlm:pretrained`` / ``mlm:pretrained_source`` (the model a fine-tune started from, else null),
  ``mlm:batch_size_suggestion`` (``predict.batch_size``'s default), ``mlm:accelerator`` null (CPU or CUDA);
* ``mlm:input``: the bands (Sentinel-2 DN, nodata 0), the input tensor ``[-1, C, P, P]`` float32 with ``P`` the
  patch size ``pixeldino predict`` uses by default, the normalisation as ``value_scaling`` (``z-score`` per band,
  ``scale``, or for ``logsigmoid`` a ``processing`` expression) and ``pre_processing_function``
  ``pixeldino.normalise:normalise``; auxiliary layers (``pixeldino:auxiliary_layers``, none today);
* ``mlm:output``: the RTS logit (sigmoid -> probability; classes ``background`` / ``rts`` at the calibrated
  threshold) and the K pseudo-class logits (argmax -> pseudo-class, for quality assessment);
* ``mlm:hyperparameters``: the training configuration and the threshold;
* geometry, bbox and ``start_datetime`` / ``end_datetime``: the scenes the chip store was cut from, as recorded by
  ``pixeldino chip`` (:func:`training_footprint`); a store without that record gives a null geometry and a note
  in ``pixeldino:training_data``;
* ``pixeldino:metrics`` (validation IoU/F1/precision/recall at 0.5 and at the calibrated threshold), ``license``
  (``train.model_license``), ``pixeldino:model_id`` (the weights' SHA-256 prefix), ``pixeldino:init_from``;
* assets ``model`` (the weights, roles ``mlm:model`` + ``mlm:weights``, ``mlm:artifact_type: safetensors``, with
  the STAC 1.1 ``bands`` its input refers to) and ``metadata`` (``model.json``), relative hrefs.

:func:`read_model_card` reads a card back and checks it (the MLM fields, bands and model id against the model
files); the run's STAC catalog includes the card as an item that its maps link to (``derived_from``, see
:func:`pixeldino.catalog.build_catalog`). Nothing here imports torch at module level: the catalog and chip stages
run in an environment without it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping
from shapely.ops import unary_union

from pixeldino import __version__
from pixeldino.errors import InputError, ModelError
from pixeldino.io import read_json, write_json
from pixeldino.modelio import load_model, metadata_path, model_card_path, model_id, read_metadata, weights_file
from pixeldino.rasters import open_raster
from pixeldino.stac_checks import MLM, check_extension_fields

if TYPE_CHECKING:
    from pixeldino.model import UNet

ARCHITECTURE = "U-Net"
TASKS = ["semantic-segmentation"]
FRAMEWORK = "PyTorch"
#: ``mlm:artifact_type`` of the weights (the MLM best practices name safetensors files so).
ARTIFACT_TYPE = "safetensors"
#: Colour hint of the RTS class (the red of the probability quicklooks).
RTS_COLOUR = "D62728"
#: The sigmoid of the network's logistic formulas, as a gdal-calc (numpy) expression of band ``A``.
_SIGMOID = "1 / (1 + exp(-({x})))"


# ---- training data footprint (recorded by `pixeldino chip`) ----------------------------------------------------


def _scene_date(scene: Path) -> dt.datetime | None:
    """The acquisition time in a fetched scene's JSON sidecar, None without one."""
    sidecar = scene.with_suffix(".json")
    if not sidecar.exists():
        return None
    value = read_json(sidecar).get("datetime")
    if not value:
        return None
    stamp = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def training_footprint(scenes: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Where and when the training chips come from: the union of the scenes' extents and their date range.

    ``pixeldino chip`` records this in the chip store (``stats.scene_footprint``); the model card of a model
    trained on the store takes geometry, bbox and dates from it.

    Args:
        scenes: the scene COGs chips were cut from (repeats are counted once); their JSON sidecars give the dates.

    Returns:
        ``{"geometry": GeoJSON in EPSG:4326 or None, "bbox": [W, S, E, N] or None, "start_datetime",
        "end_datetime": ISO 8601 or None, "n_scenes": int}``.

    Raises:
        InputError: a scene that cannot be read or has no CRS.
    """
    paths = list(dict.fromkeys(Path(s) for s in scenes))
    boxes, dates = [], []
    for path in paths:
        with open_raster(path, "scene", "fetch it again with pixeldino") as src:
            # densified, so the EPSG:4326 box contains the whole (curved) outline of a UTM scene
            boxes.append(box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)))
        when = _scene_date(path)
        if when is not None:
            dates.append(when)
    union = unary_union(boxes) if boxes else None
    return {
        "geometry": mapping(union) if union is not None else None,
        "bbox": [float(v) for v in union.bounds] if union is not None else None,
        "start_datetime": min(dates).isoformat() if dates else None,
        "end_datetime": max(dates).isoformat() if dates else None,
        "n_scenes": len(paths),
    }


def describe_training_data(chips: Any) -> dict[str, Any]:
    """What the model card says about the training chips: their source, counts and footprint.

    Args:
        chips: what training read: a chip store path, an object with ``stats()`` (a
            :class:`pixeldino.chipstore.ChipStore`) and optionally ``path``, or chips in memory (None or any other
            object: no footprint).

    Returns:
        ``{"chips": path or None, "counts": {...} or None, "footprint": see :func:`training_footprint` or None,
        "note": why there is no footprint, or None}``.
    """
    stats: dict[str, Any] | None = None
    source = None
    if isinstance(chips, (str, os.PathLike)):
        from pixeldino.chipstore import ChipStore

        source = str(chips)
        stats = ChipStore(chips).stats()
    elif callable(getattr(chips, "stats", None)):
        source = str(chips.path) if getattr(chips, "path", None) is not None else None
        stats = dict(chips.stats())
    footprint = (stats or {}).get("scene_footprint")
    if footprint and footprint.get("geometry"):
        note = None
    elif stats is None:
        note = "chips given in memory, not from a chip store: no footprint recorded"
    else:
        note = "the chip store records no footprint (made before pixeldino recorded it); re-run chip to record it"
    return {"chips": source, "counts": (stats or {}).get("counts"), "footprint": footprint or None, "note": note}


# ---- building the card ---------------------------------------------------------------------------------------


def _framework_version() -> str:
    """torch's release as a semantic version (local build tags such as ``+cpu`` dropped)."""
    import torch

    match = re.match(r"\d+\.\d+\.\d+", torch.__version__)
    return match.group(0) if match else "0.0.0"


def _value_scaling(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The normalisation as MLM ``value_scaling``: one object per band, or one broadcast to every band."""
    method = spec["method"]
    if method == "zscore":
        # pixeldino's robust z-score: center = median, scale = 1.4826 x MAD, in the (data - mean) / stddev form
        return [{"type": "z-score", "mean": c, "stddev": s} for c, s in zip(spec["center"], spec["scale"])]
    if method == "scale":
        return [{"type": "scale", "value": 1.0 / float(spec["factor"])}]
    # logsigmoid: sigmoid(2.5 (ln(1 + 0.005 DN) - 2.1)), no MLM type, so a gdal-calc (numpy) expression of band A
    return [
        {
            "type": "processing",
            "format": "gdal-calc",
            "expression": _SIGMOID.format(x="2.5 * (log(1 + 0.005 * A) - 2.1)"),
        }
    ]


def _normalisation_text(spec: dict[str, Any]) -> str:
    return {
        "logsigmoid": "sigmoid(2.5 * (ln(1 + 0.005 * DN) - 2.1)) per band",
        "zscore": "(DN - median) / (1.4826 * MAD) per band, statistics of the training chips",
        "scale": f"DN * {spec.get('factor')}",
    }[spec["method"]]


def _model_size(model: UNet) -> tuple[int, int]:
    """``(parameters, bytes of the parameters and buffers)`` of a model."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(p.numel() for p in model.parameters()), sum(t.numel() * t.element_size() for t in tensors)


def build_model_card(
    weights: str | os.PathLike[str],
    *,
    training_data: dict[str, Any] | None = None,
    license: str = "CC-BY-4.0",
    model: UNet | None = None,
) -> dict[str, Any]:
    """The model card (a STAC item dict with the MLM extension) of an exported model.

    Args:
        weights: the model's ``.safetensors`` (its ``.json`` beside it).
        training_data: :func:`describe_training_data` of the chips it was trained on (None: unknown).
        license: SPDX licence id (or ``other``) of the model.
        model: the model itself (saves loading it again to count its parameters).

    Raises:
        ModelError: the model files are missing or not a pixeldino model.
    """
    from pixeldino.predict import PredictParams, default_patch_size, pseudo_class_palette  # torch: training only

    weights = weights_file(weights)
    meta = read_metadata(weights)
    if model is None:
        model, _ = load_model(weights)
    n_params, n_bytes = _model_size(model)
    arch = meta["architecture"]
    bands, spec = list(meta["bands"]), dict(meta["normalisation"])
    mid = model_id(weights)
    multiple = 2 ** int(arch["depth"])
    patch = default_patch_size(meta.get("chip_size"), multiple)
    k = int(arch["n_pseudo_classes"])
    palette = pseudo_class_palette(k)
    threshold = float(meta.get("threshold", 0.5))
    metrics = meta.get("metrics") or {}
    init_from = meta.get("init_from")
    data = training_data or {"chips": None, "counts": None, "footprint": None, "note": "training data not recorded"}
    footprint = data.get("footprint") or {}
    created = str(meta.get("created") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    properties: dict[str, Any] = {
        "title": f"pixeldino RTS model {mid}",
        "description": (
            f"Retrogressive thaw slump (RTS) segmentation of Sentinel-2 imagery: a {ARCHITECTURE} of width "
            f"{arch['width']} and depth {arch['depth']} trained with pixeldino {meta.get('pixeldino_version', '')} "
            f"in mode {meta.get('mode', metrics.get('mode', ''))}."
        ),
        "created": created,
        "license": license,
        "mlm:name": f"pixeldino-rts-unet{arch['width']}",
        "mlm:architecture": ARCHITECTURE,
        "mlm:tasks": list(TASKS),
        "mlm:framework": FRAMEWORK,
        "mlm:framework_version": _framework_version(),
        "mlm:memory_size": int(n_bytes),
        "mlm:total_parameters": int(n_params),
        "mlm:pretrained": init_from is not None,
        "mlm:pretrained_source": (
            f"pixeldino model {init_from['model_id']} ({init_from['path']})" if init_from is not None else None
        ),
        "mlm:batch_size_suggestion": PredictParams().batch_size,
        "mlm:accelerator": None,
        "mlm:accelerator_constrained": False,
        "mlm:input": [
            {
                "name": "sentinel2_dn",
                "description": (
                    f"Sentinel-2 bands {', '.join(bands)} as digital numbers (reflectance x 10000, bilinearly "
                    f"resampled to 10 m), normalised as {_normalisation_text(spec)}; a pixel whose bands are all 0 "
                    f"(nodata) enters as 0. Any height and width that are multiples of {multiple} work; "
                    f"{patch} px is the patch pixeldino predict uses by default."
                ),
                "bands": bands,
                "input": {
                    "shape": [-1, len(bands), patch, patch],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": _value_scaling(spec),
                "resize_type": None,
                "pre_processing_function": {"format": "python", "expression": "pixeldino.normalise:normalise"},
            }
        ],
        "mlm:output": [
            {
                "name": "rts_logit",
                "description": (
                    "RTS logit per pixel; its sigmoid is the RTS probability, and pixels with probability >= "
                    f"{threshold} (pixeldino:threshold, calibrated on the validation chips) are RTS."
                ),
                "tasks": list(TASKS),
                "result": {
                    "shape": [-1, 1, patch, patch],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "classification:classes": [
                    {"value": 0, "name": "background", "description": "no retrogressive thaw slump"},
                    {
                        "value": 1,
                        "name": "rts",
                        "description": "retrogressive thaw slump (probability >= the threshold)",
                        "color_hint": RTS_COLOUR,
                    },
                ],
                "post_processing_function": {"format": "gdal-calc", "expression": _SIGMOID.format(x="A")},
            },
            {
                "name": "pseudo_class_logits",
                "description": (
                    f"{k} pseudo-class logits per pixel (PixelDINO self-distillation, unsupervised); the argmax "
                    "over the channels is the pixel's pseudo-class, mapped for quality assessment."
                ),
                "tasks": list(TASKS),
                "result": {
                    "shape": [-1, k, patch, patch],
                    "dim_order": ["batch", "class", "height", "width"],
                    "data_type": "float32",
                },
                "classification:classes": [
                    {
                        "value": i,
                        "name": f"pseudo-{i}",
                        "description": f"pseudo-class {i}",
                        "color_hint": "{:02X}{:02X}{:02X}".format(*palette[i][:3]),
                    }
                    for i in range(k)
                ],
                "post_processing_function": None,
            },
        ],
        "mlm:hyperparameters": {**dict(meta.get("training") or {}), "threshold": threshold},
        "pixeldino:model_id": mid,
        "pixeldino:threshold": threshold,
        "pixeldino:chip_size": meta.get("chip_size"),
        "pixeldino:patch_size": patch,
        "pixeldino:normalisation": spec,
        "pixeldino:auxiliary_layers": list(meta.get("auxiliary_layers") or []),
        "pixeldino:architecture": arch,
        "pixeldino:metrics": {
            key: metrics.get(key) for key in ("mode", "step", "exported", "val", "threshold", "val_at_threshold")
        },
        "pixeldino:training_data": {
            "chips": data.get("chips"),
            "counts": data.get("counts"),
            "n_scenes": footprint.get("n_scenes"),
            **({"note": data["note"]} if data.get("note") else {}),
        },
        "pixeldino:init_from": init_from,
        "pixeldino:version": meta.get("pixeldino_version", __version__),
        "pixeldino:git_revision": meta.get("git_revision"),
    }
    if footprint.get("start_datetime"):
        properties.update(
            datetime=None, start_datetime=footprint["start_datetime"], end_datetime=footprint["end_datetime"]
        )
    else:  # no acquisition dates known: the item's time is when the model was made
        properties["datetime"] = created
    card: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM],
        "id": f"pixeldino-model-{mid}",
        "geometry": footprint.get("geometry"),
        **({"bbox": footprint["bbox"]} if footprint.get("geometry") else {}),
        "properties": properties,
        "links": [],
        "assets": {
            "model": {
                "href": f"./{weights.name}",
                "type": "application/octet-stream",
                "title": "model weights (safetensors; architecture in pixeldino:architecture)",
                "roles": ["mlm:model", "mlm:weights", "model", "weights", "data"],
                "mlm:artifact_type": ARTIFACT_TYPE,
                "bands": [
                    {"name": b, "description": f"Sentinel-2 {b}, DN", "data_type": "uint16", "nodata": 0} for b in bands
                ],
            },
            "metadata": {
                "href": f"./{metadata_path(weights).name}",
                "type": "application/json",
                "title": "pixeldino model metadata: architecture, bands, normalisation, threshold, training",
                "roles": ["metadata"],
            },
        },
    }
    return card


def write_model_card(
    weights: str | os.PathLike[str],
    *,
    training_data: dict[str, Any] | None = None,
    license: str = "CC-BY-4.0",
    model: UNet | None = None,
) -> Path:
    """Write :func:`build_model_card` to :func:`pixeldino.modelio.model_card_path` of ``weights`` (atomically)."""
    card = build_model_card(weights, training_data=training_data, license=license, model=model)
    return write_json(model_card_path(weights), card)


# ---- reading it back ----------------------------------------------------------------------------------------


def read_model_card(path: str | os.PathLike[str], *, check_weights: bool = True) -> dict[str, Any]:
    """Read a model card and check it: its MLM fields, and that it describes the model files beside it.

    Args:
        path: the card (``model.stac.json``), or the model's weights or metadata JSON.
        check_weights: compare the card's model id with the weights' SHA-256 (when the weights are there).

    Returns:
        The card as a dict.

    Raises:
        ModelError: no card, not an MLM item, invalid MLM fields, bands other than the model's, or a card of
            other weights.
    """
    p = Path(path)
    card_file = p if p.name.endswith(".stac.json") else model_card_path(p)
    if not card_file.exists():
        raise ModelError(f"{card_file}: model card not found; train the model again (pixeldino writes it on export)")
    try:
        card = read_json(card_file)
    except InputError as exc:
        raise ModelError(f"{exc}; train the model again to rewrite the card") from None
    if not isinstance(card, dict) or card.get("type") != "Feature" or MLM not in card.get("stac_extensions", []):
        raise ModelError(f"{card_file}: not a model card (a STAC item with the MLM extension {MLM})")
    problems = check_extension_fields(card)
    if problems:
        raise ModelError(f"{card_file}: invalid model card: {problems[0]}")
    props = card["properties"]
    card_bands = [b if isinstance(b, str) else b["name"] for b in props["mlm:input"][0]["bands"]]
    shape = props["mlm:input"][0]["input"]["shape"]
    if len(shape) != 4 or shape[1] != len(card_bands):
        raise ModelError(f"{card_file}: mlm:input shape {shape} does not have one channel per band {card_bands}")
    weights = weights_file(card_file)
    if metadata_path(weights).exists():
        model_bands = list(read_metadata(weights)["bands"])
        if model_bands != card_bands:
            raise ModelError(
                f"{card_file}: the card's bands {', '.join(card_bands)} are not the model's "
                f"({metadata_path(weights).name}: {', '.join(model_bands)}); train the model again"
            )
    if check_weights and weights.exists() and props.get("pixeldino:model_id") != model_id(weights):
        raise ModelError(
            f"{card_file}: the card describes model {props.get('pixeldino:model_id')} but {weights.name} is "
            f"model {model_id(weights)}; the weights were replaced after the card was written, train again"
        )
    return dict(card)


def card_summary(card: dict[str, Any]) -> str:
    """A few lines about a model card, for the CLI."""
    props = card["properties"]
    inp = props["mlm:input"][0]
    metrics = props.get("pixeldino:metrics") or {}
    val = metrics.get("val_at_threshold") or {}
    iou = val.get("iou")
    when = (
        f"{props['start_datetime'][:10]} .. {props['end_datetime'][:10]}"
        if props.get("start_datetime")
        else "no acquisition dates recorded"
    )
    lines = [
        f"{card['id']}: {props['mlm:name']} ({props['mlm:architecture']}, {props['mlm:total_parameters']} parameters, "
        f"{props['mlm:framework']} {props.get('mlm:framework_version', '')})",
        f"  input: {', '.join(b if isinstance(b, str) else b['name'] for b in inp['bands'])} "
        f"shape {inp['input']['shape']}, normalisation {props.get('pixeldino:normalisation', {}).get('method')}",
        "  outputs: " + ", ".join(o["name"] for o in props["mlm:output"]),
        f"  threshold {props.get('pixeldino:threshold')}, validation IoU at it "
        + (f"{iou:.3f}" if isinstance(iou, float) else "n/a"),
        f"  training data: bbox {card.get('bbox')}, {when}",
        f"  licence {props.get('license')}, pretrained from {props.get('mlm:pretrained_source')}",
    ]
    return "\n".join(lines)
