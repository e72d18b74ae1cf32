"""Helpers every file-based source shares (MUSE, labelme, COCO): COCO / LVIS segmentation decoding, the
answer for "Segment every {category}." questions, readable names, and finding / reading a record's image.

Decoding follows the release (pycocotools `frPyObjects(seg, height, width)`, polygon parts SUMMED,
then > 0), but is stricter where the release was silently wrong: a polygon with an odd number of
coordinates or a mask of the wrong size raise (DataError naming the file and the record through
`instance_mask`). Compressed (string) RLE, which the release rejects, is accepted.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .sample import SEG_PLACEHOLDER, DataError, confined

# Where COCO images may live under image_root (the release's layout included).
IMAGE_SUBDIRS = ("", "train2014", "train2017", "val2017",
                 "refer_seg/images/mscoco/images/train2014", "refer_seg/images/mscoco/images/train2017",
                 "refer_seg/images/mscoco/images/val2017")


# --------------------------------------------------------------------------- segmentation decoding

def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """One instance's mask, (height, width) bool, from a COCO / LVIS segmentation.

    Accepts a polygon list ([[x0, y0, x1, y1, ...], ...], parts summed), an uncompressed RLE
    ({"size": [h, w], "counts": [ints]}), a compressed RLE ({"size": [h, w], "counts": "string"}),
    or a list of RLEs. Raises ValueError (callers wrap it in DataError with the record's name).
    """
    if isinstance(seg, dict):
        rles = [_rle(seg, height, width)]
    elif isinstance(seg, list) and seg and all(isinstance(p, dict) for p in seg):
        rles = [_rle(p, height, width) for p in seg]
    elif isinstance(seg, list) and seg and all(isinstance(p, (list, tuple)) for p in seg):
        parts = []
        for k, part in enumerate(seg):
            if not all(_is_number(v) for v in part):
                raise ValueError(f"polygon part {k} has non-numeric coordinates")
            if len(part) % 2:
                raise ValueError(f"polygon part {k} has an odd number of coordinates ({len(part)})")
            if len(part) >= 6:  # fewer than 3 points has no area (and 4 numbers would read as a box)
                parts.append([float(v) for v in part])
        if not parts:
            return np.zeros((height, width), bool)
        rles = mask_utils.frPyObjects(parts, height, width)
    elif isinstance(seg, list) and seg and all(_is_number(v) for v in seg):
        raise ValueError("polygon must be a list of parts ([[x0, y0, ...]]), got a flat list of numbers")
    else:
        raise ValueError(f"unsupported segmentation {type(seg).__name__} "
                         f"{'(empty)' if not seg else ''}".strip())
    m = mask_utils.decode(rles)
    if m.ndim == 3:
        m = m.sum(axis=2)  # the release sums parts
    if m.shape != (height, width):
        raise ValueError(f"mask is {m.shape[0]}x{m.shape[1]}, image is {height}x{width}")
    return m > 0


def _rle(seg: dict, height: int, width: int) -> dict:
    if "counts" not in seg or "size" not in seg:
        raise ValueError(f"RLE needs 'counts' and 'size', got keys {sorted(seg)}")
    size = seg["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_number(v) for v in size)):
        raise ValueError(f"RLE size must be [h, w], got {size!r}")
    h, w = int(size[0]), int(size[1])
    if (h, w) != (height, width):
        raise ValueError(f"RLE size is {h}x{w}, image is {height}x{width}")
    counts = seg["counts"]
    if isinstance(counts, (str, bytes)):  # compressed
        raw = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
        runs = compressed_counts(raw)  # checked here: pycocotools' decoder does not bound its writes
        if any(v < 0 for v in runs) or sum(runs) != h * w:
            raise ValueError(f"compressed RLE runs sum to {sum(runs)} (or are negative), expected {h}x{w} = {h * w}")
        return {"size": [h, w], "counts": raw}
    if not (isinstance(counts, list) and all(_is_number(v) and v >= 0 for v in counts)):
        raise ValueError("uncompressed RLE counts must be a list of non-negative integers")
    if sum(int(v) for v in counts) != h * w:
        raise ValueError(f"RLE counts sum to {sum(int(v) for v in counts)}, expected {h}x{w} = {h * w}")
    return mask_utils.frPyObjects(seg, h, w)  # its own size, as the release decodes it


def compressed_counts(s: bytes) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' rleFrString, in Python)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("compressed RLE string ends inside a number")
            c = s[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE has an invalid character {chr(s[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def instance_mask(inst: Any, height: int, width: int, where: str) -> np.ndarray:
    """An instance dict's decoded `segmentation`, or DataError naming `where`."""
    if not isinstance(inst, dict):
        raise DataError(f"{where}: expected an instance dict, got {type(inst).__name__}")
    if "segmentation" not in inst:
        raise DataError(f"{where}: no 'segmentation'")
    try:
        return decode_segmentation(inst["segmentation"], height, width)
    except ValueError as e:
        raise DataError(f"{where}: {e}") from e


def image_size(rec: dict, where: str) -> tuple[int, int]:
    try:
        return int(rec["height"]), int(rec["width"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: needs integer 'height' and 'width' ({e!r})") from e


# --------------------------------------------------------------------------- answers and names

def join_list(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def instances_answer(label: str, n: int) -> str:
    """"The cup is {seg}." / "The cup {seg}, the cup {seg} and the cup {seg}." / a no-target answer."""
    if n == 0:
        return f"There is no {label} in the image."
    if n == 1:
        return f"The {label} is {SEG_PLACEHOLDER}."
    return upper_first(join_list([f"the {label} {SEG_PLACEHOLDER}"] * n)) + "."


def readable(name: str) -> str:
    return name.replace("_", " ").strip()


# --------------------------------------------------------------------------- images

def read_rgb(path: Path | str) -> np.ndarray | None:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_candidates(image_root: Path, file_name: str | None, coco_url: str | None) -> list[Path]:
    names = []
    if file_name:
        names += [file_name, os.path.basename(file_name)]
    if coco_url:
        names.append(coco_url.rstrip("/").split("/")[-1])
    out: list[Path] = []
    for name in dict.fromkeys(names):
        for sub in IMAGE_SUBDIRS:
            p = image_root / sub / name if sub else image_root / name
            if p not in out:
                out.append(p)
    return out


def find_image(image_root: Path, rec: dict, size: tuple[int, int], where: str) -> np.ndarray:
    """The RGB image a COCO-style record (`file_name` / `coco_url`) names, checked against `size`."""
    file_name, url = rec.get("file_name"), rec.get("coco_url")
    if not file_name and not url:
        raise DataError(f"{where}: needs 'file_name' or 'coco_url'")
    tried = [confined(image_root, p, where) for p in image_candidates(image_root, file_name, url)]
    path = next((p for p in tried if p.is_file()), None)
    if path is None:
        raise DataError(f"{where}: image {file_name or url!r} not found under {image_root} "
                        f"(tried {', '.join(str(p) for p in tried[:4])}, ...)")
    img = read_rgb(path)
    if img is None:
        raise DataError(f"{where}: cannot decode image {path}")
    if img.shape[:2] != size:
        raise DataError(f"{where}: image is {img.shape[0]}x{img.shape[1]}, record says {size[0]}x{size[1]}")
    return img
