"""PixelLM's mask losses (per-mask means, averaged over masks), compared at the original image size."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N,) mean pixel BCE of each mask."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


def dice_per_mask(logits: torch.Tensor, target: torch.Tensor, scale: float = 1000.0, eps: float = 1e-6) -> torch.Tensor:
    """(N, H, W) -> (N,) 1 - soft DICE, with the release's scaling (keeps sums small in bf16)."""
    p = logits.sigmoid().flatten(1) / scale
    t = target.flatten(1)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + (t / scale).sum(-1) + eps)


def overlap_per_mask(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target refinement: BCE only on pixels that two or more predicted masks of ONE answer claim.

    logits/target: (N, H, W) of one question's targets -> (N,). Zero when fewer than two targets.
    (The release's version of this term crashed and was commented out; this one runs.)
    """
    if logits.shape[0] < 2:
        return logits.sum((1, 2)) * 0
    claimed = ((logits > 0).sum(0) >= 2).to(logits.dtype).expand_as(logits)
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=claimed, reduction="none")
    return loss.flatten(1).mean(1)
