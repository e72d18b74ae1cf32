"""The node driven the way a robotics user drives it: `ros2 launch pixellm_ros ...`, then `ros2 lifecycle`,
`ros2 topic`, `ros2 service`, `ros2 action`, `ros2 param` and `ros2 run`, each a process of its own.

Needs the ROS 2 launch system and CLI: from a ROS install, or installed into .venv by `make setup` from
../shared/vendor/ros2_launch_cli (scripts/setup_env.sh, phase launch_tools); without them every test here
skips, saying what is missing. All processes see ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and this run's
ROS_DOMAIN_ID (tests/conftest.py); every CLI call that could use the ROS 2 daemon runs with --no-daemon, and
the last test checks that no daemon was started. Waits are condition waits under DEADLINE_S; a CLI call that
reports "Node not found" (its discovery window was too short on a loaded machine) is repeated.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.ros_cli import (ROOT, VENV_BIN, Background, launch_tools_missing, wait_subscribed,
                                   wait_until_active, write_params)
from tests.support.ros_helpers import DEADLINE_S

pytestmark = pytest.mark.ros

CAMERA_TOPIC = "/cli_cam/image_raw"  # the launch's image:= argument: the node's `image` is remapped to it
NAMESPACE = "cli_ns"
MAX_NEW_TOKENS = 24  # the launch argument; the params file says 32


def cli_env() -> dict[str, str]:
    """The environment of every ros2 process: this venv's bin first, its prefix on AMENT_PREFIX_PATH."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    return env


@pytest.fixture(scope="module")
def tools():
    reason = launch_tools_missing()
    if reason:
        pytest.skip(reason)
    return cli_env()


def ros2(env: dict[str, str], *args: str, timeout: float = DEADLINE_S, check: bool = True,
         retry_not_found: bool = True) -> subprocess.CompletedProcess:
    """Run `ros2 ARGS...`; repeat while it says 'Node not found' (discovery), up to `timeout` in all."""
    deadline = time.monotonic() + timeout
    while True:
        left = max(1.0, deadline - time.monotonic())
        done = subprocess.run(["ros2", *args], env=env, capture_output=True, text=True, timeout=left, cwd=ROOT)
        out = done.stdout + done.stderr
        print(f"[{time.monotonic() - deadline + timeout:6.1f} s] ros2 {' '.join(args)[:80]} -> {done.returncode}"
              + (" (Node not found)" if "Node not found" in out else ""))
        if retry_not_found and "Node not found" in out and time.monotonic() < deadline:
            continue
        if check:
            assert done.returncode == 0, f"ros2 {' '.join(args)} exited with {done.returncode}:\n{out}"
        return done


def declared_arguments(launch_file: Path) -> set[str]:
    return set(re.findall(r'DeclareLaunchArgument\(\s*"(\w+)"', launch_file.read_text()))


# ------------------------------------------------------------------------------------------------ launch args
@pytest.mark.parametrize("name", ["pixellm.launch.py", "demo.launch.py"])
def test_show_args_lists_every_launch_argument(tools, name):
    out = ros2(tools, "launch", "pixellm_ros", name, "--show-args").stdout
    shown = set(re.findall(r"^    '(\w+)':$", out, re.M))
    declared = declared_arguments(ROOT / "launch" / name)
    assert declared and declared <= shown, f"declared {sorted(declared)}, shown {sorted(shown)}:\n{out}"
    if name == "pixellm.launch.py":  # the default params file is the installed copy of config/pixellm.yaml
        assert re.search(r"default: '.*/share/pixellm_ros/config/pixellm\.yaml'", out), out


# ------------------------------------------------------------------------- a node launched with autostart:=true
@pytest.fixture(scope="module")
def active_node(tools, scripted_model, tmp_path_factory):
    """`ros2 launch pixellm_ros pixellm.launch.py autostart:=true ...` + `ros2 run pixellm_ros demo_camera`.

    Waits for `active` the way README tells a planner to: `ros2 topic echo --once` of ~/transition_event,
    filtered on goal_state active, subscribed before the node starts, and ~/get_state (wait_until_active). Yields
    (env, launch, the echoed transition event or None when get_state said active first).
    """
    tmp = tmp_path_factory.mktemp("launch_cli")
    params = write_params(tmp / "params.yaml")
    started: list[Background] = []
    try:
        waiter = Background(["topic", "echo", "--once", "--no-daemon", "--filter", "m.goal_state.id == 3",
                             "/pixellm/transition_event", "lifecycle_msgs/msg/TransitionEvent"],
                            tools, tmp / "transition_event.log")
        started.append(waiter)
        wait_subscribed("/pixellm/transition_event", "`ros2 topic echo` to subscribe ~/transition_event")
        launch = Background(["launch", "pixellm_ros", "pixellm.launch.py", "autostart:=true",
                             f"model_path:={scripted_model}", f"params_file:={params}", f"image:={CAMERA_TOPIC}",
                             f"max_new_tokens:={MAX_NEW_TOKENS}"], tools, tmp / "launch.log")
        started.append(launch)
        transition = wait_until_active(tools, waiter)
        assert launch.proc.poll() is None, f"ros2 launch exited:\n{launch.log()}"
        camera = Background(["run", "pixellm_ros", "demo_camera", "--ros-args", "-r", f"image:={CAMERA_TOPIC}",
                             "-p", "rate_hz:=5.0"], tools, tmp / "camera.log")
        started.append(camera)
        # Until the node has frames: its /diagnostics count them (the standard tools again, no NO_IMAGE polling).
        ros2(tools, "topic", "echo", "--once", "--no-daemon", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
             "--filter", "any(kv.key == 'frames_received_camera' and int(kv.value) > 0 "
             "for s in m.status for kv in s.values)", timeout=2 * DEADLINE_S)
        yield tools, launch, transition
    finally:
        for proc in reversed(started):
            code = proc.interrupt()
            print(f"--- ros2 {' '.join(proc.args[:3])} exited with {code} ---\n{proc.log()}")


