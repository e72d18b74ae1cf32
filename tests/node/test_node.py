"""The pixellm node in its own process (tiny scripted model) against a test client: topics, service, action,
frame policies, bad input, cameras, overlay, depth, adapters, diagnostics. One node serves the module."""
from __future__ import annotations

import time

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from geometry_msgs.msg import PoseArray
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header, String

from tests.support.node_fixtures import (DEADLINE_S, NODE, RELIABLE, Camera, Client, NodeProcess, build_adapter,
                                         image_msg, sample_rgb, segment, spin_future, wait_active)
from pixellm_ros.action import Ask
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import LoadAdapter, Segment

pytestmark = pytest.mark.ros
ANSWER = "the cup and the cup and"  # 32 tokens of the scripted model: two targets
MAX_PIXELS = 100_000
MAX_CHARS = 200
# Long enough that a question published right after a FRAME_NEXT one reaches the node's queue while that one waits,
# even on a loaded machine (test_frame_next_does_not_hold_up_the_questions_behind_it).
NEXT_FRAME_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def adapters(scripted_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    (root / "adapters").mkdir()
    build_adapter(scripted_model, root / "adapters" / "kitchen")
    build_adapter(scripted_model, root / "outside")
    (root / "adapters" / "escape").symlink_to(root / "outside")
    return root / "adapters"


@pytest.fixture(scope="module")
def main(scripted_model, adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    node = NodeProcess(log, model_path=scripted_model, max_new_tokens=32, num_threads=1,
                       cameras=["camera", "cam2", "cam3"], image_topics=["image", "cam2/image", "cam3/image"],
                       next_frame_timeout_s=NEXT_FRAME_TIMEOUT_S, diagnostics_period_s=0.2, max_target_topics=2,
                       max_image_pixels=MAX_PIXELS, max_query_chars=MAX_CHARS, adapter_dir=adapters, use_depth=True)
    client = Client(node)
    try:  # stopped even when the set-up fails: a node left running would answer the next modules' questions
        client.cam = Camera(client, "image", "camera_optical", seed=0)
        client.cam2 = Camera(client, "cam2/image", "cam2_optical", seed=1)
        client.cam3 = Camera(client, "cam3/image", "cam3_optical", seed=2)
        client.wait_connected(client.cam.pub, client.cam2.pub, client.cam3.pub)
        wait_active(client)
        yield client
    finally:
        client.close()
        code = node.stop()
        print(f"--- node exited with {code} ---\n{node.log()}")


def check_targets(result: SegmentationResult, height: int = 48, width: int = 64) -> None:
    assert result.status == SegmentationResult.OK, result.status_message
    assert result.answer == ANSWER and len(result.targets) == 2
    for k, t in enumerate(result.targets):
        mask = np.frombuffer(bytes(t.mask.data), np.uint8).reshape(t.mask.height, t.mask.step)
        assert (t.mask.height, t.mask.width, t.mask.encoding) == (height, width, "mono8")
        assert t.mask.header == result.header and t.index == k and t.label == "the cup"
        assert t.pixel_count == int((mask == 255).sum()) and set(np.unique(mask)) <= {0, 255}
        assert 0.0 <= t.score <= 1.0


def subscribe(client: Client, msg_type, topic: str, qos=RELIABLE, wait: bool = False) -> list:
    """Messages received on `topic`; with `wait`, returns once the node's publisher has matched."""
    got: list = []
    sub = client.node.create_subscription(msg_type, topic, got.append, qos)
    if wait:
        client.spin_until(lambda: sub.get_publisher_count() > 0, f"the node's publisher of {topic}")
    return got


# ---------------------------------------------------------------------------------------------- tests
def test_topic_query_answers_on_the_latest_frame(main):
    answers = subscribe(main, String, f"{NODE}/answer", wait=True)
    labels = subscribe(main, Image, f"{NODE}/masks/label", wait=True)
    target2 = subscribe(main, Image, f"{NODE}/masks/target_2", wait=True)
    main.cam.stream(20)
    main.wait_frames("camera", 2)
    text = "Where is the cup?"
    n = len(main.results)
    main.query_pub.publish(String(data=text))
    main.spin_until(lambda: any(r.query_text == text for r in main.results[n:]), "the topic query's result")
    result = next(r for r in main.results[n:] if r.query_text == text)
    main.spin_until(lambda: answers and all(any(m.header == result.header for m in got) for got in (labels, target2)),
                    "answer, label image and target_2 mask of the result")
    main.cam.stop()
    check_targets(result)
    assert result.header in main.cam.sent and result.camera == "camera" and result.query_id.startswith("q")
    assert result.model_id == "model" and result.adapter_id == "" and result.incomplete_codebook_tokens == 0
    age = result.image_age.sec + result.image_age.nanosec * 1e-9
    assert 0 <= age < 5 and result.inference_time.sec + result.inference_time.nanosec > 0
    label = next(m for m in labels if m.header == result.header)
    values = np.frombuffer(bytes(label.data), np.uint8).reshape(48, 64)
    assert set(np.unique(values)) <= {0, 1, 2} and (values == 2).sum() == result.targets[1].pixel_count
    assert answers[-1].data == ANSWER
    t2 = next(m for m in target2 if m.header == result.header)
    assert bytes(t2.data) == bytes(result.targets[1].mask.data)


def test_segment_service_uses_the_supplied_image(main):
    rgb = sample_rgb(5)
    first, again = segment(main, rgb, "s1"), segment(main, rgb, "s2")
    check_targets(first)
    assert (first.query_id, first.header.frame_id, first.header.stamp.sec) == ("s1", "given", 7)
    assert [t.pixel_count for t in first.targets] == [t.pixel_count for t in again.targets]
    bgr = segment(main, rgb[..., ::-1].copy(), "s3", encoding="bgr8")
    assert [t.pixel_count for t in bgr.targets] == [t.pixel_count for t in first.targets]
    padded = np.zeros((48, 64 * 3 + 8), np.uint8)
    padded[:, :192] = rgb.reshape(48, 192)
    result = segment(main, rgb, "s4", step=200, data=padded.tobytes())
    assert [t.pixel_count for t in result.targets] == [t.pixel_count for t in first.targets]


def _goal(main, query: Query, rate_hz: float = 0.0):
    assert main.ask.wait_for_server(timeout_sec=DEADLINE_S)
    feedback = []
    future = main.ask.send_goal_async(Ask.Goal(query=query, rate_hz=rate_hz),
                                      feedback_callback=lambda m: feedback.append(m.feedback))
    handle = spin_future(main.executor, future, "goal acceptance", main.process)
    assert handle.accepted
    return handle, feedback


def test_ask_action_streams_tokens_and_targets(main):
    n = main.frames("camera")
    main.cam.publish()
    main.wait_frames("camera", n + 1)
    handle, feedback = _goal(main, Query(id="a1", text="Where is the cup?", max_image_age_s=30.0))
    # The node publishes every feedback before it completes the goal, but feedback (a topic) and the result (a
    # service) are separate channels that ROS 2 does not order, and rclpy's ActionClient drops the feedback that
    # arrives after it has received the result. So: the whole feedback stream first, then the result.
    main.spin_until(lambda: feedback and feedback[-1].partial_answer == ANSWER, "the last feedback")
    response = spin_future(main.executor, handle.get_result_async(), "the Ask result", main.process)
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    result = response.result.result
    check_targets(result)
    partial = [f.partial_answer for f in feedback]
    assert len(partial) == 32 + 2, partial  # none lost: one message per token, one per target
    assert all(b.startswith(a) for a, b in zip(partial, partial[1:])), partial
    streamed = [t for f in feedback for t in f.new_targets]
    assert [t.pixel_count for t in streamed] == [t.pixel_count for t in result.targets]
    assert [f.partial_answer for f in feedback if f.new_targets] == ["the cup", "the cup and the cup"]


def test_standing_query_reanswers_until_canceled(main):
    main.cam.stream(20)
    handle, feedback = _goal(main, Query(id="standing", text="Where is the cup?"), rate_hz=5.0)

    def standing(status: int | None = None) -> list[SegmentationResult]:
        return [f.standing_result for f in feedback
                if f.standing_result.query_id == "standing" and status in (None, f.standing_result.status)]

    main.spin_until(lambda: len(standing(SegmentationResult.OK)) >= 2, "two OK standing answers")
    # Each answer is on the newest frame not answered yet. On a loaded machine that frame may have grown older
    # than max_image_age_s by the time the worker takes it: STALE_IMAGE, said so, and the query goes on.
    for r in standing():
        assert r.status in (SegmentationResult.OK, SegmentationResult.STALE_IMAGE), r
        assert r.status == SegmentationResult.OK or r.status_message, r
    headers = [(r.header.stamp.sec, r.header.stamp.nanosec) for r in standing()]
    assert len(set(headers)) == len(headers), headers  # never the same frame twice
    cancel = spin_future(main.executor, handle.cancel_goal_async(), "the cancel response", main.process)
    assert len(cancel.goals_canceling) == 1
    response = spin_future(main.executor, handle.get_result_async(), "the canceled result", main.process)
    main.cam.stop()
    assert response.status == GoalStatus.STATUS_CANCELED
    assert response.result.result.status == SegmentationResult.CANCELED
    assert "standing" in response.result.result.status_message
    # Every standing answer also goes to ~/result (another channel: wait for it), the same answers in order.
    ok = standing(SegmentationResult.OK)
    main.spin_until(lambda: sum(r.query_id == "standing" and r.status == SegmentationResult.OK
                                for r in main.results) >= len(ok), "the OK standing answers on ~/result")
    on_topic = [r for r in main.results if r.query_id == "standing" and r.status == SegmentationResult.OK]
    assert [r.header for r in on_topic[:len(ok)]] == [r.header for r in ok]


def test_standing_query_reuses_the_previous_answer_as_its_draft(main):
    """draft_reuse (default on): a later standing answer takes its tokens from the previous answer's (verified in one
    pass) and is the same answer; /diagnostics counts them. The text is this test's own: no earlier draft."""
    text = "Where is the cup, again and again?"
    main.cam.stream(20)
    handle, feedback = _goal(main, Query(id="drafted", text=text), rate_hz=50.0)

    def ok() -> list[SegmentationResult]:
        return [f.standing_result for f in feedback
                if f.standing_result.query_id == "drafted" and f.standing_result.status == SegmentationResult.OK]

    main.spin_until(lambda: any(r.accepted_draft_tokens > 0 for r in ok()[1:]), "a standing answer with a draft")
    spin_future(main.executor, handle.cancel_goal_async(), "the cancel response", main.process)
    spin_future(main.executor, handle.get_result_async(), "the canceled result", main.process)
    main.cam.stop()
    answers = ok()
    first, drafted = answers[0], next(r for r in answers[1:] if r.accepted_draft_tokens > 0)
    assert (first.draft_tokens, first.accepted_draft_tokens) == (0, 0)
    assert drafted.answer == first.answer == ANSWER and drafted.accepted_draft_tokens <= drafted.draft_tokens <= 32
    assert len(drafted.targets) == len(first.targets) == 2  # masks from the draft pass's states
    main.spin_until(lambda: int(main.diagnostic("draft_tokens_accepted") or 0) >= drafted.accepted_draft_tokens,
                    "the accepted draft tokens on /diagnostics")
    assert int(main.diagnostic("draft_answers")) >= 1


def test_standing_query_with_a_tiny_rate_answers_then_cancels(main):
    """rate_hz 1e-30: one answer, then a wait of 1e30 s that used to overflow the timer and abort the goal
    (found by the fuzz); now the goal waits in slices until it is canceled."""
    main.cam.stream(20)
    handle, feedback = _goal(main, Query(id="tiny-rate", text="Where is the cup?"), rate_hz=1e-30)
    main.spin_until(lambda: any(f.standing_result.query_id == "tiny-rate" for f in feedback), "a standing answer")
    spin_future(main.executor, handle.cancel_goal_async(), "the cancel response", main.process)
    response = spin_future(main.executor, handle.get_result_async(), "the canceled result", main.process)
    main.cam.stop()
    assert response.status == GoalStatus.STATUS_CANCELED, response.result.result.status_message
    assert "after 1 answers" in response.result.result.status_message


def test_frame_next_answers_on_a_frame_after_the_query(main):
    handle, _ = _goal(main, Query(id="next", text="Where is the cup?", frame_policy=Query.FRAME_NEXT))
    before = len(main.cam.sent)
    future = handle.get_result_async()
    while not future.done():  # frames keep coming until one is taken
        main.cam.publish()
        main.executor.spin_once(timeout_sec=0.05)
    result = future.result().result.result
    check_targets(result)
    assert result.header in main.cam.sent[before:]


def test_frame_next_times_out(main):
    result = main.ask_full(Query(id="to", text="Where?", frame_policy=Query.FRAME_NEXT, camera="cam2"))
    assert result.status == SegmentationResult.TIMEOUT and f"{NEXT_FRAME_TIMEOUT_S} s" in result.status_message
    assert result.camera == "cam2"


def test_frame_next_does_not_hold_up_the_questions_behind_it(main):
    """A FRAME_NEXT question about a camera that sends nothing goes back in the queue behind the questions that
    can be answered now, instead of holding the single worker until its timeout (NEXT_FRAME_TIMEOUT_S here)."""
    main.query_full_pub.publish(Query(id="waits", text="Where?", frame_policy=Query.FRAME_NEXT, camera="cam2"))
    main.cam.publish()  # a frame for the question behind it (any age: this test is about order, not staleness)
    main.query_full_pub.publish(Query(id="behind", text="Where is the cup?", max_image_age_s=60.0))
    behind, waits = main.result_for("behind"), main.result_for("waits")
    assert behind.status == SegmentationResult.OK, behind.status_message
    assert waits.status == SegmentationResult.TIMEOUT
    order = [r.query_id for r in main.results]
    assert order.index("behind") < order.index("waits")


def test_frame_stamp_picks_the_nearest_cached_frame(main):
    # Far from "now", so frames other tests streamed moments ago can't be nearer to the requested stamp.
    base, n = time.time_ns() - 50 * 10**9, main.frames("camera")
    for k in range(5):
        main.cam.publish(base + k * 100_000_000, rgb=sample_rgb(20 + k))
    main.wait_frames("camera", n + 5)
    query = Query(id="st", text="Where?", frame_policy=Query.FRAME_STAMP)
    query.stamp.sec, query.stamp.nanosec = divmod(base + 210_000_000, 10**9)
    result = main.ask_full(query)
    check_targets(result)
    assert result.header == main.cam.sent[-3]
    far = Query(id="st-far", text="Where?", frame_policy=Query.FRAME_STAMP)
    far.stamp.sec = query.stamp.sec - 100
    result = main.ask_full(far)
    assert result.status == SegmentationResult.NO_IMAGE and "requested stamp" in result.status_message


def test_stale_frames_and_a_second_camera(main):
    main.cam2.stream(20, delay_s=5.0)
    main.wait_frames("cam2", 2)
    stale = main.ask_full(Query(id="stale", text="Where?", camera="cam2"))
    assert stale.status == SegmentationResult.STALE_IMAGE and "max_image_age_s" in stale.status_message
    ok = main.ask_full(Query(id="cam2-ok", text="Where?", camera="cam2", max_image_age_s=30.0))
    main.cam2.stop()
    check_targets(ok)
    assert ok.camera == "cam2" and ok.header.frame_id == "cam2_optical" and ok.header in main.cam2.sent
    unknown = main.ask_full(Query(id="unknown", text="Where?", camera="nope"))
    assert unknown.status == SegmentationResult.INVALID_QUERY and "camera" in unknown.status_message
    assert all(c in unknown.status_message for c in ("camera", "cam2", "cam3"))


BAD_IMAGES = {  # name -> (Image field overrides, status)
    "encoding 16UC1": (dict(encoding="16UC1", step=128), SegmentationResult.INVALID_IMAGE),
    "encoding yuv422": (dict(encoding="yuv422"), SegmentationResult.INVALID_IMAGE),
    "step too small": (dict(step=100), SegmentationResult.INVALID_IMAGE),
    "truncated data": (dict(data=bytes(1000)), SegmentationResult.INVALID_IMAGE),
    "zero size": (dict(height=0, width=0, step=0, data=b""), SegmentationResult.INVALID_IMAGE),
    "too many pixels": (dict(height=400, width=300, step=900, data=bytes(400 * 900)), SegmentationResult.INVALID_IMAGE),
}
BAD_QUERIES = {  # name -> (Query fields, status)
    "empty text": (dict(text=""), SegmentationResult.INVALID_QUERY),
    "blank text": (dict(text="  \n"), SegmentationResult.INVALID_QUERY),
    "too long": (dict(text="x" * (MAX_CHARS + 1)), SegmentationResult.INVALID_QUERY),
    "image token": (dict(text="What is <image>?"), SegmentationResult.INVALID_QUERY),
    "frame policy": (dict(text="Where?", frame_policy=7), SegmentationResult.INVALID_QUERY),
    "negative age": (dict(text="Where?", max_image_age_s=-1.0), SegmentationResult.INVALID_QUERY),
    "no image yet": (dict(text="Where?", camera="cam3"), SegmentationResult.NO_IMAGE),
}


@pytest.mark.parametrize("case", [*BAD_IMAGES, *BAD_QUERIES, "bad frame on a camera topic"])
def test_bad_input_gets_an_error_and_the_node_keeps_serving(main, case):
    qid = f"bad-{case}"
    if case in BAD_IMAGES:
        fields, status = BAD_IMAGES[case]
        result = segment(main, sample_rgb(3), qid, **fields)
    elif case in BAD_QUERIES:
        fields, status = BAD_QUERIES[case]
        result = main.ask_full(Query(id=qid, **fields))
    else:
        status = SegmentationResult.INVALID_IMAGE
        n = main.frames("cam3")
        main.cam3.publish(encoding="32FC1")
        main.wait_frames("cam3", n + 1)
        result = main.ask_full(Query(id=qid, text="Where?", camera="cam3", max_image_age_s=30.0))
    assert (result.status, result.query_id) == (status, qid) and result.status_message, result
    assert case != "too many pixels" or str(MAX_PIXELS) in result.status_message
    assert main.process.proc.poll() is None
    check_targets(segment(main, sample_rgb(4), f"good-after-{case}"))


def test_overlay_is_published_to_subscribers(main):
    overlays = subscribe(main, Image, f"{NODE}/overlay", wait=True)
    # The node draws the overlay only for subscribers it knows; seeing its publisher here does not mean it has
    # seen our subscription yet. So ask until an answer comes with its overlay (the first one, nearly always).
    for attempt in range(20):
        msg = image_msg(sample_rgb(6), Header(frame_id="given"))
        msg.header.stamp.sec = 100 + attempt  # tells the answers apart
        request = Segment.Request(query=Query(id=f"ov{attempt}", text="Where is the cup?"), use_image=True,
                                  image=msg)
        result = main.call(main.segment, request, f"the Segment response ov{attempt}").result
        check_targets(result)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not any(m.header == result.header for m in overlays):
            main.executor.spin_once(timeout_sec=0.05)
        if any(m.header == result.header for m in overlays):
            break
    main.spin_until(lambda: any(m.header == result.header for m in overlays), "the overlay")
    overlay = next(m for m in overlays if m.header == result.header)
    assert overlay.encoding == "rgb8" and overlay.width == 64 and overlay.height > 48  # answer band on top


def test_depth_gives_points_and_centroids(main):
    clouds = subscribe(main, PointCloud2, f"{NODE}/points")
    centroids = subscribe(main, PoseArray, f"{NODE}/centroids")
    depth_pub = main.node.create_publisher(Image, "depth", 10)
    info_pub = main.node.create_publisher(CameraInfo, "camera_info", 10)
    main.spin_until(lambda: depth_pub.get_subscription_count() and info_pub.get_subscription_count(), "depth subs")
    color = main.cam.publish()
    depth = Image(header=color.header, height=48, width=64, encoding="16UC1", step=128,
                  data=np.full((48, 64), 2000, "<u2").tobytes())
    info = CameraInfo(header=color.header, height=48, width=64, k=[50.0, 0, 32, 0, 50.0, 24, 0, 0, 1])
    for attempt in range(50):  # best effort: repeat until both arrived before the query is answered
        info_pub.publish(info)
        depth_pub.publish(depth)
        result = main.ask_full(Query(id=f"depth{attempt}", text="Where?", max_image_age_s=60.0,
                                     frame_policy=Query.FRAME_STAMP, stamp=color.header.stamp))
        main.executor.spin_once(timeout_sec=0.1)
        if any(c.header == result.header for c in centroids):
            break
    check_targets(result)
    main.spin_until(lambda: any(c.header == result.header for c in clouds), "the point cloud")
    cloud = next(c for c in clouds if c.header == result.header)
    assert cloud.width == sum(t.pixel_count for t in result.targets)
    poses = next(c for c in centroids if c.header == result.header).poses
    assert len(poses) == 2
    for pose, t in zip(poses, result.targets):
        assert t.pixel_count == 0 or abs(pose.position.z - 2.0) < 1e-6


def test_load_adapter_and_path_checks(main, adapters):
    def load(name: str) -> LoadAdapter.Response:
        return main.call(main.load_adapter, LoadAdapter.Request(name=name), f"load_adapter {name!r}")

    try:
        loaded = load("kitchen")
        assert (loaded.success, loaded.active_adapter) == (True, "kitchen"), loaded.message
        result = segment(main, sample_rgb(5), "with-adapter")
        assert (result.status, result.answer, result.targets, result.adapter_id) == (
            SegmentationResult.OK, "", [], "kitchen")
        for name, words in [("../outside", ".."), (str(adapters.parent / "outside"), ".."), ("escape", "outside"),
                            ("missing", "available")]:
            refused = load(name)
            assert not refused.success and words in refused.message, (name, refused.message)
            assert refused.active_adapter == "kitchen"
    finally:
        unloaded = load("")
    assert (unloaded.success, unloaded.active_adapter) == (True, "")
    result = segment(main, sample_rgb(5), "after-adapter")
    check_targets(result)
    assert result.adapter_id == ""


def test_diagnostics_and_no_detections_without_vision_msgs(main):
    main.spin_until(lambda: main.diagnostic("answered") not in (None, "0"), "diagnostics with answers")
    keys = {"queue_depth", "queue_size", "answered", "busy", "errors", "frames_evicted", "latency_p50_s",
            "latency_p95_s", "device_memory_bytes", "model_id", "adapter_id", "state"}
    status = next(s for a in reversed(main.diagnostics) for s in a.status if s.name.startswith(NODE))
    values = {kv.key: kv.value for kv in status.values}
    assert keys <= set(values), keys - set(values)
    assert values["state"] == "active" and values["model_id"] == "model" and float(values["latency_p95_s"]) > 0
    topics = dict(main.node.get_topic_names_and_types())
    assert f"/{NODE}/result" in topics and f"/{NODE}/detections" not in topics
