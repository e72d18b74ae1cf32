"""Evaluate a model (or saved predictions) on held-out questions: gIoU, cIoU (MUSE-style), target count.

    python -m training.evaluate --model DIR [--samples 200 --seed 9999 --style default] [--out DIR]
    python -m training.evaluate --muse FILE [--image-root DIR] --model DIR [--samples N] [--out DIR]
    python -m training.evaluate --muse FILE [--image-root DIR] --predictions DIR [--out DIR]
    python -m training.evaluate --model DIR --demo [--demo-scenes 20] [--out DIR]   (see evaluate_demo)

The first form asks the synthetic held-out split (one question per scene). `--muse` asks every question
of a MUSE-format file on its image (the image is encoded once, then each question asked on it);
`--samples N` takes whole images in file order until N questions are reached. Malformed records and
questions are reported (log and report.json "skipped") and left out.

`--predictions DIR` scores saved masks instead of a model, so another system's outputs are scored with
the same metric: one file per predicted target, named `r{R}_q{Q}_t{T}.npy` or `r{R}_q{Q}_t{T}.png`, where
R is the record's index in the MUSE JSON list, Q the question's index in that record's `questions` (for
a record without `questions`, the index of the category in `ann_list` order), and T the target's index
in the answer (0, 1, ... without gaps); all 0-based, zero padding allowed
(`r0012_q0_t1.png`). A question without files predicted no target. A mask is the image's size
(`height` x `width` of the record): `.npy` a 2-D array, true where > 0 (bool, 0/1, or logits as the
release thresholds them; not probabilities); `.png` a single-channel image, true where non-zero.

Metrics as the release's MUSE validation (`ar_validate` in train_ds.py) computes them. Per question,
predictions are matched to targets by the Hungarian algorithm on IoU (never across questions); an
unmatched target or prediction pairs with an empty mask. A pair's IoU is I / U, and 1 when both of its
masks are empty (U = 0), as the release counts it. gIoU = sum of all pair IoUs / sum over IMAGES of
max(predictions, targets), both counted over all questions of the image (the release validates one
image per step); a question without an image key (the synthetic split) is its own image. cIoU = total
intersection / total union over all pairs. A question with no target and no prediction counts as a
right target count and adds nothing to either. The report also gives these by number of targets per
question (0 when there are such questions, 1, 2, 3, 4+), each over its own questions grouped the same way.
Writes report.json and examples.png (predicted vs true masks).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from pixellm_ros.engine import Engine, EngineConfig
from pixellm_ros.model import SamplingConfig
from pixellm_ros.overlay import draw_overlay
from pixellm_ros.scenes import DEMO_QUESTIONS, DEMO_SEED, SceneObject, render_scene

from .data.sample import DataError, Sample
from .data.synthetic import (AFFORDANCES, PHRASINGS, QUESTION_KINDS, SyntheticConfig, matching_objects,
                             synthetic_sample)

log = logging.getLogger(__name__)
SYNTHETIC_MAX_NEW_TOKENS = 96  # the tabletop answers are short
MUSE_MAX_NEW_TOKENS = 512  # the release's validation
PREDICTION_FILE = re.compile(r"^r(\d+)_q(\d+)_t(\d+)\.(npy|png)$")


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pred (P, H, W), gt (G, H, W) bool -> intersection, union, IoU, each (P, G); IoU 1 where U = 0."""
    p = pred.reshape(len(pred), int(np.prod(pred.shape[1:]))).astype(np.float64)
    g = gt.reshape(len(gt), int(np.prod(gt.shape[1:]))).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None] - inter
    return inter, union, np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def score_question(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """pred (P, H, W), gt (G, H, W) bool -> (sum of pair IoUs, intersection, union) after Hungarian matching."""
    inter, union, iou = iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-iou)
    unmatched = [pred[i] for i in sorted(set(range(len(pred))) - set(rows))]
    unmatched += [gt[j] for j in sorted(set(range(len(gt))) - set(cols))]
    areas = [float(m.sum()) for m in unmatched]  # paired with an empty mask: I = 0, U = area
    pairs_iou = float(iou[rows, cols].sum()) + sum(a == 0 for a in areas)
    return pairs_iou, float(inter[rows, cols].sum()), float(union[rows, cols].sum()) + sum(areas)


