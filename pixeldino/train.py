"""Training: supervised baselines, FixMatchSeg and PixelDINO, with exact resume and a self-describing export.

Modes (``TrainConfig.mode``):

* ``supervised``: BCE on labelled chips, no augmentation at all.
* ``supervised+aug``: the same with weak (D4) + strong (rotation, crop/zoom, elastic, photometric) augmentation
  of the labelled chips; the label is warped jointly with the image (see :mod:`pixeldino.augment`).
* ``fixmatch`` (FixMatchSeg): pseudo-labels from the CURRENT EMA teacher on the weak view of unlabelled chips,
  kept where the teacher is confident, warped jointly with the image by the shared strong transform; BCE of the
  student on confident in-bounds pixels, weighted by ``beta``.
* ``pixeldino``: ``v1 = weak(x)``; ``t = softmax((teacher_pseudo(v1) - center) / T_teacher)``;
  ``(v2, t2, valid) = strong(v1, t)`` with ONE shared geometric transform; loss = CE(student_pseudo(v2) /
  T_student, t2) averaged over valid in-bounds pixels; the center follows the teacher logits with momentum
  ``center_momentum``; total = BCE_labelled + beta * L_unlabelled.

``supervised+aug``, ``fixmatch`` and ``pixeldino`` all augment the labelled chips (weak + strong).

**Random streams.** Labelled chips and their augmentation, and unlabelled chips and theirs, come from separate,
separately seeded streams. A ``pixeldino`` run with ``beta = 0`` therefore sees exactly the labelled batches, and
makes exactly the student updates, of the same run with ``beta > 0`` up to the unlabelled gradient: it is the
control that isolates the unlabelled loss from everything else of the pipeline (teacher, export, augmentation).

**Normalisation layers.** The default ``norm: layer`` is the reference's (khdlr/PixelDINO ``lib/models/unet.py``
normalises with ``hk.LayerNorm(axis=-1)``, a per-pixel LayerNorm over channels, after every convolution): no batch
statistics, so student, teacher, labelled and unlabelled passes never disagree about them. With ``norm: batch``
the unlabelled passes do not update the running statistics, the teacher uses the student's (labelled-only)
statistics during training, and every model that is validated or exported first gets statistics recomputed on
clean labelled training chips: running statistics averaged by an EMA do not fit the averaged weights (an exported
teacher measured 1.6 % validation IoU with them, 49.9 % with recomputed ones).

**Schedules scale with the run.** AdamW with linear warm-up (``warmup_fraction`` of the steps unless
``warmup_steps`` is given) and cosine decay. The teacher is an EMA of the student's parameters whose momentum rises
from ``m0`` to 1 on a cosine; ``m0`` follows from ``ema_horizon``, the initial averaging window as a fraction of
the run (``1 - m0 = 1 / (ema_horizon * steps)``), so that runs of different length average over the same share of
their length; the default is the reference's ``m0 = 0.996`` at 200k steps. The window never gets shorter than
``ema_min_horizon_steps``: a teacher that follows the student within a step or two (the reference's share of a
short run) destabilises self-distillation. ``ema_momentum`` sets ``m0`` directly instead.

**Export.** ``export: teacher | student | best`` (semi-supervised modes; the supervised modes have no teacher and
export the student). ``best`` takes whichever of the two has the higher IoU on the labelled-region validation chips
at its calibrated threshold, never anything measured on target data. Every validation logs both.

Outputs: ``model.safetensors`` + ``model.json`` (see :mod:`pixeldino.modelio`), ``training_log.csv``,
``training_curves.png``, ``checkpoint/`` (safetensors + JSON, no pickle) and, only if ``torch.utils.tensorboard``
imports (a dependency; without it the event log is skipped), a TensorBoard event log in ``tensorboard/``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from pixeldino.augment import (
    IGNORE,
    StrongAugmentConfig,
    decode_label,
    encode_label,
    strong_augment,
    strong_geometric,
    weak_augment,
)
from pixeldino.errors import TrainingError
from pixeldino.io import atomic_output
from pixeldino.model import NORMS, UNet, UNetConfig, build_model, resolve_device
from pixeldino.modelio import save_model
from pixeldino.normalise import compute_zscore_stats, validate_spec

log = logging.getLogger(__name__)

MODES = ("supervised", "supervised+aug", "fixmatch", "pixeldino")
SEMI_MODES = ("fixmatch", "pixeldino")
EXPORTS = ("best", "teacher", "student")
TARGET_WARPS = ("shared", "independent")
PSEUDO_RESOLUTIONS = ("full", "half")
#: The allowed values of the TrainConfig fields that take one of a few names (checked here, offered by the CLI).
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES, "norm": NORMS, "export": EXPORTS, "target_warp": TARGET_WARPS,
    "pseudo_resolution": PSEUDO_RESOLUTIONS, "device": ("auto", "cpu", "cuda"),
}  # fmt: skip
#: Candidate thresholds for calibration on the validation chips.
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
CHECKPOINT_FORMAT = "pixeldino-checkpoint"
CHECKPOINT_VERSION = 2
#: The reference's initial EMA momentum and run length; ``ema_horizon``'s default is their averaging window.
REFERENCE_EMA_MOMENTUM = 0.996
REFERENCE_STEPS = 200_000
#: Config fields that do not change the numbers of a run; every other field must match to resume a checkpoint.
#: ``steps`` may differ: a finished run can be extended, its schedules then stretch to the new length.
_RESUME_FREE_FIELDS = (
    "steps", "val_every", "checkpoint_every", "log_every", "device", "num_threads", "compile", "export",
    "bn_recalibration_chips",
)  # fmt: skip


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored as ``training`` in the model metadata.

    The defaults are the paper's setting (khdlr/PixelDINO: UNet-16, 16 + 16 chips, 200k steps, AdamW 1e-3); every
    field is a ``train.<field>`` key of the workflow config and a ``--<field>`` option of ``pixeldino train``.

    Attributes:
        mode: ``supervised`` | ``supervised+aug`` | ``fixmatch`` | ``pixeldino``.
        steps: optimiser steps.
        batch_labelled: labelled chips per step.
        batch_unlabelled: unlabelled chips per step (semi-supervised modes).
        lr: peak learning rate (AdamW).
        weight_decay: AdamW decoupled weight decay.
        warmup_fraction: linear warm-up from 0 to ``lr`` over this share of ``steps``; then cosine decay to
            ``lr * min_lr_ratio``.
        warmup_steps: warm-up length in steps instead of ``warmup_fraction`` (None: use the fraction).
        min_lr_ratio: final learning rate as a fraction of ``lr`` (reference: 4e-5 / 1e-3).
        grad_clip: maximum global gradient norm (0 disables clipping).
        seed: seeds model init, the chip samplers and the augmentations (one stream each for labelled and
            unlabelled chips).
        width: UNet base width (16 in the paper).
        depth: UNet encoder stages; chips must be multiples of ``2**depth`` pixels.
        n_pseudo_classes: K, the pseudo-class head size.
        norm: ``layer`` (per-pixel LayerNorm over channels, the reference's), ``batch`` or ``group``.
        teacher_temperature: softmax temperature of the PixelDINO teacher target.
        student_temperature: temperature of the student logits in the PixelDINO cross-entropy. The reference
            (khdlr/PixelDINO ``train_dino.py``) feeds raw student logits to ``optax.softmax_cross_entropy``, i.e.
            1.0, so ``teacher_temperature=0.5`` makes the target sharper than the student as in the paper.
        center_momentum: momentum of the teacher-logit center.
        ema_horizon: the teacher's initial averaging window as a fraction of ``steps``:
            ``1 - m0 = 1 / max(ema_horizon * steps, ema_min_horizon_steps)``. The default is the reference's
            ``m0 = 0.996`` at 200k steps.
        ema_min_horizon_steps: the shortest initial averaging window, in steps. Self-distillation needs a teacher
            that is smoother than the student step by step, whatever the run length: on the domain-shift benchmark
            (800 steps, labelled-region val IoU) a 1.25-step window (the reference's share of the run) gave
            49.6 %, 16 steps 66.9 %, 100 steps 76.5 % (supervised+aug: 77.2 %). Runs of 80k steps and more keep
            the reference's share.
        ema_momentum: initial teacher EMA momentum ``m0`` instead of ``ema_horizon`` (None: use the horizon);
            the momentum rises to 1 on a cosine schedule over ``steps``.
        beta: weight of the unlabelled loss (0: the pipeline's control run, see the module docs).
        fixmatch_threshold: FixMatch confidence; a float ``tau`` keeps pixels with ``max(p, 1-p) >= tau``, a pair
            ``[tau_background, tau_rts]`` uses one threshold per class.
        export: which model is validated into ``model.safetensors``: ``best`` (higher labelled-region
            validation IoU of teacher and student), ``teacher`` or ``student``; the supervised modes always
            export the student.
        target_warp: ``shared`` (the teacher target is warped with the student image's geometric transform) or
            ``independent`` (an ablation: the target gets its own random transform, as the reference code does).
        pseudo_resolution: ``full`` or ``half`` (ablation: pseudo-class logits and targets at half resolution).
        bn_recalibration_chips: labelled training chips used to recompute batch-norm statistics before a model
            with ``norm: batch`` is validated or exported.
        val_every: validate every this many steps (0: only at the end).
        checkpoint_every: write a checkpoint every this many steps (and always at the end).
        log_every: write a row of ``training_log.csv`` every this many steps (means over the interval).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        num_threads: CPU threads for torch (None: torch's default).
        amp: bf16 autocast (CUDA only; ignored on CPU).
        channels_last: channels-last memory format (CUDA only).
        compile: wrap the student forward in ``torch.compile``.
        augment: overrides of the strong augmentation ranges (fields of
            :class:`pixeldino.augment.StrongAugmentConfig`, e.g. ``{"brightness": 0.1, "contrast": 0.1}``, or the
            per-band ``band_gain`` / ``band_offset`` / ``band_gamma``); empty means the paper's ranges.
        normalisation: radiometric normalisation spec (:mod:`pixeldino.normalise`); ``zscore`` without statistics
            gets them computed from the training chips.
    """

    mode: str = "pixeldino"
    steps: int = REFERENCE_STEPS
    batch_labelled: int = 16
    batch_unlabelled: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-3
    warmup_fraction: float = 0.05
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.04
    grad_clip: float = 1.0
    seed: int = 0
    width: int = 16
    depth: int = 4
    n_pseudo_classes: int = 24
    norm: str = "layer"
    teacher_temperature: float = 0.5
    student_temperature: float = 1.0
    center_momentum: float = 0.996
    ema_horizon: float = 0.00125  # = 1 / ((1 - REFERENCE_EMA_MOMENTUM) * REFERENCE_STEPS), tested
    ema_min_horizon_steps: int = 100
    ema_momentum: float | None = None
    beta: float = 0.1
    fixmatch_threshold: float | list[float] = 0.9
    export: str = "best"
    target_warp: str = "shared"
    pseudo_resolution: str = "full"
    bn_recalibration_chips: int = 256
    val_every: int = 1000
    checkpoint_every: int = 1000
    log_every: int = 10
    device: str = "auto"
    num_threads: int | None = None
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    normalisation: dict[str, Any] = field(default_factory=lambda: {"method": "logsigmoid"})
    augment: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise :class:`TrainingError` (one line) for an inconsistent configuration."""
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise TrainingError(f"train.{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("steps", "batch_labelled", "width", "depth", "n_pseudo_classes"):
            if int(getattr(self, name)) < 1:
                raise TrainingError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.mode in SEMI_MODES and self.batch_unlabelled < 1:
            raise TrainingError(f"train.batch_unlabelled must be at least 1 for mode {self.mode}")
        if self.lr <= 0 or self.teacher_temperature <= 0 or self.student_temperature <= 0:
            raise TrainingError("train.lr and the temperatures must be positive")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise TrainingError(f"train.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainingError(f"train.warmup_steps must be at least 0, got {self.warmup_steps}")
        if self.ema_horizon <= 0 or self.ema_min_horizon_steps < 0:
            raise TrainingError("train.ema_horizon must be positive and train.ema_min_horizon_steps at least 0")
        if self.ema_momentum is not None and not 0.0 <= self.ema_momentum <= 1.0:
            raise TrainingError(f"train.ema_momentum must be in [0, 1], got {self.ema_momentum}")
        _fixmatch_thresholds(self.fixmatch_threshold)
        strong_augment_config(self.augment)


def _fixmatch_thresholds(value: float | list[float] | tuple[float, ...]) -> tuple[float, float]:
    """``(tau_background, tau_rts)`` from a scalar or a pair."""
    pair = (float(value), float(value)) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(pair) != 2 or not all(0.5 <= t <= 1.0 for t in pair):
        raise TrainingError(f"train.fixmatch_threshold {value!r} must be a number or a pair in [0.5, 1]")
    return pair[0], pair[1]


def warmup_steps_of(config: TrainConfig) -> int:
    """The warm-up length in steps: ``warmup_steps`` if given, else ``round(warmup_fraction * steps)``."""
    if config.warmup_steps is not None:
        return int(config.warmup_steps)
    return int(round(config.warmup_fraction * config.steps))


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (1-based): linear warm-up, then cosine decay."""
    peak = config.lr
    warmup = warmup_steps_of(config)
    if warmup > 0 and step <= warmup:
        return peak * step / warmup
    final = peak * config.min_lr_ratio
    progress = (step - warmup) / max(1, config.steps - warmup)
    progress = min(max(progress, 0.0), 1.0)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def initial_ema_momentum(config: TrainConfig) -> float:
    """``m0``: ``ema_momentum`` if given, else ``1 - 1 / max(ema_horizon * steps, ema_min_horizon_steps)``."""
    if config.ema_momentum is not None:
        return float(config.ema_momentum)
    window = max(config.ema_horizon * config.steps, float(config.ema_min_horizon_steps), 1.0)
    return 1.0 - 1.0 / window


