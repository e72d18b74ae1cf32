"""Flood / soak a running node: camera frames at >= 100 Hz (some stamped late, so that stale frames exist) and
questions far faster than the model answers, plus standing ~/ask goals, for a bounded time; then the camera
stops. Figures: frames published / received by the node (Hz), questions and answers by status, lost answers,
the node's resident memory over time (growth after warm-up, slope), the largest queue_depth /diagnostics
reported vs queue_size, every OK answer's frame (a frame the camera sent) and age (image_age, and the age when
the answer arrived here), answers older than max_image_age_s, and what questions get once the camera stopped.
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from reliability.common import Tally, final_check, log, log_problems, rss_growth, start, stop, wait_active
from reliability.node_process import image_msg, sample_rgb
from pixellm_ros.action import Ask
from pixellm_ros.conversions import stamp_ns
from pixellm_ros.msg import Query, SegmentationResult

MAX_AGE_S = 0.3
QUEUE_SIZE = 4


class CameraThread(threading.Thread):
    """Publishes frames at `rate_hz` from its own thread (rclpy publishers are thread-safe); a fraction
    `late` of them is stamped up to 1.5 x MAX_AGE_S in the past, as a camera with a stalled driver would."""

    def __init__(self, pub, rate_hz: float, size: tuple[int, int], late: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.pub, self.period, self.late = pub, 1.0 / rate_hz, late
        self.frames = [sample_rgb(seed + k, *size) for k in range(4)]
        self.rng = random.Random(seed)
        self.sent: dict[int, str] = {}  # stamp ns -> frame_id of every frame sent
        self.stop_event = threading.Event()

    def run(self) -> None:
        next_t, k = time.monotonic(), 0
        while not self.stop_event.is_set():
            stamp = time.time_ns()
            if self.rng.random() < self.late:
                stamp -= int(self.rng.uniform(0, 1.5 * MAX_AGE_S) * 1e9)
            header = Header(frame_id=f"cam_{k}")
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            self.sent[stamp] = header.frame_id
            self.pub.publish(image_msg(self.frames[k % 4], header))
            k += 1
            next_t += self.period
            time.sleep(max(next_t - time.monotonic(), 0.0))


def run_flood(model: Path, workdir: Path, seconds: float = 8.0, image_hz: float = 120.0, query_hz: float = 60.0,
              standing: int = 2, size: tuple[int, int] = (240, 320), seed: int = 0) -> dict:
    """Flood for `seconds`, then stop the camera; the figures (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    node, client = start(workdir / "flood_node.log", model_path=model, max_new_tokens=9, queue_size=QUEUE_SIZE,
                         max_image_age_s=MAX_AGE_S, diagnostics_period_s=0.1, next_frame_timeout_s=0.5,
                         cameras=["camera", "cam2"], image_topics=["image", "cam2/image"], ring_size=30,
                         max_standing_queries=standing)
    figures: dict = {"seconds": seconds, "image_hz_target": image_hz, "query_hz_target": query_hz,
                     "image_size": f"{size[1]}x{size[0]}", "max_image_age_s": MAX_AGE_S, "queue_size": QUEUE_SIZE}
    tally = Tally()
    received_at: dict[str, float] = {}
    camera = None
    try:
        pub = client.node.create_publisher(Image, "image", qos_profile_sensor_data)
        client.spin_until(lambda: pub.get_subscription_count() > 0 and
                          client.query_full_pub.get_subscription_count() > 0, "the node's subscriptions", 60)
        wait_active(client)
        assert client.ask.wait_for_server(timeout_sec=30)
        camera = CameraThread(pub, image_hz, size, late=0.2, seed=seed)
        diag_start = len(client.diagnostics)
        frames_before = int(client.diagnostic("frames_received_camera") or 0)
        camera.start()
        goals = []
        for k in range(standing):
            goals.append(client.ask.send_goal_async(Ask.Goal(query=Query(id=f"standing{k}", text="Where is the cup?"),
                                                             rate_hz=20.0)))
        asked: list[str] = []
        rss: list[tuple[float, float]] = []
        t0 = time.monotonic()
        next_q = next_rss = t0
        rng = random.Random(seed)
        seen = 0
        while (now := time.monotonic()) < t0 + seconds:
            if now >= next_q:
                qid = f"q{len(asked)}"
                policy = Query.FRAME_NEXT if rng.random() < 0.25 else Query.FRAME_LATEST
                client.query_full_pub.publish(Query(id=qid, text="Where is the cup?", frame_policy=policy))
                asked.append(qid)
                next_q += 1.0 / query_hz
            if now >= next_rss:
                value = node.rss_mb()
                if value is not None:
                    rss.append((now - t0, value))
                next_rss += 0.25
            client.executor.spin_once(timeout_sec=max(min(next_q, next_rss) - time.monotonic(), 0.0))
            for r in client.results[seen:]:
                received_at.setdefault(r.query_id, time.time())
            seen = len(client.results)
            node.check_alive()
        camera.stop_event.set()
        camera.join()
        elapsed = time.monotonic() - t0
        try:  # lost answers are a figure, not the end of the run
            client.spin_until(lambda: set(asked) <= {r.query_id for r in client.results}, "every answer", 30)
        except AssertionError:
            node.check_alive()
        handled = sum(int(client.diagnostic(k) or 0) for k in ("answered", "busy", "errors"))
        frames_after = int(client.diagnostic("frames_received_camera") or 0)
        client.spin_until(lambda: all(g.done() for g in goals), "standing goals accepted")
        finals = [g.result().get_result_async() for g in goals]
        for g in goals:
            g.result().cancel_goal_async()
        client.spin_until(lambda: all(f.done() for f in finals), "the standing goals' final results")
        by_id: dict[str, list] = {}
        for r in client.results:
            by_id.setdefault(r.query_id, []).append(r)
        stale = wrong_frame = no_frame = 0
        ages, delivery = [], []
        for r in client.results:
            tally.status(r.status)
            if r.status != SegmentationResult.OK:
                continue
            stamp = stamp_ns(r.header.stamp)
            if stamp not in camera.sent:
                no_frame += 1
            elif camera.sent[stamp] != r.header.frame_id:
                wrong_frame += 1
            age = r.image_age.sec + r.image_age.nanosec * 1e-9
            ages.append(age)
            stale += age > MAX_AGE_S
            if r.query_id in received_at:
                delivery.append(received_at[r.query_id] - stamp / 1e9)
        depths = [int(v) for a in client.diagnostics[diag_start:] for s in a.status if s.name.startswith("pixellm")
                  for v in [next((kv.value for kv in s.values if kv.key == "queue_depth"), "0")]]
        figures.update(
            frames_published=len(camera.sent), image_hz=round(len(camera.sent) / elapsed, 1),
            frames_received_by_node=frames_after - frames_before,
            node_image_hz=round((frames_after - frames_before) / elapsed, 1),
            questions=len(asked), query_hz=round(len(asked) / elapsed, 1), results_by_status=dict(tally.statuses),
            lost_answers=sum(1 for q in asked if q not in by_id),
            lost_ids=[q for q in asked if q not in by_id][:20],  # the first few, to see when losses began
            results_counted_by_node=handled, results_received_here=len(client.results),
            answered_twice=sum(1 for q in asked if len(by_id.get(q, [])) > 1),
            ok_answers=len(ages), ok_not_naming_a_sent_frame=no_frame + wrong_frame,
            image_age_max_s=round(max(ages), 3) if ages else None,
            image_age_p50_s=round(float(np.median(ages)), 3) if ages else None,
            answers_older_than_limit=stale,
            delivery_age_max_s=round(max(delivery), 3) if delivery else None,
            queue_depth_max=max(depths) if depths else None, diagnostics_samples=len(depths),
            standing_answers=sum(len(by_id.get(f"standing{k}", [])) for k in range(standing)),
            standing_final=[_name(f.result().result.result.status) for f in finals],
            **rss_growth(rss))
        figures.update(camera_stopped(client, node))
        figures.update(final_status=final_check(client, image_msg(sample_rgb(7), Header(frame_id="final"))),
                       alive_at_end=node.proc.poll() is None, crashes=0, **log_problems(node.log()))
    except AssertionError as exc:
        figures.update(crashes=int(node.proc.poll() is not None), error=str(exc).splitlines()[0],
                       alive_at_end=node.proc.poll() is None)
        log.error("flood run failed: %s", exc)
    finally:
        if camera is not None:
            camera.stop_event.set()
        figures["exit_code"] = stop(node, client)
    return figures


def camera_stopped(client, node) -> dict:
    """Once the camera stopped: LATEST -> STALE_IMAGE, NEXT -> TIMEOUT, a camera that never sent -> NO_IMAGE."""
    time.sleep(MAX_AGE_S + 0.1)
    out = {}
    for name, query in (("after_stop_latest", Query(id="stop-latest", text="Where?")),
                        ("after_stop_next", Query(id="stop-next", text="Where?", frame_policy=Query.FRAME_NEXT)),
                        ("never_sent_camera", Query(id="stop-cam2", text="Where?", camera="cam2"))):
        result = client.ask_full(query, timeout=30)
        out[name] = f"{_name(result.status)}: {result.status_message}"
    return out


def _name(code: int) -> str:
    return next(n for n in dir(SegmentationResult) if n.isupper() and getattr(SegmentationResult, n) == code)
