"""``particleseg fibsem``: phase segmentation of FIB-SEM stacks (train, segment, simulate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..params import add_scheduler_argument

# The subcommand's machinery (particleseg.fibsem, the model bundles, pandas) is imported in the
# functions that run it, not at the top: registering the options loads no NumPy, so --help stays
# fast (docs/architecture.md, Lazy imports).


def _slices(text: str) -> list[int]:
    """``"3,7,10:13"`` -> [3, 7, 10, 11, 12] (``A:B`` is A..B-1)."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if ":" in part:
                a, b = part.split(":")
                out.extend(range(int(a), int(b)))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected slice numbers like 3,7,10:13, got {text!r}") from None
    if any(z < 0 for z in out):
        raise argparse.ArgumentTypeError("slice numbers must not be negative")
    return out


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",")]
    if any(not n for n in names):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return names


def register(sub) -> None:
    """Add the ``fibsem`` subcommand (``train``, ``segment``, ``simulate``) and its options to ``sub``."""
    p = sub.add_parser(
        "fibsem",
        help="FIB-SEM phase segmentation: train, segment stacks, simulate",
        description="Segment the phases of serial-section FIB-SEM stacks with several detector channels and "
        "neighbouring slices as context.",
    )
    s = p.add_subparsers(dest="fibsem_command", metavar="ACTION")
    s.required = True
    inputs_help = (
        "one entry per detector channel, in the same order for training and segmentation: a multi-page "
        "TIFF, a folder (or quoted glob) of single-slice TIFFs; or one ImageJ hyperstack holding all channels"
    )

    t = s.add_parser(
        "train",
        help="train from a few annotated slices",
        description=(
            "Train a phase-segmentation network (softmax over phases) from a few annotated slices. Annotations: a "
            "label stack with as many slices as the image stack (0 = not annotated, phases 1..K), or a folder of "
            "slice_NNNN.tif label files. The last annotated slice (or --eval-slices) is kept out for an independent "
            "evaluation with per-phase metrics; without --val-slices the bottom part of every training slice is "
            "held out for validation."
        ),
    )
    t.add_argument("inputs", nargs="+", metavar="CHANNEL", help=inputs_help)
    t.add_argument("--labels", required=True, metavar="TIFF_OR_DIR", help="annotations")
    t.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    t.add_argument(
        "--classes", type=_names, metavar="NAMES", help="phase names for labels 1..K (default phase1, phase2, ...)"
    )
    t.add_argument(
        "--channel-names", type=_names, metavar="NAMES", help="detector channel names (default channel 0, ...)"
    )
    t.add_argument(
        "--context",
        type=int,
        default=1,
        metavar="K",
        help="slices before and after the current one the network sees (default 1)",
    )
    t.add_argument("--train-slices", type=_slices, metavar="LIST")
    t.add_argument("--val-slices", type=_slices, metavar="LIST")
    t.add_argument("--eval-slices", type=_slices, metavar="LIST")
    t.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="rows held out per training slice without --val-slices (default 0.2)",
    )
    t.add_argument("--architecture", choices=("unet", "multires-unet", "fcn"), default="unet")
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--filters", type=int, default=8, help="base filters (default 8)")
    t.add_argument("--tile", type=int, default=128)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--steps", type=int, default=40, help="steps per epoch (default 40)")
    t.add_argument("--learning-rate", type=float, default=2e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workdir", metavar="DIR", help="training logs and checkpoints (default: BUNDLE.work)")
    t.add_argument("--overwrite", action="store_true")
    t.set_defaults(func=train)

    g = s.add_parser(
        "segment",
        help="segment a stack slice by slice (streaming, resumable)",
        description=(
            "Segment the phases of every slice, reading slices from disk one at a time (memory-mapped or page by "
            "page), with tiled inference within a slice. Each slice is written to OUT/slices/ as soon as it is done, "
            "with its record in OUT/.particleseg; a rerun of the same command skips the slices finished earlier. "
            "Writes volume_fractions.csv (per slice and for the stack), "
            "volume_fractions.png, slices.csv (status of each slice) and phases.tif (the assembled label stack)."
        ),
    )
    g.add_argument("inputs", nargs="+", metavar="CHANNEL", help=inputs_help)
    g.add_argument("--model", required=True, metavar="BUNDLE", help="phase-segmentation bundle (from fibsem train)")
    g.add_argument("--out", required=True, metavar="DIR")
    g.add_argument("--slices", type=_slices, metavar="LIST", help="only these slices (default all)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="skip slices finished earlier (what every run does now; kept for old scripts)",
    )
    g.add_argument("--overwrite", action="store_true", help="redo and replace everything")
    g.add_argument(
        "--on-error",
        choices=("continue", "stop"),
        default="continue",
        help="a slice that cannot be read: report it and go on (default), or stop (finished slices are kept)",
    )
    g.add_argument("--no-assemble", dest="assemble", action="store_false", help="do not write the assembled phases.tif")
    g.add_argument("--tile", type=int, help="largest tile in pixels (default: from the bundle)")
    g.add_argument("--overlap", type=int, help="tile overlap in pixels (default: from the bundle)")
    g.add_argument("--batch-size", type=int, default=4, help="tiles per network call (default 4)")
    g.add_argument("--quiet", action="store_true")
    add_scheduler_argument(g)
    g.set_defaults(func=segment)

    m = s.add_parser(
        "simulate",
        help="simulate a two-channel FIB-SEM stack with known phases",
        description=(
            "Simulate a FIB-SEM stack: a 3D microstructure of phases, two detector channels with different "
            "contrast and noise, curtaining stripes at varying angles and a smooth detector-response gradient. "
            "Writes ch0_in-chamber.tif, ch1_in-lens.tif (or folders of slices), labels.tif (the truth) and "
            "annotations.tif (the truth on a few slices, for training)."
        ),
    )
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--slices", type=int, default=32)
    m.add_argument("--size", type=int, default=192, metavar="PX")
    m.add_argument(
        "--annotate",
        type=int,
        default=4,
        metavar="N",
        help="slices to annotate in annotations.tif, spread evenly (default 4)",
    )
    m.add_argument("--layout", choices=("stack", "slices"), default="stack")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=simulate)


