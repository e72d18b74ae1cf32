"""SIGKILL a training run at random points (during steps and while a checkpoint is being written), resume it
with --resume each time, and compare it with an uninterrupted run: every checkpoint left on disk must load, the
loss curve must continue exactly (same rows, same values), and the run must finish and export."""
from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[1]


def _config(base: Path, out: Path, steps: int) -> dict:
    return dict(base_model=str(base), output_dir=str(out), steps=steps, batch_size=2, grad_accum=1, lr=3e-3,
                warmup_steps=1, trainable=["all"], train_vision_tower=True, lora={"enabled": False},
                save_every=2, log_every=1, export_dtype="float32", num_threads=1,
                data={"sources": [{"kind": "synthetic", "seed": 3}]})


def _launch(cfg: dict, tmp: Path, resume: bool) -> subprocess.Popen:
    path = tmp / f"cfg_{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "training.train", str(path)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _rows(out: Path) -> list[dict]:
    path = out / "metrics.csv"
    return list(csv.DictReader(path.open())) if path.exists() else []


def _checkpoints_load(out: Path) -> tuple[int, int]:
    """(checkpoint folders, of which loadable: trainer_state.json and every safetensors file open)."""
    folders = sorted((out / "checkpoints").glob("step_*")) if (out / "checkpoints").exists() else []
    good = 0
    for folder in folders:
        try:
            assert (folder / "trainer_state.json").is_file()
            for f in folder.glob("*.safetensors"):
                with safe_open(str(f), framework="pt") as st:
                    list(st.keys())
            good += 1
        except Exception:  # a corrupted checkpoint: counted, reported
            pass
    return len(folders), good


def run_train_kills(workdir: Path, kills: int = 4, steps: int = 12, seed: int = 0) -> dict:
    from training.init_model import init_model
    from training.train import latest_checkpoint

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    base = workdir / "base"
    if not (base / "config.json").exists():
        init_model("tiny", base, seed=0)
    straight, killed = workdir / "straight", workdir / "killed"
    proc = _launch(_config(base, straight, steps), workdir, resume=False)
    assert proc.wait(timeout=900) == 0, "the uninterrupted run failed"
    done_kills, in_checkpoint, corrupt_seen, resumes = 0, 0, 0, 0
    for k in range(kills):
        proc = _launch(_config(base, killed, steps), workdir, resume=k > 0)
        resumes += k > 0
        mode = "checkpoint" if k % 2 == 0 else "step"
        target = rng.randrange(1, steps)
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if mode == "checkpoint" and any((killed / "checkpoints").glob(".tmp_step_*")):
                break
            if mode == "step" and len(_rows(killed)) >= target:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.002)
        if proc.poll() is None:
            in_checkpoint += any((killed / "checkpoints").glob(".tmp_step_*"))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_kills += 1
        total, good = _checkpoints_load(killed)
        corrupt_seen += total - good
        latest = latest_checkpoint(killed)
        if latest is not None and not (latest / "trainer_state.json").is_file():
            corrupt_seen += 1
    proc = _launch(_config(base, killed, steps), workdir, resume=True)
    resumes += 1
    finished = proc.wait(timeout=900) == 0
    a, b = _rows(straight), _rows(killed)
    same_steps = [r["step"] for r in a] == [r["step"] for r in b]
    max_diff = max((abs(float(ra["loss"]) - float(rb["loss"])) for ra, rb in zip(a, b)), default=None)
    return {"steps": steps, "kills": done_kills, "kills_while_writing_a_checkpoint": in_checkpoint,
            "resumes": resumes, "corrupted_checkpoints_seen": corrupt_seen, "finished": finished,
            "rows_straight": len(a), "rows_resumed": len(b), "same_steps": same_steps,
            "loss_max_abs_diff": max_diff, "exported_model": (killed / "model" / "config.json").exists()}
