"""Test-wide setup: isolate the ROS 2 traffic of this test run.

Set at import time (before any test module imports rclpy) and in os.environ, so that the child
processes the tests start inherit it:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the machine.
- ROS_DOMAIN_ID from the pid, in 1..101: parallel test runs on one machine don't see each other.
- ROS_LOG_DIR in a temp dir: rclpy.init() needs it (or HOME), and logs don't pile up in ~/.ros.
- Fast DDS shared-memory files of ROS processes that died without cleaning up are removed
  (tests/support/fastdds_shm.py): left there, they slow every later node down.
Then, for every test folder: the gating of the tests marked `ros` (tests/support/ros_gate.py) and the tiny
scripted model the node, package and reliability tests start the node with.
"""
import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.support.fastdds_shm import clean_zombie_shm
from tests.support.ros_gate import ALLOW_NO_ROS, ros_import_error

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 101)
os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="pixellm_ros_test_log_")
atexit.register(shutil.rmtree, os.environ["ROS_LOG_DIR"], ignore_errors=True)
_zombies = clean_zombie_shm()
if _zombies:
    logging.getLogger(__name__).warning("removed %d Fast DDS shared-memory files of dead processes", len(_zombies))


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
    """The tiny scripted model of tests/support/node_fixtures.py (answers cycle "the cup [SEG x6] and"), built once."""
    import torch

    from tests.support.node_fixtures import build_scripted_model

    torch.set_num_threads(1)
    return build_scripted_model(tmp_path_factory.mktemp("node_model") / "model")
