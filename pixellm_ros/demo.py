"""`make demo`: the ROS 2 pipeline end to end — the pixellm node, a demo camera and a demo planner.

Starts three processes on this machine only (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, a random
ROS_DOMAIN_ID, logs under OUT/ros_log and OUT/logs):
  python -m pixellm_ros.node --ros-args --params-file config/pixellm.yaml -p model_path:=MODEL -p autostart:=true
  python -m pixellm_ros.demo_camera     synthetic tabletop frames on /image (+ /camera_info)
  python -m pixellm_ros.demo_planner    asks the questions through /pixellm/segment, writes OUT/answer_<k>.png
waits for the planner, stops the others (SIGINT, then SIGTERM) and exits with the planner's status.

MODEL: --model; else the node YAML's model_path (models/pixellm_tabletop) when it exists; else a tiny
PixelLM with RANDOM weights built under OUT/tiny_random_model (same code path as 7B, a few MB): everything runs
for real, but its answers and masks mean nothing, and the demo says so.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import yaml

log = logging.getLogger("pixellm_ros.demo")
ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "config" / "pixellm.yaml"
DEFAULT_MODEL = "models/pixellm_tabletop"
NODE_MODULE = "pixellm_ros.node"
SERVICE = "/pixellm/segment"


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
        from .model.factory import tiny_random_pixellm

        m, tok = tiny_random_pixellm(seed=0)
        save_pixellm(m, tok, folder)
    return str(folder.resolve()), True


def ros_env(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(random.randint(1, 101)),
               ROS_LOG_DIR=str((out / "ros_log").resolve()), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


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
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest answer (default: the YAML's; 32 with the random-weight model, which rambles)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
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
    py = sys.executable
    commands = {
        "node": [py, "-m", NODE_MODULE, "--ros-args", "--params-file", str(args.params_file),
                 "-p", f"model_path:={model_path}", "-p", "autostart:=true"]
        + (["-p", f"max_new_tokens:={max_new_tokens}"] if max_new_tokens else []),
        "camera": [py, "-m", "pixellm_ros.demo_camera", "--ros-args", "-p", f"rate_hz:={args.rate_hz}"],
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
