#!/usr/bin/env python
"""Regenerate the shipped artefacts from simulated data only, with fixed seeds.

The artefacts:

* the training images (``simulate.simulate_sem_image``; cached in ``--workdir``),
* the default model bundle (``models/default``),
* the sample image of the demo (``python/particleseg/data/sample_sem.tif``).

No real micrograph is used for training. The watershed seeds are those of
:data:`DEFAULT_SEEDS`, chosen on real development images (the simulated particles' distance
maps peak more cleanly than real ones; the choice on simulated validation images is recorded
beside them). Two detection parameters, the probability threshold and ``min_confidence``, are
chosen on the *training split* of the real TiO2 data (24 of 32 images,
:mod:`particleseg.datasets`), because the simulator does not reproduce the faint ring-shaped
artefacts of real backgrounds that the network half believes in; the 8 validation images are
only measured (``--evaluate``). Without the TiO2 data the recorded values below are used.

    python scripts/train_default_model.py --overwrite            # about 1 h on 2 CPU cores
    python scripts/train_default_model.py --out runs/gen2/bundle --workdir runs/gen2/work --simulator mixed \
        --images 640 --steps 60 --minutes 100 --recipe finetune --init models/default --learning-rate 4e-4 \
        --evaluate   # the retraining of docs/other-materials.md (96 min; not shipped)
    python scripts/train_default_model.py --sample-only --overwrite
    python scripts/train_default_model.py --rechoose --out runs/generalist --workdir runs/generalist-work \
        --simulator mixed --images 320   # the post-processing only, on a trained bundle
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "python" / "particleseg" / "data" / "sample_sem.tif"
SIM_SIZE = (512, 512)
PARTICLE_SIZE_RANGE = (14.0, 44.0)  # median ECD per image, pixels
SAMPLE_PIXEL_SIZE_NM = 7.35
# chosen on the TiO2 training split by choose_detection_on_tio2 for the shipped model
TIO2_TRAIN_DETECTION = {"threshold": 0.5, "min_confidence": 0.925}
#: The watershed seeds of the shipped model: peaks of the distance map 0.15 deep above 0.1. Chosen
#: on the calibration half of the EMPS development set (benchmarks/bench_emps.py, F1 at IoU 0.5)
#: among three: the seed level of the simulated images (0.5, depth 0: F1 0.673), the peaks the
#: TiO2 training split prefers (depth 0.05: 0.603) and these (0.722); docs/other-materials.md.
DEFAULT_SEEDS = {"seed_threshold": 0.1, "seed_depth": 0.15}


def simulated_set(n: int, seed: int, workdir: Path, simulator: str = "sem", workers: int = 1):
    """``n`` simulated images and label images, cached as a .npz keyed by n and seed.

    ``simulator`` ``sem``: :func:`particleseg.simulate.simulate_sem_image` (TiO2-like SEM);
    ``mixed``: every other image from :func:`particleseg.simulate.simulate_micrograph`
    (shapes, SEM and inverted TEM contrast, annotations), the others as ``sem``. ``workers``
    processes simulate them; each image depends on its seed alone, so the set does not depend
    on their number.
    """
    import functools

    from tqdm.auto import tqdm

    from particleseg.simulate import simulate_training_pair
    from particleseg.workers import map_in_processes

    cache = workdir / (f"sim-{n}-{seed}.npz" if simulator == "sem" else f"sim-{simulator}-{n}-{seed}.npz")
    if cache.exists():
        d = np.load(cache)
        return list(d["images"]), list(d["labels"])
    one = functools.partial(
        simulate_training_pair, seed=seed, shape=SIM_SIZE, particle_size_range=PARTICLE_SIZE_RANGE, simulator=simulator
    )
    pairs = list(tqdm(map_in_processes(one, range(n), workers), total=n, desc="simulating", unit="image"))
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(".tmp-" + cache.name)
    with open(tmp, "wb") as fh:  # (not compressed: zlib would take longer than a GPU's training)
        np.savez(fh, images=np.stack(images), labels=np.stack(labels))
    os.replace(tmp, cache)
    return images, labels


def choose_postprocess(model, images, labels, heads):
    """Choose the threshold and seed level that maximise the instance IoU on simulated validation images.

    Never on real data.
    """
    from particleseg.inference import predict_tiled
    from particleseg.models import keras_predictor
    from particleseg.train import validation_scores

    predict = keras_predictor(model)
    probs = [predict_tiled(predict, im, tile=512, overlap=32, multiple_of=16, progress=False) for im in images]
    # no merge of touching particles: on real images it harms a network trained on simulated
    # ones (docs/training.md), whatever the simulated images say
    post, scores = validation_scores(probs, labels, heads, thresholds=(0.4, 0.5, 0.6), merge_levels=())
    return post, scores["instance_iou"]


def choose_detection_on_tio2(bundle, seed_threshold: float, seed_depth: float = 0.0):
    """Choose the threshold and ``min_confidence`` on the TiO2 *training* split.

    They maximise the mean of foreground IoU and instance IoU, with the given seeds; ``None``
    when the data is absent.
    """
    import itertools

    import tifffile

    from particleseg import metrics
    from particleseg.datasets import TIO2_CROP_ROWS, tio2_items, tio2_root
    from particleseg.pipeline import SegmentParams, particles_from_probabilities, segment_image
    from particleseg.postprocess import label_mask

    if not (tio2_root() / "images").is_dir():
        return None
    cases = []
    for item in tio2_items(split="train"):
        image = tifffile.imread(item.image)[:TIO2_CROP_ROWS]
        truth = label_mask(tifffile.imread(item.mask)[:TIO2_CROP_ROWS] > 0)
        seg = segment_image(image, bundle, SegmentParams(crop_rows=0, progress=False))
        cases.append((seg.probabilities, truth))
    best = None
    for thr, conf in itertools.product((0.5, 0.6), (0.0, 0.85, 0.9, 0.925, 0.95)):
        params = SegmentParams(
            threshold=thr, min_confidence=conf, seed_level=seed_threshold, seed_depth=seed_depth
        ).resolved(bundle)
        scores = []
        for prob, truth in cases:
            pred = particles_from_probabilities(prob, bundle.heads, params)
            scores.append(
                0.5 * (metrics.foreground_iou(pred > 0, truth > 0) + metrics.instance_iou(pred, truth, average="truth"))
            )
        if best is None or np.mean(scores) > best[0]:
            best = (float(np.mean(scores)), {"threshold": thr, "min_confidence": conf})
    return best[1]


def record_detection(out: Path, meta: dict):
    """Choose the detection settings on the TiO2 training split, write them into the bundle ``out``.

    ``meta`` is the bundle's metadata; the seeds are :data:`DEFAULT_SEEDS`.
    """
    from particleseg.models import load_bundle, write_metadata

    meta["postprocess"].update(DEFAULT_SEEDS)
    write_metadata(out, meta)  # the network's output depends on them (the scale passes count particles)
    detection = choose_detection_on_tio2(load_bundle(out), DEFAULT_SEEDS["seed_threshold"], DEFAULT_SEEDS["seed_depth"])
    source = "TiO2 training split"
    if detection is None:
        detection, source = TIO2_TRAIN_DETECTION, "recorded values (TiO2 data absent)"
    meta["postprocess"].update(detection)
    meta["training"]["postprocess_choice"] = (
        f"seeds: seed_threshold {DEFAULT_SEEDS['seed_threshold']} and seed_depth {DEFAULT_SEEDS['seed_depth']} "
        "chosen on the calibration half of the EMPS development set (F1 at IoU 0.5); threshold and min_confidence "
        f"on the {source} (24 real TiO2 images, maximum of mean foreground and instance IoU)"
    )
    write_metadata(out, meta)


def record_simulated_choice(out: Path, meta: dict, post: dict, sim_iou: float, note: str = ""):
    """Write what the simulated validation images chose (a record: the bundle keeps its seeds) and their score."""
    from particleseg.models import load_bundle, write_metadata

    meta["metrics"]["simulated_validation_instance_iou"] = round(sim_iou, 4)
    meta["training"]["postprocess_choice"] += (
        f"; the simulated validation images chose seed_threshold {post['seed_threshold']} and seed_depth "
        f"{post.get('seed_depth', 0.0)}"
    )
    meta["training"]["command"] = meta["training"]["command"].replace(note, "") + note
    write_metadata(out, meta)
    bundle = load_bundle(out)
    print(f"{out}: post-processing {bundle.postprocess}")
    return bundle


def make_sample(path: Path, overwrite: bool) -> None:
    """Write a 1024x768 simulated SEM image with a data bar, calibrated 7.35 nm/pixel (ImageJ metadata)."""
    from PIL import Image, ImageDraw

    from particleseg.io import Calibration, write_tiff
    from particleseg.simulate import simulate_sem_image

    sim = simulate_sem_image((712, 1024), np.random.default_rng(20261123), particle_size=26.0, coverage=0.16)
    bar = Image.new("L", (1024, 56), 0)
    draw = ImageDraw.Draw(bar)
    draw.text((12, 8), "particleseg simulated SEM", fill=255)
    draw.text(
        (12, 30),
        f"Width = {1024 * SAMPLE_PIXEL_SIZE_NM / 1000:.3f} um    Mag = 50.00 K X    Signal A = InLens",
        fill=255,
    )
    draw.rectangle((880, 30, 880 + int(round(200 / SAMPLE_PIXEL_SIZE_NM)), 33), fill=255)
    draw.text((890, 10), "200 nm", fill=255)
    image = np.concatenate([sim.image, np.asarray(bar)], axis=0)
    write_tiff(path, image, Calibration(SAMPLE_PIXEL_SIZE_NM, "nm"), overwrite=overwrite)


def main(argv=None) -> int:
    """Train and write the default bundle; with ``--sample-only`` only write the sample image."""
    from particleseg.simulate import SIMULATORS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "default-model")
    ap.add_argument("--images", type=int, default=400, help="simulated 512x512 training images")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--steps", type=int, default=30, help="batches per epoch")
    ap.add_argument("--batch-size", type=int, default=8, help="tiles of 256x256 per batch")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that simulate the images, make the targets and cut the batches (1: as before, two "
        "threads cut the batches); for a GPU. The result does not depend on it",
    )
    ap.add_argument(
        "--val-images",
        type=int,
        help="simulated images held out for validation and the post-processing choice (default: 5 %%, at least 2)",
    )
    ap.add_argument("--base-filters", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--simulator",
        choices=SIMULATORS,
        default="sem",
        help="sem: TiO2-like SEM images; mixed: half of them other shapes, TEM contrast, annotations; "
        "mixed-outlines: as mixed, with faint particle-sized outlines in the SEM images' backgrounds "
        "(benchmarks/bench_ghost_outlines.py); mixed-outlines-apart: as mixed-outlines, only outlines "
        "more than 3 px from every particle",
    )
    ap.add_argument("--init", type=Path, help="start from this bundle's weights (fine-tuning)")
    ap.add_argument("--learning-rate", type=float, default=1e-3)
    ap.add_argument(
        "--recipe",
        choices=("step", "finetune"),
        default="step",
        help="step: step decay, class-balanced cross-entropy, the best epoch by validation loss; finetune: the "
        "recipe of `particleseg train` (cosine schedule, encoder frozen for the first tenth, + Dice, U-Net border "
        "weights w0 = 10, the best epoch of the plan's second half by the instance IoU of the simulated "
        "validation images)",
    )
    ap.add_argument(
        "--minutes",
        type=float,
        help="plan the epochs to fit this budget (replaces --epochs); the simulation before training and the "
        "post-processing choices after it come on top (on the H200, 3000 images: about 160 s before the first batch)",
    )
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--evaluate", action="store_true", help="also score the result on the TiO2 data (if present)")
    ap.add_argument("--sample-only", action="store_true", help="only regenerate the sample image")
    ap.add_argument(
        "--rechoose",
        action="store_true",
        help="only choose the post-processing of the bundle in --out again (on the simulated validation images "
        "of --workdir, made with the same --images, --seed and --simulator, then on the TiO2 training split)",
    )
    args = ap.parse_args(argv)

    if args.sample_only:
        make_sample(SAMPLE, args.overwrite)
        print(f"wrote {SAMPLE}")
        return 0

    from particleseg.models import Head, NetworkConfig, load_bundle, make_metadata, save_bundle
    from particleseg.preprocess import normalize_percentile
    from particleseg.train import Augmentation, TrainConfig, fit

    t0 = time.time()
    images, labels = simulated_set(args.images, args.seed, args.workdir, args.simulator, args.workers)
    norm = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}
    x = [normalize_percentile(im, norm["low"], norm["high"], tuple(norm["clip"]))[..., None] for im in images]
    n_val = args.val_images or max(2, len(x) // 20)
    if args.rechoose:
        bundle = load_bundle(args.out)
        meta = bundle.metadata
        post, sim_iou = choose_postprocess(bundle.model, x[-n_val:], labels[-n_val:], bundle.heads)
        record_detection(args.out, meta)
        record_simulated_choice(args.out, meta, post, sim_iou, " (post-processing chosen again with --rechoose)")
        return 0
    finetune = args.recipe == "finetune"
    config = TrainConfig(
        network=NetworkConfig(
            args.arch, heads=(Head("foreground"), Head("distance")), depth=args.depth, base_filters=args.base_filters
        ),
        tile=256,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        validation_steps=10,
        learning_rate=args.learning_rate,
        lr_step_epochs=max(1, args.epochs // 3),
        lr_step_factor=0.3,
        schedule="cosine" if finetune else "step",
        freeze_epochs=-1 if finetune else 0,
        select="val_score" if finetune else "val_loss",
        dice=finetune,
        separation_weight=10.0 if finetune else 0.0,
        patience=0,
        select_from=0.5 if finetune else 0.0,
        seed=args.seed,
        jit_compile=None,  # Keras decides: XLA on a GPU, not on a CPU (faster or slower by machine: docs/training.md)
        loader_processes=args.workers if args.workers > 1 else 0,
        augmentation=Augmentation(brightness=0.1, contrast=0.25, gamma=0.4, noise=0.04, elastic=0.0),
    )
    initial_bundle = load_bundle(args.init) if args.init else None
    score = None
    if finetune:
        from particleseg.train import TrainingItem, epoch_score

        # the instance IoU of the simulated validation images, with the initial bundle's seeds
        post = {**(initial_bundle.postprocess if initial_bundle else {}), **DEFAULT_SEEDS, "min_area": 15}
        items = [TrainingItem(f"val{i}", im, lab) for i, (im, lab) in enumerate(zip(x[-n_val:], labels[-n_val:]))]
        score = epoch_score(items, config.network, post, tile=512, overlap=112)
    model, log = fit(
        x[:-n_val],
        labels[:-n_val],
        x[-n_val:],
        labels[-n_val:],
        config,
        args.workdir / "train",
        initial_weights=initial_bundle.model.get_weights() if initial_bundle else None,
        score=score,
        minutes=args.minutes,
    )
    heads = [h.kind for h in config.network.heads]
    minutes = (time.time() - t0) / 60
    meta = make_metadata(
        "default",
        config.network,
        description=(
            "Bright particles on a dark background (SEM secondary electrons); trained on simulated images only."
            if args.simulator == "sem"
            else "Particles of many shapes in SEM and TEM images (dark particles are inverted to bright by the "
            "pipeline); trained on simulated images only."
        ),
        channels=["SEM secondary electrons" if args.simulator == "sem" else "electron micrograph (SEM or TEM)"],
        normalization=norm,
        tile=2048,
        overlap=112,
        particle_size_px=float(np.sqrt(np.prod(PARTICLE_SIZE_RANGE))),
        polarity="bright",
        particle_size_range_px=PARTICLE_SIZE_RANGE,
        postprocess={**DEFAULT_SEEDS, **TIO2_TRAIN_DETECTION, "min_area": 15},  # until chosen below
        training={
            "data": (
                f"{args.images} simulated 512x512 images (simulator {args.simulator!r}: "
                + (
                    "particleseg.simulate.simulate_sem_image"
                    if args.simulator == "sem"
                    else "every other image particleseg.simulate.simulate_micrograph, the others simulate_sem_image"
                    + (" with faint outlines in the background" if args.simulator.startswith("mixed-outlines") else "")
                    + (", more than 3 px from every particle" if args.simulator == "mixed-outlines-apart" else "")
                )
                + f", seeds [{args.seed}, i]), median particle diameter {PARTICLE_SIZE_RANGE[0]:g}-"
                f"{PARTICLE_SIZE_RANGE[1]:g} px, {n_val} held out for validation"
                + (f"; started from the weights of {args.init}" if args.init else "")
            ),
            "command": "python scripts/train_default_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "config": config.to_dict(),
            "epochs_run": len(log),
            "minutes": round(minutes, 1),
        },
        metrics={
            "final_loss": log[-1].get("loss") if log else None,
            "final_val_loss": log[-1].get("val_loss") if log else None,
        },
    )
    # saved before the choices: a run stopped during them (a GPU lease's limit) keeps its network,
    # and --rechoose makes them again
    save_bundle(args.out, model, meta, overwrite=args.overwrite, zip_copy=False)
    record_detection(args.out, meta)
    post, sim_iou = choose_postprocess(model, x[-n_val:], labels[-n_val:], heads)
    bundle = record_simulated_choice(args.out, meta, post, sim_iou)
    print(f"saved {args.out} in {minutes:.1f} min; simulated instance IoU {sim_iou:.3f}")
    if args.evaluate:
        from particleseg.datasets import evaluate_tio2, tio2_root

        if (tio2_root() / "images").is_dir():
            for split in ("train", "validation", "all"):
                df = evaluate_tio2(bundle, split)
                print(
                    f"TiO2 {split:10s}: foreground IoU {df.foreground_iou.mean():.4f}, "
                    f"instance IoU {df.instance_iou.mean():.4f} (pred-averaged {df.instance_iou_pred.mean():.4f}), "
                    f"F1@0.5 {df.f1_iou50.mean():.4f}"
                )
        else:
            print("TiO2 data not found; skipped the evaluation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
