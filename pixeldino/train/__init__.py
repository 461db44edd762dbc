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

**Outputs** are named by the caller in a :class:`TrainOutputs` (``TrainOutputs.in_dir(out_dir)`` is the default
layout of ``pixeldino train``): the model (``model.safetensors`` + ``model.json``, see :mod:`pixeldino.modelio`,
and its model card ``model.stac.json``, see :mod:`pixeldino.modelcard`), ``training_log.csv``,
``training_curves.png``, and in the work directory the checkpoint (``checkpoint/``, safetensors + JSON, no pickle)
and, only if ``torch.utils.tensorboard`` imports (a dependency; without it the event log is skipped), a
TensorBoard event log (``tensorboard/``).

Modules: :mod:`~pixeldino.train.params` (parameters, schedules, outputs), :mod:`~pixeldino.train.chips` (reading
and checking the chips), :mod:`~pixeldino.train.data` (index streams, batches on the device),
:mod:`~pixeldino.train.losses`, :mod:`~pixeldino.train.validation` (validation, export choice, batch-norm
statistics), :mod:`~pixeldino.train.finetune` (``init_from``, the frozen encoder),
:mod:`~pixeldino.train.checkpoints` (the files) and :mod:`~pixeldino.train.resume` (the state they hold),
:mod:`~pixeldino.train.logs`, :mod:`~pixeldino.train.trainer` (the run), :mod:`~pixeldino.train.export` (the model,
its card and curves at the end) and :mod:`~pixeldino.train.run` (:func:`run_train`, the entry point).
"""

from pixeldino.train.chips import ChipSet, TrainingChips, load_chips
from pixeldino.train.data import ChipSource, StreamSampler, masks_to_device
from pixeldino.train.losses import collapse_monitors, distillation_loss, labelled_loss
from pixeldino.train.params import (
    CHOICES,
    EXPORTS,
    MODES,
    PSEUDO_RESOLUTIONS,
    SEMI_MODES,
    TARGET_WARPS,
    TrainConfig,
    TrainOutputs,
    ema_horizon_steps,
    ema_momentum_at,
    fixmatch_thresholds,
    initial_ema_momentum,
    lr_at,
    strong_augment_config,
    warmup_steps_of,
)
from pixeldino.train.run import run_train
from pixeldino.train.trainer import Trainer
from pixeldino.train.validation import frozen_batch_norm_statistics, recalibrated, threshold_counts

__all__ = [
    "CHOICES",
    "EXPORTS",
    "MODES",
    "PSEUDO_RESOLUTIONS",
    "SEMI_MODES",
    "TARGET_WARPS",
    "ChipSet",
    "ChipSource",
    "StreamSampler",
    "TrainConfig",
    "TrainOutputs",
    "Trainer",
    "TrainingChips",
    "collapse_monitors",
    "distillation_loss",
    "ema_horizon_steps",
    "ema_momentum_at",
    "fixmatch_thresholds",
    "frozen_batch_norm_statistics",
    "initial_ema_momentum",
    "labelled_loss",
    "load_chips",
    "lr_at",
    "masks_to_device",
    "recalibrated",
    "run_train",
    "strong_augment_config",
    "threshold_counts",
    "warmup_steps_of",
]
