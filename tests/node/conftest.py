"""Fixtures of the node tests: an in-process node with its executor, the peer process of the cross-process tests.

Without ROS (tests/support/ros_gate.py) the modules that import ROS at the top (test_ros_*.py) are not collected;
the tests marked `ros` then fail, or skip with PIXELLM_ALLOW_NO_ROS=1 (tests/conftest.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.ros_gate import ros_import_error

if ros_import_error():
    collect_ignore_glob = ["test_ros_*.py"]


@pytest.fixture
def ros_node():
    """A node in its own context with a single-threaded executor; tests spin it with ros_helpers.spin_*."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("pixellm_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown(context=context)


@pytest.fixture
def start_peer(tmp_path: Path):
    """start_peer(MODE, *ARGS) -> ros_helpers.Peer running ros_peer.py; stopped (SIGINT) after the test."""
    from tests.support.ros_helpers import Peer

    peers = []

    def start(*args: str) -> Peer:
        peer = Peer(tmp_path / f"peer{len(peers)}.log", *args)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        code = peer.stop()
        print(f"--- peer {peer.proc.args[3:]} exited with {code} ---\n{peer.log()}")


def pytest_terminal_summary(terminalreporter) -> None:
    if ros_import_error():
        terminalreporter.write_line(f"ROS tests not run: {ros_import_error()}; the cross-process tests "
                                    f"({', '.join(collect_ignore_glob)}) were not collected.", yellow=True)

