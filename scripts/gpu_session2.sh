#!/usr/bin/env bash
# Second device session: pretrain the embedded model's vision tower (training/pretrain_vision.py), then a
# first stretch of PixelLM training with the tower frozen (continued on CPU where the GPU time ran out).
set -u
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; PT_STEPS=${PT_STEPS:-800}; PT_BS=${PT_BS:-64}
TRAIN_STEPS=${TRAIN_STEPS:-600}; PT_TIMEOUT=${PT_TIMEOUT:-95}; TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-100}; WORKERS=${WORKERS:-14}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-/tmp/gpu_out2}; mkdir -p "$OUT" runs/v
T0=$(date +%s); el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
el init
$PY -m training.init_model --preset embedded --out runs/v/init > /dev/null || exit 1
el "pretrain vision tower"
timeout $PT_TIMEOUT $PY -m training.pretrain_vision --model runs/v/init --out runs/v/pt --steps $PT_STEPS \
  --batch-size $PT_BS --workers $WORKERS --device $DEVICE 2>&1 | tr '\r' '\n' | grep -v '^pretrain vision: .*[1-9]/' | tail -3
[ -f runs/v/pt/vision_pretraining.json ] || { el "pretraining did not finish"; exit 1; }
tar -C runs/v -czf "$OUT/pt_tower.tgz" pt/vision_tower pt/vision_pretraining.json
el "PixelLM training, tower frozen"
timeout $TRAIN_TIMEOUT $PY -m training.train training/configs/embedded_default.yaml --set base_model=runs/v/pt \
  output_dir=runs/v/run steps=$TRAIN_STEPS batch_size=16 lr=0.0003 warmup_steps=30 train_vision_tower=false \
  data_workers=$WORKERS num_threads=4 save_every=50 log_every=10 export_dtype=float32 \
  "loss={bce_weight: 8.0, dice_weight: 4.0, overlap_weight: 0.5}" \
  "data={sources: [{kind: synthetic, seed: 0, ratio: 1.0, questions_per_scene: 4}]}" > /tmp/train2.log 2>&1
el "trainer exit $?"
if [ ! -d runs/v/run/model ]; then
  ck=runs/v/run/checkpoints/$(cat runs/v/run/checkpoints/latest)
  $PY -m training.export --base runs/v/pt --checkpoint "$ck" --out runs/v/run/model --dtype float32 > /dev/null
fi
tar -C runs/v -cf - run/model | split -b 15M - "$OUT/run_model.tar."
tar -czf "$OUT/logs.tgz" -C runs/v run/metrics.csv run/config.yaml -C /tmp train2.log
tail -3 runs/v/run/metrics.csv
el done
