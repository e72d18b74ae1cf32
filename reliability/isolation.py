"""Isolate the ROS 2 traffic of a test or benchmark run (tests/conftest.py and benchmarks/reliability.py call it
first thing, before anything imports rclpy). Set in os.environ, so that the child processes inherit it:

- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the machine.
- ROS_DOMAIN_ID from the pid, in 1..101: parallel runs on one machine don't see each other.
- ROS_LOG_DIR in a temp dir (removed at exit): rclpy.init() needs it (or HOME), and logs don't pile up in ~/.ros.
- Fast DDS shared-memory files of ROS processes that died without cleaning up are removed (fastdds_shm.py):
  left there, they slow every later node down.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

from reliability.fastdds_shm import clean_zombie_shm

log = logging.getLogger(__name__)


def isolate_ros(log_prefix: str = "pixellm_ros_test_log_") -> None:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(1 + os.getpid() % 101)
    os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix=log_prefix)
    atexit.register(shutil.rmtree, os.environ["ROS_LOG_DIR"], ignore_errors=True)
    zombies = clean_zombie_shm()
    if zombies:
        log.warning("removed %d Fast DDS shared-memory files of dead processes", len(zombies))
