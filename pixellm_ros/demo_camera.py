"""A stand-in camera for demos and benchmarks: publishes rgb8 frames and a pinhole camera_info.

    python -m pixellm_ros.demo_camera --ros-args -p rate_hz:=5.0 -r image:=/camera/image_raw

Frames are synthetic tabletop scenes (pixellm_ros.scenes, the domain the project's default model is trained
on): scene i is `render_scene(np.random.default_rng([seed, i]))`, held for `frames_per_scene` frames,
`num_scenes` scenes from `first_scene` on, repeated when `loop` (`make demo` shows one: first_scene
scenes.DEMO_SCENE, num_scenes 1); or, with `image_folder`, the PNG/JPEG files of a folder. Topics: `image`
(sensor_msgs/Image, sensor-data QoS) and `camera_info`; header.frame_id `frame_id`, stamps from the node clock.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from .conversions import rgb_to_msg
from .executor import spin_once_until_shutdown
from .messages import pinhole_info
from .scenes import render_scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class FrameSource:
    """Frame k of the stream as (H, W, 3) uint8 RGB; `len()` frames before it repeats or ends."""

    def __init__(self, seed: int, num_scenes: int, frames_per_scene: int, image_folder: str = "",
                 first_scene: int = 0) -> None:
        if first_scene < 0:
            raise ValueError(f"first_scene must be >= 0, got {first_scene}")
        self.frames_per_scene = max(1, frames_per_scene)
        self._cache: dict[int, np.ndarray] = {}
        if image_folder:
            self.files = sorted(p for p in Path(image_folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
                if Path(image_folder).is_dir() else []
            if not self.files:
                raise ValueError(f"image_folder {image_folder!r} holds no PNG or JPEG files")
            self.num_scenes, self._render = len(self.files), self._read
        else:
            self.seed, self.num_scenes = seed, max(1, num_scenes)
            self._render = lambda i: render_scene(np.random.default_rng([self.seed, first_scene + i]))[0]

    def _read(self, i: int) -> np.ndarray:
        bgr = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot read image {self.files[i]}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __len__(self) -> int:
        return self.num_scenes * self.frames_per_scene

    def frame(self, k: int) -> np.ndarray:
        scene = (k // self.frames_per_scene) % self.num_scenes
        if scene not in self._cache:
            self._cache[scene] = self._render(scene)
        return self._cache[scene]


class DemoCamera(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("demo_camera", **kwargs)
        self.rate_hz = float(self.declare_parameter("rate_hz", 5.0).value)
        self.frame_id = str(self.declare_parameter("frame_id", "camera_optical_frame").value)
        self.loop = bool(self.declare_parameter("loop", True).value)
        self.source = FrameSource(seed=int(self.declare_parameter("seed", 0).value),
                                  num_scenes=int(self.declare_parameter("num_scenes", 20).value),
                                  frames_per_scene=int(self.declare_parameter("frames_per_scene", 10).value),
                                  image_folder=str(self.declare_parameter("image_folder", "").value),
                                  first_scene=int(self.declare_parameter("first_scene", 0).value))
        if self.rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        self.image_pub = self.create_publisher(Image, "image", qos_profile_sensor_data)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        self.count = 0
        self.done = False
        self.timer = self.create_timer(1.0 / self.rate_hz, self.publish)
        self.get_logger().info(f"publishing {len(self.source)} frames at {self.rate_hz:g} Hz on "
                               f"{self.image_pub.topic_name} ({'looping' if self.loop else 'once'})")

    def publish(self) -> None:
        if not self.loop and self.count >= len(self.source):
            self.timer.cancel()
            self.done = True
            return
        rgb = self.source.frame(self.count)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.frame_id)
        self.image_pub.publish(rgb_to_msg(rgb, header))
        self.info_pub.publish(pinhole_info(header, *rgb.shape[:2]))
        self.count += 1


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=sys.argv if args is None else args)
    code = 0
    node = None
    try:
        node = DemoCamera()
        while not node.done and spin_once_until_shutdown(node, timeout_sec=0.5):
            pass
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"demo_camera: {exc}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
