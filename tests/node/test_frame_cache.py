"""FrameCache / CameraSet: ordering, ring eviction, nearest stamp, wait_next across threads. No ROS."""
from __future__ import annotations

import threading
import time

import pytest

from pixellm_ros.frame_cache import CameraSet, Frame, FrameCache


def frame(i: int, stamp_ns: int | None = None, camera: str = "front") -> Frame:
    return Frame(msg=f"msg{i}", stamp_ns=i * 100 if stamp_ns is None else stamp_ns, received_ns=1000 + i,
                 camera=camera)


def test_empty_cache():
    cache = FrameCache(3)
    assert cache.latest() is None and cache.nearest(0) is None and len(cache) == 0
    assert cache.wait_next(0, timeout_s=0.0) is None


def test_latest_is_last_put_and_ring_evicts_oldest():
    cache = FrameCache(ring_size=3)
    for i in range(5):
        cache.put(frame(i))
        assert cache.latest().msg == f"msg{i}"
    assert len(cache) == 3 and cache.received == 5 and cache.evicted == 2
    assert cache.nearest(0).msg == "msg2"  # frames 0 and 1 are gone
    cache.clear()
    assert len(cache) == 0 and cache.latest() is None and cache.received == 5


def test_nearest_with_tolerance():
    cache = FrameCache(10)
    for i, stamp in enumerate([100, 200, 300]):
        cache.put(frame(i, stamp))
    assert cache.nearest(190).stamp_ns == 200
    assert cache.nearest(250).stamp_ns == 300  # tie: the newer frame
    assert cache.nearest(1000).stamp_ns == 300
    assert cache.nearest(340, tolerance_ns=50).stamp_ns == 300
    assert cache.nearest(360, tolerance_ns=50) is None


def test_wait_next_returns_first_frame_after_time_without_waiting():
    cache = FrameCache(10)
    for i in range(4):
        cache.put(frame(i))  # received 1000..1003
    assert cache.wait_next(1001, timeout_s=0.0).msg == "msg2"


def test_wait_next_wakes_on_put_from_another_thread():
    cache = FrameCache(10)
    cache.put(frame(0))
    waiting = threading.Event()
    got: list = []

    def waiter():
        waiting.set()
        got.append(cache.wait_next(1000, timeout_s=10.0))

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(5)
    t0 = time.monotonic()
    cache.put(frame(1))
    t.join(10)
    assert not t.is_alive() and got[0].msg == "msg1"
    assert time.monotonic() - t0 < 5  # woken by put, not by the timeout


def test_wait_next_times_out():
    cache = FrameCache(10)
    cache.put(frame(0))
    t0 = time.monotonic()
    assert cache.wait_next(1000, timeout_s=0.1) is None
    assert 0.09 <= time.monotonic() - t0 < 2


def test_thread_safety_smoke():
    cache = FrameCache(ring_size=7)
    n_threads, per_thread = 4, 500
    errors: list[BaseException] = []

    def writer(k):
        try:
            for i in range(per_thread):
                cache.put(Frame(msg=(k, i), stamp_ns=i, received_ns=i, camera="c"))
                cache.latest()
                cache.nearest(i)
                len(cache)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert cache.received == n_threads * per_thread
    assert cache.evicted == n_threads * per_thread - 7 and len(cache) == 7


def test_camera_set():
    cams = CameraSet(["front", "wrist"], ring_size=2)
    assert cams.default == "front" and list(cams) == ["front", "wrist"] and "wrist" in cams
    cams.get("wrist").put(frame(0, camera="wrist"))
    assert cams.get("wrist").latest().camera == "wrist" and cams.get("front").latest() is None
    assert cams.get("") is cams.get("front") and cams.get(None) is cams.get("front")
    assert cams.get("wrist").ring_size == 2
    with pytest.raises(KeyError, match=r"known cameras: \['front', 'wrist'\]"):
        cams.get("back")
    with pytest.raises(ValueError):
        CameraSet([])
    with pytest.raises(ValueError):
        CameraSet(["a", "a"])
    with pytest.raises(ValueError):
        FrameCache(0)
