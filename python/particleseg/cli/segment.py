"""``particleseg segment``: segment and measure particles in images."""

from __future__ import annotations

import sys

from . import parse_crop_rows, parse_range

SHAPE_OPTIONS = ("area", "ecd", "feret_min", "feret_max", "solidity", "circularity", "aspect_ratio")


def register(sub) -> None:
    p = sub.add_parser(
        "segment",
        help="segment, split, filter and measure particles",
        description=(
            "Segment the particles of each image with a model bundle, split touching particles, "
            "filter them, measure them in calibrated units, and write per image: STEM_labels.tif, "
            "STEM_mask.tif, STEM_prob.tif, STEM_rois.zip (ImageJ ROI Manager), STEM_particles.csv, "
            "STEM_overview.png; and summary.csv for the run."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files (TIFF, PNG, JPEG) or folders of them")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--model", default=None, metavar="BUNDLE", help="model bundle folder, zip or installed name (default: the shipped default model)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("scale")
    g.add_argument("--pixel-size", type=float, metavar="SIZE", help="pixel size (overrides the file's calibration)")
    g.add_argument("--unit", default=None, help="unit of --pixel-size or --image-width (default nm)")
    g.add_argument("--image-width", type=float, metavar="WIDTH", help="width of the whole field of view (as in the SEM data bar), in --unit")
    g.add_argument("--rescale", type=float, metavar="FACTOR", help="resample the image by FACTOR before inference")
    g.add_argument("--particle-size", type=float, metavar="PX", help="typical particle diameter in pixels; the image is resampled to the model's training scale")
    g.add_argument("--crop-rows", type=parse_crop_rows, default="auto", metavar="N|auto", help="rows of the data bar at the bottom to ignore (default: auto-detect; 0 keeps all)")

    g = p.add_argument_group("particles (defaults come from the model bundle)")
    g.add_argument("--threshold", type=float, help="foreground probability threshold")
    g.add_argument("--no-split", dest="split", action="store_false", default=None, help="do not split touching particles")
    g.add_argument("--seed-threshold", type=float, help="watershed seed level on the network's distance map (higher splits more)")
    g.add_argument("--split-level", dest="h", type=float, metavar="H", help="h-maxima depth in pixels of the distance-transform watershed (lower splits more)")
    g.add_argument("--min-area", type=int, metavar="PX", help="remove particles smaller than this many pixels")
    g.add_argument("--min-confidence", type=float, metavar="P", help="remove particles whose mean foreground probability is below this (0 keeps all)")
    g.add_argument("--no-fill-holes", dest="fill_holes", action="store_false", default=None)
    g.add_argument("--keep-border", dest="exclude_border", action="store_false", default=None, help="keep particles touching the image border")

    g = p.add_argument_group("filters")
    g.add_argument("--intensity-filter", choices=("li", "otsu", "mean", "median"), help="reject particles whose mean intensity is on the background side of this global threshold")
    g.add_argument("--polarity", choices=("bright", "dark"), help="particles brighter (SEM) or darker (TEM brightfield) than the background")
    for name in SHAPE_OPTIONS:
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"shape_{name}", type=parse_range, metavar="MIN:MAX",
                       help=f"keep particles with {name.replace('_', ' ')} in this range (calibrated units)")
    g.add_argument("--classifier-threshold", type=float, help="keep particles whose classifier score reaches this (bundles with a classifier)")
    g.add_argument("--no-classifier", action="store_true", help="do not apply the bundle's classifier")

    g = p.add_argument_group("inference")
    g.add_argument("--tile", type=int, help="largest tile size in pixels")
    g.add_argument("--overlap", type=int, help="overlap of neighbouring tiles in pixels")
    g.add_argument("--batch-size", type=int, default=4, help="tiles per network call (default 4)")
    p.set_defaults(func=run)


def params_from_args(args):
    from ..pipeline import SegmentParams

    shape = {name: getattr(args, f"shape_{name}") for name in SHAPE_OPTIONS if getattr(args, f"shape_{name}", None)}
    return SegmentParams(
        threshold=args.threshold, split=args.split, seed_threshold=args.seed_threshold, h=args.h,
        min_area=args.min_area, min_confidence=args.min_confidence, fill_holes=args.fill_holes, exclude_border=args.exclude_border,
        intensity_filter=args.intensity_filter, polarity=args.polarity, shape=shape,
        classifier_threshold=None if args.no_classifier else args.classifier_threshold,
        crop_rows=args.crop_rows, rescale=args.rescale, particle_size=args.particle_size,
        tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
        progress=False if args.quiet else None,
    )


def run(args) -> int:
    from ..models import load_bundle
    from ..pipeline import segment_files

    bundle = load_bundle(args.model)
    params = params_from_args(args)
    if args.no_classifier:
        params.classifier_threshold = None
        bundle.metadata["classifier"] = None
    summary, failures = segment_files(
        args.inputs, args.out, bundle, params, overwrite=args.overwrite, progress=not args.quiet,
        pixel_size=args.pixel_size, unit=args.unit, image_width=args.image_width,
    )
    ok = summary[summary["status"] == "ok"]
    for _, row in ok.iterrows():
        med = row.get("feret_min_median")
        unit = row.get("unit", "px")
        nano = row.get("nano_by_median_feret")
        verdict = "" if nano is None or nano != nano else (" -> median below 100 nm" if nano else " -> median not below 100 nm")
        print(f"{row['file']}: {int(row['count'])} particles, median min Feret {med:.4g} {unit}{verdict}")
    print(f"wrote {len(ok)} result set(s) to {args.out}; its summary.csv lists every image segmented into it")
    if failures:
        if len(summary) > 1:  # one image: its error line says it all
            print(f"particleseg: {len(failures)} of {len(summary)} image(s) failed (errors above)", file=sys.stderr)
        return 1
    return 0
