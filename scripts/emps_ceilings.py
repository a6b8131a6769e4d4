"""How far rules on top of the shipped network can take two EMPS figures: the size and the foreground.

Two questions about the EMPS development set (``../shared/datasets/emps-dev``, read in place),
both answered with the truth, so both give *upper bounds* for any label-free rule, not rules:

* **Size reported.** ``segment`` runs the network at one to several scales
  (:func:`particleseg.pipeline.best_scale_pass`; both polarities where the network checks a weak
  polarity) and reports the median diameter of the particles the chosen pass found. Had each
  image's pass been chosen by the truth (the pass whose median diameter is closest to the true
  one), how many images would come within ±25 %?
* **Foreground.** The foreground IoU of the particles found (after the minimum-confidence
  filter, as ``benchmarks/bench_emps.py`` scores it) against the network's probability map
  thresholded at fixed levels and at its own Otsu level per image: does another threshold
  lift the foreground IoU?

The passes are recorded by wrapping :func:`particleseg.pipeline.scale_consistency`, which
:func:`~particleseg.pipeline.best_scale_pass` calls once per pass with the pass's label counts;
nothing else changes.

Usage::

    python scripts/emps_ceilings.py --out runs/emps/ceilings.csv     # 366 images, about 15 min on 2 CPU cores
    python scripts/emps_ceilings.py --limit 20                       # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the EMPS reader and split of bench_emps.py
from bench_emps import DATA, _fast_predictor, emps_images, half, missing, share_within_25, true_diameter  # noqa: E402

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)


@contextlib.contextmanager
def recorded_passes(passes: list):
    """Append the median particle diameter of every scale pass to ``passes`` while inside."""
    from particleseg import pipeline
    from particleseg.autoscale import median_diameter

    original = pipeline.scale_consistency

    def recording(scale, counts, bundle):
        passes.append(median_diameter(np.asarray(counts)[1:]))
        return original(scale, counts, bundle)

    pipeline.scale_consistency = recording
    try:
        yield passes
    finally:
        pipeline.scale_consistency = original


def run(limit: int | None = None) -> pd.DataFrame:
    """One row per image: the size reported, the best pass's, and foreground IoUs."""
    from skimage.filters import threshold_otsu

    from particleseg.metrics import foreground_iou
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image

    bundle = load_bundle(None)
    predictor = _fast_predictor(bundle)
    rows = []
    for r, image, labels in emps_images(limit, DATA):
        truth = labels > 0
        d_true = true_diameter(r.median_area_px)
        with recorded_passes([]) as passes:
            seg = segment_image(image, bundle, SegmentParams(), name=r.stem, predictor=predictor)
        found = [p for p in passes if p]
        best = min(found, key=lambda p: abs(np.log(p / d_true))) if found else np.nan
        fg = seg.foreground
        row = {
            "stem": r.stem,
            "half": half(r.stem),
            "diameter": d_true,
            "reported": seg.scale.particle_size if seg.scale else np.nan,
            "best_pass": best,
            "passes": len(passes),
            "fg_iou_particles": foreground_iou(seg.labels, truth),
            "fg_iou_otsu": foreground_iou(fg > threshold_otsu(fg), truth) if fg.min() < fg.max() else np.nan,
        }
        row.update({f"fg_iou_t{t}": foreground_iou(fg > t, truth) for t in THRESHOLDS})
        rows.append(row)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per half and all: the share of sizes within ±25 % (reported, best pass) and mean foreground IoUs."""
    out = {}
    for name, part in [("all", df), *df.groupby("half")]:
        row = {"n": len(part)}
        for col in ("reported", "best_pass"):
            row[f"{col} within 25 %"] = share_within_25(part[col], part["diameter"])
        for col in [c for c in df if c.startswith("fg_iou")]:
            row[col] = part[col].mean()
        out[name] = row
    return pd.DataFrame(out).T


def main(argv=None) -> int:
    """Run on the EMPS development set; print the summary, write the per-image CSV asked for."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, help="a fixed random sample of this many images")
    ap.add_argument("--out", help="per-image CSV")
    a = ap.parse_args(argv)
    if missing("emps_ceilings", DATA):
        return 2
    t0 = time.perf_counter()
    df = run(a.limit)
    if a.out:
        df.to_csv(a.out, index=False)
    print(summary(df).round(3).to_string())
    print(f"{len(df)} images, {time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
