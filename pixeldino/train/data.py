"""Chips on their way into the model: endless seeded index streams, and batches gathered, normalised and laid out
on the training device."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from pixeldino.errors import TrainingError
from pixeldino.normalise import NODATA_DN, normalise_torch


class StreamSampler:
    """Endless stream of chip indices: shuffled epochs from its own numpy generator.

    Its state is the generator state at the start of the current epoch plus the position in it, which is small
    JSON even for large chip sets (the permutation is regenerated on restore).
    """

    def __init__(self, n: int, seed: list[int]) -> None:
        """A stream over chips ``0..n-1`` seeded with ``seed`` (one seed per stream keeps streams independent)."""
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
        """JSON state for a checkpoint."""
        return {"n": self.n, "epoch_state": self.epoch_state, "pos": self.pos}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue exactly where :meth:`state` was taken.

        Raises:
            TrainingError: the state belongs to a stream over another number of chips.
        """
        if state["n"] != self.n:
            raise TrainingError(f"the checkpoint was written for {state['n']} chips, not {self.n}; use resume=False")
        self.rng.bit_generator.state = state["epoch_state"]
        self._new_epoch()
        self.pos = int(state["pos"])


class ChipSource:
    """uint16 chips kept on the host; batches are gathered, copied (pinned on CUDA) and normalised on device.

    Keeping uint16 rather than pre-normalised float32 halves host memory and transfer volume. Pixels without data
    (DN 0 in every band) enter the model as 0, as in inference (see :mod:`pixeldino.normalise`).
    """

    def __init__(self, images: np.ndarray, spec: dict[str, Any], device: torch.device, channels_last: bool) -> None:
        """Serve ``images`` (``(N, C, S, S)`` uint16) normalised by ``spec`` on ``device``."""
        self.images = images
        self.spec = spec
        self.device = device
        self.channels_last = channels_last

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(self, index: np.ndarray) -> torch.Tensor:
        """The normalised chips ``index`` as a ``(B, C, S, S)`` float32 tensor on the device."""
        host = np.ascontiguousarray(self.images[index])
        if self.device.type == "cuda":
            # uint16 goes over the bus as int16 bits and is widened on the GPU (uint16 kernels are sparse)
            t = torch.from_numpy(host.view(np.int16)).pin_memory().to(self.device, non_blocking=True)
            dn = (t.to(torch.int32) & 0xFFFF).to(torch.float32)
        else:
            dn = torch.from_numpy(host).to(torch.float32)
        return model_layout(normalise_torch(dn, self.spec, nodata=NODATA_DN), self.channels_last)


def model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Channels-last when asked (faster convolutions on CUDA); the augmentations return the standard layout, so
    this is applied again before every forward."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def masks_to_device(masks: np.ndarray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """The label masks ``index`` as a uint8 tensor on ``device`` (through pinned memory on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(masks[index]))
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 autocast on CUDA when ``amp`` is set; a no-op context otherwise (CPU training stays float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
