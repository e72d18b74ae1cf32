"""Serving (pixellm_ros.serving) in this process, without a node or a ROS context: a fake host and a fake engine
whose answers the test releases. The queue bound (BUSY), cancel, deactivation with requests queued, FRAME_NEXT
letting the requests behind it go first, the standing-query cadence, and drafts (draft_reuse): which questions get
the previous answer as their draft."""
from __future__ import annotations

import threading
import time
from dataclasses import fields, replace
from types import SimpleNamespace

import numpy as np
import pytest
from std_msgs.msg import Header

from pixellm_ros.conversions import rgb_to_msg
from pixellm_ros.engine import Result
from pixellm_ros.frame_cache import CameraSet, Frame
from pixellm_ros.model import TextEvent, streaming
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.params import NodeConfig, load_defaults
from pixellm_ros.answering import Drafts
from pixellm_ros.serving import AdapterRequest, Reply, Request, Serving

pytestmark = pytest.mark.ros
OK, BUSY = SegmentationResult.OK, SegmentationResult.BUSY
WAIT_S = 30  # a failure detector, not a speed check


def node_config(**over) -> NodeConfig:
    values = load_defaults()
    cfg = {f.name: values[f.name] for f in fields(NodeConfig)}
    cfg.update(cameras=("front", "back"), image_topics=("front/image", "back/image"), max_image_age_s=0.0)
    return replace(NodeConfig(**cfg), **over)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __getattr__(self, level):
        return lambda message, **kw: self.lines.append(f"{level}: {message}")


class Host:
    """The node's side: a log, a clock, and the results / feedback it would publish."""

    def __init__(self) -> None:
        self.log, self.published, self.feedbacks = Log(), [], []

    def get_logger(self):
        return self.log

    def now_ns(self) -> int:
        return time.time_ns()

    def state_label(self) -> str:
        return "inactive"

    def context_ok(self) -> bool:
        return True

    def publish_result(self, result):
        self.published.append(result)

    def publish_outputs(self, result, rgb, answer):
        pass

    def feedback(self, goal, feedback) -> bool:
        self.feedbacks.append((feedback, feedback.standing_result.status))  # (the last standing one is reused)
        return True


class Engine:
    """Answers "the cup" on each image; `gate` (when set up) holds each answer until the test opens it."""

    model_id, adapter_id = "fake", ""

    def __init__(self, hold: bool = False) -> None:
        self.gate = threading.Semaphore(0) if hold else None
        self.started = threading.Semaphore(0)
        self.images: list[tuple[str | None, float]] = []
        self.drafts: list[tuple[int, ...] | None] = []  # the draft each answer was given
        self.closed = False

    def set_image(self, rgb, key=None):
        self.images.append((key, time.monotonic()))

    @streaming  # a Stream of the events and the Result, like Engine.stream
    def stream(self, question, cancel=None, draft=None):
        self.drafts.append(draft)
        self.started.release()
        if self.gate is not None:
            self.gate.acquire(timeout=WAIT_S)
        yield TextEvent(1, "the cup", "the cup")
        verified = len(draft) if draft else 0  # the real engine: draft kept as far as greedy decoding agrees
        return Result(question, "the cup", "the cup</s>", [1, 2], [], 0,
                      "cancelled" if cancel is not None and cancel.is_set() else "eos", (4, 4), False, None,
                      verified, min(verified, 2))

    def unload_adapter(self):
        self.adapter_id = ""

    def close(self):
        self.closed = True


def serving(engine: Engine, **cfg) -> tuple[Serving, Host]:
    host = Host()
    s = Serving(host, waiters=8)
    s.cfg = node_config(**cfg)
    s.cameras = CameraSet(list(s.cfg.cameras), s.cfg.ring_size)
    s.start(engine)
    return s, host


def put_frame(s: Serving, camera: str = "front") -> Frame:
    header = Header(frame_id=camera)
    header.stamp.sec, header.stamp.nanosec = divmod(time.time_ns(), 1_000_000_000)
    frame = Frame(rgb_to_msg(np.zeros((4, 4, 3), np.uint8), header), time.time_ns(), time.monotonic_ns(), camera)
    s.cameras.get(camera).put(frame)
    return frame


def ask(s: Serving, qid: str, **query) -> Reply:
    reply = Reply()
    s.submit(Request(Query(id=qid, text="Where is the cup?", **query), "test", reply))
    return reply


