"""Your own images as Samples: labelme files (drawn by hand). COCO instance files: coco.py.

labelme (`LabelmeDataset(folder)`): every `*.json` of the folder is one labelme file (`imagePath`
relative to it, or `imageData` base64; `imageHeight`, `imageWidth`; `shapes` with `label`,
`points`, `shape_type` polygon / rectangle / circle, optional `group_id`). Shapes with the same
label and the same (non-null) `group_id` are one instance; every other shape is an instance of its
own. Questions come from the file's project key

    "questions": [{"question": "Which can hold water?", "answer": "The cup {seg} and the bowl {seg}.",
                   "targets": ["cup", 2]}]

(a target is a label — every instance with that label, in shape order — or a shape index; the
answer needs one "{seg}" per resulting instance). Entries whose question is still empty (the stubs
`training.capture` writes) are ignored; a file with no filled question gets one question per
label, "Segment every {label}.", with one "{seg}" per instance. Files whose `shapes` are still
empty and that have no filled question are skipped (and counted in the log). labelme keeps
unknown top-level keys when it saves, so "questions" survives editing in labelme.

Bad records raise DataError naming the file and the index.
"""
from __future__ import annotations

import base64
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw

from .common import instances_answer, read_rgb, readable
from .sample import SEG_PLACEHOLDER, DataError, Sample, confined

log = logging.getLogger(__name__)

REGION_TYPES = ("polygon", "rectangle", "circle")


def shape_mask(shape: dict, height: int, width: int) -> np.ndarray:
    """A labelme shape's region, (height, width) bool, drawn as labelme itself does (PIL, outline included)."""
    kind = shape.get("shape_type") or "polygon"
    pts = shape.get("points")
    if kind not in REGION_TYPES:
        raise ValueError(f"shape_type {kind!r} is not a region (use {', '.join(REGION_TYPES)})")
    if not isinstance(pts, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, (int, float)) for v in p) for p in pts):
        raise ValueError("points must be a list of [x, y]")
    xy = [(float(x), float(y)) for x, y in pts]
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if kind == "polygon":
        if len(xy) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(xy)}")
        draw.polygon(xy, outline=1, fill=1)
    elif kind == "rectangle":
        if len(xy) != 2:
            raise ValueError(f"a rectangle needs 2 points, got {len(xy)}")
        (x0, y0), (x1, y1) = xy
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    else:
        if len(xy) != 2:
            raise ValueError(f"a circle needs 2 points (center, rim), got {len(xy)}")
        (cx, cy), (px, py) = xy
        d = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    return np.asarray(canvas, bool)


def decode_image_data(data: str) -> np.ndarray | None:
    try:
        buf = np.frombuffer(base64.b64decode(data), np.uint8)
    except (ValueError, TypeError):
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def is_filled(shapes: Any, questions: Any) -> bool:
    """False for a template nobody has annotated yet (no shapes and no written question)."""
    if isinstance(shapes, list) and shapes:
        return True
    return bool(filled_questions(questions))


def filled_questions(questions: Any) -> list[tuple[int, Any]]:
    """(index in the file's list, entry) of the questions someone wrote (stubs left out)."""
    if not isinstance(questions, list):
        return []
    return [(k, q) for k, q in enumerate(questions)
            if not (isinstance(q, dict) and not str(q.get("question") or "").strip())]


@dataclass
class _Item:
    path: Path
    question: int  # index in the file's "questions", or -1 - k for derived question k, or None (broken file)
    error: str = ""


