"""Cut fetched scenes into training chips and store them in one zarr v3 group (one chunk per chip).

The store's layout and its reader are in :mod:`pixeldino.chipstore`. Sampling rules, chosen so validation numbers
are honest:

* the hold-out area (e.g. a strip of the labelled site) is tiled regularly into ``val`` chips, and inside them
  every pixel outside the hold-out is set to ignore — a val metric counts hold-out pixels only;
* ``train`` chips are random windows that contain no hold-out pixel (pixel-centre rasterisation of the hold-out,
  the same rule that defines the val pixels, so train and val pixel sets are disjoint);
* train windows lie mostly (>= half of their pixels) inside the label footprint, and about ``positive_fraction``
  of them contain RTS, because slumps cover well under 1 % of the land and uniform sampling would starve the
  RTS class;
* unlabelled chips are random windows from the unlabelled scenes, skipping windows that are mostly nodata;
* when a scene has a quality mask (``<scene>_mask.tif`` from the SCL, see :mod:`pixeldino.quality`), pixels it
  flags (invalid, cloud, shadow, snow, water) are set to ignore in labelled chips, and unlabelled windows count
  only clear pixels as valid, so mostly-bad windows are skipped; scenes whose sidecar says ``skipped`` (no valid
  or no clear pixel) are left out with a warning.

Everything is drawn from one seeded :class:`numpy.random.Generator`: the same inputs and seed give the same store.
:func:`run_chip` orchestrates; :mod:`pixeldino.chip_labelled` and :mod:`pixeldino.chip_unlabelled` write the two
groups of chips, :mod:`pixeldino.chip_scenes` opens and reads the scenes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pixeldino.chip_labelled import LabelledChips, LabelledPlan, plan_labelled_chips, write_labelled_chips
from pixeldino.chip_scenes import ChipScene, DnSample, SkipCounts, open_scene, usable_scenes
from pixeldino.chip_unlabelled import UnlabelledChips, write_unlabelled_chips
from pixeldino.chipstore import NODATA, SPLITS, STORE_VERSION
from pixeldino.errors import ConfigError, InputError
from pixeldino.io import atomic_output, write_json
from pixeldino.labels import IGNORE
from pixeldino.modelcard import training_footprint
from pixeldino.terrain import canonical_input_bands

log = logging.getLogger(__name__)


@dataclass
class ChipParams:
    """How chips are cut: the ``chips`` section of the workflow config and the options of ``pixeldino chip``.

    Which scenes, bands and label files are chipped, and where the store goes, are arguments of
    :func:`run_chip`, not parameters. The defaults are small chips for a quick run; the paper's setting is
    ``size: 192``.

    Attributes:
        size: chip edge in pixels; a multiple of 16, so that the chips fit every model depth up to 4 (a UNet of
            depth ``d`` needs multiples of ``2**d``).
        n_labelled: number of ``train`` chips; ``val`` chips come in addition, as many as tile the hold-out.
        n_unlabelled: number of unlabelled chips (for the semi-supervised training modes).
        positive_fraction: target share of ``train`` chips that contain RTS pixels (slumps cover well under 1 %
            of the land, so uniform sampling would starve the RTS class).
        seed: seed of the random generator behind every drawn window and statistics sample; the same inputs and
            seed give the same store.
    """

    size: int = field(default=64, metadata={"minimum": 16, "multipleOf": 16})
    n_labelled: int = field(default=96, metadata={"minimum": 0})
    n_unlabelled: int = field(default=96, metadata={"minimum": 0})
    positive_fraction: float = field(default=0.5, metadata={"minimum": 0, "maximum": 1})
    seed: int = 0

    def __post_init__(self) -> None:
        """Enforce the bounds in the field metadata, which the config schema also carries.

        Raises:
            ConfigError: a value below its minimum, above its maximum or not a multiple of its step.
        """
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if "minimum" in meta and value < meta["minimum"]:
                raise ConfigError(f"chips.{f.name} must be at least {meta['minimum']}, got {value}")
            if "maximum" in meta and value > meta["maximum"]:
                raise ConfigError(f"chips.{f.name} must be at most {meta['maximum']}, got {value}")
            if "multipleOf" in meta and value % meta["multipleOf"]:
                raise ConfigError(f"chips.{f.name} must be a multiple of {meta['multipleOf']}, got {value}")


def run_chip(
    params: ChipParams,
    *,
    scenes: Sequence[str | os.PathLike[str]],
    bands: Sequence[str],
    out: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    footprint: str | os.PathLike[str] | None = None,
    holdout: str | os.PathLike[str] | None = None,
    unlabelled_scenes: Sequence[str | os.PathLike[str]] = (),
    stats_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Cut labelled and unlabelled chips from fetched scenes into a zarr store (atomically).

    Args:
        params: chip size, counts, positive fraction and seed.
        scenes: fetched scene COGs that may hold labelled areas; those whose extent meets the footprint are used.
        bands: bands to store, in order (any provider alias); every scene must carry them (band descriptions).
        out: the zarr store to create (replaced if it exists).
        labels: RTS polygons (any vector format and CRS). None: no labelled chips.
        footprint: polygons where labelling was exhaustive; pixels outside are ignored. None: the whole of every
            labelled scene counts as labelled.
        holdout: polygons of the validation area; it is tiled into ``val`` chips, and ``train`` chips avoid it.
        unlabelled_scenes: fetched scenes to draw unlabelled chips from.
        stats_out: the JSON file for the statistics; None: ``stats.json`` next to the store.

    Returns:
        The statistics written to ``stats_out``: counts, positive fractions, per-band DN percentiles, and where
        and when the chipped scenes are (``scene_footprint``, :func:`pixeldino.modelcard.training_footprint`).

    Raises:
        InputError: a scene is missing, unreadable or lacks a band; a label, footprint or hold-out file holds no
            polygon, is ambiguous (several layers) or misses the scenes; no window fits or holds RTS; the scenes
            give no training, validation or unlabelled chip (mostly nodata or flagged).
        ConfigError: an unknown or repeated band; a footprint or hold-out without labels; no share of RTS chips;
            nothing to chip.
    """
    band_list = canonical_input_bands(list(bands))  # Sentinel-2 bands, then auxiliary layers (slope...)
    labels = _labelled_input(params, labels, footprint, holdout, unlabelled_scenes)
    rng = np.random.default_rng(params.seed)
    store = Path(out)
    labelled_scenes = [open_scene(p, band_list) for p in usable_scenes(scenes)] if labels is not None else []
    unlabelled = [open_scene(p, band_list) for p in usable_scenes(unlabelled_scenes)] if params.n_unlabelled else []
    if labels is not None and not labelled_scenes:
        raise InputError(
            f"every scene given for the labels ({', '.join(Path(p).name for p in scenes)}) is marked skipped in its "
            "sidecar (no usable pixel); fetch clearer scenes of the labelled area"
        )
    if params.n_unlabelled and not unlabelled and labels is None:
        raise InputError(
            f"every unlabelled scene ({', '.join(Path(p).name for p in unlabelled_scenes)}) is marked skipped in "
            "its sidecar (no usable pixel): nothing to chip; fetch clearer scenes"
        )
    for path in (labels, footprint, holdout):
        if path is not None and not Path(path).exists():
            raise InputError(f"{path} not found; check the labels/footprint/holdout paths in your config")
    plan = plan_labelled_chips(labelled_scenes, params, labels=labels, footprint=footprint, holdout=holdout)

    dn, skipped = DnSample(), SkipCounts()
    with atomic_output(store) as tmp:
        root = zarr.open_group(str(tmp), mode="w")
        # one generator for both groups, labelled first: the order of draws is part of "same seed, same store"
        n_bands = len(band_list)
        written = write_labelled_chips(
            root, plan, labelled_scenes, params, n_bands=n_bands, rng=rng, dn=dn, skipped=skipped
        )
        # checked before the store is published: a store without them would only fail (or mislead) in training
        _check_labelled(written, plan, labelled_scenes, params, labels=labels, holdout=holdout)
        drawn = write_unlabelled_chips(root, unlabelled, params, n_bands=n_bands, rng=rng, dn=dn, skipped=skipped)
        stats = _store_stats(
            params,
            band_list,
            plan,
            labelled_scenes,
            unlabelled,
            written,
            drawn,
            dn,
            skipped,
            store=store,
            labels=labels,
            footprint=footprint,
            holdout=holdout,
        )
        root.attrs.update(
            {
                "pixeldino_chips": STORE_VERSION,
                "bands": band_list,
                "chip_size": params.size,
                "ignore_value": IGNORE,
                "nodata": NODATA,
                "seed": params.seed,
                "splits": SPLITS,
                "index": written.index + drawn.index,
                "stats": stats,
            }
        )
    write_json(Path(stats_out) if stats_out is not None else store.parent / "stats.json", stats)
    log.info("%s", stats["summary"])
    return stats


