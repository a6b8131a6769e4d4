#!/bin/bash
# The default model fine-tuned on simulated images on a lent GPU (one H200), one run per learning
# rate side by side, as run for docs/other-materials.md. Keras runs on JAX (the GPU machine has no
# TensorFlow); the bundles come back without an ONNX export, which `particleseg models export
# BUNDLE --format onnx` adds on a machine with TensorFlow. Everything it writes goes to $OUT.
#
#   OUT=runs/gpu MINUTES=4.0 bash scripts/gpu/default_model.sh                  # first lease: two rates
#   OUT=runs/gpu2 MINUTES=5.5 RATES=1e-3 INIT=runs/gpu/lr1e-3/bundle SEED=1 IMAGES=3000 WORKERS=14 \
#       SMOKE=0 bash scripts/gpu/default_model.sh                                 # second lease: one, longer
#
# IMAGES, VAL, STEPS, BATCH, WORKERS, MINUTES, RATES, INIT and SEED override the sizes (a CPU smoke
# test: IMAGES=24 VAL=3 STEPS=2 BATCH=4 WORKERS=2 MINUTES=0.5 RATES=4e-4). SMOKE=0 skips the smoke
# run of a handful of images (when the same command has been smoke-tested on a CPU under JAX).
# Each run is stopped MINUTES + 250 s after its start; the best epoch's network comes back then.
set -u
export KERAS_BACKEND=${KERAS_BACKEND:-jax} XLA_PYTHON_CLIENT_MEM_FRACTION=0.4 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-runs/gpu}
IMAGES=${IMAGES:-2000} VAL=${VAL:-32} STEPS=${STEPS:-400} BATCH=${BATCH:-32} WORKERS=${WORKERS:-7}
MINUTES=${MINUTES:-4.0} RATES=${RATES:-"4e-4 1e-3"} PY=${PY:-python3} INIT=${INIT:-models/default}
SEED=${SEED:-0} SMOKE=${SMOKE:-1} LIMIT=${LIMIT:-$(awk "BEGIN { print int(${MINUTES:-4.0} * 60 + 250) }")}
WORK=${WORK:-/tmp/gpu-default}
mkdir -p "$OUT" "$WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import jax, keras, numpy, skimage; print('devices', jax.devices(), 'keras', keras.__version__, 'numpy', numpy.__version__, 'skimage', skimage.__version__)" 2>&1 | grep -v '^I0000\|absl' || exit 1
# the GPU's utilisation every 5 s, to see whether the loader keeps it busy
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 5 >"$OUT/gpu-use.csv" 2>/dev/null &
monitor=$!

# 1. smoke: every step of the script on a handful of images, so a failure costs a minute
if [ "$SMOKE" != 0 ]; then
    t0=$(date +%s)
    timeout 150 $PY scripts/train_default_model.py --out "$WORK/smoke/bundle" --workdir "$WORK/smoke/work" \
        --simulator mixed --images 16 --val-images 2 --epochs 1 --steps 2 --batch-size 4 --workers 2 \
        --recipe finetune --init "$INIT" >"$WORK/smoke.txt" 2>&1 || { tail -c 6000 "$WORK/smoke.txt"; exit 1; }
    echo "smoke passed in $(( $(date +%s) - t0 )) s"
fi

# 2. the runs, side by side (the CPUs simulate the images and cut the tiles)
t0=$(date +%s)
for lr in $RATES; do
    timeout "$LIMIT" \
    $PY scripts/train_default_model.py --out "$WORK/lr$lr/bundle" --workdir "$WORK/lr$lr/work" \
        --simulator mixed --images "$IMAGES" --val-images "$VAL" --steps "$STEPS" --batch-size "$BATCH" \
        --workers "$WORKERS" --minutes "$MINUTES" --recipe finetune --init "$INIT" --learning-rate "$lr" \
        --seed "$SEED" >"$WORK/log-$lr.txt" 2>&1 &
done
wait $(jobs -p | grep -v "^$monitor\$")
echo "runs ended after $(( $(date +%s) - t0 )) s"
kill "$monitor" 2>/dev/null
for lr in $RATES; do
    mkdir -p "$OUT/lr$lr"
    # Keras' progress bars, one line per epoch kept (colour codes removed)
    tr '\r' '\n' <"$WORK/log-$lr.txt" | sed 's/\x1b\[[0-9;]*m//g' | grep -v '^I0000\|absl\|simulating:' \
        | grep -v 'step - loss: [0-9.e+-]*$' >"$OUT/lr$lr/log.txt"
    cp "$WORK/lr$lr/work/train/log.csv" "$OUT/lr$lr/epochs.csv" 2>/dev/null
    if [ -f "$WORK/lr$lr/bundle/bundle.json" ]; then
        cp "$WORK/lr$lr/bundle/bundle.json" "$WORK/lr$lr/bundle/model.keras" "$OUT/lr$lr/"
    else  # stopped before the bundle: the best epoch's network (or the last) at least, without the optimiser's state
        src="$WORK/lr$lr/work/train/best.keras"; [ -f "$src" ] || src="$WORK/lr$lr/work/train/checkpoint.keras"
        $PY -c "import sys, keras, particleseg.models; keras.saving.load_model(sys.argv[1], compile=False).save(sys.argv[2])" \
            "$src" "$OUT/lr$lr/model.keras"
    fi
    tail -5 "$OUT/lr$lr/log.txt"
done
ls -la "$OUT" "$OUT"/*
