"""Seconds per metric of ``particleseg.metrics.evaluate_pair`` on one 1024x712 TiO2 pair.

    python benchmarks/bench_metrics.py [--image N] [--repeat 3]

Proposals: a stand-in probability map (a logistic function of the smoothed SEM image around
its Li threshold, saturated like a network output) with the publication's 11-step sweep, with
and without the watershed; and the Li-threshold mask (one level). Prints a Markdown table with
the median over the repeats. The TiO2 data are read in place (../shared/datasets/tio2-sem).

From Python: ``measure(image, truth, repeat)`` returns the timings (``benchmarks/run.py`` uses it).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from particleseg import metrics as M
from particleseg.datasets import tio2_items
from particleseg.io import read_image
from particleseg.postprocess import threshold_value


def stand_in_probability(image: np.ndarray) -> np.ndarray:
    """Return a stand-in probability map: a logistic function of the smoothed image around its Li threshold."""
    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.5)
    return (1 / (1 + np.exp(-(smooth - threshold_value(image, "li")) / 8))).astype(np.float32)


CASES = ("probability map, 11 thresholds", "probability map, 11 thresholds, watershed", "Li-threshold mask")


def load_pair(index: int = 3) -> tuple[np.ndarray, np.ndarray, str]:
    """Return the TiO2 image ``index`` (sorted) and its manual mask, cropped to 1024x712, and its stem."""
    item = tio2_items()[index]
    return read_image(item.image)[0][:712], M.read_array(item.mask)[:712], item.stem


def measure(image: np.ndarray, truth: np.ndarray, repeat: int = 3) -> dict:
    """Seconds per step of :func:`particleseg.metrics.evaluate_pair` for the three proposals.

    Parameters
    ----------
    image : (Y, X) array
        Gray image; the proposals are made from it (see :func:`stand_in_probability`).
    truth : (Y, X) array
        Ground truth (mask or labels).
    repeat : int
        Runs per proposal; the median of each step is reported.

    Returns
    -------
    dict: proposal name -> {step: median seconds, ..., "total": ..., "_res": the last result}
    """
    prob = stand_in_probability(image)
    li_mask = image > threshold_value(image, "li")
    cases = {
        CASES[0]: dict(pred=prob),
        CASES[1]: dict(pred=prob, watershed=True),
        CASES[2]: dict(pred=li_mask),
    }
    M.evaluate_pair(li_mask, truth)  # warm up imports and lookup tables
    results = {}
    for name, kw in cases.items():
        runs = []
        for _ in range(repeat):
            timings: dict = {}
            t0 = time.perf_counter()
            res = M.evaluate_pair(kw["pred"], truth, watershed=kw.get("watershed", False), timings=timings)
            timings["total"] = time.perf_counter() - t0
            runs.append(timings)
        keys = list(runs[0])
        results[name] = {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in keys}
        results[name]["_res"] = res
    return results


def steps(results: dict) -> list[str]:
    """Return the step names of :func:`measure`'s results in order, ``total`` last."""
    keys = []
    for n in results:
        keys += [k for k in results[n] if k not in keys and k not in ("_res", "total")]
    return keys + ["total"]


def main() -> None:
    """Time the metrics on one TiO2 pair; print the Markdown table and the scores."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--image", type=int, default=3, help="index into the sorted TiO2 images (default 3, the first validation image)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    image, truth, stem = load_pair(args.image)
    results = measure(image, truth, args.repeat)

    print(
        f"TiO2 image {stem} (1024x712), {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"median of {args.repeat} runs, seconds\n"
    )
    names = list(results)
    print("| step | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for k in steps(results):
        label = f"**{k}**" if k == "total" else k
        print(f"| {label} | " + " | ".join(f"{results[n].get(k, 0.0):.3f}" for n in names) + " |")
    print()
    for n in names:
        r = results[n]["_res"]
        print(f"{n}: " + ", ".join(f"{h} {r[k]:.4f}" for k, h in M.TABLE1_COLUMNS))


if __name__ == "__main__":
    main()
