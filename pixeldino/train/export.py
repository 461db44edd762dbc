"""The end of a training run: the final metrics, the exported model with its metadata and model card, the curves.

What is exported was chosen by :meth:`pixeldino.train.trainer.Trainer.finish` (see
:func:`pixeldino.train.validation.choose_export`); here it is written: ``model.safetensors`` + ``model.json``
(:mod:`pixeldino.modelio`: bands, normalisation, chip size, calibrated threshold, training config and metrics, the
parent model when fine-tuned), the model card ``model.stac.json`` (:mod:`pixeldino.modelcard`) and
``training_curves.png``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pixeldino.modelcard import describe_training_data, write_model_card
from pixeldino.modelio import save_model
from pixeldino.train.params import ema_horizon_steps, initial_ema_momentum, warmup_steps_of

if TYPE_CHECKING:
    from pixeldino.train.trainer import Trainer


def export_model(trainer: Trainer, exported: str) -> dict[str, Any]:
    """Write the model ``exported`` (a key of ``trainer.final_models`` and ``trainer.candidates``), its model card
    and the training curves; returns the run's final metrics (also stored in the model's metadata)."""
    cfg = trainer.config
    chosen = trainer.candidates[exported]
    metrics: dict[str, Any] = {
        "step": trainer.step,
        "mode": cfg.mode,
        "exported": exported,
        "export_policy": cfg.export if trainer.teacher is not None else "student",
        "val": chosen["val"],
        "threshold": chosen["threshold"],
        "val_at_threshold": chosen["val_at_threshold"],
        "candidates": trainer.candidates,
        "history": trainer.log.summary(trainer.elapsed),
        "schedules": {
            "warmup_steps": warmup_steps_of(cfg),
            "ema_initial_momentum": initial_ema_momentum(cfg) if trainer.semi else None,
            "ema_initial_horizon_steps": ema_horizon_steps(initial_ema_momentum(cfg)) if trainer.semi else None,
        },
    }
    metadata = {
        "bands": trainer.bands,
        "normalisation": trainer.spec,
        "chip_size": trainer.chip_size,
        "threshold": chosen["threshold"],
        "mode": cfg.mode,
        "training": asdict(cfg),
        "metrics": metrics,
        "init_from": trainer.parent.record if trainer.parent is not None else None,
    }
    model = trainer.final_models[exported]
    save_model(trainer.outputs.model, model, metadata)
    write_model_card(
        trainer.outputs.model,
        training_data=describe_training_data(trainer.data_source),
        license=cfg.model_license,
        model=model,
    )
    if trainer.log.history:
        trainer.log.plot(trainer.outputs.curves_png, cfg.mode)
    trainer.log.publish()
    return metrics
