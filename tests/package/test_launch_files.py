"""STRUCTURE test of launch/*.launch.py, runs without ROS (the real `ros2 launch` tests: test_launch_cli.py).

The modules `launch`, `launch_ros` and `ament_index_python` are replaced by tiny recording fakes; each launch
file's generate_launch_description() is executed (OpaqueFunctions called, included launch files followed) and
the recorded actions are checked: every executable exists (setup.py console_scripts + scripts/ros/ installed
by CMakeLists.txt, or another package declared in package.xml), every referenced file exists in the repository
(share/pixellm_ros maps onto the repo root, as CMakeLists.txt installs launch/ and config/ there), and the
parameter files parse with the `/**: ros__parameters:` layout. Runs without ROS.
"""
from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARE = "/fake_install/share/pixellm_ros"  # what the fake get_package_share_directory("pixellm_ros") returns
LAUNCH_FILES = sorted((ROOT / "launch").glob("*.launch.py"))


def repo_path(path: str) -> Path:
    """An installed share/pixellm_ros path -> the repository file it is installed from."""
    assert path.startswith(SHARE + "/"), f"{path} is not under the package share directory"
    return ROOT / path[len(SHARE) + 1:]


class Recorded:
    """A fake launch class: keeps its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context) -> str:
        return context[self.args[0]]


def fake_modules() -> dict[str, types.ModuleType]:
    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        return m

    def cls(name):
        return type(name, (Recorded,), {})

    def share(package):
        return SHARE if package == "pixellm_ros" else f"/fake_install/share/{package}"

    return {
        "launch": module("launch", LaunchDescription=cls("LaunchDescription")),
        "launch.actions": module("launch.actions", **{n: cls(n) for n in (
            "DeclareLaunchArgument", "OpaqueFunction", "IncludeLaunchDescription", "GroupAction", "SetEnvironmentVariable",
            "RegisterEventHandler", "EmitEvent")}),
        "launch.event_handlers": module("launch.event_handlers", OnProcessExit=cls("OnProcessExit")),
        "launch.events": module("launch.events", Shutdown=cls("Shutdown")),
        "launch.substitutions": module("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
                                       PathJoinSubstitution=cls("PathJoinSubstitution")),
        "launch.conditions": module("launch.conditions", IfCondition=cls("IfCondition"),
                                    UnlessCondition=cls("UnlessCondition")),
        "launch.launch_description_sources": module("launch.launch_description_sources",
                                                    PythonLaunchDescriptionSource=cls("PythonLaunchDescriptionSource")),
        "launch_ros": module("launch_ros"),
        "launch_ros.actions": module("launch_ros.actions", Node=cls("Node"), LifecycleNode=cls("LifecycleNode")),
        "ament_index_python": module("ament_index_python"),
        "ament_index_python.packages": module("ament_index_python.packages", get_package_share_directory=share),
    }


@pytest.fixture
def fakes(monkeypatch):
    for name, mod in fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)


def value(x, context: dict) -> str:
    return x.perform(context) if isinstance(x, LaunchConfiguration) else x


def run_launch_file(path: Path, arguments: dict | None = None) -> tuple[list[Recorded], list[Path], dict]:
    """Execute a launch file: (Node actions, files it reads, launch arguments with their values)."""
    spec = importlib.util.spec_from_file_location(f"launch_under_test_{path.stem.replace('.', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    description = mod.generate_launch_description()
    assert type(description).__name__ == "LaunchDescription"
    context: dict = {}
    nodes, files = [], [path]
    for action in description.args[0]:
        kind = type(action).__name__
        if kind == "DeclareLaunchArgument":
            name = action.args[0]
            assert action.kwargs.get("description"), f"{path.name}: launch argument {name} has no description"
            context[name] = (arguments or {}).get(name, action.kwargs.get("default_value"))
        elif kind == "OpaqueFunction":
            for sub in action.kwargs["function"](context):
                assert type(sub).__name__ == "Node"
                nodes.append(sub)
        elif kind == "IncludeLaunchDescription":
            included = repo_path(action.args[0].args[0])
            args = {k: value(v, context) for k, v in action.kwargs.get("launch_arguments", [])}
            sub_nodes, sub_files, sub_context = run_launch_file(included, args)
            assert not set(args) - set(sub_context), f"{path.name} passes undeclared arguments to {included.name}"
            nodes += sub_nodes
            files += sub_files
        elif kind == "Node":
            nodes.append(action)
        elif kind == "RegisterEventHandler":  # on a process exit: must watch a node of this file, and shut down
            handler = action.args[0]
            assert type(handler).__name__ == "OnProcessExit" and handler.kwargs["target_action"] in nodes
            assert [type(a.kwargs["event"]).__name__ for a in handler.kwargs["on_exit"]] == ["Shutdown"]
        else:
            raise AssertionError(f"{path.name}: unexpected action {kind}")
    return nodes, files, context


def console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"(\w+) = ([\w.]+:\w+)"', text))


def cmake_programs() -> set[str]:
    cmake = (ROOT / "CMakeLists.txt").read_text()
    block = re.search(r"install\(PROGRAMS([^)]*)DESTINATION lib/\$\{PROJECT_NAME\}\)", cmake)
    assert block, "CMakeLists.txt installs no PROGRAMS into lib/${PROJECT_NAME}"
    return {Path(p).name for p in block.group(1).split()}


def exec_depends() -> set[str]:
    xml = (ROOT / "package.xml").read_text()
    return set(re.findall(r"<(?:exec_)?depend>([\w]+)</(?:exec_)?depend>", xml))


def check_params_file(path: Path) -> None:
    assert path.is_file(), f"parameter file {path.relative_to(ROOT)} does not exist"
    params = yaml.safe_load(path.read_text())
    assert isinstance(params, dict) and "/**" in params, f"{path.name}: no `/**:` section"
    assert isinstance(params["/**"].get("ros__parameters"), dict), f"{path.name}: no `/**: ros__parameters:`"


def test_there_are_launch_files():
    assert {p.name for p in LAUNCH_FILES} >= {"pixellm.launch.py", "demo.launch.py"}


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_structure(fakes, path):
    nodes, files, _ = run_launch_file(path)
    assert nodes, f"{path.name} starts no node"
    scripts, programs, depends = console_scripts(), cmake_programs(), exec_depends()
    for node in nodes:
        package, executable = node.kwargs["package"], node.kwargs["executable"]
        if package == "pixellm_ros":
            assert executable in scripts, f"{executable} is not a console_script in setup.py"
            module, func = scripts[executable].split(":")
            source = ROOT / (module.replace(".", "/") + ".py")
            wrapper = ROOT / "scripts" / "ros" / executable
            assert wrapper.is_file() and executable in programs, \
                f"{executable}: scripts/ros/{executable} must exist and be installed by CMakeLists.txt"
            assert f"from {module} import {func}" in wrapper.read_text()
            if source.exists():  # pixellm_ros/node.py may come later than the launch files
                assert re.search(rf"^def {func}\(", source.read_text(), re.M), f"{source.name} has no {func}()"
        else:
            assert package in depends, f"{path.name} runs {package}, not declared in package.xml"
        for p in node.kwargs.get("parameters", []):
            if isinstance(p, str):
                files.append(repo_path(p))
                check_params_file(repo_path(p))
        args = node.kwargs.get("arguments", [])
        if "-d" in args:
            files.append(repo_path(args[args.index("-d") + 1]))
    for f in files:
        assert f.is_file(), f"{path.name} references {f}, which does not exist in the repository"


def test_pixellm_launch_arguments_reach_the_node(fakes):
    nodes, _, context = run_launch_file(ROOT / "launch" / "pixellm.launch.py", {
        "model_path": "/models/7b", "image": "/cam/color", "namespace": "robot1", "autostart": "false",
        "max_new_tokens": "64"})
    (node,) = nodes
    assert set(context) >= {"params_file", "model_path", "max_new_tokens", "image", "namespace", "autostart"}
    assert node.kwargs["executable"] == "pixellm_node" and node.kwargs["namespace"] == "robot1"
    params_file, overrides = node.kwargs["parameters"]
    assert params_file == SHARE + "/config/pixellm.yaml"
    assert overrides == {"model_path": "/models/7b", "autostart": False, "max_new_tokens": 64}
    assert ("image", "/cam/color") in node.kwargs["remappings"]
    (default,), _, _ = run_launch_file(ROOT / "launch" / "pixellm.launch.py")
    assert default.kwargs["parameters"][1] == {"autostart": True}  # the YAML's model_path is kept


def test_rviz_config_shows_the_node_outputs():
    rviz = yaml.safe_load((ROOT / "config" / "pixellm.rviz").read_text())
    manager = rviz["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "camera_optical_frame"
    topics = {d["Topic"]["Value"]: d["Class"] for d in manager["Displays"] if "Topic" in d}
    assert topics == {"/pixellm/overlay": "rviz_default_plugins/Image",
                      "/pixellm/masks/label": "rviz_default_plugins/Image",
                      "/pixellm/masks/target_1": "rviz_default_plugins/Image",
                      "/pixellm/points": "rviz_default_plugins/PointCloud2"}


def test_demo_camera_holds_the_demo_scene(fakes):
    """make demo asks every question of one known scene (pixellm_ros.scenes.DEMO_SCENE unless scene:= says)."""
    from pixellm_ros.scenes import DEMO_SCENE, DEMO_SEED

    for arguments, scene in (({}, str(DEMO_SCENE)), ({"scene": "7"}, "7")):
        nodes, _, context = run_launch_file(ROOT / "launch" / "demo.launch.py", arguments)
        (camera,) = [n for n in nodes if n.kwargs["executable"] == "demo_camera"]
        (params,) = camera.kwargs["parameters"]
        assert {k: value(v, context) for k, v in params.items() if k != "rate_hz"} == {
            "seed": DEMO_SEED, "num_scenes": 1, "first_scene": scene}
