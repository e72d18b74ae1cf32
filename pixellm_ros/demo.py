"""`make demo`: the ROS 2 pipeline end to end — the pixellm node, a demo camera and a demo planner.

Where the ROS 2 launch system is installed (a ROS install, or .venv after `make setup` with
../shared/vendor/ros2_launch_cli) it runs, on this machine only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a
random ROS_DOMAIN_ID, logs under OUT/ros_log and OUT/logs):
  ros2 launch pixellm_ros demo.launch.py rviz:=false model_path:=MODEL out:=OUT params_file:=... rate_hz:=... scene:=...
printing the planner's lines (answers, targets, latency; overlays in OUT/answer_<k>.png); the launch ends when
the planner has asked its questions, and the demo exits with the planner's status. Otherwise (or --launch no)
it starts the same three processes itself:
  python -m pixellm_ros.node --ros-args --params-file config/pixellm.yaml -p model_path:=MODEL -p autostart:=true
  python -m pixellm_ros.demo_camera     one synthetic tabletop scene on /image (+ /camera_info)
  python -m pixellm_ros.demo_planner    asks the questions through /pixellm/segment, writes OUT/answer_<k>.png
waits for the planner, stops the others (SIGINT, then SIGTERM) and exits with the planner's status.

SCENE: the camera shows ONE scene, render_scene(default_rng([0, SCENE])), so every question is asked of a known
scene whatever the timing (before, the camera cycled 20 scenes and which one a question saw depended on timing).
--scene defaults to pixellm_ros.scenes.DEMO_SCENE (113), chosen by a stated rule, not by how a model answers on it:
the first scene of seed 0 where each question has a non-empty answer (a container, exactly one red cup, a blue
object, a cutting tool: the red bottle, the yellow knife, the blue scissors and the red cup).
`python -m training.evaluate --model MODEL --demo` scores the questions on it and on the camera's usual 20 scenes.

MODEL: --model; else the node YAML's model_path (models/pixellm_tabletop) when it exists; else a tiny
PixelLM with RANDOM weights built under OUT/tiny_random_model (same code path as 7B, a few MB): everything runs
for real, but its answers and masks mean nothing, and the demo says so.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
from importlib.util import find_spec
from pathlib import Path

import yaml

from .scenes import DEMO_SCENE, DEMO_SEED

log = logging.getLogger("pixellm_ros.demo")
ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "config" / "pixellm.yaml"
DEFAULT_MODEL = "models/pixellm_tabletop"
NODE_MODULE = "pixellm_ros.node"
SERVICE = "/pixellm/segment"
PLANNER_LINE = re.compile(r"^\[demo_planner-\d+\] ?(.*)$")  # ros2 launch prefixes each output line with the process
PLANNER_EXIT = re.compile(r"\[demo_planner-\d+\]: process has (?:finished cleanly|died \[pid \d+, exit code (-?\d+))")


def yaml_model_path(params_file: Path) -> str:
    """model_path of the node's parameter YAML (`/**: ros__parameters:` layout), else DEFAULT_MODEL."""
    try:
        params = yaml.safe_load(params_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return DEFAULT_MODEL
    for section in params.values():
        value = (section or {}).get("ros__parameters", {}).get("model_path") if isinstance(section, dict) else None
        if value:
            return str(value)
    return DEFAULT_MODEL


def ensure_model(model: str | None, out: Path, params_file: Path = PARAMS_FILE) -> tuple[str, bool]:
    """(model folder, True when it is the tiny random fallback)."""
    if model:
        return model, False
    configured = Path(yaml_model_path(params_file))
    for candidate in (configured, ROOT / configured):
        if (candidate / "config.json").is_file():
            return str(candidate.resolve()), False
    folder = out / "tiny_random_model"
    if not (folder / "config.json").is_file():
        from .model import save_pixellm
        from .model.scratch import tiny_random_pixellm

        m, tok = tiny_random_pixellm(seed=0)
        save_pixellm(m, tok, folder)
    return str(folder.resolve()), True


def ros_env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(random.randint(1, 101)),
               ROS_LOG_DIR=str((out / "ros_log").resolve()), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def launch_command(env: dict[str, str]) -> str | None:
    """The `ros2` executable when `ros2 launch pixellm_ros` can run with `env` (updated: venv bin, ament prefix)."""
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in (venv_bin, env.get("PATH", "")) if p)
    if (Path(sys.prefix) / "share/ament_index/resource_index/packages/pixellm_ros").is_file():
        env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (sys.prefix, env.get("AMENT_PREFIX_PATH", "")) if p)
    launch = find_spec("launch")
    if launch is None or launch.origin is None or find_spec("launch_ros") is None or find_spec("ros2launch") is None:
        return None  # (a `launch` without origin is the repository's launch/ folder, not the package)
    return shutil.which("ros2", path=env["PATH"])


