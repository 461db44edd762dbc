"""What defines a training run: :class:`TrainConfig`, its choice lists, its schedules, and :class:`TrainOutputs`.

:class:`TrainConfig` is the stage's parameter object: every field is a ``train.<field>`` key of the workflow config
and a ``--<field>`` option of ``pixeldino train`` (both derived from the dataclass and the ``Attributes:`` section
of its docstring by :mod:`pixeldino.params`). :class:`TrainOutputs` names every file a run writes; the stage gets
it from its caller and never makes up a path of its own.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pixeldino.augment import StrongAugmentConfig
from pixeldino.errors import TrainingError
from pixeldino.model import NORMS
from pixeldino.normalise import METHODS

Mode = Literal["supervised", "supervised+aug", "fixmatch", "pixeldino"]
Norm = Literal["layer", "batch", "group"]
Export = Literal["best", "teacher", "student"]
TargetWarp = Literal["shared", "independent"]
PseudoResolution = Literal["full", "half"]
Device = Literal["auto", "cpu", "cuda"]
MODES: tuple[str, ...] = get_args(Mode)
SEMI_MODES = ("fixmatch", "pixeldino")
EXPORTS: tuple[str, ...] = get_args(Export)
TARGET_WARPS: tuple[str, ...] = get_args(TargetWarp)
PSEUDO_RESOLUTIONS: tuple[str, ...] = get_args(PseudoResolution)
#: The allowed values of the TrainConfig fields that take one of a few names (from their Literal annotations).
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES, "norm": get_args(Norm), "export": EXPORTS, "target_warp": TARGET_WARPS,
    "pseudo_resolution": PSEUDO_RESOLUTIONS, "device": get_args(Device),
}  # fmt: skip
assert CHOICES["norm"] == NORMS, "pixeldino.model.NORMS and TrainConfig.norm must list the same norms"
#: JSON schema of ``train.normalisation`` (see :func:`pixeldino.normalise.validate_spec`).
_NORMALISATION_SCHEMA: dict[str, Any] = {
    "additionalProperties": False,
    "required": ["method"],
    "properties": {
        "method": {"enum": list(METHODS)},
        "center": {"type": "array", "items": {"type": "number"}, "description": "zscore: per-band median DN"},
        "scale": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "description": "zscore: per-band 1.4826 x MAD (DN)",
        },
        "factor": {"type": "number", "exclusiveMinimum": 0, "description": "scale: DN multiplier (default 1e-4)"},
    },
}
#: The reference's initial EMA momentum and run length; ``ema_horizon``'s default is their averaging window.
REFERENCE_EMA_MOMENTUM = 0.996
REFERENCE_STEPS = 200_000


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
        init_from: fine-tune: an exported model (``.safetensors``, its ``.json`` beside it) whose weights start
            the student and the EMA teacher (the optimiser starts fresh). Its bands, normalisation and
            architecture (``width``, ``depth``, ``norm``, ``n_pseudo_classes``) must be the run's; ``zscore``
            without statistics takes the model's. Applies to a fresh start only: a resumed run continues its
            checkpoint. None: train from scratch.
        freeze_encoder_steps: keep the encoder (the contracting path: encoder stages and bottleneck) frozen for
            the first this many steps, so a fine-tune adapts the decoder and heads before it moves the features
            (0: never frozen).
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
        model_license: licence of the exported model, written into its model card (``model.stac.json``) as an
            SPDX identifier (``CC-BY-4.0``) or ``other``/``proprietary``.
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
        memory_budget_mb: how much of the chip store (in MB of 10^6 bytes, uncompressed) training may hold in
            memory. When the chips a run reads fit, they are read into memory once at the start; otherwise each
            chip set that does not fit (labelled training chips, validation chips, unlabelled chips, filled in that
            order) is streamed from the store batch by batch, so memory use stays flat however large the store.
            0 streams everything. Where the chips come from never changes the numbers of a run.
        prefetch_batches: batches of each chip stream read ahead in background threads while the model works
            (pinned host memory on CUDA); 0 reads every batch when it is needed.
        augment: overrides of the strong augmentation ranges (fields of
            :class:`pixeldino.augment.StrongAugmentConfig`, e.g. ``{"brightness": 0.1, "contrast": 0.1}``, or the
            per-band ``band_gain`` / ``band_offset`` / ``band_gamma``); empty means the paper's ranges.
        normalisation: radiometric normalisation spec (:mod:`pixeldino.normalise`); ``zscore`` without statistics
            gets them computed from the training chips.
    """

    mode: Mode = "pixeldino"
    steps: int = field(default=REFERENCE_STEPS, metadata={"minimum": 1})
    batch_labelled: int = field(default=16, metadata={"minimum": 1})
    batch_unlabelled: int = field(default=16, metadata={"minimum": 1})
    lr: float = field(default=1e-3, metadata={"exclusiveMinimum": 0})
    weight_decay: float = field(default=1e-3, metadata={"minimum": 0})
    warmup_fraction: float = field(default=0.05, metadata={"minimum": 0, "exclusiveMaximum": 1})
    warmup_steps: int | None = field(default=None, metadata={"minimum": 0})
    min_lr_ratio: float = field(default=0.04, metadata={"minimum": 0, "maximum": 1})
    grad_clip: float = field(default=1.0, metadata={"minimum": 0})
    seed: int = 0
    width: int = field(default=16, metadata={"minimum": 4})
    depth: int = field(default=4, metadata={"minimum": 1, "maximum": 6})
    n_pseudo_classes: int = field(default=24, metadata={"minimum": 2})
    norm: Norm = "layer"
    init_from: str | None = None
    freeze_encoder_steps: int = field(default=0, metadata={"minimum": 0})
    teacher_temperature: float = field(default=0.5, metadata={"exclusiveMinimum": 0})
    student_temperature: float = field(default=1.0, metadata={"exclusiveMinimum": 0})
    center_momentum: float = field(default=0.996, metadata={"minimum": 0, "maximum": 1})
    # = 1 / ((1 - REFERENCE_EMA_MOMENTUM) * REFERENCE_STEPS), tested
    ema_horizon: float = field(default=0.00125, metadata={"exclusiveMinimum": 0})
    ema_min_horizon_steps: int = field(default=100, metadata={"minimum": 0})
    ema_momentum: float | None = field(default=None, metadata={"minimum": 0, "maximum": 1})
    beta: float = field(default=0.1, metadata={"minimum": 0})
    fixmatch_threshold: float | list[float] = field(
        default=0.9,
        metadata={
            "oneOf": [
                {"type": "number", "minimum": 0.5, "maximum": 1},
                {
                    "type": "array",
                    "items": {"type": "number", "minimum": 0.5, "maximum": 1},
                    "minItems": 2,
                    "maxItems": 2,
                },
            ]
        },
    )
    export: Export = "best"
    model_license: str = field(default="CC-BY-4.0", metadata={"minLength": 1})
    target_warp: TargetWarp = "shared"
    pseudo_resolution: PseudoResolution = "full"
    bn_recalibration_chips: int = field(default=256, metadata={"minimum": 1})
    val_every: int = field(default=1000, metadata={"minimum": 0})
    checkpoint_every: int = field(default=1000, metadata={"minimum": 0})
    log_every: int = field(default=10, metadata={"minimum": 1})
    device: Device = "auto"
    num_threads: int | None = field(default=None, metadata={"minimum": 1})
    amp: bool = True
    channels_last: bool = True
    compile: bool = False
    memory_budget_mb: float = field(default=2048, metadata={"minimum": 0})
    prefetch_batches: int = field(default=4, metadata={"minimum": 0})
    normalisation: dict[str, Any] = field(
        default_factory=lambda: {"method": "logsigmoid"}, metadata=_NORMALISATION_SCHEMA
    )
    augment: dict[str, Any] = field(default_factory=dict, metadata={"properties_from": StrongAugmentConfig})

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
        if self.freeze_encoder_steps < 0:
            raise TrainingError(f"train.freeze_encoder_steps must be at least 0, got {self.freeze_encoder_steps}")
        if not self.model_license.strip():
            raise TrainingError("train.model_license is empty; give an SPDX licence id such as CC-BY-4.0, or other")
        if self.ema_momentum is not None and not 0.0 <= self.ema_momentum <= 1.0:
            raise TrainingError(f"train.ema_momentum must be in [0, 1], got {self.ema_momentum}")
        fixmatch_thresholds(self.fixmatch_threshold)
        strong_augment_config(self.augment)

    @property
    def semi(self) -> bool:
        """Whether the mode trains on unlabelled chips too (and has an EMA teacher)."""
        return self.mode in SEMI_MODES


