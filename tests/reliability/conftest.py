"""Reliability tests (short versions of benchmarks/reliability.py): the drivers in this folder use the node
test helpers of tests/ros (node_fixtures), so that folder is put on sys.path. They need ROS like tests/ros."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import rclpy  # noqa: F401

    import pixellm_ros.msg  # noqa: F401
    ROS_ERROR = None
except ImportError as exc:
    ROS_ERROR = f"{type(exc).__name__}: {exc}"
    if os.environ.get("PIXELLM_ALLOW_NO_ROS") == "1":
        collect_ignore_glob = ["test_node_*.py"]


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """The tiny scripted model of tests/ros/node_fixtures.py, built once."""
    import torch
    from node_fixtures import build_scripted_model

    torch.set_num_threads(1)
    return build_scripted_model(tmp_path_factory.mktemp("reliability_model") / "model")
