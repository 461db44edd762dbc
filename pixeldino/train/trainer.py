"""One training run: the student (and in the semi-supervised modes its EMA teacher), the optimiser, the two chip
streams, and the loop that steps, logs, validates, checkpoints (:mod:`pixeldino.train.resume`) and finally exports
(:mod:`pixeldino.train.export`)."""

from __future__ import annotations

import copy
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.nn import functional as F

from pixeldino.augment import decode_label, encode_label, strong_augment, strong_geometric, weak_augment
from pixeldino.errors import TrainingError
from pixeldino.labels import IGNORE
from pixeldino.model import UNet, UNetConfig, build_model, resolve_device
from pixeldino.normalise import n_aux, with_aux
from pixeldino.train import checkpoints
from pixeldino.train.chips import TrainingChips, resolve_normalisation
from pixeldino.train.data import (
    BatchPrefetcher,
    ChipSource,
    StreamSampler,
    autocast,
    host_masks,
    model_layout,
)
from pixeldino.train.export import export_model
from pixeldino.train.finetune import (
    EncoderFreeze,
    check_parent,
    chips_name,
    load_parent_weights,
    parent_normalisation,
    read_parent,
)
from pixeldino.train.logs import TrainingLog, is_number, log_columns
from pixeldino.train.losses import collapse_monitors, distillation_loss, labelled_loss
from pixeldino.train.params import (
    TrainConfig,
    TrainOutputs,
    ema_horizon_steps,
    ema_momentum_at,
    fixmatch_thresholds,
    lr_at,
    strong_augment_config,
)
from pixeldino.train.resume import checkpoint_of, resume_from
from pixeldino.train.validation import (
    Results,
    candidate_summaries,
    choose_export,
    frozen_batch_norm_statistics,
    recalibrated,
    validate,
)

if TYPE_CHECKING:
    from pixeldino.chipstore import ChipArray

log = logging.getLogger(__name__)


