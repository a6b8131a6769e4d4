"""Stage 1 of the from-scratch workflow: a shape GAN that invents new single-particle masks.

A Wasserstein GAN with gradient penalty (WGAN-GP) [1]_ [2]_ is trained on a few dozen binary
outlines of single particles (augmented with horizontal and vertical flips), as in Rühle et
al. [3]_. The generator maps a normal latent vector to a ``size x size`` mask in [-1, 1];
thresholded at 0, cleaned (holes filled, largest part kept, a small opening) it gives new
particle shapes for the mask simulation (:mod:`.masks`).

References
----------
.. [1] M. Arjovsky, S. Chintala, L. Bottou, "Wasserstein generative adversarial networks",
       ICML 2017.
.. [2] I. Gulrajani et al., "Improved training of Wasserstein GANs", NeurIPS 2017.
.. [3] B. Ruehle, J. F. Krumrey, V.-D. Hodoroaba, Sci. Rep. 11, 4942 (2021).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..io import IMAGE_SUFFIXES, read_image
from . import _backend as B
from ._backend import input_gradient
from .grids import save_grid

STAGE = "stage 1, shape GAN"


@dataclass
class ShapeGanConfig:
    """Settings of the shape GAN (stage 1).

    ``filters`` sets the width of both networks (critic: f, 2f, 4f, 8f channels; generator:
    4f, 2f, f); the publication used 64, 16 is plenty for 64x64 masks and 10x cheaper.
    ``steps`` counts generator updates, each after ``critic_steps`` critic updates.
    """

    size: int = 64
    latent_dim: int = 128
    filters: int = 16
    steps: int = 2000
    batch_size: int = 32
    critic_steps: int = 3
    gp_weight: float = 10.0
    learning_rate: float = 2e-4
    min_outlines: int = 10
    bank_size: int = 3000  # shapes generated for the mask simulation
    checkpoint_every: int = 200
    seed: int = 0
    jit: bool = True

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# input


def load_outlines(folder: str | os.PathLike, size: int = 64, min_count: int = 10) -> tuple[np.ndarray, list[Path]]:
    """Read and check the outlines: each a binary image with one white particle on black.

    Each is centred (by its bounding box) on a ``size x size`` canvas.

    Returns
    -------
    masks : (N, size, size) bool
    files : list of Path

    Raises
    ------
    InputError
        Naming the file and what to change: unreadable, not binary, no or several white
        regions, white background, larger than ``size``; or too few outlines.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: outline folder not found ({STAGE}: give a folder of single-particle outlines)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < min_count:
        raise InputError(
            f"{folder}: only {len(files)} outline image(s); the {STAGE} needs at least {min_count} "
            f"(about 40 recommended): draw more single-particle outlines, white on black"
        )
    masks = []
    for f in files:
        try:
            img, _ = read_image(f)
        except InputError as exc:
            raise InputError(
                f"{exc} ({STAGE}: each outline must be a binary image of one white particle on black)"
            ) from None
        masks.append(_check_outline(img, f, size))
    return np.stack(masks), files


def _check_outline(img: np.ndarray, path: Path, size: int) -> np.ndarray:
    what = f"{STAGE}: each outline must be one white particle on a black background"
    if img.ndim != 2:
        raise InputError(f"{path}: is a stack of {img.shape[0]} images, not one outline ({what})")
    values = np.unique(img)
    if len(values) != 2:
        raise InputError(f"{path}: has {len(values)} gray values, not 2 ({what}, binary: 0 and one white value)")
    mask = img == values[1]
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if mask.mean() > 0.5 and border.mean() > 0.5:
        raise InputError(f"{path}: white background, black particle ({what}; invert the image)")
    filled = ndi.binary_fill_holes(mask)
    n = ndi.label(filled, structure=np.ones((3, 3)))[1]
    if n != 1:
        raise InputError(f"{path}: has {n} separate white regions ({what}; keep one particle per file)")
    ys, xs = np.nonzero(filled)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    if h > size or w > size:
        raise InputError(
            f"{path}: the particle is {h}x{w} pixels, larger than the shape GAN's {size}x{size} "
            f"({STAGE}: use --shape-size {int(2 ** np.ceil(np.log2(max(h, w))))} or crop the outline)"
        )
    out = np.zeros((size, size), bool)
    y0, x0 = (size - h) // 2, (size - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = filled[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return out


def augment_flips(masks: np.ndarray) -> np.ndarray:
    """Return the masks, flipped up-down, left-right and both (4x as many)."""
    return np.concatenate([masks, masks[:, ::-1], masks[:, :, ::-1], masks[:, ::-1, ::-1]])


