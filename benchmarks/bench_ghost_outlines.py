"""How much of faint particle outlines in the background a model takes for particles.

Real SEM backgrounds (the TiO2 images, for example validation image 1908256) show faint
ring-shaped outlines of particle size, where the networks retrained longer on simulated images
put filled false particles (docs/other-materials.md). This benchmark adds such outlines to
simulated SEM images (:func:`particleseg.simulate.simulate_sem_image` with ``outlines``, as the
``mixed-outlines`` training set has them): the rims of particle-shaped masks at the image's
particle size, in the background, 10-30 % as bright above it as the particles' bright parts,
blurred. It segments each image with every model given (bright polarity and the true particle
size given, so only the network and its post-processing differ) and reports the share
of the outlines' area taken for particles and the foreground IoU on the real particles.

No real image is used; the numbers say whether a network believes in faint outlines, not how
well it does on real data.

Usage::

    python benchmarks/bench_ghost_outlines.py shipped=default gpu1=runs/gpu/lr1e-3/bundle
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
from scipy import ndimage as ndi


def outline_regions(plain: np.ndarray, lined: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the background that the outlines of ``lined`` enclose (``plain``: the same image without them)."""
    return ndi.binary_fill_holes(lined != plain) & (labels == 0)


def main(argv=None) -> int:
    """Score each model on the same simulated images with outlines; print one line per model."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=BUNDLE (a folder, zip or installed name)")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--seed", type=int, default=77)
    args = ap.parse_args(argv)

    from particleseg.errors import ParticlesegError
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image
    from particleseg.simulate import simulate_sem_image

    bad = [m for m in args.models if "=" not in m]
    if bad:
        ap.error(f"{bad[0]}: give each model as NAME=BUNDLE (for example shipped=default)")
    models = dict(m.split("=", 1) for m in args.models)
    try:
        bundles = {name: load_bundle(path) for name, path in models.items()}
    except ParticlesegError as exc:
        print(f"bench_ghost_outlines: {exc}", file=sys.stderr)
        return 2
    rows = {name: [] for name in bundles}
    for i in range(args.images):
        strength = np.random.default_rng([args.seed, i, 1]).uniform(0.1, 0.3)
        sim = simulate_sem_image(
            (512, 512), np.random.default_rng([args.seed, i]), coverage=(0.05, 0.2), empty_fraction=0
        )
        lined = simulate_sem_image(
            (512, 512), np.random.default_rng([args.seed, i]), coverage=(0.05, 0.2), empty_fraction=0, outlines=strength
        )
        outlines = outline_regions(sim.image, lined.image, sim.labels)
        truth = sim.labels > 0
        params = SegmentParams(crop_rows=0, progress=False, polarity="bright", particle_size=sim.particle_size)
        for name, bundle in bundles.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # (no ONNX export, and the like: one line per image)
                pred = segment_image(lined.image, bundle, params, name=f"outlines{i}").labels > 0
            rows[name].append(
                ((pred & outlines).sum() / max(outlines.sum(), 1), (pred & truth).sum() / (pred | truth).sum())
            )
    print(f"{args.images} simulated 512x512 SEM images with faint particle outlines (seed {args.seed})")
    for name, values in rows.items():
        taken, iou = np.mean(values, axis=0)
        print(f"{name}: outline area taken for particles {taken:.3f}; foreground IoU on the particles {iou:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
