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
import itertools
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from .action import Ask
from .conversions import stamp_ns
from .diagnostics import diagnostic_array, diagnostic_values
from .engine import Engine, EngineConfig, Result
from .executor import NO_EVENT_HANDLERS, PoolAwareMultiThreadedExecutor
from .frame_cache import CameraSet, Frame, FrameCache
from .msg import Query, SegmentationResult
from .outputs import RELIABLE, Outputs
from .params import ConfigError, NodeConfig, configure, load_defaults, model_root_of
from .serving import AdapterRequest, Reply, Request, Serving
from .srv import LoadAdapter, Segment

NODE_NAME = "pixellm"
LAUNCH_ONLY_PARAMS = ("model_root", "adapter_dir")  # read-only once the node runs (see __init__)
# Question topics: a burst deeper than the reader's history loses questions silently (seen with depth 10 while
# the worker held the GIL); 100 keeps bursts answered (BUSY beyond queue_size), each with a result.
QUERY_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
RESULT_QOS = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)  # bursts of BUSY answers fit
# Ask feedback comes once per token. rclpy's default (reliable, depth 10) drops the oldest unread messages when a
# client spins slower than the worker decodes (seen on a loaded machine: 29 of 34). A whole answer's feedback fits
# in 1000; a client that wants every message subscribes with this profile too (feedback_sub_qos_profile).
FEEDBACK_QOS = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)


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


