"""Answering one question: pick its frame (frame_choice.py), convert it, run the engine (streaming feedback to an
Ask goal) and build the SegmentationResult. Every question, whatever its source (topics, ~/segment, ~/ask,
standing queries), is answered in `Answering.answer`, run by the worker of serving.py."""
from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from rclpy.duration import Duration
from std_msgs.msg import Header

from .action import Ask
from .conversions import ImageConversionError, compressed_to_rgb, image_to_rgb, stamp_ns
from .engine import Engine, Result
from .frame_cache import CameraSet, Frame
from .frame_choice import WAIT, FrameQuery, Refusal, check_age, pick_frame
from .messages import status_code, target_msg
from .model import TargetEvent, TextEvent
from .msg import Query, SegmentationResult, TargetMask
from .params import NodeConfig
from .srv import LoadAdapter

OK = SegmentationResult.OK
POLICY_NAMES = {Query.FRAME_LATEST: "latest", Query.FRAME_NEXT: "next", Query.FRAME_STAMP: "stamp"}
GUARD_STOPS = ("max_new_tokens", "max_targets", "repetition")  # Generation.stop_reason values logged at warn
NEXT_FRAME_SLICE_S = 0.05  # a FRAME_NEXT wait looks at the queue this often, to let other requests go first
DRAFT_KEYS = 32  # previous answers kept as drafts (LRU): a few standing queries and repeated questions per camera


class Host(Protocol):
    """What serving needs of the node around it."""

    def get_logger(self) -> Any: ...
    def now_ns(self) -> int: ...  # the node clock (image_age, the age rule)
    def state_label(self) -> str: ...  # the lifecycle state, for NOT_READY messages
    def context_ok(self) -> bool: ...  # False once ROS shut down: publishing fails, nothing to report
    def publish_result(self, result: SegmentationResult) -> None: ...
    def publish_outputs(self, result: SegmentationResult, rgb: np.ndarray, answer: Result) -> None: ...
    def feedback(self, goal: Any, feedback: Ask.Feedback) -> bool: ...  # False once shut down


class Refused(Exception):
    """A request answered with an error status before or instead of inference."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class Deferred(Exception):
    """A FRAME_NEXT request put back at the end of the queue while its frame has not come (see `_frame`)."""


class Reply:
    """One-shot hand-over of a result from the worker to a waiting service / action thread."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.value: Any = None

    def __call__(self, value: Any) -> None:
        self.value = value
        self._event.set()

    def wait(self) -> Any:
        self._event.wait()
        return self.value


@dataclass
class Request:
    """A question for the worker, from any interface."""

    query: Query
    source: str  # "query", "query_full", "segment", "ask", "standing" (for logs)
    done: Callable[[SegmentationResult], None] = lambda result: None
    image: Any = None  # sensor_msgs/Image: ~/segment with use_image
    frame: Frame | None = None  # standing queries: the frame the action loop picked
    goal: Any = None  # ~/ask: the ServerGoalHandle to stream feedback to
    cancel: threading.Event = field(default_factory=threading.Event)
    received_ns: int = field(default_factory=time.monotonic_ns)  # the FrameCache clock (FRAME_NEXT)
    outputs: tuple[np.ndarray, Result] | None = None  # frame + engine result for the topics, sent after the reply
    next_frame_deadline: float | None = None  # FRAME_NEXT: monotonic time of TIMEOUT, set when the wait starts


@dataclass
class AdapterRequest:
    name: str  # "" = unload
    folder: Path | None
    done: Callable[[LoadAdapter.Response], None]


