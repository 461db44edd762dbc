"""The training losses (labelled BCE, PixelDINO self-distillation) and the label-free collapse monitors."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


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
