#!/usr/bin/env python
"""Where a bundle loses instance IoU on the TiO2 validation split: missed and merged particles.

Every annotated particle of the 8 validation images (4-connected labels of the manual masks,
data bar cropped) gets its best IoU with a segmented particle (``segment_image`` with the
bundle's defaults, all particles as segmented). A particle is *missed* when it overlaps none and
*merged* when its best-matching segmented particle is also the best match of another annotated
particle. The shortfall ``1 - IoU`` is split into these causes and tabulated by particle area::

    python scripts/instance_errors.py runs/tio2-ft55/model

Pooled over the particles (the benchmarks average per image first, so their means differ).
"""

from __future__ import annotations

import argparse

import numpy as np


def best_matches(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per annotated particle: its area, its best IoU and that best match (0: none).

    Particles are numbered compactly, as :func:`particleseg.metrics.contingency.contingency`
    numbers them.
    """
    from particleseg.metrics.contingency import contingency

    c = contingency(truth, pred)
    best, match = np.zeros(c.n_truth + 1), np.zeros(c.n_truth + 1, int)
    for t, p, k in zip(c.rows, c.cols, c.counts):
        if p == 0:
            continue
        iou = k / (c.truth_area[t] + c.pred_area[p] - k)
        if iou > best[t]:
            best[t], match[t] = iou, p
    return c.truth_area[1:], best[1:], match[1:]


def main(argv=None) -> int:
    """Segment the validation images with the bundle; print the shortfall of IoU by cause and area."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="model bundle (folder, zip or a name such as default)")
    args = ap.parse_args(argv)

    import tifffile

    from particleseg.datasets import TIO2_CROP_ROWS, tio2_items
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image
    from particleseg.postprocess import label_mask

    bundle = load_bundle(args.bundle)
    areas, ious, merged = [], [], []
    for it in tio2_items(split="validation"):
        image = tifffile.imread(it.image)[:TIO2_CROP_ROWS]
        truth = label_mask(tifffile.imread(it.mask)[:TIO2_CROP_ROWS] > 0)
        pred = segment_image(image, bundle, SegmentParams(crop_rows=0, progress=False)).labels
        a, iou, m = best_matches(pred, truth)
        shared = np.bincount(m[m > 0], minlength=int(m.max()) + 1)
        areas.append(a)
        ious.append(iou)
        merged.append((m > 0) & (shared[m] > 1))
    a, iou, mg = np.concatenate(areas), np.concatenate(ious), np.concatenate(merged)
    missed = iou == 0
    loss = 1 - iou
    print(
        f"{len(a)} annotated particles: mean best IoU {iou.mean():.3f}; missed {missed.mean():.1%}, "
        f"merged {mg.mean():.1%}; shortfall from merged {loss[mg].sum() / loss.sum():.0%}, "
        f"from missed {loss[missed].sum() / loss.sum():.0%}"
    )
    print("area (px²)      particles  mean IoU  missed  merged")
    for lo, hi in ((0, 50), (50, 200), (200, 800), (800, np.inf)):
        s = (a >= lo) & (a < hi)
        if s.any():
            print(
                f"{lo:>5g}-{hi:<8g} {s.sum():>10d} {iou[s].mean():>9.3f} {missed[s].mean():>7.0%} {mg[s].mean():>7.0%}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
