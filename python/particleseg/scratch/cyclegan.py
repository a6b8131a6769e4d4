"""Stage 3 of the from-scratch workflow: a CycleGAN from simulated masks to micrographs.

Unpaired image-to-image translation [1]_ between domain A, the simulated masks (the binary
training targets, particles +1 and background -1; inverted for dark particles so that both
domains look alike), and domain B, crops of the real micrographs (percentile-normalised to
[-1, 1]). Two ResNet generators (``G_AB``: mask -> micrograph, ``G_BA``: micrograph -> mask)
and two PatchGAN discriminators are trained with least-squares adversarial losses, a cycle
loss (L1, weight ``cycle_weight``), an identity loss (L1, weight ``identity_weight``) and
image pools of earlier fakes for the discriminators [2]_, as in Rühle et al. [3]_. ``G_AB``
then turns every simulated mask into a fake micrograph: the fake training pairs.

References
----------
.. [1] J.-Y. Zhu, T. Park, P. Isola, A. A. Efros, "Unpaired image-to-image translation using
       cycle-consistent adversarial networks", ICCV 2017.
.. [2] A. Shrivastava et al., "Learning from simulated and unsupervised images through
       adversarial training", CVPR 2017 (history of generated images).
.. [3] B. Ruehle, J. F. Krumrey, V.-D. Hodoroaba, Sci. Rep. 11, 4942 (2021).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_array, write_atomic
from ..preprocess import normalize_percentile
from . import _backend as B
from .grids import save_grid
from .masks import target_mask

STAGE = "stage 3, CycleGAN"


@dataclass
class CycleGanConfig:
    """Settings of the CycleGAN (stage 3).

    ``filters``/``res_blocks`` size the generators (publication: 64 filters, 9 blocks at
    384x384; the CPU configuration uses fewer), ``disc_filters``/``disc_layers`` the
    PatchGAN discriminators. ``crop`` is the side of the training crops (the generator is
    fully convolutional and translates whole masks afterwards). ``steps`` counts updates of
    both generators and both discriminators; the learning rate decays linearly to 0 over the
    last ``decay`` fraction of them. ``particle_crops``: real crops are redrawn (up to 10
    times) until their mean intensity is at least 1.1x the image mean (darker for dark
    particles), so that most show particles, as in the publication.
    """

    filters: int = 32
    res_blocks: int = 6
    disc_filters: int = 32
    disc_layers: int = 3
    crop: int = 256
    batch_size: int = 1
    steps: int = 6000
    learning_rate: float = 2e-4
    decay: float = 0.5
    cycle_weight: float = 10.0
    identity_weight: float = 5.0
    pool_size: int = 50
    particle_crops: bool = True
    checkpoint_every: int = 250
    inference_batch: int = 4
    seed: int = 0
    jit: bool = True

    def to_dict(self) -> dict:
        """Return the settings as a plain dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------
# networks


def _instance_norm(x, name):
    from keras import layers

    return layers.GroupNormalization(groups=int(x.shape[-1]), epsilon=1e-5, name=name)(x)


def build_generator(filters: int = 32, res_blocks: int = 6, name: str = "generator"):
    """Build the ResNet generator [1].

    A 7x7 convolution, two stride-2 convolutions, ``res_blocks`` residual blocks, two
    nearest-neighbour upsamplings with 3x3 convolutions (no checkerboard artefacts) and a 7x7
    convolution with tanh. Instance normalisation, ReLUs. Input sides must be multiples of 4.
    """
    import keras
    from keras import layers

    x_in = keras.Input((None, None, 1), name="image")
    x = layers.Conv2D(filters, 7, padding="same", name=f"{name}_c7")(x_in)
    x = layers.ReLU()(_instance_norm(x, f"{name}_c7_in"))
    for i, f in enumerate((2 * filters, 4 * filters)):
        x = layers.Conv2D(f, 3, strides=2, padding="same", name=f"{name}_down{i}")(x)
        x = layers.ReLU()(_instance_norm(x, f"{name}_down{i}_in"))
    for i in range(res_blocks):
        y = layers.Conv2D(4 * filters, 3, padding="same", name=f"{name}_res{i}_a")(x)
        y = layers.ReLU()(_instance_norm(y, f"{name}_res{i}_a_in"))
        y = layers.Conv2D(4 * filters, 3, padding="same", name=f"{name}_res{i}_b")(y)
        y = _instance_norm(y, f"{name}_res{i}_b_in")
        x = layers.Add()([x, y])
    for i, f in enumerate((2 * filters, filters)):
        x = layers.UpSampling2D(2, name=f"{name}_up{i}_resize")(x)
        x = layers.Conv2D(f, 3, padding="same", name=f"{name}_up{i}")(x)
        x = layers.ReLU()(_instance_norm(x, f"{name}_up{i}_in"))
    x = layers.Conv2D(1, 7, padding="same", name=f"{name}_out")(x)
    x = layers.Activation("tanh", dtype="float32")(x)
    return keras.Model(x_in, x, name=name)


