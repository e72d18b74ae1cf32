"""The node as a child process and a client that drives it, for the node tests and the reliability drivers: a tiny
scripted model, a LoRA adapter for it, the node process, and a client (publishers, service/action clients, result
collection) that runs in the caller's process and is spun only by it, every wait bounded by DEADLINE_S.

The scripted model is tiny_random_pixellm with the transformer blocks' output projections zeroed, so the
hidden state after the LLM is the embedding of the last token alone; embeddings and lm_head then form a
transition table that makes greedy decoding cycle through CYCLE ("the cup [SEG0..5] and": 16 tokens, the tiny
tokenizer splits the words) without end. Answers are therefore deterministic and name one target per 16 tokens;
the masks still depend on the image (the pixel decoder is random). An answer stops at the node's max_new_tokens,
or where the node's answer guards (max_targets, repetition_*) cut the loop.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.executors import Executor, SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from pixellm_ros.action import Ask
from pixellm_ros.executor import NO_EVENT_HANDLERS
from pixellm_ros.node import FEEDBACK_QOS
from pixellm_ros.model import load_pixellm, save_pixellm
from pixellm_ros.model.scratch import tiny_random_pixellm
from pixellm_ros.model.generation import split_prompt
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import LoadAdapter, Segment

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "config" / "pixellm.yaml"
NODE = "pixellm"
CYCLE_WORDS = ("the", "cup", None, "and")  # None = the 6 codebook tokens
RESULT_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
# How long a wait for an event may take before the test or driver fails. A failure detector, not a timing assertion:
# every wait returns as soon as its condition holds. Generous because CI runs on a loaded 2-core machine, where
# starting a node process (torch + rclpy imports) and first discovery have taken over 15 s (3 s on an idle machine).
DEADLINE_S = 60.0
STOP_TIMEOUT_S = 60.0  # a process asked to exit (SIGINT) that is still there after this is killed


class ProcessDied(AssertionError):
    pass


class ChildProcess:
    """A child process (`proc`) whose output goes to `log_path`; subclasses start it."""

    log_path: Path
    proc: subprocess.Popen

    def _start(self, cmd: list[str], log_path: Path, **popen) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, **popen)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ProcessDied(f"{self.proc.args[:3]} exited with code {self.proc.returncode}\n--- its log ---\n"
                              f"{self.log()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Ask the process to exit (SIGINT) and return its exit code; kill it if it does not within `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def spin_until(executor: Executor, done: Callable[[], bool], what: str, process: ChildProcess | None = None,
               timeout: float = DEADLINE_S) -> None:
    """Spin until done() is true; fail after `timeout` s (or when `process` exits) saying what was awaited."""
    deadline = time.monotonic() + timeout
    while not done():
        if process is not None:
            process.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f"\n--- process log ---\n{process.log()}" if process else ""))
        executor.spin_once(timeout_sec=0.05)


def spin_future(executor: Executor, future: Future, what: str, process: ChildProcess | None = None,
                timeout: float = DEADLINE_S):
    spin_until(executor, future.done, what, process, timeout)
    return future.result()


# ------------------------------------------------------------------------------------------------ models
def _cycle_ids(tok) -> list[int]:
    ids = []
    for word in CYCLE_WORDS:
        ids += list(tok.seg_token_ids) if word is None else tok.encode(word, add_bos=False)
    assert len(set(ids)) == len(ids), f"cycle tokens must be distinct: {ids}"
    return ids


def script_transitions(model, transitions: dict[int, int], scale: float = 40.0) -> None:
    """Make greedy decoding go from token a to token b for every (a, b); in place."""
    llm = model.model
    hidden = model.config.hidden_size
    assert len(transitions) <= hidden
    with torch.no_grad():
        for layer in llm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for dim, (a, b) in enumerate(sorted(transitions.items())):
            llm.embed_tokens.weight[a] = 0.0
            llm.embed_tokens.weight[a, dim] = 1.0
            model.lm_head.weight[b, dim] = scale


def build_scripted_model(folder: Path, seed: int = 0) -> Path:
    """Save the scripted tiny model (see module docstring) to `folder`."""
    model, tok = tiny_random_pixellm(seed)
    cycle = _cycle_ids(tok)
    prompt_end = split_prompt(tok, "x")[1][-1]  # every prompt ends with "ASSISTANT:"
    assert prompt_end not in cycle
    transitions = {prompt_end: cycle[0], **{a: b for a, b in zip(cycle, cycle[1:] + cycle[:1])}}
    script_transitions(model, transitions)
    save_pixellm(model, tok, folder)
    return folder


def build_adapter(model_folder: Path, folder: Path) -> Path:
    """A LoRA adapter (r=2 on q_proj/v_proj) that also retrains lm_head so answers end at once (empty)."""
    from training.config import LoraConfig

    from pixellm_ros.model.adapters import add_lora, save_adapter

    model, tok = load_pixellm(model_folder)
    spec = LoraConfig(r=2, alpha=4, dropout=0.0).spec()
    add_lora(model, spec)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[tok.eos_id] = 1.0  # the scripted hidden states are one positive unit vector
    save_adapter(model, folder, saved_modules=["lm_head"], spec=spec, base_model=str(model_folder))
    return folder


def sample_rgb(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def image_msg(rgb: np.ndarray, header: Header, encoding: str = "rgb8") -> Image:
    h, w = rgb.shape[:2]
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=0, step=w * 3,
                 data=rgb.tobytes())


# ------------------------------------------------------------------------------------------- node process
class NodeProcess(ChildProcess):
    """`python -m pixellm_ros.node --ros-args --params-file config/pixellm.yaml -p NAME:=VALUE ...`."""

    def __init__(self, log_path: Path, module: str = "pixellm_ros.node", pythonpath: tuple[str, ...] = (),
                 **params) -> None:
        """`module` runs instead of the node's own (a launcher that wraps it); `pythonpath` is prepended."""
        args = []
        for name, value in params.items():
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, (list, tuple)):
                value = "[" + ", ".join(str(v) for v in value) + "]"
            args += ["-p", f"{name}:={value}"]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        if pythonpath:
            env["PYTHONPATH"] = os.pathsep.join([*pythonpath, os.environ.get("PYTHONPATH", "")])
        self._start([sys.executable, "-m", module, "--ros-args", "--params-file", str(PARAMS), *args], log_path,
                    cwd=ROOT, env=env)