class Drafts:
    """The last OK answer's token ids per (camera, question text, adapter id), kept for `max_age_s` as the draft of
    the next answer to the same question (engine.stream(draft=...), model/drafts.py): the answer is the same as
    without it, usually for one pass instead of one decode step per token. Bounded: DRAFT_KEYS keys (LRU), token
    ids only (no masks). Thread-safe (the worker writes, anyone may clear)."""

    def __init__(self, max_age_s: float, max_keys: int = DRAFT_KEYS) -> None:
        self.max_age_s, self.max_keys = max_age_s, max_keys
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, str], tuple[float, tuple[int, ...]]] = OrderedDict()

    def get(self, key: tuple[str, str, str], now_s: float) -> tuple[int, ...] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now_s - entry[0] > self.max_age_s:  # too old: the scene has likely changed, a pass may be wasted
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: tuple[str, str, str], token_ids: list[int], now_s: float) -> None:
        with self._lock:
            self._entries[key] = (now_s, tuple(token_ids))
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_keys:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class Answering:
    """The question-to-result path; serving.Serving adds the queue and the worker around it."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.cfg: NodeConfig | None = None  # set at configure
        self.cameras: CameraSet | None = None
        self.engine: Engine | None = None  # set while active
        self.drafts: Drafts | None = None  # set at start when draft_reuse is on; cleared when the weights change
        self._stop = threading.Event()

    def others_waiting(self, req: Request) -> bool:
        """FRAME_NEXT: True when `req` went back to the queue behind other requests (serving.py)."""
        return False

    def status(self, query: Query, status: int, message: str, header: Header | None = None) -> SegmentationResult:
        engine = self.engine
        return SegmentationResult(
            header=header or Header(), query_id=query.id, query_text=query.text, status=status,
            status_message=message, camera=query.camera or (self.cfg.cameras[0] if self.cfg else ""),
            model_id=engine.model_id if engine else "", adapter_id=engine.adapter_id if engine else "")

    def answer(self, req: Request) -> SegmentationResult:
        """Pick the frame and run the model; the result for ~/result (the outputs go out in `finish`)."""
        if req.cancel.is_set():
            return self.status(req.query, SegmentationResult.CANCELED, "canceled before it started")
        try:
            rgb, header, key, camera, start_ns = self._image(req)
        except Refused as r:
            return self.status(req.query, r.status, r.message)
        result = self.status(req.query, OK, "", header)
        result.camera = camera
        result.image_age = Duration(nanoseconds=start_ns - stamp_ns(header.stamp)).to_msg()
        t0 = time.perf_counter()
        try:
            self.engine.set_image(rgb, key)
        except ValueError as exc:
            result.status, result.status_message = SegmentationResult.INVALID_IMAGE, str(exc)
            return result
        except Exception as exc:
            return self._model_error(result, exc)
        # Drafts only for camera frames (a caller's own image has no camera to be "the same" as). The node decodes
        # greedily (it has no do_sample parameter); the engine would ignore a draft when sampling anyway.
        draft_key = ((camera, req.query.text.strip(), self.engine.adapter_id)
                     if self.drafts is not None and camera else None)
        draft = self.drafts.get(draft_key, time.monotonic()) if draft_key else None
        try:
            answer, targets = self._generate(req, header, draft)
        except Exception as exc:
            return self._model_error(result, exc)
        result.inference_time = Duration(seconds=time.perf_counter() - t0).to_msg()
        result.answer, result.targets = answer.answer, targets
        result.incomplete_codebook_tokens = answer.incomplete_codebook_tokens
        result.adapter_id = self.engine.adapter_id
        result.draft_tokens, result.accepted_draft_tokens = answer.draft_tokens, answer.accepted_draft_tokens
        result.stop_reason = "canceled" if answer.stop_reason == "cancelled" else answer.stop_reason
        if answer.stop_reason in GUARD_STOPS:
            self.host.get_logger().warning(f"{req.source} query {req.query.id!r}: answer cut by {answer.stop_reason} "
                                           f"after {len(answer.token_ids)} tokens, {len(targets)} targets")
        if answer.stop_reason == "cancelled":
            result.status = SegmentationResult.CANCELED
            result.status_message = f"canceled by the client after {len(answer.token_ids)} tokens"
            return result
        if draft_key:  # only OK answers become drafts (a canceled one returned above)
            self.drafts.put(draft_key, answer.token_ids, time.monotonic())
        req.outputs = (rgb, answer)  # published by `finish`, once the caller has the result
        return result

    def _model_error(self, result: SegmentationResult, exc: Exception) -> SegmentationResult:
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        gc.collect()
        torch.cuda.empty_cache()  # after OOM the next query must find the memory again
        result.status = SegmentationResult.MODEL_ERROR
        result.status_message = (f"out of device memory ({exc}); cache freed: try a smaller image or max_new_tokens"
                                 if oom else f"the model failed: {type(exc).__name__}: {exc}")
        return result

    def _image(self, req: Request) -> tuple[np.ndarray, Header, str | None, str, int]:
        """(rgb, source header, engine cache key, camera, inference start in node-clock ns); raises Refused. The
        age rule is checked at that start, after the conversion."""
        if req.image is not None:  # ~/segment with use_image: the caller's image
            return self.convert(req.image, False), req.image.header, None, "", self.host.now_ns()
        frame, fq = self._frame(req)
        rgb = self.convert(frame.msg, frame.compressed)
        start_ns = self.host.now_ns()
        stale = check_age(frame, fq, start_ns)
        if stale is not None:
            raise Refused(status_code(stale.status), stale.message)
        return rgb, frame.msg.header, f"{fq.camera}/{frame.stamp_ns}/{frame.received_ns}", fq.camera, start_ns

    def _frame(self, req: Request) -> tuple[Frame, FrameQuery]:
        """The request's frame by its policy. FRAME_NEXT waits up to next_frame_timeout_s from the first look; while
        other requests are queued the wait does not hold the worker: the request goes back to the end of the queue
        (Deferred), so a camera that has stalled does not hold up the questions about the others."""
        cfg, q = self.cfg, req.query
        camera = q.camera or cfg.cameras[0]
        policy = "given" if req.frame is not None else POLICY_NAMES[q.frame_policy]
        if policy == "next" and req.next_frame_deadline is None:
            req.next_frame_deadline = time.monotonic() + cfg.next_frame_timeout_s
        fq = FrameQuery(policy, camera, topic=cfg.image_topics[cfg.cameras.index(camera)],
                        max_age_s=q.max_image_age_s or cfg.max_image_age_s, stamp_ns=stamp_ns(q.stamp),
                        received_ns=req.received_ns, deadline_s=req.next_frame_deadline or 0.0,
                        timeout_s=cfg.next_frame_timeout_s, given=req.frame)
        cache = self.cameras.get(camera)
        while (got := pick_frame(cache, fq, time.monotonic())) is WAIT:
            if req.cancel.is_set() or self._stop.is_set():
                raise Refused(SegmentationResult.CANCELED, "canceled while waiting for the next frame")
            slice_s = min(max(fq.deadline_s - time.monotonic(), 0.0), NEXT_FRAME_SLICE_S)
            if cache.wait_next(req.received_ns, slice_s) is None and self.others_waiting(req):
                raise Deferred
        if isinstance(got, Refusal):
            raise Refused(status_code(got.status), got.message)
        return got, fq

    def convert(self, msg: Any, compressed: bool) -> np.ndarray:
        try:
            if compressed:
                return compressed_to_rgb(msg, self.cfg.max_image_pixels)
            return image_to_rgb(msg, self.cfg.max_image_pixels)
        except ImageConversionError as exc:
            raise Refused(SegmentationResult.INVALID_IMAGE, str(exc)) from None

    def _generate(self, req: Request, header: Header, draft: tuple[int, ...] | None = None
                  ) -> tuple[Result, list[TargetMask]]:
        """Run the engine, streaming feedback to an action goal; returns (engine result, target messages)."""
        targets: list[TargetMask] = []
        text = ""
        events = self.engine.stream(req.query.text, cancel=req.cancel, draft=draft)
        for event in events:
            if isinstance(event, TextEvent):
                text = event.text
                if req.goal is not None:
                    self.host.feedback(req.goal, Ask.Feedback(partial_answer=text))
            elif isinstance(event, TargetEvent):
                targets.append(target_msg(event.target, header))
                if req.goal is not None:
                    self.host.feedback(req.goal, Ask.Feedback(partial_answer=text, new_targets=[targets[-1]]))
        return events.result, targets
