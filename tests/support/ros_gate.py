"""Whether the ROS tests can run here: rclpy and the generated pixellm_ros interfaces import (checked once).

Tests marked `ros` FAIL without them, with a message saying what to do, unless PIXELLM_ALLOW_NO_ROS=1 turns the
failure into a skip (e.g. after a plain `pip install -e .` with no ROS); see tests/conftest.py.
"""
from __future__ import annotations

import functools
import os

ALLOW_NO_ROS = os.environ.get("PIXELLM_ALLOW_NO_ROS") == "1"


@functools.cache
def ros_import_error() -> str | None:
    """None if ROS imports here, else why not. Called, not run at import: tests/conftest.py sets the ROS
    environment before anything imports rclpy."""
    try:
        import rclpy  # noqa: F401

        import pixellm_ros.action  # noqa: F401
        import pixellm_ros.msg  # noqa: F401
        import pixellm_ros.srv  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None

