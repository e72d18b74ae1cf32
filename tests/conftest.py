"""Test-wide setup: isolate the ROS 2 traffic of this test run (reliability/isolation.py: LOCALHOST discovery, a
per-run ROS_DOMAIN_ID, logs in a temp dir, Fast DDS files of dead processes removed), at import time, before any
test module imports rclpy. Then, for every test folder: the gating of the tests marked `ros`
(tests/support/ros_gate.py) and the tiny scripted model the node, package and reliability tests start the node with.
"""
from pathlib import Path

import pytest

from reliability.isolation import isolate_ros
from tests.support.ros_gate import ALLOW_NO_ROS, ros_import_error

isolate_ros()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("ros") is None or ros_import_error() is None:
        return
    reason = f"rclpy or the generated pixellm_ros interfaces do not import ({ros_import_error()})"
    if ALLOW_NO_ROS:
        pytest.skip(f"{reason}; PIXELLM_ALLOW_NO_ROS=1, so all ROS tests are skipped")
    pytest.fail(f"{reason}. Run `make setup` to build them, or set PIXELLM_ALLOW_NO_ROS=1 to skip ROS tests.",
                pytrace=False)


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """The tiny scripted model of reliability/node_process.py (answers cycle "the cup [SEG x6] and"), built once."""
    import torch

    from reliability.node_process import build_scripted_model

    torch.set_num_threads(1)
    return build_scripted_model(tmp_path_factory.mktemp("node_model") / "model")
