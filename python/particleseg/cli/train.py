"""``particleseg train``: train a segmentation network and write a model bundle.

It trains the network (and the particle classifier) on annotated images.
"""

from __future__ import annotations

import argparse

from ..models import ARCHITECTURES

# The subcommand's machinery (particleseg.train, with Keras) is imported in the functions that run
# it, not at the top: registering the options loads no NumPy, so --help stays fast
# (docs/architecture.md, Lazy imports).


def _whole_number(minimum: int):
    """Make an argparse type: a whole number of at least ``minimum``, one line naming the option otherwise."""
    what = "a positive whole number" if minimum == 1 else f"a whole number of at least {minimum}"

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return n

    return parse


_positive_int = _whole_number(1)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def register(sub) -> None:
    """Add the ``train`` subcommand and its options to the subparsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="train a network on your annotated images; writes a model bundle",
        description=(
            "Train a segmentation network on images and their masks and write a model bundle that "
            "'particleseg segment --model BUNDLE_DIR', the Python API and the Fiji commands use. Masks "
            "are matched to images by file name (a.tif -> a.tif, a_mask.tif, a_m.tif, ...) and may be "
            "binary with one-pixel lines between touching particles, label images (one integer per "
            "particle) or class-label images (--classes). Every file is checked before training starts. "
            "Checkpoints go to BUNDLE_DIR.work after every epoch; running the same command again after an "
            "interruption continues after the last finished epoch. By default the shipped default model is "
            "fine-tuned (cosine learning rate, encoder frozen for the first tenth of the epochs, the best "
            "epoch chosen by the instance score of the validation images); network options or "
            "--base-model none train a new network."
        ),
        epilog="Example: particleseg train --images data/images --masks data/masks --out runs/my-model --minutes 60",
    )
    p.add_argument(
        "--images", required=True, metavar="DIR", help="training images (TIFF, PNG, JPEG; multi-page TIFF = channels)"
    )
    p.add_argument("--masks", required=True, metavar="DIR", help="one mask or label image per image, same names")
    p.add_argument("--out", required=True, metavar="BUNDLE_DIR", help="model bundle folder to write")
    p.add_argument("--name", help="bundle name (default: the folder name)")
    p.add_argument("--description", default="", help="a short description of the training data")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    p.add_argument("--zip", action="store_true", help="also write BUNDLE_DIR.zip")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    g = p.add_argument_group("data")
    g.add_argument(
        "--mask-type",
        choices=("auto", "binary", "labels", "classes"),
        default="auto",
        help="how masks are read (auto: binary with two values, label image otherwise)",
    )
    g.add_argument(
        "--classes",
        nargs="+",
        metavar="NAME",
        help="class names of multi-class masks, background first (e.g. pore matrix particle)",
    )
    g.add_argument("--channels", nargs="+", metavar="NAME", help="what each input channel is (e.g. SE BSE)")
    g.add_argument("--crop-rows", type=int, default=0, metavar="N", help="rows at the bottom to ignore (data bar)")
    g.add_argument(
        "--validation-images", metavar="DIR", help="separate validation images (default: hold out --validation-split)"
    )
    g.add_argument("--validation-masks", metavar="DIR", help="masks of --validation-images")
    g.add_argument(
        "--validation-split",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of the images held out for validation (default 0.2, at least one)",
    )
    g.add_argument("--pixel-size", type=float, help="pixel size of the training images (default: from the files)")
    g.add_argument("--unit", help="unit of --pixel-size (default nm)")
    g.add_argument(
        "--polarity",
        choices=("auto", "bright", "dark"),
        default="auto",
        help="particles brighter (SEM) or darker (TEM) than the background (default auto: measured from "
        "the masks); a base model that expects the other polarity sees the images inverted",
    )
    g.add_argument(
        "--keep-masks", metavar="DIR", help="masks of the particles worth keeping: also train the particle classifier"
    )

    g = p.add_argument_group("network")
    g.add_argument(
        "--base-model",
        metavar="BUNDLE",
        default="auto",
        help="fine-tune this bundle's network ('default': the shipped default model; 'none': a new "
        "network). Default: the shipped default model, unless a network option below is given, the "
        "masks are multi-class or the images have several channels",
    )
    g.add_argument("--arch", choices=ARCHITECTURES, help="architecture of a new network (default multires-unet)")
    g.add_argument("--depth", type=_positive_int, help="resolution levels of a new network (default 4)")
    g.add_argument(
        "--base-filters", type=_positive_int, help="filters of the first level of a new network (default 16)"
    )
    g.add_argument("--dropout", type=float, help="spatial dropout at the bottleneck of a new network (default 0)")
    g.add_argument("--normalization", choices=("batch", "group", "none"), help="of a new network (default batch)")
    g.add_argument(
        "--extra-head",
        choices=("distance", "boundary", "none"),
        default="default",
        help="second output of a new network the watershed takes its seeds from (default distance)",
    )

    g = p.add_argument_group("training")
    g.add_argument(
        "--tile", type=_positive_int, default=256, help="training tile size (default 256; multiple of 2**depth)"
    )
    g.add_argument("--batch-size", type=_positive_int, default=8)
    g.add_argument(
        "--minutes",
        type=float,
        metavar="N",
        help="time budget of the whole run: the epochs are planned from the first one's measured cost "
        "(replaces --epochs)",
    )
    g.add_argument("--epochs", type=_positive_int, help="epochs (default 20 when fine-tuning, 50 for a new network)")
    g.add_argument(
        "--steps", type=_positive_int, help="batches per epoch (default: about two passes over the training pixels)"
    )
    g.add_argument(
        "--learning-rate", type=float, help="first learning rate (default 5e-4 fine-tuning, 1e-3 new network)"
    )
    g.add_argument(
        "--schedule",
        choices=("cosine", "step"),
        help="learning-rate schedule (default cosine fine-tuning, step = halved every epochs/3 for a new network)",
    )
    g.add_argument(
        "--freeze-epochs",
        type=int,
        metavar="N",
        help="first epochs with the encoder frozen "
        "(default: a tenth of the epochs when fine-tuning, 0 for a new network)",
    )
    g.add_argument(
        "--select",
        choices=("val_score", "val_loss"),
        help="how the best epoch is chosen: instance score of the validation images (default when "
        "fine-tuning) or validation loss",
    )
    g.add_argument(
        "--dice",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add the Dice loss to the balanced cross-entropy (default: on when fine-tuning)",
    )
    g.add_argument(
        "--separation-weight",
        type=_non_negative,
        metavar="W0",
        help="U-Net border weights: the gaps between touching particles weigh up to 1+W0 in the loss, "
        "small particles up to 3x (default 10 when fine-tuning, 0 for a new network; 0: off)",
    )
    g.add_argument(
        "--loader-processes",
        type=_whole_number(0),
        default=0,
        metavar="N",
        help="worker processes that cut the training tiles (default 0: two threads); for a GPU, which trains "
        "faster than two threads cut tiles. The run is the same",
    )
    g.add_argument(
        "--patience",
        type=int,
        help="stop after this many epochs without a better selection metric (0: never; default 15, "
        "never under --minutes)",
    )
    g.add_argument(
        "--select-from",
        type=float,
        metavar="FRACTION",
        help="choose the best epoch among those after this fraction of the planned epochs "
        "(default 0.5 under --minutes, else 0: any epoch)",
    )
    g.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="MOMENTUM",
        help="validate, choose and keep an exponential moving average of the weights, updated after every "
        "batch with this momentum (0.99: about the last 100 batches; default 0: off)",
    )
    g.add_argument(
        "--elastic", type=float, default=0.0, metavar="PX", help="elastic deformation amplitude in pixels (0: off)"
    )
    g.add_argument(
        "--zoom",
        type=_non_negative,
        default=0.0,
        metavar="F",
        help="show the particles at sizes up to 1+F times larger or smaller (tiles cut from larger or smaller "
        "squares and resampled; 0: off)",
    )
    g.add_argument(
        "--classifier-epochs", type=_positive_int, help="epochs of the particle classifier (default --epochs)"
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workdir", metavar="DIR", help="checkpoints and logs (default BUNDLE_DIR.work)")
    g.add_argument(
        "--no-resume", dest="resume", action="store_false", help="start over even if an interrupted run is found"
    )
    g.add_argument(
        "--xla",
        action="store_true",
        help="compile with XLA (off by default: slower for the default network on a CPU, see docs/training.md)",
    )

    g = p.add_argument_group("exports")
    g.add_argument(
        "--export",
        nargs="+",
        choices=("onnx", "saved_model"),
        default=[],
        help="also export the network (checked against Keras on a test image)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``particleseg train``: train a network on annotated images and write its bundle; return 0."""
    from ..train import Augmentation, train_segmentation

    bundle = train_segmentation(
        args.images,
        args.masks,
        args.out,
        arch=args.arch,
        depth=args.depth,
        base_filters=args.base_filters,
        dropout=args.dropout,
        normalization=args.normalization,
        extra_head=args.extra_head,
        mask_kind=args.mask_type,
        class_names=args.classes,
        channel_names=args.channels,
        crop_rows=args.crop_rows,
        validation_images=args.validation_images,
        validation_masks=args.validation_masks,
        validation_split=args.validation_split,
        tile=args.tile,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        learning_rate=args.learning_rate,
        dice=args.dice,
        separation_weight=args.separation_weight,
        loader_processes=args.loader_processes,
        patience=args.patience,
        select_from=args.select_from,
        ema=args.ema,
        schedule=args.schedule,
        freeze_epochs=args.freeze_epochs,
        select=args.select,
        minutes=args.minutes,
        augmentation=Augmentation(elastic=args.elastic, zoom=args.zoom),
        seed=args.seed,
        keep_masks=args.keep_masks,
        classifier_epochs=args.classifier_epochs,
        base_model=args.base_model,
        name=args.name,
        description=args.description,
        pixel_size=args.pixel_size,
        unit=args.unit,
        polarity=args.polarity,
        export=args.export,
        zip_copy=args.zip,
        workdir=args.workdir,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        jit_compile=True if args.xla else None,
    )
    m = bundle.metadata["metrics"]["validation"]
    post = bundle.postprocess
    print(
        f"wrote {bundle.path}: {bundle.network.architecture}, heads {'+'.join(bundle.heads)}, "
        f"{bundle.metadata['training']['epochs_run']} epochs in {bundle.metadata['training']['minutes']} min"
    )
    base = bundle.metadata["training"].get("base_model")
    if base:
        print(f"fine-tuned from {base}")
    print(
        f"validation: foreground IoU {m['foreground_iou']:.4f}, instance IoU {m['instance_iou']:.4f} "
        f"(per segmented particle {m.get('instance_iou_pred', float('nan')):.4f}), "
        f"pixel error {m['pixel_error']:.4f} at threshold {post['threshold']} (seed level {post['seed_threshold']}"
        + (f", seed depth {post['seed_depth']}" if post.get("seed_depth") else "")
        + (f", merge level {post['merge_level']}" if post.get("merge_level") else "")
        + ")"
    )
    if bundle.has_classifier:
        acc = bundle.metadata["classifier"]["metrics"]["validation_particle_accuracy"]
        print(f"particle classifier: validation particle accuracy {acc}")
    for fmt, e in bundle.metadata.get("exports", {}).items():
        print(
            f"exported {fmt}: {bundle.path / e['file']} "
            f"(max difference from Keras {e.get('max_abs_diff', float('nan')):.2g})"
        )
    return 0
