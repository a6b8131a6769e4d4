#!/usr/bin/env python
r"""Choose a trained bundle's post-processing again on the images it was validated on.

``particleseg train`` ends by choosing the threshold, the watershed seeds and the minimum
confidence on its held-out training images (:func:`particleseg.train.validation_scores`). When
that choice gains a setting (as the seed depth did), a bundle trained before can be brought up to
date without training again: this script reads the held-out images the bundle records
(``training.validation_images``, with the same data-bar crop and inversion), matches their masks
in ``--masks``, runs the same choice and writes a copy of the bundle with the new settings::

    python scripts/rechoose_postprocess.py runs/tio2-ft55/model --masks runs/tio2-ft55/data/masks \
        --out runs/tio2-ft55/model-seeds

The network, the classifier and everything else stay as they are; the bundle's
``metrics.validation`` and ``postprocess`` are replaced.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def main(argv=None) -> int:
    """Choose the post-processing of a bundle again on its held-out images; write the copy."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, help="a bundle folder written by particleseg train")
    ap.add_argument("--masks", type=Path, required=True, help="folder with the masks of the held-out images")
    ap.add_argument("--out", type=Path, required=True, help="the new bundle folder (must not exist)")
    args = ap.parse_args(argv)

    from particleseg.inference import predict_tiled
    from particleseg.models import load_bundle
    from particleseg.models.bundle import write_metadata
    from particleseg.train import read_training_data, validation_scores

    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; give a new folder")
    bundle = load_bundle(args.bundle)
    meta = bundle.metadata
    training = meta.get("training") or {}
    images = [Path(p) for p in training.get("validation_images") or []]
    if not images:
        raise SystemExit(f"{args.bundle}: records no validation images (training.validation_images)")
    items = read_training_data(
        images,
        args.masks,
        crop_rows=int(training.get("crop_rows") or 0),
        normalization=meta["input"]["normalization"],
        invert=bool(training.get("inverted")),
    )
    predict = bundle.predictor("keras")
    probs = [
        predict_tiled(
            predict, it.image, tile=bundle.tile, overlap=bundle.overlap, multiple_of=bundle.network.multiple_of
        )
        for it in items
    ]
    old = dict(bundle.postprocess)
    post, scores = validation_scores(probs, [it.labels for it in items], bundle.heads, min_area=old.get("min_area", 15))
    shutil.copytree(args.bundle, args.out)
    meta = json.loads((args.out / "bundle.json").read_text())
    meta["postprocess"].update(post)
    meta.setdefault("metrics", {})["validation"] = {**meta.get("metrics", {}).get("validation", {}), **scores}
    write_metadata(args.out, meta)
    changed = {k: (old.get(k), v) for k, v in post.items() if old.get(k) != v}
    print(f"{args.out}: {len(items)} held-out images; changed {changed}; validation {scores}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
