"""MUSE (the PixelLM release's multi-target reasoning segmentation data) as a source of Samples.

A MUSE file is a JSON list, one dict per image: `file_name` (a COCO train2014 name) or `coco_url`
(train2017 / val2017), `height`, `width`, `ann_list`, `questions`, `answers` (one list of instance
dicts per question, each with its own `segmentation`, `category_name` and usually
`rephrased_name`) and optionally `text_answers` (one string per question with one "{seg}" per
target; entries may be null). Every (image, question) pair is one sample.

Decoding follows the release (pycocotools `frPyObjects(seg, height, width)`, polygon parts SUMMED,
then > 0), but is stricter where the release was silently wrong: a polygon with an odd number of
coordinates, a "{seg}" count that does not match the targets, a mask of the wrong size or a missing
image raise DataError naming the file and the record / question index. Compressed (string) RLE,
which the release rejects, is accepted.

A record whose `ann_list` is missing or empty is malformed, whatever its `answers` say (both release
loaders skip it: an image without instances). Malformed records stay in the index, are logged with
file and record index when the file is read (`malformed` keeps the reasons) and raise DataError when
read, so a training mixture skips them like any other bad record.

Records without `questions` (the release's instance mode) give one question per category of
`ann_list`: "Segment every {category}." with one mask per instance.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .sample import SEG_PLACEHOLDER, DataError, Sample, confined

log = logging.getLogger(__name__)

# Where COCO images may live under image_root (the release's layout included).
IMAGE_SUBDIRS = ("", "train2014", "train2017", "val2017",
                 "refer_seg/images/mscoco/images/train2014", "refer_seg/images/mscoco/images/train2017",
                 "refer_seg/images/mscoco/images/val2017")
# Answer templates when a question has no text answer (our wording of the release's two forms).
CLAUSE_TEMPLATES = ("{name} is {seg}.", "{name} is at {seg}.", "{name}: {seg}.")
SENTENCE_TEMPLATES = ("Sure, {names} {be} {seg}.", "Sure, the segmentation result of {names} {be} {seg}.",
                      "{Names} {be} {seg}.")
NO_TARGET_ANSWER = "There is no such object in the image."


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


# --------------------------------------------------------------------------- answers

def join_list(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def template_answer(names: list[str], rng: np.random.Generator) -> str:
    """An answer with one "{seg}" per name, in order: one clause per target, or one sentence."""
    if not names:
        return NO_TARGET_ANSWER
    if rng.random() < 0.5:
        t = CLAUSE_TEMPLATES[int(rng.integers(len(CLAUSE_TEMPLATES)))]
        clauses = [t.format(name=n, seg=SEG_PLACEHOLDER)[:-1] for n in names]
        return _upper_first(join_list(clauses)) + "."
    t = SENTENCE_TEMPLATES[int(rng.integers(len(SENTENCE_TEMPLATES)))]
    joined = join_list(names)
    return t.format(names=joined, Names=_upper_first(joined), be="is" if len(names) == 1 else "are",
                    seg=join_list([SEG_PLACEHOLDER] * len(names)))


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


# --------------------------------------------------------------------------- dataset

class MuseDataset:
    """One Sample per (image, question) of a MUSE JSON file; index order is file order."""

    def __init__(self, json_path: str | Path, image_root: str | Path = "", seed: int = 0) -> None:
        self.json_path = Path(json_path)
        self.image_root = Path(image_root) if str(image_root) else self.json_path.parent
        self.seed = seed
        try:
            with open(self.json_path) as f:
                records = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{self.json_path}: cannot read MUSE file: {e}") from e
        if not isinstance(records, list):
            raise DataError(f"{self.json_path}: a MUSE file is a JSON list, got {type(records).__name__}")
        self.records = records
        # (record, question); question -1 marks a record too broken to count (it raises on access).
        self.index: list[tuple[int, int]] = []
        self.malformed: dict[int, str] = {}  # record index -> why
        for r, rec in enumerate(records):
            n = self._count(rec)
            if n is None:
                self.malformed[r] = self._why_broken(rec)
                self.index.append((r, -1))
            else:
                self.index += [(r, q) for q in range(n)]
        if self.malformed:
            shown = "; ".join(f"record {r}: {why}" for r, why in list(self.malformed.items())[:5])
            log.warning("%s: %d of %d records are malformed (they raise DataError when read): %s%s",
                        self.json_path, len(self.malformed), len(records), shown,
                        "; ..." if len(self.malformed) > 5 else "")

    @staticmethod
    def _count(rec: Any) -> int | None:
        if not isinstance(rec, dict):
            return None
        anns = rec.get("ann_list")
        if not isinstance(anns, list) or not anns:
            return None
        qs = rec.get("questions")
        if qs is None:
            try:
                return len({a.get("category_id", a.get("category_name")) for a in anns if isinstance(a, dict)})
            except TypeError:  # an unhashable category
                return None
        if not isinstance(qs, list) or not isinstance(rec.get("answers"), list) or len(rec["answers"]) != len(qs):
            return None
        return len(qs)

    def __len__(self) -> int:
        return len(self.index)

    def _where(self, r: int, q: int) -> str:
        return f"{self.json_path}: record {r}" + (f" question {q}" if q >= 0 else "")

    def __getitem__(self, i: int) -> Sample:
        r, q = self.index[i]
        where = self._where(r, q)
        rec = self.records[r]
        if q < 0:
            raise DataError(f"{where}: malformed record: {self.malformed[r]}")
        height, width = image_size(rec, where)
        if "questions" in rec and rec["questions"] is not None:
            question, instances, text = self._question(rec, q, where)
        else:
            question, instances, text = self._instance_question(rec, q, where)
        masks, names = [], []
        for k, inst in enumerate(instances):
            masks.append(instance_mask(inst, height, width, f"{where} target {k}"))
            name = inst.get("rephrased_name") or inst.get("category_name")
            if text is None and not name:
                raise DataError(f"{where} target {k}: needs 'rephrased_name' or 'category_name' for its answer")
            names.append(readable(str(name or "")))
        if text is None:
            rng = np.random.default_rng([self.seed, i, 0x3D5E])
            # Mostly the rephrased name (as the release: 90 %), sometimes the category name.
            names = [readable(str(inst.get("category_name") or n)) if rng.random() < 0.1 else n
                     for inst, n in zip(instances, names)]
            text = template_answer(names, rng)
        elif not isinstance(text, str):
            raise DataError(f"{where}: text answer must be a string, got {type(text).__name__}")
        count = text.count(SEG_PLACEHOLDER)
        if count != len(masks):
            raise DataError(f"{where}: text answer has {count} {SEG_PLACEHOLDER} but the question has "
                            f"{len(masks)} targets: {text!r}")
        image = find_image(self.image_root, rec, (height, width), where)
        stacked = np.stack(masks) if masks else np.zeros((0, height, width), bool)
        return Sample(image=image, question=question, answer=text, masks=stacked, names=names,
                      source=where).validate()

    def _question(self, rec: dict, q: int, where: str) -> tuple[str, list, str | None]:
        question = rec["questions"][q]
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: question must be a non-empty string, got {question!r}")
        instances = rec["answers"][q]
        if not isinstance(instances, list):
            raise DataError(f"{where}: answers entry must be a list of instances, got {type(instances).__name__}")
        texts = rec.get("text_answers")
        text = None
        if texts is not None:
            if not isinstance(texts, list) or len(texts) != len(rec["questions"]):
                raise DataError(f"{where}: 'text_answers' must be a list with one entry per question")
            text = texts[q]
        return question.strip(), instances, text

    @staticmethod
    def _instance_question(rec: dict, q: int, where: str) -> tuple[str, list, None]:
        anns = [a for a in rec["ann_list"] if isinstance(a, dict)]
        cats = list(dict.fromkeys(a.get("category_id", a.get("category_name")) for a in anns))
        cat = cats[q]
        instances = [a for a in anns if a.get("category_id", a.get("category_name")) == cat]
        name = instances[0].get("category_name")
        if not name:
            raise DataError(f"{where}: ann_list instances need 'category_name'")
        # Answers name the category (not each instance's rephrased name).
        return (f"Segment every {readable(str(name))}.",
                [{**a, "rephrased_name": f"the {readable(str(name))}"} for a in instances], None)

    @staticmethod
    def _why_broken(rec: Any) -> str:
        if not isinstance(rec, dict):
            return f"expected a dict, got {type(rec).__name__}"
        anns = rec.get("ann_list")
        if not isinstance(anns, list) or not anns:
            return "'ann_list' is missing or empty (an image without instances; the release skips it too)"
        if rec.get("questions") is None:
            return "no 'questions', and the categories of 'ann_list' are unusable"
        if not isinstance(rec["questions"], list):
            return "'questions' is not a list"
        if not isinstance(rec.get("answers"), list):
            return "'answers' is missing or not a list"
        return f"{len(rec['questions'])} questions but {len(rec['answers'])} answer lists"
