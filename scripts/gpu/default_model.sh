#!/bin/bash
# The default model fine-tuned on simulated images on a lent GPU (one H200), two learning rates
# side by side, as run for docs/other-materials.md. Keras runs on JAX (the GPU machine has no
# TensorFlow); the bundles come back without an ONNX export, which `particleseg models export
# BUNDLE --format onnx` adds on a machine with TensorFlow. Everything it writes goes to $OUT.
#
#   OUT=runs/gpu MINUTES=4.0 bash scripts/gpu/default_model.sh
#
# IMAGES, VAL, STEPS, BATCH, WORKERS, MINUTES and RATES override the sizes (a CPU smoke test:
# IMAGES=24 VAL=3 STEPS=2 BATCH=4 WORKERS=2 MINUTES=0.5 RATES=4e-4).
set -u
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-runs/gpu}
IMAGES=${IMAGES:-2000} VAL=${VAL:-32} STEPS=${STEPS:-400} BATCH=${BATCH:-32} WORKERS=${WORKERS:-7}
MINUTES=${MINUTES:-4.0} RATES=${RATES:-"4e-4 1e-3"} PY=${PY:-python3}
WORK=${WORK:-/tmp/gpu-default}
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import jax, keras, numpy, skimage; print('devices', jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__, 'skimage', skimage.__version__)" 2>&1 | grep -v '^I0000\|absl' || exit 1

# 1. smoke: every step of the script on a handful of images, so a failure costs a minute
t0=$(date +%s)
timeout 150 $PY scripts/train_default_model.py --out "$WORK/smoke/bundle" --workdir "$WORK/smoke/work" \
    --simulator mixed --images 16 --val-images 2 --epochs 1 --steps 2 --batch-size 4 --workers 2 \
    --recipe finetune --init models/default >"$WORK/smoke.txt" 2>&1 || { tail -c 6000 "$WORK/smoke.txt"; exit 1; }
echo "smoke passed in $(( $(date +%s) - t0 )) s"

# 2. the runs, side by side (the GPU is idle most of the time; the CPUs cut the tiles)
t0=$(date +%s)
for lr in $RATES; do
    timeout "$(awk "BEGIN { print int($MINUTES * 60 + 250) }")" \
    $PY scripts/train_default_model.py --out "$WORK/lr$lr/bundle" --workdir "$WORK/lr$lr/work" \
        --simulator mixed --images "$IMAGES" --val-images "$VAL" --steps "$STEPS" --batch-size "$BATCH" \
        --workers "$WORKERS" --minutes "$MINUTES" --recipe finetune --init models/default --learning-rate "$lr" \
        >"$WORK/log-$lr.txt" 2>&1 &
done
wait
echo "runs ended after $(( $(date +%s) - t0 )) s"
for lr in $RATES; do
    mkdir -p "$OUT/lr$lr"
    # Keras' progress bars, one line per epoch kept
    tr '\r' '\n' <"$WORK/log-$lr.txt" | grep -v '^I0000\|absl\|simulating:' | grep -v 'step - loss: [0-9.e+-]*$' >"$OUT/lr$lr/log.txt"
    cp "$WORK/lr$lr/work/train/log.csv" "$OUT/lr$lr/epochs.csv" 2>/dev/null
    if [ -f "$WORK/lr$lr/bundle/bundle.json" ]; then
        cp "$WORK/lr$lr/bundle/bundle.json" "$WORK/lr$lr/bundle/model.keras" "$OUT/lr$lr/"
    else  # killed before the bundle: the best epoch's network at least
        cp "$WORK/lr$lr/work/train/best.keras" "$OUT/lr$lr/model.keras" 2>/dev/null
    fi
    tail -5 "$OUT/lr$lr/log.txt"
done
ls -la "$OUT" "$OUT"/*
