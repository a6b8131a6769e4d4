#!/usr/bin/env python
"""Train the particle classifier on the TiO2 keep masks and score it on the validation split.

The expert's keep masks (``../shared/datasets/tio2-sem/keep_masks``, 1024x704) mark the
particles fit for size statistics. The classifier sees the image and the *manual* mask and
learns which particles the expert kept. It trains on 19 of the 24 images of the fixed training
split (:mod:`particleseg.datasets`); the other 5 choose the best epoch and the threshold
(:func:`particleseg.train.choose_classifier_threshold`). It is scored per particle on the 8
validation images, which play no part in training or in any choice, against the trivial rule
"keep every particle".

    python scripts/tio2_classifier.py --out runs/tio2-classifier --epochs 12 --steps 30

Nothing is written to the repository (data license): the model stays in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from scipy.stats import rankdata

from particleseg.datasets import tio2_items
from particleseg.models import NetworkConfig
from particleseg.train import (
    balanced_accuracy,
    classifier_particle_scores,
    read_training_data,
    split_validation,
    train_classifier,
)

KEEP_ROWS = 704  # keep masks are 1024x704: crop images and masks to that


def read_split(split: str):
    """Read the training data of a TiO2 split (images, masks and keep masks cropped to 704 rows)."""
    items = tio2_items(split=split)
    return read_training_data(
        [it.image for it in items], [it.mask for it in items], [it.keep_mask for it in items], crop_rows=768 - KEEP_ROWS
    )


def particle_table(model, items, network, threshold: float) -> dict:
    """Compare the classifier's decisions with the expert's over the particles of ``items``.

    Decisions are scores >= ``threshold``; also the ROC AUC of the scores.
    """
    scores, expert = classifier_particle_scores(model, items, network)
    ours = scores >= threshold
    # ROC AUC from the Mann-Whitney U statistic: how well the scores rank kept above discarded
    n_pos, n_neg = int(expert.sum()), int((~expert).sum())
    auc = (rankdata(scores)[expert].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1)
    tp, tn = int((ours & expert).sum()), int((~ours & ~expert).sum())
    fp, fn = int((ours & ~expert).sum()), int((~ours & expert).sum())
    return {
        "particles": len(ours),
        "expert_kept": n_pos,
        "accuracy": (tp + tn) / len(ours),
        "accuracy_keep_all": float(expert.mean()),
        "balanced_accuracy": balanced_accuracy(ours, expert),
        "precision_keep": tp / max(tp + fp, 1),
        "recall_keep": tp / max(tp + fn, 1),
        "roc_auc": float(auc),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }


def main(argv=None) -> int:
    """Train the particle classifier (or evaluate a saved one) and score it on the validation split."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (model, log, results.json)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=30, help="steps per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--evaluate", action="store_true", help="score the finished run in --out again (no training)")
    args = ap.parse_args(argv)

    train, held_out = read_split("train"), read_split("validation")
    fit_idx, choose_idx = split_validation(len(train), 0.2, args.seed)
    t0 = time.time()
    if args.evaluate:
        import keras

        model = keras.models.load_model(args.out / "best.keras", compile=False)
        meta = json.loads((args.out / "results.json").read_text())["classifier"]
    else:
        model, meta = train_classifier(
            [train[i] for i in fit_idx],
            [train[i] for i in choose_idx],
            args.out,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            seed=args.seed,
            progress=True,
        )
    minutes = (time.time() - t0) / 60
    result = {
        "command": f"python scripts/tio2_classifier.py --out {args.out} --epochs {args.epochs} "
        f"--steps {args.steps} --seed {args.seed}",
        "train_minutes": round(minutes, 1),
        "classifier": meta,
        "validation": particle_table(model, held_out, NetworkConfig.from_dict(meta["network"]), meta["threshold"]),
    }
    if args.evaluate:
        old = json.loads((args.out / "results.json").read_text())
        result.update(command=old["command"], train_minutes=old["train_minutes"])
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    v = result["validation"]
    print(
        f"threshold {meta['threshold']} (chosen on 5 training images); held-out validation particles "
        f"{v['particles']} (expert kept {v['expert_kept']}): accuracy {v['accuracy']:.3f} "
        f"(keep all: {v['accuracy_keep_all']:.3f}), balanced accuracy {v['balanced_accuracy']:.3f}, "
        f"precision/recall of 'keep' {v['precision_keep']:.3f}/{v['recall_keep']:.3f}, ROC AUC {v['roc_auc']:.3f}; "
        f"{result['train_minutes']} min of training"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