def target_bucket(n: int) -> str:
    return "4+" if n >= 4 else str(n)


@dataclass
class Metrics:
    """Questions added one by one, grouped by image for gIoU's denominator (see the module docstring)."""

    per_question: list[dict] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray, info: dict | None = None, image: Hashable | None = None) -> float:
        """Add one question, (P, H, W) and (G, H, W) bool, asked on `image` (a key; None: its own image).
        Returns its mean pair IoU (1.0 when both are empty)."""
        pairs_iou, inter, union = score_question(pred, gt)
        n = max(len(pred), len(gt))
        q_iou = pairs_iou / n if n else 1.0
        self.per_question.append({**(info or {}), "image": image, "pred": len(pred), "gt": len(gt), "iou": q_iou,
                                  "pair_iou_sum": pairs_iou, "intersection": inter, "union": union})
        return q_iou

    def summary(self, questions: Sequence[dict] | None = None) -> dict:
        """gIoU, cIoU and target-count accuracy over `questions` (entries of per_question; default all)."""
        qs = self.per_question if questions is None else questions
        counts: dict = {}  # image -> [predictions, targets] over its questions
        for k, q in enumerate(qs):
            c = counts.setdefault(("question", k) if q["image"] is None else ("image", q["image"]), [0, 0])
            c[0] += q["pred"]
            c[1] += q["gt"]
        denominator = sum(max(p, g) for p, g in counts.values())
        union = sum(q["union"] for q in qs)
        return {"questions": len(qs), "images": len(counts),
                "gIoU": sum(q["pair_iou_sum"] for q in qs) / denominator if denominator else float("nan"),
                "cIoU": sum(q["intersection"] for q in qs) / union if union else float("nan"),
                "target_count_accuracy": sum(q["pred"] == q["gt"] for q in qs) / len(qs) if qs else float("nan")}

    def by_targets(self) -> dict:
        """summary() of the questions with 0 (if any), 1, 2, 3 and 4+ true targets."""
        buckets: dict[str, list[dict]] = {"0": [], "1": [], "2": [], "3": [], "4+": []}
        for q in self.per_question:
            buckets[target_bucket(q["gt"])].append(q)
        return {k: self.summary(v) for k, v in buckets.items() if v or k != "0"}


@dataclass
class Prediction:
    """What a model (or a saved-predictions folder) said about one question."""

    masks: np.ndarray  # (P, H, W) bool
    names: list[str] = field(default_factory=list)
    answer: str = ""


def write_report(metrics: Metrics, shown: list[tuple[Sample, Prediction]], out: Path | None, **extra) -> dict:
    """The summary (+ by number of targets); with `out`, report.json and examples.png there."""
    report = {**metrics.summary(), "by_targets": metrics.by_targets(), **extra}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({**report, "per_question": metrics.per_question}, indent=2))
        write_examples(shown, out / "examples.png")
    return report


def engine_prediction(engine: Engine, question: str) -> Prediction:
    r = engine.ask(question)
    masks = np.stack([t.mask for t in r.targets]) if r.targets else np.zeros((0, *r.image_size), bool)
    return Prediction(masks, [t.phrase for t in r.targets], r.answer)


def evaluate_engine(engine: Engine, samples: list[Sample], out: Path | None = None, examples: int = 8) -> dict:
    """One question per sample, each on its own image."""
    metrics = Metrics()
    shown = []
    for s in tqdm(samples, desc="eval", leave=False):
        engine.set_image(s.image)
        p = engine_prediction(engine, s.question)
        metrics.add(p.masks, s.masks, {"source": s.source, "question": s.question, "answer": p.answer})
        if len(shown) < examples:
            shown.append((s, p))
    return write_report(metrics, shown, out)


# ------------------------------------------------------------------------------------------------ MUSE

def muse_questions(ds, samples: int | None = None) -> tuple[dict[int, list[tuple[int, int]]], list[str]]:
    """record -> [(dataset index, question index)] in file order, whole images until `samples` questions;
    and the messages of the malformed records met on the way."""
    by_record: dict[int, list[tuple[int, int]]] = {}
    skipped = []
    taken = 0
    for i, (r, q) in enumerate(ds.index):
        if r not in by_record and samples is not None and taken >= samples:
            break
        if q < 0:
            skipped.append(f"{ds.json_path}: record {r}: malformed record: {ds.malformed[r]}")
            continue
        by_record.setdefault(r, []).append((i, q))
        taken += 1
    return by_record, skipped


