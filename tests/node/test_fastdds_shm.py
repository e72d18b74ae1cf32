"""The zombie shared-memory cleaner removes only files whose lock nobody holds."""
from __future__ import annotations

import fcntl

from reliability.fastdds_shm import clean_zombie_shm


def test_removes_dead_ports_and_segments_only(tmp_path):
    def files(*names):
        for n in names:
            (tmp_path / n).write_bytes(b"x")

    files("fastdds_port7411", "fastdds_port7411_el", "sem.fastdds_port7411_mutex",  # dead port
          "fastdds_port7413", "fastdds_port7413_el", "sem.fastdds_port7413_mutex",  # live port (held below)
          "fastdds_0123456789abcdef", "fastdds_0123456789abcdef_sl",  # dead segment
          "lttng-ust-wait-6", "fastdds_port_not_a_lock")  # not ours
    with open(tmp_path / "fastdds_port7413_el", "ab") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        removed = clean_zombie_shm(tmp_path)
    assert sorted(removed) == sorted(["fastdds_port7411", "fastdds_port7411_el", "sem.fastdds_port7411_mutex",
                                      "fastdds_0123456789abcdef", "fastdds_0123456789abcdef_sl"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["fastdds_port7413", "fastdds_port7413_el", "sem.fastdds_port7413_mutex", "lttng-ust-wait-6",
         "fastdds_port_not_a_lock"])
