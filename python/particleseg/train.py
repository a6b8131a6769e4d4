"""Training segmentation networks: targets, augmentation, sampling, losses and the loop.

Training data are pairs of images and *instance label images* (0 background, one integer per
particle); binary masks with one-pixel lines between touching particles are labelled with
4-connectivity first (:func:`labels_from_mask`). Targets for each head of the network are made
from the labels (:func:`make_targets`), so one annotation serves every head.

Everything uses ``keras.ops`` and ``keras.utils.PyDataset``, so training runs on the
TensorFlow, JAX and PyTorch backends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .models.architectures import Head, NetworkConfig
from .postprocess import labels_to_mask

# --------------------------------------------------------------------------------------------
# targets


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """Instance labels of an annotation: label images pass through, binary masks are labelled
    with 4-connectivity so that one-pixel background lines separate touching particles."""
    from .postprocess import label_mask

    mask = np.asarray(mask)
    values = np.unique(mask)
    if len(values) <= 2:
        return label_mask(mask > values.min() if len(values) == 2 else mask > 0)
    if mask.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise ValueError("mask holds fractional values; expected a binary mask or a label image")
    return mask.astype(np.int32)


def normalized_distance(labels: np.ndarray) -> np.ndarray:
    """Distance of each particle pixel to its particle's border, divided by the particle's
    largest distance: 1 at the centre, falling towards 0 at the border, 0 in the background."""
    from skimage.segmentation import find_boundaries

    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    if labels.max() == 0:
        return out
    # distance to the nearest pixel that is background or another particle
    inner = (labels > 0) & ~find_boundaries(labels, mode="inner")
    d = ndi.distance_transform_edt(inner) + (labels > 0)
    dmax = ndi.maximum(d, labels, np.arange(1, labels.max() + 1))
    dmax = np.concatenate([[1.0], np.maximum(dmax, 1.0)])
    out = (d / dmax[labels]).astype(np.float32)
    out[labels == 0] = 0
    return out


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """Particle borders (including borders between touching particles), two pixels wide."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(labels, mode="thick").astype(np.float32)


def make_targets(labels: np.ndarray, heads: Sequence[Head], classes: np.ndarray | None = None) -> np.ndarray:
    """Stack the training target of each head: ``(Y, X, K)`` float32.

    ``foreground``: :func:`particleseg.postprocess.labels_to_mask` (4-neighbour lines, as
    annotated masks); ``distance``: :func:`normalized_distance`;
    ``boundary``: :func:`boundary_map`; ``classes``: one-hot of ``classes`` (a class-label image).
    """
    parts = []
    for head in heads:
        if head.kind == "foreground":
            # the annotators' convention: lines that separate particles for 4-connected labelling
            parts.append(labels_to_mask(labels, connectivity=1).astype(np.float32)[..., None])
        elif head.kind == "distance":
            parts.append(normalized_distance(labels)[..., None])
        elif head.kind == "boundary":
            parts.append(boundary_map(labels)[..., None])
        elif head.kind == "classes":
            if classes is None:
                raise ValueError("a classes head needs a class-label image")
            parts.append(np.eye(head.channels, dtype=np.float32)[np.clip(classes, 0, head.channels - 1)])
    return np.concatenate(parts, axis=-1)


# --------------------------------------------------------------------------------------------
# augmentation