def _labelled_input(
    params: ChipParams,
    labels: str | os.PathLike[str] | None,
    footprint: str | os.PathLike[str] | None,
    holdout: str | os.PathLike[str] | None,
    unlabelled_scenes: Sequence[str | os.PathLike[str]],
) -> str | os.PathLike[str] | None:
    """The label file to chip from (None: no labelled chips), after checking that the request makes sense.

    Labels are read only when labelled chips are asked for (``n_labelled`` train chips or a hold-out); without
    labels a footprint or hold-out means nothing, and a request for no chips at all would write an empty store.

    Raises:
        ConfigError: a footprint or hold-out without labels, training chips asked for without any share of RTS,
            or nothing to chip.
    """
    if labels is None:
        areas = (("labels.footprint", "--footprint", footprint), ("labels.holdout", "--holdout", holdout))
        given = [f"{key} ({option}) {path}" for key, option, path in areas if path is not None]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} given without labels (labels.file, --labels): an area of labels means "
                "nothing without them; give the label file or drop it"
            )
    elif params.n_labelled == 0 and holdout is None:
        log.info("chips.n_labelled is 0 and there is no hold-out: no labelled chips, %s is not read", labels)
        labels = None
    else:
        if params.n_labelled and params.positive_fraction == 0:
            raise ConfigError(
                "chips.positive_fraction (--positive-fraction) is 0, so no training chip would hold RTS and training "
                "refuses such chips; give a share above 0 (the default is 0.5)"
            )
        if holdout is None:
            log.warning(
                "chip: no hold-out (labels.holdout, --holdout): no validation chips, so training cannot report "
                "validation IoU or calibrate the threshold (it stays 0.5)"
            )
        return labels
    if not params.n_unlabelled or not unlabelled_scenes:
        raise ConfigError(
            "nothing to chip: no labelled chips (no labels.file / --labels, or chips.n_labelled 0 without a "
            "hold-out) and no unlabelled chips (chips.n_unlabelled / --n-unlabelled is "
            f"{params.n_unlabelled}, {len(unlabelled_scenes)} unlabelled scenes); ask for one or the other"
        )
    return None


