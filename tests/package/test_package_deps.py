"""package.xml declares every ROS package the code and interfaces use (the layers: tests/test_layers.py).

Runs without ROS: it reads files (and asks the ament index, when there is one, which names are ROS packages).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from tests.support.import_graph import (PACKAGE, ROOT, imported_modules, is_ros_package,  # tests/ (conftest.py)
                                        python_files)


def package_deps() -> dict[str, set[str]]:
    """{tag: {package}} of package.xml, e.g. {"depend": {"std_msgs", ...}, "exec_depend": {...}}."""
    deps: dict[str, set[str]] = {}
    for el in ET.parse(ROOT / "package.xml").getroot():
        if el.tag.endswith("depend"):
            deps.setdefault(el.tag, set()).add(el.text.strip())
    return deps


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


def test_imported_modules_resolves_relative_and_dynamic_imports(tmp_path):
    path = tmp_path / PACKAGE / "model" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text("from . import a\nfrom ..engine import E\nimport importlib\nimportlib.import_module('rclpy')\n")
    assert imported_modules(path, tmp_path) == {f"{PACKAGE}.model", f"{PACKAGE}.model.a", f"{PACKAGE}.engine",
                                                f"{PACKAGE}.engine.E", "importlib", "rclpy"}
