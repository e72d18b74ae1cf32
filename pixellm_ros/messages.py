"""The node's ROS messages that are not images (conversions.py builds those): targets, detections, result
statuses, centroid poses and camera info. Built from engine objects and plain numbers, so the code that
decides what to publish stays free of message layouts."""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Sequence

import numpy as np
from geometry_msgs.msg import Pose, PoseArray
from sensor_msgs.msg import CameraInfo, RegionOfInterest
from std_msgs.msg import Header

from .conversions import mask_to_msg
from .model import Target
from .msg import SegmentationResult, TargetMask

STATUS_NAMES = {getattr(SegmentationResult, n): n for n in dir(SegmentationResult)
                if n.isupper() and isinstance(getattr(SegmentationResult, n), int)}


def status_code(name: str) -> int:
    """SegmentationResult.<name> (e.g. "NO_IMAGE")."""
    code = getattr(SegmentationResult, name)
    if code not in STATUS_NAMES:
        raise ValueError(f"{name!r} is not a SegmentationResult status")
    return code


def target_msg(target: Target, header: Header) -> TargetMask:
    x, y, w, h = target.bbox
    return TargetMask(index=target.index, label=target.phrase, score=float(target.score),
                      mask=mask_to_msg(target.mask, header), pixel_count=target.pixel_count,
                      bbox=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h))


def detections_msg(vision: ModuleType, header: Header, targets: Sequence[TargetMask]) -> Any:
    """vision_msgs/Detection2DArray (Humble+ layout): one detection per target, class_id = its label."""
    out = vision.Detection2DArray(header=header)
    for t in targets:
        det = vision.Detection2D(header=header)
        det.id = str(t.index)
        hyp = vision.ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = t.label, float(t.score)
        det.results.append(hyp)
        det.bbox.center.position.x = t.bbox.x_offset + t.bbox.width / 2.0
        det.bbox.center.position.y = t.bbox.y_offset + t.bbox.height / 2.0
        det.bbox.size_x, det.bbox.size_y = float(t.bbox.width), float(t.bbox.height)
        out.detections.append(det)
    return out


def centroids_msg(header: Header, centroids: Sequence[tuple[float, float, float] | None]) -> PoseArray:
    """One pose per target, in target order; NaN position for a target with no depth under its mask."""
    poses = PoseArray(header=header)
    for c in centroids:
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = c or (math.nan, math.nan, math.nan)
        pose.orientation.w = 1.0
        poses.poses.append(pose)
    return poses


def pinhole_info(header: Header, height: int, width: int, hfov_deg: float = 60.0) -> CameraInfo:
    """CameraInfo of an ideal pinhole camera with the principal point in the image centre."""
    f = (width / 2) / np.tan(np.radians(hfov_deg) / 2)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    return CameraInfo(header=header, height=height, width=width, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[f, 0.0, cx, 0.0, f, cy, 0.0, 0.0, 1.0], r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[f, 0.0, cx, 0.0, 0.0, f, cy, 0.0, 0.0, 0.0, 1.0, 0.0])
