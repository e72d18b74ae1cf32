"""pip install for users without ROS: `pip install -e .` gives pixellm_ros.model/engine/chat and training.

ROS builds use CMakeLists.txt (ament_cmake), which also generates pixellm_ros.msg/srv/action.
The distribution name differs from the ROS package name on purpose: CMake installs a `pixellm_ros`
egg-info without a file list, and pip would delete the whole installed package (generated interfaces
included) when "replacing" a distribution of the same name.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

# package.xml holds the one version number.
VERSION = re.search(r"<version>([^<]+)</version>", (Path(__file__).parent / "package.xml").read_text()).group(1)

setup(
    name="pixellm-ros-py",
    version=VERSION,
    description="PixelLM reasoning segmentation (model, engine, chat CLI) and its ROS 2 node",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pixellm_ros", "pixellm_ros.*", "training", "training.*"]),
    install_requires=[
        "torch", "numpy>=2", "sentencepiece", "safetensors", "pillow", "opencv-python-headless", "pyyaml", "tqdm",
    ],
    entry_points={
        "console_scripts": [
            "pixellm_chat = pixellm_ros.chat:main",
            # ROS 2 executables (need rclpy and the generated interfaces); a ROS build installs the same three
            # into lib/pixellm_ros from scripts/ros/ (CMakeLists.txt) for `ros2 run` and the launch files.
            "pixellm_node = pixellm_ros.node:main",
            "demo_camera = pixellm_ros.demo_camera:main",
            "demo_planner = pixellm_ros.demo_planner:main",
        ],
    },
)
