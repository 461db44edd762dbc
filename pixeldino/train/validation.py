"""Validation of the student and the teacher on the labelled-region validation chips, the choice of the exported
model, and the batch-norm statistics that validated and exported models need (``norm: batch`` only).

Validation counts TP, FP and FN at every candidate threshold of :data:`pixeldino.metrics.THRESHOLDS` in one pass;
the metrics at p = 0.5 and the calibrated threshold both come from those counts (:mod:`pixeldino.metrics`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixeldino.labels import IGNORE
from pixeldino.metrics import THRESHOLDS, calibrate_threshold, confusion_metrics, iou_at_threshold
from pixeldino.model import UNet
from pixeldino.train.data import ChipSource, autocast, masks_to_device

if TYPE_CHECKING:
    from pixeldino.chipstore import ChipArray

#: Per validated model (``student``, ``teacher``): the metrics at p = 0.5 and the TP/FP/FN counts per threshold.
Results = dict[str, tuple[dict[str, float | None], np.ndarray]]


@torch.no_grad()
def threshold_counts(model: UNet, source: ChipSource, masks: ChipArray, batch_size: int, amp: bool) -> np.ndarray:
    """``(len(THRESHOLDS), 3)`` array of TP, FP, FN for every candidate threshold (prediction: ``p >= t``)."""
    thresholds = torch.tensor(THRESHOLDS, device=source.device)
    n_t = len(THRESHOLDS)
    pos_hist = torch.zeros(n_t + 1, dtype=torch.float64, device=source.device)
    neg_hist = torch.zeros_like(pos_hist)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(source), batch_size):
            index = np.arange(start, min(start + batch_size, len(source)))
            x = source.batch(index)
            y = masks_to_device(masks, index, source.device)
            with autocast(source.device, amp):
                logits, _ = model(x)
            p = torch.sigmoid(logits[:, 0].float())
            known = y != IGNORE
            # bucket b = number of thresholds <= p, so "p >= THRESHOLDS[k]" <=> bucket > k
            bucket = torch.bucketize(p[known], thresholds, right=True)
            pos = y[known] == 1
            pos_hist += torch.bincount(bucket[pos], minlength=n_t + 1).to(torch.float64)
            neg_hist += torch.bincount(bucket[~pos], minlength=n_t + 1).to(torch.float64)
    finally:
        model.train(was_training)
    pos_above = torch.flip(torch.cumsum(torch.flip(pos_hist, [0]), 0), [0])[1:]  # sum of buckets > k
    neg_above = torch.flip(torch.cumsum(torch.flip(neg_hist, [0]), 0), [0])[1:]
    tp = pos_above
    fp = neg_above
    fn = pos_hist.sum() - pos_above
    counts: np.ndarray = torch.stack([tp, fp, fn], dim=1).cpu().numpy()
    return counts


def validate(models: dict[str, UNet], source: ChipSource, masks: ChipArray, batch_size: int, amp: bool) -> Results:
    """The metrics at p = 0.5 and all threshold counts of every model on the validation chips."""
    results: Results = {}
    for name, model in models.items():
        counts = threshold_counts(model, source, masks, batch_size, amp)
        tp, fp, fn = counts[THRESHOLDS.index(0.5)]
        results[name] = (confusion_metrics(float(tp), float(fp), float(fn)), counts)
    return results


def choose_export(results: Results | None, export: str, has_teacher: bool) -> str:
    """The model ``export`` asks for: ``student``, ``teacher``, or for ``best`` the one with the higher validation
    IoU at its calibrated threshold (ties, undefined IoUs and no validation chips: the teacher).

    Args:
        results: :func:`validate` of ``student`` and ``teacher``, or None without validation chips.
        export: ``train.export``.
        has_teacher: whether the run has a teacher (the supervised modes export the student).
    """
    if not has_teacher or export == "student":
        return "student"
    if export == "teacher" or not results:
        return "teacher"
    best = {}
    for name, (_, counts) in results.items():
        iou = iou_at_threshold(counts, calibrate_threshold(counts))
        best[name] = -1.0 if iou is None else iou  # an undefined IoU loses against any measured one
    return "student" if best["student"] > best["teacher"] + 1e-12 else "teacher"


def candidate_summaries(results: Results | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per model: metrics at p = 0.5 (``val``), the calibrated ``threshold`` and the metrics there
    (``val_at_threshold``); without validation chips the metrics are None and the threshold 0.5."""
    summaries: dict[str, dict[str, Any]] = {}
    for name in names:
        if results is None:
            summaries[name] = {"val": None, "threshold": 0.5, "val_at_threshold": None}
            continue
        at_half, counts = results[name]
        t = calibrate_threshold(counts)
        tp, fp, fn = counts[THRESHOLDS.index(t)]
        at_t = confusion_metrics(float(tp), float(fp), float(fn))
        summaries[name] = {"val": dict(at_half), "threshold": t, "val_at_threshold": at_t}
    return summaries


# ---- batch-norm statistics (only for norm: batch) -------------------------------------------------------------


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_batch_norm_statistics(model: torch.nn.Module) -> Iterator[None]:
    """Batch-norm layers still normalise with the batch's statistics but leave their running statistics as they
    are (momentum 0): the strongly augmented unlabelled passes must not mix into the statistics of inference."""
    norms = _batch_norms(model)
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum


@torch.no_grad()
def recalibrated(model: UNet, source: ChipSource, n_chips: int, batch_size: int, amp: bool) -> UNet:
    """The model itself if it has no batch norm; else an eval-mode copy whose running statistics are recomputed
    (cumulative average) on ``n_chips`` evenly spaced, un-augmented chips of ``source``."""
    norms = _batch_norms(model)
    if not norms:
        return model
    fitted = copy.deepcopy(model)
    saved = [m.momentum for m in norms]
    for m in _batch_norms(fitted):
        m.reset_running_stats()
        m.momentum = None
    fitted.train()
    index = np.unique(np.linspace(0, len(source) - 1, min(len(source), max(1, n_chips))).astype(int))
    for start in range(0, len(index), batch_size):
        with autocast(source.device, amp):
            fitted(source.batch(index[start : start + batch_size]))
    for m, momentum in zip(_batch_norms(fitted), saved):
        m.momentum = momentum
    return fitted.eval()