def build_discriminator(filters: int = 32, layers_: int = 3, name: str = "discriminator"):
    """Build the PatchGAN discriminator [1].

    4x4 convolutions, ``layers_`` with stride 2 (the first without normalisation), one with
    stride 1, and a 1-channel output map of real/fake scores.
    """
    import keras
    from keras import layers

    x_in = keras.Input((None, None, 1), name="image")
    x = layers.LeakyReLU(0.2)(layers.Conv2D(filters, 4, strides=2, padding="same", name=f"{name}_c0")(x_in))
    for i in range(1, layers_ + 1):
        f = filters * 2 ** min(i, 3)
        x = layers.Conv2D(f, 4, strides=2 if i < layers_ else 1, padding="same", name=f"{name}_c{i}")(x)
        x = layers.LeakyReLU(0.2)(_instance_norm(x, f"{name}_c{i}_in"))
    x = layers.Conv2D(1, 4, padding="same", name=f"{name}_out", dtype="float32")(x)
    return keras.Model(x_in, x, name=name)


def _generator_loss(cycle_weight, identity_weight):
    from keras import ops

    def loss(apply, batch):
        a, b = batch["a"], batch["b"]
        fake_b = apply("g_ab", a)
        fake_a = apply("g_ba", b)
        adv = ops.mean(ops.square(apply("d_b", fake_b) - 1.0)) + ops.mean(ops.square(apply("d_a", fake_a) - 1.0))
        cyc = ops.mean(ops.abs(apply("g_ba", fake_b) - a)) + ops.mean(ops.abs(apply("g_ab", fake_a) - b))
        total = adv + cycle_weight * cyc
        metrics = {"g_adv": adv, "cycle": cyc}
        if identity_weight > 0:
            idt = ops.mean(ops.abs(apply("g_ab", b) - b)) + ops.mean(ops.abs(apply("g_ba", a) - a))
            total = total + identity_weight * idt
            metrics["identity"] = idt
        return total, metrics, {"fake_a": fake_a, "fake_b": fake_b}

    return loss


def _discriminator_loss(apply, batch):
    from keras import ops

    def lsgan(name, real, fake):
        return 0.5 * (ops.mean(ops.square(apply(name, real) - 1.0)) + ops.mean(ops.square(apply(name, fake))))

    la = lsgan("d_a", batch["a"], batch["pool_a"])
    lb = lsgan("d_b", batch["b"], batch["pool_b"])
    return la + lb, {"d_a": la, "d_b": lb}