Predictor = Callable[[int, list[tuple[int, Sample]]], list[Prediction]]


def model_predictor(engine: Engine) -> Predictor:
    """Encode the record's image once, then ask each of its questions on it."""
    def predict(r: int, questions: list[tuple[int, Sample]]) -> list[Prediction]:
        engine.set_image(questions[0][1].image, image_key=f"muse record {r}")
        return [engine_prediction(engine, s.question) for _, s in questions]
    return predict


def saved_predictor(folder: Path) -> tuple[Predictor, Callable[[], list[str]]]:
    """Masks named r{R}_q{Q}_t{T}.npy / .png (module docstring); also returns a function listing the
    files not used so far."""
    if not folder.is_dir():
        raise DataError(f"--predictions {folder}: not a folder")
    files: dict[tuple[int, int], dict[int, Path]] = {}
    unused = set()
    for path in sorted(folder.iterdir()):
        m = PREDICTION_FILE.match(path.name)
        if not m:
            if path.suffix in (".npy", ".png"):
                unused.add(path.name)
            continue
        r, q, t = (int(x) for x in m.groups()[:3])
        if t in files.setdefault((r, q), {}):
            raise DataError(f"{path}: target {t} of record {r} question {q} has two files "
                             f"({files[(r, q)][t].name} too): keep one")
        files[(r, q)][t] = path
        unused.add(path.name)

    def load(path: Path, size: tuple[int, int]) -> np.ndarray:
        if path.suffix == ".npy":
            m = np.load(path, allow_pickle=False)
        else:
            m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH)
            if m is None:
                raise DataError(f"{path}: cannot decode the PNG")
        if m.shape != size:
            raise DataError(f"{path}: mask is {'x'.join(map(str, m.shape))}, the image is {size[0]}x{size[1]}")
        return m > 0

    def predict(r: int, questions: list[tuple[int, Sample]]) -> list[Prediction]:
        out = []
        for q, s in questions:
            targets = files.get((r, q), {})
            if sorted(targets) != list(range(len(targets))):
                raise DataError(f"{folder}: record {r} question {q} has targets {sorted(targets)}: "
                                 f"number them 0, 1, ... without gaps")
            size = s.image.shape[:2]
            masks = [load(targets[t], size) for t in range(len(targets))]
            unused.difference_update(p.name for p in targets.values())
            out.append(Prediction(np.stack(masks) if masks else np.zeros((0, *size), bool),
                                  [f"t{t}" for t in range(len(masks))], f"{len(masks)} saved masks"))
        return out

    return predict, lambda: sorted(unused)


def evaluate_muse(ds, predict: Predictor, out: Path | None = None, samples: int | None = None,
                  examples: int = 8) -> tuple[dict, list[str]]:
    """Every question of each MUSE record (whole images, see muse_questions) scored with `predict`;
    returns the report and the skipped records / questions (also in report.json)."""
    by_record, skipped = muse_questions(ds, samples)
    metrics = Metrics()
    shown = []
    for r, entries in tqdm(by_record.items(), desc="eval", leave=False):
        questions = []
        for i, q in entries:
            try:
                questions.append((q, ds[i]))
            except DataError as e:
                skipped.append(str(e))
        if not questions:
            continue
        for (q, s), p in zip(questions, predict(r, questions)):
            metrics.add(p.masks, s.masks, {"record": r, "question_index": q, "question": s.question,
                                           "answer": p.answer}, image=r)
            if len(shown) < examples:
                shown.append((s, p))
    for msg in skipped:
        log.warning("skipped: %s", msg)
    return write_report(metrics, shown, out, skipped=skipped), skipped


# ------------------------------------------------------------------------------------------------ OOD

GUARD_STOPS = ("max_targets", "repetition")  # stop reasons that mean a guard cut the answer
# What "bounded" means for one answer (issue #19): at most this many targets / characters / same word in a row.
BOUND_TARGETS, BOUND_CHARS, BOUND_WORD_RUN = 8, 300, 4


