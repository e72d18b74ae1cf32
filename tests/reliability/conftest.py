"""Reliability tests: short versions of the drivers benchmarks/reliability.py runs long. Without ROS
(tests/support/ros_gate.py) and with PIXELLM_ALLOW_NO_ROS=1 they are not collected (the drivers import ROS)."""
from __future__ import annotations

from tests.support.ros_gate import ALLOW_NO_ROS, ros_import_error

if ros_import_error() and ALLOW_NO_ROS:
    collect_ignore_glob = ["test_node_*.py"]
