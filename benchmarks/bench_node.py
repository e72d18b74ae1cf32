"""What the ROS node adds on top of the engine: end-to-end latency and sustained load.

    python benchmarks/bench_node.py [--model DIR] [--seconds 20] [--image-hz 30] [--query-hz 5] [--out DIR]

Starts `python -m pixellm_ros.node` (the project's params YAML, this model, autostart) as a separate process
on this machine only (LOCALHOST discovery, a random ROS_DOMAIN_ID), and runs a client node here:
1. latency: `--repeats` `~/segment` calls, each on a new image sent in the request (use_image: transport both
   ways, conversion, queue, inference, result messages) vs `Engine.ask` on the same model, image and question in
   this process, each `set_image` on a new frame as well (ratio = ROS / direct, medians). The two alternate call
   by call, so a shared or throttled CPU slows both alike (this machine's own speed drifts by 5-10 % between
   runs); the node idles while the direct engine works and the other way round. Both models stay loaded.
2. sustained: frames published on `image` at --image-hz while `~/segment` questions (FRAME_LATEST) go out at
   --query-hz for --seconds: answered, BUSY, other statuses, round-trip p50/p95, frames published, and the
   node's own frame counters from /diagnostics (received / evicted from the ring) where it reports them.
Without --model the tiny RANDOM-weight model of the demo is used (answers meaningless, timings real).
Prints a table and writes JSON to --out.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUESTION = "Which objects could hold water?"
SERVICE = "/pixellm/segment"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{1000 * x:.0f} ms"


def scenes(n: int) -> list[np.ndarray]:
    from training.data.synthetic import SyntheticConfig, render_scene

    return [render_scene(np.random.default_rng([7, i]), SyntheticConfig())[0] for i in range(n)]


def direct_engine(model: str, args):
    """The node's work without ROS, in this process."""
    import torch

    from pixellm_ros.engine import Engine
    from pixellm_ros.model import SamplingConfig

    torch.set_num_threads(args.threads)
    return Engine.from_pretrained(model, device=args.device, sampling=SamplingConfig(max_new_tokens=args.max_new_tokens))


def direct_call(engine, rgb: np.ndarray, key: str) -> tuple[float, str]:
    """Engine.set_image on a new frame + ask: (seconds, answer)."""
    t0 = time.perf_counter()
    engine.set_image(rgb, image_key=key)
    result = engine.ask(QUESTION)
    return time.perf_counter() - t0, result.answer


