"""Isolate the ROS 2 traffic of a test or benchmark run (tests/conftest.py and benchmarks/reliability.py call it
first thing, before anything imports rclpy). Set in os.environ, so that the child processes inherit it:

- ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST: no discovery traffic leaves the machine.
- ROS_DOMAIN_ID: one of 1..101 that no other run on this machine holds (a lock file per domain, held while this
  process lives), so parallel runs don't see each other. Chosen from the pid alone, two runs shared a domain now
  and then, and one run's clients drove the other's node (seen while four test runs shared a machine).
- ROS_LOG_DIR in a temp dir (removed at exit): rclpy.init() needs it (or HOME), and logs don't pile up in ~/.ros.
- Fast DDS shared-memory files of ROS processes that died without cleaning up are removed (fastdds_shm.py):
  left there, they slow every later node down.
"""
from __future__ import annotations

import atexit
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from reliability.fastdds_shm import clean_zombie_shm

log = logging.getLogger(__name__)
DOMAINS = range(1, 102)  # the ROS 2 domain ids whose ports are safe on Linux, less 0 (everyone's default)
LOCK_DIR = Path(tempfile.gettempdir())
_held: list = []  # the lock file of this process's domain, open (and so locked) while the process lives


def claim_domain(start: int | None = None, lock_dir: Path = LOCK_DIR) -> int:
    """A domain id no other live process on this machine has claimed: the first of DOMAINS, from `start` (default:
    from the pid) round, whose lock file we can flock. The lock goes with the process (exit or kill)."""
    first = os.getpid() if start is None else start
    for i in range(len(DOMAINS)):
        domain = DOMAINS[(first + i) % len(DOMAINS)]
        f = open(lock_dir / f"pixellm_ros_domain_{domain}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _held.append(f)
        return domain
    raise RuntimeError(f"every ROS domain id in {DOMAINS} is held by another run on this machine")


def isolate_ros(log_prefix: str = "pixellm_ros_test_log_") -> None:
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(claim_domain())
    os.environ["ROS_LOG_DIR"] = tempfile.mkdtemp(prefix=log_prefix)
    atexit.register(shutil.rmtree, os.environ["ROS_LOG_DIR"], ignore_errors=True)
    zombies = clean_zombie_shm()
    if zombies:
        log.warning("removed %d Fast DDS shared-memory files of dead processes", len(zombies))
