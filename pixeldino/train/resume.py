"""What a checkpoint holds of a training run, and how a run continues from one (an exact resume).

:func:`checkpoint_of` gathers a :class:`~pixeldino.train.trainer.Trainer`'s whole state: the student, the teacher,
the optimiser, the teacher-logit center, both augmentation generators and both chip samplers, with the step, the
elapsed time, the config and the normalisation. :func:`resume_from` puts it back. Writing and reading the files is
:mod:`pixeldino.train.checkpoints`'.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from pixeldino.errors import TrainingError
from pixeldino.train import checkpoints

if TYPE_CHECKING:
    from pixeldino.train.trainer import Trainer


def checkpoint_of(trainer: Trainer) -> checkpoints.Checkpoint:
    """The checkpoint of the trainer's current step (tensors on the CPU)."""
    state = {
        "step": trainer.step,
        "elapsed_seconds": trainer.elapsed,
        "mode": trainer.config.mode,
        "config": asdict(trainer.config),
        "normalisation": trainer.spec,
        "init_from": trainer.parent.record if trainer.parent is not None else None,
        "tensors": "state.safetensors (center, aug_generator_labelled, aug_generator_unlabelled)",
        "samplers": {
            "labelled": trainer.sampler_l.state(),
            "unlabelled": trainer.sampler_u.state() if trainer.sampler_u is not None else None,
        },
    }
    tensors = {
        "center": trainer.center.detach().cpu().contiguous(),
        "aug_generator_labelled": trainer.gen_l.get_state().contiguous(),
        "aug_generator_unlabelled": trainer.gen_u.get_state().contiguous(),
    }
    return checkpoints.Checkpoint(
        student=checkpoints.on_cpu(trainer.student.state_dict()),
        teacher=checkpoints.on_cpu((trainer.teacher or trainer.student).state_dict()),
        optimizer=checkpoints.flatten_optimizer(trainer.optimizer),
        tensors=tensors,
        state=state,
    )


def resume_from(trainer: Trainer, checkpoint: checkpoints.Checkpoint) -> None:
    """Put the state of ``checkpoint`` (read for the trainer's config and normalisation) back into the trainer.

    Raises:
        TrainingError: the checkpoint continues a run fine-tuned from another model than ``train.init_from`` now.
    """
    state, tensors = checkpoint.state, checkpoint.tensors
    parent = trainer.parent.model_id if trainer.parent is not None else None
    written = (state.get("init_from") or {}).get("model_id")
    if written != parent:  # the same train.init_from path may hold another model by now
        raise TrainingError(
            f"{trainer.outputs.checkpoint_dir}: the checkpoint continues a run started from model {written}, "
            f"train.init_from is model {parent} now; use another work directory or resume=False"
        )
    trainer.student.load_state_dict(checkpoint.student)
    if trainer.teacher is not None:
        trainer.teacher.load_state_dict(checkpoint.teacher)
    checkpoints.unflatten_optimizer(trainer.optimizer, checkpoint.optimizer)
    trainer.center.copy_(tensors["center"].to(trainer.device))
    trainer.gen_l.set_state(tensors["aug_generator_labelled"])
    trainer.gen_u.set_state(tensors["aug_generator_unlabelled"])
    trainer.sampler_l.set_state(state["samplers"]["labelled"])
    if trainer.sampler_u is not None:
        trainer.sampler_u.set_state(state["samplers"]["unlabelled"])
    for stream in (trainer.stream_l, trainer.stream_u):
        if stream is not None:
            stream.reset()  # what was read ahead follows the samplers' old position
    trainer.step = int(state["step"])
    trainer.elapsed = float(state["elapsed_seconds"])
