"""Dense labels the synthetic domain gives for free: which (kind, colour) lies under every vision patch.

Used twice: `training.pretrain_vision` trains a from-scratch tower on them alone, and `loss.patch_weight`
keeps them as an auxiliary term while PixelLM trains with its tower unfrozen (the PixelLM losses never ask the
tower to tell a cup from a ball; see objective.py).
"""
from __future__ import annotations

from typing import Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from pixellm_ros.scenes import COLORS, KINDS

NUM_CLASSES = 1 + len(KINDS) * len(COLORS)  # 0 = background (table, photograph, distractor shapes)


def class_map(objects: Iterable, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) class id of every pixel: 1 + kind * len(COLORS) + colour for each object's mask, 0 elsewhere."""
    labels = np.zeros(shape, np.int64)
    for o in objects:
        labels[o.mask] = 1 + KINDS.index(o.kind) * len(COLORS) + list(COLORS).index(o.color)
    return labels


def patch_targets(labels: np.ndarray, input_size: tuple[int, int], side: int, grid: int) -> torch.Tensor:
    """(H, W) class ids -> (grid*grid, NUM_CLASSES) class fractions per patch of the padded model input;
    padding patches get all-zero rows (ignored)."""
    h, w = input_size
    resized = cv2.resize(labels.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    onehot = np.zeros((NUM_CLASSES, side, side), np.float32)
    onehot[resized, np.arange(h)[:, None], np.arange(w)[None]] = 1.0
    frac = F.adaptive_avg_pool2d(torch.from_numpy(onehot)[None], grid)[0]  # (C, g, g)
    return frac.flatten(1).T


def labelled_patches(target: torch.Tensor) -> torch.Tensor:
    """(..., P, C) fractions -> (..., P) bool: patches inside the image (padding rows are all zero)."""
    return target.sum(-1) > 0.5


def balanced_weights(target: torch.Tensor) -> torch.Tensor:
    """(P, C) fractions of one image's labelled patches -> (P,) weights summing to P, half on the patches mostly
    covered by objects and half on the rest. Why: a demo-camera cup is 7 of an image's 192 patches, so a plain
    mean is nearly all "this is table" and barely asks what kind the cup is."""
    on_object = target[:, 0] < 0.5
    n, n_obj = target.shape[0], int(on_object.sum())
    if n_obj in (0, n):
        return torch.ones(n, device=target.device)
    return torch.where(on_object, n / (2 * n_obj), n / (2 * (n - n_obj)))


def patch_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(P, C) logits and fractions -> (P,) soft cross-entropy of each patch's class mix."""
    return -(target * F.log_softmax(logits.float(), -1)).sum(-1)
