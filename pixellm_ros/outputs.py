"""The topics published after each OK answer, once the caller has its result: ~/answer, ~/masks/label,
~/masks/target_<k>, ~/overlay (only while subscribed), ~/detections (where vision_msgs imports) and, with depth,
~/points and ~/centroids. Every message carries the source image's header."""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import String

from .conversions import (backproject, centroid, depth_to_meters, label_to_msg, mask_to_msg, points_to_cloud,
                          rgb_to_msg, stamp_ns)
from .engine import Result
from .frame_cache import FrameCache
from .messages import centroids_msg, detections_msg
from .msg import SegmentationResult
from .overlay import draw_overlay
from .params import NodeConfig

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
IMAGE_OUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
DEPTH_SLOP_S = 0.1  # depth frame used for an image: the nearest in stamp, at most this far away


def import_vision_msgs() -> ModuleType | None:
    """vision_msgs.msg where installed (then ~/detections is published), else None."""
    try:
        return importlib.import_module("vision_msgs.msg")
    except ImportError:
        return None


class Outputs:
    """The output publishers of `node` and what goes on them."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.cfg: NodeConfig | None = None
        self.vision = import_vision_msgs()
        self.answer = node.create_publisher(String, "~/answer", RELIABLE)
        self.label = node.create_publisher(Image, "~/masks/label", IMAGE_OUT_QOS)
        self.overlay = node.create_publisher(Image, "~/overlay", IMAGE_OUT_QOS)
        self.detections = (node.create_publisher(self.vision.Detection2DArray, "~/detections", RELIABLE)
                           if self.vision else None)
        self.targets: dict[int, Any] = {}
        self.points = self.centroids = None
        self.depth: FrameCache | None = None  # with use_depth: the depth frames and the latest camera_info
        self.camera_info: CameraInfo | None = None

    def configure(self, cfg: NodeConfig) -> None:
        """Target and 3-D publishers, made up front (no late discovery); kept across reconfigures."""
        self.cfg = cfg
        for k in range(len(self.targets) + 1, cfg.max_target_topics + 1):
            self.targets[k] = self.node.create_publisher(Image, f"~/masks/target_{k}", IMAGE_OUT_QOS)
        if cfg.use_depth:
            self.depth = FrameCache(cfg.ring_size)
            self.points = self.points or self.node.create_publisher(PointCloud2, "~/points", IMAGE_OUT_QOS)
            self.centroids = self.centroids or self.node.create_publisher(PoseArray, "~/centroids", RELIABLE)

    def unconfigure(self) -> None:
        self.depth = self.camera_info = None

    def publish(self, result: SegmentationResult, rgb: np.ndarray, answer: Result) -> None:
        cfg, header, targets = self.cfg, result.header, answer.targets
        self.answer.publish(String(data=result.answer))
        self.label.publish(label_to_msg(answer.label_image(), header))
        for k in range(1, cfg.max_target_topics + 1):  # fewer targets than topics: the rest get empty masks
            self.targets[k].publish(result.targets[k - 1].mask if k <= len(targets)
                                    else mask_to_msg(np.zeros(rgb.shape[:2], bool), header))
        if cfg.publish_overlay and self.overlay.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, [t.mask for t in targets], [t.phrase for t in targets], result.answer)
            self.overlay.publish(rgb_to_msg(overlay, header))
        if self.detections is not None:
            self.detections.publish(detections_msg(self.vision, header, list(result.targets)))
        if cfg.use_depth and result.camera == cfg.cameras[0]:
            self._publish_3d(header, targets)

    def _publish_3d(self, header: Any, targets: list) -> None:
        log, at_ns = self.node.get_logger(), stamp_ns(header.stamp)
        info, depth = self.camera_info, self.depth.nearest(at_ns, int(DEPTH_SLOP_S * 1e9))
        if info is None or depth is None:
            log.warning(f"no {'camera_info' if info is None else 'depth frame'} for the image at {at_ns} ns: no 3-D "
                        f"output", throttle_duration_sec=5.0)
            return
        try:
            depth_m = depth_to_meters(depth.msg, self.cfg.max_image_pixels)
            points = [backproject(t.mask, depth_m, info.k) for t in targets]
        except ValueError as exc:
            log.warning(f"no 3-D output: {exc}", throttle_duration_sec=5.0)
            return
        self.points.publish(points_to_cloud(np.concatenate(points) if points else np.zeros((0, 3), np.float32),
                                            header))
        self.centroids.publish(centroids_msg(header, [centroid(p) for p in points]))
