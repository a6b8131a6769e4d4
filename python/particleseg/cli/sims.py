"""``particleseg sims``: uranium-bearing particles in SIMS fields of view (run, simulate)."""

from __future__ import annotations

import argparse
import sys

from ..interrupts import stop_on_signals
from ..params import add_scheduler_argument

# The subcommand's machinery (particleseg.sims, the model bundles) is imported in the functions that
# run it, not at the top: registering the options loads no NumPy, so --help stays fast
# (docs/architecture.md, Lazy imports).

DEFAULT_SIMS_MODEL = "sims-fcn"


def _ring(text: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INNER:OUTER in pixels, got {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"need 0 <= INNER < OUTER, got {text!r}")
    return a, b


def register(sub) -> None:
    """Add the ``sims`` subcommand (``run``, ``simulate``) and its options to the subparsers ``sub``."""
    p = sub.add_parser(
        "sims",
        help="SIMS particle screening: detect uranium particles, isotope ratios",
        description="Detect uranium-bearing particles in SIMS fields of view and measure their isotope ratios, "
        "or simulate fields with known compositions.",
    )
    s = p.add_subparsers(dest="sims_command", metavar="ACTION")
    s.required = True

    r = s.add_parser(
        "run",
        help="detect and measure particles in many fields",
        description=(
            "Detect particles on the sum of the uranium channels of every field of view with an FCN and a "
            "watershed, and measure per particle the counts of each isotope (background-corrected) and the "
            "ratios 234U/238U, 235U/238U, 236U/238U, 238U1H/238U with Poisson uncertainties. Fields are "
            "multi-channel TIFF stacks (channel names from ImageJ labels, OME-XML or --channels) or one TIFF "
            "per isotope named by --pattern. Writes particles.csv, fields.csv and ratios.png to --out. "
            "A rerun of the same command after an interruption goes on: fields finished earlier are taken "
            "from their records in OUT/.particleseg, the others computed."
        ),
    )
    r.add_argument("inputs", nargs="+", metavar="DIR_OR_FILE", help="folders of fields, or field files")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument(
        "--model",
        default=DEFAULT_SIMS_MODEL,
        metavar="BUNDLE",
        help=f"SIMS detection bundle (folder, zip or installed name; default {DEFAULT_SIMS_MODEL})",
    )
    r.add_argument(
        "--pattern",
        metavar="PATTERN",
        help="names of per-isotope files, e.g. '{field}_{isotope}.tif' (the default) or '*_{field}-{isotope}.tif'",
    )
    r.add_argument(
        "--channels",
        metavar="NAMES",
        help="channel names of the stacks in order, e.g. 234U,235U,236U,238U,238U1H (overrides names in the files)",
    )
    r.add_argument(
        "--threshold", type=float, help="particle probability (softmax) threshold (default: from the bundle)"
    )
    r.add_argument(
        "--level",
        type=float,
        metavar="H",
        help="watershed level: h-maxima depth in pixels on the distance transform; lower splits more "
        "(default: from the bundle)",
    )
    r.add_argument(
        "--no-split", dest="split", action="store_false", default=None, help="do not split touching particles"
    )
    r.add_argument(
        "--min-area", type=int, metavar="PX", help="remove particles smaller than this (default: from the bundle)"
    )
    r.add_argument(
        "--min-significance",
        type=float,
        metavar="SIGMA",
        help="drop detections whose uranium net counts are less than SIGMA standard deviations above "
        "the background (default: from the bundle, 5; 0 keeps all)",
    )
    r.add_argument(
        "--background",
        choices=("annulus", "global", "none"),
        default="annulus",
        help="background subtraction: local ring around each particle (default), whole field, or none",
    )
    r.add_argument(
        "--ring",
        type=_ring,
        default=(3, 8),
        metavar="IN:OUT",
        help="background ring in pixels from the particle (default 3:8)",
    )
    r.add_argument(
        "--grow",
        type=int,
        default=1,
        metavar="PX",
        help="sum counts over the particle grown by this many pixels (default 1)",
    )
    r.add_argument("--batch-size", type=int, default=64, metavar="N", help="fields per network call (default 64)")
    r.add_argument("--save-labels", action="store_true", help="also write labels/FIELD_labels.tif")
    r.add_argument("--overwrite", action="store_true", help="redo every field and replace existing outputs")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    add_scheduler_argument(r)
    r.set_defaults(func=run)

    m = s.add_parser(
        "simulate",
        help="simulate SIMS fields with known compositions",
        description=(
            "Simulate SIMS fields of view of particles from a mixture of uranium reference materials, with "
            "Poisson counts, variable background, particles of varied size and shape, and empty fields. "
            "Writes fields/, masks/, truth.csv (per particle: material, true ratios, expected counts) and "
            "fields_truth.csv."
        ),
    )
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--fields", type=int, default=100, metavar="N", help="number of fields (default 100)")
    m.add_argument("--size", type=int, default=128, metavar="PX", help="field size in pixels (default 128)")
    m.add_argument(
        "--mixture",
        default=None,
        metavar="MAT:W,...",
        help="materials and weights, e.g. NU:0.4,U010:0.2,U100:0.2,U500:0.2 (the default); "
        "known: DU, NU, U010, U030, U100, U500",
    )
    m.add_argument(
        "--isotopes",
        default=None,
        metavar="NAMES",
        help="isotopes to record (default all: 234U,235U,236U,238U,238U1H; 235U and 238U are required)",
    )
    m.add_argument("--empty", type=float, default=0.2, metavar="F", help="fraction of empty fields (default 0.2)")
    m.add_argument(
        "--particles", default="1:12", metavar="MIN:MAX", help="particles per non-empty field (default 1:12)"
    )
    m.add_argument(
        "--background", default="0.02:2", metavar="MIN:MAX", help="238U background counts per pixel (default 0.02:2)"
    )
    m.add_argument(
        "--layout",
        choices=("stack", "files"),
        default="stack",
        help="one multi-channel TIFF per field (default) or one TIFF per isotope (FIELD_ISOTOPE.tif)",
    )
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=simulate)


