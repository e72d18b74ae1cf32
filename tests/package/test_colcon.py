"""README's "In a ROS 2 workspace" path, for real: the working tree copied into a scratch workspace's src/,
`colcon build --packages-select pixellm_ros` against this venv (no /opt/ros), then the install space checked:
everything CMakeLists.txt must install is there, the generated interfaces and the package import from it,
`colcon test` runs the unit tests, and `ros2 launch` from the sourced install space runs the installed node
(where the launch tools are installed) until Ctrl-C ends it with 0.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support.ros_helpers import DEADLINE_S
from tests.support.ros_cli import (Background, launch_tools_missing, wait_subscribed, wait_until_active,
                                   write_params)

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PACKAGE = "pixellm_ros"
BUILD_TIMEOUT_S = 10 * DEADLINE_S  # a failure detector: 22 s idle, 90 s at load 8 on 2 cores


def tracked_files() -> list[str]:
    """The working tree as a clone would have it: tracked and untracked-but-not-ignored files that exist."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def base_env() -> dict[str, str]:
    """This venv as the 'underlay' a ROS install would be: its bin on PATH, its prefix on the ament/CMake paths."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[var] = os.pathsep.join(p for p in (sys.prefix, env.get(var, "")) if p)
    env.pop("PYTHONPATH", None)
    return env


def sourced_env(ws: Path, env: dict[str, str]) -> dict[str, str]:
    """`source install/local_setup.bash`: the environment it leaves."""
    out = subprocess.run(["bash", "-c", "source install/local_setup.bash && env -0"], cwd=ws, env=env,
                         capture_output=True, check=True).stdout.decode()
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line)


def run(cmd: list[str], ws: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """(workspace, base env, sourced env) after `colcon build --packages-select pixellm_ros`."""
    colcon = shutil.which("colcon", path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    if colcon is None:
        pytest.skip("colcon is not installed (colcon-common-extensions in requirements.txt: run `make setup`)")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the working tree is not a git checkout: no file list to copy into the workspace")
    ws = tmp_path_factory.mktemp("colcon_ws")
    src = ws / "src" / PACKAGE
    for f in tracked_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    env = base_env()
    run([colcon, "build", "--packages-select", PACKAGE, "--event-handlers", "console_direct-",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}"], ws, env, BUILD_TIMEOUT_S)
    return ws, env, sourced_env(ws, env)


def test_install_space_has_everything_cmake_installs(workspace):
    ws, _, _ = workspace
    prefix = ws / "install" / PACKAGE
    files = tracked_files()
    share = [f for f in files if f.split("/")[0] in ("launch", "config") and not f.endswith(".gitkeep")]
    assert {"launch/pixellm.launch.py", "launch/demo.launch.py", "config/pixellm.yaml"} <= set(share)
    missing = [f for f in share if not (prefix / "share" / PACKAGE / f).is_file()]
    assert not missing, f"not installed to share/{PACKAGE}: {missing}"
    programs = [Path(f).name for f in files if f.startswith("scripts/ros/")]
    assert set(programs) >= {"pixellm_node", "demo_camera", "demo_planner"}
    for name in programs:
        exe = prefix / "lib" / PACKAGE / name
        assert exe.is_file() and os.access(exe, os.X_OK), f"lib/{PACKAGE}/{name} is not an installed executable"
    site = next(prefix.glob(f"lib/python3*/site-packages/{PACKAGE}"))
    modules = [f for f in files if f.startswith(f"{PACKAGE}/") and f.endswith(".py")]
    missing = [f for f in modules if not (site.parent / f).is_file()]
    assert modules and not missing, f"Python package not installed: {missing}"
    for kind in ("msg", "srv", "action"):
        assert (site / kind / "__init__.py").is_file(), f"generated {PACKAGE}.{kind} missing"


def test_package_imports_from_the_install_space(workspace):
    ws, _, env = workspace
    code = ("import pixellm_ros.msg, pixellm_ros.srv, pixellm_ros.action, pixellm_ros.node, pixellm_ros.engine\n"
            "print('\\n'.join(m.__file__ for m in (pixellm_ros.msg, pixellm_ros.action, pixellm_ros.node)))")
    out = run([sys.executable, "-c", code], Path("/"), env, DEADLINE_S).stdout.split()
    install = str(ws / "install" / PACKAGE) + "/"
    assert len(out) == 3 and all(f.startswith(install) for f in out), out


def test_colcon_test_runs_the_unit_tests(workspace):
    ws, env, _ = workspace
    colcon = shutil.which("colcon", path=env["PATH"])
    run([colcon, "test", "--packages-select", PACKAGE, "--event-handlers", "console_direct-"], ws, env,
        BUILD_TIMEOUT_S)
    result = run([colcon, "test-result", "--all", "--verbose"], ws, env, DEADLINE_S).stdout
    xml = ws / "build" / PACKAGE / "test_results" / PACKAGE / "pytest_unit.xunit.xml"
    assert xml.is_file(), result
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("tests")) >= 20 and suite.get("failures") == "0" and suite.get("errors") == "0", result
    assert re.search(r"Summary: \d+ tests, 0 errors, 0 failures", result), result


def test_ros2_launch_runs_the_installed_node(workspace, scripted_model, tmp_path):
    reason = launch_tools_missing()
    if reason:
        pytest.skip(reason)
    ws, _, env = workspace
    prefix = ws / "install" / PACKAGE
    pkg = subprocess.run(["ros2", "pkg", "prefix", PACKAGE], cwd=ws, env=env, capture_output=True, text=True)
    assert pkg.stdout.strip() == str(prefix), pkg.stdout + pkg.stderr
    waiter = Background(["topic", "echo", "--once", "--no-daemon", "--filter", "m.goal_state.id == 3",
                         "/pixellm/transition_event", "lifecycle_msgs/msg/TransitionEvent"], env,
                        tmp_path / "transition_event.log", cwd=ws)
    launch = None
    try:
        wait_subscribed("/pixellm/transition_event", "`ros2 topic echo` to subscribe ~/transition_event")
        launch = Background(["launch", PACKAGE, "pixellm.launch.py", f"model_path:={scripted_model}",
                             f"params_file:={write_params(tmp_path / 'params.yaml')}"], env, tmp_path / "launch.log",
                            cwd=ws)
        wait_until_active(env, waiter, cwd=ws)
        assert "process started with pid" in launch.log()
        pid = int(re.search(r"\[pixellm_node-\d+\]: process started with pid \[(\d+)\]", launch.log()).group(1))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert any(a.decode() == str(prefix / "lib" / PACKAGE / "pixellm_node") for a in cmdline), cmdline
        # The generated typesupport it loaded (next to the Python package) is the install space's copy.
        maps = Path(f"/proc/{pid}/maps").read_text()
        loaded = set(re.findall(r"(/\S*pixellm_ros_s__rosidl_typesupport\w*\.so)", maps))
        assert loaded and all(p.startswith(str(prefix) + "/") for p in loaded), loaded
        code = launch.interrupt()
        assert code == 0, f"ros2 launch exited with {code} on SIGINT\n{launch.log()}"
        assert re.search(r"\[pixellm_node-\d+\]: process has finished cleanly", launch.log()), launch.log()
    finally:
        waiter.interrupt()
        if launch is not None:
            launch.interrupt()
            print(f"--- ros2 launch ---\n{launch.log()}")
