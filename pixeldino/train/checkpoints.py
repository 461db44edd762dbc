"""Checkpoints for an exact resume: safetensors and JSON only (no pickle), swapped in as a whole.

A checkpoint directory (:attr:`pixeldino.train.TrainOutputs.checkpoint_dir`) holds ``student.safetensors``,
``teacher.safetensors`` (the student's again in the supervised modes), ``optimizer.safetensors`` (the AdamW state,
flattened), ``state.safetensors`` (the teacher-logit center and the two augmentation generator states) and
``state.json`` (step, elapsed time, config, normalisation, sampler states). It is written completely under a
temporary name beside it (:func:`pixeldino.io.new_temporary`) and then swapped in, so a kill at any moment leaves
either the old or the new checkpoint (or, between the two renames, the old one as ``<checkpoint>.old``, which is
read too); SIGINT and SIGTERM wait until the swap is done, and the temporary a SIGKILL left is removed by the next
checkpoint write.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pixeldino.errors import TrainingError
from pixeldino.io import critical_section, follow_umask, temporary
from pixeldino.params import default_of
from pixeldino.train.params import TrainConfig

CHECKPOINT_FORMAT = "pixeldino-checkpoint"
CHECKPOINT_VERSION = 2
#: Config fields that do not change the numbers of a run; every other field must match to resume a checkpoint.
#: ``steps`` may differ: a finished run can be extended, its schedules then stretch to the new length.
RESUME_FREE_FIELDS = (
    "steps", "val_every", "checkpoint_every", "log_every", "device", "num_threads", "compile", "export",
    "bn_recalibration_chips", "memory_budget_mb", "prefetch_batches", "model_license",
)  # fmt: skip


@dataclass
class Checkpoint:
    """The content of a checkpoint, all tensors on the CPU.

    Attributes:
        student: the student's state dict.
        teacher: the teacher's state dict (the student's in the supervised modes).
        optimizer: the optimiser state, flattened by :func:`flatten_optimizer`.
        tensors: other tensors of the run's state (teacher-logit center, generator states).
        state: JSON state (step, elapsed seconds, config, normalisation, sampler states, ...).
    """

    student: dict[str, torch.Tensor]
    teacher: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def on_cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict detached, contiguous and on the CPU, as safetensors writes it."""
    return {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as flat ``"<index>.<key>"`` tensors (safetensors holds no nesting)."""
    flat: dict[str, torch.Tensor] = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            flat[f"{idx}.{key}"] = t.detach().contiguous().cpu()
    return flat


def unflatten_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Load a :func:`flatten_optimizer` state into ``optimizer`` (its parameter groups stay as they are)."""
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in flat.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def _old(directory: Path) -> Path:
    return directory.with_name(directory.name + ".old")


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a completed directory into place; an old version survives as ``<final>.old`` until the swap is done."""
    old = _old(final)
    follow_umask(tmp)  # safetensors writes its files 0600; a checkpoint is an output like any other
    # SIGINT/SIGTERM wait until the swap is done; a SIGKILL in between leaves the old one as .old, which is read
    with critical_section():
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        # without a final (a run killed mid-swap), .old is the only checkpoint: kept until the new one is in place
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` completely under a temporary name beside ``directory``, then swap it in."""
    # named for the checkpoint, this host and process; one a killed run left is removed here (pixeldino.io);
    # removed on exit unless swapped in. Not an output of the run: an interruption does not name it
    with temporary(directory, directory=True, outputs=[]) as tmp:
        save_file(checkpoint.student, str(tmp / "student.safetensors"))
        save_file(checkpoint.teacher, str(tmp / "teacher.safetensors"))
        save_file(checkpoint.optimizer, str(tmp / "optimizer.safetensors"))
        save_file(checkpoint.tensors, str(tmp / "state.safetensors"))
        state = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **checkpoint.state}
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")
        replace_dir(tmp, directory)


def find_checkpoint(directory: Path) -> Path | None:
    """The complete checkpoint at ``directory`` (or its ``.old`` copy mid-swap); None when there is none."""
    for candidate in (directory, _old(directory)):
        if (candidate / "state.json").exists():
            return candidate
    return None


def remove_checkpoint(directory: Path) -> None:
    """Delete the checkpoint at ``directory`` and any ``.old`` copy (a fresh start)."""
    for stale in (directory, _old(directory)):
        if stale.exists():
            shutil.rmtree(stale)


def read_checkpoint(directory: Path, config: TrainConfig, spec: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint at ``directory`` if there is one, after checking that this run can continue it.

    Args:
        directory: the checkpoint directory.
        config: the run's parameters; all but :data:`RESUME_FREE_FIELDS` must equal the checkpoint's.
        spec: the run's resolved normalisation spec; must equal the checkpoint's.

    Raises:
        TrainingError: an unreadable checkpoint, one of another format or version, or one written by a run with
            other parameters or another normalisation.
    """
    ckpt = find_checkpoint(directory)
    if ckpt is None:
        return None
    try:
        state = json.loads((ckpt / "state.json").read_text())
        checkpoint = Checkpoint(
            student=load_file(str(ckpt / "student.safetensors")),
            teacher=load_file(str(ckpt / "teacher.safetensors")),
            optimizer=load_file(str(ckpt / "optimizer.safetensors")),
            tensors=load_file(str(ckpt / "state.safetensors")),
            state=state,
        )
    except Exception as exc:  # safetensors/json raise assorted types for damaged files
        raise TrainingError(
            f"{ckpt}: unreadable checkpoint ({type(exc).__name__}); delete it or train with resume=False"
        ) from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{ckpt}: not a pixeldino checkpoint; delete it or train with resume=False")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise TrainingError(
            f"{ckpt}: checkpoint format {state.get('format_version')} was written by another pixeldino version "
            f"(this one reads {CHECKPOINT_VERSION}); use another work directory or resume=False"
        )
    old = state["config"]
    free = (*RESUME_FREE_FIELDS, "normalisation")  # normalisation: compared below, resolved
    for f in dataclasses.fields(TrainConfig):
        name = f.name
        if name in free:
            continue
        # a field added after the checkpoint was written (e.g. freeze_encoder_steps) had its default then
        written = old[name] if name in old else json.loads(json.dumps(default_of(f)))
        if written != json.loads(json.dumps(getattr(config, name))):
            raise TrainingError(
                f"{ckpt}: checkpoint has {name}={written!r} but the config says "
                f"{getattr(config, name)!r}; use another work directory or resume=False"
            )
    if state["normalisation"] != spec:
        raise TrainingError(
            f"{ckpt}: checkpoint normalisation differs from this run's; use another work directory or resume=False"
        )
    return checkpoint
