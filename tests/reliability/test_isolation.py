"""A run's ROS domain is one no other live run on the machine holds (reliability/isolation.py)."""
from __future__ import annotations

import subprocess
import sys

from reliability import isolation
from reliability.isolation import DOMAINS, claim_domain

HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "a"); fcntl.flock(f, fcntl.LOCK_EX); print("held", flush=True); time.sleep(600)
"""


def test_a_domain_held_by_another_process_is_skipped_and_free_once_it_is_gone(tmp_path):
    start = 7  # -> domain DOMAINS[7]
    taken = DOMAINS[start]
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / f"pixellm_ros_domain_{taken}.lock")],
                             stdout=subprocess.PIPE, text=True)
    held = len(isolation._held)
    try:
        assert other.stdout.readline().strip() == "held"
        first = claim_domain(start, tmp_path)
        assert first == DOMAINS[start + 1]  # the next one round
        assert claim_domain(start, tmp_path) == DOMAINS[start + 2]  # this process's own claim counts too
        other.kill()
        other.wait()
        assert claim_domain(start, tmp_path) == taken  # the lock went with the process
    finally:
        other.kill()
        other.wait()
        for f in isolation._held[held:]:
            f.close()
        del isolation._held[held:]
