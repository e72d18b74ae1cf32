"""Image and prompt processing exactly as the release's chat.py does it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .tokenizer import IM_END, IM_START, IMAGE_PLACEHOLDER

# The release normalises 0..255 RGB with SAM's mean/std, not CLIP's.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")


@dataclass
class ProcessedImage:
    pixels: torch.Tensor  # (1, 3, S, S) float32, normalised, zero-padded bottom/right
    input_size: tuple[int, int]  # (h, w) after resizing, before padding
    original_size: tuple[int, int]  # (H, W) of the input


def resized_shape(height: int, width: int, longest: int) -> tuple[int, int]:
    scale = longest / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def preprocess_image(rgb: np.ndarray, size: int = 448) -> ProcessedImage:
    """rgb: (H, W, 3) uint8 RGB. Longest side -> `size` (PIL bilinear, antialiased), normalise, pad."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    if min(rgb.shape[:2]) < 1:
        raise ValueError(f"empty image of shape {rgb.shape}")
    h, w = resized_shape(*rgb.shape[:2], size)
    if h < 1 or w < 1:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is too thin: it resizes to {w}x{h} at {size} px")
    resized = np.array(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    x = torch.from_numpy(resized).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(PIXEL_STD).view(3, 1, 1)
    pixels = torch.zeros((1, 3, size, size))
    pixels[0, :, :h, :w] = x
    return ProcessedImage(pixels, (h, w), tuple(rgb.shape[:2]))


def build_prompt(question: str, use_im_start_end: bool = True) -> str:
    """LLaVA v1 conversation with the image at the start of the user turn."""
    image = IM_START + IMAGE_PLACEHOLDER + IM_END if use_im_start_end else IMAGE_PLACEHOLDER
    return f"{SYSTEM_PROMPT} USER: {image}\n{question} ASSISTANT:"
