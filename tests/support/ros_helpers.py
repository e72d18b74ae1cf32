"""Shared by the cross-process ROS tests and their peer process (ros_peer.py): names, sample messages,
and deadline-bounded spinning. Imports rclpy: only for tests that need ROS (see conftest.py)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
from builtin_interfaces.msg import Duration, Time
from rclpy.executors import Executor
from rclpy.task import Future
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from pixellm_ros.msg import SegmentationResult, TargetMask

RESULT_TOPIC = "pixellm_test/result"
SEGMENT_SERVICE = "pixellm_test/segment"
ASK_ACTION = "pixellm_test/ask"
# How long a wait for an event may take before the test fails. A failure detector, not a timing assertion: every
# wait returns as soon as its condition holds. Generous because CI runs on a loaded 2-core machine, where starting a
# node process (torch + rclpy imports) and first discovery have taken over 15 s (3 s on an idle machine).
DEADLINE_S = 60.0
STOP_TIMEOUT_S = 60.0  # a process asked to exit (SIGINT) that is still there after this is killed
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


class PeerDied(AssertionError):
    pass


def spin_until(executor: Executor, done: Callable[[], bool], what: str, peer: "Peer | None" = None,
               timeout: float = DEADLINE_S) -> None:
    """Spin until done() is true; fail after `timeout` s (or when the peer process exits) saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not done():
        if peer is not None:
            peer.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"\n--- peer log ---\n{peer.log()}" if peer else ""))
        executor.spin_once(timeout_sec=0.05)


def spin_future(executor: Executor, future: Future, what: str, peer: "Peer | None" = None,
                timeout: float = DEADLINE_S):
    spin_until(executor, future.done, what, peer, timeout)
    return future.result()


class Peer:
    """The other side of a cross-process test: `python -m tests.support.ros_peer MODE ARGS...` (from the repository
    root, so that `tests` imports) with this run's ROS env."""

    MODULE = "tests.support.ros_peer"
    CWD = Path(__file__).resolve().parents[2]

    def __init__(self, python: str, log_path: Path, *args: str):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([python, "-m", self.MODULE, *args], cwd=self.CWD, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise PeerDied(f"peer exited with code {self.proc.returncode}\n--- peer log ---\n{self.log()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Ask the peer to exit (SIGINT) and return its exit code; kill it if it does not within `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