def node_sampling(defaults: dict | None = None) -> SamplingConfig:
    """The sampling the node answers with by default (config/pixellm.yaml: max_new_tokens and the guards)."""
    from pixellm_ros.params import load_defaults

    d = defaults or load_defaults()
    return SamplingConfig(max_new_tokens=d["max_new_tokens"], max_targets=d["max_targets"],
                          repetition_ngram=d["repetition_ngram"], repetition_count=d["repetition_count"])


def longest_word_run(text: str) -> int:
    """The most times one word follows itself in a row ("cup cup, cup." -> 3), case and punctuation ignored."""
    words = [w for w in (re.sub(r"[^\w]", "", w.lower()) for w in text.split()) if w]
    best = run = 0
    for k, w in enumerate(words):
        run = run + 1 if k and w == words[k - 1] else 1
        best = max(best, run)
    return best


def ood_summary(answers: Sequence[dict]) -> dict:
    """The OOD figures over per-answer records (keys: targets, tokens, chars, word_run, stop_reason)."""
    n = len(answers)
    if not n:
        return {"answers": 0}
    bounded = [a["targets"] <= BOUND_TARGETS and a["chars"] <= BOUND_CHARS and a["word_run"] <= BOUND_WORD_RUN
               for a in answers]
    return {"answers": n,
            "no_target_fraction": sum(a["targets"] == 0 for a in answers) / n,
            "eos_fraction": sum(a["stop_reason"] == "eos" for a in answers) / n,
            "guard_cut_fraction": sum(a["stop_reason"] in GUARD_STOPS for a in answers) / n,
            "bounded_fraction": sum(bounded) / n,
            "mean_tokens": sum(a["tokens"] for a in answers) / n,
            "mean_targets": sum(a["targets"] for a in answers) / n,
            "max_targets": max(a["targets"] for a in answers),
            "max_chars": max(a["chars"] for a in answers),
            "max_word_run": max(a["word_run"] for a in answers),
            "stop_reasons": {r: sum(a["stop_reason"] == r for a in answers)
                             for r in sorted({a["stop_reason"] for a in answers})}}


def evaluate_ood(engine: Engine, samples: list[Sample], settings: dict[str, SamplingConfig],
                 out: Path | None = None) -> dict:
    """Ask every question of `samples` (out-of-domain images: no domain object in any, see
    randomize.ood_eval_set) once per sampling setting; per setting the summary over all answers and per image
    group (photo / texture). Writes report_ood.json under `out`."""
    report: dict = {"images": len({s.source for s in samples}), "questions": len(samples), "settings": {}}
    for name, sampling in settings.items():
        answers = []
        for s in tqdm(samples, desc=f"ood {name}", leave=False):
            engine.set_image(s.image, image_key=s.source)
            r = engine.ask(s.question, sampling)
            answers.append({"source": s.source, "question": s.question, "answer": r.answer,
                            "targets": len(r.targets), "tokens": len(r.token_ids), "chars": len(r.answer),
                            "word_run": longest_word_run(r.answer), "stop_reason": r.stop_reason})
        groups = sorted({a["source"].split(":")[1] for a in answers})
        report["settings"][name] = {"sampling": {k: getattr(sampling, k) for k in
                                                 ("max_new_tokens", "max_targets", "repetition_ngram",
                                                  "repetition_count")},
                                    **ood_summary(answers),
                                    "by_group": {g: ood_summary([a for a in answers if a["source"].split(":")[1] == g])
                                                 for g in groups},
                                    "per_answer": answers}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report_ood.json").write_text(json.dumps(report, indent=2))
    return report


# ------------------------------------------------------------------------------------------------ demo

DEMO_FAILURES = ("wrong object", "duplicated name", "missed target", "extra target", "bad mask")
DEMO_MASK_IOU = 0.5  # a named target's mask counts as right from this IoU with its true object


def _phrasing_pattern(template: str) -> re.Pattern:
    """A PHRASINGS template as a regex: {name} -> color + kind, {verb} -> an affordance, {color} -> a colour."""
    fields = {"name": r"(?P<color>\w+) (?P<kind>\w+)", "color": r"(?P<color>\w+)",
              "verb": "(?P<verb>" + "|".join(map(re.escape, AFFORDANCES)) + ")"}
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(p) if k % 2 == 0 else fields[p] for k, p in enumerate(parts)) + r"\Z",
                      re.IGNORECASE)