class Trainer:
    """One training run (see :func:`pixeldino.train.run_train`): models, optimiser, samplers and logging state."""

    def __init__(
        self,
        chips: TrainingChips,
        config: TrainConfig,
        outputs: TrainOutputs,
        *,
        progress: bool = True,
        data_source: Any = None,
    ) -> None:
        """Build everything a run needs from checked ``chips`` (:meth:`TrainingChips.check`).

        Args:
            chips: the run's chips.
            config: the run's parameters.
            outputs: where the run writes.
            progress: show a tqdm progress bar with ETA.
            data_source: what ``chips`` were read from (the chip store's path, or a chip set): named in messages,
                and its recorded footprint goes into the model card. None: chips in memory.

        Raises:
            ModelError: ``config.init_from`` is missing, corrupt, or does not fit the chips and the config.
        """
        self.config = config
        self.outputs = outputs
        self.data_source = data_source
        # fine-tuning: the parent's metadata decides the normalisation (zscore statistics) before any chip is read
        self.parent = read_parent(config.init_from) if config.init_from else None
        self.bands = list(chips.bands)
        self.progress = progress
        self.device = resolve_device(config.device, "train.device")
        if self.device.type == "cpu" and config.num_threads:
            torch.set_num_threads(int(config.num_threads))
        self.semi = config.semi
        self.augment_labelled = config.mode != "supervised"
        self.amp = bool(config.amp) and self.device.type == "cuda"
        self.channels_last = bool(config.channels_last) and self.device.type == "cuda"
        self.chip_size = chips.chip_size

        unlabelled_images = chips.unlabelled_images if self.semi else None
        train_sets = [chips.labelled_images] + ([unlabelled_images] if unlabelled_images is not None else [])
        requested = dict(config.normalisation)
        if self.parent is not None:
            requested = parent_normalisation(requested, self.parent)
        # auxiliary layers among the bands (slope...) are decoded and scaled by their own entries of the spec
        self.spec = resolve_normalisation(with_aux(requested, self.bands), train_sets, len(self.bands))
        self.value_range = (0.0, 1.0) if self.spec["method"] == "logsigmoid" else None
        self.n_spectral = len(self.bands) - n_aux(self.spec)  # photometric augmentation: reflectance bands only
        if config.mode != "supervised" and any(e["band"] == "aspect" for e in self.spec.get("aux") or []):
            raise TrainingError(
                f"train.mode {config.mode} rotates and flips chips, which changes what an aspect layer means; drop "
                "aspect from aux.terrain or train with mode: supervised"
            )
        self.labelled = self._source(chips.labelled_images)
        self.labelled_masks = chips.labelled_masks
        self.unlabelled = self._source(unlabelled_images) if unlabelled_images is not None else None
        self.val = self._source(chips.val_images) if chips.val_images is not None and chips.has_val else None
        self.val_masks = chips.val_masks

        arch = UNetConfig(
            in_channels=len(self.bands), width=config.width, depth=config.depth,
            n_pseudo_classes=config.n_pseudo_classes, norm=config.norm,
        )  # fmt: skip
        if self.parent is not None:
            check_parent(self.parent, bands=self.bands, spec=self.spec, arch=arch, chips=chips_name(data_source))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.student = build_model(arch)
        if self.parent is not None:  # before the teacher is copied: both start from the parent (a resume overwrites)
            load_parent_weights(self.parent, self.student)
        self.student.to(self.device)
        if self.channels_last:
            self.student.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
        self.student.train()
        self.encoder_freeze = EncoderFreeze(self.student, config.freeze_encoder_steps)
        self.teacher: UNet | None = None
        if self.semi:
            self.teacher = copy.deepcopy(self.student).eval()
            self.teacher.requires_grad_(False)
            # the EMA averages parameters only; buffers (batch-norm running statistics, which do not fit averaged
            # weights) are the student's, and are recomputed before anything is validated or exported
            self._ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] = (
                list(self.teacher.parameters()),
                list(self.student.parameters()),
            )
            self._copy_pairs = list(zip(self.teacher.buffers(), self.student.buffers()))
        self.forward = torch.compile(self.student) if config.compile else self.student
        self.optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=lr_at(1, config), weight_decay=config.weight_decay
        )
        self.center = torch.zeros(config.n_pseudo_classes, device=self.device)
        self._batch_center = self.center  # the batch mean of the teacher logits, set by every PixelDINO step
        self.aug_config = strong_augment_config(config.augment)
        self.fixmatch_thresholds = fixmatch_thresholds(config.fixmatch_threshold)
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
        # chips are read ahead on background threads (streamed from the store or gathered in memory); what is read
        # is still decided by the samplers at each step, so reading ahead never changes a run's numbers
        n_streams = 1 + (self.sampler_u is not None)
        self._pool = (
            ThreadPoolExecutor(min(4, config.prefetch_batches * n_streams), thread_name_prefix="pixeldino-chips")
            if config.prefetch_batches > 0
            else None
        )
        self.stream_l: BatchPrefetcher[tuple[torch.Tensor, torch.Tensor]] = BatchPrefetcher(
            self.sampler_l, config.batch_labelled, self._read_labelled, self._pool, config.prefetch_batches
        )
        self.stream_u: BatchPrefetcher[torch.Tensor] | None = None
        if self.sampler_u is not None and self.unlabelled is not None:
            self.stream_u = BatchPrefetcher(
                self.sampler_u, config.batch_unlabelled, self.unlabelled.host, self._pool, config.prefetch_batches
            )

        self.step = 0
        self.elapsed = 0.0
        self.last_checkpoint_step: int | None = None
        self.log = TrainingLog(outputs.log_in_progress, log_columns(config), final=outputs.log_csv)
        self._reset_accumulators()
        self._bad_step = torch.full((), -1, dtype=torch.int64, device=self.device)

    def _source(self, images: ChipArray) -> ChipSource:
        """The chips ``images`` as the trainer reads them: normalised by its spec, on its device."""
        return ChipSource(images, self.spec, self.device, self.channels_last)

    def _read_labelled(self, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Host tensors of the labelled chips ``index`` and their masks (runs on the reading threads)."""
        return self.labelled.host(index), host_masks(self.labelled_masks, index, self.device)

    @property
    def data_wait_seconds(self) -> float:
        """Seconds the steps so far (of this process) waited for chips: the part of training the data path costs."""
        return self.stream_l.wait_seconds + (self.stream_u.wait_seconds if self.stream_u is not None else 0.0)

    def close_streams(self) -> None:
        """Stop reading ahead and end the reading threads; later batches are read when asked for."""
        for stream in (self.stream_l, self.stream_u):
            if stream is not None:
                stream.reset()
                stream.pool = None
                stream.depth = 0
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # ---- the models that are validated and exported --------------------------------------------------------
    def eval_models(self) -> dict[str, UNet]:
        """``student`` and (semi-supervised modes) ``teacher``, batch-norm statistics recomputed where needed."""
        models = {"student": self.student}
        if self.teacher is not None:
            models["teacher"] = self.teacher
        batch = max(self.config.batch_labelled, 16)
        n = self.config.bn_recalibration_chips
        return {k: recalibrated(m, self.labelled, n, batch, self.amp) for k, m in models.items()}

    def validate(self, models: dict[str, UNet] | None = None) -> Results | None:
        """For the student and (semi-supervised) the teacher: metrics at p = 0.5 and all threshold counts on the
        validation chips (None without validation chips)."""
        if self.val is None or self.val_masks is None:
            return None
        batch = max(self.config.batch_labelled, 16)
        return validate(models or self.eval_models(), self.val, self.val_masks, batch, self.amp)

    def choose_export(self, results: Results | None) -> str:
        """The model ``export`` asks for (see :func:`pixeldino.train.validation.choose_export`)."""
        return choose_export(results, self.config.export, self.teacher is not None)

    # ---- one optimisation step ------------------------------------------------------------------------------
    def _reset_accumulators(self) -> None:
        """Start the means of the next log row."""
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def _accumulate(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one step's loss terms to the means of the next log row (on the device: no sync)."""
        for k, v in terms.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v
        self._count += 1

    def labelled_batch(self) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next labelled batch from its own stream: ``(chip index, image, label, known)``, augmented unless
        the mode is ``supervised``."""
        idx_l, (host_x, host_y) = self.stream_l.next()
        x_l = self.labelled.to_device(host_x)
        y_l = host_y.to(self.device, non_blocking=True)
        if not self.augment_labelled:
            return idx_l, x_l, (y_l == 1).float(), y_l != IGNORE
        x_l, y_l = weak_augment(x_l, y_l, generator=self.gen_l)
        res_l = strong_augment(x_l, encode_label(y_l), self.gen_l, self.aug_config, self.value_range, self.n_spectral)
        assert res_l.target is not None  # a target went in, so one comes out
        label, known = decode_label(res_l.target, res_l.valid)
        return idx_l, res_l.image, label, known

    def _strong_view(self, v1: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Strong view of the unlabelled batch and its target: ``(image, target, valid)``. ``target_warp:
        shared`` warps both with one transform; ``independent`` (ablation) gives the target its own."""
        g = self.gen_u
        if self.config.target_warp == "shared":
            res = strong_augment(v1, target, g, self.aug_config, self.value_range, self.n_spectral)
            assert res.target is not None
            return res.image, res.target, res.valid
        res = strong_augment(v1, None, g, self.aug_config, self.value_range, self.n_spectral)
        warped = strong_geometric(target, None, g, self.aug_config)
        return res.image, warped.image, res.valid & warped.valid

    def _unlabelled_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unlabelled term of the loss (PixelDINO or FixMatchSeg) on the next unlabelled batch."""
        cfg = self.config
        assert self.unlabelled is not None and self.stream_u is not None and self.teacher is not None
        stride = self.pseudo_stride
        x_u = self.unlabelled.to_device(self.stream_u.next()[1])
        (v1,) = weak_augment(x_u, generator=self.gen_u)
        with torch.no_grad(), autocast(self.device, self.amp):
            t_rts, t_pseudo = self.teacher(model_layout(v1, self.channels_last), pseudo_stride=stride)
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
        with frozen_batch_norm_statistics(self.student), autocast(self.device, self.amp):
            rts_u, s_pseudo = self.forward(model_layout(image, self.channels_last), pseudo_stride=stride)
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
        self.encoder_freeze.update(step)

        _, x_l, label, known = self.labelled_batch()
        terms: dict[str, torch.Tensor] = {}
        # Labelled and unlabelled chips go through the student in separate passes, not one over the concatenated
        # batch: with batch norm, a mixed batch would normalise source chips with target statistics and vice versa.
        with autocast(self.device, self.amp):
            rts, _ = self.forward(model_layout(x_l, self.channels_last))
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
            f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in {self.outputs.checkpoint_dir}"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        raise TrainingError(
            f"training diverged: non-finite loss at step {bad} (lr {lr_at(bad, self.config):.3g}); {where}; "
            "lower train.lr (or raise warmup_steps) and train again"
        )

    # ---- logging ---------------------------------------------------------------------------------------------
    def write_row(self, results: Results | None) -> dict[str, Any]:
        """Log the means since the last row and, on validation steps, the validation metrics of ``results``."""
        row: dict[str, Any] = {c: "" for c in self.log.columns}
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
        self.log.append(row)
        return row

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current step (see :mod:`pixeldino.train.checkpoints`)."""
        checkpoints.write_checkpoint(self.outputs.checkpoint_dir, checkpoint_of(self))
        self.last_checkpoint_step = self.step

    def load_checkpoint(self) -> bool:
        """Restore the full training state from the checkpoint; False if there is none."""
        checkpoint = checkpoints.read_checkpoint(self.outputs.checkpoint_dir, self.config, self.spec)
        if checkpoint is None:
            return False
        resume_from(self, checkpoint)
        self.last_checkpoint_step = self.step
        return True

    # ---- the loop --------------------------------------------------------------------------------------------
    def run(self, resume: bool) -> dict[str, Any]:
        """Train to ``config.steps`` (continuing the checkpoint if ``resume``), then :meth:`finish`."""
        cfg = self.config
        self.outputs.make_dirs()
        if resume and self.load_checkpoint():
            self.log.restore(self.step)
            log.info("resuming %s training from step %d", cfg.mode, self.step)
        else:
            checkpoints.remove_checkpoint(self.outputs.checkpoint_dir)
            self.log.clear()
        self.log.open_tensorboard(self.outputs.tensorboard_dir, self.step)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.mode}", unit="step", dynamic_ncols=True)
        sync_each_step = self.device.type == "cpu"  # free on CPU: names the exact diverging step before any damage
        t_run = time.perf_counter()
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
                    row = self.write_row(self.validate() if is_val else None)
                    if bar is not None:
                        shown = {k: row[k] for k in ("loss", "loss_unlabelled", "val_iou") if is_number(row.get(k))}
                        bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
                if is_ckpt:
                    self.save_checkpoint()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            self.log.close()
            self.close_streams()
        log.info(
            "waited %.1f s for chips in %.1f s of training in this process",
            self.data_wait_seconds, time.perf_counter() - t_run,
        )  # fmt: skip
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Final validation, threshold calibration, export of the model and its model card, curves; returns the
        final metrics."""
        models = self.eval_models()
        results = self.validate(models)
        self.final_models = models
        self.candidates = candidate_summaries(results, list(models))
        return export_model(self, self.choose_export(results))
