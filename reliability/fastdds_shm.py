"""Remove Fast DDS shared-memory files whose owner process is gone (what `fastdds shm clean` does; that CLI is
not in the PyPI wheels).

A ROS process killed with SIGKILL leaves its ports and segments in /dev/shm. Later participants still try them
and fall back to UDP for those peers: measured here in session 2, a node then took in 10 Hz of a 120 Hz
320x240 camera instead of ~100 Hz. Each port / segment has a lock file (`..._el` or `..._sl`) that its owner
holds with flock while alive, so a lock we can take belongs to nobody and its files are safe to delete.
"""
from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_PORT_LOCK = re.compile(r"^fastdds_port\d{1,5}_(el|sl)$")
_SEGMENT_LOCK = re.compile(r"^fastdds_[0-9a-z]{16}_(el|sl)$")


def _held(lock: Path) -> bool:
    try:
        with open(lock, "ab") as fd:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd closes
        return False
    except OSError:
        return True


def clean_zombie_shm(shm_dir: Path = SHM_DIR) -> list[str]:
    """Delete the files of dead owners' ports and segments; the names removed."""
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    removed = []
    for name in names:
        port, segment = _PORT_LOCK.match(name), _SEGMENT_LOCK.match(name)
        if not (port or segment) or _held(shm_dir / name):
            continue
        base = name[:-3]
        for victim in [name, base] + ([f"sem.{base}_mutex"] if port else []):
            try:
                (shm_dir / victim).unlink()
                removed.append(victim)
            except FileNotFoundError:
                pass
    return removed