class ImagePool:
    """History of generated images [2].

    Until full, a new fake is stored and returned; then, with probability 1/2, a stored fake is
    returned and replaced by the new one.
    """

    def __init__(self, size: int = 50):
        self.size, self.images = size, []

    def query(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return the batch to show the discriminator for the new fakes ``images``.

        Each image goes through the pool as described above; with ``size <= 0`` the batch is
        returned unchanged.
        """
        if self.size <= 0:
            return images
        out = []
        for im in images:
            if len(self.images) < self.size:
                self.images.append(im.copy())
                out.append(im)
            elif rng.random() < 0.5:
                k = int(rng.integers(len(self.images)))
                out.append(self.images[k])
                self.images[k] = im.copy()
            else:
                out.append(im)
        return np.stack(out)


# --------------------------------------------------------------------------------------------
# data


def normalize_real(image: np.ndarray) -> np.ndarray:
    """Scale a micrograph to [-1, 1]: percentiles 1 and 99.8 to -1 and 1, clipped."""
    return normalize_percentile(image, 1.0, 99.8, (0.0, 1.0)) * 2 - 1


def mask_domain(target: np.ndarray, polarity: str = "bright") -> np.ndarray:
    """Return a binary target as a domain-A image in [-1, 1] (particles bright, or dark for ``dark``)."""
    m = np.asarray(target, np.float32) * 2 - 1
    return m if polarity == "bright" else -m


def _random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    y0 = int(rng.integers(0, img.shape[0] - size + 1))
    x0 = int(rng.integers(0, img.shape[1] - size + 1))
    return img[y0 : y0 + size, x0 : x0 + size]


def _augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        crop = crop[::-1]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.rot90(crop, int(rng.integers(4)))


def real_crop(images: Sequence[np.ndarray], size: int, rng: np.random.Generator, particle_crops: bool, polarity: str):
    """Return a random ``size`` x ``size`` crop of a random image, flipped and rotated at random.

    With ``particle_crops``, the crop is drawn again (up to 10 times) until its mean is at least
    10 % above the image's mean (``bright``) or at most 10 % below it (``dark``), compared in
    [0, 1], so that crops tend to show particles.
    """
    img = images[int(rng.integers(len(images)))]
    crop = _random_crop(img, size, rng)
    if particle_crops:
        mean = img.mean()
        for _ in range(10):
            m = crop.mean()
            # images are in [-1, 1]: compare in [0, 1]
            if (polarity == "bright" and (m + 1) >= 1.1 * (mean + 1)) or (
                polarity == "dark" and (m + 1) <= 0.9 * (mean + 1)
            ):
                break
            crop = _random_crop(img, size, rng)
    return _augment(crop, rng)


# --------------------------------------------------------------------------------------------
# training


def build_models(config: CycleGanConfig) -> dict:
    """Build the four CycleGAN networks: generators ``g_ab``, ``g_ba`` and discriminators ``d_a``, ``d_b``."""
    return {
        "g_ab": build_generator(config.filters, config.res_blocks, "g_ab"),
        "g_ba": build_generator(config.filters, config.res_blocks, "g_ba"),
        "d_a": build_discriminator(config.disc_filters, config.disc_layers, "d_a"),
        "d_b": build_discriminator(config.disc_filters, config.disc_layers, "d_b"),
    }


def train_cyclegan(
    masks: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    config: CycleGanConfig,
    workdir: str | os.PathLike,
    polarity: str = "bright",
    progress: bool = True,
):
    """Train the CycleGAN on domain-A images ``masks`` and domain-B images ``images``.

    Both are already in [-1, 1], see :func:`mask_domain` and :func:`normalize_real`.

    Writes into ``workdir``: ``checkpoint.npz`` (every ``checkpoint_every`` steps; an
    interrupted run resumes from it, with a fresh image pool), ``log.csv``, ``progress.png``
    (rows: mask, fake micrograph, real micrograph, fake mask) and ``g_ab.keras``.

    Returns the mask-to-micrograph generator ``G_AB``.
    """
    import keras
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    small = min(min(m.shape[:2]) for m in list(masks) + list(images))
    if config.crop > small or config.crop % 4:
        raise InputError(
            f"{workdir}: CycleGAN crop {config.crop} must be a multiple of 4 and at most the smallest "
            f"image or mask side ({small}) ({STAGE}: set --cyclegan-crop)"
        )
    keras.utils.set_random_seed(config.seed)
    models = build_models(config)
    sched = B.LinearDecay(config.learning_rate, config.steps, int(config.steps * (1 - config.decay)))
    sched_d = B.LinearDecay(config.learning_rate, config.steps, int(config.steps * (1 - config.decay)))
    opt_g = keras.optimizers.Adam(sched, beta_1=0.5)
    opt_d = keras.optimizers.Adam(sched_d, beta_1=0.5)
    state = B.SharedState(models) if B.backend() == "jax" else None
    step_g = B.Step(
        models, ["g_ab", "g_ba"], opt_g, _generator_loss(config.cycle_weight, config.identity_weight), config.jit, state
    )
    step_d = B.Step(models, ["d_a", "d_b"], opt_d, _discriminator_loss, config.jit, state)
    optimizers = {"g": opt_g, "d": opt_d}

    start = B.resume(workdir, models, optimizers, state)

    pool_a, pool_b = ImagePool(config.pool_size), ImagePool(config.pool_size)
    show_rng = np.random.default_rng([config.seed, 777])
    show_a = np.stack([_random_crop(masks[i % len(masks)], config.crop, show_rng) for i in range(4)])[..., None]
    show_b = np.stack([real_crop(images, config.crop, show_rng, config.particle_crops, polarity) for _ in range(4)])[
        ..., None
    ]
    rows = []
    bs, c = config.batch_size, config.crop
    bar = tqdm(total=config.steps, initial=start, desc="stage 3/5 CycleGAN", unit="step", disable=not progress)
    try:
        for step in range(start, config.steps):
            rng = np.random.default_rng([config.seed, step])
            a = np.stack(
                [_augment(_random_crop(masks[int(rng.integers(len(masks)))], c, rng), rng) for _ in range(bs)]
            )[..., None]
            b = np.stack([real_crop(images, c, rng, config.particle_crops, polarity) for _ in range(bs)])[..., None]
            m = step_g({"a": a, "b": b})
            fakes = step_g.outputs
            m.update(
                step_d(
                    {
                        "a": a,
                        "b": b,
                        "pool_a": pool_a.query(fakes["fake_a"], rng),
                        "pool_b": pool_b.query(fakes["fake_b"], rng),
                    }
                )
            )
            rows.append({"step": step + 1, **{k: round(v, 5) for k, v in m.items()}})
            bar.update(1)
            bar.set_postfix(cycle=f"{m['cycle']:.3f}", d_b=f"{m['d_b']:.3f}")
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                B.checkpoint(workdir, models, optimizers, step + 1, state, rows)
                rows = []
                fb = translate(models["g_ab"], show_a[..., 0])
                fa = translate(models["g_ba"], show_b[..., 0])
                tiles = (
                    [_u8(x) for x in show_a[..., 0]]
                    + [_u8(x) for x in fb]
                    + [_u8(x) for x in show_b[..., 0]]
                    + [_u8(x) for x in fa]
                )
                save_grid(workdir / "progress.png", tiles, columns=4)
    finally:
        bar.close()
    if state is not None:
        state.sync()
    B.save_model(models["g_ab"], workdir / "g_ab.keras")
    return models["g_ab"]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(x) + 1) * 127.5, 0, 255).astype(np.uint8)


def translate(generator, images: np.ndarray | Sequence[np.ndarray], batch: int = 4) -> np.ndarray:
    """Run a generator on ``(N, H, W)`` images in [-1, 1] (sides multiples of 4)."""
    from keras import ops

    images = np.asarray(images, np.float32)
    out = [
        ops.convert_to_numpy(generator(images[i : i + batch, ..., None], training=False))[..., 0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out) if out else np.zeros_like(images)


def fake_micrographs(
    generator,
    label_paths: Sequence[Path],
    out_dir: str | os.PathLike,
    polarity: str = "bright",
    batch: int = 4,
    progress: bool = True,
) -> list[Path]:
    """Translate each simulated mask into a fake micrograph ``out_dir/NNNNN.tif`` (uint8).

    Masks whose micrograph is already written are skipped (resumable).

    """
    import tifffile
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = [out_dir / p.name for p in label_paths]
    todo = [i for i, o in enumerate(outs) if not o.exists()]
    bar = tqdm(
        total=len(outs),
        initial=len(outs) - len(todo),
        desc="stage 3/5 fake micrographs",
        unit="image",
        disable=not progress,
    )
    try:
        for k in range(0, len(todo), batch):
            idx = todo[k : k + batch]
            a = np.stack([mask_domain(target_mask(read_array(label_paths[i])), polarity) for i in idx])
            for i, img in zip(idx, translate(generator, a, batch)):
                write_atomic(outs[i], lambda tmp, img=img: tifffile.imwrite(tmp, _u8(img)), overwrite=True)
            bar.update(len(idx))
    finally:
        bar.close()
    return outs
