"""``particleseg models``: list installed model bundles; ``particleseg models export``: export
a bundle's network as ONNX and TensorFlow SavedModel."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list installed model bundles, or export one",
                       description="List installed model bundles and where they are searched for (no subcommand), "
                                   "or export a bundle's network for other runtimes.")
    p.set_defaults(func=run)
    s = p.add_subparsers(dest="models_command", metavar="{list,export}")
    q = s.add_parser("list", help="list installed model bundles (the default)")
    q.set_defaults(func=run)
    q = s.add_parser(
        "export", help="export a bundle's network as ONNX and/or TensorFlow SavedModel",
        description="Write BUNDLE/export/model.onnx and/or BUNDLE/export/saved_model/, check each against the "
                    "Keras output on a test image, and record them under 'exports' in bundle.json.",
    )
    q.add_argument("bundle", metavar="BUNDLE", help="bundle folder or installed name")
    q.add_argument("--format", nargs="+", choices=("onnx", "saved_model"), default=["onnx", "saved_model"],
                   help="export formats (default both)")
    q.add_argument("--overwrite", action="store_true", help="replace existing exports")
    q.set_defaults(func=run_export)


def run(args) -> int:
    from ..models import bundle_origin, list_bundles, load_bundle, model_search_path

    bundles = list_bundles()
    if not bundles:
        print("no model bundles found")
    for name, path in bundles.items():
        try:
            b = load_bundle(path)
            net = b.network
            print(f"{name:20s} {net.architecture:14s} heads={'+'.join(b.heads):22s} {b.metadata.get('description', '')[:60]}")
        except Exception as exc:  # noqa: BLE001 - list broken bundles too
            print(f"{name:20s} (broken: {exc})")
        print(f"{'':20s} from {bundle_origin(path)}: {path}")
    print("searched: " + ", ".join(str(p) for p in model_search_path()))
    return 0


def run_export(args) -> int:
    from ..models.export import export_bundle

    bundle = export_bundle(args.bundle, args.format, overwrite=args.overwrite)
    for fmt in args.format:
        e = bundle.metadata["exports"][fmt]
        print(f"{fmt}: {bundle.path / e['file']} (max difference from Keras {e['max_abs_diff']:.2g} on a test image)")
    return 0
