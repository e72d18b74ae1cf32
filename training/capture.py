"""Frames from a ROS 2 bag, as PNGs plus labelme templates to annotate.

    python -m training.capture BAG --topic /camera/image_raw --out DIR [--every N] [--max M]

BAG is a rosbag2 folder (MCAP or SQLite3) or a ROS 1 .bag; --topic may repeat (default: every
sensor_msgs/Image and sensor_msgs/CompressedImage topic). Each kept frame becomes DIR/<topic>_<n>.png
and DIR/<topic>_<n>.json, a labelme file with no shapes and one question stub:

    "questions": [{"question": "", "answer": "", "targets": []}]

Open DIR in labelme, draw and label the objects, and write questions (one "{seg}" in the answer per
target; targets are shape labels or shape indices) or leave them empty to get "Segment every
{label}." questions. Then train with a `kind: labelme, path: DIR` source: `LabelmeDataset(DIR)`
skips the templates still without shapes. An existing JSON is never overwritten (it may hold your
annotations).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pixellm_ros.conversions import compressed_to_rgb, image_to_rgb, stamp_ns

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/Image",
               "sensor_msgs/CompressedImage")
LABELME_VERSION = "5.4.1"
QUESTION_STUB = {"question": "", "answer": "", "targets": []}

def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a sensor_msgs Image (see pixellm_ros.conversions.image_to_rgb for the encodings)
    or CompressedImage (anything cv2.imdecode reads). Raises ValueError (ImageConversionError) otherwise."""
    if hasattr(msg, "format"):  # CompressedImage
        return compressed_to_rgb(msg)
    return image_to_rgb(msg)


def labelme_template(image_name: str, height: int, width: int, meta: dict) -> dict:
    return {"version": LABELME_VERSION, "flags": {}, "shapes": [], "imagePath": image_name, "imageData": None,
            "imageHeight": height, "imageWidth": width, "questions": [dict(QUESTION_STUB)], "capture": meta}


def _slug(topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", topic).strip("_") or "image"


def capture(bag: str | Path, out: str | Path, topics: list[str] | None = None, every: int = 1,
            max_frames: int | None = None) -> list[Path]:
    """Write every `every`-th frame of each topic (at most `max_frames` in all); returns the PNG paths."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    if every < 1:
        raise ValueError("--every must be >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.LATEST)) as reader:
        images = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        available = sorted({c.topic for c in images})
        if topics:
            missing = [t for t in topics if t not in available]
            if missing:
                raise ValueError(f"{bag}: no image topic {missing}; image topics: {available or 'none'}")
            images = [c for c in images if c.topic in topics]
        if not images:
            raise ValueError(f"{bag}: no sensor_msgs Image or CompressedImage topic")
        seen: dict[str, int] = {}
        kept: dict[str, int] = {}
        for conn, stamp, raw in reader.messages(connections=images):
            n = seen.get(conn.topic, 0)
            seen[conn.topic] = n + 1
            if n % every:
                continue
            if max_frames is not None and len(written) >= max_frames:
                break
            msg = reader.deserialize(raw, conn.msgtype)
            try:
                rgb = image_msg_to_rgb(msg)
            except ValueError as e:
                log.warning("%s message %d: %s (skipped)", conn.topic, n, e)
                continue
            k = kept.get(conn.topic, 0)
            kept[conn.topic] = k + 1
            stem = f"{_slug(conn.topic)}_{k:06d}"
            png = out / f"{stem}.png"
            if not cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {png}")
            written.append(png)
            js = out / f"{stem}.json"
            if js.exists():
                log.info("%s exists: kept as it is", js)
                continue
            header = getattr(msg, "header", None)
            meta = {"bag": str(bag), "topic": conn.topic, "message": n, "log_time_ns": int(stamp),
                    "encoding": getattr(msg, "encoding", None) or getattr(msg, "format", None),
                    "frame_id": getattr(header, "frame_id", None),
                    "stamp_ns": stamp_ns(header.stamp) if header else None}
            js.write_text(json.dumps(labelme_template(png.name, *rgb.shape[:2], meta), indent=2) + "\n")
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.capture", description=__doc__.split("\n\n")[0])
    ap.add_argument("bag", help="rosbag2 folder (MCAP or SQLite3) or ROS 1 .bag")
    ap.add_argument("--topic", action="append", help="image topic (repeatable; default: every image topic)")
    ap.add_argument("--out", required=True, help="folder for the PNGs and labelme templates")
    ap.add_argument("--every", type=int, default=1, help="keep every N-th message of each topic")
    ap.add_argument("--max", type=int, default=None, help="stop after this many frames in all")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        frames = capture(args.bag, args.out, args.topic, args.every, args.max)
    except (ValueError, OSError) as e:
        print(f"capture: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(frames)} frames and labelme templates to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
