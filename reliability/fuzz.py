"""Fuzz a running node: seeded random and malformed Image / CompressedImage / depth / CameraInfo frames,
String and Query questions, ~/segment calls, ~/ask goals (standing ones included), floods of cancels (random
goal ids and cancel-all), ~/load_adapter names (path tricks), and raw CDR bytes that are not valid messages.

Sent in batches; after each batch every question must have exactly one answer with a status (on ~/result,
or the service / action response) before the next batch goes out. Figures: messages by kind, results by
status, unanswered questions, node crashes, tracebacks / internal errors in its log, non-OK answers whose
reason is not in the log, escaped adapter loads, whether a valid question is answered OK at the end.
"""
from __future__ import annotations

import math
import random
import struct
import uuid
import zlib
from pathlib import Path

import cv2
import numpy as np
from action_msgs.srv import CancelGoal
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from reliability.common import Tally, final_check, log, log_problems, logged_ids, start, stop, wait_active
from reliability.node_process import NODE, RELIABLE, build_adapter, image_msg, sample_rgb
from pixellm_ros.action import Ask
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import LoadAdapter, Segment

MAX_PIXELS = 100_000
MAX_CHARS = 200
CAMERAS = ["camera", "cam2"]
TEXTS = ["Where is the cup?", "", " ", "\n\t ", "x" * (MAX_CHARS + 1), "y" * MAX_CHARS, "What is <image>?",
         "<image>", "[SEG0][SEG1][SEG2][SEG3][SEG4][SEG5]", "</s>", "<s><s></s>", "ASSISTANT: USER:", "<unk>",
         "\u202eevil\u202c", "\u200b\u200b\u200b", "☕🍵🫖 où est la tasse ?", "ぬいぐるみはどこ", "%s%n{0}{}\\x00",
         "\x01\x02\x1b[31m", "a\x00b", "\ufffd\ufffe", "Ω" * (MAX_CHARS // 2 + 1), "x" * 100_000, "🤖" * 150]
ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "8UC3", "16UC1", "32FC1", "yuv422",
             "bayer_rggb8", "", "RGB8", "rgb8\x00", "x" * 300, "64FC4", "jpeg"]
ADAPTER_NAMES = ["good", "", "..", "../outside", "escape", "good/../..", "/etc", "missing", ".", "good/",
                 "g\u0000ood", "ü" * 300, "escape/..", "./good"]


def _words(rng: random.Random) -> str:
    return rng.choice(TEXTS) if rng.random() < 0.7 else "".join(chr(rng.randrange(1, 0xD7FF)) for _ in
                                                                 range(rng.randrange(0, 60)))


def _float(rng: random.Random) -> float:
    return rng.choice([0.0, -1.0, 0.5, 30.0, math.nan, math.inf, -math.inf, 1e-30, 1e30, 3.0e38, -0.0])


def _header(rng: random.Random, now_ns: int) -> Header:
    h = Header(frame_id=rng.choice(["cam", "", "ü" * 50, "x" * 1000]))
    stamp = rng.choice([now_ns, now_ns - rng.randrange(0, 5 * 10**9), 0, now_ns + 10**10])
    h.stamp.sec, h.stamp.nanosec = divmod(stamp, 10**9)
    h.stamp.sec = max(min(h.stamp.sec, 2**31 - 1), -(2**31))
    return h


def fuzz_image(rng: random.Random, now_ns: int, valid: float = 0.3) -> Image:
    """An Image, valid with probability `valid`, else with a random mix of wrong fields (data kept < 1 MB)."""
    h, w = rng.choice([(48, 64), (1, 1), (1, 2000), (2000, 1), (3, 5)]) if rng.random() < 0.8 else (0, 0)
    msg = image_msg(sample_rgb(rng.randrange(1000), max(h, 1), max(w, 1)), _header(rng, now_ns))
    if h == 0:
        msg.height = msg.width = 0
    if rng.random() < valid:
        return msg
    for _ in range(rng.randrange(1, 4)):
        kind = rng.randrange(8)
        if kind == 0:
            msg.encoding = rng.choice(ENCODINGS)
        elif kind == 1:
            msg.step = rng.choice([0, 1, max(msg.step - 1, 0), msg.step + 1, 2**32 - 1, min(msg.step * 1000, 2**32 - 1)])
        elif kind == 2:
            msg.data = bytes(msg.data)[: rng.randrange(0, max(len(msg.data), 1))]
        elif kind == 3:
            msg.height, msg.width = rng.choice([(2**32 - 1, 2**32 - 1), (400, 300), (1, 10**6), (65536, 65536)])
        elif kind == 4:
            msg.data = b""
        elif kind == 5:
            msg.is_bigendian = rng.randrange(256)
        elif kind == 6:
            msg.data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 20_000)))
        else:
            msg.width, msg.height = msg.height, msg.width
    return msg