class PixelLMNode(LifecycleNode):
    """Lifecycle and wiring: parameters, subscriptions, services, the action and publishers. Questions are served
    by `serving` (serving.py), outputs published by `outputs` (outputs.py)."""

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
        self._subscriptions_cfg: list = []  # created at configure, destroyed at cleanup
        self._query_ids = itertools.count(1)

        # Blocking callers (service calls, action goals) each hold an executor thread until answered: at most
        # queue_size + 1 one-shot requests and max_standing_queries standing goals at once, plus spare threads
        # so image, query and lifecycle callbacks never wait. Sized from the start-up parameter values.
        waiters = (self.get_parameter("queue_size").value + 1 + self.get_parameter("max_standing_queries").value)
        self.executor_threads = max(int(waiters), 1) + 4
        self.serving = Serving(self, waiters=self.executor_threads - 4)

        self._group = ReentrantCallbackGroup()  # lifecycle services stay in the default group
        self._result_pub = self.create_publisher(SegmentationResult, "~/result", RESULT_QOS)
        self.outputs = Outputs(self)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
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
        if not self.serving.active:
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
        cameras = CameraSet(list(cfg.cameras), cfg.ring_size)
        self.serving.cfg, self.serving.cameras = cfg, cameras
        for camera, topic in zip(cfg.cameras, cfg.image_topics):
            msg_type, topic = (CompressedImage, topic + "/compressed") if cfg.use_compressed else (Image, topic)
            self._subscribe(msg_type, topic, self._image_callback(camera, cameras.get(camera), cfg.use_compressed))
        self.outputs.configure(cfg)
        if cfg.use_depth:
            self._subscribe(Image, cfg.depth_topic, self._image_callback("depth", self.outputs.depth, False))
            self._subscribe(CameraInfo, cfg.camera_info_topic, self._on_camera_info)
        if self._diag_timer.timer_period_ns != int(cfg.diagnostics_period_s * 1e9):
            self.destroy_timer(self._diag_timer)
            self._diag_timer = self.create_timer(cfg.diagnostics_period_s, self._publish_diagnostics,
                                                 callback_group=self._group)
        self.get_logger().info(f"configured: model {self._engine_cfg.model_path}, cameras "
                               f"{dict(zip(cfg.cameras, cfg.image_topics))}, queue {cfg.queue_size}")
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self, msg_type: Any, topic: str, callback: Callable[[Any], None]) -> None:
        self._subscriptions_cfg.append(self.create_subscription(
            msg_type, topic, callback, qos_profile_sensor_data, callback_group=self._group,
            event_callbacks=NO_EVENT_HANDLERS))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            engine = Engine(self._engine_cfg)
        except Exception as exc:  # missing files, wrong shapes, no CUDA, ...: stay inactive, fixable
            self.get_logger().error(f"activate failed: cannot load the model from {self._engine_cfg.model_path}: "
                                    f"{type(exc).__name__}: {exc}. Fix the parameters, then cleanup + configure.")
            self._free_memory()
            return TransitionCallbackReturn.FAILURE
        # torch, rclpy and the model leave ~300k long-lived objects: without this, each full collection rescans
        # them (65-135 ms, measured) inside whichever answer it interrupts.
        gc.collect()
        gc.freeze()
        self.serving.start(engine)
        self.get_logger().info(f"active: {engine.model_id} on {engine.device}/{engine.dtype}, loaded in "
                               f"{engine.load_seconds:.1f} s")
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
        was_active = self.serving.stop()
        self._free_memory()
        if was_active and self.context_ok():  # (after Ctrl-C the logger can no longer reach /rosout)
            self.get_logger().info("stopped serving")

    def _free_memory(self) -> None:
        gc.unfreeze()  # (frozen in on_activate) so that the engine's cycles can be collected
        gc.collect()
        torch.cuda.empty_cache()  # no-op without CUDA

    def _unconfigure(self) -> None:
        for sub in self._subscriptions_cfg:
            self.destroy_subscription(sub)
        self._subscriptions_cfg = []
        self.serving.cameras = None
        self.outputs.unconfigure()

    # --------------------------------------------------------------------------------- inputs
    def _image_callback(self, camera: str, cache: FrameCache, compressed: bool) -> Callable[[Any], None]:
        def on_image(msg: Any) -> None:
            cache.put(Frame(msg, stamp_ns(msg.header.stamp), time.monotonic_ns(), camera, compressed))
        return on_image

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.outputs.camera_info = msg

    def _on_query(self, msg: String) -> None:
        policy = Query.FRAME_NEXT if self.cfg and self.cfg.frame_policy == "next" else Query.FRAME_LATEST
        query = Query(id=f"q{next(self._query_ids)}", text=msg.data, frame_policy=policy)
        self.serving.submit(Request(query, "query"))

    def _on_query_full(self, msg: Query) -> None:
        self.serving.submit(Request(msg, "query_full"))

    def _on_segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        req = Request(request.query, "segment", image=request.image if request.use_image else None)
        response.result = self.serving.call(req)
        return response

    def _on_cancel(self, goal: ServerGoalHandle) -> CancelResponse:
        self.serving.cancel(bytes(goal.goal_id.uuid))
        return CancelResponse.ACCEPT

    def _on_ask(self, goal: ServerGoalHandle) -> Ask.Result:
        result = self.serving.ask(goal)
        try:
            if result.status == SegmentationResult.OK:
                goal.succeed()
            elif result.status == SegmentationResult.CANCELED and goal.is_cancel_requested:
                goal.canceled()
            else:
                goal.abort()
        except Exception:
            if self.context_ok():
                raise  # (else: shutting down; the goal's status can no longer be published)
        return Ask.Result(result=result)

    def _on_load_adapter(self, request: LoadAdapter.Request, response: LoadAdapter.Response
                         ) -> LoadAdapter.Response:
        engine = self.serving.engine
        response.active_adapter = engine.adapter_id if engine else ""
        try:
            folder = resolve_adapter(self.cfg.adapter_dir if self.cfg else "", request.name) if request.name else None
        except ValueError as exc:
            response.success, response.message = False, str(exc)
            self.get_logger().warning(f"load_adapter refused: {exc}")
            return response
        reply = Reply()
        problem = self.serving.submit_adapter(AdapterRequest(request.name, folder, reply))
        if problem is not None:
            response.success, response.message = False, problem
            return response
        return reply.wait()

    # ------------------------------------------------------------------- the Host of serving, diagnostics
    def now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def state_label(self) -> str:
        return self._state_machine.current_state[1]

    def context_ok(self) -> bool:
        return rclpy.ok(context=self.context)

    def publish_result(self, result: SegmentationResult) -> None:
        self._result_pub.publish(result)

    def publish_outputs(self, result: SegmentationResult, rgb: np.ndarray, answer: Result) -> None:
        self.outputs.publish(result, rgb, answer)

    def feedback(self, goal: ServerGoalHandle, feedback: Ask.Feedback) -> bool:
        """Publish goal feedback; False once Ctrl-C shut the context down (the publisher is gone by then: not a
        model error, and nothing to report)."""
        try:
            goal.publish_feedback(feedback)
            return True
        except _rclpy.RCLError:
            if self.context_ok():
                raise
            return False

    def _publish_diagnostics(self) -> None:
        serving = self.serving
        values = diagnostic_values(serving.stats, state=self.state_label(), queue_depth=serving.queue_depth(),
                                   queue_size=self.cfg.queue_size if self.cfg else 0, cameras=serving.cameras,
                                   engine=serving.engine)
        self._diag_pub.publish(diagnostic_array(values, node_name=self.get_name(), active=serving.active,
                                                stamp=self.get_clock().now().to_msg()))


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
