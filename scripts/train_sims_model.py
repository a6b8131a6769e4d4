#!/usr/bin/env python
"""Train the SIMS particle-detection FCN on simulated fields, sweep its two parameters, evaluate it.

The FCN is trained on simulated fields, its two parameters are chosen by a sweep, and it is
evaluated on independent simulated fields.

Stages (each cached in ``--workdir``, so a stage can be re-run alone):

1. simulate training and validation fields (:mod:`particleseg.sims.simulate`, fixed seeds);
2. train a small FCN (:func:`particleseg.train.fit`, a sigmoid particle head, which is a
   two-class softmax) on the Anscombe-transformed sum of the uranium channels;
3. sweep the probability threshold and the watershed level on the validation fields, scoring
   each pair by how far the recovered 235U/238U distribution and the particle count are from
   the truth (:func:`particleseg.sims.score_detection`); the best pair goes into the bundle;
4. evaluate the bundle end to end (``run_fields`` on TIFF files written by the simulator) on a
   test set simulated with other seeds, and report recovered against true ratios per material.

    nice -n 10 python scripts/train_sims_model.py --out runs/sims-fcn --workdir runs/sims-work
    nice -n 10 python scripts/train_sims_model.py --out models/sims-fcn --overwrite   # ship it

Everything is simulated; no measured data is used.
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
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LEVELS = (None, 0.0, 0.25, 0.5, 1.0, 2.0, 3.0)  # watershed level h (None: no split)


def simulated(n: int, seed: int, workdir: Path, settings):
    """``n`` fields as arrays (cached): detection inputs' raw totals, counts, labels, truth."""
    from tqdm.auto import tqdm

    from particleseg.sims import simulate_field

    cache = workdir / f"sims-{n}-{seed}.npz"
    tcache = workdir / f"sims-{n}-{seed}-truth.csv"
    if cache.exists() and tcache.exists():
        d = np.load(cache)
        return d["counts"], d["labels"], pd.read_csv(tcache), d["isotopes"].tolist()
    counts, labels, truths = [], [], []
    for i in tqdm(range(n), desc=f"simulating (seed {seed})", unit="field"):
        s = simulate_field(np.random.default_rng([seed, i]), settings)
        counts.append(s.counts)
        labels.append(s.labels)
        t = s.truth.copy()
        t.insert(0, "field", f"f{i:05d}")
        truths.append(t)
        isotopes = list(s.isotopes)
    truth = pd.concat([t for t in truths if len(t)], ignore_index=True)
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(".tmp-" + cache.name)
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, counts=np.stack(counts), labels=np.stack(labels), isotopes=np.array(isotopes))
    os.replace(tmp, cache)
    truth.to_csv(tcache, index=False)
    return np.stack(counts), np.stack(labels), truth, isotopes


def sweep(model, counts, labels, truth, isotopes, input_settings, min_area, min_significance, log):
    """Score every (threshold, level) pair on the validation fields.

    Detections below ``min_significance`` sigma are dropped, as ``run_fields`` does.
    """
    from particleseg import sims
    from particleseg.models import keras_predictor

    fields = [sims.Field(f"f{i:05d}", {iso: c[k] for k, iso in enumerate(isotopes)}) for i, c in enumerate(counts)]
    x = np.stack([sims.detection_input(f.total(), input_settings) for f in fields])
    prob = sims.predict_fields(keras_predictor(model), x, 8, 64)[..., 0]
    rows = []
    for thr in THRESHOLDS:
        for level in LEVELS:
            tables, matches = [], []
            for f, p, lab in zip(fields, prob, labels):
                det = sims.detect_particles(p, thr, level, min_area)
                t, det = sims.significant(sims.measure_particle_isotopes(f, det), det, min_significance)
                t.insert(0, "field", f.name)
                tables.append(t)
                for pid, tid in sims.match_particles(det, lab).items():
                    matches.append({"field": f.name, "particle": pid, "truth_label": tid})
            parts = sims.concat_particles(tables)
            sc = sims.score_detection(parts, truth, pd.DataFrame(matches))
            empty_fp = int(sum(len(t) for t, lab in zip(tables, labels) if lab.max() == 0))
            rows.append(
                {
                    "threshold": thr,
                    "level": "none" if level is None else level,
                    **sc,
                    "false_particles_in_empty_fields": empty_fp,
                }
            )
            log(
                f"  threshold {thr:.1f} level {str(level):>4}: score {sc['score']:.3f} "
                f"count error {sc['count_error']:.3f} "
                f"ratio distance {sc['ratio_distance']:.3f} recall {sc.get('recall', 0):.3f} "
                f"precision {sc.get('precision', 0):.3f}"
            )
    return pd.DataFrame(rows)


