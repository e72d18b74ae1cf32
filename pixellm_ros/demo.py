"""`make demo`: run the engine end to end on demo camera frames and a handful of questions.

Uses --model when given. Without it, and until the project ships its trained default model, it builds
a tiny PixelLM with RANDOM weights (same code path as 7B, a few MB): everything runs for real, but
its answers and masks mean nothing, and the demo says so. Writes overlays under demo_out/.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from .chat import print_result, write_result
from .engine import Engine, EngineConfig
from .model import SamplingConfig, save_pixellm
from .model.factory import tiny_random_pixellm

QUESTIONS = ["Which objects could hold water?", "Where is the red cup?", "Segment the knife and the scissors."]
log = logging.getLogger("pixellm_ros.demo")


def demo_frame(t: int, height: int = 360, width: int = 480) -> np.ndarray:
    """A synthetic tabletop: a table, a cup, a bowl and a knife, drifting slowly as a camera would see."""
    img = np.full((height, width, 3), (200, 210, 220), np.uint8)
    cv2.rectangle(img, (0, height // 2), (width, height), (150, 110, 70), -1)
    dx = 4 * t
    cv2.rectangle(img, (60 + dx, 170), (120 + dx, 250), (210, 40, 40), -1)  # red cup
    cv2.ellipse(img, (300 + dx, 250), (60, 25), 0, 0, 360, (40, 90, 200), -1)  # blue bowl
    cv2.line(img, (380, 300), (460, 320), (180, 180, 180), 6)  # knife
    return img


def ensure_model(model: str | None, out: Path) -> tuple[str, bool]:
    if model:
        return model, False
    folder = out / "tiny_random_model"
    if not (folder / "config.json").is_file():
        m, tok = tiny_random_pixellm(seed=0)
        save_pixellm(m, tok, folder)
    return str(folder), True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", help="hf_model folder (default: a tiny random model, see above)")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--frames", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path, random_weights = ensure_model(args.model, out)
    if random_weights:
        log.warning("no trained model given: using a tiny model with RANDOM weights. Its answers and masks "
                    "are meaningless; the demo only shows the pipeline running end to end.")
    engine = Engine(EngineConfig(model_path=model_path, device="auto",
                                 sampling=SamplingConfig(max_new_tokens=args.max_new_tokens)))
    latencies = []
    for t in range(args.frames):
        rgb = demo_frame(t)
        for q, question in enumerate(QUESTIONS):
            t0 = time.perf_counter()
            engine.set_image(rgb, image_key=f"demo/{t}")
            result = engine.ask(question)
            latencies.append(time.perf_counter() - t0)
            print(f"[frame {t}] Q: {question}")
            print_result(result)
            write_result(result, rgb, out / f"frame{t}_q{q}")
    print(f"summary: {len(latencies)} answers on {args.frames} frames, median latency "
          f"{1000 * float(np.median(latencies)):.0f} ms, overlays in {out}/*/overlay.png")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
