"""Confusion-count metrics of the RTS class: the one definition used by training, evaluation and label agreement.

From the counts of true positives (TP), false positives (FP) and false negatives (FN):

* IoU = TP / (TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN);
* F1 of one confusion table = 2 TP / (2 TP + FP + FN) (the Dice coefficient), defined wherever IoU is: a model
  that predicts nothing where there are slumps has F1 0, not an undefined F1 (:func:`confusion_metrics`);
* F1 of a precision and a recall that count different things (object matching: matched predicted objects versus
  detected label objects) is their harmonic mean, undefined when either is (:func:`f1_score`). The pixel F1 of
  :mod:`pixeldino.evaluate` is also this harmonic mean of its pixel precision and recall, as ``metrics.json`` has
  always reported it: it equals the Dice coefficient up to rounding in the last bit wherever precision and recall
  are both defined, and is None where either is not.

**Undefined values.** A ratio whose denominator is 0 (IoU when neither the labels nor the prediction have a
positive pixel, precision without predicted positives, ...) is ``None``: ``null`` in JSON (``metrics.json``,
``model.json``) and an empty cell in ``training_log.csv``. Callers that need another reading say so themselves
(label agreement scores two empty masks as full agreement, see :func:`pixeldino.labels.pixel_iou`).

The validation thresholds of training, and the calibration of the decision threshold on their counts, live here
too: the counts per threshold are a stack of confusion tables.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Candidate decision thresholds (probability ``p >= t`` is RTS) for calibration on validation chips: 0.05..0.95.
THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator`` as a Python float; None when the denominator is 0 (counts are never negative)."""
    return float(numerator) / float(denominator) if denominator else None


def f1_score(precision: float | None, recall: float | None) -> float | None:
    """Harmonic mean of a precision and a recall (0 when both are 0; None when either is undefined)."""
    if precision is None or recall is None:
        return None
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def confusion_metrics(tp: float, fp: float, fn: float) -> dict[str, float | None]:
    """Pixel ``iou``, ``f1`` (2 TP / (2 TP + FP + FN)), ``precision`` and ``recall`` of one confusion table.

    Args:
        tp: true positives.
        fp: false positives.
        fn: false negatives.

    Returns:
        The four metrics, each None where its denominator is 0.
    """
    return {
        "iou": ratio(tp, tp + fp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def mask_counts(predicted: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` of a boolean ``predicted`` mask against a boolean ``reference`` over ``valid`` pixels."""
    a = predicted.astype(bool)
    b = reference.astype(bool)
    if valid is not None:
        a = a & valid
        b = b & valid
    tp = int(np.count_nonzero(a & b))
    return tp, int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))


def mask_iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float | None:
    """IoU of two boolean masks over ``valid`` pixels (None when both are empty there)."""
    tp, fp, fn = mask_counts(a, b, valid)
    return ratio(tp, tp + fp + fn)


def mean_of_defined(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are defined (None when none is), e.g. a metric averaged over sites."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def iou_at_threshold(counts: np.ndarray, threshold: float) -> float | None:
    """IoU at one of :data:`THRESHOLDS` from a ``(len(THRESHOLDS), 3)`` array of TP, FP, FN per threshold."""
    tp, fp, fn = counts[THRESHOLDS.index(threshold)]
    return ratio(tp, tp + fp + fn)


def calibrate_threshold(counts: np.ndarray) -> float:
    """The threshold of :data:`THRESHOLDS` with the highest IoU (ties: the one closest to 0.5).

    Args:
        counts: ``(len(THRESHOLDS), 3)`` array of TP, FP, FN, one row per threshold.

    Returns:
        The threshold; 0.5 when IoU is undefined at every threshold.
    """
    best, best_iou = 0.5, -1.0
    for t, (tp, fp, fn) in sorted(zip(THRESHOLDS, counts), key=lambda item: abs(item[0] - 0.5)):
        iou = ratio(tp, tp + fp + fn)
        if iou is not None and iou > best_iou + 1e-12:
            best, best_iou = t, iou
    return best