def test_autostart_reaches_active_seen_with_standard_tools(active_node):
    env, launch, transition = active_node
    if transition is not None:  # delivered when the node's publisher had matched the echo in time (not promised)
        assert re.search(r"goal_state:\s+id: 3\s+label: active", transition), transition
    assert ros2(env, "lifecycle", "get", "/pixellm", "--no-daemon").stdout.strip() == "active [3]"
    # launch arguments reached the node: max_new_tokens:= overrides the params file's 32
    got = ros2(env, "param", "get", "/pixellm", "max_new_tokens", "--no-daemon", "--timeout", "10").stdout
    assert got.strip() == f"Integer value is: {MAX_NEW_TOKENS}", got
    assert ros2(env, "param", "get", "/pixellm", "num_threads", "--no-daemon", "--timeout", "10").stdout.strip() \
        == "Integer value is: 1"  # from params_file


def test_topic_pub_query_answer_echoed(active_node, tmp_path):
    """A question on /query (std_msgs/String) is answered on /pixellm/answer, from the remapped camera's frames."""
    env, launch, _ = active_node
    echo = Background(["topic", "echo", "--once", "--no-daemon", "/pixellm/answer", "std_msgs/msg/String"], env,
                      tmp_path / "echo.log")
    try:
        wait_subscribed("/pixellm/answer", "`ros2 topic echo` to subscribe /pixellm/answer")
        # The node may match the echo's subscription only after an answer was published (the graph says nothing
        # about the node's side): ask again until the echo has one, each `pub -w 1` waiting for the node.
        deadline = time.monotonic() + DEADLINE_S
        while echo.proc.poll() is None:
            assert time.monotonic() < deadline, f"no answer on /pixellm/answer:\n{echo.log()}\n{launch.log()}"
            ros2(env, "topic", "pub", "--once", "-w", "1", "/query", "std_msgs/msg/String",
                 "{data: 'Where is the cup?'}")
            try:
                echo.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        out = echo.log()
    finally:
        echo.interrupt()
    assert re.search(r"^data: .*cup", out, re.M), out


def test_service_call_segment(active_node):
    env, _, _ = active_node
    out = ros2(env, "service", "call", "/pixellm/segment", "pixellm_ros/srv/Segment",
               "{query: {id: 'cli', text: 'Where is the cup?'}}").stdout
    response = out.split("response:", 1)[1]
    assert "query_id='cli'" in response and re.search(r"\bstatus=0\b", response), response[:2000]
    assert re.search(r"answer='[^']*cup", response), response[:2000]


def test_action_send_goal_with_feedback(active_node):
    env, _, _ = active_node
    out = ros2(env, "action", "send_goal", "/pixellm/ask", "pixellm_ros/action/Ask",
               "{query: {id: 'goal', text: 'Where is the cup?'}}", "--feedback").stdout
    assert "Goal accepted" in out and "Feedback:" in out and "partial_answer: the" in out, out[:3000]
    assert "Goal finished with status: SUCCEEDED" in out, out[-3000:]
    assert re.search(r"query_id: goal\s", out) and re.search(r"^\s+status: 0$", out, re.M), out[-3000:]


