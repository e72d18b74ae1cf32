"""Driving the ROS 2 command line from tests: whether `ros2 launch` can run here, a `ros2 ...` process in its own
process group (stopped the way Ctrl-C stops it, nothing of it left behind), a small params file, a wait for a
subscription to appear in the graph, and the README's wait for a node to become active. Shared by tests/package/test_launch_cli.py and test_colcon.py."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from tests.support.ros_helpers import DEADLINE_S, STOP_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def launch_tools_missing() -> str | None:
    """Why `ros2 launch` cannot run here, or None."""
    missing = [m for m in ("launch", "launch_ros", "ros2launch", "ros2cli", "ros2lifecycle", "ros2topic",
                           "composition_interfaces") if find_spec(m) is None]
    if find_spec("launch") is not None and find_spec("launch").origin is None:
        missing.insert(0, "launch (only the repository's launch/ folder imports as `launch`)")
    ros2 = shutil.which("ros2", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    if ros2 is None:
        missing.append("the `ros2` command")
    if missing:
        return (f"ROS 2 launch tools not installed ({', '.join(missing)} missing): `make setup` installs them "
                "from ../shared/vendor/ros2_launch_cli (or PIXELLM_LAUNCH_VENDOR), or source a ROS 2 install")
    return None


def process_group_alive(pgid: int) -> list[int]:
    """PIDs still in process group `pgid` (zombies left out)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Background:
    """A ros2 process in its own process group (so SIGINT reaches it as Ctrl-C would, not ignored), logging to a file."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = ROOT
    proc: subprocess.Popen = field(init=False)

    def __post_init__(self) -> None:
        self._log = open(self.log_path, "wb")
        # SIGINT restored to its default: a test run started in the background of a script inherits it ignored,
        # and a launch that ignores it cannot be stopped the way Ctrl-C stops it.
        self.proc = subprocess.Popen(["ros2", *self.args], env=self.env, cwd=self.cwd, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=default_sigint)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, what: str, timeout: float = DEADLINE_S) -> str:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n--- log ---\n{self.log()}")
        return self.log()

    def interrupt(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGINT to the ros2 process (Ctrl-C); returns its exit code. Afterwards nothing of its group is left."""
        pgid = self.proc.pid
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait()
        deadline = time.monotonic() + timeout
        while process_group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in process_group_alive(pgid):  # a child that outlived its launch: not a clean stop
            os.kill(pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode


def write_params(path: Path) -> Path:
    """A node params file (`/**: ros__parameters:`): small answers, one thread, no frame age limit."""
    path.write_text("/**:\n  ros__parameters:\n    max_new_tokens: 32\n    num_threads: 1\n"
                    "    max_image_age_s: 0.0\n    diagnostics_period_s: 0.5\n")
    return path


def wait_subscribed(topic: str, what: str) -> None:
    """Until some subscription on `topic` is visible in the ROS graph (seen from a node of this process)."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("pixellm_cli_test_graph", context=context)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while node.count_subscribers(topic) == 0:
            assert time.monotonic() < deadline, f"timed out after {DEADLINE_S:.0f} s waiting for {what}"
            time.sleep(0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def wait_until_active(env: dict[str, str], waiter: Background, node: str = "/pixellm",
                      timeout: float = 2 * DEADLINE_S, cwd: Path = ROOT) -> str | None:
    """Until `node` is active, the way README tells a planner to wait: `waiter` (`ros2 topic echo --once` of
    ~/transition_event filtered on goal state active, subscribed before the node started) exits with the event, or
    ~/get_state says active. Both are needed: the event is volatile, and one the node publishes before its publisher
    has discovered the subscriber is not delivered (ROS 2 promises nothing before matching; on a loaded machine the
    first transitions can come that early). Returns the echoed event, or None when get_state said it first."""
    deadline = time.monotonic() + timeout
    while waiter.proc.poll() is None:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {timeout:.0f} s waiting for {node} to become active\n{waiter.log()}"
        try:  # `ros2 service call` waits for the service to appear
            state = subprocess.run(["ros2", "service", "call", f"{node}/get_state", "lifecycle_msgs/srv/GetState"],
                                   env=env, cwd=cwd, capture_output=True, text=True, timeout=min(left, 30)).stdout
        except subprocess.TimeoutExpired:
            continue
        if "label='active'" in state and waiter.proc.poll() is None:
            return None
        time.sleep(0.2)
    return waiter.log()
