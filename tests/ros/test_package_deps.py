"""package.xml declares every ROS package the code and interfaces use, and the layers import only downwards.

Runs without ROS: it reads files (and asks the ament index, when there is one, which names are ROS packages).
"""
from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pixellm_ros"
# Module names that are ROS packages even where no ament index is installed.
ROS_NAME = re.compile(r"^(rclpy|rcl_\w+|rosidl_\w+|ament_\w+|launch|launch_\w+|\w+_msgs|\w+_srvs|\w+_interfaces"
                      r"|cv_bridge|sensor_msgs_py|message_filters|image_transport\w*|tf2_\w+|rosbag2_\w+|ros2\w*)$")


def _ament_packages() -> set[str]:
    """Packages in the ament index of AMENT_PREFIX_PATH and of this Python's prefix (a venv with ROS wheels)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    index = "share/ament_index/resource_index/packages"
    return {p.name for prefix in prefixes if (Path(prefix) / index).is_dir() for p in (Path(prefix) / index).iterdir()}


AMENT_PACKAGES = _ament_packages()


def is_ros_package(name: str) -> bool:
    return name != PACKAGE and (name in AMENT_PACKAGES or bool(ROS_NAME.match(name)))


def package_deps() -> dict[str, set[str]]:
    """{tag: {package}} of package.xml, e.g. {"depend": {"std_msgs", ...}, "exec_depend": {...}}."""
    deps: dict[str, set[str]] = {}
    for el in ET.parse(ROOT / "package.xml").getroot():
        if el.tag.endswith("depend"):
            deps.setdefault(el.tag, set()).add(el.text.strip())
    return deps


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules a Python file imports (relative imports resolved), incl. import_module("x")."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            names.add(node.args[0].value)
    return names


def python_files(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern) if "__pycache__" not in p.parts)


def interface_deps() -> set[str]:
    """ROS packages whose types the msg/srv/action files use (`pkg/Type` fields; actions need action_msgs)."""
    deps = set()
    for path in python_files("msg/*.msg", "srv/*.srv", "action/*.action"):
        for line in path.read_text().splitlines():
            field = line.split("#", 1)[0].split()
            if field and "/" in field[0]:
                deps.add(field[0].split("/")[0])
        if path.suffix == ".action":
            deps.add("action_msgs")
    return deps - {PACKAGE}


def test_interface_dependencies_declared():
    deps = package_deps()
    used = interface_deps()
    assert used, "no msg/srv/action files found"
    both = deps.get("depend", set()) | (deps.get("build_depend", set()) & deps.get("exec_depend", set()))
    assert not used - both, f"add <depend> to package.xml for: {sorted(used - both)}"
    cmake = (ROOT / "CMakeLists.txt").read_text()
    rosidl_deps = set(re.search(r"DEPENDENCIES([^)]*)\)", cmake).group(1).split())
    assert not used - rosidl_deps, f"add to DEPENDENCIES of rosidl_generate_interfaces: {sorted(used - rosidl_deps)}"
    missing_find = {d for d in used if f"find_package({d} REQUIRED)" not in cmake}
    assert not missing_find, f"add find_package(... REQUIRED) to CMakeLists.txt for: {sorted(missing_find)}"


def test_python_ros_imports_declared():
    deps = package_deps()
    runtime = deps.get("depend", set()) | deps.get("exec_depend", set())
    files = python_files(f"{PACKAGE}/**/*.py", "launch/**/*.py")
    assert files
    missing = {}
    for path in files:
        for name in imported_modules(path):
            top = name.split(".")[0]
            if is_ros_package(top) and top not in runtime:
                missing.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"add <exec_depend> (or <depend>) to package.xml for: {missing}"


def test_ros_package_classifier():
    for name in ("rclpy", "std_msgs", "sensor_msgs_py", "launch_ros", "cv_bridge", "vision_msgs"):
        assert is_ros_package(name), name
    for name in ("numpy", "torch", "cv2", "yaml", PACKAGE, "safetensors"):
        assert not is_ros_package(name), name


def test_imported_modules_resolves_relative_and_dynamic_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    path = tmp_path / PACKAGE / "model" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from . import a\nfrom ..engine import E\nimport importlib\nimportlib.import_module('rclpy')\n")
    assert imported_modules(path) == {f"{PACKAGE}.model", f"{PACKAGE}.model.a", f"{PACKAGE}.engine",
                                      f"{PACKAGE}.engine.E", "importlib", "rclpy"}


# Layers (ARCHITECTURE.md): node -> engine -> model. model and engine run without ROS.
LAYERS = {
    "model": (f"{PACKAGE}/model/**/*.py", (f"{PACKAGE}.model",)),
    "engine": (f"{PACKAGE}/engine*", (f"{PACKAGE}.model", f"{PACKAGE}.engine")),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_no_ros_and_points_down(layer):
    pattern, allowed = LAYERS[layer]
    files = [p for p in python_files(pattern, pattern + "/**/*.py") if p.suffix == ".py"]
    if not files:
        pytest.skip(f"no files match {pattern} yet")
    problems = []
    for path in files:
        for name in sorted(imported_modules(path)):
            top = name.split(".")[0]
            if is_ros_package(top):
                problems.append(f"{path.relative_to(ROOT)} imports ROS package {name}")
            elif top == PACKAGE and name != PACKAGE and not name.startswith(allowed):
                problems.append(f"{path.relative_to(ROOT)} imports {name} (the {layer} layer may only use {allowed})")
    assert not problems, "\n".join(problems)
