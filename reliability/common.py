"""Shared by the reliability drivers (fuzz, flood, faults): the node as a child process (the real node, or the
real node with model faults injected, see faulty_node.py), its resident memory, and figures bookkeeping.

The drivers are plain functions that return a dict of figures; tests/reliability/test_*.py run short versions
and assert on the figures, benchmarks/reliability.py runs the long versions and writes RELIABILITY.md.
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reliability.node_process import ROOT, Client, NodeProcess
from pixellm_ros.messages import STATUS_NAMES
from pixellm_ros.msg import Query
from pixellm_ros.srv import Segment

log = logging.getLogger("reliability")


class ChildNode(NodeProcess):
    """The node process of node_process.py, optionally started from another module (faulty_node.py)."""

    def __init__(self, log_path: Path, module: str = "pixellm_ros.node", **params) -> None:
        paths = () if module == "pixellm_ros.node" else (str(ROOT),)
        super().__init__(log_path, module=module, pythonpath=paths, **params)

    def rss_mb(self) -> float | None:
        """Resident memory of the node process (VmRSS), MB; None once it has exited."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmRSS:\s+(\d+) kB", text)
        return int(match.group(1)) / 1024 if match else None


def start(log_path: Path, module: str = "pixellm_ros.node", **params) -> tuple[ChildNode, Client]:
    """A node process and a connected test client (its result subscription matched)."""
    node = ChildNode(log_path, module, num_threads=1, **params)
    client = Client(node)
    client.spin_until(lambda: client.result_sub.get_publisher_count() > 0, "the node's ~/result publisher", 60)
    return node, client


def stop(node: ChildNode, client: Client) -> int:
    client.close()
    return node.stop()


def wait_active(client: Client, timeout: float = 90.0) -> None:
    client.spin_until(lambda: client.diagnostic("state") == "active", "the node to be active", timeout)


def final_check(client: Client, image) -> int:
    """A valid ~/segment question on a valid supplied image at the end of a run: its status (OK = still serving)."""
    request = Segment.Request(query=Query(id="final-check", text="Where is the cup?"), use_image=True, image=image)
    return client.call(client.segment, request, "the final check answer", timeout=60).result.status


def log_problems(text: str) -> dict[str, int]:
    """Signs of a bug in a node log: Python tracebacks and the worker's 'internal error' lines."""
    return {"tracebacks": text.count("Traceback (most recent call last)"),
            "internal_errors": text.count("internal error:")}


def logged_ids(text: str) -> set[str]:
    """Query ids the node logged a non-OK result for (`<source> query '<id>': <STATUS>: <reason>`)."""
    return set(re.findall(r"query '([^']*)': [A-Z_]+: ", text))


@dataclass
class Tally:
    """Counts of one run: messages by kind, results by status."""

    sent: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)

    def status(self, code: int) -> None:
        self.statuses[STATUS_NAMES.get(code, str(code))] += 1


def rss_growth(samples: list[tuple[float, float]], warmup_fraction: float = 0.3) -> dict[str, float]:
    """Figures of (time s, RSS MB) samples: first, after warm-up, last, max, growth after warm-up (MB) and the
    slope of a least-squares line over the samples after warm-up (MB per minute)."""
    if not samples:
        return {}
    t_end = samples[-1][0]
    late = [s for s in samples if s[0] >= warmup_fraction * t_end] or samples[-1:]
    n = len(late)
    mt, mr = sum(t for t, _ in late) / n, sum(r for _, r in late) / n
    var = sum((t - mt) ** 2 for t, _ in late)
    slope = sum((t - mt) * (r - mr) for t, r in late) / var * 60 if var else 0.0
    return {"rss_start_mb": round(samples[0][1], 1), "rss_after_warmup_mb": round(late[0][1], 1),
            "rss_end_mb": round(samples[-1][1], 1), "rss_max_mb": round(max(r for _, r in samples), 1),
            "rss_growth_after_warmup_mb": round(samples[-1][1] - late[0][1], 1),
            "rss_slope_mb_per_min": round(slope, 2), "rss_samples": len(samples)}


def now_s() -> float:
    return time.monotonic()
