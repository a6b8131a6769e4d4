"""Training the particle classifier that keeps or rejects segmented particles (on keep masks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..inference import predict_tiled
from ..measure import measure_particles
from ..models import Head, NetworkConfig, keras_predictor
from ..pipeline import particles_from_probabilities
from ..postprocess import particle_scores
from .augment import Augmentation
from .data import TrainingItem
from .loop import TrainConfig, _EtaCallback, _progress_callback, _workdir_config, fit
from .scores import post_params


def train_classifier(
    train_items: Sequence[TrainingItem],
    val_items: Sequence[TrainingItem],
    workdir: str | os.PathLike,
    *,
    network=None,
    tile: int = 256,
    batch_size: int = 8,
    epochs: int = 30,
    steps_per_epoch: int = 50,
    validation_steps: int = 10,
    learning_rate: float = 1e-3,
    seed: int = 0,
    resume: bool = True,
    progress: bool | Callable = True,
    normalization: dict | None = None,
    jit_compile: bool | None = None,
    minutes: float | None = None,
):
    """Train the particle classifier: which annotated particles an expert kept.

    Its input is what :func:`particleseg.pipeline.classifier_map` gives it: the normalised
    image and the particle mask as two channels; its target is the mask of the kept
    particles (the items' ``keep`` labels), so its output is the probability that a pixel
    belongs to a particle worth keeping. The pipeline scores each particle by the mean of
    its pixels and keeps those at or above the threshold. Intensity augmentation changes the
    image channel only.

    Returns
    -------
    model : keras.Model
    metadata : dict
        ``network``, ``threshold`` (chosen by :func:`choose_classifier_threshold` on the
        validation particles) and validation ``metrics`` (particle accuracy and balanced
        accuracy at that threshold), for ``bundle.json``'s ``classifier`` entry.
    """
    for it in list(train_items) + list(val_items):
        if it.keep is None:
            raise InputError(f"{it.name}: no keep mask for this image")
        if it.image.shape[-1] != 1:
            raise InputError(f"{it.name}: the particle classifier takes gray images (one channel)")
        if ((it.keep > 0) & (it.labels == 0)).mean() > 0.01:
            raise InputError(
                f"{it.name}: its keep mask marks pixels outside the particles of its mask "
                "(keep masks must be subsets of the masks)"
            )
    network = network or NetworkConfig("unet", 2, (Head("foreground"),), depth=3, base_filters=8)

    config = TrainConfig(
        network=network,
        tile=tile,
        batch_size=batch_size,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        learning_rate=learning_rate,
        lr_step_epochs=max(1, epochs // 3),
        patience=0,
        seed=seed + 1,
        jit_compile=jit_compile,
        augmentation=Augmentation(intensity_channels=(0,)),
    )
    workdir = Path(workdir)
    _workdir_config(workdir, {"config": config.to_dict(), "images": [it.name for it in train_items]}, resume)
    callbacks = [_progress_callback(progress, epochs, workdir / "plan.json")] if callable(progress) else []
    if progress is True:
        callbacks.append(_EtaCallback(workdir / "plan.json", "classifier"))
    model, log = fit(
        [_classifier_input(it) for it in train_items],
        [it.keep for it in train_items],
        [_classifier_input(it) for it in val_items],
        [it.keep for it in val_items],
        config,
        workdir,
        resume=resume,
        verbose=1 if progress is True else 0,
        callbacks=callbacks,
        minutes=minutes,
    )
    scores, kept = classifier_particle_scores(model, val_items, network, tile=max(256, tile))
    threshold = choose_classifier_threshold(scores, kept)
    decided = scores >= threshold
    meta = {
        "threshold": threshold,
        "network": network.to_dict(),
        "metrics": {
            "validation_particle_accuracy": round(float((decided == kept).mean()), 4) if len(kept) else None,
            "validation_balanced_accuracy": round(balanced_accuracy(decided, kept), 4) if len(kept) else None,
            "validation_particles": int(len(kept)),
            "epochs_run": len(log),
        },
        "threshold_chosen_by": "best balanced accuracy on the validation images of the training run",
        "input": ["normalised image", "particle mask (0/1)"],
    }
    return model, meta


#: how :func:`choose_min_score` chooses (recorded in a bundle's ``classifier.threshold_chosen_by``)
MIN_SCORE_RULE = (
    "the threshold (0 to 0.95 in steps of 0.05; 0 keeps every particle) whose kept particles on the "
    "validation images have the minimum-Feret distribution closest to the expert's keep masks "
    "(Kolmogorov-Smirnov distance)"
)


def choose_min_score(
    classifier,
    network,
    probs: Sequence[np.ndarray],
    items: Sequence[TrainingItem],
    post: dict,
    tile: int = 512,
    classifier_multiple_of: int = 8,
    grid: Sequence[float] = (0.0,) + tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)),
) -> tuple[float, dict]:
    """Choose the classifier threshold whose kept particles have the size distribution of the expert's.

    The classifier exists for size statistics, so its threshold is judged by them: the
    network's particles on the validation ``items`` (from ``probs`` with the post-processing
    ``post``; particles touching the border left out, as ``segment`` leaves them out) are kept
    when their classifier score reaches the threshold, and the threshold of ``grid`` whose kept
    particles' minimum Feret diameters are closest to those of the expert's keep masks
    (Kolmogorov-Smirnov distance) wins; 0 keeps every particle. Ties go to the lower threshold.

    Returns the threshold and a small table (threshold -> KS distance, particles kept).
    """
    from scipy.stats import ks_2samp  # slow to import (1-2 s), needed here alone (docs/architecture.md)

    heads = [h.kind for h in network.heads]
    params = post_params(post)
    predict = keras_predictor(classifier)
    ours, scores, expert = [], [], []
    for prob, it in zip(probs, items):
        if it.keep is None:
            continue
        labels = particles_from_probabilities(prob, heads, params)
        table = measure_particles(labels)
        if len(table):
            inside = ~table["touches_border"].to_numpy()
            x = np.concatenate([it.image, (labels > 0).astype(np.float32)[..., None]], -1)
            out = predict_tiled(predict, x, tile=tile, overlap=16, multiple_of=classifier_multiple_of, progress=False)[
                ..., 0
            ]
            ours.append(table["MinFeret"].to_numpy(float)[inside])
            scores.append(particle_scores(labels, out)[1][inside])
        expert.append(measure_particles(it.keep)["MinFeret"].to_numpy(float))
    if not ours or not expert or not len(np.concatenate(expert)):
        return 0.0, {}
    ours, scores, expert = np.concatenate(ours), np.concatenate(scores), np.concatenate(expert)
    rows = {}
    for t in grid:
        kept = ours[scores >= t]
        rows[float(t)] = (round(float(ks_2samp(kept, expert).statistic), 4) if len(kept) else 1.0, int(len(kept)))
    best = min(rows, key=lambda t: (rows[t][0], t))
    return best, {"expert_particles": int(len(expert)), "ks_and_kept": {f"{t:g}": list(v) for t, v in rows.items()}}


def _classifier_input(item: TrainingItem) -> np.ndarray:
    """Stack the classifier's two input channels: the normalised image and the particle mask."""
    return np.concatenate([item.image, (item.labels > 0).astype(np.float32)[..., None]], -1)


