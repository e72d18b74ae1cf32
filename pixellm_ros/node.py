"""The `pixellm` ROS 2 node: camera frames and questions in, answers with one mask per target out.

    python -m pixellm_ros.node --ros-args --params-file config/pixellm.yaml -p model_path:=DIR

A lifecycle node: configure reads and checks the parameters and subscribes the cameras, activate loads
the Engine, deactivate / cleanup free it. Query topics, `~/segment`, `~/ask` and `~/load_adapter` exist in
every state (answering NOT_READY unless active) and feed ONE bounded queue served by ONE worker thread;
image callbacks only cache frames. Every output carries the header of the image it describes. The README
section "The ROS 2 node" lists topics, QoS, parameters and statuses.
"""
from __future__ import annotations

import gc
import importlib
import itertools
import math
import queue
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Pose, PoseArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, RegionOfInterest
from std_msgs.msg import Header, String

from .action import Ask
from .conversions import (ImageConversionError, backproject, centroid, compressed_to_rgb, depth_to_meters,
                          image_to_rgb, label_to_msg, mask_to_msg, points_to_cloud, rgb_to_msg)
from .engine import Engine, EngineConfig, Result
from .executor import NO_EVENT_HANDLERS, PoolAwareMultiThreadedExecutor
from .frame_cache import CameraSet, Frame, FrameCache
from .model import Target, TargetEvent, TextEvent
from .model.tokenizer import IMAGE_PLACEHOLDER
from .msg import Query, SegmentationResult, TargetMask
from .overlay import draw_overlay
from .params import ConfigError, NodeConfig, configure, load_defaults, model_root_of
from .srv import LoadAdapter, Segment

NODE_NAME = "pixellm"
LAUNCH_ONLY_PARAMS = ("model_root", "adapter_dir")  # read-only once the node runs (see __init__)
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
# Question topics: a burst deeper than the reader's history loses questions silently (seen with depth 10 while
# the worker held the GIL); 100 keeps bursts answered (BUSY beyond queue_size), each with a result.
QUERY_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
RESULT_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)  # bursts of BUSY answers fit
IMAGE_OUT_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
# Ask feedback comes once per token. rclpy's default (reliable, depth 10) drops the oldest unread messages when a
# client spins slower than the worker decodes (seen on a loaded machine: 29 of 34). A whole answer's feedback fits
# in 1000; a client that wants every message subscribes with this profile too (feedback_sub_qos_profile).
FEEDBACK_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
DEPTH_SLOP_S = 0.1  # depth frame used for an image: the nearest in stamp, at most this far away
BUSY_LOG_PERIOD_S = 1.0  # BUSY answers are logged at most once per period, with the count of the others
LATENCY_WINDOW = 200  # answers kept for the latency percentiles in /diagnostics
GUARD_STOPS = ("max_new_tokens", "max_targets", "repetition")  # Generation.stop_reason values logged at warn
NEXT_FRAME_SLICE_S = 0.05  # a FRAME_NEXT wait looks at the queue this often, to let other requests go first
S = SegmentationResult
STATUS_NAMES = {getattr(S, n): n for n in dir(S) if n.isupper() and isinstance(getattr(S, n), int)}


def import_vision_msgs() -> ModuleType | None:
    """vision_msgs.msg where installed (then ~/detections is published), else None."""
    try:
        return importlib.import_module("vision_msgs.msg")
    except ImportError:
        return None


def resolve_adapter(adapter_dir: str, name: str) -> Path:
    """The adapter folder `name` inside `adapter_dir`; ValueError when it is not there or escapes it
    (`..`, an absolute path, or a symlink pointing outside)."""
    if not adapter_dir:
        raise ValueError("adapters are disabled: set the adapter_dir parameter to the folder holding them")
    root = Path(adapter_dir).expanduser().resolve()
    if ".." in Path(name).parts or Path(name).is_absolute():
        raise ValueError(f"adapter name {name!r} must be a folder name inside adapter_dir {root}, without '..'")
    try:
        folder = (root / name).resolve()  # follows symlinks
        if folder == root or not folder.is_relative_to(root):
            raise ValueError(f"adapter {name!r} resolves to {folder}, outside adapter_dir {root}")
        if not folder.is_dir():
            known = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ValueError(f"no adapter folder {name!r} in {root}; available: {known}")
    except (OSError, RuntimeError) as exc:  # a name too long, a symlink loop, ...: a refusal, not a crash
        raise ValueError(f"adapter name {name!r} is not a usable folder in {root}: {type(exc).__name__}: "
                         f"{exc}") from None
    return folder