def _pair(text: str, kind=float):
    try:
        a, b = (kind(v) for v in text.split(":"))
    except ValueError:
        raise SystemExit(f"particleseg sims: error: expected MIN:MAX, got {text!r}") from None
    return a, b


def run(args) -> int:
    """Run ``particleseg sims run``: segment and measure SIMS fields; return the exit status.

    Writes particles.csv, fields.csv and ratios.png; 1 when fields failed, 130 when interrupted (Ctrl-C or
    ``kill``).
    """
    from ..models import load_bundle
    from ..sims import SimsParams, parse_channels, run_fields

    bundle = load_bundle(args.model)
    params = SimsParams(
        threshold=args.threshold,
        level=args.level,
        split=args.split,
        min_area=args.min_area,
        background=args.background,
        grow=args.grow,
        ring=args.ring,
        batch_size=args.batch_size,
        channels=parse_channels(args.channels),
        min_significance=args.min_significance,
    )
    try:
        with stop_on_signals():
            particles, fields = run_fields(
                args.inputs,
                bundle,
                args.out,
                params,
                pattern=args.pattern,
                overwrite=args.overwrite,
                progress=not args.quiet,
                save_labels=args.save_labels,
                scheduler=args.scheduler,
            )
    except KeyboardInterrupt:
        print(
            f"particleseg: interrupted; the fields finished so far are in {args.out} (fields.csv); run the same "
            "command again to go on",
            file=sys.stderr,
        )
        return 130
    ok = fields[fields["status"] == "ok"]
    bad = fields[fields["status"] != "ok"]
    secs = fields.attrs.get("seconds", float("nan"))
    n_new = fields.attrs.get("measured", len(ok))
    earlier = f", {fields.attrs['done_earlier']} done earlier" if fields.attrs.get("done_earlier") else ""
    speed = f", {n_new / secs:.1f} fields/s" if n_new and secs > 0 else ""
    print(
        f"{len(particles)} particles in {len(ok)} fields ({int((ok['particles'] > 0).sum())} with particles{earlier})"
        f"{speed}; wrote particles.csv, fields.csv, ratios.png to {args.out}"
    )
    if len(bad):
        for _, row in bad.head(5).iterrows():
            print(f"particleseg: {row['error']}", file=sys.stderr)
        print(f"particleseg: {len(bad)} of {len(fields)} field(s) failed (listed in fields.csv)", file=sys.stderr)
        return 1
    return 0


def simulate(args) -> int:
    """Run ``particleseg sims simulate``: write simulated SIMS fields; return 0."""
    from ..sims import ISOTOPES, REQUIRED_ISOTOPES, SimsSettings, canonical_isotope, parse_mixture, simulate_fields

    try:
        mixture = parse_mixture(args.mixture)
    except ValueError as exc:
        raise SystemExit(f"particleseg sims simulate: error: {exc}") from None
    isotopes = ISOTOPES
    if args.isotopes:
        isotopes = tuple(canonical_isotope(t) or t for t in args.isotopes.split(","))
        unknown = [t for t in isotopes if t not in ISOTOPES]
        if unknown or not set(REQUIRED_ISOTOPES) <= set(isotopes):
            raise SystemExit(
                "particleseg sims simulate: error: --isotopes must name uranium species and include 235U and 238U, "
                f"got {args.isotopes!r}"
            )
        isotopes = tuple(i for i in ISOTOPES if i in isotopes)
    lo, hi = _pair(args.particles, int)
    settings = SimsSettings(
        shape=(args.size, args.size),
        isotopes=isotopes,
        mixture=mixture,
        empty_fraction=args.empty,
        particles=(lo, hi),
        background_238=_pair(args.background),
    )
    truth, fields = simulate_fields(
        args.fields,
        args.out,
        settings,
        seed=args.seed,
        layout=args.layout,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"wrote {len(fields)} fields ({int((fields['particles'] == 0).sum())} empty) "
        f"with {len(truth)} particles to {args.out}"
    )
    return 0