def question_targets(question: str, objects: Sequence[SceneObject]) -> tuple[str, list[SceneObject]]:
    """(kind, true targets in answer order) of a domain question on a scene, by the rules synthetic.make_question
    answers with: referring -> the objects of that colour and kind (training asks only about unique ones, none ->
    "no such object"); affordance -> every object of AFFORDANCES[verb]; colour -> every object of that colour;
    several targets from left to right. ValueError for a question no PHRASINGS template asks."""
    for kind in ("refer", "afford", "color"):
        for template in {t for style in PHRASINGS.values() for t in style[kind]}:
            m = _phrasing_pattern(template).match(question.strip())
            if not m:
                continue
            g = {k: v.lower() for k, v in m.groupdict().items()}
            return kind, matching_objects(list(objects), **g)
    raise ValueError(f"not a question of the synthetic domain: {question!r}")


def demo_scene(seed: int = DEMO_SEED, questions: Sequence[str] = DEMO_QUESTIONS, limit: int = 10_000) -> int:
    """The demo's scene rule: the first scene of `seed` where every question has a non-empty answer and every
    referring question names exactly one object (the ones training asks). pixellm_ros.scenes.DEMO_SCENE is it."""
    for i in range(limit):
        _, objects = render_scene(np.random.default_rng([seed, i]))
        truths = [question_targets(q, objects) for q in questions]
        if all(t and (kind != "refer" or len(t) == 1) for kind, t in truths):
            return i
    raise ValueError(f"no scene of seed {seed} among the first {limit} answers every question")


def demo_failures(names: Sequence[str], truth: Sequence[str], mask_ious: Sequence[float]) -> list[str]:
    """What went wrong in one answer (DEMO_FAILURES; [] = right): predicted target names vs the true ones (as
    multisets), then, with the names right, each mask vs its object. A surplus name the truth also has is a
    duplicated name; a surplus name the truth lacks is a wrong object while a true one is missing, else an extra
    target; true names left over are missed targets."""
    said = [n.strip().lower() for n in names]
    missing = list(truth)
    for n in said:
        if n in missing:
            missing.remove(n)
    surplus = list(said)
    for n in truth:
        if n in surplus:
            surplus.remove(n)
    out = []
    for n in surplus:
        if n in truth:
            out.append("duplicated name")
        elif missing:
            missing.pop(0)
            out.append("wrong object")
        else:
            out.append("extra target")
    out += ["missed target"] * len(missing)
    if not out and any(iou < DEMO_MASK_IOU for iou in mask_ious):
        out.append("bad mask")
    return out


def _share_a_colour(targets: Sequence[SceneObject]) -> bool | None:
    """For answers of several targets: do two of them share a colour (then only their kinds tell them apart, as for
    the demo scene's red cup and red bottle)? None for answers of fewer than two targets."""
    return len({o.color for o in targets}) < len(targets) if len(targets) >= 2 else None


def demo_answer(engine: Engine, question: str, objects: Sequence[SceneObject], sampling: SamplingConfig,
                image_shape: tuple[int, int]) -> dict:
    """Ask one demo question on the engine's current image and score it (the truth: question_targets)."""
    kind, targets = question_targets(question, objects)
    r = engine.ask(question, sampling)
    pred = np.stack([t.mask for t in r.targets]) if r.targets else np.zeros((0, *image_shape), bool)
    gt = np.stack([o.mask for o in targets]) if targets else np.zeros((0, *image_shape), bool)
    _, _, iou = iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-iou) if iou.size else ([], [])
    truth = [o.name for o in targets]
    failures = demo_failures([t.phrase for t in r.targets], truth, [float(iou[i, j]) for i, j in zip(rows, cols)])
    return {"question": question, "kind": kind, "answer": r.answer, "said": [t.phrase for t in r.targets],
            "truth": truth, "right": not failures, "names_right": failures in ([], ["bad mask"]),
            "failures": failures, "stop_reason": r.stop_reason, "targets_share_a_colour": _share_a_colour(targets),
            "pred_masks": pred, "true_masks": gt}