# ------------------------------------------------------------------------ autostart:=false, driven by the CLI
def test_lifecycle_set_and_param_set_in_a_namespace(tools, scripted_model, tmp_path):
    """autostart:=false in a namespace: configure/activate/deactivate/cleanup with `ros2 lifecycle set`; a
    model_path outside model_root is refused at configure, one inside it is loaded; Ctrl-C ends it all with 0."""
    node = f"/{NAMESPACE}/pixellm"
    root = scripted_model.parent  # model_root: the folder holding the start-up model_path
    inside = root / f"second_{tmp_path.name}"
    outside = tmp_path / "outside"
    shutil.copytree(scripted_model, inside)
    shutil.copytree(scripted_model, outside)
    launch = Background(["launch", "pixellm_ros", "pixellm.launch.py", "autostart:=false",
                         f"namespace:={NAMESPACE}", f"model_path:={scripted_model}",
                         f"params_file:={write_params(tmp_path / 'params.yaml')}"], tools, tmp_path / "launch.log")
    try:
        def lifecycle(*args: str) -> str:
            done = ros2(tools, "lifecycle", *args, "--no-daemon", check=False)
            return (done.stdout + done.stderr).strip()

        def state() -> str:
            return lifecycle("get", node)

        # Waiting for the node with the standard tools: `ros2 service call` waits for ~/get_state to appear.
        first = ros2(tools, "service", "call", f"{node}/get_state", "lifecycle_msgs/srv/GetState").stdout
        assert "label='unconfigured'" in first, first
        assert state() == "unconfigured [1]"
        assert lifecycle("set", node, "configure") == "Transitioning successful" and state() == "inactive [2]"
        assert lifecycle("set", node, "activate") == "Transitioning successful" and state() == "active [3]"
        assert lifecycle("set", node, "deactivate") == "Transitioning successful" and state() == "inactive [2]"
        assert lifecycle("set", node, "cleanup") == "Transitioning successful" and state() == "unconfigured [1]"

        def param_set(value: Path) -> str:
            done = ros2(tools, "param", "set", node, "model_path", str(value), "--no-daemon", "--timeout", "10",
                        check=False)
            return (done.stdout + done.stderr).strip()

        # Outside model_root: the value is stored, but configure refuses it (and says why).
        assert param_set(outside) == "Set parameter successful"
        assert lifecycle("set", node, "configure") == "Transitioning failed" and state() == "unconfigured [1]"
        assert "outside model_root" in launch.log()
        # Inside model_root: the next configure takes it, activate loads it.
        assert param_set(inside) == "Set parameter successful"
        got = ros2(tools, "param", "get", node, "model_path", "--no-daemon", "--timeout", "10").stdout.strip()
        assert got == f"String value is: {inside}"
        assert lifecycle("set", node, "configure") == "Transitioning successful"
        assert f"configured: model {inside}" in launch.log()
        assert lifecycle("set", node, "activate") == "Transitioning successful" and state() == "active [3]"
        assert f"active: {inside.name} on" in launch.log()
        code = launch.interrupt()  # Ctrl-C: launch forwards SIGINT, the node shuts down, nothing is left
        assert code == 0, f"ros2 launch exited with {code} on SIGINT\n{launch.log()}"
    finally:
        launch.interrupt()
        print(f"--- ros2 launch ---\n{launch.log()}")
        shutil.rmtree(inside, ignore_errors=True)


def test_no_ros2_daemon_was_started(tools):
    """--no-daemon everywhere: no daemon of this run's ROS_DOMAIN_ID (if one is there, it is stopped, and this fails)."""
    domain = os.environ["ROS_DOMAIN_ID"]
    daemons = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"_ros2_daemon") for a in args[:2]) and f"--ros-domain-id\0{domain}\0".encode() \
                in b"\0".join(args) + b"\0":
            daemons.append(int(cmdline.parent.name))
    if daemons:
        ros2(tools, "daemon", "stop", check=False)
    assert not daemons, f"ros2 daemon(s) {daemons} were started for ROS_DOMAIN_ID {domain}"


def test_make_demo_runs_through_ros2_launch(tools, scripted_model, tmp_path):
    """`make demo` (pixellm_ros.demo) with the launch tools: demo.launch.py rviz:=false, the planner's lines
    printed, one overlay per question, the launch over when the planner is done."""
    from pixellm_ros.demo_planner import QUESTIONS

    out = tmp_path / "demo_out"
    done = subprocess.run([sys.executable, "-m", "pixellm_ros.demo", "--launch", "yes", "--model", str(scripted_model),
                           "--out", str(out), "--max-new-tokens", "16", "--timeout", str(4 * DEADLINE_S)],
                          env=tools, cwd=ROOT, capture_output=True, text=True, timeout=5 * DEADLINE_S)
    log = (out / "logs" / "launch.log").read_text(errors="replace") if (out / "logs" / "launch.log").exists() else ""
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n--- launch log ---\n{log}"
    assert "demo.launch.py rviz:=false" in done.stderr and "(ros2 launch)" in done.stdout
    assert f"summary: {len(QUESTIONS)}/{len(QUESTIONS)} answered" in done.stdout, done.stdout
    assert sorted(p.name for p in out.glob("answer_*.png")) == [f"answer_{k}.png" for k in range(len(QUESTIONS))]
    assert "[demo_planner-" not in done.stdout  # the launch prefixes are stripped: the same lines as without launch
    assert re.search(r"\[pixellm_node-\d+\]: process has finished cleanly", log), log[-3000:]
