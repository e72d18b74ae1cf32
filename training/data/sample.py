"""The one record type every data source produces, and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SEG_PLACEHOLDER = "{seg}"


class DataError(ValueError):
    """A bad record; the message names its source (file and index)."""


def confined(root: Path, path: Path, where: str) -> Path:
    """`path` with symlinks resolved, if it lies inside `root`; a record must not read files elsewhere
    (`..`, absolute paths or links out of the data folder)."""
    real, base = path.resolve(), root.resolve()
    if real != base and base not in real.parents:
        raise DataError(f"{where}: {path} is outside the data folder {base}")
    return real


@dataclass
class Sample:
    """One question on one image.

    image: (H, W, 3) uint8 RGB; answer: text with one "{seg}" per target, in the order of `masks`;
    masks: (N, H, W) bool; names: what the answer calls each target (for reports); class_map: (H, W) class id
    of every pixel (patch_labels.class_map) where the source knows every object in the image, else None.
    """

    image: np.ndarray
    question: str
    answer: str
    masks: np.ndarray
    names: list[str] = field(default_factory=list)
    source: str = ""
    class_map: np.ndarray | None = None

    def validate(self) -> "Sample":
        where = self.source or "sample"
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise DataError(f"{where}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.masks.ndim != 3 or self.masks.shape[1:] != self.image.shape[:2]:
            raise DataError(f"{where}: masks {self.masks.shape} do not match image {self.image.shape[:2]}")
        if self.class_map is not None and self.class_map.shape != self.image.shape[:2]:
            raise DataError(f"{where}: class map {self.class_map.shape} does not match image {self.image.shape[:2]}")
        count = self.answer.count(SEG_PLACEHOLDER)
        if count != len(self.masks):
            raise DataError(f"{where}: answer has {count} {SEG_PLACEHOLDER} but there are {len(self.masks)} masks")
        if not self.question.strip():
            raise DataError(f"{where}: empty question")
        return self
