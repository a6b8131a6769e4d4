"""Keras vs ONNX Runtime through predict_tiled, and exact tiled vs untiled inference (issue 16, items 1-2).

    python benchmarks/bench_onnx_tiling.py          # ROUNDS=5 ROUNDS2=2 by default, a few minutes

The default model on the sample image resampled to 1024x768 (normalised once), each engine
ROUNDS times interleaved; then ONNX Runtime on a 2048x2048 image (the 1024x768 one mirrored)
untiled and with tiles of at most 1536 and 1024 pixels. Prints wall and process CPU seconds
(the CPU time of all the engine's threads: on a shared machine the wall time says more about the
other processes), Mpx/s, the largest differences (ONNX vs Keras, tiled vs untiled) and the load.
"""

import json
import os
import time
from pathlib import Path

import numpy as np

from particleseg import read_image
from particleseg.inference import predict_tiled, tiling_plan
from particleseg.models import load_bundle
from particleseg.preprocess import normalize_input, resize_to

b = load_bundle("default")
img, _ = read_image(str(Path(__file__).resolve().parents[1] / "python" / "particleseg" / "data" / "sample_sem.tif"))
img = img[: img.shape[0] - 64].astype(np.float32)
x = normalize_input(resize_to(img[..., None], (768, 1024), order=1), b.metadata["input"]["normalization"])
eng = {"keras": b.predictor("keras"), "onnx": b.predictor("onnx")}
m, halo = b.network.multiple_of, b.overlap


def run(p, im, tile):
    """Run ``predict_tiled`` with predictor ``p`` on ``im``; return the output, wall and CPU seconds."""
    t, c = time.perf_counter(), time.process_time()
    out = predict_tiled(p, im, tile=tile, overlap=halo, multiple_of=m, progress=False)
    return out, time.perf_counter() - t, time.process_time() - c


for p in eng.values():
    run(p, x, None)
res = {k: [] for k in eng}
outs = {}
for _r in range(int(os.environ.get("ROUNDS", 5))):
    for k, p in eng.items():
        outs[k], wall, cpu = run(p, x, b.tile)
        res[k].append((wall, cpu, os.getloadavg()[0]))
mpx = x.shape[0] * x.shape[1] / 1e6
summary = {}
for k, v in res.items():
    w = np.median([a for a, _, _ in v])
    c = np.median([b_ for _, b_, _ in v])
    summary[k] = {
        "wall_s": round(w, 3),
        "cpu_s": round(c, 3),
        "Mpx_per_s": round(mpx / w, 3),
        "Mpx_per_cpu_s": round(mpx / c, 3),
        "walls": [round(a, 2) for a, _, _ in v],
        "load1": [round(load, 1) for _, _, load in v],
    }
summary["onnx_vs_keras_wall"] = round(summary["keras"]["wall_s"] / summary["onnx"]["wall_s"], 2)
summary["onnx_vs_keras_cpu"] = round(summary["keras"]["cpu_s"] / summary["onnx"]["cpu_s"], 2)
summary["max_diff_onnx_keras"] = float(np.abs(outs["onnx"] - outs["keras"]).max())
print(json.dumps(summary, indent=1), flush=True)

# tiled vs untiled on a 2048x2048 image (the 1024x768 image mirrored), ONNX
big = np.pad(x, ((0, 2048 - 768), (0, 1024), (0, 0)), mode="symmetric")[:2048, :2048]
o = eng["onnx"]
tiled_res = {}
for tile in (None, 1536, 1024):
    plan = (
        tiling_plan(big.shape[:2], tile, halo, m) if tile else {"overhead": 1.0, "tile": big.shape[:2], "tiles": (1, 1)}
    )
    walls, cpus = [], []
    for _r in range(int(os.environ.get("ROUNDS2", 2))):
        out, w, c = run(o, big, tile)
        walls.append(w)
        cpus.append(c)
    tiled_res[str(tile)] = {
        "plan": plan,
        "wall_s": round(float(np.median(walls)), 2),
        "cpu_s": round(float(np.median(cpus)), 2),
        "out": out,
    }
ref = tiled_res["None"]["out"]
for _k, v in tiled_res.items():
    d = float(np.abs(v.pop("out") - ref).max())
    v["max_diff_vs_untiled"] = d
    v["time_ratio_wall"] = round(v["wall_s"] / tiled_res["None"]["wall_s"], 3)
    v["time_ratio_cpu"] = round(v["cpu_s"] / tiled_res["None"]["cpu_s"], 3)
print(json.dumps(tiled_res, indent=1, default=str))
print("load", os.getloadavg())