@dataclass
class Augmentation:
    """Random changes applied to each training tile (image and target together where spatial).

    Intensity changes apply to the normalised image: ``brightness`` shifts by up to this much,
    ``contrast`` scales by up to this factor around the mean, ``gamma`` raises the (clipped)
    image to a power in ``[1/(1+gamma), 1+gamma]``, ``noise`` adds Gaussian noise with a
    standard deviation up to this. ``elastic`` is the displacement amplitude in pixels of a
    smooth random deformation (0 disables it; it costs a few milliseconds per tile).
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.3
    noise: float = 0.03
    elastic: float = 0.0
    elastic_sigma: float = 10.0
    intensity_channels: tuple[int, ...] | None = None  # channels the intensity changes apply to (None: all)

    def __call__(self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator):
        if self.flips:
            if rng.random() < 0.5:
                image, target = image[::-1], target[::-1]
            if rng.random() < 0.5:
                image, target = image[:, ::-1], target[:, ::-1]
        if self.rot90:
            k = int(rng.integers(4))
            image, target = np.rot90(image, k), np.rot90(target, k)
        if self.elastic > 0:
            image, target = _elastic(image, target, self.elastic, self.elastic_sigma, rng)
        full = np.array(image, np.float32)
        sel = None
        if self.intensity_channels is not None and full.ndim == 3:
            # e.g. the particle classifier: change the gray image, never its mask channel
            sel = [c for c in self.intensity_channels if c < full.shape[-1]]
            image = full[..., sel]
        else:
            image = full
        if self.contrast:
            m = image.mean()
            image = (image - m) * rng.uniform(1 - self.contrast, 1 + self.contrast) + m
        if self.brightness:
            image += rng.uniform(-self.brightness, self.brightness)
        if self.gamma:
            g = rng.uniform(1 / (1 + self.gamma), 1 + self.gamma)
            lo = image.min()
            span = max(image.max() - lo, 1e-6)
            image = ((image - lo) / span) ** g * span + lo
        if self.noise:
            image += rng.normal(0, rng.uniform(0, self.noise), image.shape).astype(np.float32)
        if sel is not None:
            full[..., sel] = image
            image = full
        return image, np.ascontiguousarray(target, np.float32)


def _elastic(image, target, alpha, sigma, rng):
    h, w = image.shape[:2]
    dy = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), sigma)
    dx = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), sigma)
    scale = alpha / max(np.abs(dy).max(), np.abs(dx).max(), 1e-6)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + dy * scale, xx + dx * scale]

    def warp(a, order):
        return np.stack([ndi.map_coordinates(a[..., c], coords, order=order, mode="reflect") for c in range(a.shape[-1])], -1)

    return warp(image, 1), warp(target, 1)


# --------------------------------------------------------------------------------------------
# sampling


def make_tile_sequence(images, targets, tile, batch_size, steps, augment, seed, shuffle=True):
    """A ``keras.utils.PyDataset`` of random tiles from large images.

    Tiles are drawn from image ``i`` with probability proportional to its area, at uniform
    positions; each epoch ``e`` and batch ``b`` use the seed ``(seed, e, b)``, so a run is
    reproducible and a resumed run sees the same batches. With ``shuffle=False`` (validation)
    the tiles are the same every epoch and not augmented.
    """
    import keras

    class TileSequence(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            areas = np.array([im.shape[0] * im.shape[1] for im in images], float)
            self.p = areas / areas.sum()

        def __len__(self):
            return steps

        def on_epoch_end(self):
            if shuffle:
                self.epoch += 1

        def __getitem__(self, b):
            rng = np.random.default_rng([seed, self.epoch if shuffle else 0, b])
            xs, ys = [], []
            for _ in range(batch_size):
                i = rng.choice(len(images), p=self.p)
                im, tg = images[i], targets[i]
                y0 = int(rng.integers(0, im.shape[0] - tile + 1))
                x0 = int(rng.integers(0, im.shape[1] - tile + 1))
                x, y = im[y0:y0 + tile, x0:x0 + tile], tg[y0:y0 + tile, x0:x0 + tile]
                if shuffle and augment is not None:
                    x, y = augment(x, y, rng)
                xs.append(x)
                ys.append(y)
            return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)

    return TileSequence()


# --------------------------------------------------------------------------------------------
# losses


def make_loss(heads: Sequence[Head], foreground_fraction: float | None = None, dice: bool = False,
              head_weights: Sequence[float] | None = None) -> Callable:
    """Loss over all heads of a network's concatenated output.

    Sigmoid heads use binary cross-entropy (with soft targets for ``distance``); the
    ``foreground`` head is class-balanced: with a foreground fraction ``f`` in the training
    data, foreground pixels weigh ``0.5/f`` and background pixels ``0.5/(1-f)``, so both
    classes contribute equally [1]_. ``dice`` adds the soft Dice loss of the foreground.
    ``classes`` heads use categorical cross-entropy.

    References
    ----------
    .. [1] O. Ronneberger et al., "U-Net", MICCAI 2015 (pixel-wise loss weights).
    """
    from keras import ops

    weights = list(head_weights or [1.0] * len(heads))
    offsets = np.cumsum([0] + [h.channels for h in heads])
    f = float(np.clip(foreground_fraction, 0.01, 0.99)) if foreground_fraction else None

    def loss(y_true, y_pred):
        total = 0.0
        eps = 1e-6
        for head, wgt, a, b in zip(heads, weights, offsets[:-1], offsets[1:]):
            t, p = y_true[..., a:b], ops.clip(y_pred[..., a:b], eps, 1 - eps)
            if head.kind == "classes":
                term = -ops.mean(ops.sum(t * ops.log(p), axis=-1))
            else:
                bce = -(t * ops.log(p) + (1 - t) * ops.log(1 - p))
                if head.kind == "foreground" and f is not None:
                    bce = bce * (t * (0.5 / f) + (1 - t) * (0.5 / (1 - f)))
                term = ops.mean(bce)
                if head.kind == "foreground" and dice:
                    inter = ops.sum(t * p)
                    term = term + 1 - (2 * inter + 1) / (ops.sum(t) + ops.sum(p) + 1)
            total = total + wgt * term
        return total

    return loss


# --------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainConfig:
    """Settings of a training run (stored in the bundle's metadata)."""

    network: NetworkConfig = field(default_factory=lambda: NetworkConfig(heads=(Head("foreground"), Head("distance"))))
    tile: int = 256
    batch_size: int = 8
    epochs: int = 50
    steps_per_epoch: int = 100
    validation_steps: int = 20
    learning_rate: float = 1e-3
    lr_step_epochs: int = 20  # step decay: multiply by lr_step_factor every lr_step_epochs
    lr_step_factor: float = 0.5
    schedule: str = "step"  # "step" (lr_step_*) or "cosine" (from learning_rate down to min_lr_factor x it)
    min_lr_factor: float = 0.01
    freeze_epochs: int = 0  # first epochs with the encoder frozen (fine-tuning warm-up)
    select: str = "val_loss"  # best epoch by "val_loss" (lowest) or "val_score" (highest, from a score function)
    dice: bool = False
    class_balance: bool = True
    patience: int = 15  # early stopping on the selection metric; 0 disables
    seed: int = 0
    jit_compile: bool | None = None  # XLA; None lets Keras decide (True trains ~1.6x faster on TF CPU)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        return d


def step_decay(config: TrainConfig) -> Callable[[int], float]:
    return lambda epoch: config.learning_rate * config.lr_step_factor ** (epoch // max(1, config.lr_step_epochs))


def cosine_decay(config: TrainConfig) -> Callable[[int], float]:
    """Cosine annealing per epoch [1]_ from ``learning_rate`` (first epoch) to
    ``min_lr_factor * learning_rate`` (last epoch).

    References
    ----------
    .. [1] I. Loshchilov, F. Hutter, "SGDR: stochastic gradient descent with warm restarts",
       ICLR 2017.
    """
    lo = config.learning_rate * config.min_lr_factor

    def lr(epoch: int) -> float:
        t = min(1.0, epoch / max(1, config.epochs - 1))
        return float(lo + 0.5 * (config.learning_rate - lo) * (1 + np.cos(np.pi * t)))

    return lr


def learning_rate_schedule(config: TrainConfig) -> Callable[[int], float]:
    """The learning rate of each epoch, as ``config.schedule`` says."""
    if config.schedule == "cosine":
        return cosine_decay(config)
    if config.schedule == "step":
        return step_decay(config)
    raise InputError(f"{config.schedule}: unknown learning-rate schedule; choose step or cosine")


#: name prefixes of the encoder layers of the architectures (frozen during a fine-tuning warm-up)
ENCODER_PREFIXES = ("enc", "mres_enc", "respath", "bottom", "mres_bottom")


def set_encoder_trainable(model, trainable: bool) -> int:
    """Freeze (or unfreeze) the encoder's layers; returns how many layers changed.

    Frozen batch normalisation layers run in inference mode (Keras 3), so a warm-up with the
    encoder frozen adapts the decoder and heads to new data without disturbing the features
    and statistics the encoder learnt.
    """
    n = 0
    for layer in model.layers:
        if layer.name.startswith(ENCODER_PREFIXES) and layer.weights and layer.trainable != trainable:
            layer.trainable = trainable
            n += 1
    return n


def plan_epochs(seconds: float, epoch_seconds: float, minimum: int = 2) -> int:
    """How many epochs of ``epoch_seconds`` fit into ``seconds`` (at least ``minimum``)."""
    return max(minimum, int(seconds // max(epoch_seconds, 1e-9)))


def fit(
    train_images: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_labels: Sequence[np.ndarray],
    config: TrainConfig,
    workdir: str | os.PathLike,
    resume: bool = True,
    verbose: int = 1,
    train_classes: Sequence[np.ndarray] | None = None,
    val_classes: Sequence[np.ndarray] | None = None,
    callbacks: Sequence[Any] = (),
    initial_weights: list[np.ndarray] | None = None,
    score: Callable[[Any], float] | None = None,
    minutes: float | None = None,
):
    """Train a network on normalised images ``(Y, X, C)`` float32 and instance label images.

    ``train_classes``/``val_classes`` are class-label images for a ``classes`` head (phases),
    ``callbacks`` extra Keras callbacks (progress reports), ``initial_weights`` the weights
    a new run starts from (fine-tuning; a resumed run ignores them).

    ``score(model) -> float`` is evaluated after every epoch and logged as ``val_score``
    (higher is better); with ``config.select == "val_score"`` it chooses the best epoch and
    drives early stopping instead of the validation loss (for example the instance IoU of the
    validation images, which the loss follows only loosely). The first ``config.freeze_epochs``
    epochs train with the encoder frozen (:func:`set_encoder_trainable`; ``-1``: a tenth of
    the epochs, at least one). ``minutes`` plans the number of epochs to fit that budget from
    the measured cost of the first epoch (``config.epochs`` is then ignored); the plan is kept
    in ``plan.json`` so a resumed run follows it.

    Writes into ``workdir``: ``checkpoint.keras`` (model and optimiser state after the last
    finished epoch), ``best.keras`` (best epoch), ``log.csv`` (one row per epoch), ``plan.json``
    and ``loss.png``. With ``resume``, a run whose ``checkpoint.keras`` exists continues after
    the last finished epoch with the same batches it would have seen.

    Returns the trained Keras model (best weights) and the epoch log as a list of dicts.
    The loop itself is :func:`fit_targets`, which takes the targets and the loss ready-made.
    """
    _check_pairs(train_images, train_labels, config.tile)
    _check_pairs(val_images, val_labels, config.tile)
    heads = config.network.heads
    train_t = [make_targets(l, heads, c) for l, c in zip(train_labels, train_classes or [None] * len(train_labels))]
    val_t = [make_targets(l, heads, c) for l, c in zip(val_labels, val_classes or [None] * len(val_labels))]
    fg_frac = float(np.mean([(l > 0).mean() for l in train_labels])) if config.class_balance else None
    if fg_frac is not None and fg_frac == 0:
        raise InputError("training masks are all empty: nothing to learn")
    return fit_targets(train_images, train_t, val_images, val_t, make_loss(heads, fg_frac, config.dice), config, workdir,
                       resume=resume, verbose=verbose, callbacks=callbacks, initial_weights=initial_weights, score=score,
                       minutes=minutes)


def fit_targets(
    train_images: Sequence[np.ndarray],
    train_targets: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_targets: Sequence[np.ndarray],
    loss,
    config: TrainConfig,
    workdir: str | os.PathLike,
    resume: bool = True,
    verbose: int = 1,
    callbacks: Sequence[Any] = (),
    initial_weights: list[np.ndarray] | None = None,
    score: Callable[[Any], float] | None = None,
    minutes: float | None = None,
    val_tile: int | None = None,
):
    """The fit loop of every network of the package: :func:`fit` with targets and loss given.

    ``train_targets``/``val_targets`` are the network's target arrays ``(Y, X, channels)``
    (:func:`make_targets`, or a caller's own, such as the phase targets of
    :func:`particleseg.fibsem.train_phases` whose unannotated pixels are all zero) and ``loss``
    the Keras loss (:func:`make_loss`); ``val_tile`` the validation tiles' size (default
    ``config.tile``). Everything else is as in :func:`fit`: the network ``config.network``,
    the schedule, the warm-up, the time budget, the checkpoints and the resumption.
    """
    import keras

    from .models import build_network

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.select not in ("val_loss", "val_score"):
        raise InputError(f"{config.select}: unknown selection metric; choose val_loss or val_score")
    if config.select == "val_score" and score is None:
        raise InputError("selecting the best epoch by val_score needs a score function")
    learning_rate_schedule(config)  # an unknown schedule fails before any work

    keras.utils.set_random_seed(config.seed)
    ckpt, best, log_path = workdir / "checkpoint.keras", workdir / "best.keras", workdir / "log.csv"
    state_path, plan_path = workdir / "state.json", workdir / "plan.json"
    initial_epoch = 0
    if resume and ckpt.exists() and state_path.exists():
        model = keras.saving.load_model(ckpt, compile=False)
        initial_epoch = json.loads(state_path.read_text())["epochs_done"]
    else:
        model = build_network(config.network)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        for p in (log_path, best, ckpt, state_path, plan_path):
            p.unlink(missing_ok=True)
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
        config = dataclasses.replace(config, epochs=plan["epochs"], freeze_epochs=plan["freeze_epochs"])
    elif minutes is None:
        config = _resolve_freeze(config)
        _write_json(plan_path, {"epochs": config.epochs, "freeze_epochs": config.freeze_epochs, "minutes": None})

    monitor, mode = ("val_score", "max") if config.select == "val_score" else ("val_loss", "min")
    train_seq = make_tile_sequence(train_images, train_targets, config.tile, config.batch_size, config.steps_per_epoch,
                                   config.augmentation, config.seed)
    val_seq = make_tile_sequence(val_images, val_targets, val_tile or config.tile, config.batch_size,
                                 config.validation_steps, None, config.seed + 1, shuffle=False)
    frozen_now = None

    def run(until: int, timer=None) -> None:
        """Train from the finished epochs to ``until``, compiling again when the encoder's state changes."""
        nonlocal frozen_now, config
        start = json.loads(state_path.read_text())["epochs_done"] if state_path.exists() else 0
        if start >= until:
            return
        frozen = start < config.freeze_epochs
        until = min(until, config.freeze_epochs) if frozen else until
        if frozen != frozen_now:
            set_encoder_trainable(model, not frozen)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate_schedule(config)(start)), loss=loss,
                          jit_compile="auto" if config.jit_compile is None else config.jit_compile)
            if start and (workdir / "optimizer.npz").exists():
                _restore_optimizer(model, workdir / "optimizer.npz")
            frozen_now = frozen
        log = _read_log(log_path)
        best_value = _best_logged(log, monitor, mode) if best.exists() else None
        cbs = [] if score is None else [_ScoreCallback(score)]
        planned = json.loads(plan_path.read_text()) if plan_path.exists() else {}
        if planned.get("minutes"):
            cbs.insert(0, _Replan(plan_path))
        cbs += [
            keras.callbacks.LearningRateScheduler(
                lambda e: learning_rate_schedule(dataclasses.replace(config, epochs=_planned_epochs(plan_path, config.epochs)))(e)),
            keras.callbacks.CSVLogger(str(log_path), append=start > 0),
            keras.callbacks.ModelCheckpoint(str(best), monitor=monitor, mode=mode, save_best_only=True,
                                            initial_value_threshold=best_value),
            _Checkpoint(ckpt, state_path, workdir / "optimizer.npz"),
            *callbacks,
        ]
        if timer is not None:
            cbs.insert(0, timer)
        if config.patience:
            cbs.append(_EarlyStopping(monitor, mode, config.patience, log))
        train_seq.epoch = start
        # shuffle=False: the tiles of batch b of epoch e are already random (seeded by (seed, e, b));
        # Keras' shuffling of the batch order would draw on Python's global random state, which a
        # resumed run cannot restore
        model.fit(train_seq, validation_data=val_seq, epochs=until, initial_epoch=start, callbacks=cbs, verbose=verbose,
                  shuffle=False)
        if model.stop_training:
            raise _Stopped
        run(config.epochs)

    try:
        if not plan_path.exists():
            # a time budget: one epoch measures the cost, the plan fills the rest
            t0 = time.time()
            timer = _EpochTimer()
            config = dataclasses.replace(config, freeze_epochs=1 if config.freeze_epochs else 0, epochs=1)
            run(1, timer)
            first = time.time() - t0
            full = timer.epoch_seconds() * (UNFROZEN_COST if config.freeze_epochs else 1.0)
            # (no batch timed: the first epoch had finished before an interruption; plan from its wall time)
            full = full or first
            epochs = 1 + plan_epochs(minutes * 60 - first, full, minimum=1)
            config = _resolve_freeze(dataclasses.replace(config, epochs=epochs, freeze_epochs=-1 if config.freeze_epochs else 0))
            _write_json(plan_path, {"epochs": config.epochs, "freeze_epochs": config.freeze_epochs, "minutes": minutes,
                                    "first_epoch_seconds": round(first, 1), "epoch_seconds": round(full, 1),
                                    "seconds_done": round(first, 1)})
        run(config.epochs)
    except _Stopped:
        pass
    log = _read_log(log_path)
    plot_loss(log, workdir / "loss.png")
    if best.exists():
        model = keras.saving.load_model(best, compile=False)
    return model, log


#: a full epoch costs about this much more than one with the encoder frozen (measured: UNet
#: depth 4, 16 filters, batch 8 of 256x256 tiles on 2 CPU cores)
UNFROZEN_COST = 1.3


class _Stopped(Exception):
    """Early stopping (or the time budget) ended the run."""


def _planned_epochs(plan_path: Path, default: int) -> int:
    return json.loads(plan_path.read_text()).get("epochs", default) if plan_path.exists() else default


def _Replan(plan_path: Path):  # noqa: N802 - a class made on demand, so keras is imported lazily
    """Keeps a time budget when the machine slows down: after each epoch, adds its wall time to
    ``seconds_done`` in ``plan.json`` and, when the epochs left would no longer fit the budget at
    the last epoch's pace, shortens the plan (never lengthens it); stops when the plan is done.
    The cosine schedule follows the shortened plan from the next epoch on."""
    import keras

    class Replan(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.time()

        def on_epoch_end(self, epoch, logs=None):
            dt = time.time() - self.t
            plan = json.loads(plan_path.read_text())
            plan["seconds_done"] = round(plan.get("seconds_done", 0.0) + dt, 1)
            done = epoch + 1
            fit_more = int(max(0.0, plan["minutes"] * 60 - plan["seconds_done"]) // max(dt, 1e-9))
            if done + fit_more < plan["epochs"]:
                plan["epochs"] = max(done, done + fit_more)
                plan["shortened"] = True
            _write_json(plan_path, plan)
            if done >= plan["epochs"]:
                self.model.stop_training = True

    return Replan()


def _resolve_freeze(config: TrainConfig) -> TrainConfig:
    if config.freeze_epochs >= 0:
        return config
    return dataclasses.replace(config, freeze_epochs=min(config.epochs - 1, max(1, round(0.1 * config.epochs))))


def _write_json(path: Path, obj) -> None:
    from .io import write_atomic

    text = json.dumps(obj, indent=1)
    write_atomic(path, lambda tmp: tmp.write_text(text), overwrite=True)


def _best_logged(log: list[dict], monitor: str, mode: str) -> float | None:
    values = [r[monitor] for r in log if monitor in r]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def _ScoreCallback(score):  # noqa: N802 - a class made on demand, so keras is imported lazily
    import keras

    class ScoreCallback(keras.callbacks.Callback):
        """Adds ``val_score`` (``score(model)``) to the epoch's logs, before the loggers see them."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["val_score"] = float(score(self.model))

    return ScoreCallback()


def _EarlyStopping(monitor: str, mode: str, patience: int, log: list[dict]):  # noqa: N802
    """Keras' early stopping, aware of the epochs an interrupted run already logged."""
    import keras

    cb = keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience)
    values = [r[monitor] for r in log if monitor in r]
    if values:
        best_i = int(np.argmax(values) if mode == "max" else np.argmin(values))
        cb.on_train_begin()
        cb.best, cb.wait = values[best_i], len(values) - 1 - best_i
        cb.on_train_begin = lambda logs=None: None
    return cb


def _EpochTimer():  # noqa: N802
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """The cost of an epoch without the first batch's compilation: the median batch time
        times the batches, plus the validation time."""

        def __init__(self):
            super().__init__()
            self.marks, self.val = [], 0.0

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append(time.time())

        def on_epoch_end(self, epoch, logs=None):
            self.val = time.time() - self.marks[-1] if self.marks else 0.0

        def epoch_seconds(self) -> float:
            steps = np.diff(self.marks)
            per = float(np.median(steps)) if len(steps) else 0.0
            return per * len(self.marks) + self.val

    return EpochTimer()


def _checkpoint_class():
    import keras

    class Checkpoint(keras.callbacks.Callback):
        """Saves the model and the number of finished epochs after every epoch, atomically."""

        def __init__(self, path, state_path, opt_path):
            super().__init__()
            self.path, self.state_path, self.opt_path = Path(path), Path(state_path), Path(opt_path)

        def on_epoch_end(self, epoch, logs=None):
            tmp = self.path.with_name(".tmp-" + self.path.name)
            self.model.save(tmp)
            os.replace(tmp, self.path)
            opt = self.model.optimizer
            tmp_opt = self.opt_path.with_name(".tmp-" + self.opt_path.name)
            with open(tmp_opt, "wb") as fh:
                np.savez(fh, *[np.asarray(v) for v in opt.variables])
            os.replace(tmp_opt, self.opt_path)
            tmp_state = self.state_path.with_name(".tmp-" + self.state_path.name)
            tmp_state.write_text(json.dumps({"epochs_done": epoch + 1}))
            os.replace(tmp_state, self.state_path)

    return Checkpoint


def _Checkpoint(*args):  # noqa: N802 - a class made on demand, so keras is imported lazily
    return _checkpoint_class()(*args)


def _restore_optimizer(model, path):
    """Restore Adam's moments and iteration count saved by the checkpoint callback."""
    opt = model.optimizer
    opt.build(model.trainable_variables)
    saved = np.load(path)
    values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    if len(values) == len(opt.variables):
        for var, val in zip(opt.variables, values):
            if tuple(var.shape) == val.shape:
                var.assign(val)


def _check_pairs(images, labels, tile):
    if len(images) != len(labels):
        raise InputError(f"{len(images)} images but {len(labels)} masks")
    if not images:
        raise InputError("no training images")
    for i, (im, lab) in enumerate(zip(images, labels)):
        if im.shape[:2] != lab.shape[:2]:
            raise InputError(f"image {i}: size {im.shape[:2]} differs from its mask {lab.shape[:2]}")
        if min(im.shape[:2]) < tile:
            raise InputError(f"image {i}: size {im.shape[:2]} is smaller than the training tile {tile}")


def _read_log(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def plot_loss(log: list[dict], path: str | os.PathLike) -> None:
    """Loss curves (training and validation against epoch) as a PNG."""
    if not log:
        return
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io import write_atomic

    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ep = [r["epoch"] + 1 for r in log]
    ax.plot(ep, [r["loss"] for r in log], label="training")
    if "val_loss" in log[0]:
        ax.plot(ep, [r["val_loss"] for r in log], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite=True)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# training data from files: images, masks and how to read the masks

MASK_KINDS = ("auto", "binary", "labels", "classes")
MASK_SUFFIXES = ("", "_mask", "_masks", "_m", "_label", "_labels", "_cm", "_keep", "-mask", "-labels")
NORMALIZATION = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}


@dataclass
class TrainingItem:
    """One training image with its annotation, as read and checked by :func:`read_training_data`.

    ``image`` is ``(Y, X, C)`` float32, normalised; ``labels`` the instance labels (0
    background); ``classes`` the class-label image (multi-class masks only); ``keep`` the
    instance labels of the particles an expert kept (classifier training only).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: np.ndarray | None = None
    keep: np.ndarray | None = None
    calibration: Any = None


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask or label image (TIFF, PNG) as a 2D array, without the checks of
    :func:`particleseg.io.read_image` that refuse empty (constant) images.

    Raises
    ------
    InputError
        Missing or unreadable file, or not a 2D single-channel image.
    """
    from .io import read_array

    data = read_array(path, "mask")
    if data.ndim != 2:
        raise InputError(f"{path}: mask has shape {data.shape}; expected a 2D single-channel image")
    if data.dtype.kind not in "uifb":
        raise InputError(f"{path}: unsupported mask data type {data.dtype}")
    return data


def interpret_mask(mask: np.ndarray, kind: str = "auto", name: str = "mask",
                   n_classes: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Instance labels (and class labels) of an annotation.

    Parameters
    ----------
    mask : (Y, X) array
    kind : {"auto", "binary", "labels", "classes"}
        ``binary``: two values, the larger is particle; touching particles are separated by
        one-pixel background lines and labelled with 4-connectivity (the TiO2 convention).
        ``labels``: one integer per particle, 0 background. ``classes``: a class per pixel,
        0 background, ``1..n_classes-1`` phases. ``auto``: binary with at most two distinct
        values, labels otherwise (multi-class masks must be asked for).
    name : str
        The file, for error messages.
    n_classes : int, optional
        Number of classes including background (``classes`` only; checked).

    Returns
    -------
    labels : (Y, X) int32
    classes : (Y, X) int32 or None
    """
    if kind not in MASK_KINDS:
        raise InputError(f"{name}: unknown mask type {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    mask = np.asarray(mask)
    values = np.unique(mask)
    if mask.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise InputError(f"{name}: mask holds fractional values; expected a binary mask or a label image")
    if values.min() < 0:
        raise InputError(f"{name}: mask holds negative values; expected a binary mask or a label image")
    if kind == "auto":
        kind = "binary" if len(values) <= 2 else "labels"
    classes = None
    if kind == "binary":
        if len(values) > 2:
            raise InputError(f"{name}: mask has {len(values)} distinct values, not a binary mask "
                             "(use mask type 'labels' or 'classes')")
        fg = mask == values.max() if len(values) == 2 else mask > 0
        if len(values) == 2 and values.min() > 0:
            raise InputError(f"{name}: binary mask has no 0 background (values {values[0]:g} and {values[1]:g})")
        labels = label_mask_4(fg)
    elif kind == "labels":
        labels = mask.astype(np.int32)
    else:
        classes = mask.astype(np.int32)
        if n_classes is not None and classes.max() >= n_classes:
            raise InputError(f"{name}: class value {classes.max()} but only {n_classes} classes "
                             f"(0..{n_classes - 1}) were given")
        labels = label_mask_4(classes > 0)
    if labels.size and (labels > 0).all():
        raise InputError(f"{name}: mask marks every pixel as particle (inverted mask?)")
    return labels, classes


def label_mask_4(mask: np.ndarray) -> np.ndarray:
    """4-connected labels of a binary mask (int32)."""
    from .postprocess import label_mask

    return label_mask(np.asarray(mask, bool)).astype(np.int32)


def match_masks(images: Sequence[Path], mask_dir: Path, role: str = "mask") -> list[Path]:
    """The mask file of each image in ``mask_dir``: same stem, or the stem followed by one of
    :data:`MASK_SUFFIXES` (``a.tif`` -> ``a.tif``, ``a_mask.png``, ``a_m.tif``, ...)."""
    from .io import IMAGE_SUFFIXES

    if not mask_dir.is_dir():
        raise InputError(f"{mask_dir}: {role} folder not found")
    by_stem: dict[str, list[Path]] = {}
    for q in sorted(mask_dir.iterdir()):
        if q.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(q.stem, []).append(q)
    out = []
    for im in images:
        found = [q for s in MASK_SUFFIXES for q in by_stem.get(im.stem + s, [])]
        if not found:
            raise InputError(f"{im}: no {role} for this image in {mask_dir} "
                             f"(expected {im.stem}.tif, {im.stem}_mask.tif, ...)")
        if len(found) > 1 and found[0].stem == found[1].stem:
            raise InputError(f"{im}: several {role}s match it in {mask_dir} ({found[0].name}, {found[1].name})")
        out.append(found[0])
    return out


def _as_list(x, role: str) -> tuple[list, list[str]]:
    """Arrays or paths: a folder, a file, or a sequence of files or arrays -> (items, names)."""
    from .io import list_images

    if isinstance(x, np.ndarray):
        x = [x] if x.ndim == 2 else list(x)
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if not p.exists():
            raise InputError(f"{p}: {role} folder or file not found")
        files = list_images([p])
        if not files:
            raise InputError(f"{p}: no image files (TIFF, PNG, JPEG) found")
        return files, [str(f) for f in files]
    items = list(x)
    names = [str(it) if isinstance(it, (str, os.PathLike)) else f"{role} {i}" for i, it in enumerate(items)]
    return [Path(it) if isinstance(it, (str, os.PathLike)) else np.asarray(it) for it in items], names


def read_training_data(
    images,
    masks,
    keep_masks=None,
    mask_kind: str = "auto",
    n_classes: int | None = None,
    crop_rows: int = 0,
    normalization: dict | None = None,
    invert: bool = False,
) -> list[TrainingItem]:
    """Read, check and normalise training pairs before any training starts.

    Parameters
    ----------
    images : folder, file, sequence of files, or sequence of arrays
        Gray images ``(Y, X)``; multi-channel inputs as ``(C, Y, X)`` files (multi-page TIFF
        or ImageJ hyperstacks) or ``(Y, X, C)`` arrays.
    masks : folder or sequence of files or arrays
        One annotation per image (see :func:`interpret_mask`). A folder is matched to the
        images by file name (:func:`match_masks`).
    keep_masks : folder or sequence, optional
        Masks of the particles an expert kept (particle-classifier training).
    mask_kind, n_classes : see :func:`interpret_mask`.
    crop_rows : int
        Rows at the bottom of every image and mask to drop (a microscope's data bar).
    normalization : dict
        Percentile normalisation settings (as stored in a bundle).
    invert : bool
        Mirror the gray values (:func:`particleseg.pipeline.invert`) before normalising: dark
        particles become bright for a network that expects bright ones.

    Raises
    ------
    InputError
        One line naming the file: a missing mask, sizes that differ, an unreadable file, a
        mask that is not a binary or label image, all masks empty.
    """
    from .io import Calibration, read_image
    from .preprocess import normalize_input

    norm = normalization or NORMALIZATION
    img_items, img_names = _as_list(images, "image")
    from_folder = isinstance(masks, (str, os.PathLike)) and Path(masks).is_dir()
    if from_folder and all(isinstance(i, Path) for i in img_items):
        mask_items = match_masks(img_items, Path(masks))
        mask_names = [str(m) for m in mask_items]
    elif isinstance(masks, (str, os.PathLike)) and not Path(masks).exists():
        raise InputError(f"{masks}: mask folder or file not found")
    else:
        mask_items, mask_names = _as_list(masks, "mask")
    if len(mask_items) != len(img_items):
        raise InputError(f"{len(img_items)} images but {len(mask_items)} masks "
                         f"({img_names[0] if img_names else 'no images'} ...); give one mask per image")
    keep_items: list = [None] * len(img_items)
    keep_names: list = [None] * len(img_items)
    if keep_masks is not None:
        if isinstance(keep_masks, (str, os.PathLike)) and Path(keep_masks).is_dir() and all(isinstance(i, Path) for i in img_items):
            keep_items = match_masks(img_items, Path(keep_masks), "keep mask")
            keep_names = [str(m) for m in keep_items]
        else:
            keep_items, keep_names = _as_list(keep_masks, "keep mask")
        if len(keep_items) != len(img_items):
            raise InputError(f"{len(img_items)} images but {len(keep_items)} keep masks; give one keep mask per image")
    if not img_items:
        raise InputError("no training images given")

    out: list[TrainingItem] = []
    n_channels = None
    for item, name, m_item, m_name, k_item, k_name in zip(img_items, img_names, mask_items, mask_names, keep_items, keep_names):
        if isinstance(item, Path):
            img, cal = read_image(item, channel_axis_ok=True)
            if img.ndim == 4:
                raise InputError(f"{name}: a stack of multi-channel images; give one 2D (multi-channel) image per file")
            img = img[..., None] if img.ndim == 2 else np.moveaxis(img, 0, -1)  # (C, Y, X) pages -> channels
        else:
            img, cal = np.asarray(item), Calibration()
            if img.ndim == 2:
                img = img[..., None]
            if img.ndim != 3:
                raise InputError(f"{name}: expected a (Y, X) or (Y, X, C) array, got shape {img.shape}")
        if n_channels is None:
            n_channels = img.shape[-1]
        elif img.shape[-1] != n_channels:
            raise InputError(f"{name}: has {img.shape[-1]} channel(s) but the first image has {n_channels}")
        mask = read_mask(m_item) if isinstance(m_item, Path) else np.asarray(m_item)
        if mask.ndim != 2:
            raise InputError(f"{m_name}: mask has shape {mask.shape}; expected a 2D image")
        keep = None
        if k_item is not None:
            keep = read_mask(k_item) if isinstance(k_item, Path) else np.asarray(k_item)
        if crop_rows:
            if crop_rows >= img.shape[0] - 16:
                raise InputError(f"{name}: cannot crop {crop_rows} rows from an image {img.shape[0]} rows high")
            img = img[: img.shape[0] - crop_rows]
            mask = mask[: img.shape[0]]
            keep = keep[: img.shape[0]] if keep is not None else None
        if mask.shape != img.shape[:2]:
            raise InputError(f"{m_name}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                             f"{name} ({img.shape[1]}x{img.shape[0]})")
        if keep is not None and keep.shape != img.shape[:2]:
            raise InputError(f"{k_name}: keep mask size {keep.shape[1]}x{keep.shape[0]} differs from its image "
                             f"{name} ({img.shape[1]}x{img.shape[0]})")
        labels, classes = interpret_mask(mask, mask_kind, m_name, n_classes)
        keep_labels = interpret_mask(keep, "auto" if mask_kind != "classes" else "binary", k_name)[0] if keep is not None else None
        if invert:
            from .pipeline import invert as _invert

            img = _invert(img)
        x = normalize_input(img, norm)
        out.append(TrainingItem(name, x, labels, classes, keep_labels, cal))
    if all(it.labels.max() == 0 for it in out):
        raise InputError(f"{mask_names[0]}: all {len(out)} masks are empty (no particle annotated); nothing to learn")
    return out


def training_polarity(items: Sequence[TrainingItem]) -> str:
    """``"bright"`` when the annotated particles of ``items`` are on the whole brighter than
    their background (mean normalised gray value of the first channel inside the particles
    against outside, over all images), else ``"dark"``."""
    inside = outside = 0.0
    n_in = n_out = 0
    for it in items:
        fg = it.labels > 0
        g = it.image[..., 0]
        inside += float(g[fg].sum())
        outside += float(g[~fg].sum())
        n_in += int(fg.sum())
        n_out += int((~fg).sum())
    if not n_in or not n_out:
        return "bright"
    return "bright" if inside / n_in >= outside / n_out else "dark"


def split_validation(n: int, validation_split: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and validation images: ``round(n * validation_split)`` (at least
    one) validation images chosen with ``seed``."""
    if not 0 < validation_split < 1:
        raise InputError(f"validation split must be between 0 and 1, got {validation_split}")
    if n < 2:
        raise InputError(f"too few images for a validation split ({n}; need at least 2, "
                         "or give validation images separately)")
    n_val = min(n - 1, max(1, int(round(n * validation_split))))
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    return [i for i in range(n) if i not in val], val


def particle_size_px(labels: Sequence[np.ndarray]) -> float | None:
    """Median equivalent circular diameter (pixels) of the annotated particles."""
    areas = np.concatenate([np.bincount(l.ravel())[1:] for l in labels if l.max() > 0] or [np.zeros(0)])
    areas = areas[areas > 0]
    return float(np.median(np.sqrt(4 * areas / np.pi))) if len(areas) else None


# --------------------------------------------------------------------------------------------
# validation scores and default post-processing


def validation_scores(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], heads: list[str],
                      thresholds: Sequence[float] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                      seed_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
                      min_area: int = 15,
                      min_confidences: Sequence[float] = (0.0, 0.5, 0.7, 0.8, 0.9)) -> tuple[dict, dict]:
    """Choose the threshold, the seed level of a distance/boundary head and the minimum
    confidence (mean foreground probability of a particle) that maximise the instance score
    (:func:`instance_score`) on the validation images, and score them there.

    The score averages the instance IoU over the annotated particles and over the segmented
    ones, so a setting that breaks particles into fragments (each annotated particle still
    overlaps its largest piece well) loses as much as one that merges neighbours. The
    class-balanced loss makes the foreground probability overshoot at particle borders, so the
    best threshold is often above 0.5.

    Returns the post-processing defaults and the metrics at the chosen settings: foreground
    IoU, instance IoU averaged over the annotated and over the segmented particles, F1 at IoU
    0.5, pixel error (``1 - F1`` of the foreground pixels), the score, particles found and
    annotated.
    """
    from . import metrics
    from .pipeline import SegmentParams, particles_from_probabilities
    from .postprocess import relabel_sequential, remove_uncertain

    seeds = seed_thresholds if ("distance" in heads or "boundary" in heads) else (0.5,)
    fgs = [p[..., heads.index("foreground")] for p in probs]
    best = None
    for thr in thresholds:
        for st in seeds:
            params = SegmentParams(threshold=thr, split=True, seed_threshold=st, h=1.0, min_area=min_area, fill_holes=True)
            base = [particles_from_probabilities(p, heads, params) for p in probs]
            for mc in min_confidences:  # the pipeline's last step, applied to the same particles
                preds = [relabel_sequential(remove_uncertain(b, fg, mc)) if mc else b for b, fg in zip(base, fgs)]
                score = float(np.mean([instance_score(pr, lab) for pr, lab in zip(preds, labels)]))
                if best is None or score > best[0] + 1e-12:
                    best = (score, thr, st, mc, preds)
    score, thr, st, mc, preds = best
    fg = float(np.mean([metrics.foreground_iou(pr > 0, lab > 0) for pr, lab in zip(preds, labels)]))
    perr = float(np.mean([metrics.pixel_error((pr > 0).astype(np.uint8), (lab > 0).astype(np.uint8), (0.5,))
                          for pr, lab in zip(preds, labels)]))
    inst = float(np.mean([metrics.instance_iou(pr, lab, average="truth") for pr, lab in zip(preds, labels)]))
    inst_pred = float(np.mean([metrics.instance_iou(pr, lab, average="pred") for pr, lab in zip(preds, labels)]))
    f1 = float(np.mean([metrics.match_instances(lab, pr, 0.5)["f1"] for pr, lab in zip(preds, labels)]))
    post = {"threshold": thr, "seed_threshold": st, "min_area": min_area, "min_confidence": float(mc)}
    return post, {"foreground_iou": round(fg, 4), "instance_iou": round(inst, 4), "instance_iou_pred": round(inst_pred, 4),
                  "f1_iou50": round(f1, 4), "pixel_error": round(perr, 4), "score": round(score, 4),
                  "particles_found": int(sum(len(np.unique(pr)) - 1 for pr in preds)),
                  "particles_annotated": int(sum(len(np.unique(lab)) - 1 for lab in labels))}


def instance_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the instance IoU averaged over the annotated particles and over the segmented
    ones (:func:`particleseg.metrics.instance_iou`): 1 for a perfect segmentation, lowered by
    missed and merged particles (first term) and by fragments and false particles (second)."""
    from . import metrics

    return 0.5 * (metrics.instance_iou(pred, truth, average="truth") + metrics.instance_iou(pred, truth, average="pred"))


def epoch_score(items: Sequence[TrainingItem], network, post: dict, tile: int, overlap: int) -> Callable[[Any], float]:
    """A score function for :func:`fit`: the mean :func:`instance_score` of the validation
    ``items`` segmented with the post-processing ``post`` (threshold, seed level, minimum area)."""
    from .inference import predict_tiled
    from .models import keras_predictor
    from .pipeline import SegmentParams, particles_from_probabilities

    heads = [h.kind for h in network.heads]
    params = SegmentParams(threshold=post.get("threshold", 0.5), split=True, seed_threshold=post.get("seed_threshold", 0.5),
                           h=post.get("h", 1.0), min_area=post.get("min_area", 15), fill_holes=True)

    def score(model) -> float:
        predict = keras_predictor(model)
        values = []
        for it in items:
            prob = predict_tiled(predict, it.image, tile=tile, overlap=overlap, multiple_of=network.multiple_of, progress=False)
            values.append(instance_score(particles_from_probabilities(prob, heads, params), it.labels))
        return float(np.mean(values))

    return score


# --------------------------------------------------------------------------------------------
# the public API


def _choose_base(base_model, given_net: dict, class_names, mask_kind: str):
    """The base model of a training run: ``"auto"`` is the shipped default unless the run asks
    for a new network (network options, multi-class masks); ``"none"`` is None."""
    if base_model is None or str(base_model).strip().lower() in ("", "none"):
        return None
    if str(base_model) == "auto":
        multi = mask_kind == "classes" or (class_names is not None and len(class_names) > 2)
        return None if given_net or multi else "default"
    if given_net:
        opts = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in given_net.items())
        raise InputError(f"{opts}: network options apply to a new network, but --base-model {base_model} fine-tunes "
                         "an existing one; leave them out, or train a new network with --base-model none")
    return base_model


def _estimate_epoch_minutes(network, config: TrainConfig, channels: int) -> float:
    """A rough cost of one training epoch on this machine: three forward passes per batch
    (forward, and a backward pass about twice as dear), timed on one batch."""
    import keras

    from .models import build_network

    model = build_network(dataclasses.replace(network, input_channels=channels))
    x = np.zeros((config.batch_size, config.tile, config.tile, channels), np.float32)
    model.predict_on_batch(x)
    t0 = time.time()
    model.predict_on_batch(x)
    per = time.time() - t0
    del model
    keras.backend.clear_session()
    return 3 * per * (config.steps_per_epoch + config.validation_steps / 3) / 60


def _EtaCallback(plan_path: Path, what: str):  # noqa: N802 - a class made on demand, so keras is imported lazily
    """After each epoch, one line: epochs done of the plan, the best score, and the expected end."""
    import datetime as _dt

    import keras

    class Eta(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            if self.t0 is None:
                self.t0, self.e0 = time.time(), epoch

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            total = json.loads(plan_path.read_text())["epochs"] if plan_path.exists() else None
            done = epoch + 1
            line = f"{what}: epoch {done}" + (f"/{total}" if total else "")
            line += f", loss {logs.get('loss', float('nan')):.4f}"
            if "val_score" in logs:
                line += f", validation instance score {logs['val_score']:.4f}"
            if total and done > self.e0:
                per = (time.time() - self.t0) / (done - self.e0)
                left = per * (total - done)
                end = _dt.datetime.now() + _dt.timedelta(seconds=left)
                line += f", about {left / 60:.0f} min left (ends {end:%H:%M})"
            print(line, flush=True)

    return Eta()


def _progress_callback(progress, epochs: int, plan_path: Path | None = None):
    """A Keras callback that reports ``progress(epochs_done, epochs, logs)`` after each epoch
    (``epochs`` as planned in ``plan_path`` when a time budget planned them)."""
    import keras

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            total = epochs
            if plan_path is not None and plan_path.exists():
                total = json.loads(plan_path.read_text()).get("epochs", epochs)
            progress(epoch + 1, total, dict(logs or {}))

    return Report()


def _workdir_config(workdir: Path, settings: dict, resume: bool) -> None:
    """Refuse to resume a run made with other settings; record the settings of a new run."""
    path = workdir / "settings.json"
    text = json.dumps(settings, indent=1, sort_keys=True, default=str)
    if resume and path.exists() and (workdir / "checkpoint.keras").exists():
        old = json.loads(path.read_text())
        if old != json.loads(text):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(text).get(k))
            raise InputError(f"{workdir}: holds an unfinished run with other settings ({', '.join(diff)}); "
                             "resume with the same settings, or start over (--no-resume / resume=False)")
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def train_segmentation(
    images,
    masks,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    depth: int | None = None,
    base_filters: int | None = None,
    dropout: float | None = None,
    normalization: str | None = None,
    extra_head: str | None = "default",
    mask_kind: str = "auto",
    class_names: Sequence[str] | None = None,
    channel_names: Sequence[str] | None = None,
    crop_rows: int = 0,
    validation_images=None,
    validation_masks=None,
    validation_split: float = 0.2,
    tile: int = 256,
    batch_size: int = 8,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
    learning_rate: float | None = None,
    lr_step_epochs: int | None = None,
    dice: bool | None = None,
    patience: int = 15,
    schedule: str | None = None,
    freeze_epochs: int | None = None,
    select: str | None = None,
    minutes: float | None = None,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    keep_masks=None,
    classifier_epochs: int | None = None,
    classifier_learning_rate: float | None = None,
    classifier_network=None,
    base_model: str | os.PathLike | None = "auto",
    name: str | None = None,
    description: str = "",
    pixel_size: float | None = None,
    unit: str | None = None,
    polarity: str = "auto",
    export: Sequence[str] = (),
    zip_copy: bool = False,
    workdir: str | os.PathLike | None = None,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool | Callable[[int, int, dict], None] = True,
    jit_compile: bool | None = None,
):
    """Train a segmentation network on annotated images and write a model bundle.

    Every input is read and checked before training starts. Checkpoints go to ``workdir``
    after every epoch; an interrupted run started again with the same settings continues
    after the last finished epoch.

    Parameters
    ----------
    images, masks : folder, files or arrays
        See :func:`read_training_data`: binary masks with one-pixel lines between touching
        particles, instance label images, or class-label images (``mask_kind="classes"``).
    out : path
        Bundle folder to write (refused if it exists, unless ``overwrite``).
    arch : {"multires-unet", "unet", "fcn"}, optional
    depth, base_filters, dropout, normalization : optional
        Network of a new model (:class:`~particleseg.models.NetworkConfig`; defaults
        ``multires-unet``, 4, 16, 0, ``batch``). Giving any of them trains a new network
        (``base_model="auto"``); they cannot be combined with a named ``base_model``.
    extra_head : {"distance", "boundary", None}
        A second output of a new network that the watershed takes its seeds from
        (``distance``, the default: each particle's normalised distance to its border;
        ``boundary``: particle borders).
    mask_kind : {"auto", "binary", "labels", "classes"}
    class_names : sequence of str
        Names of the classes of a multi-class mask, background first; the network then has a
        ``foreground`` head (any phase) and a softmax ``classes`` head.
    channel_names : sequence of str
        What each input channel is (stored in the bundle).
    crop_rows : int
        Rows at the bottom of each image to ignore (data bar).
    validation_images, validation_masks : optional
        Separate validation data; otherwise ``validation_split`` of the images (at least one)
        is held out, chosen with ``seed``.
    tile, batch_size, epochs, steps_per_epoch, validation_steps
        Random training tiles per batch and batches per epoch; ``None`` steps: about two
        passes over the training pixels per epoch (10 to 200 batches).
    learning_rate, lr_step_epochs
        Adam's (first) learning rate: default 5e-4 when fine-tuning, 1e-3 for a new network;
        with the ``step`` schedule halved every ``lr_step_epochs`` (default ``epochs // 3``).
    dice : bool
        Add the soft Dice loss to the class-balanced cross-entropy of the foreground
        (default: on when fine-tuning).
    patience : int
        Early stopping after this many epochs without a better selection metric (0: never).
    schedule : {"cosine", "step"}, optional
        Learning-rate schedule (default ``cosine`` when fine-tuning, else ``step``).
    freeze_epochs : int, optional
        Epochs of warm-up with the encoder frozen (default: a tenth of the epochs when
        fine-tuning, none for a new network).
    select : {"val_score", "val_loss"}, optional
        How the best epoch is chosen: the instance score of the validation images
        (:func:`instance_score` at the base model's post-processing; the default when
        fine-tuning a model with a foreground head) or the validation loss.
    minutes : float, optional
        Time budget of the whole run: the epochs are planned from the measured cost of the
        first one, and the plan is shortened when later epochs run slower (other work on the
        machine); a fifth of the budget goes to the particle classifier when there are keep
        masks; ``epochs`` is then ignored.
    augmentation : Augmentation
    seed : int
        Seeds the split, the weights and every batch: a run is reproducible.
    keep_masks : folder, files or arrays, optional
        Masks of the particles worth keeping: also trains the particle classifier
        (:func:`train_classifier`) and stores it in the bundle.
    classifier_epochs, classifier_learning_rate : optional
        Epochs and learning rate of the classifier (default ``epochs``, and ``learning_rate`` or 1e-3).
    classifier_network : NetworkConfig, optional
        The classifier's network (default: a depth-3 UNet with 8 base filters, two inputs).
    base_model : bundle, "auto" or None
        Start from this bundle's network (fine-tuning); ``"default"`` is the shipped default
        model. ``"auto"`` (the default) fine-tunes the default model unless a network option
        is given, the masks are multi-class or the images have several channels; ``None``
        (or ``"none"``) trains a new network.
    name, description : str
        Bundle name (default: the folder name) and a description of the training data.
    pixel_size, unit : optional
        Pixel size of the training images (default: from the files when they agree).
    polarity : {"auto", "bright", "dark"}
        Whether the particles of the training images are brighter or darker than their
        background; ``auto`` (the default) measures it from the masks (mean gray value inside
        the particles against outside). A base model that expects the other polarity sees the
        images inverted, and the bundle records the polarity its network expects, so
        ``segment`` inverts new images the same way.
    export : sequence of {"onnx", "saved_model"}
        Also export the network in these formats (checked against Keras).
    zip_copy : bool
        Also write ``out.zip``.
    workdir : path
        Checkpoints, ``log.csv`` and ``loss.png`` (default ``<out>.work``).
    resume : bool
        Continue an interrupted run found in ``workdir``.
    overwrite : bool
    progress : bool or callable
        Keras' progress bar, or a function called as ``progress(epochs_done, epochs, logs)``.

    Returns
    -------
    Bundle
        The written bundle, loaded.
    """
    import keras

    from .io import check_outputs
    from .models import ARCHITECTURES, Head, NetworkConfig, load_bundle, make_metadata, save_bundle

    t0 = time.time()
    out = Path(out)
    given_net = {k: v for k, v in dict(arch=arch, depth=depth, base_filters=base_filters, dropout=dropout,
                                       normalization=normalization).items() if v is not None}
    if extra_head != "default":
        given_net["extra_head"] = extra_head
    base_model = _choose_base(base_model, given_net, class_names, mask_kind)
    arch, depth, base_filters = (arch or "multires-unet"), (depth or 4), (base_filters or 16)
    dropout, normalization = (dropout or 0.0), (normalization or "batch")
    extra_head = "distance" if extra_head == "default" else extra_head
    arch = arch.replace("_", "-")
    if arch not in ARCHITECTURES:
        raise InputError(f"{arch}: unknown architecture; choose one of {', '.join(ARCHITECTURES)}")
    if extra_head not in (None, "none", "distance", "boundary"):
        raise InputError(f"{extra_head}: unknown extra head; choose distance, boundary or none")
    extra_head = None if extra_head == "none" else extra_head
    for fmt in export:
        if fmt not in ("onnx", "saved_model"):
            raise InputError(f"{fmt}: unknown export format; choose onnx or saved_model")
    check_outputs([out] + ([out.with_suffix(".zip")] if zip_copy else []), overwrite)
    classes = list(class_names) if class_names else None
    if mask_kind == "classes" and not classes:
        raise InputError("multi-class masks need the class names (background first)")
    if classes and len(classes) > 2:
        mask_kind = "classes"

    base = load_bundle(base_model) if base_model else None
    norm = dict(base.metadata["input"]["normalization"]) if base else dict(NORMALIZATION)
    if base:
        base.check_use("sem", str(base_model))
        network = base.network
        if mask_kind == "classes" and "classes" not in [h.kind for h in network.heads]:
            raise InputError(f"{base_model}: has no classes head (heads {'+'.join(h.kind for h in network.heads)}), "
                             "so it cannot learn multi-class masks; train a new network (--base-model none)")
        if classes and "classes" in [h.kind for h in network.heads]:
            nc = next(h.channels for h in network.heads if h.kind == "classes")
            if nc != len(classes):
                raise InputError(f"{base_model}: has {nc} classes but {len(classes)} class names were given")
    else:
        heads = [Head("foreground")]
        if extra_head:
            heads.append(Head(extra_head))
        if mask_kind == "classes":
            heads.append(Head("classes", len(classes), "softmax"))
        try:
            network = NetworkConfig(arch, 1, tuple(heads), depth, base_filters, dropout, normalization)
        except ValueError as exc:
            raise InputError(f"{out}: {exc}") from None
    if tile % network.multiple_of:
        raise InputError(f"tile {tile} must be a multiple of {network.multiple_of} (2**depth)")

    # 1. every input, before any training
    if polarity not in ("auto", "bright", "dark"):
        raise InputError(f"{polarity}: unknown polarity; choose auto, bright or dark")
    items = read_training_data(images, masks, keep_masks, mask_kind, len(classes) if classes else None, crop_rows, norm)
    if polarity == "auto":
        polarity = training_polarity(items)
    net_polarity = base.metadata["input"].get("polarity", "bright") if base else polarity
    flip = net_polarity != polarity
    if flip:  # the base network expects the other polarity: show it the images inverted
        items = read_training_data(images, masks, keep_masks, mask_kind, len(classes) if classes else None, crop_rows,
                                   norm, invert=True)
    if validation_images is not None:
        if validation_masks is None:
            raise InputError("validation images given without validation masks")
        val_items = read_training_data(validation_images, validation_masks, None, mask_kind,
                                       len(classes) if classes else None, crop_rows, norm, invert=flip)
        train_items = items
    else:
        tr, va = split_validation(len(items), validation_split, seed)
        train_items, val_items = [items[i] for i in tr], [items[i] for i in va]
    n_ch = items[0].image.shape[-1]
    if base:
        if n_ch != base.network.input_channels:
            raise InputError(f"{items[0].name}: has {n_ch} channel(s) but the base model {base_model} takes "
                             f"{base.network.input_channels}; train a new network (--base-model none)")
    else:
        network = dataclasses.replace(network, input_channels=n_ch)
    if val_items[0].image.shape[-1] != n_ch:
        raise InputError(f"{val_items[0].name}: has {val_items[0].image.shape[-1]} channel(s) but the training images have {n_ch}")
    for it in train_items + val_items:
        if min(it.image.shape[:2]) < tile:
            raise InputError(f"{it.name}: size {it.image.shape[1]}x{it.image.shape[0]} is smaller than the "
                             f"training tile {tile} (use a smaller tile)")
    if all(it.labels.max() == 0 for it in train_items):
        raise InputError(f"{train_items[0].name}: all training masks are empty; nothing to learn")

    train_px = sum(it.image.shape[0] * it.image.shape[1] for it in train_items)
    val_px = sum(it.image.shape[0] * it.image.shape[1] for it in val_items)
    if steps_per_epoch is None:
        steps_per_epoch = int(np.clip(round(2 * train_px / (batch_size * tile * tile)), 10, 200))
    if validation_steps is None:
        validation_steps = int(np.clip(round(val_px / (batch_size * tile * tile)), 2, 50))
    tuning = base is not None
    head_kinds = [h.kind for h in network.heads]
    epochs = epochs or (20 if tuning else 50)
    if select is None:
        select = "val_score" if tuning and head_kinds[0] == "foreground" and mask_kind != "classes" else "val_loss"
    config = TrainConfig(
        network=network, tile=tile, batch_size=batch_size, epochs=epochs, steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps, learning_rate=learning_rate or (5e-4 if tuning else 1e-3),
        lr_step_epochs=lr_step_epochs or max(1, epochs // 3), lr_step_factor=0.5,
        schedule=schedule or ("cosine" if tuning else "step"),
        freeze_epochs=(-1 if tuning else 0) if freeze_epochs is None else freeze_epochs, select=select,
        dice=(tuning if dice is None else dice), class_balance=True, patience=patience, seed=seed, jit_compile=jit_compile,
        augmentation=augmentation or Augmentation(),
    )
    learning_rate_schedule(config)
    if config.select not in ("val_score", "val_loss"):
        raise InputError(f"{select}: unknown selection metric; choose val_score or val_loss")
    seg_minutes = None
    if minutes is not None:
        if not minutes > 0:
            raise InputError(f"--minutes {minutes}: the time budget must be positive")
        seg_minutes = minutes * (0.8 if keep_masks is not None else 1.0) - 1.0  # a minute for the final choices
        need = _estimate_epoch_minutes(network, config, items[0].image.shape[-1])
        if seg_minutes < 2 * need:
            raise InputError(f"--minutes {minutes:g} is too short: one epoch of {steps_per_epoch} batches of "
                             f"{batch_size} tiles {tile}x{tile} takes about {need:.1f} min here; give at least "
                             f"{(2 * need + 1) / (0.8 if keep_masks is not None else 1.0):.0f} min, or fewer --steps")

    # 2. train (checkpointed; resumable)
    workdir = Path(workdir) if workdir else out.with_name(out.name + ".work")
    seg_dir = workdir / "segmentation"
    if overwrite and (out / "bundle.json").exists():
        resume = False  # the run in workdir finished (its bundle exists): a new run replaces it
    settings = {"config": config.to_dict(), "minutes": minutes, "images": [it.name for it in train_items],
                "validation": [it.name for it in val_items], "base_model": str(base.path) if base else None}
    _workdir_config(seg_dir, settings, resume)
    callbacks = [_progress_callback(progress, epochs, seg_dir / "plan.json")] if callable(progress) else []
    if progress is True:
        callbacks.append(_EtaCallback(seg_dir / "plan.json", "segmentation"))
    infer_tile = max(512, tile) // network.multiple_of * network.multiple_of
    overlap = min(max(16, 2 * network.multiple_of), infer_tile // 4)
    size_px = particle_size_px([it.labels for it in train_items])
    min_area = int(np.clip(round(0.1 * np.pi * (size_px / 2) ** 2), 1, 15)) if size_px else 15
    score = None
    if config.select == "val_score":
        start_post = {**(base.postprocess if base else {}), "min_area": min_area}
        score = epoch_score(val_items, network, start_post, infer_tile, overlap)
    model, log = fit(
        [it.image for it in train_items], [it.labels for it in train_items],
        [it.image for it in val_items], [it.labels for it in val_items],
        config, seg_dir, resume=resume, verbose=1 if progress is True else 0,
        train_classes=[it.classes for it in train_items] if mask_kind == "classes" else None,
        val_classes=[it.classes for it in val_items] if mask_kind == "classes" else None,
        callbacks=callbacks, initial_weights=base.model.get_weights() if base else None,
        score=score, minutes=seg_minutes,
    )

    # 3. defaults of the post-processing and validation metrics
    from .inference import predict_tiled
    from .models import keras_predictor

    predict = keras_predictor(model)
    probs = [predict_tiled(predict, it.image, tile=infer_tile, overlap=overlap, multiple_of=network.multiple_of,
                           progress=False) for it in val_items]
    post, scores = validation_scores(probs, [it.labels for it in val_items], head_kinds, min_area=min_area)
    if mask_kind == "classes":
        k = head_kinds.index("classes")
        off = sum(h.channels for h in network.heads[:k])
        pred_c = [p[..., off:off + len(classes)].argmax(-1) for p in probs]
        scores["class_accuracy"] = round(float(np.mean([(pc == it.classes).mean() for pc, it in zip(pred_c, val_items)])), 4)
    scores.update({"validation_images": len(val_items), "final_loss": log[-1].get("loss") if log else None,
                   "final_val_loss": log[-1].get("val_loss") if log else None,
                   "best_val_loss": min((r["val_loss"] for r in log if "val_loss" in r), default=None),
                   "best_val_score": max((r["val_score"] for r in log if "val_score" in r), default=None)})

    # 4. the particle classifier
    classifier = classifier_meta = None
    if keep_masks is not None:
        # a fixed fifth of the budget (not what the segmentation left over), so a resumed run
        # plans the classifier as the uninterrupted one would
        left = None if minutes is None else max(1.0, 0.2 * minutes - 0.5)
        classifier, classifier_meta = train_classifier(
            train_items, val_items, workdir / "classifier", network=classifier_network, tile=tile, batch_size=batch_size,
            epochs=classifier_epochs or epochs, steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
            learning_rate=classifier_learning_rate or learning_rate or 1e-3, seed=seed, resume=resume, progress=progress,
            normalization=norm, minutes=left,
            jit_compile=jit_compile)
        # the classifier at its threshold, or none at all: whichever keeps particles whose sizes
        # match the expert's better on the validation images (two choices, not a noisy sweep)
        chosen, table = choose_min_score(classifier, network, probs, val_items, post, infer_tile,
                                         NetworkConfig.from_dict(classifier_meta["network"]).multiple_of,
                                         grid=(0.0, classifier_meta["threshold"]))
        classifier_meta.update(threshold_balanced_accuracy=classifier_meta["threshold"], threshold=chosen,
                               threshold_chosen_by="the best balanced accuracy on the validation particles, kept "
                               "only if the minimum-Feret distribution of the particles it keeps on the validation "
                               "images is closer to the expert's keep masks (Kolmogorov-Smirnov distance) than that "
                               "of all particles (else 0: every particle kept)", size_distribution=table)

    # 5. the bundle
    cals = {(it.calibration.pixel_size, it.calibration.unit) for it in items if it.calibration is not None}
    if pixel_size is None and len(cals) == 1:
        ps, un = cals.pop()
        if un != "px":
            pixel_size, unit = ps, un
    minutes_run = (time.time() - t0) / 60
    kind_text = {"binary": "binary masks", "labels": "label images", "classes": "class-label images"}.get(mask_kind, "masks (binary or labels)")
    data_text = (f"{len(train_items)} training and {len(val_items)} validation images "
                 f"({train_px / 1e6:.2f} and {val_px / 1e6:.2f} Mpx) with {kind_text}, "
                 f"{sum(int(it.labels.max() > 0 and len(np.unique(it.labels)) - 1) for it in train_items)} annotated particles "
                 f"in the training images" + (f"; {description}" if description else ""))
    meta = make_metadata(
        name or out.name, network, description=description or f"trained on {len(items)} annotated images",
        channels=list(channel_names) if channel_names else (base.metadata["input"]["channels"] if base else None),
        normalization=norm, tile=infer_tile, overlap=overlap, pixel_size=pixel_size, unit=unit or "px",
        particle_size_px=round(size_px, 2) if size_px else None, classes=classes, polarity=net_polarity,
        postprocess={**(base.postprocess if base else {}), **post},
        training={
            "data": data_text,
            "images": [it.name for it in train_items], "validation_images": [it.name for it in val_items],
            "mask_kind": mask_kind, "crop_rows": crop_rows, "config": config.to_dict(),
            "image_polarity": polarity, "inverted": flip,
            "base_model": str(base.path) if base else None,
            "epochs_run": len(log), "minutes": round(minutes_run, 1), "workdir": str(workdir), "budget_minutes": minutes,
            "keras_backend": keras.backend.backend(),
        },
        metrics={"validation": scores},
    )
    if classifier_meta:
        meta["classifier"] = classifier_meta
    extra = {f"training/{f}": seg_dir / f for f in ("log.csv", "loss.png") if (seg_dir / f).exists()}
    bundle = save_bundle(out, model, meta, classifier=classifier, overwrite=overwrite, zip_copy=False, extra_files=extra)
    if export:
        from .models.export import export_bundle

        bundle = export_bundle(bundle, export, overwrite=True)
    if zip_copy:
        from .models import zip_bundle

        zip_bundle(out, out.with_suffix(".zip"), overwrite=overwrite)
    return bundle


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
    from .models import Head, NetworkConfig

    for it in list(train_items) + list(val_items):
        if it.keep is None:
            raise InputError(f"{it.name}: no keep mask for this image")
        if it.image.shape[-1] != 1:
            raise InputError(f"{it.name}: the particle classifier takes gray images (one channel)")
        if ((it.keep > 0) & (it.labels == 0)).mean() > 0.01:
            raise InputError(f"{it.name}: its keep mask marks pixels outside the particles of its mask "
                             "(keep masks must be subsets of the masks)")
    network = network or NetworkConfig("unet", 2, (Head("foreground"),), depth=3, base_filters=8)

    config = TrainConfig(network=network, tile=tile, batch_size=batch_size, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, validation_steps=validation_steps,
                         learning_rate=learning_rate, lr_step_epochs=max(1, epochs // 3), patience=0, seed=seed + 1, jit_compile=jit_compile,
                         augmentation=Augmentation(intensity_channels=(0,)))
    workdir = Path(workdir)
    _workdir_config(workdir, {"config": config.to_dict(), "images": [it.name for it in train_items]}, resume)
    callbacks = [_progress_callback(progress, epochs, workdir / "plan.json")] if callable(progress) else []
    if progress is True:
        callbacks.append(_EtaCallback(workdir / "plan.json", "classifier"))
    model, log = fit([_classifier_input(it) for it in train_items], [it.keep for it in train_items],
                     [_classifier_input(it) for it in val_items], [it.keep for it in val_items],
                     config, workdir, resume=resume, verbose=1 if progress is True else 0, callbacks=callbacks,
                     minutes=minutes)
    scores, kept = classifier_particle_scores(model, val_items, network, tile=max(256, tile))
    threshold = choose_classifier_threshold(scores, kept)
    decided = scores >= threshold
    meta = {"threshold": threshold, "network": network.to_dict(),
            "metrics": {"validation_particle_accuracy": round(float((decided == kept).mean()), 4) if len(kept) else None,
                        "validation_balanced_accuracy": round(balanced_accuracy(decided, kept), 4) if len(kept) else None,
                        "validation_particles": int(len(kept)), "epochs_run": len(log)},
            "threshold_chosen_by": "best balanced accuracy on the validation images of the training run",
            "input": ["normalised image", "particle mask (0/1)"]}
    return model, meta


def choose_min_score(classifier, network, probs: Sequence[np.ndarray], items: Sequence[TrainingItem], post: dict,
                     tile: int = 512, classifier_multiple_of: int = 8, grid: Sequence[float] = (0.0,) + tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
                     ) -> tuple[float, dict]:
    """The classifier threshold whose kept particles have the size distribution of the expert's.

    The classifier exists for size statistics, so its threshold is judged by them: the
    network's particles on the validation ``items`` (from ``probs`` with the post-processing
    ``post``; particles touching the border left out, as ``segment`` leaves them out) are kept
    when their classifier score reaches the threshold, and the threshold of ``grid`` whose kept
    particles' minimum Feret diameters are closest to those of the expert's keep masks
    (Kolmogorov-Smirnov distance) wins; 0 keeps every particle. Ties go to the lower threshold.

    Returns the threshold and a small table (threshold -> KS distance, particles kept).
    """
    from scipy.stats import ks_2samp

    from .inference import predict_tiled
    from .measure import measure_particles
    from .models import keras_predictor
    from .pipeline import SegmentParams, particles_from_probabilities
    from .postprocess import particle_scores

    heads = [h.kind for h in network.heads]
    params = SegmentParams(threshold=post["threshold"], split=True, seed_threshold=post["seed_threshold"], h=1.0,
                           min_area=post["min_area"], min_confidence=post.get("min_confidence") or None, fill_holes=True)
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
            out = predict_tiled(predict, x, tile=tile, overlap=16, multiple_of=classifier_multiple_of, progress=False)[..., 0]
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
    return best, {"expert_particles": int(len(expert)),
                  "ks_and_kept": {f"{t:g}": list(v) for t, v in rows.items()}}


def _classifier_input(item: TrainingItem) -> np.ndarray:
    """The classifier's two input channels: the normalised image and the particle mask."""
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
    from .inference import predict_tiled
    from .models import keras_predictor
    from .postprocess import particle_scores

    predict = keras_predictor(model)
    scores, kept = [], []
    for it in items:
        out = predict_tiled(predict, _classifier_input(it), tile=tile, overlap=16, multiple_of=network.multiple_of, progress=False)[..., 0]
        ids, s = particle_scores(it.labels, out)
        if len(ids):
            scores.append(s)
            kept.append(particle_scores(it.labels, (it.keep > 0).astype(float))[1] > 0.5)
    return (np.concatenate(scores) if scores else np.zeros(0),
            np.concatenate(kept) if kept else np.zeros(0, bool))


def balanced_accuracy(decided: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (a class absent from ``truth`` is left
    out), so that a rule keeping everything scores 0.5 whatever the share of kept particles."""
    rates = [float((decided[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
    return float(np.mean(rates)) if rates else float("nan")


def choose_classifier_threshold(scores: np.ndarray, kept: np.ndarray,
                                grid: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))) -> float:
    """The classifier threshold of ``grid`` with the best balanced accuracy on validation particles.

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
