"""The training stage's entry point: parameters, chips and outputs in, a trained and exported model out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pixeldino.train.chips import ChipSet, load_chips
from pixeldino.train.params import TrainConfig, TrainOutputs
from pixeldino.train.trainer import Trainer


def run_train(
    params: TrainConfig,
    chips: str | os.PathLike[str] | ChipSet,
    outputs: TrainOutputs,
    *,
    bands: Sequence[str] | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model on ``chips`` and export it to ``outputs.model`` (+ its metadata JSON and model card).

    ``supervised+aug``, ``fixmatch`` and ``pixeldino`` augment the labelled chips (weak D4 + strong geometric with
    the label warped jointly + photometric); ``supervised`` uses them as they are. The semi-supervised modes
    validate both the EMA teacher and the student and export what ``params.export`` asks for, the supervised
    modes the student. Writes every path of ``outputs`` (see :class:`TrainOutputs`).

    Args:
        params: the run's :class:`TrainConfig`.
        chips: a chip store written by ``pixeldino chip`` (its path), or a :class:`ChipSet`: an open
            :class:`pixeldino.chipstore.ChipStore`, or :class:`pixeldino.train.TrainingChips` for chips in memory.
        outputs: where the run writes; ``outputs.work_dir`` holds the checkpoint it resumes from.
        bands: the band list training expects; a chip set with other bands is an error (None: take its bands).
        resume: continue from the checkpoint in ``outputs.work_dir`` if there is one (bit-exact continuation);
            False starts afresh.
        progress: show a tqdm progress bar with ETA.

    Returns:
        Final metrics: validation IoU/F1/precision/recall at p = 0.5, the calibrated threshold and the metrics
        there, per candidate model, and a summary of the training history.

    Raises:
        TrainingError: an inconsistent config; other bands than ``bands``; no labelled chips, no positive pixels,
            inconsistent shapes, or no unlabelled chips for a semi-supervised mode; a checkpoint this run cannot
            continue; or a non-finite loss (the last good checkpoint is kept).
        InputError: ``chips`` is no readable chip store.
        ModelError: ``params.init_from`` is missing or corrupt, or its bands, normalisation or architecture are
            not the run's.
    """
    params.check()
    training_chips = load_chips(chips, params, bands)
    training_chips.check(params)
    return Trainer(training_chips, params, outputs, progress=progress, data_source=chips).run(resume)
