"""Chips on their way into the model: endless seeded index streams, batches read ahead in the background, and
batches gathered, normalised and laid out on the training device.

**Reading never decides what is read.** The chip indices of every step come from the :class:`StreamSampler` of
the stream, drawn when the step asks for its batch, exactly as without prefetching; a :class:`BatchPrefetcher`
only reads ahead along a copy of the sampler, and a batch it read ahead is used only for the very indices the
sampler drew. Reading a batch is a pure function of its indices (the same uint16 chips from memory or from the
store), so the index streams, the augmentation streams and the weights are bit-identical whether the chips are in
memory or streamed, prefetched or not, and a run resumed from a checkpoint continues exactly.
"""

from __future__ import annotations

import collections
import copy
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import torch

from pixeldino.errors import TrainingError
from pixeldino.normalise import NODATA_DN, normalise_torch

if TYPE_CHECKING:
    from pixeldino.chipstore import ChipArray

T = TypeVar("T")


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


class BatchPrefetcher(Generic[T]):
    """The batches of one :class:`StreamSampler`, read ``depth`` batches ahead on a thread pool.

    :meth:`next` draws the step's indices from the sampler itself (so the sampler's state is always that of the
    step, for checkpoints) and takes the batch read ahead for exactly those indices; when there is none (the first
    batch, or the sampler was moved elsewhere, e.g. restored from a checkpoint), it reads the batch itself and
    starts reading ahead again from the sampler's new position.
    """

    def __init__(
        self,
        sampler: StreamSampler,
        batch_size: int,
        read: Callable[[np.ndarray], T],
        pool: Executor | None,
        depth: int,
    ) -> None:
        """Serve ``read(indices)`` for the next ``batch_size`` indices of ``sampler`` at every :meth:`next`.

        Args:
            sampler: the stream's index sampler (shared with the checkpoint).
            batch_size: indices per batch.
            read: reads one batch; must depend on the indices only (it runs on ``pool``'s threads).
            pool: the threads that read ahead (None: no reading ahead).
            depth: batches read ahead (0: none).
        """
        self.sampler = sampler
        self.batch_size = batch_size
        self.read = read
        self.pool = pool
        self.depth = depth if pool is not None else 0
        self.wait_seconds = 0.0  # time :meth:`next` spent waiting for chips: the data path's share of a step
        self._ahead: StreamSampler | None = None
        self._queue: collections.deque[tuple[np.ndarray, Future[T]]] = collections.deque()

    def next(self) -> tuple[np.ndarray, T]:
        """The next batch: ``(indices, read(indices))``."""
        index = self.sampler.next(self.batch_size)
        t0 = time.perf_counter()
        if self._queue and np.array_equal(self._queue[0][0], index):
            data = self._queue.popleft()[1].result()
        else:
            self.reset()
            data = self.read(index)
        self.wait_seconds += time.perf_counter() - t0
        self._fill()
        return index, data

    def _fill(self) -> None:
        if not self.depth or self.pool is None:
            return
        if self._ahead is None:
            self._ahead = copy.deepcopy(self.sampler)
        while len(self._queue) < self.depth:
            index = self._ahead.next(self.batch_size)
            self._queue.append((index, self.pool.submit(self.read, index)))

    def reset(self) -> None:
        """Drop what was read ahead (after the sampler was moved, e.g. restored from a checkpoint)."""
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        self._ahead = None


class ChipSource:
    """uint16 chips, in memory or streamed from the chip store; batches are gathered, copied (pinned on CUDA) and
    normalised on the device.

    Keeping uint16 rather than pre-normalised float32 halves host memory and transfer volume. Pixels without data
    (DN 0 in every band) enter the model as 0, as in inference (see :mod:`pixeldino.normalise`). :meth:`batch` is
    :meth:`host` (safe on a reading thread) followed by :meth:`to_device`.
    """

    def __init__(self, images: ChipArray, spec: dict[str, Any], device: torch.device, channels_last: bool) -> None:
        """Serve ``images`` (``(N, C, S, S)`` uint16, an array or a store view) normalised by ``spec`` on ``device``."""
        self.images = images
        self.spec = spec
        self.device = device
        self.channels_last = channels_last

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def host(self, index: np.ndarray) -> torch.Tensor:
        """The chips ``index`` as raw uint16 bits in a host tensor, pinned on CUDA (to be copied asynchronously).

        On CUDA the bits are typed int16: uint16 goes over the bus as int16 and is widened on the GPU (uint16
        kernels are sparse).
        """
        host = np.ascontiguousarray(self.images[index])
        if self.device.type == "cuda":
            return torch.from_numpy(host.view(np.int16)).pin_memory()
        return torch.from_numpy(host)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A :meth:`host` batch as a normalised ``(B, C, S, S)`` float32 tensor on the device."""
        if self.device.type == "cuda":
            t = host.to(self.device, non_blocking=True)
            dn = (t.to(torch.int32) & 0xFFFF).to(torch.float32)
        else:
            dn = host.to(torch.float32)
        return model_layout(normalise_torch(dn, self.spec, nodata=NODATA_DN), self.channels_last)

    def batch(self, index: np.ndarray) -> torch.Tensor:
        """The normalised chips ``index`` as a ``(B, C, S, S)`` float32 tensor on the device."""
        return self.to_device(self.host(index))


def model_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Channels-last when asked (faster convolutions on CUDA); the augmentations return the standard layout, so
    this is applied again before every forward."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def host_masks(masks: ChipArray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """The label masks ``index`` as a uint8 host tensor, pinned when ``device`` is CUDA (safe on a reading thread)."""
    t = torch.from_numpy(np.ascontiguousarray(masks[index]))
    return t.pin_memory() if device.type == "cuda" else t


def masks_to_device(masks: ChipArray, index: np.ndarray, device: torch.device) -> torch.Tensor:
    """The label masks ``index`` as a uint8 tensor on ``device`` (through pinned memory on CUDA)."""
    return host_masks(masks, index, device).to(device, non_blocking=True)


def autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bf16 autocast on CUDA when ``amp`` is set; a no-op context otherwise (CPU training stays float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
