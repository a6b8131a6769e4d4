#!/usr/bin/env python
"""Test whether a FIB-SEM phase network gains from a second detector channel and neighbouring slices.

Small CPU runs on simulated stacks (:mod:`particleseg.fibsem.simulate`).

Every configuration trains the same network (UNet, depth 3, 8 base filters) with the same
budget on the same three annotated slices of a simulated stack (validation: the bottom 20 % of
their rows), and is evaluated against the exact labels on

* the independent annotated slice of that stack (as ``fibsem train`` reports it),
* all slices of the stack that were not used for training,
* a second stack simulated with another seed (new microstructure, curtains, gradients).

Configurations: one channel (each) without context; both channels without context; one
channel with one slice before and after; both channels with one slice before and after.

    nice -n 10 python scripts/fibsem_context_experiment.py --out runs/fibsem-context
    # the run reported in docs/fibsem.md (about 17 min on 2 shared CPU cores):
    nice -n 10 python scripts/fibsem_context_experiment.py --epochs 10 --steps 20 --only 0 2 4
    # evaluate the saved checkpoints again (batch-norm statistics recalibrated), no training:
    python scripts/fibsem_context_experiment.py --only 0 2 4 --evaluate-only
    python scripts/fibsem_context_experiment.py --plot-only   # results.png from results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [  # name, channels, context
    ("in-chamber, 1 slice", [0], 0),
    ("in-lens, 1 slice", [1], 0),
    ("2 channels, 1 slice", [0, 1], 0),
    ("in-chamber, 3 slices (k=1)", [0], 1),
    ("2 channels, 3 slices (k=1)", [0, 1], 1),
]


def evaluate(model, sim, channels, k, norm_from, slices, classes):
    """Accuracy and per-phase metrics of ``model`` on ``slices`` of a simulated stack."""
    from particleseg import fibsem
    from particleseg.models import keras_predictor

    stack = fibsem.open_stack([sim.channels[c] for c in channels])
    norm = fibsem.stack_normalization(stack)
    builder = fibsem.InputBuilder(stack, k, norm)
    predict = keras_predictor(model)
    preds, truths = [], []
    for z in slices:
        preds.append(fibsem.predict_slice(predict, builder(z), tile=256, overlap=32, multiple_of=8).ravel())
        truths.append(sim.labels[z].ravel())
    return fibsem.phase_metrics(np.concatenate(preds), np.concatenate(truths), classes)


def eval_slice_per_phase(metrics: dict, classes) -> dict:
    """``eval_{iou,precision,recall}_{phase}`` of the independent slice's :func:`phase_metrics`."""
    return {f"eval_{k}_{c}": metrics["per_class"][c][k] for c in classes for k in ("iou", "precision", "recall")}