def train(args) -> int:
    """Run ``particleseg fibsem train``: train a phase bundle on annotated slices; return 0.

    Prints the slices used and, when an independent slice was annotated, its evaluation (also written to
    ``evaluation.csv`` in the work folder).
    """
    from ..errors import OutputExistsError
    from ..fibsem import (
        PhaseTrainConfig,
        make_phase_metadata,
        metrics_table,
        open_stack,
        read_annotations,
        train_phases,
    )
    from ..io import write_csv
    from ..models import Head, NetworkConfig, save_bundle

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out}: bundle exists; use --overwrite to replace it")
    with open_stack(args.inputs, args.channel_names) as stack:
        ann = read_annotations(args.labels, stack.n_slices, stack.shape)
        k = max(int(a.max()) for a in ann.values())
        classes = args.classes or [f"phase{i}" for i in range(1, k + 1)]
        cfg = PhaseTrainConfig(
            context=args.context,
            architecture=args.architecture,
            depth=args.depth,
            base_filters=args.filters,
            tile=args.tile,
            batch_size=args.batch_size,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            learning_rate=args.learning_rate,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )
        workdir = Path(args.workdir) if args.workdir else out.with_name(out.name + ".work")
        model, log, evaluation, split, _ = train_phases(
            stack, ann, classes, cfg, workdir, args.train_slices, args.val_slices, args.eval_slices
        )
        net = NetworkConfig(
            cfg.architecture,
            stack.n_channels * (2 * cfg.context + 1),
            (Head("classes", len(classes), "softmax"),),
            depth=cfg.depth,
            base_filters=cfg.base_filters,
            normalization=cfg.normalization,
        )
        meta = make_phase_metadata(out.name, net, cfg, stack.channel_names, classes, evaluation, split)
    save_bundle(out, model, meta, overwrite=args.overwrite, zip_copy=False)
    print(f"trained on slices {split['train']} (validation: {split['validation']}); wrote {out}")
    if "all" in evaluation:
        table = metrics_table(evaluation["all"])
        write_csv(workdir / "evaluation.csv", table, overwrite=True)
        print(f"evaluation on independent slice(s) {split['evaluation']}:")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    else:
        print("no independent evaluation slice (annotate one more slice, or name it with --eval-slices)")
    return 0


