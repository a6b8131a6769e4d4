"""``particleseg train-from-scratch``: a segmentation model from micrographs and outlines only."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from ..errors import InputError
from ..interrupts import stop_on_signals
from . import parse_crop_rows, parse_range

# The subcommand's machinery (particleseg.scratch, with NumPy and Keras) is imported in the
# functions that run it, not at the top: registering the options loads no NumPy, so --help stays
# fast (docs/architecture.md, Lazy imports).


def _count(text: str):
    lo, hi = parse_range(text)
    if lo is None or hi is None or lo < 0 or hi < lo or lo != int(lo) or hi != int(hi):
        raise argparse.ArgumentTypeError(f"expected MIN:MAX particle counts with 0 <= MIN <= MAX, got {text!r}")
    return int(lo), int(hi)


class _Stages(Sequence):
    """The stage names of :data:`particleseg.scratch.workflow.STAGES`, imported when first needed.

    Argparse first needs them to check ``--redo`` or print this command's help (the options have
    a ``metavar``, else argparse lists the choices when the option is added): registering the
    command costs no NumPy import, so ``particleseg --help`` stays fast.
    """

    def _names(self) -> tuple[str, ...]:
        from ..scratch.workflow import STAGES

        return STAGES

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())


def register(sub) -> None:
    """Add the ``train-from-scratch`` subcommand and its options to the subparsers ``sub``."""
    STAGES = _Stages()
    p = sub.add_parser(
        "train-from-scratch",
        help="train a model without manual masks (shape GAN, simulated masks, CycleGAN)",
        description=(
            "Train a segmentation model from representative micrographs and a few dozen outlines of single "
            "particles, without any manual mask (the workflow of Ruehle, Krumrey & Hodoroaba, Sci. Rep. 2021): "
            "1. a shape GAN learns particle shapes from the outlines; 2. masks are simulated from generated shapes; "
            "3. a CycleGAN (or, in the cpu preset, the project's renderer with its settings fitted to the micrographs) "
            "turns them into fake micrographs; 4. an artifact filter drops particles the fakes do not "
            "show; 5. a network is trained on the fake pairs (the cpu preset fine-tunes the shipped model). "
            "Each stage is cached in the work folder (one "
            "subfolder per stage, with PNG sample grids); an interrupted run continues where it stopped."
        ),
        epilog="Without a GPU, --preset cpu runs the whole workflow in about 70 minutes on two cores (renderer "
        "instead of CycleGAN, the shipped model fine-tuned); see docs/from-scratch.md.",
    )
    p.add_argument(
        "--images", required=True, nargs="+", metavar="DIR_OR_FILE", help="real micrographs (same size and bit depth)"
    )
    p.add_argument(
        "--outlines", required=True, metavar="DIR", help="binary images, each one white particle on black (about 40)"
    )
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="model bundle to write")
    p.add_argument("--work", metavar="DIR", help="work folder with one subfolder per stage (default: BUNDLE_DIR.work)")
    p.add_argument(
        "--preset",
        choices=("default", "cpu", "tiny"),
        default="default",
        help="default: the publication's scale (GPU); cpu: renderer and fine-tuning, about 70 min on two CPU cores; "
        "tiny: a smoke test",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out")
    # an explicit metavar: argparse lists the choices only in this command's help (%(choices)s)
    p.add_argument(
        "--redo", choices=STAGES, metavar="STAGE", help="run this stage and all later ones again (%(choices)s)"
    )
    p.add_argument(
        "--stop-after",
        choices=STAGES,
        metavar="STAGE",
        help="stop after this stage (%(choices)s; inspect its samples.png first)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("general")
    g.add_argument("--pairs", type=int, help="fake training pairs (default 1000; cpu preset 200)")
    g.add_argument(
        "--polarity",
        choices=("bright", "dark"),
        help="particles brighter (SEM, default) or darker (brightfield TEM) than the background",
    )
    g.add_argument(
        "--crop-rows",
        type=parse_crop_rows,
        metavar="N|auto",
        help="rows of the data bar at the bottom to ignore (default auto)",
    )
    g.add_argument("--name", help="bundle name (default from-scratch)")
    g.add_argument("--seed", type=int, help="seed of every stage (default 0)")

    g = p.add_argument_group("stage 1: shape GAN")
    g.add_argument("--shape-size", type=int, help="side of the outline canvas in pixels (default 64)")
    g.add_argument("--shape-steps", type=int, help="generator updates")
    g.add_argument("--shape-batch", type=int, help="batch size")
    g.add_argument("--shape-filters", type=int, help="network width")

    g = p.add_argument_group("stage 2: mask simulation")
    g.add_argument("--tile", type=int, help="side of the simulated masks in pixels (default 384)")
    g.add_argument(
        "--particles",
        type=_count,
        metavar="MIN:MAX",
        help="particles per tile (default 100:150 for a 384x384 tile, scaled for other tiles)",
    )
    g.add_argument(
        "--size-distribution",
        metavar="SPEC",
        help="size scales: normal:1.0,0.1 (default, cut at 3 SD), lognormal:MEDIAN,SIGMA, uniform:LO,HI, "
        "file:PATH, values:A,B,...",
    )
    g.add_argument(
        "--perlin-threshold",
        type=float,
        help="place particles where the Perlin noise exceeds this (default 0.5; 0: uniform)",
    )
    g.add_argument("--perlin-cells", type=float, help="Perlin lattice cells across the canvas (default 4)")
    g.add_argument(
        "--max-overlap", type=float, help="largest covered fraction of a particle (default 0.5 for SEM; 0.05 for TEM)"
    )
    g.add_argument("--attach", type=float, help="probability of placing a particle against another (default 0)")
    g.add_argument("--rotate", action="store_true", default=None, help="rotate shapes by random angles")

    g = p.add_argument_group("stage 3: image translation")
    g.add_argument(
        "--translator",
        choices=("renderer", "cyclegan"),
        help="renderer: the project's micrograph renderer, its settings fitted to the micrographs (cpu preset; "
        "minutes); cyclegan: the publication's CycleGAN (default preset)",
    )
    g.add_argument(
        "--renderer-candidates", type=int, help="renderer settings tried in the fit's first round (default 48)"
    )
    g.add_argument("--cyclegan-steps", type=int, help="training steps")
    g.add_argument("--cyclegan-crop", type=int, help="training crop side (multiple of 4)")
    g.add_argument("--cyclegan-batch", type=int, help="batch size")
    g.add_argument("--cyclegan-filters", type=int, help="generator width (publication 64)")
    g.add_argument("--cyclegan-res-blocks", type=int, help="generator residual blocks (publication 9)")
    g.add_argument("--cycle-weight", type=float, help="cycle-consistency loss weight (default 10)")
    g.add_argument("--identity-weight", type=float, help="identity loss weight (default 5; 0 skips it)")

    g = p.add_argument_group("stage 4: artifact filter")
    g.add_argument(
        "--filter-method", choices=("li", "otsu", "mean", "median", "none"), help="threshold of the filter (default li)"
    )
    g.add_argument(
        "--min-kept-fraction",
        type=float,
        metavar="F",
        help="stop when the filter keeps fewer of the simulated particles (default 0.25)",
    )

    g = p.add_argument_group("stage 5: segmentation training")
    g.add_argument(
        "--architecture",
        choices=("multires-unet", "unet", "fcn"),
        help="network (default multires-unet; cpu preset unet)",
    )
    g.add_argument("--depth", type=int, help="network depth")
    g.add_argument("--base-filters", type=int, help="filters of the first level")
    g.add_argument("--seg-tile", type=int, help="training tile side")
    g.add_argument("--epochs", type=int)
    g.add_argument("--steps-per-epoch", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--learning-rate", type=float)
    g.add_argument("--val-fraction", type=float, help="fake pairs held out for validation (default 0.05)")
    g.add_argument(
        "--base-model",
        metavar="BUNDLE",
        help="fine-tune this bundle with the recipe of 'particleseg train' (cpu preset: default, the shipped "
        "model; none: train --architecture from random weights)",
    )
    g.add_argument("--minutes", type=float, help="time budget of stage 5 when fine-tuning (cpu preset 75)")
    p.set_defaults(func=run)


def config_from_args(args):
    """Build a :class:`~particleseg.scratch.ScratchConfig` from the preset and the options given."""
    from ..scratch import ScratchConfig

    cfg = ScratchConfig.preset(args.preset)

    def upd(obj, **kw):
        kw = {k: v for k, v in kw.items() if v is not None}
        return dataclasses.replace(obj, **kw) if kw else obj

    seed = args.seed
    shapes = upd(
        cfg.shapes,
        size=args.shape_size,
        steps=args.shape_steps,
        batch_size=args.shape_batch,
        filters=args.shape_filters,
        seed=seed,
    )
    masks = upd(
        cfg.masks,
        tile=args.tile,
        count=args.particles,
        size=args.size_distribution,
        perlin_threshold=args.perlin_threshold,
        perlin_cells=args.perlin_cells,
        max_overlap=args.max_overlap,
        attach=args.attach,
        rotate=args.rotate,
        seed=seed,
    )
    cyc = upd(
        cfg.cyclegan,
        steps=args.cyclegan_steps,
        crop=args.cyclegan_crop,
        batch_size=args.cyclegan_batch,
        filters=args.cyclegan_filters,
        res_blocks=args.cyclegan_res_blocks,
        cycle_weight=args.cycle_weight,
        identity_weight=args.identity_weight,
        seed=seed,
    )
    seg = cfg.segmentation
    net = upd(seg.network, architecture=args.architecture, depth=args.depth, base_filters=args.base_filters)
    seg = upd(
        seg,
        network=net,
        tile=args.seg_tile,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=seed,
    )
    renderer = upd(cfg.renderer, candidates=args.renderer_candidates, seed=seed)
    # as in 'particleseg train': network options ask for a new network, and a named base model
    # cannot be combined with them
    net_opts = {
        k: v
        for k, v in (
            ("--architecture", args.architecture),
            ("--depth", args.depth),
            ("--base-filters", args.base_filters),
        )
        if v is not None
    }
    base = args.base_model
    if base is not None and base.strip().lower() not in ("", "none") and net_opts:
        raise InputError(
            f"{', '.join(f'{k} {v}' for k, v in net_opts.items())}: network options apply to a new network, "
            f"but --base-model {base} fine-tunes an existing one; leave them out, or use --base-model none"
        )
    if (base is not None and base.strip().lower() in ("", "none")) or (base is None and net_opts):
        if args.minutes is not None:
            why = f"--base-model {base}" if base is not None else ", ".join(f"{k} {v}" for k, v in net_opts.items())
            raise InputError(
                f"--minutes {args.minutes:g}: the time budget is that of fine-tuning a base model, but "
                f"{why} asks for a new network; give its length with --epochs and --steps-per-epoch"
            )
        cfg = dataclasses.replace(cfg, base_model=None, segmentation_minutes=None)
        base = None
    return upd(
        cfg,
        shapes=shapes,
        masks=masks,
        cyclegan=cyc,
        renderer=renderer,
        segmentation=seg,
        pairs=args.pairs,
        translator=args.translator,
        base_model=base,
        segmentation_minutes=args.minutes,
        polarity=args.polarity,
        crop_rows=args.crop_rows,
        filter_method=args.filter_method,
        min_kept_fraction=args.min_kept_fraction,
        val_fraction=args.val_fraction,
        name=args.name,
    )


def stage_minutes(seconds: dict, translator: str) -> dict:
    """Minutes per stage as the command reports them, stage 3 named by the translator that ran.

    Its key and work folder stay ``cyclegan``/``3_cyclegan`` whichever did.
    """
    return {(translator if k == "cyclegan" else k): round(v / 60, 1) for k, v in seconds.items()}


def run(args) -> int:
    """Run ``particleseg train-from-scratch``: train a model from micrographs and outlines only; return 0.

    Runs :func:`particleseg.scratch.train_from_scratch` (``kill`` stops it as Ctrl-C does) and prints the minutes
    per stage and the held-out scores.
    """
    from ..scratch import train_from_scratch

    config = config_from_args(args)
    with stop_on_signals():  # `kill` as Ctrl-C: the running stage records its time and stays resumable
        result = train_from_scratch(
            args.images,
            args.outlines,
            args.out,
            work=args.work,
            config=config,
            overwrite=args.overwrite,
            redo=args.redo,
            progress=not args.quiet,
            stop_after=args.stop_after,
        )
    if result is None:
        return 0
    minutes = stage_minutes(result.seconds, config.translator)
    seg = result.summaries.get("segmentation", {})
    print(
        f"wrote {args.out}: trained on {config.pairs} fake pairs; minutes per stage {minutes}; "
        f"instance IoU on held-out fake pairs {seg.get('fake_validation_instance_iou')}"
    )
    return 0