# ------------------------------------------------------------------------------------------------- client
class Lifecycle:
    """The node's ~/get_state, ~/change_state and ~/set_parameters, called from a Client."""

    def __init__(self, client: "Client") -> None:
        self.client = client
        self._get = client.node.create_client(GetState, f"{NODE}/get_state")
        self._change = client.node.create_client(ChangeState, f"{NODE}/change_state")
        self._set = client.node.create_client(SetParameters, f"{NODE}/set_parameters")

    def state(self) -> State:
        return self.client.call(self._get, GetState.Request(), "get_state").current_state

    def transition(self, transition_id: int, timeout: float = 90.0) -> bool:
        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.client.call(self._change, request, f"transition {transition_id}", timeout=timeout).success

    def set_string(self, name: str, value: str | Path) -> bool:
        """Set a string parameter; False when the node refuses (e.g. a read-only one)."""
        parameter = Parameter(name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                             string_value=str(value)))
        request = SetParameters.Request(parameters=[parameter])
        return self.client.call(self._set, request, f"set {name}").results[0].successful


class Client:
    """The caller's side: a node in its own context, spun only by the caller (spin_until)."""

    def __init__(self, node: NodeProcess | None = None, name: str = "pixellm_node_test") -> None:
        self.process = node
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.results: list[SegmentationResult] = []
        self.diagnostics: list[DiagnosticArray] = []
        # No QoS event handlers on these busy subscriptions, as in the node (pixellm_ros/executor.py).
        self.result_sub = self.node.create_subscription(SegmentationResult, f"{NODE}/result", self.results.append,
                                                        RESULT_QOS, event_callbacks=NO_EVENT_HANDLERS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, RELIABLE,
                                      event_callbacks=NO_EVENT_HANDLERS)
        self.query_pub = self.node.create_publisher(String, "query", RELIABLE)
        self.query_full_pub = self.node.create_publisher(Query, "query_full", RELIABLE)
        self.segment = self.node.create_client(Segment, f"{NODE}/segment")
        self.load_adapter = self.node.create_client(LoadAdapter, f"{NODE}/load_adapter")
        self.ask = ActionClient(self.node, Ask, f"{NODE}/ask", feedback_sub_qos_profile=FEEDBACK_QOS)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def spin_until(self, done, what: str, timeout: float = DEADLINE_S) -> None:
        spin_until(self.executor, done, what, self.process, timeout)

    def call(self, client, request, what: str, timeout: float = DEADLINE_S):
        assert client.wait_for_service(timeout_sec=DEADLINE_S), f"{client.srv_name} did not appear"
        return spin_future(self.executor, client.call_async(request), what, self.process, timeout)

    def wait_connected(self, *publishers) -> None:
        """Until the node's ~/result reaches us and our publishers reach the node."""
        self.spin_until(lambda: self.result_sub.get_publisher_count() > 0
                        and all(p.get_subscription_count() > 0 for p in (self.query_full_pub, *publishers)),
                        "the node's subscriptions and publishers to match")

    def result_for(self, query_id: str, timeout: float = DEADLINE_S) -> SegmentationResult:
        self.spin_until(lambda: any(r.query_id == query_id for r in self.results), f"the result of {query_id!r}",
                        timeout)
        return next(r for r in self.results if r.query_id == query_id)

    def ask_full(self, query: Query, timeout: float = DEADLINE_S) -> SegmentationResult:
        """Publish on query_full and wait for the ~/result with its id."""
        self.query_full_pub.publish(query)
        return self.result_for(query.id, timeout)

    def diagnostic(self, key: str) -> str | None:
        """The newest /diagnostics value `key` of the pixellm node."""
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.startswith(NODE):
                    return next((kv.value for kv in status.values if kv.key == key), None)
        return None

    def frames(self, camera: str) -> int:
        """Frames of `camera` the node has received, from a /diagnostics message newer than this call."""
        n = len(self.diagnostics)
        self.spin_until(lambda: len(self.diagnostics) > n, "a new /diagnostics message")
        return int(self.diagnostic(f"frames_received_{camera}") or 0)

    def wait_frames(self, camera: str, count: int) -> None:
        """Until /diagnostics says the node has received `count` frames of `camera` (see frames())."""
        self.spin_until(lambda: int(self.diagnostic(f"frames_received_{camera}") or 0) >= count,
                        f"the node to receive {count} frames of {camera!r}")