def segment(args) -> int:
    """Run ``particleseg fibsem segment``: segment a stack's phases; return the exit status.

    Prints the stack's volume fractions; 1 when slices could not be read, 130 when interrupted (Ctrl-C or
    ``kill``).
    """
    from ..fibsem import open_stack, segment_stack
    from ..models import load_bundle

    bundle = load_bundle(args.model)
    names = bundle.metadata.get("fibsem", {}).get("channels")
    from ..interrupts import stop_on_signals

    try:
        with (
            stop_on_signals(),
            open_stack(args.inputs, names if names and len(names) == len(args.inputs) else None) as stack,
        ):
            fractions = segment_stack(
                stack,
                bundle,
                args.out,
                tile=args.tile,
                overlap=args.overlap,
                batch_size=args.batch_size,
                slices=args.slices,
                overwrite=args.overwrite,
                on_error=args.on_error,
                assemble=args.assemble,
                progress=not args.quiet,
                scheduler=args.scheduler,
            )
    except KeyboardInterrupt:
        print(
            f"particleseg: interrupted; the slices finished so far are in {Path(args.out) / 'slices'} "
            "(slices.csv); run the same command again to go on",
            file=sys.stderr,
        )
        return 130
    import pandas as pd

    status = pd.read_csv(Path(args.out) / "slices.csv")
    errors = status[status["status"] == "error"]
    total = fractions[fractions["slice"] == "stack"].iloc[0]
    phases = [c for c in fractions.columns if c not in ("slice", "pixels")]
    print("volume fractions of the stack: " + ", ".join(f"{c} {total[c]:.3f}" for c in phases))
    print(
        f"{int((status['status'] != 'error').sum())} slice(s) segmented "
        f"({int((status['status'] == 'resumed').sum())} from an earlier run); outputs in {args.out}"
    )
    if len(errors):
        print(
            f"particleseg: {len(errors)} slice(s) could not be read (listed in slices.csv): "
            f"{', '.join(map(str, errors['slice']))}",
            file=sys.stderr,
        )
        return 1
    return 0


def simulate(args) -> int:
    """Run ``particleseg fibsem simulate``: write a simulated stack with its labels and annotations; return 0."""
    from ..fibsem import FibsemSettings, annotation_slices, simulate_stack, write_simulation

    if args.slices < 1 or args.size < 16:
        raise SystemExit("particleseg fibsem simulate: error: need at least 1 slice of at least 16 pixels")
    s = FibsemSettings(shape=(args.slices, args.size, args.size))
    sim = simulate_stack(args.seed, s)
    ann = annotation_slices(args.slices, args.annotate)
    paths = write_simulation(sim, args.out, ann, layout=args.layout, overwrite=args.overwrite)
    fr = {name: float((sim.labels == i + 1).mean()) for i, name in enumerate(sim.phases)}
    print(
        f"wrote a {args.slices}x{args.size}x{args.size} stack "
        f"({', '.join(p.name for k, p in paths.items() if k.startswith('ch'))}), "
        f"labels.tif and annotations.tif (slices {ann}) to {args.out}"
    )
    print("true volume fractions: " + ", ".join(f"{k} {v:.3f}" for k, v in fr.items()))
    return 0
