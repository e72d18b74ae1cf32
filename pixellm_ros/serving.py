"""Serving questions: requests from every interface go into ONE bounded queue served by ONE worker thread, which
answers each (answering.py: frame, engine, result) and hands the result to the waiting caller before the node
publishes it. Standing queries (Ask with rate_hz > 0) feed the same queue, one request per new frame.

`Serving` knows nothing of publishers or lifecycle: the node is its `Host` (clock, state, publishing, goal
feedback), so the queue, its bound, cancel and the standing-query cadence are testable in-process with a fake
host.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from typing import Any, Callable

from .action import Ask
from .answering import OK, POLICY_NAMES, AdapterRequest, Answering, Deferred, Drafts, Host, Reply, Request
from .diagnostics import Stats
from .engine import Engine
from .frame_choice import newest_unseen
from .messages import STATUS_NAMES
from .model.tokenizer import IMAGE_PLACEHOLDER
from .msg import SegmentationResult
from .srv import LoadAdapter


class Serving(Answering):
    def __init__(self, host: Host, waiters: int) -> None:
        super().__init__(host)
        self.active = False
        self.stats = Stats()
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._submit_lock = threading.Lock()  # orders "is active + enqueue" against deactivation
        self._standing = 0
        self._goal_cancels: dict[bytes, threading.Event] = {}
        # Blocking callers (service calls, action goals) each hold an executor thread until answered.
        self._waiter_slots = threading.BoundedSemaphore(waiters)

    # ----------------------------------------------------------------------------------- lifecycle
    def start(self, engine: Engine) -> None:
        self.engine, self._queue = engine, queue.Queue(maxsize=self.cfg.queue_size)
        # A fresh engine (activate after configure: maybe another model) starts with no drafts.
        self.drafts = Drafts(self.cfg.draft_max_age_s) if self.cfg.draft_reuse else None
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="pixellm-worker", daemon=True)
        self._worker.start()
        with self._submit_lock:
            self.active = True

    def stop(self) -> bool:
        """Stop the worker, answer what is queued with NOT_READY, close the engine; True when it was active."""
        with self._submit_lock:
            was_active, self.active = self.active, False
        self._stop.set()
        for event in list(self._goal_cancels.values()):
            event.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None
        while self._queue is not None and not self._queue.empty():  # left over: answer, never drop
            item = self._queue.get_nowait()
            if isinstance(item, AdapterRequest):
                item.done(LoadAdapter.Response(success=False, message="the node was deactivated"))
            else:
                self.finish(item, self.status(item.query, SegmentationResult.NOT_READY,
                                              "the node was deactivated before answering"))
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.drafts = None
        return was_active

    def queue_depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # ----------------------------------------------------------------------------------- requests in
    def refusal(self, req: Request) -> SegmentationResult | None:
        """The NOT_READY / INVALID_QUERY answer a request gets without queueing, or None."""
        q = req.query
        if not self.active:
            return self.status(q, SegmentationResult.NOT_READY, f"the node is {self.host.state_label()}, not active: "
                               f"configure and activate it (lifecycle ~/change_state, or parameter autostart)")
        problem = None
        if not q.text.strip():
            problem = "the query text is empty"
        elif len(q.text) > self.cfg.max_query_chars:
            problem = f"the query has {len(q.text)} characters; the limit is {self.cfg.max_query_chars} (max_query_chars)"
        elif IMAGE_PLACEHOLDER in q.text:
            problem = f"the query must not contain {IMAGE_PLACEHOLDER}"
        elif q.frame_policy not in POLICY_NAMES:
            problem = f"unknown frame_policy {q.frame_policy}; use FRAME_LATEST, FRAME_NEXT or FRAME_STAMP"
        elif not math.isfinite(q.max_image_age_s) or q.max_image_age_s < 0:
            problem = f"max_image_age_s must be >= 0, got {q.max_image_age_s}"
        elif req.image is None and q.camera and q.camera not in self.cameras:
            problem = f"unknown camera {q.camera!r}; known cameras: {list(self.cfg.cameras)}"
        return self.status(q, SegmentationResult.INVALID_QUERY, problem) if problem else None

    def submit(self, req: Request) -> bool:
        """Queue `req` (True), or answer it at once (False): NOT_READY, INVALID_QUERY or BUSY."""
        with self._submit_lock:
            refusal = self.refusal(req)
            if refusal is None:
                try:
                    self._queue.put_nowait(req)
                    return True
                except queue.Full:
                    refusal = self.status(req.query, SegmentationResult.BUSY, f"request queue full "
                                          f"({self.cfg.queue_size} queued, queue_size); retry later")
        self.finish(req, refusal)
        return False

    def submit_adapter(self, item: AdapterRequest) -> str | None:
        """Queue an adapter swap (answered through item.done), or the reason it cannot be queued."""
        with self._submit_lock:
            if not self.active:
                return "the node is not active: activate it first"
            try:
                self._queue.put_nowait(item)
                return None
            except queue.Full:
                return "request queue full; retry later"

    def requeue(self, req: Request) -> bool:
        """Put a request the worker took back at the end of the queue; False when that is full or closing."""
        with self._submit_lock:
            if not self.active:
                return False
            try:
                self._queue.put_nowait(req)
                return True
            except queue.Full:
                return False

    def call(self, req: Request, serve: Callable[[], SegmentationResult] | None = None) -> SegmentationResult:
        """Submit `req` and wait for its answer, or run `serve` (standing queries), holding one of the
        executor threads reserved for waiting callers; BUSY when none is left."""
        if not self._waiter_slots.acquire(blocking=False):
            return self.finish(req, self.status(req.query, SegmentationResult.BUSY,
                                                "too many waiting requests; retry later"))
        try:
            if serve is not None:
                return serve()
            reply = Reply()
            req.done = reply
            return reply.wait() if self.submit(req) else reply.value
        finally:
            self._waiter_slots.release()

    def ask(self, goal: Any) -> SegmentationResult:
        """An Ask goal: one answer streamed as feedback, or a standing query (rate_hz > 0) until canceled."""
        key = bytes(goal.goal_id.uuid)
        req = Request(goal.request.query, "ask", goal=goal)
        self._goal_cancels[key] = req.cancel
        if goal.is_cancel_requested:  # canceled before this callback registered its event
            req.cancel.set()
        try:
            standing = goal.request.rate_hz > 0
            return self.call(req, (lambda: self.standing_query(goal, req, goal.request.rate_hz)) if standing else None)
        finally:
            self._goal_cancels.pop(key, None)

    def cancel(self, goal_id: bytes) -> None:
        event = self._goal_cancels.get(goal_id)
        if event is not None:
            event.set()  # the engine checks it between tokens

    def finish(self, req: Request, result: SegmentationResult) -> SegmentationResult:
        """Count, log and publish a result on ~/result, and hand it to whoever waits for it."""
        name = STATUS_NAMES.get(result.status, str(result.status))
        latency = (time.monotonic_ns() - req.received_ns) / 1e9 if result.status == OK else None
        quiet, busy_unlogged = self.stats.record(name, latency, time.monotonic())
        if result.draft_tokens:
            self.stats.record_draft(result.draft_tokens, result.accepted_draft_tokens)
        if result.status != OK and not quiet:
            more = (f" ({busy_unlogged} more BUSY answers before this one, not logged one by one)"
                    if busy_unlogged else "")
            self.host.get_logger().warning(f"{req.source} query {req.query.id!r}: {name}: "
                                           f"{result.status_message}{more}")
        # The waiting caller first (its latency is the node's), then the topics: at shutdown the context
        # may already refuse to publish.
        req.done(result)
        try:
            self.host.publish_result(result)
        except Exception:
            if self.host.context_ok():
                raise
        outputs, req.outputs = req.outputs, None
        if outputs is not None and result.status == OK:
            try:
                self.host.publish_outputs(result, *outputs)
            except Exception as exc:  # the caller has its answer; the topics miss this one
                if self.host.context_ok():
                    self.host.get_logger().error(f"query {req.query.id!r}: answered, but publishing its masks "
                                                 f"failed: {type(exc).__name__}: {exc}")
        return result

    # ----------------------------------------------------------------------------------- standing queries
    def standing_query(self, goal: Any, first: Request, rate_hz: float) -> SegmentationResult:
        """Re-answer the query on the newest frame, at most rate_hz times a second, until canceled; each answer
        goes through the queue (and `answer`) like any other request."""
        query, cancel = first.query, first.cancel
        with self._submit_lock:
            full = self.cfg is not None and self._standing >= self.cfg.max_standing_queries
            self._standing += 0 if full else 1
        if full:
            return self.finish(first, self.status(query, SegmentationResult.BUSY, f"{self.cfg.max_standing_queries} "
                                                  f"standing queries already run (max_standing_queries)"))
        try:
            refusal = self.refusal(first)
            if refusal:
                return self.finish(first, refusal)
            cache = self.cameras.get(query.camera)
            period_ns = int(1e9 / rate_hz)
            last: SegmentationResult | None = None
            answers, seen_ns, next_ns = 0, -1, 0
            while not cancel.is_set() and self.active and self.host.context_ok():
                if goal.is_cancel_requested:  # a cancel that raced the registration of `cancel` in `ask`
                    cancel.set()
                    break
                wait_s = (next_ns - time.monotonic_ns()) / 1e9
                if wait_s > 0:  # in slices: a tiny rate_hz (a wait of 1e30 s) must not overflow the timer
                    cancel.wait(min(wait_s, 0.5))
                    continue
                frame = newest_unseen(cache, seen_ns) or cache.wait_next(seen_ns, 0.1)
                if frame is None or cancel.is_set():
                    continue
                seen_ns, next_ns = frame.received_ns, time.monotonic_ns() + period_ns
                q = self._queue
                if q is not None and q.full():
                    continue  # skip this frame; the next one may find room
                reply = Reply()
                if not self.submit(Request(query, "standing", reply, frame=frame, goal=goal, cancel=cancel)):
                    if reply.value.status == SegmentationResult.BUSY:
                        continue
                    return reply.value
                result = reply.wait()
                if result.status == SegmentationResult.CANCELED:
                    break
                last, answers = result, answers + (result.status == OK)
                if not self.host.feedback(goal, Ask.Feedback(partial_answer=result.answer, standing_result=result)):
                    break  # shutting down
            final = last or self.status(query, SegmentationResult.CANCELED, "")
            final.status = SegmentationResult.CANCELED if goal.is_cancel_requested else SegmentationResult.NOT_READY
            final.status_message = (f"standing query canceled after {answers} answers" if goal.is_cancel_requested
                                    else "the node was deactivated")
            return final
        finally:
            with self._submit_lock:
                self._standing -= 1

    # ----------------------------------------------------------------------------------- the worker
    def _work(self) -> None:
        log = self.host.get_logger()
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                if isinstance(item, AdapterRequest):
                    item.done(self.swap_adapter(item))
                else:
                    self.finish(item, self.answer(item))
            except Deferred:
                continue  # back in the queue, behind the requests that can be answered now
            except Exception as exc:  # a bug in the node itself: answer, log, keep serving
                if self.host.context_ok():  # (else: shutting down, publishing fails; the caller is answered below)
                    log.error(f"internal error: {type(exc).__name__}: {exc}")
                try:
                    if isinstance(item, Request):
                        self.finish(item, self.status(item.query, SegmentationResult.MODEL_ERROR,
                                                      f"internal error: {exc}"))
                    else:
                        item.done(LoadAdapter.Response(success=False, message=f"internal error: {exc}"))
                except Exception as again:  # never let the worker die with a caller left waiting
                    log.error(f"internal error while answering: {type(again).__name__}: {again}")

    def swap_adapter(self, item: AdapterRequest) -> LoadAdapter.Response:
        response, log = LoadAdapter.Response(), self.host.get_logger()
        if self.drafts is not None:  # answers of the old weights (keys hold the adapter id too)
            self.drafts.clear()
        try:
            if item.folder is None:
                self.engine.unload_adapter()
                response.message = "adapter unloaded: base model active"
            else:
                self.engine.load_adapter(item.folder)
                response.message = f"adapter {item.name!r} active"
            response.success = True
            log.info(response.message)
        except Exception as exc:
            response.message = f"cannot load adapter {item.name!r}: {type(exc).__name__}: {exc} (base model active)"
            log.error(response.message)
        response.active_adapter = self.engine.adapter_id
        return response

    def others_waiting(self, req: Request) -> bool:
        return not self._queue.empty() and self.requeue(req)
