"""Camera frames the node keeps between image callbacks and queries (pure Python, no ROS).

Image callbacks only `put` frames; the inference worker picks one per query by frame policy (frame_choice.py):
`latest`, `nearest(stamp)` from the short ring, or `first_after` / `wait_next` (the first frame received after
the query).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Frame:
    msg: object  # the sensor_msgs Image / CompressedImage, converted only when a query uses it
    stamp_ns: int  # header stamp of the image
    received_ns: int  # when the node received it (the caller's clock, the same for put and wait_next)
    camera: str
    compressed: bool = False


class FrameCache:
    """Thread-safe ring of the last `ring_size` frames of one camera, in arrival order."""

    def __init__(self, ring_size: int = 30) -> None:
        if ring_size < 1:
            raise ValueError(f"ring_size must be >= 1, got {ring_size}")
        self.ring_size = ring_size
        self._frames: deque[Frame] = deque()
        self._cond = threading.Condition()
        self.received = 0  # frames put since construction
        self.evicted = 0  # frames dropped from the ring to make room

    def put(self, frame: Frame) -> None:
        with self._cond:
            self._frames.append(frame)
            self.received += 1
            if len(self._frames) > self.ring_size:
                self._frames.popleft()
                self.evicted += 1
            self._cond.notify_all()

    def latest(self) -> Frame | None:
        with self._cond:
            return self._frames[-1] if self._frames else None

    def nearest(self, stamp_ns: int, tolerance_ns: int | None = None) -> Frame | None:
        """The cached frame whose stamp is closest to `stamp_ns` (the newer one on a tie); None when the ring is
        empty or the closest is more than `tolerance_ns` away."""
        with self._cond:
            best = None
            for f in self._frames:
                if best is None or abs(f.stamp_ns - stamp_ns) <= abs(best.stamp_ns - stamp_ns):
                    best = f
        if best is None or (tolerance_ns is not None and abs(best.stamp_ns - stamp_ns) > tolerance_ns):
            return None
        return best

    def _first_after(self, after_received_ns: int) -> Frame | None:
        for f in self._frames:
            if f.received_ns > after_received_ns:
                return f
        return None

    def first_after(self, after_received_ns: int) -> Frame | None:
        """The first cached frame received after `after_received_ns`, or None (no waiting)."""
        with self._cond:
            return self._first_after(after_received_ns)

    def wait_next(self, after_received_ns: int, timeout_s: float) -> Frame | None:
        """The first frame received after `after_received_ns`, waiting up to `timeout_s` for it; None on timeout."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        with self._cond:
            while True:
                frame = self._first_after(after_received_ns)
                remaining = deadline - time.monotonic()
                if frame is not None or remaining <= 0:
                    return frame
                self._cond.wait(remaining)

    def clear(self) -> None:
        with self._cond:
            self._frames.clear()

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)


class CameraSet:
    """One FrameCache per configured camera name; the first name is the default camera."""

    def __init__(self, names: list[str], ring_size: int = 30) -> None:
        if not names:
            raise ValueError("at least one camera name is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        self.names = list(names)
        self._caches = {n: FrameCache(ring_size) for n in self.names}

    @property
    def default(self) -> str:
        return self.names[0]

    def get(self, name: str | None = None) -> FrameCache:
        """The cache of camera `name`; empty or None = the default camera. KeyError for unknown names."""
        key = name or self.default
        try:
            return self._caches[key]
        except KeyError:
            raise KeyError(f"unknown camera {name!r}; known cameras: {self.names}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._caches

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)
