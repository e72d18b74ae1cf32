#!/usr/bin/env bash
# One device session (GPU machine with python3 + torch; no network, no ROS): CUDA tests, a sweep that
# trains the embedded default model candidates in parallel on one GPU, then the GPU benchmarks.
#   OUT=/some/dir TRAIN_S=300 scripts/gpu_session.sh
# Writes everything under $OUT (logs, metrics, evaluation reports, the best models as split tars).
set -u
PY=${PY:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_out}; TRAIN_S=${TRAIN_S:-300}; CAL_STEPS=${CAL_STEPS:-25}; MIN_STEPS=${MIN_STEPS:-50}
EVAL_N=${EVAL_N:-100}; DEVICE=${DEVICE:-cuda}
LOG=/tmp/gpu_logs; BENCH=/tmp/gpu_bench  # bundled into $OUT at the end (8 files come back)
mkdir -p "$OUT" "$LOG" "$BENCH" runs/g
T0=$(date +%s); el() { echo "[+$(( $(date +%s) - T0 ))s] $*"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import sys,torch,accelerate,peft,sentencepiece,safetensors,cv2,scipy; print(sys.version.split()[0], torch.__version__, accelerate.__version__, peft.__version__)"

el "CUDA tests"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/model/test_engine.py -k "cuda or bfloat16 or quantization" 2>&1 | tail -5

el "init models"
$PY -m training.init_model --preset embedded --out runs/g/init_g10 >/dev/null &
$PY -m training.init_model --preset embedded --prompt-gain 1 --out runs/g/init_g1 >/dev/null &
wait
# name | base | overrides (top-level keys of training/configs/embedded_default.yaml)
VARIANTS=(
  "A|init_g10|loss={bce_weight: 8.0, dice_weight: 4.0, overlap_weight: 0.5}"
  "B|init_g10|loss={bce_weight: 2.0, dice_weight: 0.5, overlap_weight: 0.5}"
  "C|init_g1|loss={bce_weight: 8.0, dice_weight: 4.0, overlap_weight: 0.5}"
  "D|init_g10|loss={bce_weight: 8.0, dice_weight: 4.0, overlap_weight: 0.5}|lr=0.0003"
  "E|init_g10|loss={bce_weight: 8.0, dice_weight: 4.0, overlap_weight: 0.5}|data={sources: [{kind: synthetic, seed: 0, ratio: 1.0, questions_per_scene: 1}]}"
  "F|init_g10|loss={bce_weight: 8.0, dice_weight: 4.0, overlap_weight: 0.5}|batch_size=32"
)
if [ -n "${ONLY:-}" ]; then  # e.g. ONLY="A B" for a dry run on a CPU
  keep=(); for v in "${VARIANTS[@]}"; do [[ " $ONLY " == *" ${v%%|*} "* ]] && keep+=("$v"); done; VARIANTS=("${keep[@]}")
fi
launch() {  # name steps
  local spec=$1 steps=$2 name base rest args=()
  IFS='|' read -r name base rest <<<"$spec"
  IFS='|' read -ra extra <<<"$rest"
  for e in "${extra[@]}"; do args+=("$e"); done
  $PY -m training.train training/configs/embedded_default.yaml --set "base_model=runs/g/$base" \
    "output_dir=runs/g/$3$name" "steps=$steps" num_threads=2 data_workers=2 save_every=0 log_every=5 \
    warmup_steps=$(( steps / 20 + 1 )) "${args[@]}" > "$LOG/$3$name.log" 2>&1
}
el "calibration ($CAL_STEPS steps each, all in parallel)"
for v in "${VARIANTS[@]}"; do launch "$v" "$CAL_STEPS" cal_ & done; wait
declare -A STEPS
for v in "${VARIANTS[@]}"; do
  n=${v%%|*}
  rate=$(tail -n 1 runs/g/cal_$n/metrics.csv 2>/dev/null | cut -d, -f3)
  [[ $rate =~ ^[0-9.]+$ ]] || rate=0
  bs=$(grep -o 'batch_size=[0-9]*' <<<"$v" | cut -d= -f2); bs=${bs:-8}
  STEPS[$n]=$($PY -c "print(max($MIN_STEPS, int(float('${rate:-0}') * $TRAIN_S / $bs)))")
  el "variant $n: $rate samples/s -> ${STEPS[$n]} steps"
done
rm -rf runs/g/cal_*
el "training for ~${TRAIN_S}s"
for v in "${VARIANTS[@]}"; do launch "$v" "${STEPS[${v%%|*}]}" "" & done; wait
el "evaluating (selection seed 4242, $EVAL_N questions)"
for v in "${VARIANTS[@]}"; do n=${v%%|*}
  [ -d runs/g/$n/model ] && timeout 150 $PY -m training.evaluate --model runs/g/$n/model --samples $EVAL_N --seed 4242 \
     --out runs/g/$n/eval_sel --device $DEVICE > "$LOG/eval_$n.log" 2>&1 &
done; wait
$PY - "$OUT" <<'PY' > "$OUT/sweep.txt"
import json, sys, pathlib
rows = []
for d in sorted(pathlib.Path("runs/g").iterdir()):
    r = d / "eval_sel" / "report.json"
    if r.is_file():
        j = json.loads(r.read_text()); rows.append((j["gIoU"], d.name, j))
rows.sort(reverse=True)
for g, n, j in rows:
    print(n, f"gIoU={j['gIoU']:.3f} cIoU={j['cIoU']:.3f} count={j['target_count_accuracy']:.3f}")
print("BEST", " ".join(n for _, n, _ in rows[:2]))
PY
cat "$OUT/sweep.txt"
for n in $(grep ^BEST "$OUT/sweep.txt" | cut -d' ' -f2-); do
  tar -C runs/g -cf - "$n/model" | split -b 15M - "$OUT/model_$n.tar."
done
(cd runs/g && tar -czf "$OUT/sweep_runs.tgz" $(ls -d */metrics.csv */metrics.png */config.yaml */eval_sel 2>/dev/null) -C /tmp gpu_logs)
[ "$DEVICE" = cuda ] || exit 0
el "benchmarks"
timeout 90 $PY benchmarks/bench_engine.py --configs 7b-shaped --device cuda --dtype bfloat16 --repeats 3 --out "$BENCH" 2>&1 | tee "$BENCH/engine.txt" | tail -8
timeout 110 $PY benchmarks/bench_training.py --device cuda --preset 7b-shaped --procs 1 --global-batch 8 --steps 12 \
  --out "$BENCH" 2>&1 | tee "$BENCH/training.txt" | tail -4
tar -czf "$OUT/bench.tgz" -C /tmp gpu_bench
el "done"
