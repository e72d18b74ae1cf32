"""Peer process for the cross-process ROS tests (run by ros_helpers.Peer, never collected by pytest).

    python -m tests.support.ros_peer publish SEED   publish ros_helpers.sample_result(SEED) once a subscriber matched
    python -m tests.support.ros_peer serve          serve the Segment service and the Ask action with a stand-in model

Runs until SIGINT. Exit codes: 0 ok, 2 no subscriber matched within the deadline.
"""
from __future__ import annotations

import sys
import time

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from pixellm_ros.action import Ask
from pixellm_ros.msg import SegmentationResult
from pixellm_ros.srv import Segment
from tests.support.ros_helpers import (ANSWER, ASK_ACTION, DEADLINE_S, RESULT_TOPIC, SEGMENT_SERVICE, SLOW_PREFIX,
                                       TARGET_WORDS, rgb_to_mask, sample_masks, sample_result, target)

RESULT_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def publish(node: Node, executor: MultiThreadedExecutor, seed: int) -> int:
    pub = node.create_publisher(SegmentationResult, RESULT_TOPIC, RESULT_QOS)
    deadline = time.monotonic() + DEADLINE_S
    while pub.get_subscription_count() == 0:
        if time.monotonic() > deadline:
            print(f"no subscriber on {RESULT_TOPIC} within {DEADLINE_S} s", flush=True)
            return 2
        executor.spin_once(timeout_sec=0.05)
    pub.publish(sample_result(seed))
    print("published", flush=True)
    executor.spin()  # keep the (transient local, reliable) sample available until told to stop
    return 0


class StandInServer:
    """Segment + Ask with a trivial 'model', so the tests exercise only the transport and the interfaces."""

    def __init__(self, node: Node):
        self.node = node
        group = ReentrantCallbackGroup()
        node.create_service(Segment, SEGMENT_SERVICE, self.segment, callback_group=group)
        ActionServer(node, Ask, ASK_ACTION, execute_callback=self.ask, callback_group=group,
                     goal_callback=lambda goal: GoalResponse.ACCEPT,
                     cancel_callback=lambda goal_handle: CancelResponse.ACCEPT)
        self.feedback_topic = f"{node.resolve_topic_name(ASK_ACTION)}/_action/feedback"

    def wait_for_feedback_subscriber(self) -> None:
        """Until this side has discovered the client's feedback subscription. The client sends its goal once it
        sees the server; the server may discover the client's feedback reader a moment later, and feedback
        published before that is not delivered (volatile durability). A node up long before its clients never
        meets this; a client created just now may."""
        deadline = time.monotonic() + DEADLINE_S
        while self.node.count_subscribers(self.feedback_topic) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)

    def segment(self, request: Segment.Request, response: Segment.Response) -> Segment.Response:
        result = response.result
        result.query_id, result.query_text = request.query.id, request.query.text
        if not request.use_image:
            result.status, result.status_message = SegmentationResult.NO_IMAGE, "no camera in this test"
            return response
        image = request.image
        result.header = image.header
        result.answer = "The red part [SEG]."
        result.targets = [target(0, "the red part", rgb_to_mask(image), image.header)]
        result.status = SegmentationResult.OK
        return response

    def ask(self, goal_handle) -> Ask.Result:
        query = goal_handle.request.query
        slow = query.text.startswith(SLOW_PREFIX)
        words = (ANSWER.split() * 1000) if slow else ANSWER.split()
        result = SegmentationResult(query_id=query.id, query_text=query.text)
        masks = iter(sample_masks(seed=7))
        self.wait_for_feedback_subscriber()
        for word in words:
            if goal_handle.is_cancel_requested:
                result.status, result.status_message = SegmentationResult.CANCELED, "canceled by the client"
                goal_handle.canceled()
                return Ask.Result(result=result)
            result.answer = f"{result.answer} {word}".strip()
            feedback = Ask.Feedback(partial_answer=result.answer)
            label = TARGET_WORDS.get(word.strip(".,"))
            if label and not slow:
                new = target(len(result.targets), label, next(masks), result.header)
                result.targets.append(new)
                feedback.new_targets = [new]
            goal_handle.publish_feedback(feedback)
            time.sleep(0.05 if slow else 0.01)  # stand-in for generating one word
        result.status = SegmentationResult.OK
        goal_handle.succeed()
        return Ask.Result(result=result)


def main(argv: list[str]) -> int:
    rclpy.init()
    node = Node("pixellm_test_peer")
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        if argv[0] == "publish":
            return publish(node, executor, int(argv[1]))
        if argv[0] == "serve":
            StandInServer(node)
            print("serving", flush=True)
            executor.spin()
            return 0
        print(f"unknown mode {argv[0]!r}", flush=True)
        return 64
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
