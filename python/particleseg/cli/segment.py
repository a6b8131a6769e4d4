"""``particleseg segment``: segment and measure particles in images."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError
from ..interrupts import stop_on_signals
from ..params import PARAMETERS, SHAPE_NAMES, add_arguments, add_scheduler_argument, segment_params, values_from_args

# The subcommand's machinery (the batch: workers, distributed, models, pipeline) is imported in the
# functions that run it, not at the top: registering the options loads no NumPy, so --help stays
# fast (docs/architecture.md, Lazy imports).


def register(sub) -> None:
    """Add the ``segment`` subcommand and its options to the subparsers ``sub``."""
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
    p.add_argument(
        "--model",
        default=None,
        metavar="BUNDLE",
        help="model bundle folder, zip or installed name (default: the shipped default model)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    scale = p.add_argument_group("scale")
    scale.add_argument("--pixel-size", type=float, metavar="SIZE", help="pixel size (overrides the file's calibration)")
    scale.add_argument("--unit", default=None, help="unit of --pixel-size or --image-width (default nm)")
    scale.add_argument(
        "--image-width",
        type=float,
        metavar="WIDTH",
        help="width of the whole field of view (as in the SEM data bar), in --unit",
    )

    # the parameters are declared once, in particleseg.params (also the Fiji commands' dialogs and macro keys)
    particles = p.add_argument_group(
        "particles (defaults come from the model bundle; the names are the Fiji macro keys)"
    )
    filters = p.add_argument_group("filters")
    inference = p.add_argument_group("inference")
    groups = {name: scale for name in ("crop_rows", "particle_size", "rescale", "strict")}
    groups.update({name: filters for name in ("intensity_filter", "polarity", "min_score", *SHAPE_NAMES)})
    groups.update({name: inference for name in ("tile", "overlap", "batch_size", "engine", "jobs")})
    add_arguments(p, groups={name: groups.get(name, particles) for name in (q.name for q in PARAMETERS)})
    add_scheduler_argument(inference)
    filters.add_argument("--no-classifier", action="store_true", help="do not apply the bundle's particle classifier")
    p.set_defaults(func=run)


def params_from_args(args):
    """:class:`~particleseg.pipeline.SegmentParams` of the parsed options (None: the bundle's default)."""
    values = values_from_args(args)
    if args.no_classifier:
        values["min_score"] = None
    if values.get("jobs") is None:
        values["jobs"] = 0  # the command line uses every core (one worker process per core) unless told
    return segment_params(values, progress=False if args.quiet else None)


def run(args) -> int:
    """Run ``particleseg segment``: segment a batch of images; return the exit status.

    The batch runs on worker processes (``--jobs``) or a Dask cluster (``--scheduler``); ``kill`` (SIGTERM)
    stops it as Ctrl-C does while it runs.
    """
    if args.scheduler is not None and args.jobs is not None:
        raise InputError("--jobs sets the worker processes of a local batch, --scheduler a Dask cluster's; give one")
    if (
        args.scheduler is None
        and args.jobs != 1
        and (len(args.inputs) > 1 or any(Path(x).is_dir() for x in args.inputs))
    ):
        from ..workers import context

        context(start=True)  # a batch: the workers' forkserver imports the pipeline while this process does

    from ..distributed import segment_files
    from ..models import load_bundle
    from ..pipeline import AUGMENT_NOTE, batch_report, source_words

    bundle = load_bundle(args.model)
    params = params_from_args(args)
    if args.no_classifier:
        params.min_score = None
        bundle.metadata["classifier"] = None
    try:
        with stop_on_signals():  # `kill` (SIGTERM) stops as Ctrl-C does, during the batch only
            summary, failures = segment_files(
                args.inputs,
                args.out,
                bundle,
                params,
                overwrite=args.overwrite,
                progress=not args.quiet,
                pixel_size=args.pixel_size,
                unit=args.unit,
                image_width=args.image_width,
                scheduler=args.scheduler,
            )
    except KeyboardInterrupt:
        print(
            f"particleseg: interrupted; the images finished so far are in {args.out} with its summary.csv; "
            "run the same command again to go on",
            file=sys.stderr,
        )
        return 130
    ok = summary[summary["status"] == "ok"]
    augment = params.resolved(bundle).augment
    done_earlier = set(summary.attrs.get("done_files", ()))
    for _, row in ok.iterrows():
        med = row.get("MinFeret_median")
        unit = row.get("unit", "px")
        nano = row.get("nano_by_median_MinFeret")
        verdict = (
            ""
            if nano is None or nano != nano
            else (" -> median below 100 nm" if nano else " -> median not below 100 nm")
        )
        earlier = " (done earlier)" if row["file"] in done_earlier else ""
        print(f"{row['file']}{earlier}: {int(row['count'])} particles, median min Feret {med:.4g} {unit}{verdict}")
        if "polarity" in row and isinstance(row["polarity"], str):
            size = row.get("particle_size_px")
            size = (
                f"{size:.0f} px ({row['size_source']})" if isinstance(size, float) and size == size else "not estimated"
            )
            print(
                f"  {row['polarity']} particles ({source_words(row['polarity_source'])}), typical size {size}, "
                f"network input resampled x{row['scale_factor']:.3g}"
            )
        if augment:
            print(f"  {AUGMENT_NOTE}")
    print(f"{batch_report(summary)}; results in {args.out}, whose summary.csv lists every image segmented into it")
    if failures:
        if len(summary) > 1:  # one image: its error line says it all
            print(f"particleseg: {len(failures)} of {len(summary)} image(s) failed (errors above)", file=sys.stderr)
        return 1
    return 0
