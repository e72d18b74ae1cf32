"""Test-wide setup: isolate the ROS 2 traffic of this test run.

Set at import time (before any test module imports rclpy) and in os.environ, so that the child
processes the tests start inherit it:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the machine.
- ROS_DOMAIN_ID from the pid, in 1..101: parallel test runs on one machine don't see each other.
- ROS_LOG_DIR in a temp dir: rclpy.init() needs it (or HOME), and logs don't pile up in ~/.ros.
- Fast DDS shared-memory files of ROS processes that died without cleaning up are removed (fastdds_shm.py):
  left there, they slow every later node down.
Gating of the tests that need ROS: tests/ros/conftest.py.
"""
import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastdds_shm import clean_zombie_shm  # noqa: E402

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 101)
os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="pixellm_ros_test_log_")
atexit.register(shutil.rmtree, os.environ["ROS_LOG_DIR"], ignore_errors=True)
_zombies = clean_zombie_shm()
if _zombies:
    logging.getLogger(__name__).warning("removed %d Fast DDS shared-memory files of dead processes", len(_zombies))
