"""The layers of ARCHITECTURE.md, checked on the source (no import runs, no ROS needed):

- model/ and engine.py never import ROS, and import only downwards (engine -> model);
- pixellm_ros (the shipped package: node, conversions, demo tools, model, engine) never imports `training`, nor
  the `reliability` drivers;
- benchmarks/ and reliability/ (the drivers benchmarks/reliability.py and the tests share) never import tests/
  (neither its modules nor its files put on sys.path or executed);
- a test file imports what other tests share only from tests/support/, never from another test file.
"""
from __future__ import annotations

import pytest

from tests.support.import_graph import PACKAGE, ROOT, imported_modules, is_ros_package, python_files

# layer: (files, the pixellm_ros modules it may use)
DOWNWARDS = {
    "model": (f"{PACKAGE}/model/**/*.py", (f"{PACKAGE}.model",)),
    "engine": (f"{PACKAGE}/engine.py", (f"{PACKAGE}.model", f"{PACKAGE}.engine")),
}


def rel(path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("layer", sorted(DOWNWARDS))
def test_model_and_engine_import_no_ros_and_point_down(layer):
    pattern, allowed = DOWNWARDS[layer]
    files = python_files(pattern)
    assert files, f"no files match {pattern}"
    problems = []
    for path in files:
        for name in sorted(imported_modules(path)):
            top = name.split(".")[0]
            if is_ros_package(top):
                problems.append(f"{rel(path)} imports ROS package {name}")
            elif top == PACKAGE and name != PACKAGE and not name.startswith(allowed):
                problems.append(f"{rel(path)} imports {name} (the {layer} layer may only use {allowed})")
    assert not problems, "\n".join(problems)


def test_pixellm_ros_never_imports_training_nor_the_drivers():
    files = python_files(f"{PACKAGE}/**/*.py", "launch/**/*.py")
    assert len(files) > 10
    problems = [f"{rel(p)} imports {n}" for p in files for n in sorted(imported_modules(p))
                if n.split(".")[0] in ("training", "reliability")]
    assert not problems, "\n".join(problems)


def names_in_tests() -> set[str]:
    """Top-level names a file of tests/ is importable as: `tests`, or, once tests/ or a folder of it is put on
    sys.path, its files and folders (less the repository's own top-level names: tests/training/ and
    tests/reliability/ shadow nothing a benchmark imports as `training` or `reliability`)."""
    in_tests = {p.stem for p in python_files("tests/**/*.py")} | {p.name for p in (ROOT / "tests").iterdir() if p.is_dir()}
    top_level = {p.stem for p in ROOT.iterdir() if p.is_dir() or p.suffix == ".py"} - {"tests"}
    return in_tests - top_level - {"__pycache__", "conftest"} | {"tests", "conftest"}


def benchmark_problems(path, root=ROOT) -> list[str]:
    names = names_in_tests()
    problems = [f"imports {n}" for n in sorted(imported_modules(path, root)) if n.split(".")[0] in names]
    if '"tests"' in path.read_text() or "'tests'" in path.read_text():
        problems.append('names the "tests" folder (sys.path or a file of it)')
    return problems


@pytest.mark.parametrize("name", [rel(p) for p in python_files("benchmarks/**/*.py", "reliability/**/*.py")])
def test_benchmarks_and_drivers_never_import_tests(name):
    problems = benchmark_problems(ROOT / name)
    assert not problems, f"{name}: " + "; ".join(problems)


def test_tests_share_helpers_only_through_support():
    files = python_files("tests/**/*.py")
    problems = [f"{rel(p)} imports {n}" for p in files for n in sorted(imported_modules(p))
                if n.startswith("tests.") and not n.startswith("tests.support")]
    assert not problems, "move what is shared into tests/support/:\n" + "\n".join(problems)


def test_the_checks_see_violations(tmp_path):
    """The rules catch what they are written for (a rule that sees nothing would pass forever)."""
    (tmp_path / PACKAGE).mkdir()
    node = tmp_path / PACKAGE / "x.py"
    node.write_text("from training.data.synthetic import render_scene\nimport rclpy\n")
    assert {"training.data.synthetic", "rclpy"} <= imported_modules(node, tmp_path)
    bench = tmp_path / "bench.py"
    bench.write_text('import sys\nsys.path.insert(0, str(ROOT / "tests" / "support"))\nfrom node_fixtures import x\n')
    assert benchmark_problems(bench, tmp_path) == ["imports node_fixtures", "imports node_fixtures.x",
                                         'names the "tests" folder (sys.path or a file of it)']
    (tmp_path / "tests" / "node").mkdir(parents=True)
    test = tmp_path / "tests" / "node" / "test_y.py"
    test.write_text("from .test_x import segment\nfrom tests.support.ros_cli import Background\n")
    assert {"tests.node.test_x", "tests.support.ros_cli"} <= imported_modules(test, tmp_path)
