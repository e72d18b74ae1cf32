"""COCO instance files as Samples (`CocoDataset(annotation_json, image_root)`): one sample per (image,
category): "Segment every {category}." with one mask per instance. Pairs with a crowd annotation are left
out (a crowd region is many instances in one mask).

Bad records raise DataError naming the file and the index.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from .common import find_image, image_size, instance_mask, instances_answer, readable
from .sample import DataError, Sample

log = logging.getLogger(__name__)


class CocoDataset:
    """One Sample per (image, category) of a COCO instances file: "Segment every {category}."."""

    def __init__(self, annotation_json: str | Path, image_root: str | Path = "") -> None:
        self.path = Path(annotation_json)
        self.image_root = Path(image_root) if str(image_root) else self.path.parent
        try:
            data = json.loads(self.path.read_text())
            images = {int(im["id"]): im for im in data["images"]}
            self.categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{self.path}: not a COCO instances file: {e!r}") from e
        groups: dict[tuple[int, int], list[tuple[int, dict]]] = defaultdict(list)
        crowded = set()
        self.broken: list[str] = []
        for k, a in enumerate(anns):
            try:
                key = (int(a["image_id"]), int(a["category_id"]))
            except (KeyError, TypeError, ValueError):
                self.broken.append(f"annotation {k}: needs image_id and category_id")
                continue
            if a.get("iscrowd"):
                crowded.add(key)
            groups[key].append((k, a))
        self.images, self.groups = images, dict(groups)
        self.pairs = [key for key in sorted(groups) if key not in crowded]
        if crowded:
            log.info("%s: left out %d (image, category) pairs with crowd annotations", self.path, len(crowded))

    def __len__(self) -> int:
        return len(self.pairs) + len(self.broken)

    def __getitem__(self, i: int) -> Sample:
        if i >= len(self.pairs):
            raise DataError(f"{self.path}: {self.broken[i - len(self.pairs)]}")
        image_id, cat = self.pairs[i]
        where = f"{self.path}: sample {i} (image {image_id}, category {cat})"
        info = self.images.get(image_id)
        if info is None:
            raise DataError(f"{where}: no such image in 'images'")
        if cat not in self.categories:
            raise DataError(f"{where}: no such category in 'categories'")
        h, w = image_size(info, where)
        masks = [instance_mask(a, h, w, f"{where}: annotation {k}") for k, a in self.groups[(image_id, cat)]]
        image = find_image(self.image_root, info, (h, w), where)
        name = readable(self.categories[cat])
        return Sample(image=image, question=f"Segment every {name}.", answer=instances_answer(name, len(masks)),
                      masks=np.stack(masks), names=[name] * len(masks),
                      source=where).validate()
