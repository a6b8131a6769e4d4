"""``particleseg models``: list installed model bundles."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list installed model bundles", description="List installed model bundles and where they are searched for.")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..models import list_bundles, load_bundle, model_search_path

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
    print("searched: " + ", ".join(str(p) for p in model_search_path()))
    return 0
