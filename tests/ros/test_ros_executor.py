"""PoolAwareMultiThreadedExecutor: work waiting in the thread pool is not submitted again (rclpy #1452).

Three topics, two pool threads, callbacks that take a while: while two callbacks run, the third topic's handler
waits in the pool. rclpy's MultiThreadedExecutor re-yields and re-submits that waiting handler on every
spin, without waiting (hundreds of submissions for a few dozen messages); ours submits each handler once.
"""
from __future__ import annotations

import time

import pytest
import rclpy
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from std_msgs.msg import String

from pixellm_ros.executor import PoolAwareMultiThreadedExecutor

pytestmark = pytest.mark.ros
MESSAGES = 15
TOPICS = 3  # more topics than pool threads: some handler always waits in the pool


def _run(executor_cls) -> tuple[int, int]:
    """(callbacks run, handlers submitted to the pool) for MESSAGES on each of TOPICS topics."""
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("executor_probe", context=context)
        group = ReentrantCallbackGroup()
        received = []

        def slow(msg: String) -> None:
            time.sleep(0.02)
            received.append(msg.data)

        pubs = [node.create_publisher(String, f"probe_{k}", 100) for k in range(TOPICS)]
        for k in range(TOPICS):
            node.create_subscription(String, f"probe_{k}", slow, 100, callback_group=group)
        executor = executor_cls(num_threads=2, context=context)
        executor.add_node(node)
        submitted = 0
        submit = executor._executor.submit

        def counting_submit(*args, **kwargs):
            nonlocal submitted
            submitted += 1
            return submit(*args, **kwargs)

        executor._executor.submit = counting_submit
        deadline = time.monotonic() + 10
        while not all(p.get_subscription_count() for p in pubs) and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for i in range(MESSAGES):
            for p in pubs:
                p.publish(String(data=str(i)))
        deadline = time.monotonic() + 20
        while len(received) < TOPICS * MESSAGES and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        executor.shutdown()
        node.destroy_node()
        return len(received), submitted
    finally:
        rclpy.try_shutdown(context=context)


def test_waiting_handlers_are_submitted_once():
    ran, submitted = _run(PoolAwareMultiThreadedExecutor)
    print(f"pool-aware: {ran} callbacks, {submitted} submissions")
    assert ran == TOPICS * MESSAGES
    assert submitted <= TOPICS * MESSAGES + 4, submitted  # one per message (a few spare: racing wake-ups)


def test_rclpy_executor_resubmits_them():
    """The upstream behaviour this works around; if it stops failing, rclpy has the fix and ours can go."""
    ran, submitted = _run(MultiThreadedExecutor)
    print(f"rclpy: {ran} callbacks, {submitted} submissions")
    assert ran == TOPICS * MESSAGES
    assert submitted > 4 * MESSAGES, submitted
