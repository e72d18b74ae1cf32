"""Segment service and Ask action (feedback, success, cancel) against a server in another process."""
import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from rclpy.action import ActionClient
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from pixellm_ros.action import Ask
from pixellm_ros.msg import Query, SegmentationResult
from pixellm_ros.srv import Segment
from tests.support.ros_helpers import (ANSWER, ASK_ACTION, DEADLINE_S, SEGMENT_SERVICE, SLOW_PREFIX, sample_masks,
                                       spin_future, spin_until)

pytestmark = pytest.mark.ros


@pytest.fixture
def server(start_peer):
    return start_peer("serve")


def test_segment_service_round_trip(ros_node, server):
    node, executor = ros_node
    client = node.create_client(Segment, SEGMENT_SERVICE)
    assert client.wait_for_service(timeout_sec=DEADLINE_S), f"{SEGMENT_SERVICE} did not appear\n{server.log()}"

    rgb = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    header = Header(frame_id="cam")
    header.stamp.sec = 42
    image = Image(header=header, height=48, width=64, encoding="rgb8", step=64 * 3, data=rgb.tobytes())
    request = Segment.Request(query=Query(id="s1", text="Segment the red part."), use_image=True, image=image)
    result = spin_future(executor, client.call_async(request), "the Segment response", server).result

    assert result.status == SegmentationResult.OK, result.status_message
    assert (result.query_id, result.query_text, result.header) == ("s1", "Segment the red part.", header)
    (t,) = result.targets
    want = rgb[..., 0] > 127
    np.testing.assert_array_equal(np.frombuffer(bytes(t.mask.data), np.uint8).reshape(48, 64), want * 255)
    assert t.pixel_count == want.sum() and t.mask.header == header

    no_image = Segment.Request(query=Query(id="s2", text="Anything?"))
    result = spin_future(executor, client.call_async(no_image), "the second Segment response", server).result
    assert (result.status, result.query_id) == (SegmentationResult.NO_IMAGE, "s2") and result.status_message


def _send_goal(node, executor, server, text):
    client = ActionClient(node, Ask, ASK_ACTION)
    assert client.wait_for_server(timeout_sec=DEADLINE_S), f"{ASK_ACTION} did not appear\n{server.log()}"
    feedback = []
    goal = Ask.Goal(query=Query(id="a1", text=text))
    future = client.send_goal_async(goal, feedback_callback=lambda msg: feedback.append(msg.feedback))
    handle = spin_future(executor, future, "goal acceptance", server)
    assert handle.accepted
    return handle, feedback


def test_ask_action_streams_feedback_and_succeeds(ros_node, server):
    node, executor = ros_node
    handle, feedback = _send_goal(node, executor, server, "Which objects could hold water?")
    # Feedback (a topic) and the result (a service) are separate channels that ROS 2 does not order, and rclpy's
    # ActionClient drops the feedback that arrives after it has received the result: so the whole feedback stream
    # first (reliable and ordered: none lost), then the result.
    spin_until(executor, lambda: feedback and feedback[-1].partial_answer == ANSWER, "the last feedback", server)
    response = spin_future(executor, handle.get_result_async(), "the Ask result", server)

    assert response.status == GoalStatus.STATUS_SUCCEEDED
    result = response.result.result
    assert (result.status, result.answer, result.query_id) == (SegmentationResult.OK, ANSWER, "a1")
    # The partial answer grows word by word up to the full answer.
    words = ANSWER.split()
    assert [f.partial_answer for f in feedback] == [" ".join(words[:i + 1]) for i in range(len(words))]
    streamed = [t for f in feedback for t in f.new_targets]
    assert [t.label for t in streamed] == ["the cup", "the bowl"] == [t.label for t in result.targets]
    for t, mask in zip(streamed, sample_masks(seed=7)):
        np.testing.assert_array_equal(np.frombuffer(bytes(t.mask.data), np.uint8).reshape(mask.shape), mask * 255)


def test_ask_action_cancel(ros_node, server):
    node, executor = ros_node
    handle, feedback = _send_goal(node, executor, server, SLOW_PREFIX + " keep talking")
    spin_until(executor, lambda: len(feedback) >= 2, "two feedback messages", server)

    cancel = spin_future(executor, handle.cancel_goal_async(), "the cancel response", server)
    assert len(cancel.goals_canceling) == 1
    response = spin_future(executor, handle.get_result_async(), "the canceled result", server)

    assert response.status == GoalStatus.STATUS_CANCELED
    result = response.result.result
    assert result.status == SegmentationResult.CANCELED and result.status_message
    assert result.answer.startswith(feedback[1].partial_answer)
