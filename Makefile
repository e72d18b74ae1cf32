# make setup | test | demo | clean. Setup is idempotent and skips unchanged phases (see scripts/setup_env.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=
RELIABILITY_ARGS ?=

.PHONY: setup test test-stress demo reliability clean

setup:
	@VENV=$(VENV) scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The ROS and reliability tests STRESS_ROUNDS times while busy loops keep every core busy; a pass/fail table
# per test (scripts/test_stress.py). Extra arguments: make test-stress STRESS_ARGS="--rounds 3 -- tests/node -k ask".
STRESS_ROUNDS ?= 5
STRESS_ARGS ?=
test-stress: setup
	$(PY) scripts/test_stress.py --rounds $(STRESS_ROUNDS) $(STRESS_ARGS)

# Through `ros2 launch pixellm_ros demo.launch.py rviz:=false` where the launch system is installed (make setup puts it
# into .venv from ../shared/vendor/ros2_launch_cli), else the same processes started by the script; DEMO_ARGS="--launch no".
demo: setup
	$(PY) -m pixellm_ros.demo $(DEMO_ARGS)

# Long fuzz / flood / fault / training-kill runs; prints a table and writes RELIABILITY.md (about 15 min on 2 cores).
reliability: setup
	$(PY) benchmarks/reliability.py $(RELIABILITY_ARGS)

clean:
	rm -rf build install log $(VENV) demo_out .pytest_cache *.egg-info symlink_install_manifest.txt
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