def ema_momentum_at(step: int, config: TrainConfig) -> float:
    """Teacher EMA momentum after step ``step``: ``m0`` rising to 1 at the last step (cosine)."""
    progress = min(max(step / max(1, config.steps), 0.0), 1.0)
    return 1.0 - (1.0 - initial_ema_momentum(config)) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_horizon_steps(momentum: float) -> float:
    """The averaging window ``1 / (1 - m)`` of an EMA with momentum ``m``, in steps (inf for m = 1)."""
    return math.inf if momentum >= 1.0 else 1.0 / (1.0 - momentum)


# --------------------------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------------------------


class StreamSampler:
    """Endless stream of chip indices: shuffled epochs from its own numpy generator.

    Its state is the generator state at the start of the current epoch plus the position in it, which is small
    JSON even for large chip sets (the permutation is regenerated on restore).
    """

    def __init__(self, n: int, seed: list[int]) -> None:
        self.n = n
        self.rng = np.random.default_rng(seed)
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.epoch_state = copy.deepcopy(self.rng.bit_generator.state)
        self.perm = self.rng.permutation(self.n)
        self.pos = 0

    def next(self, k: int) -> np.ndarray:
        """The next ``k`` indices (crossing into a new epoch where needed)."""
        parts = []
        while k > 0:
            if self.pos >= self.n:
                self._new_epoch()
            take = min(k, self.n - self.pos)
            parts.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            k -= take
        return np.concatenate(parts)

    def state(self) -> dict[str, Any]:
        return {"n": self.n, "epoch_state": self.epoch_state, "pos": self.pos}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["n"] != self.n:
            raise TrainingError(f"the checkpoint was written for {state['n']} chips, not {self.n}; use resume=False")
        self.rng.bit_generator.state = state["epoch_state"]
        self._new_epoch()
        self.pos = int(state["pos"])