def classifier_particle_scores(model, items: Sequence[TrainingItem], network, tile: int = 256):
    """Each annotated particle's classifier score and the expert's decision, over ``items``.

    The score is the mean of the classifier's output over the particle (as
    :func:`particleseg.pipeline.classifier_map` and the pipeline score it); the expert kept a
    particle when most of it lies in the keep mask.

    Returns
    -------
    scores : ndarray of float
    kept : ndarray of bool
    """
    predict = keras_predictor(model)
    scores, kept = [], []
    for it in items:
        out = predict_tiled(
            predict, _classifier_input(it), tile=tile, overlap=16, multiple_of=network.multiple_of, progress=False
        )[..., 0]
        ids, s = particle_scores(it.labels, out)
        if len(ids):
            scores.append(s)
            kept.append(particle_scores(it.labels, (it.keep > 0).astype(float))[1] > 0.5)
    return (np.concatenate(scores) if scores else np.zeros(0), np.concatenate(kept) if kept else np.zeros(0, bool))


def balanced_accuracy(decided: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates.

    A class absent from ``truth`` is left out, so that a rule keeping everything scores 0.5
    whatever the share of kept particles.
    """
    rates = [float((decided[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def choose_classifier_threshold(
    scores: np.ndarray, kept: np.ndarray, grid: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
) -> float:
    """Choose the classifier threshold of ``grid`` with the best balanced accuracy on validation particles.

    A network's mean score per particle need not be calibrated around 0.5 (on the TiO2 keep
    masks a short training put nearly every particle above 0.5 while ranking them well), so the
    bundle stores the threshold that separates the validation particles best. Ties go to the
    threshold nearest 0.5; 0.5 when the validation particles hold only one class.
    """
    scores, kept = np.asarray(scores, float), np.asarray(kept, bool)
    if kept.all() or not kept.any():
        return 0.5
    best = max(grid, key=lambda t: (round(balanced_accuracy(scores >= t, kept), 6), -abs(t - 0.5)))
    return float(best)
