"""A standing `~/ask` goal through the node: answers per second with draft_reuse on vs off.

    python benchmarks/bench_standing_node.py [--model models/pixellm_tabletop] [--windows 3] [--seconds 20]
        [--rate-hz 100] [--camera-hz 10] [--frames-per-scene 50] [--figure]

One demo camera (`python -m pixellm_ros.demo_camera`: the synthetic tabletop scenes, a new scene every
--frames-per-scene frames) and TWO node processes on this machine (LOCALHOST discovery, a random ROS_DOMAIN_ID), the
project's params YAML with only draft_reuse different: namespace /on (draft_reuse true) and /off (false), both
subscribed to the camera. Windows alternate on / off (--windows each, order flipped every round): a standing Ask
goal (rate_hz --rate-hz, set high so the node, not the cap, sets the pace) runs --seconds on one node while the other
idles, then is canceled. Per window: OK standing answers per second (counted from the first answer, so goal set-up
is left out), other statuses, mean accepted / verified draft tokens per answer. Both ways see the same load drift;
the load average is recorded. Prints a line per window; writes benchmarks/results/standing_node_<device>.json and, with
--figure, benchmarks/figures/standing_node_<device>.json (runs with other camera settings kept, one per setting).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUESTION = "Which objects could hold water?"
WAYS = ("on", "off")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def node_cmd(way: str, args) -> list[str]:
    from pixellm_ros import demo

    return [sys.executable, "-m", demo.NODE_MODULE, "--ros-args", "-r", f"__ns:=/{way}", "-r", "image:=/image",
            "--params-file", str(ROOT / "config" / "pixellm.yaml"), "-p", f"model_path:={args.model}",
            "-p", "autostart:=true", "-p", f"device:={args.device}", "-p", f"num_threads:={args.threads}",
            "-p", f"draft_reuse:={'true' if way == 'on' else 'false'}"]


def wait_active(client, executor, way: str, args) -> None:
    """One-shot Ask goals until one is answered by something other than NOT_READY (autostart loads the model)."""
    from pixellm_ros.action import Ask
    from pixellm_ros.msg import Query, SegmentationResult

    end = time.monotonic() + args.call_timeout
    while time.monotonic() < end:
        future = client.send_goal_async(Ask.Goal(query=Query(id="ping", text=QUESTION)))
        executor.spin_until_future_complete(future, timeout_sec=args.call_timeout)
        result = future.result().get_result_async()
        executor.spin_until_future_complete(result, timeout_sec=args.call_timeout)
        if result.result().result.result.status != SegmentationResult.NOT_READY:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the {way} node did not become active")


def run_window(node, client, executor, way: str, args) -> dict:
    """One standing goal for --seconds on node `way`; its OK answers per second and draft counts."""
    from pixellm_ros.action import Ask
    from pixellm_ros.msg import Query, SegmentationResult

    got: list[tuple[float, SegmentationResult]] = []
    goal = Ask.Goal(query=Query(id=f"standing-{way}", text=QUESTION), rate_hz=args.rate_hz)
    future = client.send_goal_async(goal, feedback_callback=lambda m: got.append((time.monotonic(),
                                                                                    m.feedback.standing_result))
                                    if m.feedback.standing_result.query_id else None)
    executor.spin_until_future_complete(future, timeout_sec=args.call_timeout)
    handle = future.result()
    if handle is None or not handle.accepted:
        raise RuntimeError(f"the {way} node did not accept the standing goal")
    end = time.monotonic() + args.seconds + args.call_timeout
    while not got and time.monotonic() < end:  # the window starts at the first answer
        executor.spin_once(timeout_sec=0.05)
    if not got:
        raise RuntimeError(f"no standing answer from the {way} node")
    t0 = got[0][0]
    while time.monotonic() < t0 + args.seconds:
        executor.spin_once(timeout_sec=0.05)
    n_window = len(got)
    cancel = handle.cancel_goal_async()
    executor.spin_until_future_complete(cancel, timeout_sec=args.call_timeout)
    result = handle.get_result_async()
    executor.spin_until_future_complete(result, timeout_sec=args.call_timeout)
    window = [r for _, r in got[:n_window]]
    ok = [r for r in window[1:] if r.status == SegmentationResult.OK]  # after the first answer, which starts the clock
    span = got[n_window - 1][0] - t0 if n_window > 1 else float("nan")
    return {"way": way, "answers": len(ok), "seconds": round(span, 3),
            "answers_per_s": round(len(ok) / span, 3) if n_window > 1 and span > 0 else 0.0,
            "not_ok": sum(r.status != SegmentationResult.OK for r in window),
            "mean_draft_tokens": round(statistics.mean(r.draft_tokens for r in ok), 2) if ok else 0.0,
            "mean_accepted_draft_tokens": round(statistics.mean(r.accepted_draft_tokens for r in ok), 2) if ok else 0.0,
            "answers_text": sorted({r.answer for r in ok})[:4], "load_avg": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "pixellm_tabletop"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per node")
    ap.add_argument("--windows", type=int, default=3, help="windows per way")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of one window")
    ap.add_argument("--rate-hz", type=float, default=100.0, help="the standing goal's rate_hz cap")
    ap.add_argument("--camera-hz", type=float, default=10.0)
    ap.add_argument("--frames-per-scene", type=int, default=50)
    ap.add_argument("--call-timeout", type=float, default=180.0)
    ap.add_argument("--figure", action="store_true")
    args = ap.parse_args(argv)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(random.randint(1, 101)),
                      OMP_NUM_THREADS=str(args.threads))
    logs = Path(os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="bench_standing_node_")))
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.executors import SingleThreadedExecutor

    from pixellm_ros.action import Ask
    from pixellm_ros.demo import stop

    procs = {way: start(node_cmd(way, args), logs / f"node_{way}.log") for way in WAYS}
    procs["camera"] = start([sys.executable, "-m", "pixellm_ros.demo_camera", "--ros-args",
                             "-p", f"rate_hz:={args.camera_hz}", "-p", f"frames_per_scene:={args.frames_per_scene}"],
                            logs / "camera.log")
    rclpy.init()
    node = rclpy.create_node("bench_standing_node")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    rows: list[dict] = []
    try:
        clients = {way: ActionClient(node, Ask, f"/{way}/pixellm/ask") for way in WAYS}
        for way, client in clients.items():
            if not client.wait_for_server(timeout_sec=args.call_timeout):
                raise RuntimeError(f"/{way}/pixellm/ask did not appear")
            wait_active(client, executor, way, args)
        for k in range(args.windows):
            for way in (WAYS if k % 2 == 0 else WAYS[::-1]):
                row = run_window(node, clients[way], executor, way, args)
                rows.append(row)
                print(f"window {k} {way:3s}: {row['answers_per_s']:.2f} answers/s ({row['answers']} OK, "
                      f"{row['not_ok']} not OK), accepted {row['mean_accepted_draft_tokens']} / "
                      f"{row['mean_draft_tokens']} draft tokens, load {row['load_avg']}", flush=True)
    except RuntimeError as exc:
        print(f"bench_standing_node: {exc}; logs in {logs}", file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for name, proc in procs.items():
            stop(proc, name)

    def median(way: str, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["way"] == way)

    summary = {"answers_per_s_on": median("on", "answers_per_s"), "answers_per_s_off": median("off", "answers_per_s"),
               "mean_accepted_draft_tokens_on": median("on", "mean_accepted_draft_tokens"),
               "mean_draft_tokens_on": median("on", "mean_draft_tokens")}
    summary["speedup"] = round(summary["answers_per_s_on"] / summary["answers_per_s_off"], 3) \
        if summary["answers_per_s_off"] else None
    run = {"settings": {"model": Path(args.model).name, "question": QUESTION, "rate_hz": args.rate_hz,
                        "camera_hz": args.camera_hz, "frames_per_scene": args.frames_per_scene,
                        "seconds_per_window": args.seconds, "windows_per_way": args.windows},
           "summary": summary, "windows": rows,
           "load_avg": [round(x, 2) for x in os.getloadavg()], "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    print(f"median answers/s: draft_reuse on {summary['answers_per_s_on']:.2f}, off {summary['answers_per_s_off']:.2f}"
          f" ({summary['speedup']}x); accepted {summary['mean_accepted_draft_tokens_on']} of "
          f"{summary['mean_draft_tokens_on']} draft tokens per answer")
    paths = [ROOT / "benchmarks" / "results" / f"standing_node_{args.device}.json"]
    if args.figure:
        paths.append(ROOT / "benchmarks" / "figures" / f"standing_node_{args.device}.json")
    same = ("camera_hz", "frames_per_scene", "rate_hz", "model")
    for path in paths:  # runs with other camera settings are kept; one with the same settings is replaced
        old = json.loads(path.read_text())["runs"] if path.is_file() else []
        runs = [r for r in old if any(r["settings"][k] != run["settings"][k] for k in same)] + [run]
        report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device,
                              "threads_per_node": args.threads}, "runs": runs}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