def detections_msg(vision: ModuleType, header: Header, targets: list[TargetMask]) -> Any:
    """vision_msgs/Detection2DArray (Humble+ layout): one detection per target, class_id = its label."""
    out = vision.Detection2DArray(header=header)
    for t in targets:
        det = vision.Detection2D(header=header)
        det.id = str(t.index)
        hyp = vision.ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = t.label, float(t.score)
        det.results.append(hyp)
        det.bbox.center.position.x = t.bbox.x_offset + t.bbox.width / 2.0
        det.bbox.center.position.y = t.bbox.y_offset + t.bbox.height / 2.0
        det.bbox.size_x, det.bbox.size_y = float(t.bbox.width), float(t.bbox.height)
        out.detections.append(det)
    return out


def stamp_ns(header: Header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class Refused(Exception):
    """A request answered with an error status before or instead of inference."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


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


class Deferred(Exception):
    """A FRAME_NEXT request put back at the end of the queue while its frame has not come (see _wait_next)."""


@dataclass
class Request:
    """A question for the worker, from any interface."""

    query: Query
    source: str  # "query", "query_full", "segment", "ask", "standing" (for logs)
    done: Callable[[SegmentationResult], None] = lambda result: None
    image: Image | None = None  # ~/segment with use_image
    frame: Frame | None = None  # standing queries: the frame the action loop picked
    goal: ServerGoalHandle | None = None  # ~/ask: stream feedback to it
    cancel: threading.Event = field(default_factory=threading.Event)
    received_ns: int = field(default_factory=time.monotonic_ns)  # the FrameCache clock (FRAME_NEXT)
    outputs: tuple[np.ndarray, list[Target]] | None = None  # frame + targets for the topics, sent after the reply
    next_frame_deadline: float | None = None  # FRAME_NEXT: monotonic time of TIMEOUT, set when the wait starts


@dataclass
class AdapterRequest:
    name: str  # "" = unload
    folder: Path | None
    done: Callable[[LoadAdapter.Response], None]


class PixelLMNode(LifecycleNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._defaults = load_defaults()
        for name, default in self._defaults.items():
            self.declare_parameter(name, default, ParameterDescriptor(
                description="see config/pixellm.yaml", dynamic_typing=True, read_only=name in LAUNCH_ONLY_PARAMS))
        # Where models and adapters may come from is fixed by whoever launches the node: a parameter set
        # over the graph can switch models inside these folders, never point the node elsewhere.
        self._model_root = model_root_of(str(self.get_parameter("model_root").value),
                                         str(self.get_parameter("model_path").value))
        self.cfg: NodeConfig | None = None
        self._engine_cfg: EngineConfig | None = None
        self._engine: Engine | None = None
        self._cameras: CameraSet | None = None
        self._depth: FrameCache | None = None
        self._camera_info: CameraInfo | None = None
        self._subscriptions_cfg: list = []  # created at configure, destroyed at cleanup
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._active = False
        self._submit_lock = threading.Lock()  # orders "is active + enqueue" against deactivation
        self._stats_lock = threading.Lock()
        self._statuses: Counter[str] = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._busy_logged_at, self._busy_unlogged = -math.inf, 0
        self._query_ids = itertools.count(1)
        self._goal_cancels: dict[bytes, threading.Event] = {}
        self._standing = 0
        self._target_pubs: dict[int, Any] = {}
        self._vision = import_vision_msgs()

        # Blocking callers (service calls, action goals) each hold an executor thread until answered: at most
        # queue_size + 1 one-shot requests and max_standing_queries standing goals at once, plus spare threads
        # so image, query and lifecycle callbacks never wait. Sized from the start-up parameter values.
        waiters = (self.get_parameter("queue_size").value + 1 + self.get_parameter("max_standing_queries").value)
        self.executor_threads = max(int(waiters), 1) + 4
        self._waiter_slots = threading.BoundedSemaphore(self.executor_threads - 4)

        self._group = ReentrantCallbackGroup()  # lifecycle services stay in the default group
        self._result_pub = self.create_publisher(SegmentationResult, "~/result", RESULT_QOS)
        self._answer_pub = self.create_publisher(String, "~/answer", RELIABLE)
        self._label_pub = self.create_publisher(Image, "~/masks/label", IMAGE_OUT_QOS)
        self._overlay_pub = self.create_publisher(Image, "~/overlay", IMAGE_OUT_QOS)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
        self._detections_pub = (self.create_publisher(self._vision.Detection2DArray, "~/detections", RELIABLE)
                                if self._vision else None)
        self._points_pub = self._centroids_pub = None
        self.create_subscription(String, "query", self._on_query, QUERY_QOS, callback_group=self._group,
                                 event_callbacks=NO_EVENT_HANDLERS)
        self.create_subscription(Query, "query_full", self._on_query_full, QUERY_QOS, callback_group=self._group,
                                 event_callbacks=NO_EVENT_HANDLERS)
        self.create_service(Segment, "~/segment", self._on_segment, callback_group=self._group)
        self.create_service(LoadAdapter, "~/load_adapter", self._on_load_adapter, callback_group=self._group)
        self._ask_server = ActionServer(
            self, Ask, "~/ask", execute_callback=self._on_ask, callback_group=self._group,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=self._on_cancel,
            feedback_pub_qos_profile=FEEDBACK_QOS)
        self._diag_timer = self.create_timer(self.get_parameter("diagnostics_period_s").value,
                                             self._publish_diagnostics, callback_group=self._group)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:
            # Once spinning, so queries already get NOT_READY while a big model loads.
            self._autostart_timer = self.create_timer(0.0, self._autostart)
        self.get_logger().info(f"pixellm node up (unconfigured); autostart {bool(self._autostart_timer)}")

    # ------------------------------------------------------------------------------ lifecycle
    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()
        if not self._active:
            self.get_logger().error("autostart failed (see above); fix the parameters, then configure and "
                                    "activate through ~/change_state")

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = {name: self.get_parameter(name).value for name in self._defaults}
            self.cfg, self._engine_cfg = configure(values, self._defaults, self._model_root)
        except ConfigError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        cfg = self.cfg
        self._cameras = CameraSet(list(cfg.cameras), cfg.ring_size)
        for camera, topic in zip(cfg.cameras, cfg.image_topics):
            cache = self._cameras.get(camera)
            msg_type, topic = (CompressedImage, topic + "/compressed") if cfg.use_compressed else (Image, topic)
            self._subscriptions_cfg.append(self.create_subscription(
                msg_type, topic, self._image_callback(camera, cache, cfg.use_compressed), qos_profile_sensor_data,
                callback_group=self._group, event_callbacks=NO_EVENT_HANDLERS))
        for k in range(len(self._target_pubs) + 1, cfg.max_target_topics + 1):  # made up front: no late discovery
            self._target_pubs[k] = self.create_publisher(Image, f"~/masks/target_{k}", IMAGE_OUT_QOS)
        if cfg.use_depth:
            self._depth = FrameCache(cfg.ring_size)
            self._subscriptions_cfg += [
                self.create_subscription(Image, cfg.depth_topic, self._image_callback("depth", self._depth, False),
                                         qos_profile_sensor_data, callback_group=self._group,
                                         event_callbacks=NO_EVENT_HANDLERS),
                self.create_subscription(CameraInfo, cfg.camera_info_topic, self._on_camera_info,
                                         qos_profile_sensor_data, callback_group=self._group,
                                         event_callbacks=NO_EVENT_HANDLERS)]
            self._points_pub = self._points_pub or self.create_publisher(PointCloud2, "~/points", IMAGE_OUT_QOS)
            self._centroids_pub = self._centroids_pub or self.create_publisher(PoseArray, "~/centroids", RELIABLE)
        if self._diag_timer.timer_period_ns != int(cfg.diagnostics_period_s * 1e9):
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics,
                                                 callback_group=self._group)
        self.get_logger().info(f"configured: model {self._engine_cfg.model_path}, cameras "
                               f"{dict(zip(cfg.cameras, cfg.image_topics))}, queue {cfg.queue_size}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._engine = Engine(self._engine_cfg)
        except Exception as exc:  # missing files, wrong shapes, no CUDA, ...: stay inactive, fixable
            self.get_logger().error(f"activate failed: cannot load the model from {self._engine_cfg.model_path}: "
                                    f"{type(exc).__name__}: {exc}. Fix the parameters, then cleanup + configure.")
            self._free_engine()
            return TransitionCallbackReturn.FAILURE
        # torch, rclpy and the model leave ~300k long-lived objects: without this, each full collection rescans
        # them (65-135 ms, measured) inside whichever answer it interrupts.
        gc.collect()
        gc.freeze()
        self._queue = queue.Queue(maxsize=self.cfg.queue_size)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="pixellm-worker", daemon=True)
        self._worker.start()
        with self._submit_lock:
            self._active = True
        e = self._engine
        self.get_logger().info(f"active: {e.model_id} on {e.device}/{e.dtype}, loaded in {e.load_seconds:.1f} s")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving()
        self.get_logger().info("deactivated: model unloaded")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unconfigure()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: unloading; configure again to continue")
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stop serving and drop everything configure and activate made (idempotent)."""
        self._stop_serving()
        self._unconfigure()

    def _stop_serving(self) -> None:
        with self._submit_lock:
            was_active, self._active = self._active, False
        self._stop.set()
        for event in list(self._goal_cancels.values()):
            event.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        while self._queue is not None and not self._queue.empty():  # left over: answer, never drop
            self._refuse_queued(self._queue.get_nowait())
        self._free_engine()
        if was_active and self._context_ok():  # (after Ctrl-C the logger can no longer reach /rosout)
            self.get_logger().info("stopped serving")

    def _free_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        gc.unfreeze()  # (frozen in on_activate) so that the engine's cycles can be collected
        gc.collect()
        torch.cuda.empty_cache()  # no-op without CUDA

    def _unconfigure(self) -> None:
        for sub in self._subscriptions_cfg:
            self.destroy_subscription(sub)
        self._subscriptions_cfg = []
        self._cameras = self._depth = self._camera_info = None

    # --------------------------------------------------------------------------------- inputs
    def _image_callback(self, camera: str, cache: FrameCache, compressed: bool) -> Callable[[Any], None]:
        def on_image(msg: Any) -> None:
            cache.put(Frame(msg, stamp_ns(msg.header), time.monotonic_ns(), camera, compressed))
        return on_image

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_query(self, msg: String) -> None:
        policy = Query.FRAME_NEXT if self.cfg and self.cfg.frame_policy == "next" else Query.FRAME_LATEST
        query = Query(id=f"q{next(self._query_ids)}", text=msg.data, frame_policy=policy)
        self._submit(Request(query, "query"))

    def _on_query_full(self, msg: Query) -> None:
        self._submit(Request(msg, "query_full"))

    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        req = Request(request.query, "segment", image=request.image if request.use_image else None)
        response.result = self._call(req)
        return response

    def _call(self, req: Request, serve: Callable[[], SegmentationResult] | None = None) -> SegmentationResult:
        """Submit `req` and wait for its answer, or run `serve` (standing queries), holding one of the
        executor threads reserved for waiting callers; BUSY when none is left."""
        if not self._waiter_slots.acquire(blocking=False):
            return self._finish(req, self._status(req.query, S.BUSY, "too many waiting requests; retry later"))
        try:
            if serve is not None:
                return serve()
            reply = Reply()
            req.done = reply
            return reply.wait() if self._submit(req) else reply.value
        finally:
            self._waiter_slots.release()

    def _on_cancel(self, goal: ServerGoalHandle) -> CancelResponse:
        event = self._goal_cancels.get(bytes(goal.goal_id.uuid))
        if event is not None:
            event.set()  # the engine checks it between tokens
        return CancelResponse.ACCEPT

    def _on_ask(self, goal: ServerGoalHandle) -> Ask.Result:
        key = bytes(goal.goal_id.uuid)
        req = Request(goal.request.query, "ask", goal=goal)
        self._goal_cancels[key] = req.cancel
        if goal.is_cancel_requested:  # canceled before this callback registered its event
            req.cancel.set()
        try:
            standing = goal.request.rate_hz > 0
            result = self._call(req, (lambda: self._standing_query(goal, req)) if standing else None)
        finally:
            self._goal_cancels.pop(key, None)
        try:
            if result.status == S.OK:
                goal.succeed()
            elif result.status == S.CANCELED and goal.is_cancel_requested:
                goal.canceled()
            else:
                goal.abort()
        except Exception:
            if self._context_ok():
                raise  # (else: shutting down; the goal's status can no longer be published)
        return Ask.Result(result=result)

    def _standing_query(self, goal: ServerGoalHandle, first: Request) -> SegmentationResult:
        """Re-answer the query on the newest frame, at most rate_hz times a second, until canceled."""
        query, cancel = first.query, first.cancel
        with self._stats_lock:
            full = self.cfg is not None and self._standing >= self.cfg.max_standing_queries
            self._standing += 0 if full else 1
        if full:
            return self._finish(first, self._status(query, S.BUSY, f"{self.cfg.max_standing_queries} standing "
                                                    f"queries already run (max_standing_queries)"))
        try:
            refusal = self._refusal(first)
            if refusal:
                return self._finish(first, refusal)
            cache = self._cameras.get(query.camera)
            period_ns = int(1e9 / goal.request.rate_hz)
            last: SegmentationResult | None = None
            answers, seen_ns, next_ns = 0, -1, 0
            while not cancel.is_set() and self._active and self._context_ok():
                if goal.is_cancel_requested:  # a cancel that raced the registration of `cancel` in _on_ask
                    cancel.set()
                    break
                wait_s = (next_ns - time.monotonic_ns()) / 1e9
                if wait_s > 0:  # in slices: a tiny rate_hz (a wait of 1e30 s) must not overflow the timer
                    cancel.wait(min(wait_s, 0.5))
                    continue
                frame = cache.latest()  # the newest frame not answered yet, else wait for one
                if frame is None or frame.received_ns <= seen_ns:
                    frame = cache.wait_next(seen_ns, 0.1)
                if frame is None or cancel.is_set():
                    continue
                seen_ns, next_ns = frame.received_ns, time.monotonic_ns() + period_ns
                q = self._queue
                if q is not None and q.full():
                    continue  # skip this frame; the next one may find room
                reply = Reply()
                if not self._submit(Request(query, "standing", reply, frame=frame, goal=goal, cancel=cancel)):
                    if reply.value.status == S.BUSY:
                        continue
                    return reply.value
                result = reply.wait()
                if result.status == S.CANCELED:
                    break
                last, answers = result, answers + (result.status == S.OK)
                if not self._feedback(goal, Ask.Feedback(partial_answer=result.answer, standing_result=result)):
                    break  # shutting down
            final = last or self._status(query, S.CANCELED, "")
            final.status = S.CANCELED if goal.is_cancel_requested else S.NOT_READY
            final.status_message = (f"standing query canceled after {answers} answers" if goal.is_cancel_requested
                                    else "the node was deactivated")
            return final
        finally:
            with self._stats_lock:
                self._standing -= 1

    def _on_load_adapter(self, request: LoadAdapter.Request, response: LoadAdapter.Response
                         ) -> LoadAdapter.Response:
        engine = self._engine
        response.active_adapter = engine.adapter_id if engine else ""
        try:
            folder = resolve_adapter(self.cfg.adapter_dir if self.cfg else "", request.name) if request.name else None
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"load_adapter refused: {exc}")
            return response
        reply = Reply()
        with self._submit_lock:
            if not self._active:
                response.success, response.message = False, "the node is not active: activate it first"
                return response
            try:
                self._queue.put_nowait(AdapterRequest(request.name, folder, reply))
            except queue.Full:
                response.success, response.message = False, "request queue full; retry later"
                return response
        return reply.wait()

    # ------------------------------------------------------------------------------- queueing
    def _status(self, query: Query, status: int, message: str, header: Header | None = None) -> SegmentationResult:
        return SegmentationResult(
            header=header or Header(), query_id=query.id, query_text=query.text, status=status,
            status_message=message, camera=query.camera or (self.cfg.cameras[0] if self.cfg else ""),
            model_id=self._engine.model_id if self._engine else "",
            adapter_id=self._engine.adapter_id if self._engine else "")

    def _refusal(self, req: Request) -> SegmentationResult | None:
        """The NOT_READY / INVALID_QUERY answer a request gets without queueing, or None."""
        q = req.query
        if not self._active:
            state = self._state_machine.current_state[1]
            return self._status(q, S.NOT_READY, f"the node is {state}, not active: configure and activate it "
                                                f"(lifecycle ~/change_state, or parameter autostart)")
        problem = None
        if not q.text.strip():
            problem = "the query text is empty"
        elif len(q.text) > self.cfg.max_query_chars:
            problem = f"the query has {len(q.text)} characters; the limit is {self.cfg.max_query_chars} (max_query_chars)"
        elif IMAGE_PLACEHOLDER in q.text:
            problem = f"the query must not contain {IMAGE_PLACEHOLDER}"
        elif q.frame_policy not in (Query.FRAME_LATEST, Query.FRAME_NEXT, Query.FRAME_STAMP):
            problem = f"unknown frame_policy {q.frame_policy}; use FRAME_LATEST, FRAME_NEXT or FRAME_STAMP"
        elif not math.isfinite(q.max_image_age_s) or q.max_image_age_s < 0:
            problem = f"max_image_age_s must be >= 0, got {q.max_image_age_s}"
        elif req.image is None and q.camera and q.camera not in self._cameras:
            problem = f"unknown camera {q.camera!r}; known cameras: {list(self.cfg.cameras)}"
        return self._status(q, S.INVALID_QUERY, problem) if problem else None

    def _submit(self, req: Request) -> bool:
        """Queue `req` (True), or answer it at once (False): NOT_READY, INVALID_QUERY or BUSY."""
        with self._submit_lock:
            refusal = self._refusal(req)
            if refusal is None:
                try:
                    self._queue.put_nowait(req)
                    return True
                except queue.Full:
                    refusal = self._status(req.query, S.BUSY, f"request queue full ({self.cfg.queue_size} queued, "
                                                              f"queue_size); retry later")
        self._finish(req, refusal)
        return False

    def _refuse_queued(self, item: Request | AdapterRequest) -> None:
        if isinstance(item, AdapterRequest):
            item.done(LoadAdapter.Response(success=False, message="the node was deactivated"))
        else:
            self._finish(item, self._status(item.query, S.NOT_READY, "the node was deactivated before answering"))

    def _finish(self, req: Request, result: SegmentationResult) -> SegmentationResult:
        """Count, log and publish a result on ~/result, and hand it to whoever waits for it."""
        name = STATUS_NAMES.get(result.status, str(result.status))
        now = time.monotonic()
        with self._stats_lock:
            self._statuses[name] += 1
            if result.status == S.OK:
                self._latencies.append((time.monotonic_ns() - req.received_ns) / 1e9)
            # A flood of questions must not become a flood of log lines: each one costs the executor threads
            # (rclpy inspects the caller's frame) the time the worker needs. BUSY: one line a second + a count.
            quiet = result.status == S.BUSY and now - self._busy_logged_at < BUSY_LOG_PERIOD_S
            busy_unlogged, self._busy_unlogged = self._busy_unlogged, (self._busy_unlogged + 1 if quiet else 0)
            if result.status == S.BUSY and not quiet:
                self._busy_logged_at = now
        if result.status != S.OK and not quiet:
            more = (f" ({busy_unlogged} more BUSY answers before this one, not logged one by one)"
                    if result.status == S.BUSY and busy_unlogged else "")
            self.get_logger().warning(f"{req.source} query {req.query.id!r}: {name}: {result.status_message}{more}")
        # The waiting caller first (its latency is the node's), then the topics: at shutdown the context
        # may already refuse to publish.
        req.done(result)
        try:
            self._result_pub.publish(result)
        except Exception:
            if self._context_ok():
                raise
        outputs, req.outputs = req.outputs, None
        if outputs is not None and result.status == S.OK:
            try:
                self._publish_outputs(result, *outputs)
            except Exception as exc:  # the caller has its answer; the topics miss this one
                if self._context_ok():
                    self.get_logger().error(f"query {req.query.id!r}: answered, but publishing its masks failed: "
                                            f"{type(exc).__name__}: {exc}")
        return result

    def _context_ok(self) -> bool:
        return rclpy.ok(context=self.context)

    def _feedback(self, goal: ServerGoalHandle, feedback: Ask.Feedback) -> bool:
        """Publish goal feedback; False once Ctrl-C shut the context down (the publisher is gone by then: not a
        model error, and nothing to report)."""
        try:
            goal.publish_feedback(feedback)
            return True
        except _rclpy.RCLError:
            if self._context_ok():
                raise
            return False

    # --------------------------------------------------------------------------------- worker
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if isinstance(item, AdapterRequest):
                    item.done(self._swap_adapter(item))
                else:
                    self._finish(item, self._answer(item))
            except Deferred:
                continue  # back in the queue, behind the requests that can be answered now
            except Exception as exc:  # a bug in the node itself: answer, log, keep serving
                if self._context_ok():  # (else: shutting down, publishing fails; the caller is answered below)
                    self.get_logger().error(f"internal error: {type(exc).__name__}: {exc}")
                try:
                    if isinstance(item, Request):
                        self._finish(item, self._status(item.query, S.MODEL_ERROR, f"internal error: {exc}"))
                    else:
                        item.done(LoadAdapter.Response(success=False, message=f"internal error: {exc}"))
                except Exception as again:  # never let the worker die with a caller left waiting
                    self.get_logger().error(f"internal error while answering: {type(again).__name__}: {again}")

    def _swap_adapter(self, item: AdapterRequest) -> LoadAdapter.Response:
        response = LoadAdapter.Response()
        try:
            if item.folder is None:
                self._engine.unload_adapter()
                response.message = "adapter unloaded: base model active"
            else:
                self._engine.load_adapter(item.folder)
                response.message = f"adapter {item.name!r} active"
            response.success = True
            self.get_logger().info(response.message)
        except Exception as exc:
            response.message = f"cannot load adapter {item.name!r}: {type(exc).__name__}: {exc} (base model active)"
            self.get_logger().error(response.message)
        response.active_adapter = self._engine.adapter_id
        return response

    def _answer(self, req: Request) -> SegmentationResult:
        """Pick the frame and run the model; the result for ~/result (the outputs go out in `_finish`)."""
        if req.cancel.is_set():
            return self._status(req.query, S.CANCELED, "canceled before it started")
        try:
            rgb, header, key, camera, start_ns = self._pick_image(req)
        except Refused as r:
            return self._status(req.query, r.status, r.message)
        result = self._status(req.query, S.OK, "", header)
        result.camera = camera
        result.image_age = Duration(nanoseconds=start_ns - stamp_ns(header)).to_msg()
        t0 = time.perf_counter()
        try:
            self._engine.set_image(rgb, key)
        except ValueError as exc:
            result.status, result.status_message = S.INVALID_IMAGE, str(exc)
            return result
        except Exception as exc:
            return self._model_error(result, exc)
        try:
            answer, targets = self._generate(req, header)
        except Exception as exc:
            return self._model_error(result, exc)
        result.inference_time = Duration(seconds=time.perf_counter() - t0).to_msg()
        result.answer, result.targets = answer.answer, targets
        result.incomplete_codebook_tokens = answer.incomplete_codebook_tokens
        result.adapter_id = self._engine.adapter_id
        result.stop_reason = "canceled" if answer.stop_reason == "cancelled" else answer.stop_reason
        if answer.stop_reason in GUARD_STOPS:
            self.get_logger().warning(f"{req.source} query {req.query.id!r}: answer cut by {answer.stop_reason} after "
                                      f"{len(answer.token_ids)} tokens, {len(targets)} targets")
        if answer.stop_reason == "cancelled":
            result.status = S.CANCELED
            result.status_message = f"canceled by the client after {len(answer.token_ids)} tokens"
            return result
        req.outputs = (rgb, answer.targets)  # published by _finish, once the caller has the result
        return result

    def _model_error(self, result: SegmentationResult, exc: Exception) -> SegmentationResult:
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        gc.collect()
        torch.cuda.empty_cache()  # after OOM the next query must find the memory again
        result.status = S.MODEL_ERROR
        result.status_message = (f"out of device memory ({exc}); cache freed: try a smaller image or max_new_tokens"
                                 if oom else f"the model failed: {type(exc).__name__}: {exc}")
        return result

    def _pick_image(self, req: Request) -> tuple[np.ndarray, Header, str | None, str, int]:
        """(rgb, source header, engine cache key, camera, inference start in node-clock ns) by the request's
        frame policy; raises Refused. The age limit is checked at that start, after the conversion, so no
        answer reports an image_age above max_image_age_s."""
        cfg, q = self.cfg, req.query
        if req.image is not None:  # ~/segment with use_image: the caller's image
            rgb = self._convert(req.image, False)
            return rgb, req.image.header, None, "", self.get_clock().now().nanoseconds
        camera = q.camera or cfg.cameras[0]
        cache = self._cameras.get(camera)
        topic = cfg.image_topics[cfg.cameras.index(camera)]
        max_age = q.max_image_age_s or cfg.max_image_age_s
        frame = req.frame
        if frame is None and q.frame_policy == Query.FRAME_STAMP:
            frame = cache.nearest(stamp_ns(Header(stamp=q.stamp)), int(max_age * 1e9) if max_age else None)
            if frame is None:
                raise Refused(S.NO_IMAGE, f"no frame of camera {camera!r} within {max_age} s of the requested stamp "
                                          f"among the last {len(cache)} (ring_size {cfg.ring_size})")
        elif frame is None and q.frame_policy == Query.FRAME_NEXT:
            frame = self._wait_next(cache, req)
            if frame is None:
                raise Refused(S.TIMEOUT, f"no new frame from camera {camera!r} (topic {topic!r}) within "
                                         f"{cfg.next_frame_timeout_s} s (next_frame_timeout_s)")
        elif frame is None:
            frame = cache.latest()
            if frame is None:
                raise Refused(S.NO_IMAGE, f"no image from camera {camera!r} yet: publish on {topic!r}")
        rgb = self._convert(frame.msg, frame.compressed)
        start_ns = self.get_clock().now().nanoseconds
        if q.frame_policy != Query.FRAME_STAMP or req.frame is not None:
            age = (start_ns - frame.stamp_ns) / 1e9
            if max_age and age > max_age:
                raise Refused(S.STALE_IMAGE, f"the frame of camera {camera!r} is {age:.2f} s old; the limit is "
                                             f"{max_age} s (max_image_age_s)")
        return rgb, frame.msg.header, f"{camera}/{frame.stamp_ns}/{frame.received_ns}", camera, start_ns

    def _wait_next(self, cache: FrameCache, req: Request) -> Frame | None:
        """The first frame received after the query, waiting up to next_frame_timeout_s from the first look. While
        other requests are queued the wait does not hold the worker: the request goes back to the end of the queue
        (Deferred), so a camera that has stalled does not hold up the questions about the others."""
        if req.next_frame_deadline is None:
            req.next_frame_deadline = time.monotonic() + self.cfg.next_frame_timeout_s
        while not req.cancel.is_set() and not self._stop.is_set():
            remaining = req.next_frame_deadline - time.monotonic()
            frame = cache.wait_next(req.received_ns, min(max(remaining, 0.0), NEXT_FRAME_SLICE_S))
            if frame is not None or remaining <= 0:
                return frame
            if not self._queue.empty() and self._requeue(req):
                raise Deferred
        raise Refused(S.CANCELED, "canceled while waiting for the next frame")

    def _requeue(self, req: Request) -> bool:
        """Put a request the worker took back at the end of the queue; False when that is full or closing."""
        with self._submit_lock:
            if not self._active:
                return False
            try:
                self._queue.put_nowait(req)
                return True
            except queue.Full:
                return False

    def _convert(self, msg: Any, compressed: bool) -> np.ndarray:
        try:
            if compressed:
                return compressed_to_rgb(msg, self.cfg.max_image_pixels)
            return image_to_rgb(msg, self.cfg.max_image_pixels)
        except ImageConversionError as exc:
            raise Refused(S.INVALID_IMAGE, str(exc)) from None

    def _generate(self, req: Request, header: Header) -> tuple[Result, list[TargetMask]]:
        """Run the engine, streaming feedback to an action goal; returns (engine result, target messages)."""
        targets: list[TargetMask] = []
        text = ""
        gen = self._engine.stream(req.query.text, cancel=req.cancel)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value, targets
            if isinstance(event, TextEvent):
                text = event.text
                if req.goal is not None:
                    self._feedback(req.goal, Ask.Feedback(partial_answer=text))
            elif isinstance(event, TargetEvent):
                targets.append(target_msg(event.target, header))
                if req.goal is not None:
                    self._feedback(req.goal, Ask.Feedback(partial_answer=text, new_targets=[targets[-1]]))

    # -------------------------------------------------------------------------------- outputs
    def _publish_outputs(self, result: SegmentationResult, rgb: np.ndarray, targets: list[Target]) -> None:
        header = result.header
        self._answer_pub.publish(String(data=result.answer))
        label = np.zeros(rgb.shape[:2], np.uint8)
        for t in targets:
            label[t.mask] = min(t.index + 1, 255)
        self._label_pub.publish(label_to_msg(label, header))
        for k in range(1, self.cfg.max_target_topics + 1):  # fewer targets than topics: the rest get empty masks
            self._target_pubs[k].publish(result.targets[k - 1].mask if k <= len(targets)
                                         else mask_to_msg(np.zeros(rgb.shape[:2], bool), header))
        if self.cfg.publish_overlay and self._overlay_pub.get_subscription_count() > 0:
            overlay = draw_overlay(rgb, [t.mask for t in targets], [t.phrase for t in targets], result.answer)
            self._overlay_pub.publish(rgb_to_msg(overlay, header))
        if self._detections_pub is not None:
            self._detections_pub.publish(detections_msg(self._vision, header, list(result.targets)))
        if self.cfg.use_depth and result.camera == self.cfg.cameras[0]:
            self._publish_3d(header, targets)

    def _publish_3d(self, header: Header, targets: list[Target]) -> None:
        info, depth = self._camera_info, self._depth.nearest(stamp_ns(header), int(DEPTH_SLOP_S * 1e9))
        if info is None or depth is None:
            self.get_logger().warning(f"no {'camera_info' if info is None else 'depth frame'} for the image at "
                                      f"{stamp_ns(header)} ns: no 3-D output", throttle_duration_sec=5.0)
            return
        try:
            depth_m = depth_to_meters(depth.msg, self.cfg.max_image_pixels)
            points = [backproject(t.mask, depth_m, info.k) for t in targets]
        except ValueError as exc:
            self.get_logger().warning(f"no 3-D output: {exc}", throttle_duration_sec=5.0)
            return
        all_points = np.concatenate(points) if points else np.zeros((0, 3), np.float32)
        self._points_pub.publish(points_to_cloud(all_points, header))
        poses = PoseArray(header=header)
        for p in points:
            c = centroid(p) or (math.nan, math.nan, math.nan)  # NaN: no depth under the mask
            pose = Pose()
            pose.position.x, pose.position.y, pose.position.z = c
            pose.orientation.w = 1.0
            poses.poses.append(pose)
        self._centroids_pub.publish(poses)

    def _publish_diagnostics(self) -> None:
        with self._stats_lock:
            statuses, lat = dict(self._statuses), sorted(self._latencies)
        engine, cameras = self._engine, self._cameras
        pct = (lambda p: f"{lat[min(int(p * len(lat)), len(lat) - 1)]:.3f}") if lat else (lambda p: "")
        values = {
            "state": self._state_machine.current_state[1],
            "queue_depth": str(self._queue.qsize() if self._queue is not None else 0),
            "queue_size": str(self.cfg.queue_size if self.cfg else 0),
            "answered": str(statuses.get("OK", 0)),
            "busy": str(statuses.get("BUSY", 0)),
            "errors": str(sum(n for k, n in statuses.items() if k not in ("OK", "BUSY", "CANCELED", "NOT_READY"))),
            "frames_evicted": str(sum(cameras.get(c).evicted for c in cameras) if cameras else 0),
            "frames_received": str(sum(cameras.get(c).received for c in cameras) if cameras else 0),
            **{f"frames_received_{c}": str(cameras.get(c).received) for c in (cameras or [])},
            "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
            "device_memory_bytes": str(engine.memory_bytes() if engine else 0),
            "model_id": engine.model_id if engine else "", "adapter_id": engine.adapter_id if engine else "",
            **{f"status_{k.lower()}": str(n) for k, n in sorted(statuses.items())},
        }
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK if self._active else DiagnosticStatus.WARN, name=f"{self.get_name()}: inference",
            message="active" if self._active else f"not active ({values['state']})",
            hardware_id=values["model_id"], values=[KeyValue(key=k, value=v) for k, v in values.items()])
        self._diag_pub.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[status]))


def target_msg(target: Target, header: Header) -> TargetMask:
    x, y, w, h = target.bbox
    return TargetMask(index=target.index, label=target.phrase, score=float(target.score),
                      mask=mask_to_msg(target.mask, header), pixel_count=target.pixel_count,
                      bbox=RegionOfInterest(x_offset=x, y_offset=y, width=w, height=h))


def spin(node: PixelLMNode, executor: MultiThreadedExecutor) -> None:
    """Spin until shutdown. A callback that raises is a bug, but on a robot one bad message must not take the
    node down: the traceback is logged and spinning goes on (the callbacks answer their own errors; this is
    the last line of defence)."""
    while rclpy.ok(context=node.context):
        try:
            executor.spin()
            return
        except ExternalShutdownException:
            raise
        except Exception:
            node.get_logger().error(f"a callback raised; the node keeps running:\n{traceback.format_exc()}")


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = executor = None
    try:
        node = PixelLMNode()
        executor = PoolAwareMultiThreadedExecutor(num_threads=node.executor_threads)
        executor.add_node(node)
        spin(node, executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.close()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