class LabelmeDataset:
    """Samples from a folder of labelme files (or one file); index order is file name, then question."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if self.folder.is_file():
            files = [self.folder]
        elif self.folder.is_dir():
            files = sorted(self.folder.glob("*.json"))
        else:
            raise DataError(f"{self.folder}: no such labelme folder or file")
        self.items: list[_Item] = []
        skipped = 0
        for path in files:
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            except (OSError, ValueError) as e:
                self.items.append(_Item(path, None, f"not a labelme file: {e}"))
                continue
            shapes, questions = data.get("shapes"), data.get("questions")
            if not is_filled(shapes, questions):
                skipped += 1
                continue
            written = filled_questions(questions)
            if written:
                self.items += [_Item(path, k) for k, _ in written]
            elif not isinstance(shapes, list):
                self.items.append(_Item(path, None, "'shapes' must be a list"))
            else:
                labels = {str(s.get("label", "")).strip() if isinstance(s, dict) else "" for s in shapes}
                self.items += [_Item(path, -1 - k) for k in range(len(labels))]
        if skipped:
            log.info("%s: skipped %d of %d labelme files with no shapes yet", self.folder, skipped, len(files))
        self.skipped = skipped

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        item = self.items[i]
        where = f"{item.path}" + (f" question {item.question}" if item.question is not None and item.question >= 0
                                  else f" label {-1 - item.question}" if item.question is not None else "")
        if item.question is None:
            raise DataError(f"{where}: {item.error}")
        try:
            data = json.loads(item.path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{where}: cannot read: {e}") from e
        image = self._image(data, item.path, where)
        h, w = image.shape[:2]
        shapes = data.get("shapes") or []
        if not isinstance(shapes, list):
            raise DataError(f"{where}: 'shapes' must be a list")
        labels, groups = self._instances(shapes, where)
        if item.question >= 0:
            entry = data["questions"][item.question]
            question, answer, members = self._written(entry, labels, groups, shapes, where)
        else:
            label = list(dict.fromkeys(labels[g[0]] for g in groups))[-1 - item.question]
            members = [g for g in groups if labels[g[0]] == label]
            question = f"Segment every {readable(label)}."
            answer = instances_answer(readable(label), len(members))
        masks = []
        for g in members:
            m = np.zeros((h, w), bool)
            for s in g:
                try:
                    m |= shape_mask(shapes[s], h, w)
                except ValueError as e:
                    raise DataError(f"{where}: shape {s} ({labels[s]!r}): {e}") from e
            masks.append(m)
        count = answer.count(SEG_PLACEHOLDER)
        if count != len(masks):
            raise DataError(f"{where}: answer has {count} {SEG_PLACEHOLDER} but the targets are "
                            f"{len(masks)} instances: {answer!r}")
        stacked = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return Sample(image=image, question=question, answer=answer, masks=stacked,
                      names=[readable(labels[g[0]]) for g in members],
                      source=where).validate()

    @staticmethod
    def _instances(shapes: list, where: str) -> tuple[list[str], list[list[int]]]:
        """Each shape's label, and the instances as lists of shape indices (in first-shape order)."""
        labels, groups, by_key = [], [], {}
        for s, shape in enumerate(shapes):
            if not isinstance(shape, dict) or not str(shape.get("label", "")).strip():
                raise DataError(f"{where}: shape {s} needs a 'label'")
            label = str(shape["label"]).strip()
            labels.append(label)
            gid = shape.get("group_id")
            if gid is None:
                groups.append([s])
            elif (label, gid) in by_key:
                by_key[(label, gid)].append(s)
            else:
                by_key[(label, gid)] = [s]
                groups.append(by_key[(label, gid)])
        return labels, groups

    @staticmethod
    def _written(entry: Any, labels: list[str], groups: list[list[int]], shapes: list, where: str
                 ) -> tuple[str, str, list[list[int]]]:
        if not isinstance(entry, dict):
            raise DataError(f"{where}: a question entry must be an object with question, answer, targets")
        question, answer, targets = entry.get("question"), entry.get("answer"), entry.get("targets", [])
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: empty question")
        if not isinstance(answer, str) or not answer.strip():
            raise DataError(f"{where}: the question has no answer text (one {SEG_PLACEHOLDER} per target)")
        if not isinstance(targets, list):
            raise DataError(f"{where}: 'targets' must be a list of shape labels or indices")
        group_of = {s: g for g in groups for s in g}
        members: list[list[int]] = []
        for t in targets:
            if isinstance(t, bool) or not isinstance(t, (int, str)):
                raise DataError(f"{where}: target {t!r} is neither a shape label nor a shape index")
            if isinstance(t, int):
                if not 0 <= t < len(shapes):
                    raise DataError(f"{where}: target shape index {t} out of range (0..{len(shapes) - 1})")
                found = [group_of[t]]
            else:
                found = [g for g in groups if labels[g[0]] == t.strip()]
                if not found:
                    raise DataError(f"{where}: target label {t!r} matches no shape (labels: {sorted(set(labels))})")
            for g in found:
                if any(g is m for m in members):
                    raise DataError(f"{where}: target {t!r} repeats an instance already targeted")
                members.append(g)
        return question.strip(), answer.strip(), members

    @staticmethod
    def _image(data: dict, path: Path, where: str) -> np.ndarray:
        image = None
        rel = data.get("imagePath")
        if rel:
            p = confined(path.parent, path.parent / str(rel).replace("\\", "/"), where)
            if p.is_file():
                image = read_rgb(p)
                if image is None:
                    raise DataError(f"{where}: cannot decode image {p}")
        if image is None and data.get("imageData"):
            image = decode_image_data(data["imageData"])
            if image is None:
                raise DataError(f"{where}: cannot decode imageData")
        if image is None:
            raise DataError(f"{where}: image {rel!r} not found next to the file and no imageData")
        h, w = data.get("imageHeight"), data.get("imageWidth")
        if h is not None and w is not None and (int(h), int(w)) != image.shape[:2]:
            raise DataError(f"{where}: image is {image.shape[0]}x{image.shape[1]}, file says {h}x{w}")
        return image
