"""Frame choice (pixellm_ros.frame_choice): every frame policy and age rule, in this process. No ROS."""
from __future__ import annotations

import pytest

from pixellm_ros.frame_cache import Frame, FrameCache
from pixellm_ros.frame_choice import WAIT, FrameQuery, Refusal, check_age, newest_unseen, pick_frame

S = 1_000_000_000  # ns per s


def cache_of(*stamps_s: float, ring_size: int = 30) -> FrameCache:
    """Frames stamped `stamps_s`, received at 10 s + i (ns of the FrameCache clock)."""
    cache = FrameCache(ring_size)
    for i, t in enumerate(stamps_s):
        cache.put(Frame(msg=f"f{i}", stamp_ns=int(t * S), received_ns=10 * S + i, camera="front"))
    return cache


def test_latest_is_the_newest_frame_or_no_image():
    q = FrameQuery("latest", "front", topic="front/image")
    assert pick_frame(cache_of(1.0, 2.0, 1.5), q, 0.0).msg == "f2"  # newest received, whatever its stamp
    refusal = pick_frame(cache_of(), q, 0.0)
    assert refusal == Refusal("NO_IMAGE", "no image from camera 'front' yet: publish on 'front/image'")


def test_stamp_is_the_nearest_frame_within_the_age_limit():
    cache = cache_of(1.0, 2.0, 3.0, ring_size=2)  # 1.0 pushed out of the ring
    q = FrameQuery("stamp", "front", max_age_s=0.4, stamp_ns=int(2.3 * S))
    assert pick_frame(cache, q, 0.0).msg == "f1"
    assert pick_frame(cache, FrameQuery("stamp", "front", max_age_s=0.5, stamp_ns=int(2.5 * S)), 0.0).msg == "f2"  # tie: newer
    far = pick_frame(cache, FrameQuery("stamp", "front", max_age_s=0.4, stamp_ns=int(1.0 * S)), 0.0)
    assert isinstance(far, Refusal) and far.status == "NO_IMAGE" and "among the last 2 (ring_size 2)" in far.message
    assert pick_frame(cache, FrameQuery("stamp", "front", max_age_s=0.0, stamp_ns=0), 0.0).msg == "f1"  # no limit
    assert pick_frame(cache_of(), FrameQuery("stamp", "front"), 0.0).status == "NO_IMAGE"


def test_next_is_the_first_frame_after_the_question_else_wait_until_the_deadline():
    cache = cache_of(1.0, 2.0)
    asked = 10 * S  # f0 came with the question (same time), f1 after
    q = FrameQuery("next", "front", topic="image", received_ns=asked, deadline_s=5.0, timeout_s=2.0)
    assert pick_frame(cache, q, 4.0).msg == "f1"
    later = FrameQuery("next", "front", topic="image", received_ns=asked + 1, deadline_s=5.0, timeout_s=2.0)
    assert pick_frame(cache, later, 4.9) is WAIT
    timeout = pick_frame(cache, later, 5.0)
    assert timeout == Refusal("TIMEOUT", "no new frame from camera 'front' (topic 'image') within 2.0 s "
                                         "(next_frame_timeout_s)")
    cache.put(Frame("f2", 3 * S, asked + 2, "front"))
    assert pick_frame(cache, later, 99.0).msg == "f2"  # a frame that came is taken even past the deadline


def test_given_frame_and_unknown_policy():
    frame = Frame("mine", 0, 0, "front")
    assert pick_frame(cache_of(1.0), FrameQuery("given", "front", given=frame), 0.0) is frame
    with pytest.raises(ValueError):
        pick_frame(cache_of(1.0), FrameQuery("given", "front"), 0.0)
    with pytest.raises(ValueError, match="unknown frame policy"):
        pick_frame(cache_of(1.0), FrameQuery("oldest", "front"), 0.0)


@pytest.mark.parametrize("policy", ["latest", "next", "given"])
def test_age_limit_at_the_inference_start(policy):
    frame = Frame("f", stamp_ns=10 * S, received_ns=0, camera="front")
    q = FrameQuery(policy, "front", max_age_s=1.0, given=frame)
    assert check_age(frame, q, start_ns=11 * S) is None  # exactly at the limit: still fresh
    stale = check_age(frame, q, start_ns=11 * S + 1)
    assert stale.status == "STALE_IMAGE" and "1.00 s old; the limit is 1.0 s" in stale.message
    assert check_age(frame, FrameQuery(policy, "front", max_age_s=0.0, given=frame), 99 * S) is None  # no limit


def test_stamp_frames_are_not_aged_by_the_clock():
    """FRAME_STAMP asks for an old frame on purpose: its limit is the distance to the stamp, not the age."""
    frame = Frame("f", stamp_ns=10 * S, received_ns=0, camera="front")
    assert check_age(frame, FrameQuery("stamp", "front", max_age_s=1.0, stamp_ns=10 * S), 99 * S) is None


def test_standing_queries_take_the_newest_frame_not_answered_yet():
    cache = cache_of(1.0, 2.0, 3.0)
    assert newest_unseen(cache, -1).msg == "f2"
    assert newest_unseen(cache, 10 * S + 1).msg == "f2"
    assert newest_unseen(cache, 10 * S + 2) is None
    assert newest_unseen(cache_of(), -1) is None
    assert cache.first_after(10 * S).msg == "f1" and cache.first_after(10 * S + 2) is None