def fuzz_depth(rng: random.Random, header: Header) -> Image:
    """A depth frame: 16UC1 / 32FC1 with NaN, inf, negative and zero values, wrong sizes or encodings."""
    h, w = rng.choice([(48, 64), (24, 32), (1, 1)])
    if rng.random() < 0.5:
        depth = np.full((h, w), rng.choice([math.nan, math.inf, -math.inf, -1.0, 0.0, 2.0, 1e30]), np.float32)
        depth.flat[:: rng.randrange(1, 7)] = math.nan
        msg = Image(header=header, height=h, width=w, encoding="32FC1", step=4 * w, data=depth.tobytes())
    else:
        mm = np.full((h, w), rng.choice([0, 1, 2000, 65535]), "<u2")
        msg = Image(header=header, height=h, width=w, encoding="16UC1", step=2 * w, data=mm.tobytes())
    if rng.random() < 0.3:
        msg.encoding = rng.choice(ENCODINGS)
    if rng.random() < 0.2:
        msg.data = bytes(msg.data)[: len(msg.data) // 2]
    return msg


def fuzz_camera_info(rng: random.Random, header: Header) -> CameraInfo:
    k = rng.choice([[50.0, 0, 32, 0, 50.0, 24, 0, 0, 1], [0.0] * 9, [math.nan] * 9, [math.inf, 0, 1e30, 0, -5,
                    0, 0, 0, 1]])
    return CameraInfo(header=header, height=rng.choice([48, 0, 10**6]), width=rng.choice([64, 0]), k=k)


def fuzz_compressed(rng: random.Random, now_ns: int) -> CompressedImage:
    """PNG / JPEG frames, valid or truncated, bit-flipped, with headers claiming huge sizes, other formats."""
    rgb = sample_rgb(rng.randrange(1000))
    ext = rng.choice([".png", ".jpg", ".webp", ".bmp", ".tiff"])
    data = cv2.imencode(ext, rgb)[1].tobytes()
    kind = rng.randrange(7)
    if kind == 1:
        data = data[: rng.randrange(0, len(data))]
    elif kind == 2:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 20)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        data = bytes(b)
    elif kind == 3 and ext == ".png":  # IHDR claiming 30000 x 30000
        ihdr = b"IHDR" + struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
        data = data[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]
    elif kind == 4:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 5000)))
    elif kind == 5:
        data = b""
    fmt = rng.choice(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth png", "x" * 500])
    return CompressedImage(header=_header(rng, now_ns), format=fmt, data=data)


def fuzz_query(rng: random.Random, qid: str, now_ns: int) -> Query:
    q = Query(id=qid, text=_words(rng) if rng.random() < 0.6 else "Where is the cup?")
    q.frame_policy = rng.choice([Query.FRAME_LATEST] * 4 + [Query.FRAME_NEXT, Query.FRAME_STAMP, 3, 255])
    q.camera = rng.choice(["", "", "camera", "cam2", "nope", "ü" * 100, "camera ", "../camera"])
    q.max_image_age_s = rng.choice([0.0, 0.0, 30.0, _float(rng)])
    q.stamp = _header(rng, now_ns).stamp
    if rng.random() < 0.1:
        q.stamp.nanosec = rng.choice([10**9, 2**32 - 1])
    return q


def corrupt(rng: random.Random, data: bytes) -> bytes:
    """Serialized message bytes cut short, bit-flipped, length fields blown up, or random."""
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randrange(0, len(data))]
    if kind == 1:
        b = bytearray(data)
        for _ in range(rng.randrange(1, 10)):
            b[rng.randrange(len(b))] = rng.getrandbits(8)
        return bytes(b)
    if kind == 2:  # a string / sequence length field (after the 4-byte CDR header) set huge
        b = bytearray(data)
        at = 4 + 4 * rng.randrange(max((len(b) - 8) // 4, 1))
        b[at:at + 4] = struct.pack("<I", rng.choice([2**31 - 1, 2**32 - 1, len(b) * 2]))
        return bytes(b)
    return b"\x00\x01\x00\x00" + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))


