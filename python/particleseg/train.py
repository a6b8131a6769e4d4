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
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from .errors import InputError
from .models.architectures import Head, NetworkConfig

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


def separated_foreground(labels: np.ndarray) -> np.ndarray:
    """Foreground of a label image with one-pixel background lines between touching particles
    (the convention of manual masks such as the TiO2 data set)."""
    labels = np.asarray(labels)
    # a pixel is a separator if a 4-neighbour with a *smaller* nonzero label touches it, so
    # only one of the two touching particles gives up its border pixels
    neigh_min = labels.copy()
    for shift in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        rolled = np.roll(labels, shift, axis=(0, 1))
        edge = np.zeros_like(labels, bool)
        if shift[0] == 1:
            edge[0] = True
        elif shift[0] == -1:
            edge[-1] = True
        elif shift[1] == 1:
            edge[:, 0] = True
        else:
            edge[:, -1] = True
        rolled = np.where(edge, 0, rolled)
        neigh_min = np.where((rolled > 0) & (rolled < neigh_min), rolled, neigh_min)
    return (labels > 0) & (neigh_min == labels)


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

    ``foreground``: :func:`separated_foreground`; ``distance``: :func:`normalized_distance`;
    ``boundary``: :func:`boundary_map`; ``classes``: one-hot of ``classes`` (a class-label image).
    """
    parts = []
    for head in heads:
        if head.kind == "foreground":
            parts.append(separated_foreground(labels).astype(np.float32)[..., None])
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
        image = np.array(image, np.float32)
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
    import keras
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
    dice: bool = False
    class_balance: bool = True
    patience: int = 15  # early stopping on validation loss; 0 disables
    seed: int = 0
    jit_compile: bool | None = None  # XLA; None lets Keras decide (True trains ~1.6x faster on TF CPU)
    augmentation: Augmentation = field(default_factory=Augmentation)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        return d


def step_decay(config: TrainConfig) -> Callable[[int], float]:
    return lambda epoch: config.learning_rate * config.lr_step_factor ** (epoch // max(1, config.lr_step_epochs))


def fit(
    train_images: Sequence[np.ndarray],
    train_labels: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray],
    val_labels: Sequence[np.ndarray],
    config: TrainConfig,
    workdir: str | os.PathLike,
    resume: bool = True,
    verbose: int = 1,
):
    """Train a network on normalised images ``(Y, X, C)`` float32 and instance label images.

    Writes into ``workdir``: ``checkpoint.keras`` (model and optimiser state after the last
    finished epoch), ``best.keras`` (lowest validation loss), ``log.csv`` (one row per epoch)
    and ``loss.png``. With ``resume``, a run whose ``checkpoint.keras`` exists continues after
    the last finished epoch with the same batches it would have seen.

    Returns the trained Keras model (best weights) and the epoch log as a list of dicts.
    """
    import keras

    from .models import build_network

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_pairs(train_images, train_labels, config.tile)
    _check_pairs(val_images, val_labels, config.tile)
    heads = config.network.heads
    train_t = [make_targets(l, heads) for l in train_labels]
    val_t = [make_targets(l, heads) for l in val_labels]
    fg_frac = float(np.mean([(l > 0).mean() for l in train_labels])) if config.class_balance else None
    if fg_frac is not None and fg_frac == 0:
        raise InputError("training masks are all empty: nothing to learn")

    keras.utils.set_random_seed(config.seed)
    ckpt, best, log_path = workdir / "checkpoint.keras", workdir / "best.keras", workdir / "log.csv"
    state_path = workdir / "state.json"
    initial_epoch = 0
    loss = make_loss(heads, fg_frac, config.dice)
    if resume and ckpt.exists() and state_path.exists():
        model = keras.saving.load_model(ckpt, compile=False)
        initial_epoch = json.loads(state_path.read_text())["epochs_done"]
    else:
        model = build_network(config.network)
        for p in (log_path, best, ckpt, state_path):
            p.unlink(missing_ok=True)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss,
                  jit_compile="auto" if config.jit_compile is None else config.jit_compile)
    if initial_epoch and (workdir / "optimizer.npz").exists():
        _restore_optimizer(model, workdir / "optimizer.npz")

    train_seq = make_tile_sequence(train_images, train_t, config.tile, config.batch_size, config.steps_per_epoch,
                                   config.augmentation, config.seed)
    train_seq.epoch = initial_epoch
    val_seq = make_tile_sequence(val_images, val_t, config.tile, config.batch_size, config.validation_steps,
                                 None, config.seed + 1, shuffle=False)
    callbacks = [
        keras.callbacks.LearningRateScheduler(step_decay(config)),
        keras.callbacks.CSVLogger(str(log_path), append=initial_epoch > 0),
        keras.callbacks.ModelCheckpoint(str(best), monitor="val_loss", save_best_only=True),
        _Checkpoint(ckpt, state_path, workdir / "optimizer.npz"),
    ]
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience))
    if initial_epoch < config.epochs:
        model.fit(train_seq, validation_data=val_seq, epochs=config.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=verbose)
    log = _read_log(log_path)
    plot_loss(log, workdir / "loss.png")
    if best.exists():
        model = keras.saving.load_model(best, compile=False)
    return model, log


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
