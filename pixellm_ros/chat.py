"""Chat with PixelLM about an image, without ROS.

    python -m pixellm_ros.chat --model DIR [--vision-tower DIR] --image IMG --query "..." --out DIR

Writes answer.txt, result.json, mask_<k>.png, overlay.png (and mask_<k>.npy logits with
--save-logits). Without --query it asks for questions (and optionally new images) interactively.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np

from .engine import COMPILE_CHOICES, Engine, EngineConfig, Result
from .model import SamplingConfig, TextEvent
from .model.quantize import MODES as QUANTIZATIONS
from .overlay import draw_overlay


def read_image(path: str | Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_result(result: Result, rgb: np.ndarray, out: Path, save_logits: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "answer.txt").write_text(result.answer + "\n")
    summary = {
        "question": result.question, "answer": result.answer, "raw_text": result.raw_text,
        "generated_ids": result.token_ids, "stop_reason": result.stop_reason,
        "incomplete_codebook_tokens": result.incomplete_codebook_tokens,
        "image_size": list(result.image_size), "image_cached": result.image_cached,
        "targets": [{"index": t.index, "phrase": t.phrase, "score": t.score, "bbox_xywh": list(t.bbox),
                     "pixel_count": t.pixel_count} for t in result.targets],
        "timings_s": dataclasses.asdict(result.timings),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2))
    for t in result.targets:
        cv2.imwrite(str(out / f"mask_{t.index}.png"), t.mask.astype(np.uint8) * 255)
        if save_logits:
            np.save(out / f"mask_{t.index}.npy", t.logits.astype(np.float32))
    overlay = draw_overlay(rgb, [t.mask for t in result.targets], [t.phrase for t in result.targets], result.answer)
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))


def print_result(result: Result) -> None:
    print(f"answer: {result.answer}")
    for t in result.targets:
        print(f"  target {t.index}: {t.phrase!r} score {t.score:.3f} bbox {t.bbox} pixels {t.pixel_count}")
    if result.incomplete_codebook_tokens:
        print(f"  note: {result.incomplete_codebook_tokens} codebook tokens did not form a complete target")
    if result.stop_reason != "eos":
        print(f"  note: the answer was cut ({result.stop_reason})")
    print(f"  {result.timings.total * 1000:.0f} ms (image cached: {result.image_cached})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="hf_model folder (official PixelLM or saved by this project)")
    p.add_argument("--vision-tower", help="CLIP vision tower folder (default: from the model's config.json)")
    p.add_argument("--image", help="image file (asked for interactively when missing)")
    p.add_argument("--query", help="question; without it the CLI is interactive")
    p.add_argument("--out", default="chat_out", help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", default="none", choices=QUANTIZATIONS)
    p.add_argument("--max-new-tokens", type=int, default=SamplingConfig.max_new_tokens)
    p.add_argument("--max-targets", type=int, default=SamplingConfig.max_targets,
                   help="stop the answer at this many complete targets; 0 = no limit")
    p.add_argument("--repetition-ngram", type=int, default=SamplingConfig.repetition_ngram,
                   help="stop when the answer ends in an n-gram (n = 1..this) repeated --repetition-count times "
                        "in a row; 0 = off")
    p.add_argument("--repetition-count", type=int, default=SamplingConfig.repetition_count)
    p.add_argument("--compile", default="auto", choices=COMPILE_CHOICES,
                   help="torch.compile the decode step (auto: on CUDA only)")
    p.add_argument("--save-logits", action="store_true", help="also write mask_<k>.npy float32 logits")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = EngineConfig(model_path=args.model, vision_tower=args.vision_tower, device=args.device,
                          dtype=args.dtype, quantization=args.quantization,
                          sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, max_targets=args.max_targets,
                                                  repetition_ngram=args.repetition_ngram,
                                                  repetition_count=args.repetition_count), compile=args.compile)
    engine = Engine(config)
    out = Path(args.out)
    if args.query is not None:
        if not args.image:
            print("--query needs --image", file=sys.stderr)
            return 2
        rgb = read_image(args.image)
        engine.set_image(rgb)
        result = engine.ask(args.query)
        write_result(result, rgb, out, args.save_logits)
        print_result(result)
        print(f"wrote {out}/")
        return 0
    return interactive(engine, args.image, out, args.save_logits)


def interactive(engine: Engine, image: str | None, out: Path, save_logits: bool) -> int:
    rgb = read_image(image) if image else None
    turn = 0
    print("Type a question (':image PATH' switches image, empty line or ':quit' ends).")
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            return 0
        if line in ("", ":quit", ":q"):
            return 0
        if line.startswith(":image"):
            try:
                rgb = read_image(line.split(maxsplit=1)[1])
            except (IndexError, FileNotFoundError) as e:
                print(f"error: {e}")
            continue
        if rgb is None:
            print("no image yet: ':image PATH' first")
            continue
        engine.set_image(rgb)
        result = _stream_print(engine, line)
        write_result(result, rgb, out / f"turn_{turn:03d}", save_logits)
        print_result(result)
        turn += 1


def _stream_print(engine: Engine, question: str) -> Result:
    """Print the answer as it is generated; return the Result."""
    events = engine.stream(question)
    for event in events:
        if isinstance(event, TextEvent):
            print(event.delta, end="", flush=True)
    print()
    return events.result


if __name__ == "__main__":
    sys.exit(main())
