"""Training throughput and DDP scaling on this machine's CPUs, or on one GPU.

    python benchmarks/bench_training.py [--preset embedded] [--steps 12] [--procs 1 2]
    python benchmarks/bench_training.py --device cuda --preset 7b-shaped --procs 1 --global-batch 8

Runs the real trainer (synthetic domain, full training of the model) for a few steps with the same
global batch on 1 and on N processes (torchrun, gloo), and reports samples/s from the trainer's own
metrics (first logged window skipped as warm-up). Prints a table and writes JSON to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(procs: int, base: Path, out: Path, steps: int, global_batch: int, threads: int, device: str) -> float:
    cfg = {"base_model": str(base), "output_dir": str(out), "steps": steps, "batch_size": global_batch // procs,
           "grad_accum": 1, "lr": 1e-4, "warmup_steps": 1, "trainable": ["all"], "train_vision_tower": True,
           "lora": {"enabled": False}, "save_every": 0, "log_every": 2, "export_dtype": "float32",
           "num_threads": threads, "data": {"sources": [{"kind": "synthetic", "seed": 1}]}}
    if device == "cuda":  # the release's recipe on a GPU: bf16, LoRA + the fully trained parts, CLIP frozen
        cfg.update(mixed_precision="bf16", lora={"enabled": True}, train_vision_tower=False, data_workers=4)
        cfg.pop("trainable")
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(cfg))
    launcher = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                     "--nproc_per_node", str(procs)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    if device == "cpu":
        env["ACCELERATE_USE_CPU"] = "true"
    subprocess.run(launcher + ["-m", "training.train", str(path)], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = list(csv.DictReader((out / "metrics.csv").open()))[1:]  # skip the warm-up window
    return sum(float(r["samples_per_s"]) for r in rows) / len(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="embedded")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    from training.init_model import init_model
    cores = os.cpu_count() or 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = init_model(args.preset, Path(tmp) / "base")
        print(f"{'processes':>9} {'threads/proc':>12} {'samples/s':>10} {'scaling':>8}")
        for procs in args.procs:
            threads = max(cores // procs, 1)
            rate = run(procs, base, Path(tmp) / f"run{procs}", args.steps, args.global_batch, threads, args.device)
            results.append({"processes": procs, "threads_per_process": threads, "samples_per_s": rate})
            print(f"{procs:>9} {threads:>12} {rate:>10.2f} {rate / results[0]['samples_per_s']:>7.2f}x", flush=True)
    import torch
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    report = {"preset": args.preset, "device": args.device, "gpu": gpu, "cpu_cores": cores, "global_batch": args.global_batch, "steps": args.steps,
              "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"training_{args.device}_{args.preset}.json"
    (out / name).write_text(json.dumps(report, indent=2))
    print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