def non_utf8(query: Query) -> bytes:
    """query serialized with its text bytes replaced by bytes that are not UTF-8 (same length)."""
    data = bytearray(serialize_message(query))
    text = query.text.encode()
    at = data.find(text)
    data[at:at + len(text)] = bytes([0xFF, 0xFE, 0xC0, 0x80] * len(text))[: len(text)]
    return bytes(data)


KINDS = {  # kind -> weight
    "image": 24, "depth": 6, "camera_info": 3, "raw_bytes": 8, "non_utf8": 3, "query": 10, "query_full": 18,
    "segment": 10, "ask": 6, "cancel": 8, "load_adapter": 4,
}


def _string_results(results: list) -> int:
    """Results of String questions (the node names them q1, q2, ...)."""
    return sum(1 for r in results if r.query_id.startswith("q") and r.query_id[1:].isdigit())


def make_adapters(model: Path, root: Path) -> Path:
    """adapter_dir with 'good', and 'escape' (a symlink to a valid adapter outside adapter_dir)."""
    adapters = root / "adapters"
    if not (adapters / "good").exists():
        adapters.mkdir(parents=True, exist_ok=True)
        build_adapter(model, adapters / "good")
        build_adapter(model, root / "outside")
        (adapters / "escape").symlink_to(root / "outside")
    return adapters


