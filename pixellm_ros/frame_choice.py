"""Which cached frame answers a question: the frame policies and age rules, as pure functions of the cache's
contents and the time (no ROS, no waiting: the worker waits between calls; see serving.py).

- "latest": the newest frame; none -> NO_IMAGE.
- "next": the first frame received after the question; none by its deadline -> TIMEOUT; until then WAIT.
- "stamp": the ring frame nearest the requested stamp; none within max_age_s of it -> NO_IMAGE.
- "given": a frame already chosen by the caller (standing queries: the newest frame not answered yet).
The age rule (`check_age`): at the inference start, a frame of any policy but "stamp" older than max_age_s is
STALE_IMAGE ("stamp" checked its distance to the stamp instead). max_age_s 0 = no limit.
"""
from __future__ import annotations

from dataclasses import dataclass

from .frame_cache import Frame, FrameCache

POLICIES = ("latest", "next", "stamp", "given")


@dataclass(frozen=True)
class Refusal:
    """No frame for this question: `status` names a SegmentationResult status (NO_IMAGE, STALE_IMAGE, TIMEOUT)."""

    status: str
    message: str


class Wait:
    """FRAME_NEXT before its deadline with no new frame yet: wait on the cache, then ask again."""


WAIT = Wait()


@dataclass(frozen=True)
class FrameQuery:
    """What frame choice needs to know of a question."""

    policy: str  # one of POLICIES
    camera: str
    topic: str = ""  # the camera's topic (for messages)
    max_age_s: float = 0.0  # the query's limit, else the node's; 0 = no limit
    stamp_ns: int = 0  # "stamp": the requested stamp
    received_ns: int = 0  # "next": frames received after this (the FrameCache clock)
    deadline_s: float = 0.0  # "next": TIMEOUT at this time (time.monotonic clock)
    timeout_s: float = 0.0  # "next": the wait that set deadline_s (next_frame_timeout_s, for messages)
    given: Frame | None = None  # "given": the frame


def pick_frame(cache: FrameCache, q: FrameQuery, now_s: float) -> Frame | Refusal | Wait:
    """The frame for `q` from `cache` at monotonic time `now_s`, a Refusal, or WAIT ("next" only)."""
    if q.policy == "given":
        if q.given is None:
            raise ValueError("policy 'given' needs the frame")
        return q.given
    if q.policy == "stamp":
        frame = cache.nearest(q.stamp_ns, int(q.max_age_s * 1e9) if q.max_age_s else None)
        return frame or Refusal("NO_IMAGE", f"no frame of camera {q.camera!r} within {q.max_age_s} s of the requested "
                                            f"stamp among the last {len(cache)} (ring_size {cache.ring_size})")
    if q.policy == "next":
        frame = cache.first_after(q.received_ns)
        if frame is not None:
            return frame
        if now_s >= q.deadline_s:
            return Refusal("TIMEOUT", f"no new frame from camera {q.camera!r} (topic {q.topic!r}) within "
                                      f"{q.timeout_s} s (next_frame_timeout_s)")
        return WAIT
    if q.policy == "latest":
        return cache.latest() or Refusal("NO_IMAGE", f"no image from camera {q.camera!r} yet: publish on {q.topic!r}")
    raise ValueError(f"unknown frame policy {q.policy!r}; one of {POLICIES}")


def check_age(frame: Frame, q: FrameQuery, start_ns: int) -> Refusal | None:
    """STALE_IMAGE when `frame` is older than the limit at `start_ns` (the inference start, node clock): checked
    after the conversion, so no answer reports an image_age above max_age_s."""
    if q.policy == "stamp" or not q.max_age_s:
        return None
    age = (start_ns - frame.stamp_ns) / 1e9
    if age <= q.max_age_s:
        return None
    return Refusal("STALE_IMAGE", f"the frame of camera {q.camera!r} is {age:.2f} s old; the limit is {q.max_age_s} s "
                                  f"(max_image_age_s)")


def newest_unseen(cache: FrameCache, seen_received_ns: int) -> Frame | None:
    """Standing queries: the newest frame received after `seen_received_ns`, or None."""
    frame = cache.latest()
    return frame if frame is not None and frame.received_ns > seen_received_ns else None
