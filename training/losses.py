"""The terms of the training loss: PixelLM's mask losses and the one table (`LOSS_TERMS`) naming every term.

Mask losses are per-mask means, averaged over masks, compared at the original image size. The table is the
one place a term's key is spelled: `TrainingModel.forward` sums each term under `sum_key`, `combine_losses`
divides by the term's count and weights it with its `LossConfig` field, and the key names its column in
metrics.csv, its TensorBoard scalar (`train/<key>`) and its line in the model card.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .config import LossConfig


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


# What a term's sum is divided by: answer tokens, target masks or labelled vision patches of the batch.
TOKENS, MASKS, PATCHES = "tokens", "masks", "patches"


@dataclass(frozen=True)
class LossTerm:
    """One term of the loss. `key` is its name in every log and must not change (old runs' metrics.csv read by it)."""

    key: str
    weight_field: str  # its weight in training.config.LossConfig
    per: str  # TOKENS, MASKS or PATCHES
    label: str  # how the model card names it
    release: bool  # one of the release's three terms: always reported; the others only when weighted
    measures: str
    of_masks: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (logits, target) -> (N,)

    @property
    def sum_key(self) -> str:
        """Its key in `TrainingModel.forward`'s output (summed over the process's batch, not yet divided)."""
        return f"{self.key}_sum"

    def weight(self, loss_cfg: LossConfig) -> float:
        return getattr(loss_cfg, self.weight_field)


CE = LossTerm("ce", "ce_weight", TOKENS, "CE", True, "cross-entropy of the answer's tokens (teacher forcing)")
BCE = LossTerm("bce", "bce_weight", MASKS, "BCE", True, "pixel binary cross-entropy of each target mask",
               bce_per_mask)
DICE = LossTerm("dice", "dice_weight", MASKS, "DICE", True, "1 - soft DICE of each target mask", dice_per_mask)
OVERLAP = LossTerm("overlap", "overlap_weight", MASKS, "target refinement", False,
                   "BCE on the pixels two or more masks of one answer claim", overlap_per_mask)
NAMING = LossTerm("naming", "naming_weight", MASKS, "prompt naming (training-only head)", False,
                  "NLL of each target's name read off its codebook prompt (see objective.TrainingModel)")
PATCH = LossTerm("patch", "patch_weight", PATCHES, "vision patch labels (training-only heads)", False,
                 "cross-entropy of each labelled vision patch's kind/colour mix, read off both tower features")
LOSS_TERMS = (CE, BCE, DICE, OVERLAP, NAMING, PATCH)  # in this order in metrics.csv and in the weighted sum
RELEASE_TERMS = tuple(t for t in LOSS_TERMS if t.release)
TOTAL = "loss"  # the key of the weighted sum
LOG_KEYS = (TOTAL, *(t.key for t in LOSS_TERMS))  # metrics.csv's columns after step, lr, samples_per_s