def normalise_torch(dn: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Torch twin of :func:`pixeldino.normalise.normalise` for ``(B, C, H, W)`` float DNs on any device.

    Nodata pixels (0 in every band) become 0, as the inference code does.
    """
    method = spec["method"]
    if method == "logsigmoid":
        x = torch.sigmoid(2.5 * (torch.log1p(0.005 * dn.clamp_min(0.0)) - 2.1))
    elif method == "scale":
        x = dn * float(spec.get("factor", 1e-4))
    elif method == "zscore":
        center = torch.tensor(spec["center"], dtype=dn.dtype, device=dn.device).view(1, -1, 1, 1)
        scale = torch.tensor(spec["scale"], dtype=dn.dtype, device=dn.device).view(1, -1, 1, 1)
        x = (dn - center) / scale
    else:
        raise TrainingError(f"normalisation method {method!r} is unknown")
    nodata = (dn == 0).all(dim=1, keepdim=True)
    return x.masked_fill(nodata, 0.0)


class ChipSource:
    """uint16 chips kept on the host; batches are gathered, copied (pinned on CUDA) and normalised on device.

    Keeping uint16 rather than pre-normalised float32 halves host memory and transfer volume.
    """

    def __init__(self, images: np.ndarray, spec: dict[str, Any], device: torch.device, channels_last: bool) -> None:
        self.images = images
        self.spec = spec
        self.device = device
        self.channels_last = channels_last

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: np.ndarray) -> torch.Tensor:
        host = np.ascontiguousarray(self.images[index])
        if self.device.type == "cuda":
            # uint16 goes over the bus as int16 bits and is widened on the GPU (uint16 kernels are sparse)
            t = torch.from_numpy(host.view(np.int16)).pin_memory().to(self.device, non_blocking=True)
            dn = (t.to(torch.int32) & 0xFFFF).to(torch.float32)
        else:
            dn = torch.from_numpy(host).to(torch.float32)
        return _model_layout(normalise_torch(dn, self.spec), self.channels_last)


def _model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Channels-last on CUDA (faster convolutions); augmentations return standard layout, so re-apply before
    every forward."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _masks_to_device(masks: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(masks[index]))
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------------------------
# losses and metrics
# --------------------------------------------------------------------------------------------------------------


def labelled_loss(logits: torch.Tensor, label: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of ``(B, 1, H, W)`` logits, averaged over ``known`` pixels (0 if there are none)."""
    bce = F.binary_cross_entropy_with_logits(logits[:, 0].float(), label.float(), reduction="none")
    k = known.to(bce.dtype)
    return (bce * k).sum() / k.sum().clamp_min(1.0)


def distillation_loss(
    student_logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """PixelDINO loss: ``CE(softmax(student / T), target)`` per pixel, averaged over ``valid`` pixels."""
    logp = F.log_softmax(student_logits.float() / temperature, dim=1)
    ce = -(target.float() * logp).sum(dim=1)
    v = valid.to(ce.dtype)
    return (ce * v).sum() / v.sum().clamp_min(1.0)


@torch.no_grad()
def collapse_monitors(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor, warped_target: torch.Tensor, valid: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Label-free health signals of the pseudo-class head (all in [0, 1], kept on device).

    * ``usage_entropy``: entropy of the batch-mean teacher distribution / log K — near 0 means every pixel goes
      to one pseudo-class (collapse).
    * ``teacher_entropy``: mean per-pixel teacher entropy / log K — near 1 means uniform, uninformative targets.
    * ``agreement``: share of valid pixels where the student's argmax equals the (warped) teacher's.
    """
    k = teacher_probs.shape[1]
    log_k = math.log(k)
    mean_p = teacher_probs.float().mean(dim=(0, 2, 3))
    usage = -(mean_p * torch.log(mean_p.clamp_min(1e-12))).sum() / log_k
    p = teacher_probs.float()
    per_pixel = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean() / log_k
    same = (student_logits.argmax(dim=1) == warped_target.argmax(dim=1)) & valid
    agreement = same.float().sum() / valid.float().sum().clamp_min(1.0)
    return {"usage_entropy": usage, "teacher_entropy": per_pixel, "agreement": agreement}


def metrics_from_counts(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Pixel IoU, F1, precision and recall of the RTS class (NaN where undefined)."""

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "iou": ratio(tp, tp + fp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


@torch.no_grad()
def threshold_counts(
    model: UNet,
    source: ChipSource,
    masks: np.ndarray,
    batch_size: int,
    amp: bool,
) -> np.ndarray:
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
            y = _masks_to_device(masks, index, source.device)
            with _autocast(source.device, amp):
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
    return torch.stack([tp, fp, fn], dim=1).cpu().numpy()


def calibrate_threshold(counts: np.ndarray) -> float:
    """Threshold in 0.05..0.95 with the highest IoU (ties: closest to 0.5); 0.5 when IoU is undefined everywhere."""
    best, best_iou = 0.5, -1.0
    for t, (tp, fp, fn) in sorted(zip(THRESHOLDS, counts), key=lambda item: abs(item[0] - 0.5)):
        iou = metrics_from_counts(tp, fp, fn)["iou"]
        if not math.isnan(iou) and iou > best_iou + 1e-12:
            best, best_iou = t, iou
    return best


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


# --------------------------------------------------------------------------------------------------------------
# batch-norm statistics (only for norm: batch)
# --------------------------------------------------------------------------------------------------------------


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
        with _autocast(source.device, amp):
            fitted(source.batch(index[start : start + batch_size]))
    for m, momentum in zip(_batch_norms(fitted), saved):
        m.momentum = momentum
    return fitted.eval()


# --------------------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------------------


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    flat: dict[str, torch.Tensor] = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            flat[f"{idx}.{key}"] = t.detach().contiguous().cpu()
    return flat


def _unflatten_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a completed directory into place; an old version survives as ``<final>.old`` until the swap is done."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


# --------------------------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------------------------


def _check_inputs(
    labelled_images: np.ndarray,
    labelled_masks: np.ndarray,
    unlabelled_images: np.ndarray | None,
    val_images: np.ndarray | None,
    val_masks: np.ndarray | None,
    bands: list[str],
    config: TrainConfig,
) -> None:
    if labelled_images is None or len(labelled_images) == 0:
        raise TrainingError(
            "there are no labelled training chips; check that the labels overlap the scenes and re-run chip"
        )
    if labelled_images.ndim != 4 or labelled_masks.shape != (labelled_images.shape[0], *labelled_images.shape[2:]):
        raise TrainingError(
            f"labelled chips {labelled_images.shape} and masks {labelled_masks.shape} do not match "
            "(want (N,C,S,S) and (N,S,S))"
        )
    n, c, h, w = labelled_images.shape
    if c != len(bands):
        raise TrainingError(f"chips have {c} bands but {len(bands)} band names were given ({', '.join(bands)})")
    if h != w or h % 2**config.depth:
        raise TrainingError(
            f"chips are {h}x{w} px; training needs square chips whose size is a multiple of {2**config.depth} "
            "(2**depth); re-chip or lower train.depth"
        )
    values = np.unique(labelled_masks)
    if not set(values.tolist()) <= {0, 1, IGNORE}:
        raise TrainingError(f"label masks hold values {values.tolist()}; only 0, 1 and {IGNORE} (ignore) are allowed")
    if not (labelled_masks == 1).any():
        raise TrainingError(
            "the labelled training chips contain no RTS pixels (mask value 1); check the labels and re-run chip"
        )
    if config.mode in SEMI_MODES and (unlabelled_images is None or len(unlabelled_images) == 0):
        raise TrainingError(
            f"mode {config.mode} needs unlabelled chips but there are none; "
            "chip unlabelled scenes or use mode supervised+aug"
        )
    if unlabelled_images is not None and len(unlabelled_images) and unlabelled_images.shape[1:] != (c, h, w):
        raise TrainingError(f"unlabelled chips {unlabelled_images.shape[1:]} differ from labelled chips {(c, h, w)}")
    if val_images is not None and len(val_images):
        if val_masks is None or val_images.shape[1:] != (c, h, w) or val_masks.shape != (len(val_images), h, w):
            raise TrainingError(
                f"validation chips {val_images.shape} / masks do not match the training chips {(c, h, w)}; re-run chip"
            )


def _resolve_normalisation(spec: dict[str, Any], images: list[np.ndarray], n_bands: int) -> dict[str, Any]:
    """Validated spec; ``zscore`` without statistics gets them from an evenly spaced subset of training chips."""
    if spec.get("method") == "zscore" and not ("center" in spec and "scale" in spec):
        # medians need every sample in memory as float64: bound it (<= 128 chips per set, ~48x48 px per chip)
        stride = max(1, images[0].shape[-1] // 48)
        subsets = [
            im[np.linspace(0, len(im) - 1, min(len(im), 128)).astype(int)][:, :, ::stride, ::stride]
            for im in images
            if len(im)
        ]
        stacked = np.concatenate(subsets)
        spec = compute_zscore_stats(stacked, (stacked != 0).any(axis=1))
    return validate_spec(spec, n_bands)


def strong_augment_config(overrides: dict[str, Any]) -> StrongAugmentConfig:
    """The paper's strong augmentation ranges with ``overrides`` applied (lists become tuples)."""
    known = {f.name for f in dataclasses.fields(StrongAugmentConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainingError(f"unknown augmentation setting(s) {unknown}; use any of {sorted(known)}")
    return StrongAugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


class Trainer:
    """One training run (see :func:`train`); holds models, optimiser, samplers and logging state."""

    def __init__(
        self,
        *,
        labelled_images: np.ndarray,
        labelled_masks: np.ndarray,
        unlabelled_images: np.ndarray | None,
        val_images: np.ndarray | None,
        val_masks: np.ndarray | None,
        bands: list[str],
        out_dir: Path,
        config: TrainConfig,
        progress: bool,
    ) -> None:
        self.config = config
        self.out_dir = out_dir
        self.bands = list(bands)
        self.progress = progress
        self.device = resolve_device(config.device, "train.device")
        if self.device.type == "cpu" and config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.semi = config.mode in SEMI_MODES
        self.augment_labelled = config.mode != "supervised"
        self.amp = bool(config.amp) and self.device.type == "cuda"
        self.channels_last = bool(config.channels_last) and self.device.type == "cuda"
        self.chip_size = int(labelled_images.shape[-1])

        train_sets = [labelled_images] + ([unlabelled_images] if self.semi else [])
        self.spec = _resolve_normalisation(dict(config.normalisation), train_sets, len(bands))
        self.value_range = (0.0, 1.0) if self.spec["method"] == "logsigmoid" else None
        self.labelled = ChipSource(labelled_images, self.spec, self.device, self.channels_last)
        self.labelled_masks = labelled_masks
        self.unlabelled = (
            ChipSource(unlabelled_images, self.spec, self.device, self.channels_last) if self.semi else None
        )
        has_val = val_images is not None and len(val_images) > 0
        self.val = ChipSource(val_images, self.spec, self.device, self.channels_last) if has_val else None
        self.val_masks = val_masks

        arch = UNetConfig(
            in_channels=len(bands), width=config.width, depth=config.depth,
            n_pseudo_classes=config.n_pseudo_classes, norm=config.norm,
        )  # fmt: skip
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.student = build_model(arch)
        self.student.to(self.device)
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)
        self.student.train()
        self.teacher: UNet | None = None
        if self.semi:
            self.teacher = copy.deepcopy(self.student).eval()
            self.teacher.requires_grad_(False)
            # the EMA averages parameters only; buffers (batch-norm running statistics, which do not fit averaged
            # weights) are the student's, and are recomputed before anything is validated or exported
            self._ema_pairs = (list(self.teacher.parameters()), list(self.student.parameters()))
            self._copy_pairs = list(zip(self.teacher.buffers(), self.student.buffers()))
        self.forward = torch.compile(self.student) if config.compile else self.student
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=lr_at(1, config), weight_decay=config.weight_decay
        )
        self.center = torch.zeros(config.n_pseudo_classes, device=self.device)
        self.aug_config = strong_augment_config(config.augment)
        self.fixmatch_thresholds = _fixmatch_thresholds(config.fixmatch_threshold)
        # one augmentation stream per chip stream: a run with beta = 0 sees the labelled batches of beta > 0
        self.gen_l = torch.Generator(device=self.device)
        self.gen_l.manual_seed(config.seed * 1000 + 7)
        self.gen_u = torch.Generator(device=self.device)
        self.gen_u.manual_seed(config.seed * 1000 + 11)
        self.pseudo_stride = 2 if config.pseudo_resolution == "half" else 1
        self.final_models: dict[str, UNet] = {}
        self.candidates: dict[str, dict[str, Any]] = {}
        self.sampler_l = StreamSampler(len(self.labelled), [config.seed, 1])
        self.sampler_u = StreamSampler(len(self.unlabelled), [config.seed, 2]) if self.unlabelled is not None else None

        self.step = 0
        self.elapsed = 0.0
        self.last_checkpoint_step: int | None = None
        self.history: list[dict[str, Any]] = []
        self.columns = ["step", "lr", "loss", "loss_labelled"]
        if self.semi:
            self.columns += ["loss_unlabelled", "ema_momentum", "ema_horizon_steps"]
        if config.mode == "pixeldino":
            self.columns += ["usage_entropy", "teacher_entropy", "agreement"]
        if config.mode == "fixmatch":
            self.columns += ["confident_fraction"]
        self.columns += ["val_iou", "val_f1", "val_precision", "val_recall"]
        if self.semi:
            self.columns += ["val_student_iou", "val_teacher_iou"]
        self.columns += ["seconds"]
        self._reset_accumulators()
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        self.log_path = out_dir / "training_log.csv"
        self.ckpt_dir = out_dir / "checkpoint"
        self.tb = None

    # ---- the models that are validated and exported --------------------------------------------------------
    def eval_models(self) -> dict[str, UNet]:
        """``student`` and (semi-supervised modes) ``teacher``, batch-norm statistics recomputed where needed."""
        models = {"student": self.student}
        if self.teacher is not None:
            models["teacher"] = self.teacher
        batch = max(self.config.batch_labelled, 16)
        n = self.config.bn_recalibration_chips
        return {k: recalibrated(m, self.labelled, n, batch, self.amp) for k, m in models.items()}

    def choose_export(self, results: dict[str, tuple[dict[str, float], np.ndarray]] | None) -> str:
        """The candidate ``export`` asks for; ``best`` compares validation IoU at each one's calibrated threshold
        (ties and no validation chips: the teacher)."""
        if self.teacher is None or self.config.export == "student":
            return "student"
        if self.config.export == "teacher" or not results:
            return "teacher"
        best = {k: _iou_at(counts, calibrate_threshold(counts)) for k, (_, counts) in results.items()}
        return "student" if best["student"] > best["teacher"] + 1e-12 else "teacher"

    # ---- one optimisation step ------------------------------------------------------------------------------
    def _reset_accumulators(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        self._count += 1

    def labelled_batch(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next labelled batch from its own stream: ``(chip index, image, label, known)``, augmented unless
        the mode is ``supervised``."""
        idx_l = self.sampler_l.next(self.config.batch_labelled)
        x_l = self.labelled.batch(idx_l)
        y_l = _masks_to_device(self.labelled_masks, idx_l, self.device)
        if not self.augment_labelled:
            return idx_l, x_l, (y_l == 1).float(), y_l != IGNORE
        x_l, y_l = weak_augment(x_l, y_l, generator=self.gen_l)
        res_l = strong_augment(x_l, encode_label(y_l), self.gen_l, self.aug_config, self.value_range)
        label, known = decode_label(res_l.target, res_l.valid)
        return idx_l, res_l.image, label, known

    def _strong_view(self, v1: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Strong view of the unlabelled batch and its target: ``(image, target, valid)``. ``target_warp:
        shared`` warps both with one transform; ``independent`` (ablation) gives the target its own."""
        g = self.gen_u
        if self.config.target_warp == "shared":
            res = strong_augment(v1, target, g, self.aug_config, self.value_range)
            assert res.target is not None
            return res.image, res.target, res.valid
        res = strong_augment(v1, None, g, self.aug_config, self.value_range)
        warped = strong_geometric(target, None, g, self.aug_config)
        return res.image, warped.image, res.valid & warped.valid

    def _unlabelled_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unlabelled term of the loss (PixelDINO or FixMatchSeg) on the next unlabelled batch."""
        cfg = self.config
        assert self.unlabelled is not None and self.sampler_u is not None and self.teacher is not None
        stride = self.pseudo_stride
        x_u = self.unlabelled.batch(self.sampler_u.next(cfg.batch_unlabelled))
        (v1,) = weak_augment(x_u, generator=self.gen_u)
        with torch.no_grad(), _autocast(self.device, self.amp):
            t_rts, t_pseudo = self.teacher(_model_layout(v1, self.channels_last), pseudo_stride=stride)
        if cfg.mode == "pixeldino":
            t_logits = t_pseudo.float()
            t_probs = torch.softmax((t_logits - self.center.view(1, -1, 1, 1)) / cfg.teacher_temperature, dim=1)
            self._batch_center = t_logits.mean(dim=(0, 2, 3))
            target = F.interpolate(t_probs, scale_factor=stride, mode="nearest") if stride > 1 else t_probs
        else:
            p = torch.sigmoid(t_rts[:, 0].float())
            tau_bg, tau_rts = self.fixmatch_thresholds
            confident = (p >= tau_rts) | (1.0 - p >= tau_bg)
            target = torch.stack([(p >= 0.5), confident], dim=1).float()
        image, target, valid = self._strong_view(v1, target)
        # the unlabelled pass must not touch batch-norm running statistics (they serve labelled inference)
        with frozen_batch_norm_statistics(self.student), _autocast(self.device, self.amp):
            rts_u, s_pseudo = self.forward(_model_layout(image, self.channels_last), pseudo_stride=stride)
        if cfg.mode == "pixeldino":
            if stride > 1:  # targets and validity at the resolution of the half-resolution logits
                target = F.avg_pool2d(target, stride)
                valid = F.avg_pool2d(valid[:, None].float(), stride)[:, 0] >= 1.0 - 1e-6
            terms.update(collapse_monitors(t_probs, s_pseudo.detach(), target, valid))
            return distillation_loss(s_pseudo, target, valid, cfg.student_temperature)
        label_u, known_u = decode_label(target, valid)
        terms["confident_fraction"] = known_u.float().mean()
        return labelled_loss(rts_u, label_u, known_u)

    def train_step(self) -> torch.Tensor:
        """Run optimiser step ``self.step + 1``; returns the total loss (on device, no sync)."""
        cfg = self.config
        step = self.step + 1
        lr = lr_at(step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        _, x_l, label, known = self.labelled_batch()
        terms: dict[str, torch.Tensor] = {}
        # Labelled and unlabelled chips go through the student in separate passes, not one over the concatenated
        # batch: with batch norm, a mixed batch would normalise source chips with target statistics and vice versa.
        with _autocast(self.device, self.amp):
            rts, _ = self.forward(_model_layout(x_l, self.channels_last))
        loss_l = labelled_loss(rts, label, known)
        loss = loss_l
        if self.semi:
            loss_u = self._unlabelled_loss(terms)
            loss = loss_l + cfg.beta * loss_u
            terms["loss_unlabelled"] = loss_u

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        self.optimizer.step()

        if self.semi:
            with torch.no_grad():
                if cfg.mode == "pixeldino":
                    self.center.mul_(cfg.center_momentum).add_(self._batch_center, alpha=1.0 - cfg.center_momentum)
                m = ema_momentum_at(step, cfg)
                torch._foreach_lerp_(self._ema_pairs[0], self._ema_pairs[1], 1.0 - m)
                for t, s in self._copy_pairs:
                    t.copy_(s)
            terms["ema_momentum"] = torch.tensor(m, device=self.device)

        terms["loss"] = loss
        terms["loss_labelled"] = loss_l
        self._accumulate(terms)
        bad = ~torch.isfinite(loss.detach())
        self._bad_step = torch.where(bad & (self._bad_step < 0), torch.full_like(self._bad_step, step), self._bad_step)
        self.step = step
        return loss

    def check_finite(self) -> None:
        """Stop with a one-line :class:`TrainingError` if any step so far produced a non-finite loss."""
        bad = int(self._bad_step.item())
        if bad < 0:
            return
        where = (
            f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in {self.ckpt_dir}"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingError(
            f"training diverged: non-finite loss at step {bad} (lr {lr_at(bad, self.config):.3g}); {where}; "
            "lower train.lr (or raise warmup_steps) and train again"
        )

    # ---- validation ------------------------------------------------------------------------------------------
    def validate(
        self, models: dict[str, UNet] | None = None
    ) -> dict[str, tuple[dict[str, float], np.ndarray]] | None:
        """For the student and (semi-supervised) the teacher: metrics at p = 0.5 and all threshold counts on the
        validation chips."""
        if self.val is None:
            return None
        batch = max(self.config.batch_labelled, 16)
        results = {}
        for name, model in (models or self.eval_models()).items():
            counts = threshold_counts(model, self.val, self.val_masks, batch, self.amp)
            tp, fp, fn = counts[THRESHOLDS.index(0.5)]
            results[name] = (metrics_from_counts(float(tp), float(fp), float(fn)), counts)
        return results

    # ---- logging ---------------------------------------------------------------------------------------------
    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional: without it there is simply no event log
            return
        self.tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"), purge_step=self.step + 1)

    def _write_row(self, results: dict[str, tuple[dict[str, float], np.ndarray]] | None) -> dict[str, Any]:
        row: dict[str, Any] = {c: "" for c in self.columns}
        row["step"] = self.step
        row["lr"] = lr_at(self.step, self.config)
        if self.semi:
            row["ema_horizon_steps"] = ema_horizon_steps(ema_momentum_at(self.step, self.config))
        val = None
        if results:
            val = results[self.choose_export(results)][0]
            if self.semi:
                row["val_student_iou"] = results["student"][0]["iou"]
                row["val_teacher_iou"] = results["teacher"][0]["iou"]
        if self._count:
            keys = list(self._sums)
            means = (torch.stack([self._sums[k] for k in keys]) / self._count).tolist()
            for k, v in zip(keys, means):
                if k in row:
                    row[k] = v
        if val is not None:
            for k, v in val.items():
                row[f"val_{k}"] = v
        row["seconds"] = round(self.elapsed, 3)
        self._reset_accumulators()
        new_file = not self.log_path.exists()
        with self.log_path.open("a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns)
            if new_file:
                writer.writeheader()
            writer.writerow(row)
        self.history.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and v != "" and isinstance(v, float) and not math.isnan(v):
                    self.tb.add_scalar(k, v, self.step)
        return row

    def _read_history(self, up_to_step: int) -> None:
        """Reload the CSV log, dropping rows written after the checkpoint we resume from."""
        self.history = []
        if not self.log_path.exists():
            return
        with self.log_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if int(row["step"]) > up_to_step:
                    continue
                parsed: dict[str, Any] = {k: (float(v) if v not in ("", None) else "") for k, v in row.items()}
                parsed["step"] = int(row["step"])
                self.history.append(parsed)
        with atomic_output(self.log_path) as tmp:
            with tmp.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.columns, extrasaction="ignore")
                writer.writeheader()
                for row in self.history:
                    writer.writerow(row)

    def plot_curves(self) -> None:
        """``training_curves.png``: losses, validation metrics and (PixelDINO) collapse monitors over steps."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key: str) -> tuple[list[int], list[float]]:
            pts = [(r["step"], r[key]) for r in self.history if _finite(r.get(key))]
            return [p[0] for p in pts], [p[1] for p in pts]

        panels = [
            ("losses", ["loss", "loss_labelled", "loss_unlabelled"]),
            ("validation", ["val_iou", "val_f1", "val_student_iou", "val_teacher_iou"]),
        ]
        if self.config.mode == "pixeldino":
            panels.append(("collapse monitors", ["usage_entropy", "teacher_entropy", "agreement"]))
        if self.config.mode == "fixmatch":
            panels.append(("pseudo-labels", ["confident_fraction"]))
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (title, keys) in zip(axes[0], panels):
            for key in keys:
                xs, ys = series(key)
                if xs:
                    ax.plot(xs, ys, label=key, marker="o" if key.startswith("val_") else None, ms=3)
            ax.set_title(title)
            ax.set_xlabel("step")
            if title == "losses":
                ax.set_yscale("log")
            if ax.get_lines():
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.suptitle(f"pixeldino training ({self.config.mode})")
        fig.tight_layout()
        with atomic_output(self.out_dir / "training_curves.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write ``checkpoint/`` completely under a temporary name, then swap it in."""
        tmp = self.out_dir / f".checkpoint.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            cpu = lambda sd: {k: v.detach().contiguous().cpu() for k, v in sd.items()}  # noqa: E731
            save_file(cpu(self.student.state_dict()), str(tmp / "student.safetensors"))
            save_file(cpu((self.teacher or self.student).state_dict()), str(tmp / "teacher.safetensors"))
            save_file(_flatten_optimizer(self.optimizer), str(tmp / "optimizer.safetensors"))
            save_file(
                {
                    "center": self.center.detach().cpu().contiguous(),
                    "aug_generator_labelled": self.gen_l.get_state().contiguous(),
                    "aug_generator_unlabelled": self.gen_u.get_state().contiguous(),
                },
                str(tmp / "state.safetensors"),
            )
            state = {
                "format": CHECKPOINT_FORMAT,
                "format_version": CHECKPOINT_VERSION,
                "step": self.step,
                "elapsed_seconds": self.elapsed,
                "mode": self.config.mode,
                "config": asdict(self.config),
                "normalisation": self.spec,
                "tensors": "state.safetensors (center, aug_generator_labelled, aug_generator_unlabelled)",
                "samplers": {
                    "labelled": self.sampler_l.state(),
                    "unlabelled": self.sampler_u.state() if self.sampler_u is not None else None,
                },
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
            _replace_dir(tmp, self.ckpt_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.last_checkpoint_step = self.step

    def _find_checkpoint(self) -> Path | None:
        for candidate in (self.ckpt_dir, self.ckpt_dir.with_name(self.ckpt_dir.name + ".old")):
            if (candidate / "state.json").exists():
                return candidate
        return None

    def load_checkpoint(self) -> bool:
        """Restore the full training state from ``checkpoint/``; False if there is none."""
        ckpt = self._find_checkpoint()
        if ckpt is None:
            return False
        try:
            state = json.loads((ckpt / "state.json").read_text())
            tensors = load_file(str(ckpt / "state.safetensors"))
            student = load_file(str(ckpt / "student.safetensors"))
            teacher = load_file(str(ckpt / "teacher.safetensors"))
            optim = load_file(str(ckpt / "optimizer.safetensors"))
        except Exception as exc:  # safetensors/json raise assorted types for damaged files
            raise TrainingError(
                f"{ckpt}: unreadable checkpoint ({type(exc).__name__}); delete it or train with resume=False"
            ) from None
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{ckpt}: not a pixeldino checkpoint; delete it or train with resume=False")
        if state.get("format_version") != CHECKPOINT_VERSION:
            raise TrainingError(
                f"{ckpt}: checkpoint format {state.get('format_version')} was written by another pixeldino version "
                f"(this one reads {CHECKPOINT_VERSION}); use another out_dir or resume=False"
            )
        old = state["config"]
        fixed = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in (*_RESUME_FREE_FIELDS, "normalisation")]
        for name in fixed:
            if old.get(name) != json.loads(json.dumps(getattr(self.config, name))):
                raise TrainingError(
                    f"{ckpt}: checkpoint has {name}={old.get(name)!r} but the config says "
                    f"{getattr(self.config, name)!r}; use another out_dir or resume=False"
                )
        if state["normalisation"] != self.spec:
            raise TrainingError(
                f"{ckpt}: checkpoint normalisation differs from this run's; use another out_dir or resume=False"
            )
        self.student.load_state_dict(student)
        if self.teacher is not None:
            self.teacher.load_state_dict(teacher)
        _unflatten_optimizer(self.optimizer, optim)
        self.center.copy_(tensors["center"].to(self.device))
        self.gen_l.set_state(tensors["aug_generator_labelled"])
        self.gen_u.set_state(tensors["aug_generator_unlabelled"])
        self.sampler_l.set_state(state["samplers"]["labelled"])
        if self.sampler_u is not None:
            self.sampler_u.set_state(state["samplers"]["unlabelled"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed_seconds"])
        self.last_checkpoint_step = self.step
        return True

    # ---- the loop --------------------------------------------------------------------------------------------
    def run(self, resume: bool) -> dict[str, Any]:
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.load_checkpoint()
        if resumed:
            self._read_history(self.step)
            log.info("resuming %s training from step %d", cfg.mode, self.step)
        else:
            for stale in (self.ckpt_dir, self.ckpt_dir.with_name(self.ckpt_dir.name + ".old")):
                if stale.exists():
                    shutil.rmtree(stale)
            self.log_path.unlink(missing_ok=True)
        self._open_tensorboard()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.mode}", unit="step", dynamic_ncols=True)
        sync_each_step = self.device.type == "cpu"  # free on CPU: names the exact diverging step before any damage
        try:
            t0 = time.perf_counter()
            while self.step < cfg.steps:
                self.train_step()
                step = self.step
                if sync_each_step:
                    self.check_finite()
                is_val = self.val is not None and (
                    (cfg.val_every > 0 and step % cfg.val_every == 0) or step == cfg.steps
                )
                is_log = step % max(1, cfg.log_every) == 0 or step == cfg.steps or is_val
                is_ckpt = (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0) or step == cfg.steps
                if is_log or is_ckpt:
                    self.check_finite()
                    now = time.perf_counter()
                    self.elapsed += now - t0
                    t0 = now
                if is_log:
                    row = self._write_row(self.validate() if is_val else None)
                    if bar is not None:
                        shown = {k: row[k] for k in ("loss", "loss_unlabelled", "val_iou") if _finite(row.get(k))}
                        bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
                if is_ckpt:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if self.tb is not None:
                self.tb.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Final validation, threshold calibration, export of the model, curves; returns the final metrics."""
        cfg = self.config
        models = self.eval_models()
        results = self.validate(models)
        self.final_models = models
        self.candidates = {}
        for name in models:
            if results is None:
                self.candidates[name] = {"val": None, "threshold": 0.5, "val_at_threshold": None}
                continue
            val_c, counts = results[name]
            t = calibrate_threshold(counts)
            tp, fp, fn = counts[THRESHOLDS.index(t)]
            at_t = metrics_from_counts(float(tp), float(fp), float(fn))
            self.candidates[name] = {"val": _json_safe(val_c), "threshold": t, "val_at_threshold": _json_safe(at_t)}
        exported = self.choose_export(results)
        val = self.candidates[exported]["val"]
        threshold = self.candidates[exported]["threshold"]
        at_threshold = self.candidates[exported]["val_at_threshold"]
        val_rows = [r for r in self.history if _finite(r.get("val_iou"))]
        best = max(val_rows, key=lambda r: r["val_iou"], default=None)
        last = self.history[-1] if self.history else {}
        metrics: dict[str, Any] = {
            "step": self.step,
            "mode": cfg.mode,
            "exported": exported,
            "export_policy": cfg.export if self.teacher is not None else "student",
            "val": val,
            "threshold": threshold,
            "val_at_threshold": at_threshold,
            "candidates": self.candidates,
            "history": {
                "n_val": len(val_rows),
                "best_val_iou": best["val_iou"] if best else None,
                "best_val_step": best["step"] if best else None,
                "final_train": {k: last[k] for k in self.columns if k.startswith("loss") and _finite(last.get(k))},
                "seconds": round(self.elapsed, 1),
            },
            "schedules": {
                "warmup_steps": warmup_steps_of(cfg),
                "ema_initial_momentum": initial_ema_momentum(cfg) if self.semi else None,
                "ema_initial_horizon_steps": ema_horizon_steps(initial_ema_momentum(cfg)) if self.semi else None,
            },
        }
        metadata = {
            "bands": self.bands,
            "normalisation": self.spec,
            "chip_size": self.chip_size,
            "threshold": threshold,
            "mode": cfg.mode,
            "training": asdict(cfg),
            "metrics": metrics,
        }
        save_model(self.out_dir / "model.safetensors", models[exported], metadata)
        if self.history:
            self.plot_curves()
        return metrics


def _iou_at(counts: np.ndarray, threshold: float) -> float:
    """IoU at one of :data:`THRESHOLDS` from :func:`threshold_counts` (-1 where undefined)."""
    tp, fp, fn = counts[THRESHOLDS.index(threshold)]
    iou = metrics_from_counts(float(tp), float(fp), float(fn))["iou"]
    return -1.0 if math.isnan(iou) else iou


def _finite(value: Any) -> bool:
    """True for a float log value that was computed (not blank, not NaN)."""
    return isinstance(value, float) and math.isfinite(value)


def _json_safe(d: dict[str, float] | None) -> dict[str, float | None] | None:
    if d is None:
        return None
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def train(
    *,
    labelled_images: np.ndarray,
    labelled_masks: np.ndarray,
    unlabelled_images: np.ndarray | None = None,
    val_images: np.ndarray | None = None,
    val_masks: np.ndarray | None = None,
    bands: list[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model and export it to ``out_dir/model.safetensors`` (+ ``model.json``).

    ``supervised+aug``, ``fixmatch`` and ``pixeldino`` augment the labelled chips (weak D4 + strong geometric with
    the label warped jointly + photometric); ``supervised`` uses them as they are. The semi-supervised modes
    validate and export the EMA teacher, the supervised modes the student. Writes ``training_log.csv``,
    ``training_curves.png``, ``checkpoint/`` and, when tensorboard is installed, ``tensorboard/``.

    Args:
        labelled_images: ``(N, C, S, S)`` uint16 DN chips.
        labelled_masks: ``(N, S, S)`` uint8: 0 background, 1 RTS, 255 ignore (padding, unlabelled area).
        unlabelled_images: ``(M, C, S, S)`` uint16 chips; required by ``fixmatch`` and ``pixeldino``.
        val_images: ``(V, C, S, S)`` uint16 chips or None/empty (then no validation and threshold 0.5).
        val_masks: ``(V, S, S)`` uint8 masks like ``labelled_masks``.
        bands: band names in chip order; stored in the model so inference reads the same bands.
        out_dir: output directory (see module docs for its content).
        config: the run's :class:`TrainConfig`.
        resume: continue from ``out_dir/checkpoint`` if present (bit-exact continuation); False starts afresh.
        progress: show a tqdm progress bar with ETA.

    Returns:
        Final metrics: validation IoU/F1/precision/recall at p = 0.5, the calibrated threshold and the metrics
        there, and a summary of the training history.

    Raises:
        TrainingError: no labelled chips, no positive pixels, inconsistent shapes or bands, missing unlabelled chips
            for a semi-supervised mode, or a non-finite loss (the last good checkpoint is kept).
    """
    config.check()
    _check_inputs(labelled_images, labelled_masks, unlabelled_images, val_images, val_masks, bands, config)
    trainer = Trainer(
        labelled_images=labelled_images,
        labelled_masks=labelled_masks,
        unlabelled_images=unlabelled_images,
        val_images=val_images,
        val_masks=val_masks,
        bands=bands,
        out_dir=Path(out_dir),
        config=config,
        progress=progress,
    )
    return trainer.run(resume)


def train_from_store(
    chip_store_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: TrainConfig,
    bands: list[str] | None = None,
    *,
    resume: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train from a chip store written by ``pixeldino chip`` (see :class:`pixeldino.chip.ChipStore`).

    Args:
        chip_store_path: the chip store.
        out_dir: output directory.
        config: the run's :class:`TrainConfig`.
        bands: expected band list; a store with other bands is an error (None: take the store's).
        resume: continue from an existing checkpoint.
        progress: show a progress bar.
    """
    from pixeldino.chip import ChipStore

    store = ChipStore(chip_store_path)
    if bands is not None and list(bands) != list(store.bands):
        raise TrainingError(
            f"{chip_store_path}: chips have bands {', '.join(store.bands)} but training expects {', '.join(bands)}; "
            "re-run chip with the configured bands"
        )
    images, masks = store.labelled(split="train")
    val_images, val_masks = store.labelled(split="val")
    ignore = int(getattr(store, "ignore_value", IGNORE))
    if ignore != IGNORE:  # training's convention is 255; map a store written with another ignore value
        masks = np.where(masks == ignore, IGNORE, masks).astype(np.uint8)
        val_masks = np.where(val_masks == ignore, IGNORE, val_masks).astype(np.uint8)
    if len(images) == 0:
        raise TrainingError(
            f"{chip_store_path}: the chip store has no labelled training chips; check the labels and re-run chip"
        )
    unlabelled = store.unlabelled() if config.mode in SEMI_MODES else None
    return train(
        labelled_images=images,
        labelled_masks=masks,
        unlabelled_images=unlabelled,
        val_images=val_images,
        val_masks=val_masks,
        bands=list(store.bands),
        out_dir=out_dir,
        config=config,
        resume=resume,
        progress=progress,
    )