def evaluate(bundle_path, n, seed, workdir: Path, settings, log):
    """End to end on files: simulate a test set to disk, run ``run_fields`` on it, compare."""
    import tifffile

    from particleseg import sims
    from particleseg.models import load_bundle
    from particleseg.sims import simulate_fields

    data = workdir / f"test-{n}-{seed}"
    if not (data / "truth.csv").exists():
        simulate_fields(n, data, settings, seed=seed, overwrite=True)
    truth = pd.read_csv(data / "truth.csv")
    bundle = load_bundle(bundle_path)
    out = workdir / f"test-{n}-{seed}-run"
    t0 = time.perf_counter()
    parts, fields = sims.run_fields(data / "fields", bundle, out, overwrite=True, save_labels=True)
    seconds = time.perf_counter() - t0
    matches = []
    for name in fields["field"]:
        det = (
            tifffile.imread(out / "labels" / f"{name}_labels.tif")
            if (out / "labels" / f"{name}_labels.tif").exists()
            else None
        )
        tl = tifffile.imread(data / "masks" / f"{name}_mask.tif") if truth["field"].eq(name).any() else None
        if det is None or tl is None or det.max() == 0:
            continue
        det, tl = det.astype(np.int32), tl.astype(np.int32)
        for pid, tid in sims.match_particles(det, tl).items():
            own = det == pid
            # pixels of the detection on *other* true particles: a merge with a neighbour
            foreign = float(((tl > 0) & (tl != tid) & own).sum() / own.sum())
            matches.append({"field": name, "particle": pid, "truth_label": tid, "foreign": foreign})
    matches = pd.DataFrame(matches, columns=["field", "particle", "truth_label", "foreign"])
    sc = sims.score_detection(parts, truth, matches)
    # recovered vs true per material: counts-weighted mean of matched particles, pooled ratio
    m = matches.merge(parts, on=["field", "particle"]).merge(
        truth, left_on=["field", "truth_label"], right_on=["field", "label"], suffixes=("", "_true")
    )
    per_material = []
    n_true = truth.groupby("material").size()
    for mat, g in m.groupby("material"):
        clean = g[g["foreign"] == 0]
        row = {
            "material": mat,
            "true": int(n_true.get(mat, 0)),
            "matched": len(g),
            "recall": len(g) / max(int(n_true.get(mat, 0)), 1),
            "merged": int((g["foreign"] > 0).sum()),
        }
        for iso in sims.RATIO_ISOTOPES:
            rc, ec = sims.ratio_columns(iso)
            row[f"{iso}/238U true"] = float(g[rc + "_true"].iloc[0])
            row[f"{iso}/238U median"] = float(g[rc].median())
            # counts-pooled ratio of the detections not merged with a neighbour
            net, ref = clean[f"{iso}_net"].sum(), clean["238U_net"].sum()
            pooled = net / ref
            row[f"{iso}/238U pooled"] = float(pooled)
            row[f"{iso}/238U pooled err"] = float(
                np.sqrt((clean[f"{iso}_net_err"] ** 2).sum() + pooled**2 * (clean["238U_net_err"] ** 2).sum()) / ref
            )
            pull = ((g[rc] - g[rc + "_true"]) / g[ec]).replace([np.inf, -np.inf], np.nan).dropna()
            row[f"{iso}/238U pull median"] = float(pull.median()) if len(pull) else float("nan")
            row[f"{iso}/238U pull sigma"] = (
                float((pull.quantile(0.75) - pull.quantile(0.25)) / 1.349) if len(pull) > 3 else float("nan")
            )
            row[f"{iso}/238U within 3 sigma"] = float((pull.abs() < 3).mean()) if len(pull) else float("nan")
        per_material.append(row)
    empty = set(fields.loc[fields["particles"] == 0, "field"])
    true_empty = set(fields["field"]) - set(truth["field"])
    return (
        {
            "fields": len(fields),
            "seconds": seconds,
            "fields_per_second": len(fields) / seconds,
            "true_empty_fields": len(true_empty),
            "true_empty_fields_with_detections": len(true_empty - empty),
            **sc,
        },
        pd.DataFrame(per_material),
        parts,
        truth,
        out,
    )


