#!/usr/bin/env bash
# Idempotent developer/CI setup: toolchain, .venv with requirements.txt, our ROS interfaces built with
# CMake into the venv prefix, and the package's console scripts. Each phase is skipped when its inputs
# are unchanged (hash stamps inside .venv/ and build/), so a second run takes well under a second.
#
#   scripts/setup_env.sh            (what `make setup` runs)
#   PYTHON=python3.11 VENV=.venv BUILD_DIR=build scripts/setup_env.sh
#
# The ROS 2 parts follow the measured recipe for building interfaces from PyPI wheels (no /opt/ros).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}; [[ $VENV == /* ]] || VENV=$ROOT/$VENV
BUILD=${BUILD_DIR:-build}; [[ $BUILD == /* ]] || BUILD=$ROOT/$BUILD
PY=$VENV/bin/python

now() { date +%s%N; }
T_ALL=$(now)
T=$T_ALL
phase() {  # phase NAME NOTE: print the time since the previous phase
  local t; t=$(now)
  awk -v n="$1" -v d="$(( (t - T) / 1000000 ))" -v m="$2" 'BEGIN { printf "[setup] %-12s %6.1f s  %s\n", n, d / 1000, m }'
  T=$t
}
hash_of() {  # hash_of TEXT FILE...: one hash over TEXT and the files' names and contents
  { echo "$1"; shift; sha256sum "$@"; } | sha256sum | cut -d' ' -f1
}
die() { echo "[setup] ERROR: $*" >&2; exit 1; }
# Generated interfaces import from a neutral cwd, i.e. from the installed copy, not the source tree.
interfaces_ok() {
  (cd / && "$PY" -c 'import pixellm_ros.msg, pixellm_ros.srv, pixellm_ros.action' >/dev/null 2>&1)
}

# 1. Toolchain (cmake, g++, make) from apt, only when missing.
missing=()
for tool in cmake g++ make; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  phase toolchain "installed: ${missing[*]}"
else
  phase toolchain "present"
fi

# 2. Virtual environment.
if [[ -x $PY ]] && "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  phase venv "present ($VENV)"
else
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found; the ROS wheels need CPython 3.11 (set PYTHON=...)"
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' \
    || die "$PYTHON is not CPython 3.11; the ROS wheels need it (set PYTHON=...)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  phase venv "created ($VENV)"
fi

# 3. Python requirements. pip's HTTP cache (~/.cache/pip, left enabled) stores nothing on machines whose
#    proxy strips the caching headers, so the wheels are also kept in a user wheelhouse: downloaded once
#    per requirements.txt version, then a fresh venv installs offline from it. --no-compile: Python compiles
#    only the modules it imports, on first import (halves the install time: torch has thousands of files).
REQ_STAMP=$VENV/.pixellm-requirements.sha256
req_hash=$(hash_of "" requirements.txt)
WHEELS=${PIXELLM_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/pixellm_ros/wheels}
quiet_pip() {  # pip, minus the per-package warnings about this machine's missing file:// extra indexes
  env -u PIP_NO_CACHE_DIR "$PY" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
fill_wheelhouse() {
  mkdir -p "$WHEELS"
  quiet_pip wheel -q -w "$WHEELS" -r requirements.txt
  echo "$req_hash" >"$WHEELS/.pixellm-requirements-$req_hash.sha256"
}
install_from_wheelhouse() { quiet_pip install -q --no-compile --no-index --find-links "$WHEELS" -r requirements.txt; }
if [[ -f $REQ_STAMP && $(cat "$REQ_STAMP") == "$req_hash" ]]; then
  phase requirements "unchanged"
else
  if [[ ! -f $WHEELS/.pixellm-requirements-$req_hash.sha256 ]]; then
    fill_wheelhouse
    phase wheels "downloaded to $WHEELS"
  fi
  if ! install_from_wheelhouse 2>/dev/null; then  # wheelhouse incomplete (e.g. partly deleted): refill once
    fill_wheelhouse
    install_from_wheelhouse
  fi
  echo "$req_hash" >"$REQ_STAMP"
  phase requirements "installed from $WHEELS"
fi

# 4. Interfaces: rosidl via CMake, installed into the venv prefix. Symlink install: installed .py files
#    point into the source tree (and generated code into build/), so editing pixellm_ros/*.py needs nothing.
IFACE_STAMP=$BUILD/.pixellm-interfaces.sha256
# Inputs: the interface files, the package files, the venv path and the pinned ROS wheels (rosidl version).
iface_hash=$(hash_of "$VENV $(grep -iE '^(ros-|catkin-pkg)' requirements.txt)" CMakeLists.txt package.xml \
  $(find msg srv action cmake -type f | LC_ALL=C sort))
if [[ -f $IFACE_STAMP && $(cat "$IFACE_STAMP") == "$iface_hash" ]] && interfaces_ok; then
  phase interfaces "unchanged"
else
  rm -f "$IFACE_STAMP"
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  mkdir -p "$BUILD"
  cmake -S . -B "$BUILD" -Wno-dev -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
    -DPython3_EXECUTABLE="$PY" -DAMENT_CMAKE_SYMLINK_INSTALL=ON >"$BUILD/configure.log" 2>&1 \
    || { tail -n 40 "$BUILD/configure.log"; die "cmake configure failed (log above)"; }
  phase configure "cmake"
  cmake --build "$BUILD" -j"$(nproc)" >"$BUILD/build.log" 2>&1 || { tail -n 40 "$BUILD/build.log"; die "build failed"; }
  phase build "rosidl generation + typesupport libraries"
  rm -f "$BUILD/.pixellm-python-tree.sha256"  # force the install below
  unset AMENT_PREFIX_PATH CMAKE_PREFIX_PATH
fi

# 5. Install (symlinks). Re-run when files were added to or removed from pixellm_ros/ or launch/ config/.
TREE_STAMP=$BUILD/.pixellm-python-tree.sha256
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tree_hash=$(find pixellm_ros launch config -name __pycache__ -prune -o -print | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
if [[ -f $TREE_STAMP && $(cat "$TREE_STAMP") == "$tree_hash" ]]; then
  phase install "unchanged"
else
  # cwd = build dir: ament's symlink install writes its manifest into the current directory.
  (cd "$BUILD" && cmake --install . >install.log 2>&1) || { tail -n 40 "$BUILD/install.log"; die "install failed"; }
  # Drop links to files that were deleted from the source tree.
  find "$SITE/pixellm_ros" "$VENV/share/pixellm_ros" -xtype l -delete
  interfaces_ok || die "pixellm_ros.msg/srv/action do not import after the install; see $BUILD/*.log"
  echo "$iface_hash" >"$IFACE_STAMP"
  echo "$tree_hash" >"$TREE_STAMP"
  phase install "cmake --install (symlinks into the source tree)"
fi

# 6. Console scripts (pixellm_chat, ...) via an editable install of the distribution pixellm-ros-py.
#    Its name differs from the CMake-installed pixellm_ros egg-info, so pip leaves the generated code alone.
EDIT_STAMP=$VENV/.pixellm-editable.sha256
edit_hash=$(hash_of "$ROOT" setup.py package.xml)
if [[ -f $EDIT_STAMP && $(cat "$EDIT_STAMP") == "$edit_hash" ]]; then
  phase scripts "unchanged"
else
  "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
  interfaces_ok || die "pip install -e . removed the generated interfaces (distribution name clash?)"
  echo "$edit_hash" >"$EDIT_STAMP"
  phase scripts "pip install -e ."
fi

# 7. ROS 2 launch system and `ros2` CLI (launch, launch_ros, ros2launch, ros2cli + verbs, rosidl_runtime_py,
#    composition_interfaces): no wheels exist, so they come from the source archives in LAUNCH_VENDOR (see its
#    README.md): Python packages with --no-deps (PyPI's unrelated 'launch' must never be pulled in), their one
#    missing dependency osrf-pycommon through the wheelhouse, composition_interfaces (imported by launch_ros)
#    built with rosidl into the venv prefix. Skipped in a ROS install (launch_ros importable from outside the
#    venv) and without the archives (a user's clone): then the launch/CLI tests skip and `make demo` runs
#    without `ros2 launch`.
LAUNCH_VENDOR=${PIXELLM_LAUNCH_VENDOR:-$ROOT/../shared/vendor/ros2_launch_cli}
OSRF_PYCOMMON=osrf-pycommon==2.0.2
LAUNCH_STAMP=$VENV/.pixellm-launch-tools.sha256
launch_ros_file() {  # where launch_ros (with composition_interfaces and the ros2 CLI) would import from, else nothing
  (cd / && "$PY" -c 'from importlib.util import find_spec as f
m = [f(n) for n in ("composition_interfaces.srv", "ros2cli", "ros2launch", "launch_ros")]
print(m[-1].origin if all(m) else "")' 2>/dev/null) || true
}
launch_where=$(launch_ros_file)
if [[ -n $launch_where && $launch_where != "$VENV"/* ]]; then
  phase launch_tools "from the ROS install ($launch_where)"
elif [[ ! -d $LAUNCH_VENDOR ]]; then
  if [[ -n $launch_where ]]; then phase launch_tools "present (no $LAUNCH_VENDOR to compare with)"
  else phase launch_tools "skipped: no $LAUNCH_VENDOR (set PIXELLM_LAUNCH_VENDOR); launch/CLI tests will skip"; fi
else
  launch_hash=$(hash_of "$VENV $OSRF_PYCOMMON $(grep -iE '^ros-' requirements.txt)" \
    "$LAUNCH_VENDOR"/*.tar.gz cmake/pixellm_wheel_include_fix.cmake)
  if [[ -f $LAUNCH_STAMP && $(cat "$LAUNCH_STAMP") == "$launch_hash" && -n $launch_where ]]; then
    phase launch_tools "unchanged"
  else
    rm -f "$LAUNCH_STAMP"
    SRC=$BUILD/launch_tools/src
    rm -rf "$SRC" && mkdir -p "$SRC"
    for a in "$LAUNCH_VENDOR"/*.tar.gz; do tar xzf "$a" -C "$SRC"; done
    if ! quiet_pip install -q --no-compile --no-index --find-links "$WHEELS" "$OSRF_PYCOMMON" 2>/dev/null; then
      mkdir -p "$WHEELS"
      quiet_pip wheel -q --no-deps -w "$WHEELS" "$OSRF_PYCOMMON"
      quiet_pip install -q --no-compile --no-index --find-links "$WHEELS" "$OSRF_PYCOMMON"
    fi
    # Every setup.py/pyproject folder of the archives except the CMake package (composition_interfaces).
    mapfile -t pkgs < <(find "$SRC" -maxdepth 3 -name setup.py -printf '%h\n' | LC_ALL=C sort)
    ((${#pkgs[@]} >= 16)) || die "expected 16 Python packages in $LAUNCH_VENDOR, found ${#pkgs[@]}"
    quiet_pip install -q --no-compile --no-deps --no-build-isolation "${pkgs[@]}" >/dev/null
    phase launch_tools "${#pkgs[@]} Python packages + $OSRF_PYCOMMON"
    CI_SRC=$(dirname "$(find "$SRC" -path '*/composition_interfaces/package.xml' | head -n1)")
    [[ -f $CI_SRC/CMakeLists.txt ]] || die "no composition_interfaces in $LAUNCH_VENDOR"
    CI_BUILD=$BUILD/launch_tools/composition_interfaces
    (export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
     cmake -S "$CI_SRC" -B "$CI_BUILD" -Wno-dev -DCMAKE_INSTALL_PREFIX="$VENV" -DBUILD_TESTING=OFF \
       -DPython3_EXECUTABLE="$PY" -DCMAKE_PROJECT_INCLUDE="$ROOT/cmake/pixellm_wheel_include_fix.cmake" \
       -DPIXELLM_DEFER_WHEEL_FIX=ON >"$BUILD/launch_tools/configure.log" 2>&1 \
       || { tail -n 40 "$BUILD/launch_tools/configure.log"; die "composition_interfaces: cmake configure failed"; }
     cmake --build "$CI_BUILD" -j"$(nproc)" >"$BUILD/launch_tools/build.log" 2>&1 \
       || { tail -n 40 "$BUILD/launch_tools/build.log"; die "composition_interfaces: build failed"; }
     cmake --install "$CI_BUILD" >"$BUILD/launch_tools/install.log" 2>&1 \
       || { tail -n 40 "$BUILD/launch_tools/install.log"; die "composition_interfaces: install failed"; })
    (cd / && "$PY" -c 'import launch_ros.actions, ros2cli.cli, composition_interfaces.srv') \
      || die "launch_ros does not import after the install; see $BUILD/launch_tools/*.log"
    echo "$launch_hash" >"$LAUNCH_STAMP"
    phase composition "composition_interfaces (rosidl, CMake) into $VENV"
  fi
fi

T=$T_ALL
phase total "ready: $PY"
