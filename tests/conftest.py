"""Test-wide setup: isolate the ROS 2 traffic of this test run.

Set at import time (before any test module imports rclpy) and in os.environ, so that the child
processes the tests start inherit it:
- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the machine.
- ROS_DOMAIN_ID from the pid, in 1..101: parallel test runs on one machine don't see each other.
- ROS_LOG_DIR in a temp dir: rclpy.init() needs it (or HOME), and logs don't pile up in ~/.ros.
Gating of the tests that need ROS: tests/ros/conftest.py.
"""
import atexit
import os
import shutil
import tempfile

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 101)
os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix="pixellm_ros_test_log_")
atexit.register(shutil.rmtree, os.environ["ROS_LOG_DIR"], ignore_errors=True)
