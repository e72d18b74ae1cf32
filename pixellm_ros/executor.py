"""A MultiThreadedExecutor that does not re-submit work already waiting in its thread pool.

rclpy's MultiThreadedExecutor (as shipped with Kilted; rclpy issue #1452, fixed upstream by PR #1547) yields
every task that is neither executing nor done before it waits for new work. A task submitted to the pool but
not yet started is such a task, so each spin submits it again and returns at once instead of waiting. Under a
fast camera a short backlog therefore feeds itself: the spinning thread holds the GIL submitting thousands of
copies (measured: 700-4,000 queued), the pool threads crawl through no-op copies, the node takes in ~15 of 120
images per second and questions overflow their reader history. Here a task is hidden from the executor's task
list while it waits in the pool and shown again when a pool thread starts it.
"""
from __future__ import annotations

from typing import Any, Callable

from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)


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