def plot_results(table: pd.DataFrame, path: Path) -> None:
    """Bar chart of mean IoU (and accuracy) per configuration on the three evaluation sets."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sets = [("eval_slice", "independent slice"), ("stack", "other slices"), ("other_stack", "second stack")]
    fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
    w = 0.8 / len(sets)
    x = np.arange(len(table))
    for i, (key, label) in enumerate(sets):
        ax.bar(x + (i - 1) * w, table[f"{key}_mean_iou"], w, label=f"{label}: mean IoU")
        ax.plot(x + (i - 1) * w, table[f"{key}_accuracy"], "k_", ms=12, mew=2, label="accuracy" if i == 0 else None)
    ax.set_xticks(x, table["config"], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.set_title("FIB-SEM phases: detector channels and context slices (simulated stacks)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(path)


def main(argv=None):
    """Train and evaluate the configurations asked for; write results.json, results.csv and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "fibsem-context"))
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, nargs="*", help="run only these configurations (indices)")
    ap.add_argument("--plot-only", action="store_true", help="only redraw results.png from results.json")
    ap.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate each configuration's saved OUT/configN/best.keras again",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    if args.plot_only:
        results = json.loads((out / "results.json").read_text())
        plot_results(pd.DataFrame([results[n] for n, _, _ in CONFIGS if n in results]), out / "results.png")
        return 0

    from particleseg import fibsem
    from particleseg.fibsem import FibsemSettings, annotation_slices, simulate_stack

    out.mkdir(parents=True, exist_ok=True)
    settings = FibsemSettings(shape=(args.slices, args.size, args.size))
    sim = simulate_stack(args.seed, settings)
    sim2 = simulate_stack(args.seed + 100, settings)
    classes = list(sim.phases)
    annotated = annotation_slices(args.slices, 4)
    train_z, eval_z = annotated[:-1], annotated[-1:]
    rest = [z for z in range(args.slices) if z not in train_z]
    print(f"training slices {train_z}, independent evaluation slice {eval_z}; {len(rest)} non-training slices")
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for i, (name, chans, k) in enumerate(CONFIGS):
        if args.only and i not in args.only:
            continue
        if args.evaluate_only and not (out / f"config{i}" / "best.keras").exists():
            continue
        stack = fibsem.open_stack([sim.channels[c] for c in chans], [sim.channel_names[c] for c in chans])
        cfg = fibsem.PhaseTrainConfig(
            context=k,
            depth=3,
            base_filters=8,
            tile=96,
            batch_size=8,
            epochs=args.epochs,
            steps_per_epoch=args.steps,
            validation_steps=6,
            seed=args.seed,
        )
        ann = {z: sim.labels[z].astype(np.int32) for z in annotated}
        t0 = time.time()
        if args.evaluate_only:
            import keras

            model = keras.saving.load_model(out / f"config{i}" / "best.keras", compile=False)
            # as train_phases does after loading the best checkpoint: batch-norm statistics of
            # the training rows (the top 80 % of each training slice)
            norm = fibsem.stack_normalization(stack, *cfg.percentiles)
            builder = fibsem.InputBuilder(stack, k, norm)
            train_x = [builder(z)[: int(round(args.size * (1 - cfg.val_fraction)))] for z in train_z]
            fibsem.recalibrate_batchnorm(model, train_x, min(cfg.tile, args.size), seed=cfg.seed)
            ev = {"all": evaluate(model, sim, chans, k, None, eval_z, classes)}
            secs = results.get(name, {}).get("train_seconds", 0)
        else:
            model, log, ev, split, _ = fibsem.train_phases(
                stack, ann, classes, cfg, out / f"config{i}", train_z, None, eval_z, verbose=0
            )
            secs = time.time() - t0
        m_rest = evaluate(model, sim, chans, k, None, rest, classes)
        m_other = evaluate(model, sim2, chans, k, None, list(range(args.slices)), classes)
        r = {
            "config": name,
            "channels": len(chans),
            "context_k": k,
            "train_seconds": round(secs),
            "eval_slice_accuracy": ev["all"]["accuracy"],
            "eval_slice_mean_iou": ev["all"]["mean_iou"],
            "stack_accuracy": m_rest["accuracy"],
            "stack_mean_iou": m_rest["mean_iou"],
            "other_stack_accuracy": m_other["accuracy"],
            "other_stack_mean_iou": m_other["mean_iou"],
        }
        for c in classes:
            r[f"iou_{c}"] = m_other["per_class"][c]["iou"]
        r.update(eval_slice_per_phase(ev["all"], classes))
        results[name] = r
        results_path.write_text(json.dumps(results, indent=2))
        print(
            f"{name}: eval slice acc {r['eval_slice_accuracy']:.3f} mIoU {r['eval_slice_mean_iou']:.3f}; "
            f"other slices acc {r['stack_accuracy']:.3f} mIoU {r['stack_mean_iou']:.3f}; "
            f"other stack acc {r['other_stack_accuracy']:.3f} mIoU {r['other_stack_mean_iou']:.3f} "
            f"({secs / 60:.1f} min)",
            flush=True,
        )
    table = pd.DataFrame([results[n] for n, _, _ in CONFIGS if n in results])
    table.to_csv(out / "results.csv", index=False)
    plot_results(table, out / "results.png")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    sys.exit(main())
