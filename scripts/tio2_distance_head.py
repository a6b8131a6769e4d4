#!/usr/bin/env python
"""Test whether the extra distance head raises instance IoU on the TiO2 data.

Two small UNets with the same settings and seed, one with a foreground head only (watershed seeds from the distance
transform of the mask), one with a foreground and a distance head (seeds from the predicted
distance map), trained on the TiO2 training split with ``particleseg.train.train_segmentation``
and scored on the validation split (images cropped to 1024x712) over a threshold sweep
0.0-1.0 in steps of 0.1, and at the defaults each bundle chose on its own held-out
training images.

The data are CC BY-NC-ND: they are read in place and the bundles go to ``runs/`` (ignored by
git), never into the repository.

    python scripts/tio2_distance_head.py --out runs/tio2-heads            # about 2 x 15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = [round(0.1 * i, 1) for i in range(11)]


def score_bundle(bundle, split: str = "validation") -> tuple[list[dict], dict]:
    """Per-threshold means over the split's images and the scores at the bundle's defaults."""
    import dataclasses

    import tifffile

    from particleseg import metrics
    from particleseg.datasets import TIO2_CROP_ROWS, tio2_items
    from particleseg.pipeline import SegmentParams, particles_from_probabilities, predict_probabilities
    from particleseg.postprocess import label_mask

    base = SegmentParams(progress=False).resolved(bundle)
    per_thr = {t: [] for t in THRESHOLDS}
    at_default = []
    for item in tio2_items(split=split):
        image = tifffile.imread(item.image)[:TIO2_CROP_ROWS]
        truth = label_mask(tifffile.imread(item.mask)[:TIO2_CROP_ROWS] > 0)
        prob = predict_probabilities(image, bundle, base)
        for t in THRESHOLDS + ["default"]:
            params = base if t == "default" else dataclasses.replace(base, threshold=min(t, 0.999))
            pred = particles_from_probabilities(prob, bundle.heads, params)
            row = {
                "foreground_iou": metrics.foreground_iou(pred > 0, truth > 0),
                "instance_iou": metrics.instance_iou(pred, truth, average="truth"),
                "instance_iou_pred": metrics.instance_iou(pred, truth, average="pred"),
                "pixel_error": metrics.pixel_error((pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8), (0.5,)),
                "f1_iou50": metrics.match_instances(truth, pred, 0.5)["f1"],
            }
            (at_default if t == "default" else per_thr[t]).append(row)
    mean = lambda rows: {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}  # noqa: E731
    return [{"threshold": t, **mean(per_thr[t])} for t in THRESHOLDS], {
        "threshold": base.threshold,
        "seed_threshold": base.seed_threshold,
        **mean(at_default),
    }


def main(argv=None) -> int:
    """Train both networks, sweep the thresholds on the validation split; print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "tio2-heads")
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument(
        "--normalization",
        default="group",
        choices=("batch", "group", "none"),
        help="group: no running statistics, so a short run predicts as it trained (default)",
    )
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--heads", nargs="+", default=["none", "distance"], choices=("none", "distance", "boundary"))
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from particleseg.datasets import TIO2_CROP_ROWS, tio2_items
    from particleseg.models import load_bundle
    from particleseg.train import train_segmentation

    items = tio2_items(split="train")
    results = {}
    for head in args.heads:
        out = args.out / f"unet-{head}"
        t0 = time.time()
        if (out / "bundle.json").exists() and not args.overwrite:
            bundle = load_bundle(out)
        else:
            bundle = train_segmentation(
                [it.image for it in items],
                [it.mask for it in items],
                out,
                arch=args.arch,
                depth=args.depth,
                base_filters=args.base_filters,
                extra_head=head,
                normalization=args.normalization,
                mask_kind="binary",
                crop_rows=768 - TIO2_CROP_ROWS,
                tile=args.tile,
                batch_size=args.batch_size,
                epochs=args.epochs,
                steps_per_epoch=args.steps,
                validation_steps=5,
                patience=0,
                seed=args.seed,
                name=f"tio2-unet-{head}",
                description="TiO2 SEM training split (CC BY-NC-ND; not for distribution)",
                overwrite=args.overwrite,
                jit_compile=True,
                progress=True,
            )
        minutes = (time.time() - t0) / 60
        sweep, default = score_bundle(bundle)
        best = max(sweep, key=lambda r: r["instance_iou"])
        results[head] = {
            "sweep": sweep,
            "at_defaults": default,
            "best_instance_iou": best,
            "train_minutes": bundle.metadata["training"].get("minutes"),
            "minutes_total": round(minutes, 1),
            "held_out_train_metrics": bundle.metadata["metrics"]["validation"],
        }
        print(f"\n== {head}: defaults {default}\n   best over sweep {best}", flush=True)
        for r in sweep:
            print("   ", r)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {"command": "python scripts/tio2_distance_head.py " + " ".join(argv or sys.argv[1:]), "results": results},
            indent=1,
        )
    )
    print(f"wrote {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
