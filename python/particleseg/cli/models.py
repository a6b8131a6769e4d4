"""``particleseg models``: list installed model bundles, or export one.

``particleseg models export`` exports a bundle's network as ONNX and TensorFlow SavedModel, or as
a bioimage.io model package.
"""

from __future__ import annotations

from ..errors import ParticlesegError

# The subcommand's machinery (the model bundles, their exports and bioimage.io) is imported in the
# functions that run it, not at the top: registering the options loads no NumPy, so --help stays
# fast (docs/architecture.md, Lazy imports).


def register(sub) -> None:
    """Add the ``models`` subcommand (``list``, ``export``) and its options to the subparsers ``sub``."""
    p = sub.add_parser(
        "models",
        help="list installed model bundles, or export one",
        description="List installed model bundles and where they are searched for (no subcommand), "
        "or export a bundle's network for other runtimes.",
    )
    p.set_defaults(func=run)
    s = p.add_subparsers(dest="models_command", metavar="{list,export}")
    q = s.add_parser("list", help="list installed model bundles (the default)")
    q.set_defaults(func=run)
    q = s.add_parser(
        "export",
        help="export a bundle's network as ONNX, TensorFlow SavedModel or a bioimage.io package",
        description="onnx, saved_model: write BUNDLE/export/model.onnx and/or BUNDLE/export/saved_model/, check each "
        "against the Keras output on a test image, and record them under 'exports' in bundle.json. "
        "bioimageio: write a bioimage.io model package (rdf.yaml, Keras, ONNX and SavedModel weights, "
        "test input and output, cover, bundle.json) that DeepImageJ runs in Fiji and particleseg loads "
        "back as the bundle; validated with bioimageio.spec and, unless --no-test, tested with "
        "bioimageio.core (pip install 'particleseg[bioimageio]'). See docs/bioimageio.md.",
    )
    q.add_argument("bundle", metavar="BUNDLE", nargs="?", help="bundle folder, zip or installed name")
    # no argparse choices: "--format bioimageio BUNDLE" must leave BUNDLE to the positional
    q.add_argument(
        "--format",
        nargs="+",
        metavar="{onnx,saved_model,bioimageio}",
        default=["onnx", "saved_model"],
        help="export formats (default onnx and saved_model)",
    )
    q.add_argument(
        "--out", metavar="PATH", help="bioimageio: the package, a .zip or a folder (default NAME.bioimageio.zip here)"
    )
    q.add_argument(
        "--weights",
        nargs="+",
        choices=("keras", "onnx", "saved_model"),
        default=["keras", "onnx", "saved_model"],
        help="bioimageio: weights formats in the package (default all; keras always)",
    )
    q.add_argument("--author", action="append", metavar="NAME", help="bioimageio: an author (repeatable)")
    q.add_argument("--license", metavar="SPDX", help="bioimageio: licence of the weights (default BSD-3-Clause)")
    q.add_argument(
        "--no-test",
        dest="test",
        action="store_false",
        help="bioimageio: skip bioimageio.core's model test of the written package",
    )
    q.add_argument("--overwrite", action="store_true", help="replace existing exports")
    q.set_defaults(func=run_export)


def run(args) -> int:
    """Run ``particleseg models`` (``list``): print the installed bundles and the folders searched; return 0."""
    from ..models import bundle_origin, list_bundles, load_bundle, model_search_path

    bundles = list_bundles()
    if not bundles:
        print("no model bundles found")
    for name, path in bundles.items():
        try:
            b = load_bundle(path)
            net = b.network
            print(
                f"{name:20s} {net.architecture:14s} heads={'+'.join(b.heads):22s} "
                f"{b.metadata.get('description', '')[:60]}"
            )
        except Exception as exc:  # noqa: BLE001 - list broken bundles too
            print(f"{name:20s} (broken: {exc})")
        print(f"{'':20s} from {bundle_origin(path)}: {path}")
    print("searched: " + ", ".join(str(p) for p in model_search_path()))
    return 0


FORMATS = ("onnx", "saved_model", "bioimageio")


def run_export(args) -> int:
    """Run ``particleseg models export``: export a bundle in the formats given; return the exit status.

    ONNX and SavedModel go into the bundle (:func:`particleseg.models.export.export_bundle`); ``bioimageio``
    writes a package (:func:`run_bioimageio`).
    """
    from ..models.export import export_bundle

    if args.bundle is None and args.format and args.format[-1] not in FORMATS:
        args.bundle = args.format.pop()  # --format F... BUNDLE
    bad = [f for f in args.format if f not in FORMATS]
    if bad:
        raise ParticlesegError(f"{bad[0]}: unknown export format; choose from {', '.join(FORMATS)}")
    if args.bundle is None or not args.format:
        raise ParticlesegError("models export needs a BUNDLE and at least one --format")

    formats = [f for f in args.format if f != "bioimageio"]
    if formats:
        bundle = export_bundle(args.bundle, formats, overwrite=args.overwrite)
        for fmt in formats:
            e = bundle.metadata["exports"][fmt]
            print(
                f"{fmt}: {bundle.path / e['file']} (max difference from Keras {e['max_abs_diff']:.2g} on a test image)"
            )
    if "bioimageio" in args.format:
        return run_bioimageio(args)
    return 0


def run_bioimageio(args) -> int:
    """Write a bundle as a bioimage.io model package and, with ``--test``, test it; return the exit status."""
    from ..models.bioimageio import export_bioimageio, test_package

    out = export_bioimageio(
        args.bundle, args.out, weights=args.weights, authors=args.author, license=args.license, overwrite=args.overwrite
    )
    print(f"bioimageio: {out} (bioimageio.spec validation passed)")
    if not args.test:
        return 0
    summary = test_package(out)
    failed = [d for d in summary.details if d.status == "failed"]
    tested = sorted(
        {
            w
            for d in summary.details
            for w in ("keras_v3", "onnx", "tensorflow_saved_model_bundle")
            if f"({w})" in d.name
        }
    )
    if summary.status == "passed":
        print(
            f"bioimageio: bioimageio.core model test passed ({len(summary.details)} checks; test outputs "
            f"reproduced with {', '.join(tested)})"
        )
        return 0
    first = failed[0] if failed else None
    why = "; ".join(e.msg.splitlines()[0] for e in first.errors[:1]) if first and first.errors else ""
    print(
        f"bioimageio: {out}: bioimageio.core model test failed: {first.name if first else summary.status}"
        + (f" ({why})" if why else "")
    )
    return 1
