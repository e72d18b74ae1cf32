"""MUSE (the PixelLM release's multi-target reasoning segmentation data) as a source of Samples.

A MUSE file is a JSON list, one dict per image: `file_name` (a COCO train2014 name) or `coco_url`
(train2017 / val2017), `height`, `width`, `ann_list`, `questions`, `answers` (one list of instance
dicts per question, each with its own `segmentation`, `category_name` and usually
`rephrased_name`) and optionally `text_answers` (one string per question with one "{seg}" per
target; entries may be null). Every (image, question) pair is one sample.

Segmentations are decoded as the release does, but stricter (see common.py): a bad polygon or RLE, a "{seg}"
count that does not match the targets, a mask of the wrong size or a missing image raise DataError naming
the file and the record / question index.

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
from pathlib import Path
from typing import Any

import numpy as np

from .common import find_image, image_size, instance_mask, join_list, readable, upper_first
from .sample import SEG_PLACEHOLDER, DataError, Sample

log = logging.getLogger(__name__)

# Answer templates when a question has no text answer (our wording of the release's two forms).
CLAUSE_TEMPLATES = ("{name} is {seg}.", "{name} is at {seg}.", "{name}: {seg}.")
SENTENCE_TEMPLATES = ("Sure, {names} {be} {seg}.", "Sure, the segmentation result of {names} {be} {seg}.",
                      "{Names} {be} {seg}.")
NO_TARGET_ANSWER = "There is no such object in the image."


# --------------------------------------------------------------------------- answers

def template_answer(names: list[str], rng: np.random.Generator) -> str:
    """An answer with one "{seg}" per name, in order: one clause per target, or one sentence."""
    if not names:
        return NO_TARGET_ANSWER
    if rng.random() < 0.5:
        t = CLAUSE_TEMPLATES[int(rng.integers(len(CLAUSE_TEMPLATES)))]
        clauses = [t.format(name=n, seg=SEG_PLACEHOLDER)[:-1] for n in names]
        return upper_first(join_list(clauses)) + "."
    t = SENTENCE_TEMPLATES[int(rng.integers(len(SENTENCE_TEMPLATES)))]
    joined = join_list(names)
    return t.format(names=joined, Names=upper_first(joined), be="is" if len(names) == 1 else "are",
                    seg=join_list([SEG_PLACEHOLDER] * len(names)))


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
