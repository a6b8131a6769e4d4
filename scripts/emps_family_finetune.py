#!/usr/bin/env python
"""Fine-tune the default model on one family of the EMPS development set, scored beside it.

The shipped default model is fine-tuned on about 20 images of one family of the EMPS
development set and scored on the family's other images, beside the default model.

The family: **small dark particles on a bright background** (TEM-like; the manifest's
``dark-on-bright`` images with at least 10 particles and a median particle area under
3000 px: 41 images of many sources). It is split once by a hash of the image name (sorted by
``sha1(stem)``: the first 20 train, the other 21 are scored); nothing is chosen on the scored
images. The training images and labels are linked (not copied) into ``OUT/data`` and the
command line is run as printed::

    particleseg train --images OUT/data/images --masks OUT/data/labels --out OUT/model --minutes 20 --seed 0

(polarity ``auto``: measured from the masks as dark, so the bright-particle default network sees
the images inverted). Both models then segment the 21 other images with ``segment_image``'s
defaults and no hint; scores as ``benchmarks/bench_emps.py`` computes them (foreground IoU, F1
at IoU 0.5, instance IoU per true particle), per image and averaged, with the Otsu baseline
given the true polarity.

The data stay in ``../shared/datasets/emps-dev`` and the model in ``OUT`` (development data,
not for shipped weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_emps import DATA, scores  # noqa: E402
from run import classic_labels  # noqa: E402


def family(manifest: pd.DataFrame) -> pd.DataFrame:
    """Return the family's rows of the manifest, sorted by the SHA-1 of their stem."""
    sel = manifest[
        (manifest.polarity == "dark-on-bright") & (manifest.n_particles >= 10) & (manifest.median_area_px < 3000)
    ]
    order = sorted(sel.stem, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    return sel.set_index("stem").loc[order].reset_index()


def link(out: Path, stems) -> Path:
    """Link the images and labels of ``stems`` into ``OUT/data``; return that folder."""
    data = out / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for s in stems:
        for src, sub in ((DATA / "images" / f"{s}.tif", "images"), (DATA / "labels" / f"{s}_labels.tif", "labels")):
            dst = data / sub / src.name
            if not dst.exists():
                dst.symlink_to(src.resolve())
    return data


def score_models(models: dict, stems) -> pd.DataFrame:
    """Score each model (name -> bundle) and the Otsu baseline on the images ``stems``; one row per image."""
    import tifffile

    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image

    bundles = {k: load_bundle(v) for k, v in models.items()}
    rows = []
    for s in stems:
        image = tifffile.imread(DATA / "images" / f"{s}.tif")
        truth = tifffile.imread(DATA / "labels" / f"{s}_labels.tif").astype(np.int64)
        row = {"stem": s}
        for name, b in bundles.items():
            seg = segment_image(image, b, SegmentParams(crop_rows=0, progress=False), name=s)
            row.update({f"{name}_{k}": v for k, v in scores(seg.labels, truth).items()})
        row.update(
            {
                f"otsu_{k}": v
                for k, v in scores(classic_labels(image.astype(np.float32), "otsu", polarity="dark")[1], truth).items()
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    """Fine-tune (unless OUT/model exists), score both models and Otsu; print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--train-images", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    fam = family(pd.read_csv(DATA / "manifest.csv"))
    train, test = list(fam.stem[: args.train_images]), list(fam.stem[args.train_images :])
    data = link(args.out, train)
    model = args.out / "model"
    cmd = [
        "particleseg",
        "train",
        "--images",
        str(data / "images"),
        "--masks",
        str(data / "labels"),
        "--out",
        str(model),
        "--minutes",
        f"{args.minutes:g}",
        "--seed",
        str(args.seed),
    ]
    print("$", shlex.join(cmd), flush=True)
    t0 = time.time()
    if not (model / "bundle.json").exists():
        subprocess.run([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]], check=True)
    wall = (time.time() - t0) / 60
    df = score_models({"default": "default", "tuned": model}, test)
    df.to_csv(args.out / "scores.csv", index=False)
    mean = df.drop(columns="stem").mean()
    result = {
        "command": shlex.join(cmd),
        "wall_minutes": round(wall, 1),
        "family_images": len(fam),
        "train": train,
        "scored": test,
        "mean": mean.round(4).to_dict(),
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    for m in ("default", "tuned", "otsu"):
        print(
            f"{m:8s} foreground IoU {mean[f'{m}_fg_iou']:.3f}  F1@0.5 {mean[f'{m}_f1']:.3f}  "
            f"instance IoU {mean[f'{m}_inst_iou']:.3f}  ({len(test)} images)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