def wait(reply: Reply) -> SegmentationResult:
    assert reply._event.wait(WAIT_S), "no answer"
    return reply.value


def test_a_full_queue_answers_busy_at_once_and_the_rest_are_answered():
    engine = Engine(hold=True)
    s, host = serving(engine, queue_size=2)
    put_frame(s)
    try:
        first = ask(s, "first")
        assert engine.started.acquire(timeout=WAIT_S)  # the worker holds "first"; the queue is empty
        queued = [ask(s, f"q{i}") for i in range(2)]
        busy = ask(s, "over")
        assert busy.value.status == BUSY and "queue_size" in busy.value.status_message  # answered at once
        assert any("'over': BUSY" in line for line in host.log.lines)
        for _ in range(3):
            engine.gate.release()
        assert [wait(r).status for r in [first, *queued]] == [OK, OK, OK]
        assert s.stats.snapshot()[0] == {"OK": 3, "BUSY": 1}
        assert [r.query_id for r in host.published] == ["over", "first", "q0", "q1"]
    finally:
        s.stop()
    assert engine.closed


def test_refusals_and_cancel():
    s, _ = serving(Engine())
    try:
        assert wait(ask(s, "blank", )).status == SegmentationResult.NO_IMAGE  # no frame yet
        req = Request(Query(id="c", text="Where?"), "test")
        req.cancel.set()
        result = s.answer(req)
        assert result.status == SegmentationResult.CANCELED and "before it started" in result.status_message
        bad = ask(s, "cam", camera="side")
        assert bad.value.status == SegmentationResult.INVALID_QUERY and "'front', 'back'" in bad.value.status_message
        waiting = Request(Query(id="n", text="Where?", frame_policy=Query.FRAME_NEXT), "test")
        threading.Timer(0.2, waiting.cancel.set).start()
        result = s.answer(waiting)  # nothing else queued: it waits on the camera until canceled
        assert result.status == SegmentationResult.CANCELED and "next frame" in result.status_message
    finally:
        s.stop()


def test_stop_answers_what_is_queued_with_not_ready():
    engine = Engine(hold=True)
    s, _ = serving(engine, queue_size=3)
    put_frame(s)
    first = ask(s, "first")
    assert engine.started.acquire(timeout=WAIT_S)
    queued = [ask(s, f"q{i}") for i in range(3)]
    engine.gate.release()
    s.stop()
    assert wait(first).status == OK
    assert [wait(r).status for r in queued] == [SegmentationResult.NOT_READY] * 3
    assert ask(s, "late").value.status == SegmentationResult.NOT_READY and not s.active


def test_frame_next_lets_the_requests_behind_it_go_first():
    s, _ = serving(Engine(), next_frame_timeout_s=WAIT_S)
    put_frame(s, "back")
    try:
        nxt = ask(s, "next", frame_policy=Query.FRAME_NEXT, camera="front")
        behind = ask(s, "behind", camera="back")
        assert wait(behind).status == OK and not nxt._event.is_set()
        put_frame(s, "front")
        assert wait(nxt).status == OK and wait(nxt).camera == "front"
    finally:
        s.stop()


def test_frame_next_times_out():
    s, _ = serving(Engine(), next_frame_timeout_s=0.2)
    try:
        result = wait(ask(s, "next", frame_policy=Query.FRAME_NEXT))
        assert result.status == SegmentationResult.TIMEOUT and "0.2 s (next_frame_timeout_s)" in result.status_message
    finally:
        s.stop()


def test_standing_query_answers_new_frames_at_most_rate_hz():
    engine = Engine()
    s, host = serving(engine)
    goal = SimpleNamespace(is_cancel_requested=False, goal_id=SimpleNamespace(uuid=b"1" * 16),
                           request=SimpleNamespace(query=Query(id="s", text="Where is the cup?"), rate_hz=20.0))
    stop = threading.Event()

    def camera():  # a fast camera: 100 Hz
        while not stop.is_set():
            put_frame(s)
            time.sleep(0.01)

    threading.Thread(target=camera, daemon=True).start()
    done = Reply()
    threading.Thread(target=lambda: done(s.ask(goal)), daemon=True).start()
    deadline = time.monotonic() + WAIT_S
    while len(host.feedbacks) < 3 + 5:  # each answer: its text as feedback, then standing_result
        assert time.monotonic() < deadline, "too few standing answers"
        time.sleep(0.01)
    goal.is_cancel_requested = True
    s.cancel(b"1" * 16)
    final = wait(done)
    stop.set()
    s.stop()
    assert final.status == SegmentationResult.CANCELED and "canceled after" in final.status_message
    keys = [k for k, _ in engine.images]
    assert len(set(keys)) == len(keys), "a frame was answered twice"
    gaps = np.diff([t for _, t in engine.images])
    assert (gaps >= 1 / 20.0 - 0.005).all(), f"answers closer than 1/rate_hz: {gaps}"
    standing = [status for f, status in host.feedbacks if f.standing_result.query_id]
    assert len(standing) >= 3 and set(standing) == {OK} and f"after {len(standing)} answers" in final.status_message


