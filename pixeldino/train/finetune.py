"""Fine-tuning: a run that starts from an exported model (``train.init_from``), and the frozen encoder.

A fine-tune loads the parent model's weights (and batch-norm buffers) into the student before the EMA teacher is
copied from it, so both start where the parent ended; the optimiser, the teacher-logit center and the schedules
start fresh. The parent must fit the run exactly (:func:`check_parent`): the same bands in the same order, the same
normalisation and the same architecture; anything else is one line naming the model, the chips and what differs.
A ``zscore`` run without statistics takes the parent's, because its weights were trained on inputs normalised with
those.

``train.freeze_encoder_steps`` keeps the encoder (encoder stages and bottleneck) fixed for the first steps
(:class:`EncoderFreeze`): its parameters get no gradient, so AdamW leaves them (and their weight decay) alone, and
the decoder and heads adapt to the new data before the features move.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixeldino.errors import ModelError
from pixeldino.model import UNet, UNetConfig
from pixeldino.modelio import load_model, model_id, read_metadata, weights_file

#: Architecture fields a parent model must share with the run, and the config key of each.
_ARCHITECTURE = ("width", "depth", "norm", "n_pseudo_classes")
_FROM_SCRATCH = "or start from scratch (train.init_from: null)"


@dataclass(frozen=True)
class Parent:
    """The model a fine-tune starts from.

    Attributes:
        path: its weights (``.safetensors``).
        meta: its metadata (``model.json``).
        model_id: the SHA-256 prefix of its weights (:func:`pixeldino.modelio.model_id`).
    """

    path: Path
    meta: dict[str, Any]
    model_id: str

    @property
    def record(self) -> dict[str, str]:
        """What the fine-tuned model's metadata records about its parent."""
        return {"path": str(self.path), "model_id": self.model_id}


def read_parent(path: str | os.PathLike[str]) -> Parent:
    """The parent model at ``path`` (weights, metadata JSON or model card), its metadata read and checked.

    Raises:
        ModelError: missing or corrupt model files.
    """
    weights = weights_file(path)
    meta = read_metadata(weights)
    if not weights.exists():
        raise ModelError(f"train.init_from: {weights} not found (its metadata is there); give the .safetensors file")
    return Parent(weights, meta, model_id(weights))


def chips_name(source: Any) -> str:
    """How messages name the chips a run trains on: the store's path, else "the chips in memory"."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    path = getattr(source, "path", None)
    return str(path) if path is not None else "the chips in memory"


def parent_normalisation(spec: dict[str, Any], parent: Parent) -> dict[str, Any]:
    """The run's normalisation spec, with the parent's statistics where the run asks for ``zscore`` without any."""
    parent_spec = parent.meta["normalisation"]
    if spec.get("method") == "zscore" and not ("center" in spec or "scale" in spec):
        if parent_spec.get("method") == "zscore":
            return {**spec, "center": parent_spec["center"], "scale": parent_spec["scale"]}
    return spec


def _describe(spec: dict[str, Any]) -> str:
    if spec["method"] == "zscore":
        return f"zscore (center {[round(c, 1) for c in spec['center']]}, scale {[round(s, 1) for s in spec['scale']]})"
    if spec["method"] == "scale":
        return f"scale (factor {spec['factor']})"
    return str(spec["method"])


def check_parent(parent: Parent, *, bands: list[str], spec: dict[str, Any], arch: UNetConfig, chips: str) -> None:
    """Raise a one-line :class:`ModelError` when the parent does not fit the run.

    Args:
        parent: the model the run starts from.
        bands: the chips' bands, in order.
        spec: the run's resolved normalisation spec.
        arch: the run's architecture.
        chips: the chips' name for the message (:func:`chips_name`).
    """
    meta, model = parent.meta, parent.path
    if list(meta["bands"]) != list(bands):
        raise ModelError(
            f"train.init_from: model {model} has bands {', '.join(meta['bands'])}, the chips {chips} have "
            f"{', '.join(bands)}; train on the same bands {_FROM_SCRATCH}"
        )
    theirs = meta["architecture"]
    differ = [k for k in _ARCHITECTURE if theirs.get(k) != getattr(arch, k)]
    if differ:
        raise ModelError(
            f"train.init_from: model {model} has {', '.join(f'{k} {theirs.get(k)}' for k in differ)}, the run on "
            f"{chips} has {', '.join(f'{k} {getattr(arch, k)}' for k in differ)}; set "
            f"{', '.join(f'train.{k}' for k in differ)} to the model's {_FROM_SCRATCH}"
        )
    if meta["normalisation"] != spec:
        raise ModelError(
            f"train.init_from: model {model} normalises with {_describe(meta['normalisation'])}, the run on {chips} "
            f"with {_describe(spec)}; set train.normalisation to the model's {_FROM_SCRATCH}"
        )


def load_parent_weights(parent: Parent, model: UNet) -> None:
    """Copy the parent's weights and buffers into ``model`` (same architecture, see :func:`check_parent`)."""
    loaded, _ = load_model(parent.path)
    model.load_state_dict(loaded.state_dict())


def encoder_parameters(model: UNet) -> list[torch.nn.Parameter]:
    """The parameters of the contracting path: the encoder stages and the bottleneck."""
    return [*model.encoders.parameters(), *model.bottleneck.parameters()]


class EncoderFreeze:
    """Keeps the student's encoder frozen for the first ``steps`` optimiser steps.

    The state follows from the step alone (:meth:`update` is called before every step), so a resumed run
    freezes exactly as an uninterrupted one.
    """

    def __init__(self, model: UNet, steps: int) -> None:
        """Freeze nothing yet; ``steps`` is ``train.freeze_encoder_steps``."""
        self.parameters = encoder_parameters(model)
        self.steps = int(steps)
        self.frozen = False

    def update(self, step: int) -> None:
        """Freeze or release the encoder for optimiser step ``step`` (1-based)."""
        frozen = step <= self.steps
        if frozen != self.frozen:
            # no gradient at all (not a zero one): AdamW skips such parameters, weight decay included
            for p in self.parameters:
                p.requires_grad_(not frozen)
            self.frozen = frozen
