"""The node's lifecycle through ~/change_state / ~/get_state (autostart false), including a configure that
fails on a missing model and succeeds after the parameter is fixed; and the busy queue and goal cancel."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from action_msgs.msg import GoalStatus
from lifecycle_msgs.msg import State, Transition
from std_msgs.msg import Header

from tests.support.node_fixtures import (DEADLINE_S, NODE, Camera, Client, Lifecycle, NodeProcess,  # noqa: F401
                                         image_msg, sample_rgb, spin_future, start_node)
from pixellm_ros.action import Ask
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import Segment

pytestmark = pytest.mark.ros


def segment(client: Client, qid: str) -> SegmentationResult:
    request = Segment.Request(query=Query(id=qid, text="Where is the cup?"), use_image=True,
                              image=image_msg(sample_rgb(1), Header(frame_id="given")))
    return client.call(client.segment, request, f"the Segment response {qid}").result


def test_lifecycle_transitions_and_a_failed_configure(start_node, scripted_model, tmp_path):
    root = scripted_model.parent  # model_root: the launch-time folder models may come from
    client = start_node(autostart=False, model_path=root / "missing", model_root=root, max_new_tokens=32)
    lifecycle = Lifecycle(client)
    state = lambda: lifecycle.state().id  # noqa: E731
    transition, set_param = lifecycle.transition, lifecycle.set_string

    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    assert segment(client, "early").status == SegmentationResult.NOT_READY
    assert not transition(Transition.TRANSITION_CONFIGURE)  # the model folder does not exist
    assert state() == State.PRIMARY_STATE_UNCONFIGURED
    assert "model_path" in client.process.log()
    assert not set_param("model_root", tmp_path) and not set_param("adapter_dir", tmp_path)  # launch-time only
    outside = tmp_path / "model"  # a real model folder, outside model_root
    shutil.copytree(scripted_model, outside)
    assert set_param("model_path", outside) and not transition(Transition.TRANSITION_CONFIGURE)
    assert "outside model_root" in client.process.log()
    link = root / f"link_{tmp_path.name}"  # inside model_root, but a symlink to the folder outside
    link.symlink_to(outside, target_is_directory=True)
    try:
        assert set_param("model_path", link) and not transition(Transition.TRANSITION_CONFIGURE)
    finally:
        link.unlink()
    assert set_param("model_path", scripted_model)
    assert transition(Transition.TRANSITION_CONFIGURE) and state() == State.PRIMARY_STATE_INACTIVE
    not_ready = segment(client, "inactive")
    assert not_ready.status == SegmentationResult.NOT_READY and "inactive" in not_ready.status_message
    assert transition(Transition.TRANSITION_ACTIVATE) and state() == State.PRIMARY_STATE_ACTIVE
    assert segment(client, "active").status == SegmentationResult.OK
    assert transition(Transition.TRANSITION_DEACTIVATE) and state() == State.PRIMARY_STATE_INACTIVE
    assert segment(client, "deactivated").status == SegmentationResult.NOT_READY
    assert transition(Transition.TRANSITION_CLEANUP) and state() == State.PRIMARY_STATE_UNCONFIGURED
    assert transition(Transition.TRANSITION_CONFIGURE) and transition(Transition.TRANSITION_ACTIVATE)
    assert segment(client, "again").status == SegmentationResult.OK
    assert transition(Transition.TRANSITION_DEACTIVATE) and transition(Transition.TRANSITION_CLEANUP)
    assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN) and state() == State.PRIMARY_STATE_FINALIZED
    assert client.process.proc.poll() is None


def test_full_queue_answers_busy_and_goals_cancel(start_node, scripted_model):
    # 300 tokens (18 targets) take ~2 s on an idle machine: long enough to fill a queue of 1, and to cancel
    # mid-answer even when the machine is loaded (the cancel's round trip slows down as much as the answer).
    # The answer guards are off, or the scripted loop would be cut after a few targets.
    tokens = 300
    client = start_node(model_path=scripted_model, max_new_tokens=tokens, queue_size=1, max_image_age_s=0.0,
                        max_targets=0, repetition_ngram=0)
    cam = Camera(client, "image", "camera_optical")
    client.wait_connected(cam.pub)
    client.spin_until(lambda: segment(client, "ping").status == SegmentationResult.OK, "the node to become active",
                      timeout=2 * DEADLINE_S)
    n = client.frames("camera")
    cam.publish()
    client.wait_frames("camera", n + 1)
    ids = [f"b{i}" for i in range(6)]
    for qid in ids:
        client.query_full_pub.publish(Query(id=qid, text="Where is the cup?"))
    client.spin_until(lambda: {r.query_id for r in client.results} >= set(ids), "a result for every query", 2 * DEADLINE_S)
    per_id = {qid: [r for r in client.results if r.query_id == qid] for qid in ids}
    assert all(len(v) == 1 for v in per_id.values()), per_id  # exactly one result each, none lost
    statuses = [v[0].status for v in per_id.values()]
    assert statuses.count(SegmentationResult.OK) >= 2 and statuses.count(SegmentationResult.BUSY) >= 1, statuses
    busy = next(v[0] for v in per_id.values() if v[0].status == SegmentationResult.BUSY)
    assert "queue" in busy.status_message
    client.spin_until(lambda: client.diagnostic("busy") not in (None, "0"), "busy in /diagnostics")

    assert client.ask.wait_for_server(timeout_sec=DEADLINE_S)
    feedback = []
    future = client.ask.send_goal_async(Ask.Goal(query=Query(id="c1", text="Where is the cup?")),
                                        feedback_callback=lambda m: feedback.append(m.feedback))
    handle = spin_future(client.executor, future, "goal acceptance", client.process)
    client.spin_until(lambda: len(feedback) >= 2, "two feedback messages")
    spin_future(client.executor, handle.cancel_goal_async(), "the cancel response", client.process)
    response = spin_future(client.executor, handle.get_result_async(), "the canceled result", client.process)
    assert response.status == GoalStatus.STATUS_CANCELED
    result = response.result.result
    assert result.status == SegmentationResult.CANCELED and "canceled" in result.status_message
    assert result.answer.startswith(feedback[1].partial_answer) and len(result.targets) < tokens // 16
    assert segment(client, "after-cancel").status == SegmentationResult.OK


def test_ctrl_c_during_a_standing_goal_exits_cleanly(tmp_path, scripted_model):
    """SIGINT shuts the context down under a running standing goal: the node must still exit (0, no traceback)
    instead of hanging on a caller the worker could no longer answer (it used to, until killed)."""
    node = NodeProcess(tmp_path / "node.log", model_path=scripted_model, max_new_tokens=9, num_threads=1)
    client = Client(node)
    try:
        cam = Camera(client, "image", "camera_optical")
        client.wait_connected(cam.pub)
        client.spin_until(lambda: segment(client, "ping").status == SegmentationResult.OK, "the node to become active",
                          timeout=2 * DEADLINE_S)
        assert client.ask.wait_for_server(timeout_sec=DEADLINE_S)
        feedback = []
        client.ask.send_goal_async(Ask.Goal(query=Query(id="standing", text="Where is the cup?"), rate_hz=20.0),
                                   feedback_callback=feedback.append)
        deadline = time.monotonic() + 60
        while len(feedback) < 2 and time.monotonic() < deadline:
            cam.publish()
            client.executor.spin_once(timeout_sec=0.05)
        assert len(feedback) >= 2, "the standing goal never answered"
    finally:
        client.close()
        code = node.stop()  # (kills it after STOP_TIMEOUT_S: -9); never left running for later tests
    assert code == 0
    assert "Traceback" not in node.log(), node.log()