def fixmatch_thresholds(value: float | list[float] | tuple[float, ...]) -> tuple[float, float]:
    """``(tau_background, tau_rts)`` from ``train.fixmatch_threshold``, a scalar or a pair.

    Raises:
        TrainingError: not a number or a pair of numbers in [0.5, 1].
    """
    pair = (float(value), float(value)) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(pair) != 2 or not all(0.5 <= t <= 1.0 for t in pair):
        raise TrainingError(f"train.fixmatch_threshold {value!r} must be a number or a pair in [0.5, 1]")
    return pair[0], pair[1]


def strong_augment_config(overrides: dict[str, Any]) -> StrongAugmentConfig:
    """The paper's strong augmentation ranges with ``overrides`` applied (lists become tuples).

    Raises:
        TrainingError: an override that is not a field of :class:`StrongAugmentConfig`.
    """
    known = {f.name for f in dataclasses.fields(StrongAugmentConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainingError(f"unknown augmentation setting(s) {unknown}; use any of {sorted(known)}")
    # JSON and YAML give ranges as lists; the config's fields are tuples
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return StrongAugmentConfig(**values)


# ---- schedules -----------------------------------------------------------------------------------------------


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


# ---- outputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOutputs:
    """Every path a training run writes, chosen by its caller.

    Attributes:
        model: the exported weights (``.safetensors``); its metadata JSON and its model card (a STAC item with
            the MLM extension) are :func:`pixeldino.modelio.metadata_path` and
            :func:`pixeldino.modelio.model_card_path` of it.
        log_csv: the training log, one row per ``log_every`` steps (``training_log.csv``).
        curves_png: the plot of losses, validation metrics and monitors (``training_curves.png``).
        work_dir: the run's working directory: the checkpoint a run resumes from (``checkpoint/``, swapped in
            from a temporary ``.checkpoint.tmp-*`` beside it) and, when tensorboard is installed, the TensorBoard
            event log (``tensorboard/``). A run resumes when it is given the same ``work_dir`` again.
    """

    model: Path
    log_csv: Path
    curves_png: Path
    work_dir: Path

    @classmethod
    def in_dir(cls, out_dir: str | os.PathLike[str]) -> TrainOutputs:
        """The default layout: everything in ``out_dir`` under its default name (what ``pixeldino train`` does)."""
        out = Path(out_dir)
        return cls(
            model=out / "model.safetensors",
            log_csv=out / "training_log.csv",
            curves_png=out / "training_curves.png",
            work_dir=out,
        )

    @property
    def checkpoint_dir(self) -> Path:
        """The checkpoint of the run (see :mod:`pixeldino.train.checkpoints`)."""
        return self.work_dir / "checkpoint"

    @property
    def tensorboard_dir(self) -> Path:
        """The TensorBoard event log of the run."""
        return self.work_dir / "tensorboard"

    @property
    def log_in_progress(self) -> Path:
        """The training log while the run goes on (copied to :attr:`log_csv` when it finishes): an interrupted run
        leaves no ``log_csv`` that a workflow could take for finished, and a resumed run continues this one."""
        return self.work_dir / "training_log.in-progress.csv"

    def make_dirs(self) -> None:
        """Create the directories every output goes into."""
        for directory in {self.model.parent, self.log_csv.parent, self.curves_png.parent, self.work_dir}:
            directory.mkdir(parents=True, exist_ok=True)