def main(argv=None):
    """Simulate, train, sweep and evaluate; write the bundle and the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "sims-fcn"), help="bundle folder to write")
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "sims-work"))
    ap.add_argument("--train-fields", type=int, default=800)
    ap.add_argument("--val-fields", type=int, default=150)
    ap.add_argument("--test-fields", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--filters", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)

    from particleseg import sims
    from particleseg.models import Head, NetworkConfig, make_metadata, save_bundle, write_metadata
    from particleseg.sims import SimsSettings
    from particleseg.train import Augmentation, TrainConfig, fit

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logfile = open(workdir / "report.txt", "a")

    def log(msg):
        print(msg)
        logfile.write(msg + "\n")
        logfile.flush()

    settings = SimsSettings()
    input_settings = dict(sims.DEFAULT_INPUT)
    t_start = time.time()
    tr_counts, tr_labels, _, isotopes = simulated(args.train_fields, 1000 + args.seed, workdir, settings)
    va_counts, va_labels, va_truth, _ = simulated(args.val_fields, 2000 + args.seed, workdir, settings)

    def inputs(counts):
        return [sims.detection_input(c.sum(0), input_settings)[..., None] for c in counts]

    net = NetworkConfig("fcn", 1, (Head("foreground"),), depth=args.depth, base_filters=args.filters)
    cfg = TrainConfig(
        network=net,
        tile=64,
        batch_size=16,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        validation_steps=10,
        learning_rate=2e-3,
        lr_step_epochs=max(1, args.epochs // 3),
        patience=0,
        seed=args.seed,
        jit_compile=False,
        augmentation=Augmentation(brightness=0, contrast=0, gamma=0, noise=0),
    )
    log(f"training {net.architecture} depth {net.depth} filters {net.base_filters} on {len(tr_counts)} fields")
    t0 = time.time()
    model, history = fit(
        inputs(tr_counts),
        list(tr_labels),
        inputs(va_counts),
        list(va_labels),
        cfg,
        workdir / "train",
        resume=True,
        verbose=2,
    )
    train_seconds = time.time() - t0
    if train_seconds < 60 and (workdir / "summary.json").exists():  # resumed a finished training
        train_seconds = json.loads((workdir / "summary.json").read_text()).get("train_seconds", train_seconds)
    log(f"trained in {train_seconds / 60:.1f} min; last val loss {history[-1].get('val_loss', float('nan')):.4f}")

    log("sweep on the validation fields:")
    min_sig = sims.DEFAULT_SIMS_POSTPROCESS["min_significance"]
    log(f"detections below {min_sig} sigma of uranium counts are dropped (sims.significant)")
    table = sweep(model, va_counts, va_labels, va_truth, isotopes, input_settings, 4, min_sig, log)
    table.to_csv(workdir / "sweep.csv", index=False)
    best = table.loc[table["score"].idxmin()]
    level = None if best["level"] == "none" else float(best["level"])
    log(f"best: threshold {best['threshold']} level {best['level']} (score {best['score']:.3f})")

    post = {
        **sims.DEFAULT_SIMS_POSTPROCESS,
        "threshold": float(best["threshold"]),
        "split": level is not None,
        "h": level if level is not None else 1.0,
        "min_significance": min_sig,
    }
    meta = make_metadata(
        Path(args.out).name,
        net,
        description=(
            "FCN detecting uranium-bearing particles in SIMS fields of view, on the Anscombe-"
            "transformed sum of the uranium channels; trained on simulated fields only "
            "(scripts/train_sims_model.py)."
        ),
        channels=["sum of uranium channels (Anscombe)"],
        normalization={"method": "none"},
        tile=128,
        overlap=16,
        particle_size_px=7.0,
        postprocess=post,
        training={
            **cfg.to_dict(),
            "train_fields": len(tr_counts),
            "val_fields": len(va_counts),
            "seconds": round(train_seconds),
            "simulator": "particleseg.sims.SimsSettings()",
        },
        metrics={
            "sweep_best": {
                k: (v if not isinstance(v, (np.floating, np.integer)) else v.item()) for k, v in best.to_dict().items()
            }
        },
    )
    meta["sims"] = {"input": input_settings, "isotopes": list(sims.ISOTOPES), "required": list(sims.REQUIRED_ISOTOPES)}
    save_bundle(args.out, model, meta, overwrite=args.overwrite, zip_copy=False)
    log(f"wrote {args.out}")

    log("evaluation on independent simulated test fields (end to end, files):")
    ev, per_mat, parts, truth, run_dir = evaluate(args.out, args.test_fields, 3000 + args.seed, workdir, settings, log)
    for k, v in ev.items():
        log(f"  {k}: {v}")
    log(per_mat.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    per_mat.to_csv(workdir / "recovered_vs_true.csv", index=False)
    sims.plot_ratios(
        parts,
        workdir / "test_ratios.png",
        truth=truth,
        overwrite=True,
        title="recovered (points) vs true (x) ratios, simulated test fields",
    )
    from particleseg.models import load_bundle

    b = load_bundle(args.out)
    b.metadata["metrics"]["test"] = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in ev.items()}
    write_metadata(args.out, b.metadata)
    (workdir / "summary.json").write_text(
        json.dumps({"sweep_best": best.to_dict(), "test": ev, "train_seconds": train_seconds}, indent=2, default=str)
    )
    log(f"total {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
