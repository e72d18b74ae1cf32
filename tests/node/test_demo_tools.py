"""The demo camera and the demo planner, each as its own process against this test's ROS node.

The planner talks to a stand-in `~/segment` service hosted here (masks = red pixels of the frame it was asked
about), so these tests need neither the pixellm node nor a model.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pixellm_ros import demo
from pixellm_ros.demo import yaml_model_path

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[2]


def start(module: str, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int:
    from tests.support.ros_helpers import STOP_TIMEOUT_S

    demo.stop(proc, proc.args[2], timeout_s=STOP_TIMEOUT_S)
    return proc.returncode


def test_demo_camera_publishes_frames_and_camera_info(ros_node, tmp_path):
    from rclpy.qos import qos_profile_sensor_data
    from tests.support.ros_helpers import spin_until
    from sensor_msgs.msg import CameraInfo, Image

    node, executor = ros_node
    images, infos = [], []
    node.create_subscription(Image, "/demo_cam_test/image", images.append, qos_profile_sensor_data)
    node.create_subscription(CameraInfo, "/camera_info_test", infos.append, qos_profile_sensor_data)
    log = tmp_path / "camera.log"
    proc = start("pixellm_ros.demo_camera", "--ros-args", "-p", "rate_hz:=20.0", "-p", "frames_per_scene:=1",
                 "-r", "image:=/demo_cam_test/image", "-r", "camera_info:=/camera_info_test", log=log)
    try:
        spin_until(executor, lambda: len(images) >= 3 and infos, "3 demo camera frames")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- camera log ---\n{log.read_text()}") from None
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    from pixellm_ros.conversions import image_to_rgb

    first = images[0]
    assert (first.encoding, first.width, first.height) == ("rgb8", 320, 240)
    assert first.header.frame_id == "camera_optical_frame" and first.header.stamp.sec > 0
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in images]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert not np.array_equal(image_to_rgb(images[0]), image_to_rgb(images[1]))  # a new scene per frame
    k = np.array(infos[0].k).reshape(3, 3)
    assert k[0, 0] > 0 and k[0, 0] == k[1, 1] and k[0, 2] == pytest.approx(159.5) and k[2, 2] == 1


def test_demo_camera_image_folder_and_errors(tmp_path):
    from pixellm_ros.demo_camera import FrameSource

    for i, c in enumerate([(255, 0, 0), (0, 0, 255)]):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 10, 3), c, np.uint8))
    src = FrameSource(seed=0, num_scenes=99, frames_per_scene=2, image_folder=str(tmp_path))
    assert len(src) == 4
    assert tuple(src.frame(0)[0, 0]) == (0, 0, 255) and tuple(src.frame(2)[0, 0]) == (255, 0, 0)  # BGR -> RGB
    assert tuple(src.frame(4)[0, 0]) == (0, 0, 255)  # wraps around
    with pytest.raises(ValueError, match="no PNG or JPEG"):
        FrameSource(0, 1, 1, image_folder=str(tmp_path / "missing"))
    synthetic = FrameSource(seed=3, num_scenes=2, frames_per_scene=1)
    assert synthetic.frame(0).shape == (240, 320, 3) and np.array_equal(synthetic.frame(2), synthetic.frame(0))
    held = FrameSource(seed=3, num_scenes=1, frames_per_scene=5, first_scene=1)  # make demo: one scene only
    assert len(held) == 5 and all(np.array_equal(held.frame(k), synthetic.frame(1)) for k in (0, 4, 5, 13))
    with pytest.raises(ValueError, match="first_scene"):
        FrameSource(0, 1, 1, first_scene=-1)


def test_demo_planner_against_a_stand_in_service(ros_node, tmp_path):
    from rclpy.qos import qos_profile_sensor_data
    from tests.support.ros_helpers import bbox, mask_image, rgb_to_mask, spin_until
    from sensor_msgs.msg import Image

    from pixellm_ros.conversions import rgb_to_msg
    from pixellm_ros.msg import SegmentationResult, TargetMask
    from pixellm_ros.srv import Segment

    node, executor = ros_node
    latest: list[Image] = []
    asked: list[str] = []

    def segment(request, response):
        asked.append(request.query.text)
        r = response.result
        r.query_id, r.query_text = request.query.id, request.query.text
        if not latest:
            r.status, r.status_message = SegmentationResult.NO_IMAGE, "no frame yet"
        elif request.query.text == "fail":
            r.status, r.status_message = SegmentationResult.MODEL_ERROR, "stand-in failure"
        else:
            frame = latest[-1]
            mask = rgb_to_mask(frame)
            r.header, r.answer = frame.header, "The red thing."
            r.targets = [TargetMask(index=0, label="the red thing", score=0.8, mask=mask_image(mask, frame.header),
                                    bbox=bbox(mask), pixel_count=int(mask.sum()))]
        return response

    node.create_service(Segment, "/planner_test/segment", segment)
    pub = node.create_publisher(Image, "/planner_test/image", qos_profile_sensor_data)
    rgb = np.zeros((24, 32, 3), np.uint8)
    rgb[4:12, 6:20, 0] = 255

    def publish():
        msg = rgb_to_msg(rgb, _header(node))
        pub.publish(msg)
        latest.append(msg)

    node.create_timer(0.05, publish)
    out, log = tmp_path / "out", tmp_path / "planner.log"
    proc = start("pixellm_ros.demo_planner", "--out", str(out), "--ros-args",
                 "-p", "service:=/planner_test/segment", "-p", 'questions:=["Where is the red thing?", "fail"]',
                 "-p", "wait_timeout_s:=20.0", "-r", "image:=/planner_test/image", log=log)
    try:
        spin_until(executor, lambda: proc.poll() is not None, "the planner to finish", timeout=60)
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 1, text  # one MODEL_ERROR -> nonzero
    assert asked.count("fail") == 1 and "Where is the red thing?" in asked
    assert "A: The red thing." in text and "target 0: 'the red thing' score 0.80 bbox x=6 y=4 w=14 h=8 pixels 112" in text
    assert "status MODEL_ERROR: stand-in failure" in text
    assert "summary: 1/2 answered, 0 busy, 1 failed" in text
    overlay = cv2.imread(str(out / "answer_0.png"))
    assert overlay is not None and overlay.shape[1] == 32 and overlay.shape[0] > 24  # answer band on top
    assert "drawn on gray" not in text  # the planner found the frame by its stamp
    assert not (out / "answer_1.png").exists()


def _header(node):
    from std_msgs.msg import Header

    return Header(stamp=node.get_clock().now().to_msg(), frame_id="camera_optical_frame")


def test_demo_model_path_from_yaml(tmp_path):
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("/**:\n  ros__parameters:\n    model_path: /x/y\n")
    assert yaml_model_path(yaml_file) == "/x/y"
    assert yaml_model_path(tmp_path / "missing.yaml") == "models/pixellm_tabletop"
    assert yaml_model_path(ROOT / "config" / "pixellm.yaml") == "models/pixellm_tabletop"
