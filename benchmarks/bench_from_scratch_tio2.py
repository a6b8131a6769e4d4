"""Accuracy of a model bundle on the TiO2 SEM data, scored with the manual masks.

    python benchmarks/bench_from_scratch_tio2.py runs/scratch-cpu/bundle [--splits validation all]

For a bundle made by ``particleseg train-from-scratch`` (no manual mask used in training; the
masks are read here only to score). Two views, per split:

* the pipeline as a user runs it (:func:`particleseg.datasets.evaluate_tio2`: the bundle's
  threshold and distance-head watershed; foreground IoU, instance IoU averaged over the true
  particles and over the segmented ones, F1 at IoU 0.5), means over the images;
* the columns of the publication's Table 1 (:func:`particleseg.metrics.evaluate_pair` on the
  foreground probability maps of all images of the split together, thresholds 0.0 to 1.0 in
  steps of 0.1, best value reported, distance-transform watershed before scoring, as the
  publication did).

Prints Markdown tables; ``--csv`` also writes the per-image scores. The TiO2 data are read in
place (../shared/datasets/tio2-sem) and never copied.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from particleseg.metrics import TABLE1_COLUMNS  # noqa: E402 - after the TF log level

#: the publication's Table 1 columns (without the extra instance columns)
TABLE1 = TABLE1_COLUMNS[:8]


def table1(bundle, split: str) -> dict:
    """``metrics.evaluate_pair`` over the stacked probability maps of a split."""
    import tifffile

    from particleseg.datasets import TIO2_CROP_ROWS, tio2_items
    from particleseg.pipeline import SegmentParams, predict_probabilities

    probs, truths = [], []
    for item in tio2_items(split=split):
        image = tifffile.imread(item.image)[:TIO2_CROP_ROWS]
        probs.append(predict_probabilities(image, bundle, SegmentParams(progress=False))[..., 0])
        truths.append(tifffile.imread(item.mask)[:TIO2_CROP_ROWS] > 0)
    return table1_scores(probs, truths)


def table1_scores(preds, truths, pred_kind: str = "prob") -> dict:
    """Score given proposals as :func:`table1` does (Table 1 of the publication).

    ``metrics.evaluate_pair`` on the stacked maps (``pred_kind="prob"``: probabilities, thresholds
    0.0-1.0; ``"mask"``: binary masks, one level) against the stacked binary masks, watershed
    before scoring.
    """
    from particleseg import metrics

    pred = np.stack(preds)
    if pred_kind == "prob":
        pred = np.clip(pred, 0, 1)
    return metrics.evaluate_pair(pred, np.stack(truths), watershed=True, pred_kind=pred_kind, truth_kind="mask")


def main(argv=None) -> int:
    """Evaluate a bundle on the TiO2 splits; print the pipeline and Table-1 tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--splits", nargs="+", default=["validation", "all"], choices=["train", "validation", "all"])
    ap.add_argument("--csv", metavar="PREFIX", help="write PREFIX-SPLIT.csv with the per-image pipeline scores")
    args = ap.parse_args(argv)

    from particleseg.datasets import evaluate_tio2
    from particleseg.models import load_bundle

    bundle = load_bundle(args.bundle)
    print(
        f"bundle {args.bundle}: {bundle.metadata['network']['architecture']}, postprocess "
        f"threshold {bundle.postprocess['threshold']}, seed threshold {bundle.postprocess['seed_threshold']}"
    )
    pipeline_rows, t1_rows = [], []
    for split in args.splits:
        t0 = time.time()
        df = evaluate_tio2(bundle, split, progress=False)
        if args.csv:
            df.to_csv(f"{args.csv}-{split}.csv", index=False)
        pipeline_rows.append(
            (
                split,
                len(df),
                df.foreground_iou.mean(),
                df.instance_iou.mean(),
                df.instance_iou_pred.mean(),
                df.f1_iou50.mean(),
                df.n_pred.sum(),
                df.n_truth.sum(),
            )
        )
        res = table1(bundle, split)
        t1_rows.append((split, len(df), res, time.time() - t0))

    print("\nPipeline (bundle defaults), means over images:\n")
    print(
        "| split | images | foreground IoU | instance IoU (truth-avg) | instance IoU (pred-avg) | F1@0.5 "
        "| particles found / true |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for split, n, fg, it, ip, f1, npred, ntrue in pipeline_rows:
        print(f"| {split} | {n} | {fg:.4f} | {it:.4f} | {ip:.4f} | {f1:.4f} | {npred} / {ntrue} |")
    print(
        "\nTable-1 columns (evaluate_pair, all images of the split together, best over thresholds 0.0-1.0, "
        "watershed):\n"
    )
    print("| split | images | " + " | ".join(name for _, name in TABLE1) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in TABLE1) + " |")
    for split, n, res, _secs in t1_rows:
        print(f"| {split} | {n} | " + " | ".join(f"{res[k]:.4f}" for k, _ in TABLE1) + " |")
    print(
        "\nbest thresholds: "
        + "; ".join(
            f"{split}: IoU (image) at {res['iou_image_thr']:g}, IoU (instance) at {res['iou_instance_thr']:g}"
            for split, _, res, _ in t1_rows
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
