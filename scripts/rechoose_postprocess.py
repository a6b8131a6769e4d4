#!/usr/bin/env python
r"""Choose a trained bundle's post-processing again on the images it was validated on.

``particleseg train`` ends by choosing the threshold, the watershed seeds and the minimum
confidence on its held-out training images (:func:`particleseg.train.validation_scores`). When
that choice gains a setting (as the seed depth did, and whether to average the network over flips
and rotations), a bundle trained before can be brought up to
date without training again: this script reads the held-out images the bundle records
(``training.validation_images``, with the same data-bar crop and inversion), matches their masks
in ``--masks``, runs the same choice and writes a copy of the bundle with the new settings::

    python scripts/rechoose_postprocess.py runs/tio2-ft55/model --masks runs/tio2-ft55/data/masks \
        --out runs/tio2-ft55/model-seeds

The networks and everything else stay as they are; the bundle's ``metrics.validation`` and
``postprocess`` are replaced. With ``--keep-masks`` (the held-out images' keep masks) the
particle classifier's threshold is chosen again too, as ``train`` now chooses it
(:func:`particleseg.train.choose_min_score` over its whole grid)::

    python scripts/rechoose_postprocess.py runs/tio2-ft55-sep/model --masks runs/tio2-ft55-sep/data/masks \
        --keep-masks runs/tio2-ft55-sep/data/keep_masks --out runs/tio2-ft55-sep/model-sizes
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
    ap.add_argument(
        "--keep-masks", type=Path, help="keep masks of the held-out images: choose the classifier's threshold again"
    )
    args = ap.parse_args(argv)

    from particleseg.models import NetworkConfig, load_bundle
    from particleseg.models.bundle import write_metadata
    from particleseg.train import choose_min_score, choose_postprocess, min_area_choices, read_training_data
    from particleseg.train.classifier import MIN_SCORE_RULE

    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; give a new folder")
    bundle = load_bundle(args.bundle)
    meta = bundle.metadata
    training = meta.get("training") or {}
    if args.keep_masks is not None and not meta.get("classifier"):
        raise SystemExit(f"{args.bundle}: has no particle classifier; --keep-masks chooses its threshold")
    images = [Path(p) for p in training.get("validation_images") or []]
    if not images:
        raise SystemExit(f"{args.bundle}: records no validation images (training.validation_images)")
    items = read_training_data(
        images,
        args.masks,
        keep_masks=args.keep_masks,
        crop_rows=int(training.get("crop_rows") or 0),
        normalization=meta["input"]["normalization"],
        invert=bool(training.get("inverted")),
    )
    old = dict(bundle.postprocess)
    post, scores, probs = choose_postprocess(
        bundle.predictor("keras"),
        [it.image for it in items],
        [it.labels for it in items],
        bundle.heads,
        bundle.tile,
        bundle.overlap,
        bundle.network.multiple_of,
        min_area=old.get("min_area", 15),
        min_areas=min_area_choices((meta.get("scale") or {}).get("particle_size_px")),
    )
    shutil.copytree(args.bundle, args.out)
    meta = json.loads((args.out / "bundle.json").read_text())
    meta["postprocess"].update(post)
    if args.keep_masks is not None:  # (a bundle without a classifier was refused above)
        import keras

        clf = meta["classifier"]
        classifier = keras.saving.load_model(bundle.path / clf["model_file"], compile=False)
        tile = bundle.tile  # the inference tile train chose (at least 512, a multiple of the network's)
        mult = NetworkConfig.from_dict(clf["network"]).multiple_of
        chosen, table = choose_min_score(classifier, bundle.network, probs, items, meta["postprocess"], tile, mult)
        print(f"classifier threshold {clf.get('threshold')} -> {chosen} (KS and kept: {table['ks_and_kept']})")
        clf.update(threshold=chosen, threshold_chosen_by=MIN_SCORE_RULE, size_distribution=table)
    meta.setdefault("metrics", {})["validation"] = {**meta.get("metrics", {}).get("validation", {}), **scores}
    write_metadata(args.out, meta)
    changed = {k: (old.get(k), v) for k, v in post.items() if old.get(k) != v}
    print(f"{args.out}: {len(items)} held-out images; changed {changed}; validation {scores}")
    return 0


if __name__ == "__main__":
    from particleseg.errors import InputError

    try:
        raise SystemExit(main())
    except InputError as exc:  # a missing or mismatched mask: one line, no traceback
        raise SystemExit(f"rechoose_postprocess: {exc}") from None
