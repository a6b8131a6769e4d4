"""``particleseg evaluate``: score segmentations against ground truth (ISBI 2012 and instance metrics)."""

from __future__ import annotations

import argparse
import sys

from .. import params
from ..errors import InputError
from . import parse_crop_rows

# The subcommand's machinery (particleseg.metrics) is imported in the functions that run it, not at
# the top: registering the options loads no NumPy, so --help stays fast (docs/architecture.md, Lazy
# imports).


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``START:STOP:STEP`` (STOP included) or a list ``0.3,0.5`` -> thresholds in [0, 1].

    Parsed by :func:`particleseg.params.parse_thresholds`, as the Fiji command reads them.
    """
    try:
        return params.parse_thresholds(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("thresholds: ")) from None


def register(sub) -> None:
    """Add the ``evaluate`` subcommand and its options to the subparsers ``sub``."""
    p = sub.add_parser(
        "evaluate",
        help="score segmentations against ground truth (ISBI 2012 and instance metrics)",
        description=(
            "Score proposals (probability maps, binary masks or label images) against ground-truth masks "
            "or label images with the metrics of the ISBI 2012 challenge as Fiji's Trainable Weka "
            "Segmentation computes them (pixel, warping, Rand and information-theoretic errors), foreground "
            "and instance IoU, Youden's index, average precision and F1, and the agreement of the particle "
            "size distributions. Files pair by name: X_prob.tif, X_labels.tif, X_mask.tif or X.tif with "
            "X_m.tif, X_mask.tif, X_gt.tif or X.tif. Writes metrics.csv (a row per image and a mean row), "
            "metrics.md (the columns of Table 1 of Ruehle et al. 2021) and metrics_sweep.csv (every "
            "threshold). See docs/metrics.md."
        ),
    )
    p.add_argument("--pred", nargs="+", required=True, metavar="PATH", help="proposal image files or folders")
    p.add_argument("--truth", nargs="+", required=True, metavar="PATH", help="ground-truth image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--crop-rows",
        type=lambda t: parse_crop_rows(t, auto=False),
        default=None,
        metavar="N",
        help="rows at the bottom of every image to ignore (an SEM data bar; 56 for the TiO2 images)",
    )
    p.add_argument(
        "--thresholds",
        type=parse_thresholds,
        default=None,
        metavar="START:STOP:STEP",
        help="threshold sweep of probability maps (default 0:1:0.1; a list like 0.3,0.5 also works)",
    )
    p.add_argument(
        "--watershed",
        action="store_true",
        help="split touching particles of the thresholded proposal by a distance-transform watershed before scoring",
    )
    p.add_argument(
        "--pred-kind",
        choices=("auto", "prob", "mask", "labels"),
        default="auto",
        help="how to read proposals (default: from the name ending _prob/_labels/_mask, else from the values)",
    )
    p.add_argument(
        "--truth-kind",
        choices=("auto", "mask", "labels"),
        default="auto",
        help="how to read the ground truth (default: from the values)",
    )
    p.add_argument(
        "--warping-radius",
        type=int,
        default=20,
        metavar="PX",
        help="window radius for classifying warping splits (default 20, as the publication; 0: whole particle)",
    )
    p.add_argument(
        "--keep-border", action="store_true", help="keep particles touching the image border in the size distributions"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``particleseg evaluate``: score proposals against ground truth; return the exit status.

    Writes metrics.csv, metrics.md and metrics_sweep.csv (:func:`particleseg.metrics.evaluate_files`) and prints the
    mean scores; 1 when a proposal could not be scored.
    """
    from ..metrics import DEFAULT_THRESHOLDS, TABLE1_COLUMNS, evaluate_files

    table, failures = evaluate_files(
        args.pred,
        args.truth,
        args.out,
        thresholds=args.thresholds or DEFAULT_THRESHOLDS,
        watershed=args.watershed,
        crop_rows=args.crop_rows,
        pred_kind=args.pred_kind,
        truth_kind=args.truth_kind,
        warping_radius=args.warping_radius or None,
        exclude_border=not args.keep_border,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    ok = table[table["status"] == "ok"]
    mean = table[table["status"] == "mean"]
    if len(mean):
        row = mean.iloc[0]
        shown = ", ".join(f"{h} {row[k]:.4f}" for k, h in TABLE1_COLUMNS if k in row and row[k] == row[k])
        print(f"mean of {len(ok)} image(s): {shown}")
    skipped = int((table["status"] == "no proposal").sum())
    if skipped:
        print(f"{skipped} ground-truth file(s) without a proposal (listed in metrics.csv)")
    print(f"wrote metrics.csv, metrics.md and metrics_sweep.csv to {args.out}")
    if failures:
        for _, msg in failures:
            print(f"particleseg: error: {msg}", file=sys.stderr)
        print(f"particleseg: {len(failures)} proposal(s) not scored (listed in metrics.csv)", file=sys.stderr)
        return 1
    return 0
