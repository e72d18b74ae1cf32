#!/usr/bin/env bash
# What this project runs on a lent GPU machine (python3 with torch, no network, no ROS), in one call:
#   OUT=/some/dir scripts/gpu_session.sh
# 1. the CUDA tests; 2. the embedded default model's vision-tower pretraining (training/pretrain_vision.py,
# ~1 min on an H100, ~40 min on 2 CPU cores); 3. the GPU benchmarks (engine, training throughput).
# Results under $OUT: pretrained_tower.tgz, bench.tgz (at most 8 files come back from such a machine).
set -u
PY=${PY:-python3}; OUT=${OUT:-/tmp/gpu_out}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT" runs/gpu /tmp/gpu_bench
T0=$(date +%s); el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import sys,torch,accelerate,peft; print(sys.version.split()[0], torch.__version__, accelerate.__version__, peft.__version__)"

el "CUDA tests"
# test_quantize.py: all of it (its cuda cases run there); skipped where bitsandbytes is not installed.
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/model/test_engine.py tests/model/test_quantize.py \
  -k "cuda or bfloat16 or quantiz" 2>&1 | tail -3

el "vision-tower pretraining for the embedded default model"
$PY -m training.init_model --preset embedded --out runs/gpu/init > /dev/null
timeout 150 $PY -m training.pretrain_vision --model runs/gpu/init --out runs/gpu/init_pretrained --steps 800 \
  --batch-size 64 --workers 14 --device cuda 2>&1 | tail -1
tar -C runs/gpu -czf "$OUT/pretrained_tower.tgz" init_pretrained/vision_tower init_pretrained/vision_pretraining.json

el "benchmarks"
timeout 90 $PY benchmarks/bench_engine.py --configs 7b-shaped --device cuda --dtype bfloat16 --repeats 3 \
  --out /tmp/gpu_bench 2>&1 | tee /tmp/gpu_bench/engine.txt | tail -4
timeout 110 $PY benchmarks/bench_training.py --device cuda --preset 7b-shaped --procs 1 --global-batch 8 --steps 12 \
  --out /tmp/gpu_bench 2>&1 | tee /tmp/gpu_bench/training.txt | tail -3
tar -czf "$OUT/bench.tgz" -C /tmp gpu_bench
el done