def _check_labelled(
    written: LabelledChips,
    plan: LabelledPlan,
    scenes: list[ChipScene],
    params: ChipParams,
    *,
    labels: str | os.PathLike[str] | None,
    holdout: str | os.PathLike[str] | None,
) -> None:
    """Refuse labelled chips that training cannot use: none at all, no RTS in them, or no validation chip.

    Raises:
        InputError: naming the scenes and what the chips lack.
    """
    if labels is None:
        return
    names = ", ".join(scenes[lw.scene].path.name for lw in plan.windows)
    mostly = "are mostly nodata or flagged by the quality mask"
    if plan.n_train and not written.chips["train"]:
        raise InputError(
            f"no training chip could be cut: all {params.size} px windows of the labelled area of {names} {mostly}; "
            "check those scenes or fetch clearer ones"
        )
    if plan.n_train and not written.positive["train"] and round(plan.n_train * params.positive_fraction) == 0:
        raise ConfigError(
            f"chips.positive_fraction {params.positive_fraction} of {plan.n_train} training chips (chips.n_labelled) "
            "rounds to no chip with RTS, and training refuses chips without RTS; raise either"
        )
    if plan.n_train and not written.positive["train"]:
        raise InputError(
            f"none of the {written.chips['train']} training chips holds RTS: the windows over the label polygons of "
            f"{labels} in {names} {mostly}; fetch clearer scenes of the labelled area"
        )
    if holdout is not None and not written.chips["val"]:
        raise InputError(
            f"no validation chip could be cut: the hold-out {holdout} in {names} is mostly nodata or flagged by "
            "the quality mask; move the hold-out or fetch clearer scenes"
        )
    if written.chips["train"] < plan.n_train:
        log.warning(
            "only %d of the %d training chips asked for could be cut (the other windows %s)",
            written.chips["train"],
            plan.n_train,
            mostly,
        )