class Client:
    """The benchmark's ROS side: a client node spun by a single-threaded executor in this thread."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from pixellm_ros.executor import NO_EVENT_HANDLERS
        from pixellm_ros.srv import Segment

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("bench_node_client")
        self.client = self.node.create_client(Segment, SERVICE)
        self.image_pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10,
                                      event_callbacks=NO_EVENT_HANDLERS)  # see pixellm_ros/executor.py

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            for kv in status.values:
                self.diagnostics[f"{status.name}/{kv.key}"] = kv.value

    def spin_until(self, done, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                return False
            self.rclpy.spin_once(self.node, timeout_sec=0.01)
        return True

    def image_msg(self, rgb: np.ndarray):
        from std_msgs.msg import Header

        from pixellm_ros.conversions import rgb_to_msg

        return rgb_to_msg(rgb, Header(stamp=self.node.get_clock().now().to_msg(), frame_id="camera_optical_frame"))

    def request(self, rgb: np.ndarray | None, query_id: str):
        from pixellm_ros.msg import Query
        from pixellm_ros.srv import Segment

        req = Segment.Request(query=Query(id=query_id, text=QUESTION, frame_policy=Query.FRAME_LATEST))
        if rgb is not None:
            req.use_image, req.image = True, self.image_msg(rgb)
        return req

    def close(self) -> None:
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def wait_until_active(c: Client, frame: np.ndarray, args) -> None:
    """The service exists from start-up; the model is ready once answers stop being NOT_READY."""
    from pixellm_ros.msg import SegmentationResult

    deadline = time.monotonic() + args.call_timeout
    while True:
        future = c.client.call_async(c.request(frame, "ready?"))
        if not c.spin_until(future.done, args.call_timeout):
            raise RuntimeError(f"~/segment did not answer within {args.call_timeout:.0f} s")
        if future.result().result.status != SegmentationResult.NOT_READY:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node was not active within {args.call_timeout:.0f} s")
        c.spin_until(lambda: False, 0.2)


def ros_call(c: Client, rgb: np.ndarray, query_id: str, args) -> tuple[float, float, str]:
    """One ~/segment call with the image in the request: (round trip s, the node's own inference s, answer)."""
    from pixellm_ros.msg import SegmentationResult

    t0 = time.perf_counter()
    future = c.client.call_async(c.request(rgb, query_id))
    if not c.spin_until(future.done, args.call_timeout):
        raise RuntimeError(f"~/segment did not answer within {args.call_timeout:.0f} s")
    elapsed = time.perf_counter() - t0
    result = future.result().result
    if result.status != SegmentationResult.OK:
        raise RuntimeError(f"~/segment answered status {result.status}: {result.status_message}")
    return elapsed, result.inference_time.sec + result.inference_time.nanosec * 1e-9, result.answer


def latency(c: Client, engine, frames: list[np.ndarray], args) -> dict:
    """ROS and direct calls alternating on the same frames; the first of each is warm-up."""
    wait_until_active(c, frames[0], args)
    ros, inference, direct, ros_answers, direct_answers = [], [], [], [], []
    for r in range(args.repeats + 1):
        rgb = frames[r % len(frames)]
        first, second = ("ros", "direct") if r % 2 else ("direct", "ros")  # neither always goes first
        for side in (first, second):
            if side == "ros":
                elapsed, node_s, answer = ros_call(c, rgb, f"latency-{r}", args)
                if r:
                    ros.append(elapsed)
                    inference.append(node_s)
                    ros_answers.append(answer)
            else:
                elapsed, answer = direct_call(engine, rgb, f"direct/{r}")
                if r:
                    direct.append(elapsed)
                    direct_answers.append(answer)
    return {"ros": {"median_s": statistics.median(ros), "times_s": ros, "answers": ros_answers,
                    "node_inference_median_s": statistics.median(inference), "node_inference_s": inference},
            "direct": {"median_s": statistics.median(direct), "times_s": direct, "answers": direct_answers},
            "ratio": statistics.median(ros) / statistics.median(direct),
            "pairwise_ratio_median": statistics.median([a / b for a, b in zip(ros, direct)]),
            "same_answers": ros_answers == direct_answers}


def sustained(c: Client, frames: list[np.ndarray], args) -> dict:
    from pixellm_ros.msg import SegmentationResult

    names = {getattr(SegmentationResult, n): n for n in dir(SegmentationResult)
             if n.isupper() and isinstance(getattr(SegmentationResult, n), int)}
    counts: dict[str, int] = {}
    latencies: list[float] = []
    pending: dict = {}
    published = 0

    def publish_frame() -> None:
        nonlocal published
        c.image_pub.publish(c.image_msg(frames[published % len(frames)]))
        published += 1

    def send_query() -> None:
        k = len(pending) + sum(counts.values())
        pending[c.client.call_async(c.request(None, f"sustained-{k}"))] = time.perf_counter()

    def collect(future, t0: float) -> None:
        result = future.result().result
        name = names.get(result.status, str(result.status))
        counts[name] = counts.get(name, 0) + 1
        if result.status == SegmentationResult.OK:
            latencies.append(time.perf_counter() - t0)

    for _ in range(3):  # the node has a frame before the first query
        publish_frame()
    c.spin_until(lambda: False, 0.3)
    image_timer = c.node.create_timer(1.0 / args.image_hz, publish_frame)
    query_timer = c.node.create_timer(1.0 / args.query_hz, send_query)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        c.rclpy.spin_once(c.node, timeout_sec=0.005)
        for future in [f for f in pending if f.done()]:
            collect(future, pending.pop(future))
    query_timer.cancel()
    c.spin_until(lambda: all(f.done() for f in pending), args.call_timeout)  # frames keep coming meanwhile
    image_timer.cancel()
    for future, t0 in list(pending.items()):
        if future.done():
            collect(future, t0)
        else:
            counts["NO_RESPONSE"] = counts.get("NO_RESPONSE", 0) + 1
    c.spin_until(lambda: False, 1.5)  # one more /diagnostics period
    sent = sum(counts.values())
    frames_diag = {k: v for k, v in c.diagnostics.items() if any(w in k.lower() for w in ("drop", "frame", "received"))}
    received = [int(v) for k, v in frames_diag.items() if k.endswith("frames_received")]
    lost = published - received[0] if received else None  # published here but never received by the node
    return {"seconds": args.seconds, "image_hz": args.image_hz, "query_hz": args.query_hz, "queries": sent,
            "answered": counts.get("OK", 0), "busy": counts.get("BUSY", 0), "statuses": counts,
            "frames_published": published, "frames_lost": lost, "node_frame_counters": frames_diag,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "answers_per_s": counts.get("OK", 0) / args.seconds}


def start_node(model: str, args, log_path: Path) -> subprocess.Popen:
    from pixellm_ros import demo

    cmd = [sys.executable, "-m", demo.NODE_MODULE, "--ros-args", "--params-file", str(ROOT / "config" / "pixellm.yaml"),
           "-p", f"model_path:={model}", "-p", "autostart:=true", "-p", f"device:={args.device}",
           "-p", f"max_new_tokens:={args.max_new_tokens}", "-p", f"num_threads:={args.threads}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="hf_model folder (default: the demo's tiny random model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads, node and direct alike")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--image-hz", type=float, default=30.0)
    ap.add_argument("--query-hz", type=float, default=5.0)
    ap.add_argument("--call-timeout", type=float, default=120.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args(argv)

    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(random.randint(1, 101)),
                      OMP_NUM_THREADS=str(args.threads))
    os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="bench_node_log_"))
    from pixellm_ros.demo import ensure_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, random_weights = (args.model, False) if args.model else ensure_model(None, ROOT / "demo_out")
    frames = scenes(4)
    log_path = Path(os.environ["ROS_LOG_DIR"]) / "bench_node_node.log"
    node = start_node(model, args, log_path)
    client = engine = None
    try:
        client = Client()
        engine = direct_engine(model, args)  # loads while the node does
        if not client.client.wait_for_service(timeout_sec=args.call_timeout):
            raise RuntimeError(f"{SERVICE} did not appear within {args.call_timeout:.0f} s")
        lat = latency(client, engine, frames, args)
        engine.close()
        engine = None
        load = sustained(client, frames, args)
    except RuntimeError as exc:
        print(f"bench_node: {exc}\n--- node log ({log_path}) ---\n"
              + "\n".join(log_path.read_text(errors="replace").splitlines()[-30:]), file=sys.stderr)
        return 1
    finally:
        if engine is not None:
            engine.close()
        if client is not None:
            client.close()
        from pixellm_ros.demo import stop
        stop(node, "node")
    ros, direct = lat["ros"], lat["direct"]

    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device,
                          "threads": args.threads},
              "model": model, "random_weights": random_weights, "max_new_tokens": args.max_new_tokens,
              "question": QUESTION, "repeats": args.repeats, "latency": lat,
              "sustained": load}
    rows = [("end-to-end ~/segment (use_image), median", ms(ros["median_s"])),
            ("  of which the node's own set_image + ask, median", ms(ros["node_inference_median_s"])),
            ("direct Engine.set_image + ask, median", ms(direct["median_s"])),
            ("ratio ROS / direct (medians; median of pairs)", f"{lat['ratio']:.2f}x; {lat['pairwise_ratio_median']:.2f}x"),
            ("same answers", str(report["latency"]["same_answers"])),
            (f"sustained {args.seconds:g} s: {args.image_hz:g} Hz images, {args.query_hz:g} Hz queries", ""),
            ("  queries sent / answered / busy", f"{load['queries']} / {load['answered']} / {load['busy']}"),
            ("  other statuses", str({k: v for k, v in load["statuses"].items() if k not in ("OK", "BUSY")} or "-")),
            ("  round trip p50 / p95", f"{ms(load['p50_s'])} / {ms(load['p95_s'])}"),
            ("  frames published / lost in transport", f"{load['frames_published']} / {load['frames_lost']}"),
            ("  node frame counters (/diagnostics)", str(load["node_frame_counters"] or "not reported"))]
    width = max(len(r[0]) for r in rows)
    print(f"bench_node: {Path(model).name}{' (RANDOM weights)' if random_weights else ''} on {args.device}, "
          f"{args.threads} thread(s), {platform.platform()}")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    path = out / f"node_{args.device}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