class CanceledOnSecondLook(threading.Event):
    """A cancel that comes after `answer` looked at it once (before the engine), i.e. during the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > 1


def _ask_text(s: Serving, qid: str, text: str) -> Reply:
    reply = Reply()
    s.submit(Request(Query(id=qid, text=text), "test", reply))
    return reply


def test_a_repeated_question_gets_the_previous_answer_as_its_draft():
    engine = Engine()
    s, host = serving(engine)
    put_frame(s)
    put_frame(s, "back")
    try:
        first, again = wait(ask(s, "first")), wait(ask(s, "again"))
        assert engine.drafts == [None, (1, 2)]  # the first answer's token ids
        assert (first.draft_tokens, first.accepted_draft_tokens) == (0, 0)
        assert (again.status, again.draft_tokens, again.accepted_draft_tokens) == (OK, 2, 2)
        assert host.published[-1].accepted_draft_tokens == 2  # ~/result carries the counts too
        assert s.stats.drafts() == (1, 2, 2)
        assert wait(ask(s, "other camera", camera="back")).draft_tokens == 0
        assert wait(_ask_text(s, "other text", "Where is the plate?")).draft_tokens == 0
        bowl = Query(id="canceled", text="Where is the bowl?")
        canceled = Request(bowl, "test", cancel=CanceledOnSecondLook())  # canceled while the engine answers
        assert s.answer(canceled).status == SegmentationResult.CANCELED
        assert wait(_ask_text(s, "bowl", bowl.text)).draft_tokens == 0
        assert engine.drafts[-4:] == [None, None, None, None]  # only OK answers become drafts
        swapped = Reply()
        assert s.submit_adapter(AdapterRequest("", None, swapped)) is None
        assert wait(swapped).success
        assert wait(ask(s, "after swap")).draft_tokens == 0 and engine.drafts[-1] is None  # swap cleared them
        assert wait(ask(s, "after swap 2")).draft_tokens == 2
    finally:
        s.stop()
    s.cfg = node_config()
    s.start(Engine())  # cleanup + configure + activate: a new engine, no drafts of the old one
    put_frame(s)
    try:
        assert wait(ask(s, "new engine")).draft_tokens == 0
    finally:
        s.stop()


def test_drafts_expire_and_draft_reuse_false_never_drafts():
    engine = Engine()
    s, _ = serving(engine, draft_max_age_s=0.2)
    put_frame(s)
    try:
        wait(ask(s, "first"))
        time.sleep(0.3)  # older than draft_max_age_s
        assert wait(ask(s, "late")).draft_tokens == 0 and engine.drafts == [None, None]
    finally:
        s.stop()
    engine = Engine()
    s, _ = serving(engine, draft_reuse=False)
    put_frame(s)
    try:
        assert [wait(ask(s, f"q{i}")).draft_tokens for i in range(3)] == [0, 0, 0]
        assert engine.drafts == [None] * 3 and s.stats.drafts() == (0, 0, 0)
    finally:
        s.stop()


def test_drafts_keep_the_most_recently_used_keys_only():
    drafts = Drafts(max_age_s=10.0, max_keys=3)
    for i in range(3):
        drafts.put(("front", f"q{i}", ""), [i], now_s=0.0)
    assert drafts.get(("front", "q0", ""), 1.0) == (0,)  # q0 used: q1 is now the oldest
    drafts.put(("front", "q3", ""), [3], now_s=1.0)
    assert len(drafts) == 3 and drafts.get(("front", "q1", ""), 1.0) is None
    assert drafts.get(("front", "q0", ""), 10.0) == (0,) and drafts.get(("front", "q0", ""), 10.1) is None
    assert drafts.get(("front", "q3", "kitchen"), 1.0) is None  # another adapter: another key