# --------------------------------------------------------------------------------------------
# networks


def build_generator(size: int = 64, latent_dim: int = 128, filters: int = 16):
    """Build the generator: latent vector -> ``(size, size, 1)`` mask in [-1, 1].

    A dense layer to ``size/8`` and three nearest-neighbour upsamplings, each followed by a 3x3
    convolution, batch normalisation and a leaky ReLU (tanh at the end).
    """
    import keras
    from keras import layers

    if size % 8:
        raise ValueError(f"shape size must be a multiple of 8, got {size}")
    s = size // 8
    z = keras.Input((latent_dim,), name="latent")
    x = layers.Dense(s * s * 4 * filters, use_bias=False)(z)
    x = layers.BatchNormalization()(x)
    x = layers.LeakyReLU(0.2)(x)
    x = layers.Reshape((s, s, 4 * filters))(x)
    for ch in (2 * filters, filters):
        x = layers.UpSampling2D(2)(x)
        x = layers.Conv2D(ch, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.UpSampling2D(2)(x)
    x = layers.Conv2D(1, 3, padding="same")(x)
    x = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(z, x, name="shape_generator")


def build_critic(size: int = 64, filters: int = 16):
    """Build the critic: ``(size, size, 1)`` mask -> a score.

    Four 5x5 stride-2 convolutions with leaky ReLUs (no batch normalisation, which the gradient
    penalty forbids) and a dense layer.
    """
    import keras
    from keras import layers

    x_in = keras.Input((size, size, 1), name="mask")
    x = x_in
    for k in range(4):
        x = layers.Conv2D(filters * 2**k, 5, strides=2, padding="same")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(1, dtype="float32")(x)
    return keras.Model(x_in, x, name="shape_critic")


def _critic_loss(gp_weight):
    from keras import ops

    def loss(apply, batch):
        fake = ops.stop_gradient(apply("generator", batch["z"]))
        real = batch["real"]
        d_real = apply("critic", real)
        d_fake = apply("critic", fake)
        alpha = batch["alpha"]
        mixed = real + alpha * (fake - real)
        grads = input_gradient(lambda x: apply("critic", x), mixed)
        norm = ops.sqrt(ops.sum(ops.square(grads), axis=[1, 2, 3]) + 1e-12)
        gp = ops.mean(ops.square(norm - 1.0))
        wasserstein = ops.mean(d_real) - ops.mean(d_fake)
        return -wasserstein + gp_weight * gp, {"critic_w": wasserstein, "gp": gp}

    return loss


def _generator_loss(apply, batch):
    from keras import ops

    d_fake = apply("critic", apply("generator", batch["z"]))
    loss = -ops.mean(d_fake)
    return loss, {"g_loss": loss}


# --------------------------------------------------------------------------------------------
# training


def train_shape_gan(masks: np.ndarray, config: ShapeGanConfig, workdir: str | os.PathLike, progress: bool = True):
    """Train the WGAN-GP on ``masks`` (N, size, size) bool (flips are added here).

    Writes into ``workdir``: ``checkpoint.npz`` (weights, optimiser state and the step, every
    ``checkpoint_every`` steps; an interrupted run resumes from it), ``log.csv`` (losses),
    ``progress.png`` (generated shapes at the last checkpoint) and ``generator.keras``.

    Returns the trained generator (a Keras model).
    """
    import keras
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = augment_flips(np.asarray(masks, bool)).astype(np.float32)[..., None] * 2 - 1
    keras.utils.set_random_seed(config.seed)
    gen = build_generator(config.size, config.latent_dim, config.filters)
    critic = build_critic(config.size, config.filters)
    models = {"generator": gen, "critic": critic}
    opt_c = keras.optimizers.Adam(config.learning_rate, beta_1=0.5, beta_2=0.9)
    opt_g = keras.optimizers.Adam(config.learning_rate, beta_1=0.5, beta_2=0.9)
    state = B.SharedState(models) if B.backend() == "jax" else None
    step_c = B.Step(models, ["critic"], opt_c, _critic_loss(config.gp_weight), config.jit, state)
    step_g = B.Step(models, ["generator"], opt_g, _generator_loss, config.jit, state)
    optimizers = {"critic": opt_c, "generator": opt_g}

    start = B.resume(workdir, models, optimizers, state)

    bs, zd = config.batch_size, config.latent_dim
    fixed_z = np.random.default_rng([config.seed, 999]).normal(size=(32, zd)).astype(np.float32)
    rows = []
    bar = tqdm(total=config.steps, initial=start, desc="stage 1/5 shape GAN", unit="step", disable=not progress)
    try:
        for step in range(start, config.steps):
            rng = np.random.default_rng([config.seed, step])
            for _ in range(config.critic_steps):
                idx = rng.integers(0, len(data), bs)
                m = step_c(
                    {"real": data[idx], "z": rng.normal(size=(bs, zd)), "alpha": rng.uniform(size=(bs, 1, 1, 1))}
                )
            m.update(step_g({"z": rng.normal(size=(bs, zd))}))
            rows.append({"step": step + 1, **{k: round(v, 5) for k, v in m.items()}})
            bar.update(1)
            bar.set_postfix(w=f"{m['critic_w']:.3f}", gp=f"{m['gp']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                B.checkpoint(workdir, models, optimizers, step + 1, state, rows)
                rows = []
                shapes = _to_masks(_predict(gen, fixed_z))
                save_grid(workdir / "progress.png", [s.astype(np.uint8) * 255 for s in shapes], columns=8)
    finally:
        bar.close()
    if state is not None:
        state.sync()
    B.save_model(gen, workdir / "generator.keras")
    return gen


def _predict(gen, z: np.ndarray, batch: int = 256) -> np.ndarray:
    from keras import ops

    out = [ops.convert_to_numpy(gen(z[i : i + batch], training=False)) for i in range(0, len(z), batch)]
    return np.concatenate(out)[..., 0]


def _to_masks(raw: np.ndarray) -> list[np.ndarray]:
    return [clean_shape(r > 0) for r in raw]


def clean_shape(mask: np.ndarray, opening: int = 2) -> np.ndarray:
    """Make a generated mask into one solid particle.

    Holes filled, smoothed by a binary opening with a disk of radius ``opening``, the largest
    8-connected part kept.
    """
    from skimage.morphology import disk

    mask = ndi.binary_fill_holes(mask)
    if opening > 0:
        mask = ndi.binary_opening(mask, structure=disk(opening))
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        mask = lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)
    return mask


def generate_shapes(
    generator, n: int, rng: np.random.Generator, min_area: int = 16, latent_dim: int | None = None
) -> list[np.ndarray]:
    """Return ``n`` cleaned shapes from the generator.

    Empty and tiny ones (below ``min_area`` pixels) and shapes cut by the canvas border are left
    out, so fewer may come back.

    """
    latent_dim = latent_dim or int(generator.inputs[0].shape[-1])
    raw = _predict(generator, rng.normal(size=(n, latent_dim)).astype(np.float32))
    out = []
    for m in _to_masks(raw):
        if m.sum() < min_area:
            continue
        if m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any():
            continue
        out.append(m)
    return out


def shape_bank(generator, config: ShapeGanConfig, reference: np.ndarray, workdir: str | os.PathLike) -> np.ndarray:
    """Generate ``config.bank_size`` shapes, save them as ``shapes.npz`` and a sample grid.

    Raises InputError when (almost) every generated shape is empty or cut by the border: the
    GAN did not learn the outlines.
    """
    workdir = Path(workdir)
    rng = np.random.default_rng([config.seed, 12345])
    min_area = max(16, int(0.05 * np.median(reference.reshape(len(reference), -1).sum(1))))
    want = config.bank_size
    shapes: list[np.ndarray] = []
    tried = 0
    while len(shapes) < want and tried < 4 * want:
        k = min(1024, 2 * (want - len(shapes)) + 16)
        shapes += generate_shapes(generator, k, rng, min_area, config.latent_dim)
        tried += k
    if len(shapes) < max(16, want // 10):
        raise InputError(
            f"{workdir}: the shape generator made only {len(shapes)} usable shapes out of {tried} "
            f"({STAGE}: train longer with more --shape-steps, or check that the outlines are white particles on black)"
        )
    shapes = np.stack(shapes[:want])
    tmp = workdir / ".tmp-shapes.npz"
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, shapes=shapes)
    os.replace(tmp, workdir / "shapes.npz")
    save_grid(workdir / "samples.png", [s.astype(np.uint8) * 255 for s in shapes[:64]], columns=8)
    save_grid(workdir / "outlines.png", [s.astype(np.uint8) * 255 for s in reference[:64]], columns=8)
    return shapes


def shape_stats(masks: Sequence[np.ndarray]) -> dict:
    """Median area and equivalent circular diameter (pixels) of masks."""
    areas = np.array([np.count_nonzero(m) for m in masks], float)
    return {"median_area": float(np.median(areas)), "median_ecd": float(np.median(np.sqrt(4 * areas / np.pi)))}