def run_fuzz(model: Path, workdir: Path, messages: int = 600, seed: int = 0, compressed: bool = False,
             batch: int = 40, answer_timeout: float = 60.0, topic_timeout: float = 30.0) -> dict:
    """Send about `messages` fuzzed messages (one phase: raw or compressed camera topics); the figures."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    adapters = make_adapters(model, workdir)
    node, client = start(workdir / f"fuzz_node_{'compressed' if compressed else 'raw'}.log", model_path=model,
                         max_new_tokens=9, cameras=CAMERAS, image_topics=["image", "cam2/image"],
                         use_compressed=compressed, use_depth=True, max_image_pixels=MAX_PIXELS,
                         max_query_chars=MAX_CHARS, next_frame_timeout_s=0.2, diagnostics_period_s=0.5,
                         adapter_dir=adapters, queue_size=4, max_standing_queries=2)
    tally, n = Tally(), 0
    figures: dict = {"phase": "compressed" if compressed else "raw", "seed": seed}
    try:
        msg_type = CompressedImage if compressed else Image
        suffix = "/compressed" if compressed else ""
        cams = [client.node.create_publisher(msg_type, t + suffix, qos_profile_sensor_data)
                for t in ("image", "cam2/image")]
        depth_pub = client.node.create_publisher(Image, "depth", qos_profile_sensor_data)
        info_pub = client.node.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        # Malformed bytes come from writers of their own, as from a broken peer: with Fast DDS a writer that
        # sends a 0-byte payload stalls ITS OWN reliable stream (later samples wait behind it until its history
        # evicts it), which would make the test's valid questions late for a reason outside the node.
        broken = {"query_full": client.node.create_publisher(Query, "query_full", RELIABLE),
                  "image": [client.node.create_publisher(msg_type, t + suffix, qos_profile_sensor_data)
                            for t in ("image", "cam2/image")],
                  "depth": client.node.create_publisher(Image, "depth", qos_profile_sensor_data)}
        cancel = client.node.create_client(CancelGoal, f"{NODE}/ask/_action/cancel_goal")
        client.spin_until(lambda: all(p.get_subscription_count() > 0 for p in [*cams, depth_pub, info_pub,
                                                                              client.query_pub,
                                                                              client.query_full_pub,
                                                                              broken["query_full"], *broken["image"],
                                                                              broken["depth"]]),
                          "the node's subscriptions", 60)
        wait_active(client)
        for c in (client.segment, client.load_adapter, cancel):
            assert c.wait_for_service(timeout_sec=30), f"{c.srv_name} did not appear"
        assert client.ask.wait_for_server(timeout_sec=30)

        expected_topic: set[str] = set()  # ids answered on ~/result only (query_full, query)
        string_queries = 0
        pending: list = []  # (kind, id, future) of services and goals
        goals: list = []  # (id, goal handle, result future)
        standing: set[str] = set()  # goals with rate_hz > 0: re-answer until canceled
        escaped = 0
        lost: set[str] = set()
        answered_ids: dict[str, int] = {}
        seen_results = 0
        kinds, weights = zip(*KINDS.items())
        while sum(tally.sent[k] for k in KINDS) < messages:
            now_ns = client.node.get_clock().now().nanoseconds
            for _ in range(batch):
                kind = rng.choices(kinds, weights)[0]
                tally.sent[kind] += 1
                n += 1
                if kind == "image":
                    pub = rng.choice(cams)
                    pub.publish(fuzz_compressed(rng, now_ns) if compressed else fuzz_image(rng, now_ns))
                elif kind == "depth":
                    depth_pub.publish(fuzz_depth(rng, _header(rng, now_ns)))
                elif kind == "camera_info":
                    info_pub.publish(fuzz_camera_info(rng, _header(rng, now_ns)))
                elif kind == "raw_bytes":
                    target = rng.choice(["query_full", "image", "depth"])
                    if target == "query_full":
                        msg, pub = fuzz_query(rng, f"raw{n}", now_ns), broken["query_full"]
                    elif target == "image":
                        msg = fuzz_image(rng, now_ns, 1.0)
                        pub = rng.choice(broken["image"]) if not compressed else broken["depth"]
                    else:
                        msg, pub = fuzz_depth(rng, _header(rng, now_ns)), broken["depth"]
                    pub.publish(corrupt(rng, serialize_message(msg)))
                elif kind == "non_utf8":
                    broken["query_full"].publish(non_utf8(Query(id=f"raw{n}", text="Where is the cup now?")))
                elif kind == "query":
                    client.query_pub.publish(String(data=_words(rng)))
                    string_queries += 1
                elif kind == "query_full":
                    qid = f"f{n}"
                    client.query_full_pub.publish(fuzz_query(rng, qid, now_ns))
                    expected_topic.add(qid)
                elif kind == "segment":
                    qid = f"s{n}"
                    use_image = rng.random() < 0.7
                    request = Segment.Request(query=fuzz_query(rng, qid, now_ns), use_image=use_image,
                                              image=fuzz_image(rng, now_ns, 0.5) if use_image else Image())
                    pending.append(("segment", qid, client.segment.call_async(request)))
                elif kind == "ask":
                    qid = f"a{n}"
                    rate = rng.choice([0.0, 0.0, 0.0, 5.0, 50.0, -1.0, math.nan, math.inf, 1e-30, 3e38])
                    if rate > 0:
                        standing.add(qid)
                    future = client.ask.send_goal_async(Ask.Goal(query=fuzz_query(rng, qid, now_ns),
                                                                 rate_hz=rate))
                    pending.append(("ask", qid, future))
                elif kind == "cancel":
                    request = CancelGoal.Request()
                    if rng.random() < 0.5:  # all zeros: cancel every goal
                        request.goal_info.goal_id.uuid = np.zeros(16, np.uint8)
                    else:
                        request.goal_info.goal_id.uuid = np.frombuffer(uuid.uuid4().bytes, np.uint8)
                        request.goal_info.stamp.sec = rng.choice([0, 2**31 - 1])
                    pending.append(("cancel", "", cancel.call_async(request)))
                elif kind == "load_adapter":
                    name = rng.choice(ADAPTER_NAMES)
                    pending.append(("load_adapter", name, client.load_adapter.call_async(
                        LoadAdapter.Request(name=name))))
            # Answers of this batch: services, goal acceptance, then goal results (standing goals canceled).
            client.spin_until(lambda: all(f.done() for _, _, f in pending), "the batch's responses",
                              answer_timeout)
            for kind, qid, future in pending:
                response = future.result()
                if kind == "segment":
                    answered_ids[qid] = response.result.status
                    tally.status(response.result.status)
                elif kind == "ask":
                    if not response.accepted:
                        tally.sent["ask_rejected"] += 1
                        continue
                    goals.append((qid, response, response.get_result_async()))
                elif kind == "load_adapter":
                    tally.sent["adapter_refused" if not response.success else "adapter_loaded"] += 1
                    if response.success and response.active_adapter not in ("good", ""):
                        escaped += 1  # loaded from outside adapter_dir
            pending.clear()
            client.spin_until(lambda: all(r.done() for q, _, r in goals if q not in standing),
                              "the batch's one-shot goal results", answer_timeout)
            for qid, handle, result in goals:
                if not result.done():
                    handle.cancel_goal_async()
            try:
                client.spin_until(lambda: all(r.done() for _, _, r in goals), "goal results", answer_timeout)
            except AssertionError:
                raise AssertionError(f"no result for goals {[q for q, _, r in goals if not r.done()]}") from None
            for qid, _, result in goals:
                answered_ids[qid] = result.result().result.result.status
                tally.status(answered_ids[qid])
            goals.clear()
            try:
                client.spin_until(lambda: expected_topic <= {r.query_id for r in client.results}
                                  and _string_results(client.results) >= string_queries,
                                  "~/result for every topic question of the batch", topic_timeout)
            except AssertionError:  # a figure (unanswered), not the end of the run, unless the node died
                node.check_alive()
                got = {r.query_id for r in client.results}
                lost.update(q for q in expected_topic - got if q not in lost)
                log.error("no ~/result for %s; string questions %d of %d answered", sorted(expected_topic - got),
                          _string_results(client.results), string_queries)
            for r in client.results[seen_results:]:
                if r.query_id in expected_topic or (r.query_id.startswith("q") and r.query_id[1:].isdigit()):
                    tally.status(r.status)
                    answered_ids.setdefault(r.query_id, r.status)
                elif r.query_id.startswith("raw"):
                    tally.sent["raw_answered"] += 1
            seen_results = len(client.results)
            node.check_alive()
        client.spin_until(lambda: len(client.diagnostics) > 0, "a /diagnostics message")
        n_diag = len(client.diagnostics)
        client.spin_until(lambda: len(client.diagnostics) > n_diag + 1, "a fresh /diagnostics message")
        node_counted = sum(int(kv.value) for a in client.diagnostics[-1:] for st in a.status if st.name.startswith(NODE)
                           for kv in st.values if kv.key.startswith("status_"))
        per_id: dict[str, int] = {}
        for r in client.results:
            per_id[r.query_id] = per_id.get(r.query_id, 0) + 1
        text = node.log()
        logged = logged_ids(text)
        # BUSY is logged once a second with a count; a standing goal's final answer is the action's result
        non_ok = [q for q, status in answered_ids.items()
                  if status not in (SegmentationResult.OK, SegmentationResult.BUSY) and q not in standing]
        final = final_check(client, image_msg(sample_rgb(7), Header(frame_id="final")))
        alive = node.proc.poll() is None
        figures.update(
            messages_sent=sum(v for k, v in tally.sent.items() if k in KINDS), sent_by_kind=dict(tally.sent),
            questions=len(answered_ids), results_by_status=dict(tally.statuses),
            unanswered=len(expected_topic - set(per_id)) + max(string_queries - _string_results(client.results), 0),
            answered_twice=sum(1 for k in expected_topic if per_id.get(k, 0) > 1), unanswered_ids=sorted(lost)[:20],
            late_topic_answers=len(lost),  # not there within topic_timeout of their batch (arrived later, or never)
            results_counted_by_node=node_counted, results_received_here=len(client.results),
            non_ok_answers=len(non_ok), non_ok_not_logged=len([q for q in non_ok if q not in logged]),
            escaped_adapter_loads=escaped, crashes=0, alive_at_end=alive, final_status=final,
            **log_problems(text))
    except AssertionError as exc:  # a deadline or a node exit: report it as figures, the caller asserts
        figures.update(crashes=int(node.proc.poll() is not None), error=str(exc).splitlines()[0],
                       messages_sent=sum(tally.sent.values()), alive_at_end=node.proc.poll() is None)
        log.error("fuzz run failed: %s", exc)
    finally:
        code = stop(node, client)
        figures["exit_code"] = code
    return figures