def evaluate_demo(engine: Engine, scenes: Sequence[int], sampling: SamplingConfig, seed: int = DEMO_SEED,
                  questions: Sequence[str] = DEMO_QUESTIONS) -> dict:
    """`make demo`'s questions on the demo camera's scenes (render_scene(default_rng([seed, i])), i in `scenes`),
    asked with `sampling` (the node's defaults). Per question: accuracy, failure kinds, gIoU / cIoU / count
    (Metrics, each scene one image); per scene: the answers. A question is right when its targets' names are the
    true ones (as a multiset) and each mask overlaps its object with IoU >= DEMO_MASK_IOU; `names_right` counts
    the answers whose names are right whatever the masks. Failure counts are answers with that failure.
    `several_targets`: names right among the answers of two or more true targets, those where two share a colour
    (only their kinds tell them apart: this model's weakest case) apart from the rest."""
    per_scene, metrics = [], {q: Metrics() for q in questions}
    for i in tqdm(scenes, desc="demo", leave=False):
        image, objects = render_scene(np.random.default_rng([seed, i]))
        engine.set_image(image, image_key=f"demo scene {seed}:{i}")
        answers = []
        for q in questions:
            a = demo_answer(engine, q, objects, sampling, image.shape[:2])
            metrics[q].add(a.pop("pred_masks"), a.pop("true_masks"), image=i)
            answers.append(a)
        per_scene.append({"scene": i, "objects": [o.name for o in sorted(objects, key=lambda o: o.x)],
                          "right": sum(a["right"] for a in answers), "answers": answers})
    by_question = {}
    for k, q in enumerate(questions):
        answers = [s["answers"][k] for s in per_scene]
        by_question[q] = {"right": sum(a["right"] for a in answers), "asked": len(answers),
                          "names_right": sum(a["names_right"] for a in answers),
                          "accuracy": sum(a["right"] for a in answers) / len(answers) if answers else float("nan"),
                          "failures": {f: sum(f in a["failures"] for a in answers) for f in DEMO_FAILURES},
                          "several_targets": {
                              label: {"asked": sum(a["targets_share_a_colour"] is shared for a in answers),
                                      "names_right": sum(a["targets_share_a_colour"] is shared and a["names_right"]
                                                         for a in answers)}
                              for label, shared in (("sharing a colour", True), ("all colours distinct", False))},
                          **metrics[q].summary()}
    report = {"seed": seed, "scenes": list(scenes),
              "sampling": {k: getattr(sampling, k) for k in ("max_new_tokens", "max_targets", "repetition_ngram",
                                                             "repetition_count")},
              "right": sum(s["right"] for s in per_scene), "asked": len(per_scene) * len(questions),
              "names_right": sum(b["names_right"] for b in by_question.values()),
              "scenes_all_right": sum(s["right"] == len(questions) for s in per_scene),
              "failures": {f: sum(b["failures"][f] for b in by_question.values()) for f in DEMO_FAILURES},
              "by_question": by_question, "per_scene": per_scene}
    return report


# ------------------------------------------------------------------------------------------------ report