def _summary(counts: dict[str, int], store: str) -> str:
    """One line: how many labelled and unlabelled chips were written, and the share of them with RTS."""

    def share(positive: int, n: int) -> str:
        return f"{positive / n:.0%} with RTS" if n else "none"

    n_lab = counts["train"] + counts["val"]
    return (
        f"chip: {n_lab} labelled chips ({counts['train']} train, {share(counts['train_positive'], counts['train'])}; "
        f"{counts['val']} val, {share(counts['val_positive'], counts['val'])}) and {counts['unlabelled']} "
        f"unlabelled chips in {store}"
    )


def _store_stats(
    params: ChipParams,
    bands: list[str],
    plan: LabelledPlan,
    labelled_scenes: list[ChipScene],
    unlabelled_scenes: list[ChipScene],
    written: LabelledChips,
    drawn: UnlabelledChips,
    dn: DnSample,
    skipped: SkipCounts,
    *,
    store: Path,
    labels: str | os.PathLike[str] | None,
    footprint: str | os.PathLike[str] | None,
    holdout: str | os.PathLike[str] | None,
) -> dict[str, Any]:
    """The statistics of a store: what was asked, what was written and from where, and the DN percentiles."""
    splits = ("train", "val")
    counts = {
        "train": written.chips["train"],
        "val": written.chips["val"],
        "train_positive": written.positive["train"],
        "val_positive": written.positive["val"],
        "unlabelled": drawn.n,
        "skipped_nodata": skipped.nodata,
        "skipped_quality": skipped.quality,
    }
    return {
        "summary": _summary(counts, str(store)),
        "chip_size": params.size,
        "bands": bands,
        "seed": params.seed,
        "counts": counts,
        "requested": {
            "n_labelled": params.n_labelled,
            "n_unlabelled": params.n_unlabelled,
            "positive_fraction": params.positive_fraction,
        },
        "positive_chip_fraction": {
            s: (written.positive[s] / written.chips[s] if written.chips[s] else None) for s in splits
        },
        "positive_pixel_fraction": {
            s: (written.pixels[s][0] / written.pixels[s][1] if written.pixels[s][1] else None) for s in splits
        },
        "labelled_pixels": {s: written.pixels[s][1] for s in splits},
        "band_dn": dn.summary(bands),
        "scenes": {
            "labelled": [str(labelled_scenes[lw.scene].path) for lw in plan.windows],
            "unlabelled": [str(s.path) for s in unlabelled_scenes],
        },
        # where and when the chips come from, for the model card of every model trained on them
        "scene_footprint": training_footprint(
            [labelled_scenes[lw.scene].path for lw in plan.windows] + [s.path for s in unlabelled_scenes]
        ),
        "labels": str(labels) if labels else None,
        "label_footprint": str(footprint) if footprint else None,
        "holdout": str(holdout) if holdout else None,
    }
