"""Draw answers on images: colored masks, box and phrase per target, the answer text on top.

Pure numpy/OpenCV so the CLI, the demo and the node draw the same picture.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import cv2
import numpy as np

# Distinct colors (RGB) for targets 0, 1, 2, ...
PALETTE = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)], np.uint8)


def color(k: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in PALETTE[k % len(PALETTE)])


def draw_overlay(rgb: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[str], answer: str,
                 alpha: float = 0.5) -> np.ndarray:
    """rgb: (H, W, 3) uint8; masks: boolean (H, W) per target. Returns a new RGB image with a text
    band above the picture holding the wrapped answer."""
    out = rgb.copy()
    for k, mask in enumerate(masks):
        if not mask.any():
            continue
        c = np.array(color(k), np.float32)
        out[mask] = (out[mask] * (1 - alpha) + c * alpha).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color(k), 2)
        ys, xs = np.nonzero(mask)
        org = (int(xs.min()), max(int(ys.min()) - 4, 12))
        _label(out, f"{k + 1}: {labels[k] if k < len(labels) else ''}", org, color(k))
    return np.vstack([_text_band(answer, out.shape[1]), out])


def _label(img: np.ndarray, text: str, org: tuple[int, int], col: tuple[int, int, int]) -> None:
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (w, h), base = cv2.getTextSize(text, font, scale, 1)
    x, y = org
    cv2.rectangle(img, (x, y - h - base), (x + w, y + base), col, -1)
    cv2.putText(img, text, (x, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)


def _text_band(text: str, width: int) -> np.ndarray:
    chars = max(int(width / 8.5), 10)
    lines = textwrap.wrap(text.encode("ascii", "replace").decode(), chars) or [""]
    band = np.full((18 * len(lines) + 8, width, 3), 32, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(band, line, (4, 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return band
