"""The model core is plain torch: no module of pixellm_ros/model imports ROS, directly or through
another pixellm_ros module it imports."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = PACKAGE_ROOT / "pixellm_ros" / "model"
ROS_MODULES = {"rclpy", "rcl", "rcl_interfaces", "rclcpp", "rosidl_runtime_py", "rosidl_parser", "std_msgs",
               "sensor_msgs", "geometry_msgs", "vision_msgs", "builtin_interfaces", "cv_bridge",
               "message_filters", "ament_index_python", "launch", "launch_ros", "tf2_ros", "image_transport",
               "rosbag2_py", "rospy", "roslib", "pixellm_ros_interfaces", "pixellm_msgs"}


def is_ros(module: str) -> bool:
    top = module.split(".")[0]
    return top in ROS_MODULES or top.startswith(("rcl", "rosidl", "ros2")) or top.endswith(("_msgs", "_srvs"))


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file of the pixellm_ros package."""
    rel = path.relative_to(PACKAGE_ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.append((mod, node.lineno))
                out += [(f"{mod}.{a.name}", node.lineno) for a in node.names]  # `from . import x`
            else:
                out.append((node.module, node.lineno))
    return out


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "pixellm_ros":
        return None
    path = PACKAGE_ROOT.joinpath(*parts)
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def test_model_files_do_not_import_ros():
    files = sorted(MODEL_DIR.glob("*.py"))
    assert len(files) >= 9
    offending = []
    seen: set[Path] = set()
    todo = list(files)
    while todo:  # transitively through pixellm_ros modules the model imports
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name, line in imports_of(path):
            if is_ros(name):
                offending.append(f"{path.relative_to(PACKAGE_ROOT)}:{line} imports {name}")
            target = module_file(name)
            if target is not None:
                todo.append(target)
    assert not offending, "\n".join(offending)
    assert all(p.is_relative_to(MODEL_DIR) for p in seen), \
        f"the model core imports other parts of pixellm_ros: {sorted(str(p) for p in seen - set(files))}"


def test_importing_the_model_loads_no_ros():
    code = ("import sys; import pixellm_ros.model as m; "
            "bad = [n for n in sys.modules if n.split('.')[0] in ('rclpy', 'std_msgs', 'sensor_msgs', "
            "'rosidl_runtime_py', 'cv_bridge')]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE_ROOT, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(PACKAGE_ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
