#!/usr/bin/env python
r"""Fine-tune the shipped default model on the TiO2 training split and score it on the validation split.

The fine-tuning runs ``particleseg train`` as a user would.

The 24 training images of the fixed split (:mod:`particleseg.datasets`) are linked (not
copied) into ``OUT/data/{images,masks,keep_masks}``, then the command line is run exactly as
printed::

    particleseg train --images OUT/data/images --masks OUT/data/masks \
        --keep-masks OUT/data/keep_masks --crop-rows 64 --out OUT/model --minutes 60 --seed 0

(``--crop-rows 64``: the keep masks are 1024x704.) The 8 validation images play no part in
training or in any choice. They are scored as :func:`particleseg.datasets.evaluate_tio2`
scores (foreground IoU, instance IoU per annotated and per segmented particle, F1 at IoU 0.5,
pixel error) and by the size distribution users measure: the minimum Feret diameter of the
particles ``particleseg segment`` keeps with its defaults, against the particles the expert
kept (``keep_masks``): medians, means and the Kolmogorov-Smirnov distance. The shipped
default model is scored the same way (``--model default --evaluate-only``).

Nothing is written to the repository (data licence): everything stays in ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from particleseg.datasets import TIO2_CROP_ROWS, score_labels, tio2_items

KEEP_ROWS = 704


def link_split(out: Path) -> Path:
    """Link the training split's images, masks and keep masks into ``OUT/data``; return that folder."""
    data = out / "data"
    for sub in ("images", "masks", "keep_masks"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for it in tio2_items(split="train"):
        for src, sub in ((it.image, "images"), (it.mask, "masks"), (it.keep_mask, "keep_masks")):
            dst = data / sub / src.name
            if not dst.exists():
                dst.symlink_to(src.resolve())
    return data


def size_distribution(bundle, items) -> dict:
    """MinFeret (px) of the particles ``segment`` keeps with its defaults vs the expert's."""
    import tifffile
    from scipy.stats import ks_2samp

    from particleseg import read_image
    from particleseg.measure import measure_particles
    from particleseg.pipeline import SegmentParams, segment_image
    from particleseg.postprocess import label_mask

    ours, expert = [], []
    for it in items:
        image, _ = read_image(it.image)
        seg = segment_image(image, bundle, SegmentParams(crop_rows="auto", progress=False), name=str(it.image))
        ours.append(seg.table.loc[seg.table["kept"], "MinFeret"].to_numpy(float))
        keep = label_mask(tifffile.imread(it.keep_mask) > 0)
        expert.append(measure_particles(keep)["MinFeret"].to_numpy(float))
    a, b = np.concatenate(ours), np.concatenate(expert)
    return {
        "kept": int(len(a)),
        "expert_kept": int(len(b)),
        "median_px": float(np.median(a)),
        "expert_median_px": float(np.median(b)),
        "median_diff_pct": float(100 * (np.median(a) / np.median(b) - 1)),
        "mean_diff_pct": float(100 * (a.mean() / b.mean() - 1)),
        "ks": float(ks_2samp(a, b).statistic),
    }


def evaluate(bundle) -> dict:
    """Score a bundle on the validation split: mean scores and the size distribution against the expert's."""
    import tifffile

    from particleseg import metrics
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image
    from particleseg.postprocess import label_mask

    bundle = load_bundle(bundle)
    items = tio2_items(split="validation")
    rows = []
    for it in items:
        image = tifffile.imread(it.image)[:TIO2_CROP_ROWS]
        truth = label_mask(tifffile.imread(it.mask)[:TIO2_CROP_ROWS] > 0)
        seg = segment_image(image, bundle, SegmentParams(crop_rows=0, progress=False), name=str(it.image))
        row = score_labels(seg.labels, truth)
        row["pixel_error"] = metrics.pixel_error(
            (seg.labels > 0).astype(np.uint8), (truth > 0).astype(np.uint8), (0.5,)
        )
        rows.append(row)
    scores = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return {"validation": scores, "size_distribution": size_distribution(bundle, items)}


def main(argv=None) -> int:
    """Fine-tune with ``particleseg train`` (or take ``--model``), score it; print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (data links, model, results.json)")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", help="only score this bundle (e.g. default)")
    ap.add_argument("--train-args", default="", help="further options for particleseg train")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {}
    if args.model:
        bundle = args.model
        result["model"] = args.model
    else:
        data = link_split(args.out)
        bundle = args.out / "model"
        cmd = [
            "particleseg",
            "train",
            "--images",
            str(data / "images"),
            "--masks",
            str(data / "masks"),
            "--keep-masks",
            str(data / "keep_masks"),
            "--crop-rows",
            str(768 - KEEP_ROWS),
            "--out",
            str(bundle),
            "--minutes",
            f"{args.minutes:g}",
            "--seed",
            str(args.seed),
            *shlex.split(args.train_args),
        ]
        print("$", shlex.join(cmd), flush=True)
        t0 = time.time()
        if not (bundle / "bundle.json").exists():
            subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], check=True)
        result.update(command=shlex.join(cmd), wall_minutes=round((time.time() - t0) / 60, 1))
    result.update(evaluate(bundle))
    name = "results.json" if not args.model else f"results-{Path(args.model).name}.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    v, d = result["validation"], result["size_distribution"]
    print(
        f"validation (8 images): foreground IoU {v['foreground_iou']:.4f}, instance IoU {v['instance_iou']:.4f} "
        f"(per segmented {v['instance_iou_pred']:.4f}), F1@0.5 {v['f1_iou50']:.4f}, "
        f"pixel error {v['pixel_error']:.4f}; "
        f"MinFeret of {d['kept']} kept vs {d['expert_kept']} expert particles: median {d['median_diff_pct']:+.1f} %, "
        f"mean {d['mean_diff_pct']:+.1f} %, KS {d['ks']:.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
