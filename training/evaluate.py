"""Evaluate a model on held-out samples: gIoU, cIoU (MUSE-style, Hungarian-matched), target count.

    python -m training.evaluate --model DIR [--samples 200 --seed 9999 --style default] [--out DIR]

Metrics as the official MUSE validation computes them: per question, predictions and targets are
matched by the Hungarian algorithm on IoU; an unmatched target or prediction pairs with an empty mask
(IoU 0). gIoU = sum of pair IoUs / sum over questions of max(#pred, #gt); cIoU = total intersection /
total union. Questions with no target and no prediction count as correct and add nothing to gIoU.
Writes report.json and examples.png (predicted vs true masks).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment
from tqdm import tqdm

from pixellm_ros.engine import Engine, EngineConfig, Result
from pixellm_ros.model import SamplingConfig
from pixellm_ros.overlay import draw_overlay

from .data.sample import Sample
from .data.synthetic import QUESTION_KINDS, SyntheticConfig, synthetic_sample

log = logging.getLogger(__name__)


def iou_matrix(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pred (P, H, W), gt (G, H, W) bool -> intersection, union, IoU, each (P, G)."""
    p = pred.reshape(len(pred), -1).astype(np.float64)
    g = gt.reshape(len(gt), -1).astype(np.float64)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None] - inter
    return inter, union, np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclass
class Metrics:
    iou_sum: float = 0.0
    iou_denominator: int = 0
    intersection: float = 0.0
    union: float = 0.0
    questions: int = 0
    count_correct: int = 0
    per_question: list[dict] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray, info: dict | None = None) -> float:
        """Add one question; returns its mean matched IoU (1.0 when both are empty)."""
        self.questions += 1
        self.count_correct += int(len(pred) == len(gt))
        n = max(len(pred), len(gt))
        if n == 0:
            q_iou = 1.0
        else:
            pairs_iou = 0.0
            if len(pred) and len(gt):
                inter, union, iou = iou_matrix(pred, gt)
                rows, cols = linear_sum_assignment(-iou)
                pairs_iou = float(iou[rows, cols].sum())
                self.intersection += float(inter[rows, cols].sum())
                self.union += float(union[rows, cols].sum())
                matched_p, matched_g = set(rows), set(cols)
            else:
                matched_p, matched_g = set(), set()
            self.union += sum(float(pred[i].sum()) for i in range(len(pred)) if i not in matched_p)
            self.union += sum(float(gt[j].sum()) for j in range(len(gt)) if j not in matched_g)
            self.iou_sum += pairs_iou
            self.iou_denominator += n
            q_iou = pairs_iou / n
        self.per_question.append({**(info or {}), "pred": len(pred), "gt": len(gt), "iou": q_iou})
        return q_iou

    def summary(self) -> dict:
        return {"questions": self.questions,
                "gIoU": self.iou_sum / self.iou_denominator if self.iou_denominator else float("nan"),
                "cIoU": self.intersection / self.union if self.union else float("nan"),
                "target_count_accuracy": self.count_correct / max(self.questions, 1)}


def evaluate_engine(engine: Engine, samples: list[Sample], out: Path | None = None, examples: int = 8) -> dict:
    metrics = Metrics()
    shown = []
    for s in tqdm(samples, desc="eval", leave=False):
        engine.set_image(s.image)
        r = engine.ask(s.question)
        pred = np.stack([t.mask for t in r.targets]) if r.targets else np.zeros((0, *s.image.shape[:2]), bool)
        metrics.add(pred, s.masks, {"source": s.source, "question": s.question, "answer": r.answer})
        if len(shown) < examples:
            shown.append((s, r))
    report = metrics.summary()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({**report, "per_question": metrics.per_question}, indent=2))
        write_examples(shown, out / "examples.png")
    return report


def write_examples(shown: list[tuple[Sample, Result]], path: Path, width: int = 320) -> None:
    """Grid: one row per example, predicted overlay left, ground truth right."""
    rows = []
    for s, r in shown:
        pred = draw_overlay(s.image, [t.mask for t in r.targets], [t.phrase for t in r.targets],
                            f"Q: {s.question} | predicted: {r.answer}")
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
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", help="LoRA adapter folder to apply")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=9999, help="held-out seed (training uses other seeds)")
    ap.add_argument("--style", default="default")
    ap.add_argument("--kinds", nargs="*")
    ap.add_argument("--phrasing", default="template", help="question phrasings: template or varied")
    ap.add_argument("--question-kind", choices=QUESTION_KINDS, help="ask only this kind (default: the usual mix)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    engine = Engine(EngineConfig(model_path=args.model, device=args.device, sampling=SamplingConfig(max_new_tokens=96)))
    if args.adapter:
        engine.load_adapter(args.adapter)
    samples = synthetic_eval_set(args.samples, args.seed, args.style, tuple(args.kinds) if args.kinds else None,
                                 args.phrasing, args.question_kind)
    report = evaluate_engine(engine, samples, Path(args.out) if args.out else None)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
