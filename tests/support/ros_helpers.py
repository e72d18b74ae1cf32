"""Shared by the cross-process ROS tests and their peer process (ros_peer.py): names, sample messages, the peer
process; deadline-bounded spinning comes from reliability.node_process. Imports rclpy: only for tests that need ROS."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from pixellm_ros.msg import SegmentationResult, TargetMask
from reliability.node_process import (DEADLINE_S, STOP_TIMEOUT_S, ChildProcess,  # noqa: F401 (re-exported)
                                      spin_future, spin_until)

RESULT_TOPIC = "pixellm_test/result"
SEGMENT_SERVICE = "pixellm_test/segment"
ASK_ACTION = "pixellm_test/ask"
ANSWER = "The cup and the bowl can hold water."
TARGET_WORDS = {"cup": "the cup", "bowl": "the bowl"}  # word of ANSWER -> label of the target it names
SLOW_PREFIX = "slow:"  # queries starting with this stream feedback until canceled


def mask_image(mask: np.ndarray, header: Header) -> Image:
    """(H, W) bool mask -> mono8 Image, 255 = target."""
    h, w = mask.shape
    return Image(header=header, height=h, width=w, encoding="mono8", is_bigendian=0, step=w,
                 data=(mask.astype(np.uint8) * 255).tobytes())


def bbox(mask: np.ndarray) -> RegionOfInterest:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return RegionOfInterest()
    return RegionOfInterest(x_offset=int(xs.min()), y_offset=int(ys.min()),
                            width=int(xs.max() - xs.min() + 1), height=int(ys.max() - ys.min() + 1))


def target(index: int, label: str, mask: np.ndarray, header: Header, score: float = 0.9) -> TargetMask:
    return TargetMask(index=index, label=label, score=score, mask=mask_image(mask, header), bbox=bbox(mask),
                      pixel_count=int(mask.sum()))


def sample_masks(seed: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((height, width)) < p for p in (0.3, 0.6)]


def sample_result(seed: int) -> SegmentationResult:
    """A fully populated result with two random 48x64 masks, reproducible from `seed`."""
    header = Header(stamp=Time(sec=1_700_000_000 + seed, nanosec=123_456_789), frame_id="camera_optical_frame")
    labels = ["the red cup", "la tasse à café ☕"]  # non-ASCII must survive too
    return SegmentationResult(
        header=header, query_id=f"q-{seed}", query_text="Which objects could hold water?",
        answer="The red cup [SEG] and la tasse à café ☕ [SEG] can hold water.",
        targets=[target(i, lab, m, header, score=0.5 + 0.25 * i)  # exact in float32
                 for i, (lab, m) in enumerate(zip(labels, sample_masks(seed)))],
        image_age=Duration(sec=0, nanosec=40_000_000), inference_time=Duration(sec=1, nanosec=500_000_000),
        model_id="pixellm-tiny", adapter_id="kitchen", status=SegmentationResult.OK, status_message="",
        camera="front", incomplete_codebook_tokens=2)


def rgb_to_mask(image: Image) -> np.ndarray:
    """The peer's stand-in for the model: pixels whose red channel is > 127 (rgb8 images)."""
    rgb = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.step)[:, :image.width * 3]
    return rgb.reshape(image.height, image.width, 3)[..., 0] > 127


class Peer(ChildProcess):
    """The other side of a cross-process test: `python -m tests.support.ros_peer MODE ARGS...` (from the repository
    root, so that `tests` imports) with this run's ROS env."""

    def __init__(self, log_path: Path, *args: str):
        self._start([sys.executable, "-m", "tests.support.ros_peer", *args], log_path,
                    cwd=Path(__file__).resolve().parents[2])
