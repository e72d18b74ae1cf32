"""ROS test gating and fixtures.

Tests marked `ros` need rclpy and the generated pixellm_ros interfaces. Without them those tests FAIL
with a message saying what to do, unless PIXELLM_ALLOW_NO_ROS=1, which turns the failure into a skip
(e.g. after a plain `pip install -e .` with no ROS). Modules that import ROS at the top (test_ros_*.py)
are then not collected; test_interfaces.py reports the reason.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ALLOW_NO_ROS = os.environ.get("PIXELLM_ALLOW_NO_ROS") == "1"


def _ros_import_error() -> str | None:
    try:
        import rclpy  # noqa: F401

        import pixellm_ros.action  # noqa: F401
        import pixellm_ros.msg  # noqa: F401
        import pixellm_ros.srv  # noqa: F401
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


ROS_IMPORT_ERROR = _ros_import_error()
if ROS_IMPORT_ERROR:
    collect_ignore_glob = ["test_ros_*.py"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("ros") is None or ROS_IMPORT_ERROR is None:
        return
    reason = f"rclpy or the generated pixellm_ros interfaces do not import ({ROS_IMPORT_ERROR})"
    if ALLOW_NO_ROS:
        pytest.skip(f"{reason}; PIXELLM_ALLOW_NO_ROS=1, so all ROS tests are skipped")
    pytest.fail(f"{reason}. Run `make setup` to build them, or set PIXELLM_ALLOW_NO_ROS=1 to skip ROS tests.",
                pytrace=False)


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
    from ros_helpers import Peer

    peers = []

    def start(*args: str) -> Peer:
        peer = Peer(sys.executable, tmp_path / f"peer{len(peers)}.log", *args)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        code = peer.stop()
        print(f"--- peer {peer.proc.args[2:]} exited with {code} ---\n{peer.log()}")


def pytest_terminal_summary(terminalreporter) -> None:
    if ROS_IMPORT_ERROR:
        terminalreporter.write_line(f"ROS tests not run: {ROS_IMPORT_ERROR}; the cross-process tests "
                                    f"({', '.join(collect_ignore_glob)}) were not collected.", yellow=True)


# ------------------------------------------------------------------------ node tests (tests/ros/test_node*.py)
@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """The tiny scripted model of node_fixtures (answers cycle "the cup [SEG x6] and"), built once."""
    import torch
    from node_fixtures import build_scripted_model

    torch.set_num_threads(1)
    return build_scripted_model(tmp_path_factory.mktemp("node_model") / "model")
