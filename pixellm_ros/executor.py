"""Executor set-up for busy topics: a MultiThreadedExecutor that does not re-submit work already waiting in
its thread pool, and subscriptions without QoS event handlers.

rclpy's MultiThreadedExecutor (as shipped with Kilted; rclpy issue #1452, fixed upstream by PR #1547) yields
every task that is neither executing nor done before it waits for new work. A task submitted to the pool but
not yet started is such a task, so each spin submits it again and returns at once instead of waiting. Under a
fast camera a short backlog feeds itself: the spinning thread holds the GIL submitting no-op copies (measured
on the node under a 120 Hz camera: 700-4,000 queued at once) and the pool threads crawl through them. Here a
task is hidden from the executor's task list while it waits in the pool and shown again when a pool thread
starts it.

Subscriptions on busy topics get no QoS event handlers (NO_EVENT_HANDLERS). rclpy's default ones (incompatible
QoS / type) add the reader's status condition to every wait, and with Fast DDS that makes the wait return over
and over with nothing ready while messages stream in: a Python busy loop holding the GIL. Measured on the node
under a 120 Hz camera and 40 Hz questions: 3,000-4,000 such wake-ups a second, then 0 without them (~330 useful
ones a second remain). This busy loop, not the camera rate, is what let some runs sink to ~15 images/s taken in
and lose questions from full reader histories. The publishing side still logs incompatible QoS in its own
process.
"""
from __future__ import annotations

from typing import Any, Callable

import rclpy
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

NO_EVENT_HANDLERS = SubscriptionEventCallbacks(use_default_callbacks=False)


def spin_once_until_shutdown(node: Node, timeout_sec: float) -> bool:
    """rclpy.spin_once; False once the context is shut down. Ctrl-C / SIGINT can shut it down between the
    caller's rclpy.ok() and the wait, and rclpy then raises RCLError ("context is not valid") from the wait set
    instead of ExternalShutdownException: a clean stop, not an error."""
    try:
        rclpy.spin_once(node, timeout_sec=timeout_sec)
    except _rclpy.RCLError:
        if rclpy.ok(context=node.context):
            raise
        return False
    return rclpy.ok(context=node.context)


class PoolAwareMultiThreadedExecutor(MultiThreadedExecutor):
    """MultiThreadedExecutor whose queued tasks are neither re-yielded nor re-submitted (see module doc)."""

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, entity, node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        with self._tasks_lock:  # hide it while queued: otherwise the next spin yields it again at once
            entries = [e for e in self._tasks if e[0] is handler]
            self._tasks = [e for e in self._tasks if e[0] is not handler]
        self._futures.append(handler)
        self._executor.submit(self._run_queued, handler, entries)
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exceptions, as the base class does

    def _run_queued(self, handler: Any, entries: list) -> None:
        with self._tasks_lock:  # visible again: a coroutine that awaits must be resumed by later spins
            self._tasks.extend(entries)
        handler()
