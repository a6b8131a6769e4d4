"""Training a phase-segmentation network from a few annotated slices, and its bundle metadata.

:func:`train_phases` runs the package's one fit loop (:func:`particleseg.train.fit_targets`) on
the network inputs of the annotated slices, with part held out for validation and independent
slices for evaluation (:func:`~particleseg.fibsem.metrics.phase_metrics`, per phase).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..models import Head, NetworkConfig, keras_predictor, make_metadata
from ..train import Augmentation, TrainConfig, fit_targets, make_loss, make_targets
from .inputs import InputBuilder, input_names, stack_normalization
from .metrics import phase_metrics
from .predict import predict_slice
from .stacks import Stack


@dataclass
class PhaseTrainConfig:
    """Settings of a phase-segmentation training run (stored in the bundle's metadata)."""

    context: int = 1
    architecture: str = "unet"
    depth: int = 3
    base_filters: int = 8
    normalization: str = "batch"
    tile: int = 128
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int = 40
    validation_steps: int = 8
    learning_rate: float = 2e-3
    lr_step_epochs: int = 8
    lr_step_factor: float = 0.5
    val_fraction: float = 0.2  # rows held out at the bottom of each training slice (without val slices)
    patience: int = 0
    seed: int = 0
    percentiles: tuple[float, float] = (1.0, 99.8)
    augment: bool = True

    def to_dict(self) -> dict:
        """Return the settings as a plain dictionary (for the bundle's metadata)."""
        return asdict(self)


def _targets(labels: np.ndarray, heads) -> np.ndarray:
    """One-hot targets of phases 1..K.

    Unannotated pixels (0) get all-zero targets, so they add nothing to the categorical
    cross-entropy.
    """
    k = heads[0].channels
    t = make_targets(labels, heads, classes=np.clip(labels - 1, 0, k - 1))
    return (t * ((labels > 0) & (labels <= k))[..., None]).astype(np.float32)


def train_phases(
    stack: Stack,
    annotations: dict[int, np.ndarray],
    classes: Sequence[str],
    config: PhaseTrainConfig,
    workdir: str | os.PathLike,
    train_slices: Sequence[int] | None = None,
    val_slices: Sequence[int] | None = None,
    eval_slices: Sequence[int] | None = None,
    verbose: int = 2,
):
    """Train a phase-segmentation network from a few annotated slices.

    Parameters
    ----------
    stack : Stack
    annotations : dict
        Slice index -> ``(Y, X)`` labels (0 = not annotated, phases ``1..K``).
    classes : list of str
        Phase names, ``K`` of them.
    train_slices, val_slices, eval_slices : lists of int, optional
        Default: the last annotated slice is the independent evaluation slice (with at least
        two annotated slices), the others train; without ``val_slices`` the bottom
        ``config.val_fraction`` of the rows of every training slice is held out for validation.

    Returns
    -------
    model, log (list of dicts per epoch), evaluation (dict: slice -> :func:`phase_metrics`, and
    ``"all"`` over the evaluation slices), split (the slices used for each part), normalization
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    annotated = sorted(annotations)
    if not annotated:
        raise InputError("no annotated slices")
    if eval_slices is None:
        eval_slices = [annotated[-1]] if len(annotated) > 1 else []
    if val_slices is None:
        val_slices = []
    if train_slices is None:
        train_slices = [z for z in annotated if z not in eval_slices and z not in val_slices]
    for name, zs in (("training", train_slices), ("validation", val_slices), ("evaluation", eval_slices)):
        for z in zs:
            if z not in annotations:
                raise InputError(f"{name} slice {z} is not annotated (annotated: {', '.join(map(str, annotated))})")
    if set(train_slices) & set(eval_slices):
        raise InputError(
            f"slice(s) {sorted(set(train_slices) & set(eval_slices))} used for training and evaluation; "
            "the evaluation slice must be independent"
        )
    if not train_slices:
        raise InputError("no training slice left (annotate more slices, or name them with --train-slices)")
    k = len(classes)
    top = max(int(a.max()) for a in annotations.values())
    if top > k:
        raise InputError(f"annotations hold phase {top} but only {k} phase names are given ({', '.join(classes)})")

    norm = stack_normalization(stack, *config.percentiles)
    builder = InputBuilder(stack, config.context, norm)
    net = NetworkConfig(
        config.architecture,
        stack.n_channels * (2 * config.context + 1),
        (Head("classes", k, "softmax"),),
        depth=config.depth,
        base_filters=config.base_filters,
        normalization=config.normalization,
    )
    m = net.multiple_of
    tile = min(config.tile, (min(stack.shape) // m) * m)
    if tile < m:
        raise InputError(f"slices of {stack.shape[0]}x{stack.shape[1]} are smaller than the network's {m}-pixel grid")
    train_x, train_y, val_x, val_y = [], [], [], []
    for z in train_slices:
        x, y = builder(z), _targets(annotations[z], net.heads)
        if val_slices:
            train_x.append(x)
            train_y.append(y)
        else:
            cut = int(round(x.shape[0] * (1 - config.val_fraction)))
            vt = min(tile, ((x.shape[0] - cut) // m) * m)
            if vt < m or cut < tile:
                raise InputError(
                    f"slice {z}: {x.shape[0]} rows are too few to hold out {config.val_fraction:.0%} for "
                    f"validation with {tile}-pixel tiles; name validation slices with --val-slices"
                )
            train_x.append(x[:cut])
            train_y.append(y[:cut])
            val_x.append(x[cut:])
            val_y.append(y[cut:])
    for z in val_slices:
        val_x.append(builder(z))
        val_y.append(_targets(annotations[z], net.heads))
    val_tile = min(tile, min((v.shape[0] // m) * m for v in val_x), min((v.shape[1] // m) * m for v in val_x))

    # the package's one fit loop (particleseg.train.fit_targets): the phase targets leave the
    # unannotated pixels out of the loss, the batch statistics are recalibrated before each
    # validation; a fresh run each time (resume=False), as the workflow was written
    loop = TrainConfig(
        network=net,
        tile=tile,
        batch_size=config.batch_size,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_steps=config.validation_steps,
        learning_rate=config.learning_rate,
        lr_step_epochs=config.lr_step_epochs,
        lr_step_factor=config.lr_step_factor,
        schedule="step",
        select="val_loss",
        class_balance=False,
        patience=config.patience,
        seed=config.seed,
        jit_compile=False,
        augmentation=Augmentation(brightness=0.05, contrast=0.1, gamma=0.0, noise=0.0) if config.augment else None,
    )
    model, log = fit_targets(
        train_x,
        train_y,
        val_x,
        val_y,
        make_loss(net.heads),
        loop,
        workdir,
        resume=False,
        verbose=verbose,
        callbacks=[_recalibration_callback(train_x, tile, config.seed)],
        val_tile=val_tile,
    )
    recalibrate_batchnorm(model, train_x, tile, seed=config.seed)

    evaluation = {}
    if eval_slices:
        predict = keras_predictor(model)
        preds, truths = [], []
        for z in eval_slices:
            pred = predict_slice(predict, builder(z), tile=max(tile, 256), overlap=min(32, tile // 4), multiple_of=m)
            evaluation[z] = phase_metrics(pred, annotations[z], classes)
            preds.append(pred.ravel())
            truths.append(annotations[z].ravel())
        evaluation["all"] = phase_metrics(np.concatenate(preds), np.concatenate(truths), classes)
    split = {
        "train": list(map(int, train_slices)),
        "validation": list(map(int, val_slices)) or f"bottom {config.val_fraction:.0%} of the training slices",
        "evaluation": list(map(int, eval_slices)),
    }
    return model, log, evaluation, split, norm


def recalibrate_batchnorm(model, images: Sequence[np.ndarray], tile: int, n_tiles: int = 32, seed: int = 0):
    """Set the moving statistics of every batch-normalisation layer to those of training crops.

    The moving mean and variance become the statistics of one batch of ``n_tiles`` random
    ``tile x tile`` crops of the training inputs.

    Keras keeps exponential moving averages (momentum 0.99) for inference. After the few hundred
    steps of a training from a few slices they still lag far behind the trained weights, and the
    network predicts much worse at inference than in training (on simulated stacks: mean IoU
    0.44 instead of 0.87 after 90 steps). One pass with momentum 0 replaces them by the
    statistics of the training data [1]_.

    Parameters
    ----------
    model : keras.Model
    images : list of (Y, X, C) float32
        Network inputs (at least ``tile`` pixels in each direction).
    tile : int
        Crop size (a multiple of the network's grid).

    Returns
    -------
    model (changed in place)

    References
    ----------
    .. [1] S. Ioffe, C. Szegedy, "Batch normalization: accelerating deep network training by
           reducing internal covariate shift", ICML (2015), section 3.1 (population statistics).
    """
    import keras  # heavy framework: imported when a network is recalibrated

    bns = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not bns or not len(images):
        return model
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n_tiles):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        th, tw = min(tile, h), min(tile, w)
        y0, x0 = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        crops.append(img[y0 : y0 + th, x0 : x0 + tw])
    if len({c.shape for c in crops}) > 1:  # images smaller than the tile in different ways
        th, tw = min(c.shape[0] for c in crops), min(c.shape[1] for c in crops)
        crops = [c[:th, :tw] for c in crops]
    momenta = [layer.momentum for layer in bns]
    try:
        for layer in bns:
            layer.momentum = 0.0
        model(np.stack(crops).astype(np.float32), training=True)
    finally:
        for layer, m in zip(bns, momenta):
            layer.momentum = m
    return model


def _recalibration_callback(images, tile: int, seed: int):
    """Make a Keras callback that runs :func:`recalibrate_batchnorm` before every validation.

    So the validation loss (and the checkpoint chosen by it) reflects the network as it will
    predict.
    """
    import keras  # heavy framework: imported when a network is trained

    class Recalibrate(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            recalibrate_batchnorm(self.model, images, tile, seed=seed)

    return Recalibrate()


def make_phase_metadata(
    name: str,
    network,
    config: PhaseTrainConfig,
    channel_names: Sequence[str],
    classes: Sequence[str],
    evaluation: dict | None = None,
    split: dict | None = None,
    description: str = "",
) -> dict:
    """Bundle metadata of a phase-segmentation network.

    ``metadata["fibsem"]`` holds the context ``k``, the channel names of one slice and the phase
    names.
    """
    meta = make_metadata(
        name,
        network,
        description=description or "FIB-SEM phase segmentation (softmax over phases)",
        channels=input_names(channel_names, config.context),
        normalization={
            "method": "percentile",
            "low": config.percentiles[0],
            "high": config.percentiles[1],
            "clip": [-0.5, 1.5],
            "per": "stack",
        },
        tile=256,
        overlap=32,
        classes=list(classes),
        postprocess={"split": False},
        training={**config.to_dict()} | ({"split": split} if split else {}),
        metrics={"evaluation": {str(k): v for k, v in (evaluation or {}).items()}},
    )
    meta["fibsem"] = {
        "context": config.context,
        "channels": list(channel_names),
        "classes": list(classes),
        "label_values": "phases 1..K, 0 = not segmented",
    }
    return meta
