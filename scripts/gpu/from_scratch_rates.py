#!/usr/bin/env python
"""Time the publication-scale from-scratch preset on a GPU, with every stage shortened.

The five stages of ``ScratchConfig.preset("default")`` (the publication's networks and crop
sizes) run with fewer steps, pairs and epochs than the preset's, on simulated micrographs and
outlines (a timing, not a model: no licensed image leaves this machine). Each stage's seconds
are then scaled to the preset's counts, linearly in the count that drives it (shape GAN steps,
pairs for the masks and the filter, CycleGAN steps plus its pairs' translation, segmentation
epochs). The first step's compilation is counted in the short run, so the estimate is high by
that much. Writes ``OUT/rates.json`` and prints a table.

    KERAS_BACKEND=jax python scripts/gpu/from_scratch_rates.py --out runs/gpu-scratch
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np


def write_inputs(root: Path, images: int, outlines: int, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """Write simulated 1024x768 SEM micrographs and ``size`` x ``size`` outlines, as the workflow reads them."""
    import tifffile

    from particleseg.simulate import random_particle, simulate_sem_image

    im_dir, ol_dir = root / "images", root / "outlines"
    im_dir.mkdir(parents=True, exist_ok=True)
    ol_dir.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        sim = simulate_sem_image((768, 1024), np.random.default_rng([seed, i]), particle_size=26.0, coverage=0.2)
        tifffile.imwrite(im_dir / f"sim{i:02d}.tif", sim.image)
    rng = np.random.default_rng([seed, 10**6])
    for i in range(outlines):
        m, _ = random_particle(rng, rng.uniform(0.25, 0.6) * size)
        m = m[: size - 2, : size - 2]
        c = np.zeros((size, size), np.uint8)
        h, w = m.shape
        c[(size - h) // 2 : (size - h) // 2 + h, (size - w) // 2 : (size - w) // 2 + w] = m * 255
        tifffile.imwrite(ol_dir / f"outline{i:02d}.tif", c)
    return im_dir, ol_dir


def main(argv=None) -> int:
    """Run the shortened preset, write the measured and extrapolated seconds per stage."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="default", help="default (the publication's scale) or tiny (a test)")
    ap.add_argument("--shape-steps", type=int, help="default: the preset's")
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--cyclegan-steps", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps-per-epoch", type=int, help="default: the preset's")
    args = ap.parse_args(argv)

    import keras

    from particleseg.scratch import ScratchConfig, train_from_scratch

    full = ScratchConfig.preset(args.preset)
    seg = full.segmentation
    short = dataclasses.replace(
        full,
        pairs=args.pairs,
        shapes=dataclasses.replace(full.shapes, steps=args.shape_steps or full.shapes.steps),
        cyclegan=dataclasses.replace(full.cyclegan, steps=args.cyclegan_steps),
        segmentation=dataclasses.replace(
            seg, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch or seg.steps_per_epoch, patience=0
        ),
    )
    images, outlines = write_inputs(
        args.out / "inputs", 32 if args.preset == "default" else 4, 40, size=full.shapes.size
    )
    t0 = time.time()
    result = train_from_scratch(images, outlines, args.out / "bundle", work=args.out / "work", config=short)
    wall = time.time() - t0
    seg_steps = lambda c: c.epochs * c.steps_per_epoch  # noqa: E731
    scale = {
        "shapes": full.shapes.steps / short.shapes.steps,
        "masks": full.pairs / short.pairs,
        # training dominates; the translation of the pairs scales with the pairs (a lower bound of
        # the factor when the pairs' share is large)
        "cyclegan": full.cyclegan.steps / short.cyclegan.steps,
        "filter": full.pairs / short.pairs,
        "segmentation": seg_steps(seg) / seg_steps(short.segmentation),
    }
    rows = {
        name: {
            "seconds": round(sec, 1),
            "factor": round(scale[name], 2),
            "estimated_full_seconds": round(sec * scale[name], 1),
        }
        for name, sec in result.seconds.items()
    }
    total = sum(r["estimated_full_seconds"] for r in rows.values())
    report = {
        "backend": keras.backend.backend(),
        "short_config": short.to_dict(),
        "full_counts": {
            "shape_steps": full.shapes.steps,
            "pairs": full.pairs,
            "cyclegan_steps": full.cyclegan.steps,
            "segmentation_steps": seg_steps(seg),
        },
        "stages": rows,
        "wall_seconds": round(wall, 1),
        "estimated_full_minutes": round(total / 60, 1),
        "summaries": result.summaries,
    }
    (args.out / "rates.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"{'stage':14s} {'seconds':>9s} {'x':>7s} {'full (est.)':>12s}")
    for name, r in rows.items():
        print(f"{name:14s} {r['seconds']:9.1f} {r['factor']:7.1f} {r['estimated_full_seconds']:12.1f}")
    print(f"short run {wall:.0f} s; the full preset estimated at {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
