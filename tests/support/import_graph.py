"""What the repository's Python files import, read from their source (no import runs): used by the layer test
(tests/test_layers.py) and the package-dependency test (tests/package/test_package_deps.py)."""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

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


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of the modules a Python file imports (relative imports resolved against its place under
    `root`), incl. import_module("x") and __import__("x")."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
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
