"""What the node reports on /diagnostics: answers by status, request-to-answer latency percentiles, queue, frames
and model; and the throttle that keeps a flood of BUSY answers from becoming a flood of log lines."""
from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from .frame_cache import CameraSet

BUSY_LOG_PERIOD_S = 1.0  # BUSY answers are logged at most once per period, with the count of the others
LATENCY_WINDOW = 200  # answers kept for the latency percentiles
NOT_ERRORS = ("OK", "BUSY", "CANCELED", "NOT_READY")  # statuses not counted in "errors"


class Stats:
    """Answers counted by status name, the last LATENCY_WINDOW latencies of OK answers; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._busy_logged_at, self._busy_unlogged = float("-inf"), 0
        # Answers given with a previous answer as their draft (draft_reuse), draft tokens verified / accepted.
        self.draft_answers = self.draft_tokens = self.draft_tokens_accepted = 0

    def record(self, status: str, latency_s: float | None, now_s: float) -> tuple[bool, int]:
        """Count one answer. Returns (quiet, busy_unlogged): quiet = a BUSY answer within BUSY_LOG_PERIOD_S of the
        last one logged (not to be logged: each log line costs the executor threads the time the worker needs);
        busy_unlogged = the quiet BUSY answers before this logged one."""
        with self._lock:
            self.statuses[status] += 1
            if latency_s is not None:
                self.latencies.append(latency_s)
            busy = status == "BUSY"
            quiet = busy and now_s - self._busy_logged_at < BUSY_LOG_PERIOD_S
            unlogged, self._busy_unlogged = self._busy_unlogged, (self._busy_unlogged + 1 if quiet else 0)
            if busy and not quiet:
                self._busy_logged_at = now_s
            return quiet, (unlogged if busy and not quiet else 0)

    def record_draft(self, verified: int, accepted: int) -> None:
        """Count one answer that had a draft: `verified` draft tokens checked, `accepted` of them kept."""
        with self._lock:
            self.draft_answers += 1
            self.draft_tokens += verified
            self.draft_tokens_accepted += accepted

    def drafts(self) -> tuple[int, int, int]:
        """(answers with a draft, draft tokens verified, draft tokens accepted)."""
        with self._lock:
            return self.draft_answers, self.draft_tokens, self.draft_tokens_accepted

    def snapshot(self) -> tuple[dict[str, int], list[float]]:
        """(answers by status, sorted latencies)."""
        with self._lock:
            return dict(self.statuses), sorted(self.latencies)


def diagnostic_values(stats: Stats, *, state: str, queue_depth: int, queue_size: int, cameras: CameraSet | None,
                      engine: Any) -> dict[str, str]:
    """The key/values of the node's DiagnosticStatus (README: /diagnostics)."""
    statuses, lat = stats.snapshot()
    draft_answers, draft_tokens, draft_accepted = stats.drafts()
    pct = (lambda p: f"{lat[min(int(p * len(lat)), len(lat) - 1)]:.3f}") if lat else (lambda p: "")
    caches = [cameras.get(c) for c in cameras] if cameras else []
    return {
        "state": state,
        "queue_depth": str(queue_depth),
        "queue_size": str(queue_size),
        "answered": str(statuses.get("OK", 0)),
        "busy": str(statuses.get("BUSY", 0)),
        "errors": str(sum(n for k, n in statuses.items() if k not in NOT_ERRORS)),
        "frames_evicted": str(sum(c.evicted for c in caches)),
        "frames_received": str(sum(c.received for c in caches)),
        **{f"frames_received_{c}": str(cameras.get(c).received) for c in (cameras or [])},
        "latency_p50_s": pct(0.5), "latency_p95_s": pct(0.95),
        "draft_answers": str(draft_answers), "draft_tokens": str(draft_tokens),
        "draft_tokens_accepted": str(draft_accepted),
        "device_memory_bytes": str(engine.memory_bytes() if engine else 0),
        "model_id": engine.model_id if engine else "", "adapter_id": engine.adapter_id if engine else "",
        **{f"status_{k.lower()}": str(n) for k, n in sorted(statuses.items())},
    }


def diagnostic_array(values: dict[str, str], *, node_name: str, active: bool, stamp: Any) -> DiagnosticArray:
    status = DiagnosticStatus(
        level=DiagnosticStatus.OK if active else DiagnosticStatus.WARN, name=f"{node_name}: inference",
        message="active" if active else f"not active ({values['state']})",
        hardware_id=values["model_id"], values=[KeyValue(key=k, value=v) for k, v in values.items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])
