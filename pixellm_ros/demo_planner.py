"""A stand-in planner: asks the pixellm node a list of questions through `~/segment` and reports the answers.

    python -m pixellm_ros.demo_planner [--out demo_out] --ros-args -p service:=/pixellm/segment

For each question it prints the answer, each target (label, score, bbox, pixel count) and the round-trip
latency, and writes OUT/answer_<k>.png: the camera frame the answer describes (the subscribed `image` frame
whose header stamp equals the result's) with the masks drawn on it. Exits 0 when every question was
answered; 1 when a result has a status other than OK (BUSY only counts as skipped); 2 when the service or
the camera never showed up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image

from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import Segment

from .conversions import ImageConversionError, image_to_rgb, stamp_ns
from .executor import NO_EVENT_HANDLERS, spin_once_until_shutdown
from .messages import STATUS_NAMES
from .overlay import draw_overlay
from .scenes import DEMO_QUESTIONS

QUESTIONS = list(DEMO_QUESTIONS)
RETRY_STATUSES = (SegmentationResult.NO_IMAGE, SegmentationResult.NOT_READY)  # the node is still starting


def mask_of(image: Image) -> np.ndarray:
    """(H, W) bool of a TargetMask.mask (mono8, 255 = target)."""
    return image_to_rgb(image)[..., 0] > 127


class DemoPlanner(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("demo_planner", **kwargs)
        self.service = str(self.declare_parameter("service", "/pixellm/segment").value)
        self.questions = list(self.declare_parameter("questions", QUESTIONS).value)
        self.wait_timeout_s = float(self.declare_parameter("wait_timeout_s", 120.0).value)
        self.call_timeout_s = float(self.declare_parameter("call_timeout_s", 300.0).value)
        self.keep_frames = int(self.declare_parameter("keep_frames", 60).value)
        self.client = self.create_client(Segment, self.service)
        self.frames: OrderedDict[int, Image] = OrderedDict()  # header stamp -> camera frame
        self.create_subscription(Image, "image", self._on_image, qos_profile_sensor_data,
                                 event_callbacks=NO_EVENT_HANDLERS)  # a camera stream: see executor.py

    def _on_image(self, msg: Image) -> None:
        self.frames[stamp_ns(msg.header.stamp)] = msg
        while len(self.frames) > self.keep_frames:
            self.frames.popitem(last=False)

    def spin_until(self, done, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline or not rclpy.ok() or not spin_once_until_shutdown(self, 0.05):
                return False
        return True

    def ask(self, k: int, question: str) -> tuple[SegmentationResult | None, float]:
        """Call the service (again while the node reports NO_IMAGE / NOT_READY); (result, seconds of the last call)."""
        deadline = time.monotonic() + self.wait_timeout_s
        while True:
            request = Segment.Request(query=Query(id=f"demo-{k}", text=question, frame_policy=Query.FRAME_LATEST))
            t0 = time.perf_counter()
            future = self.client.call_async(request)
            if not self.spin_until(future.done, self.call_timeout_s):
                self.client.remove_pending_request(future)
                return None, time.perf_counter() - t0
            latency = time.perf_counter() - t0
            result = future.result().result
            if result.status not in RETRY_STATUSES or time.monotonic() > deadline:
                return result, latency
            self.spin_until(lambda: False, 0.5)  # let the node load / receive a frame, then ask again

    def save_overlay(self, result: SegmentationResult, path: Path) -> str:
        masks = [mask_of(t.mask) for t in result.targets]
        key = stamp_ns(result.header.stamp)
        self.spin_until(lambda: key in self.frames, 1.0)  # our copy of the frame may still be on its way
        frame = self.frames.get(key)
        note = ""
        if frame is not None:
            rgb = image_to_rgb(frame)
        else:  # not received here (best-effort QoS may drop frames): draw on gray
            shape = masks[0].shape if masks else (240, 320)
            rgb = np.full((*shape, 3), 96, np.uint8)
            note = " (source frame not received by the planner: drawn on gray)"
        masks = [m if m.shape == rgb.shape[:2] else np.zeros(rgb.shape[:2], bool) for m in masks]
        overlay = draw_overlay(rgb, masks, [t.label for t in result.targets], result.answer)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        return note


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report(k: int, question: str, result: SegmentationResult, latency: float) -> None:
    status = STATUS_NAMES.get(result.status, str(result.status))
    print(f"[{k}] Q: {question}")
    if result.status != SegmentationResult.OK:
        print(f"    status {status}: {result.status_message}")
    else:
        print(f"    A: {shorten(result.answer, 400)}")
    for t in result.targets:
        b = t.bbox
        print(f"    target {t.index}: {shorten(t.label, 60)!r} score {t.score:.2f} bbox x={b.x_offset} y={b.y_offset} "
              f"w={b.width} h={b.height} pixels {t.pixel_count}")
    infer = result.inference_time.sec + result.inference_time.nanosec * 1e-9
    print(f"    round trip {1000 * latency:.0f} ms (inference {1000 * infer:.0f} ms)", flush=True)


def run(node: DemoPlanner, out: Path) -> int:
    if not node.client.wait_for_service(timeout_sec=node.wait_timeout_s):
        print(f"demo_planner: service {node.service} did not appear within {node.wait_timeout_s:.0f} s; is the "
              f"pixellm node running (and activated)?", file=sys.stderr)
        return 2
    if not node.spin_until(lambda: bool(node.frames), node.wait_timeout_s):
        print(f"demo_planner: no image on {node.resolve_topic_name('image')} within {node.wait_timeout_s:.0f} s",
              file=sys.stderr)
        return 2
    latencies, failed, busy = [], 0, 0
    for k, question in enumerate(node.questions):
        result, latency = node.ask(k, question)
        if result is None:
            print(f"[{k}] Q: {question}\n    no response within {node.call_timeout_s:.0f} s", flush=True)
            failed += 1
            continue
        report(k, question, result, latency)
        if result.status == SegmentationResult.BUSY:
            busy += 1
            continue
        if result.status != SegmentationResult.OK:
            failed += 1
            continue
        latencies.append(latency)
        try:
            note = node.save_overlay(result, out / f"answer_{k}.png")
            print(f"    overlay {out / f'answer_{k}.png'}{note}", flush=True)
        except (ImageConversionError, OSError) as exc:
            print(f"    overlay not written: {exc}", flush=True)
    median = f"{1000 * statistics.median(latencies):.0f} ms" if latencies else "n/a"
    print(f"summary: {len(latencies)}/{len(node.questions)} answered, {busy} busy, {failed} failed, "
          f"median round trip {median}, overlays in {out}/", flush=True)
    return 1 if failed else 0


def main(args: list[str] | None = None) -> int:
    argv = sys.argv if args is None else args
    ap = argparse.ArgumentParser(prog="demo_planner", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="demo_out", help="folder for the overlay PNGs")
    opts = ap.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = None
    try:
        node = DemoPlanner()
        return run(node, Path(opts.out))
    except (KeyboardInterrupt, ExternalShutdownException):
        return 130
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
