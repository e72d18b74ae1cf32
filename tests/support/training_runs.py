"""The trainer's command line as the tests drive it: a tiny run's config, its metrics, a run in a child process,
and the SIGKILL-then-resume check the full-precision and QLoRA tests share."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from training.train import latest_checkpoint

REPO = Path(__file__).resolve().parents[2]


def config(base: Path, out: Path, **kw) -> dict:
    """A few steps of batch 2 on the synthetic domain, every weight trained, no checkpoints unless asked."""
    cfg = dict(base_model=str(base), output_dir=str(out), steps=4, batch_size=2, grad_accum=1, lr=3e-3,
               warmup_steps=1, trainable=["all"], train_vision_tower=True, lora={"enabled": False},
               save_every=0, log_every=1, export_dtype="float32", num_threads=1,
               data={"sources": [{"kind": "synthetic", "seed": 3}]})
    cfg.update(kw)
    return cfg


def metrics(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "metrics.csv").open()))


def run_cli(cfg: dict, tmp: Path, *args: str, launcher: list[str] | None = None,
            env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m training.train CFG ARGS` (or under `launcher`, e.g. accelerate launch) in a child process."""
    path = tmp / f"cfg_{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = (launcher or [sys.executable]) + ["-m", "training.train", str(path), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_resume_after_sigkill_matches(straight: Path, cfg: dict, tmp: Path) -> None:
    """Run `cfg` (save_every > 0) in a child process, SIGKILL it once its first checkpoint exists, run it again with
    --resume: its metrics.csv must be `straight`'s (the same run, never interrupted) step for step."""
    killed = Path(cfg["output_dir"])
    proc = run_cli(cfg, tmp)
    deadline = time.monotonic() + 120
    while latest_checkpoint(killed) is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(killed) is not None, "no checkpoint was written before the kill"
    resumed = run_cli(cfg, tmp, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    a, b = metrics(straight), metrics(killed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5, abs=1e-6), (ra, rb)