def run_launch(ros2: str, args: argparse.Namespace, model_path: str, max_new_tokens: int | None,
               env: dict[str, str], out: Path) -> int:
    """`ros2 launch pixellm_ros demo.launch.py rviz:=false ...`: print the planner's lines, log all; the planner's code."""
    cmd = [ros2, "launch", "pixellm_ros", "demo.launch.py", "rviz:=false", f"model_path:={model_path}",
           f"out:={out.resolve()}", f"rate_hz:={args.rate_hz}", f"params_file:={Path(args.params_file).resolve()}",
           f"scene:={args.scene}"]
    if max_new_tokens:
        cmd.append(f"max_new_tokens:={max_new_tokens}")
    log.info("running %s", " ".join(cmd[1:]))
    planner_code: list[int] = []
    log_file = open(out / "logs" / "launch.log", "w")
    # Own session: the terminal's Ctrl-C reaches this script, which stops the launch (SIGINT) below.
    # SIGINT back to default in the child: started from a script's background job it would be ignored, and the
    # launch could then only be stopped with SIGTERM.
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def pump() -> None:
        for line in proc.stdout:
            log_file.write(line)
            log_file.flush()
            exited = PLANNER_EXIT.search(line)
            if exited:
                planner_code.append(int(exited.group(1) or 0))
            elif (m := PLANNER_LINE.match(line.rstrip("\n"))):
                print(m.group(1), flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    code = 1
    try:
        proc.wait(args.timeout)
        reader.join(10.0)
        code = planner_code[0] if planner_code else 1
        if not planner_code:
            log.error("ros2 launch exited with %s before the planner finished", proc.returncode)
    except subprocess.TimeoutExpired:
        log.error("the planner did not finish within %.0f s", args.timeout)
    except KeyboardInterrupt:
        code = 130
    finally:
        stop(proc, "ros2 launch", timeout_s=30.0)
        reader.join(10.0)
        log_file.close()
    if code != 0:
        tail = (out / "logs" / "launch.log").read_text(errors="replace").splitlines()[-30:]
        print("--- last lines of the launch log ---\n" + "\n".join(tail), file=sys.stderr)
    return code


def stop(proc: subprocess.Popen, name: str, timeout_s: float = 10.0) -> None:
    """SIGINT (a clean rclpy shutdown), then SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("%s did not exit on %s", name, signal.Signals(sig).name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="hf_model folder (default: see above)")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--params-file", default=str(PARAMS_FILE), help="node parameter YAML")
    ap.add_argument("--rate-hz", type=float, default=5.0, help="demo camera frame rate")
    ap.add_argument("--scene", type=int, default=DEMO_SCENE,
                    help=f"the one scene the camera shows (seed {DEMO_SEED}; default: see above)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest answer (default: the YAML's; 32 with the random-weight model, which rambles)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    ap.add_argument("--launch", choices=("auto", "yes", "no"), default="auto",
                    help="run through `ros2 launch` (auto: when the launch system is installed)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    model_path, random_weights = ensure_model(args.model, out, Path(args.params_file))
    if random_weights:
        log.warning("\n%s\nno trained model found (--model, or model_path in %s): using a tiny model with RANDOM "
                    "weights. Its answers and masks are MEANINGLESS; the demo only shows the pipeline running end "
                    "to end.\n%s", "!" * 100, args.params_file, "!" * 100)
    max_new_tokens = args.max_new_tokens or (32 if random_weights else None)
    env = ros_env(out)
    ros2 = launch_command(env) if args.launch != "no" else None
    if args.launch == "yes" and ros2 is None:
        log.error("--launch yes, but `ros2 launch` is not available (launch, launch_ros, ros2launch, ros2)")
        return 2
    if ros2 is not None:
        log.info("model %s, ROS_DOMAIN_ID %s, logs in %s/logs", model_path, env["ROS_DOMAIN_ID"], out)
        code = run_launch(ros2, args, model_path, max_new_tokens, env, out)
        print(f"demo {'finished' if code == 0 else f'FAILED (exit {code})'} (ros2 launch): overlays in "
              f"{out.resolve()}/answer_*.png, launch log in {out.resolve()}/logs/launch.log"
              + (" (RANDOM-weight model: answers are meaningless)" if random_weights else ""))
        return code
    py = sys.executable
    commands = {
        "node": [py, "-m", NODE_MODULE, "--ros-args", "--params-file", str(args.params_file),
                 "-p", f"model_path:={model_path}", "-p", "autostart:=true"]
        + (["-p", f"max_new_tokens:={max_new_tokens}"] if max_new_tokens else []),
        "camera": [py, "-m", "pixellm_ros.demo_camera", "--ros-args", "-p", f"rate_hz:={args.rate_hz}",
                   "-p", f"seed:={DEMO_SEED}", "-p", f"first_scene:={args.scene}", "-p", "num_scenes:=1"],
    }
    log.info("model %s, ROS_DOMAIN_ID %s, logs in %s/logs", model_path, env["ROS_DOMAIN_ID"], out)
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    code = 1
    try:
        for name, cmd in commands.items():
            logs[name] = open(out / "logs" / f"{name}.log", "wb")
            procs[name] = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=logs[name], stderr=subprocess.STDOUT)
        planner = subprocess.Popen([py, "-m", "pixellm_ros.demo_planner", "--out", str(out.resolve()),
                                    "--ros-args", "-p", f"service:={SERVICE}"], env=env, cwd=ROOT)
        procs["planner"] = planner
        try:
            code = planner.wait(args.timeout)
        except subprocess.TimeoutExpired:
            log.error("the planner did not finish within %.0f s", args.timeout)
    except KeyboardInterrupt:
        code = 130
    finally:
        for name in ("planner", "camera", "node"):
            if name in procs:
                stop(procs[name], name)
        for f in logs.values():
            f.close()
    for name, proc in procs.items():
        if name != "planner" and proc.returncode not in (0, -signal.SIGINT, 130):
            log.warning("%s exited with %s; see %s", name, proc.returncode, out / "logs" / f"{name}.log")
    if code != 0:
        tail = (out / "logs" / "node.log").read_text(errors="replace").splitlines()[-30:]
        print("--- last lines of the node log ---\n" + "\n".join(tail), file=sys.stderr)
    print(f"demo {'finished' if code == 0 else f'FAILED (exit {code})'}: overlays in {out.resolve()}/answer_*.png, "
          f"process logs in {out.resolve()}/logs/"
          + (" (RANDOM-weight model: answers are meaningless)" if random_weights else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