def write_examples(shown: list[tuple[Sample, Prediction]], path: Path, width: int = 320) -> None:
    """Grid: one row per example, predicted overlay left, ground truth right."""
    rows = []
    for s, p in shown:
        pred = draw_overlay(s.image, list(p.masks), p.names, f"Q: {s.question} | predicted: {p.answer}")
        true = draw_overlay(s.image, list(s.masks), s.names, "truth: " + s.answer.replace("{seg}", "[mask]"))
        h = max(pred.shape[0], true.shape[0])
        pair = [cv2.copyMakeBorder(x, 0, h - x.shape[0], 0, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255))
                for x in (pred, true)]
        row = np.hstack(pair)
        rows.append(cv2.resize(row, (2 * width, int(row.shape[0] * 2 * width / row.shape[1]))))
    if rows:
        cv2.imwrite(str(path), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


def synthetic_eval_set(n: int, seed: int, style: str = "default", kinds: tuple[str, ...] | None = None,
                       phrasing: str = "template", question_kind: str | None = None) -> list[Sample]:
    """The held-out split; `question_kind` asks only that kind of question (e.g. "afford") of the same scenes."""
    cfg = SyntheticConfig(style=style, phrasing=phrasing, **({"kinds": kinds} if kinds else {}),
                          **({"question_mix": {question_kind: 1.0}} if question_kind else {}))
    return [synthetic_sample(seed, i, cfg) for i in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (hf_model layout)")
    ap.add_argument("--adapter", help="LoRA adapter folder to apply")
    ap.add_argument("--muse", help="MUSE-format JSON file to evaluate on (default: the synthetic held-out split)")
    ap.add_argument("--image-root", default="", help="where the MUSE images are (default: the file's folder)")
    ap.add_argument("--predictions", help="with --muse: score the masks saved in this folder instead of a model")
    ap.add_argument("--samples", type=int, help="questions (synthetic default 200; MUSE default all, whole images)")
    ap.add_argument("--seed", type=int, default=9999, help="held-out seed (training uses other seeds)")
    ap.add_argument("--style", default="default")
    ap.add_argument("--kinds", nargs="*")
    ap.add_argument("--phrasing", default="template", help="question phrasings: template or varied")
    ap.add_argument("--question-kind", choices=QUESTION_KINDS, help="ask only this kind (default: the usual mix)")
    ap.add_argument("--max-new-tokens", type=int,
                    help=f"answer length limit (synthetic {SYNTHETIC_MAX_NEW_TOKENS}, MUSE {MUSE_MAX_NEW_TOKENS})")
    ap.add_argument("--ood", action="store_true",
                    help="out-of-domain answers: held-out photographs + procedural images (randomize.ood_eval_set), "
                         "with the node's default guards and with the engine's defaults (no guards)")
    ap.add_argument("--ood-questions", type=int, default=4, help="--ood: questions per image")
    ap.add_argument("--demo", action="store_true",
                    help="`make demo`'s questions on the demo camera's scenes (seed 0, scenes 0..--demo-scenes - 1 "
                         "and the demo's own scene), with the node's default guards; right / failure kinds per question")
    ap.add_argument("--demo-scenes", type=int, default=20, help="--demo: scenes 0..N-1 (the demo camera's cycle)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if bool(args.model) == bool(args.predictions):
        ap.error("give --model or --predictions (one of them)")
    if args.predictions and not args.muse:
        ap.error("--predictions scores a MUSE file: give --muse FILE too")
    logging.basicConfig(level=logging.INFO)
    out = Path(args.out) if args.out else None
    engine = None
    if args.model:
        limit = args.max_new_tokens or (MUSE_MAX_NEW_TOKENS if args.muse else SYNTHETIC_MAX_NEW_TOKENS)
        engine = Engine(EngineConfig(model_path=args.model, device=args.device,
                                     sampling=SamplingConfig(max_new_tokens=limit)))
        if args.adapter:
            engine.load_adapter(args.adapter)
    if args.demo:
        if engine is None or args.muse or args.ood:
            ap.error("--demo asks a model: give --model (and no --muse / --ood)")
        from pixellm_ros.scenes import DEMO_SCENE
        report = evaluate_demo(engine, range(args.demo_scenes), node_sampling())
        report["demo_scene"] = evaluate_demo(engine, [DEMO_SCENE], node_sampling())["per_scene"][0]
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "report_demo.json").write_text(json.dumps(report, indent=2))
        report.pop("per_scene")
    elif args.ood:
        if engine is None or args.muse:
            ap.error("--ood asks a model: give --model (and no --muse)")
        from .data.randomize import ood_eval_set
        samples = ood_eval_set(args.ood_questions)
        report = evaluate_ood(engine, samples, {"node_defaults": node_sampling(), "engine_defaults": SamplingConfig()},
                              out)
        for setting in report["settings"].values():
            setting.pop("per_answer")
    elif args.muse:
        from .data.muse import MuseDataset
        try:  # a file that cannot be read or a bad prediction file stops the run (records are only skipped)
            ds = MuseDataset(args.muse, args.image_root)
            if engine is not None:
                report, _ = evaluate_muse(ds, model_predictor(engine), out, args.samples)
            else:
                predict, unused = saved_predictor(Path(args.predictions))
                report, _ = evaluate_muse(ds, predict, out, args.samples)
                if unused():
                    log.warning("%d prediction files were not used (not named r{R}_q{Q}_t{T}, or not a "
                                "question evaluated): %s", len(unused()), ", ".join(unused()[:5]))
        except DataError as e:
            raise SystemExit(f"error: {e}") from e
        report = {**report, "skipped": len(report["skipped"])}
    else:
        samples = synthetic_eval_set(args.samples or 200, args.seed, args.style,
                                     tuple(args.kinds) if args.kinds else None, args.phrasing, args.question_kind)
        report = evaluate_engine(engine, samples, out)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
