"""Confusion-count metrics: one definition, None where a denominator is 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixeldino.metrics import (
    THRESHOLDS,
    calibrate_threshold,
    confusion_metrics,
    f1_score,
    iou_at_threshold,
    mask_counts,
    mask_iou,
    mean_of_defined,
    ratio,
)


def test_confusion_metrics_of_a_known_table() -> None:
    m = confusion_metrics(10, 5, 5)
    assert m["iou"] == pytest.approx(0.5) and m["f1"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in confusion_metrics(np.float64(3), np.float64(1), np.float64(0)).values())


def test_undefined_values_are_none_and_json_null() -> None:
    assert confusion_metrics(0, 0, 0) == {"iou": None, "f1": None, "precision": None, "recall": None}
    # nothing predicted where there are slumps: F1 and IoU 0, precision undefined
    assert confusion_metrics(0, 0, 4) == {"iou": 0.0, "f1": 0.0, "precision": None, "recall": 0.0}
    assert json.loads(json.dumps(confusion_metrics(0, 0, 0)))["iou"] is None
    assert ratio(1, 0) is None and ratio(1, 4) == 0.25
    assert f1_score(None, 0.5) is None and f1_score(0.0, 0.0) == 0.0 and f1_score(0.5, 0.5) == 0.5
    assert mean_of_defined([None, 0.2, 0.4]) == pytest.approx(0.3) and mean_of_defined([None]) is None


def test_mask_metrics() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert mask_iou(a, b) is None
    a[0, :2] = True
    b[0, 1:3] = True
    assert mask_counts(a, b) == (1, 1, 1) and mask_iou(a, b) == pytest.approx(1 / 3)
    valid = np.ones((4, 4), bool)
    valid[0, 0] = False
    assert mask_counts(a, b, valid) == (1, 0, 1) and mask_iou(a, b, valid) == 0.5


def test_threshold_calibration_and_iou_at_a_threshold() -> None:
    counts = np.array([[10, 10, 0]] * len(THRESHOLDS), dtype=float)
    counts[12] = [10, 1, 1]
    assert calibrate_threshold(counts) == THRESHOLDS[12] == 0.65
    assert iou_at_threshold(counts, 0.65) == pytest.approx(10 / 12)
    # ties go to the threshold closest to 0.5
    assert calibrate_threshold(np.array([[5, 5, 5]] * len(THRESHOLDS), dtype=float)) == 0.5
    empty = np.zeros((len(THRESHOLDS), 3))
    assert calibrate_threshold(empty) == 0.5 and iou_at_threshold(empty, 0.5) is None
