"""Stage 3 without a GAN: the project's micrograph renderer, its settings fitted to the micrographs.

The CycleGAN of the published workflow learns the mapping from masks to micrographs; on two
CPU cores it gets a few hundred steps, too few to learn it. This module does the same job
with a physical model instead: :func:`particleseg.simulate.render_sem` (secondary-electron
yield growing with the surface tilt, shading, texture, crevices, debris, blur and noise) or,
for dark particles, :func:`particleseg.simulate.render_tem`, whose settings are *fitted* to the
user's micrographs by matching image statistics (approximate Bayesian computation by
rejection [1]_): settings are drawn from wide priors, each is rendered on a few of the stage-2
masks, and the settings whose renderings have statistics closest to those of crops of the real
micrographs are kept. Every fake micrograph is then rendered from its mask with one of the kept
settings (drawn with the mask's own seed, so a resumed run writes identical files).

The statistics, computed on images normalised as the network sees them (percentiles 1 and
99.8): gray-value quantiles, gradient-magnitude quantiles, the noise level (difference from a
3x3 median) and the power in four spatial-frequency bands. Each is standardised by its spread
over the real crops.

References
----------
.. [1] Beaumont, Zhang & Balding, "Approximate Bayesian computation in population genetics",
   Genetics 162, 2025-2035 (2002).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..io import read_array
from ..preprocess import normalize_percentile
from ..simulate import Particle, render_sem, render_tem

#: prior ranges of the fitted settings, per renderer
PRIORS = {
    "sem": {
        "edge_exponent": (0.3, 2.5),
        "directional": (0.0, 0.4),
        "texture": (0.0, 0.2),
        "crevice": (0.0, 0.7),
        "background": (0.05, 0.6),
        "debris": (0.0, 0.3),
        "blur": (0.3, 2.2),
        "noise": (0.01, 0.2),
        "brightness_low": (0.3, 1.0),
    },
    "tem": {
        "film": (0.05, 0.4),
        "film_texture": (0.0, 0.1),
        "mass_thickness": (0.2, 1.0),
        "diffraction": (0.0, 0.4),
        "fringe": (0.0, 0.1),
        "blur": (0.3, 2.2),
        "noise": (0.01, 0.2),
    },
}

_QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
_GRAD_QUANTILES = (0.5, 0.75, 0.9, 0.98)


@dataclass(frozen=True)
class RendererConfig:
    """Settings of the fit.

    Attributes
    ----------
    candidates : int
        Settings drawn from the priors in the first round.
    refine : int
        Settings drawn around the best ones in the second round.
    keep : int
        Best settings kept; each fake micrograph uses one of them.
    masks_per_candidate : int
        Stage-2 masks each candidate is rendered on.
    crops_per_image : int
        Crops of each real micrograph its statistics are measured on.
    seed : int
    """

    candidates: int = 48
    refine: int = 24
    keep: int = 8
    masks_per_candidate: int = 2
    crops_per_image: int = 4
    seed: int = 0

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (stored in stage.json and the bundle)."""
        return asdict(self)


def image_statistics(image: np.ndarray) -> np.ndarray:
    """Summary statistics of a micrograph as the network sees it (a 1-D float vector).

    Gray-value quantiles, gradient-magnitude quantiles, the noise level and the relative
    power in four spatial-frequency bands of the image normalised by its percentiles 1 and
    99.8.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> image_statistics(rng.normal(size=(64, 64))).shape
    (16,)
    """
    x = normalize_percentile(np.asarray(image, np.float32), 1.0, 99.8, (-0.5, 1.5))
    q = np.quantile(x, _QUANTILES)
    gy, gx = np.gradient(ndi.gaussian_filter(x, 0.7))
    g = np.quantile(np.hypot(gx, gy), _GRAD_QUANTILES)
    noise = np.std(x - ndi.median_filter(x, 3))
    power = np.abs(np.fft.rfft2(x - x.mean())) ** 2
    fy = np.fft.fftfreq(x.shape[0])[:, None]
    fx = np.fft.rfftfreq(x.shape[1])[None, :]
    f = np.hypot(fy, fx)
    bands = [power[(f >= lo) & (f < hi)].sum() for lo, hi in ((0.005, 0.03), (0.03, 0.08), (0.08, 0.2), (0.2, 0.5))]
    bands = np.log10(np.asarray(bands) / max(power[f >= 0.005].sum(), 1e-12) + 1e-12)
    return np.concatenate([q, 4 * g, [8 * noise], 0.5 * bands]).astype(np.float64)


def particles_from_labels(labels: np.ndarray) -> list[Particle]:
    """Turn the visible particles of a label image into renderer particles.

    Each becomes a :class:`~particleseg.simulate.Particle` (label order = painter's order)
    with a dome height: an ellipsoid cap over its distance to its outline.
    """
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            out.append(Particle(np.zeros((1, 1), bool), np.zeros((1, 1), np.float32), 0, 0))
            continue
        ys = slice(max(sl[0].start - 1, 0), sl[0].stop + 1)
        xs = slice(max(sl[1].start - 1, 0), sl[1].stop + 1)
        mask = labels[ys, xs] == k
        d = ndi.distance_transform_edt(mask)
        dmax = max(d.max(), 1.0)
        height = (dmax * np.sqrt(np.clip(1 - (1 - d / dmax) ** 2, 0, 1))).astype(np.float32)
        out.append(Particle(mask, height, ys.start, xs.start))
    return out


def render(labels: np.ndarray, settings: dict, style: str, rng: np.random.Generator) -> np.ndarray:
    """Render one fake micrograph (uint8) of the label image ``labels``.

    ``style`` is the renderer (``sem``: bright particles; ``tem``: dark particles on a bright
    film) and ``settings`` its keyword arguments (see :data:`PRIORS`).
    """
    labels = np.asarray(labels, np.int32)
    parts = particles_from_labels(labels)
    if style == "sem":
        s = dict(settings)
        low = s.pop("brightness_low")
        img = render_sem(labels, parts, rng, brightness_range=(low, max(low, 1.0) + 0.1), **s)
    else:
        img = -render_tem(labels, parts, rng, **settings)  # render_tem shows particles bright: undo
    lo, hi = np.percentile(img, [0.2, 99.8])
    return np.clip(np.round(20 + (img - lo) * 215 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def _draw(priors: dict, rng: np.random.Generator, around: dict | None = None, width: float = 0.15) -> dict:
    out = {}
    for k, (lo, hi) in priors.items():
        if around is None:
            out[k] = float(rng.uniform(lo, hi))
        else:
            out[k] = float(np.clip(around[k] + rng.normal(0, width * (hi - lo)), lo, hi))
    return out


def _crops(
    images: Sequence[np.ndarray],
    size: int,
    per_image: int,
    rng: np.random.Generator,
    coverage: tuple[float, float],
    polarity: str,
) -> list[np.ndarray]:
    """Cut random crops of the micrographs with about the masks' particle coverage.

    The coverage is measured with an Otsu threshold of the whole image; ``per_image`` crops per
    image are taken where there are enough (all crops otherwise): the statistics depend on how
    much of a crop is particle.
    """
    from skimage.filters import threshold_otsu

    lo, hi = 0.5 * coverage[0], min(1.0, 1.5 * coverage[1])
    near, other = [], []
    for im in images:
        s = min(size, *im.shape[:2])
        fg = im > threshold_otsu(im) if polarity == "bright" else im < threshold_otsu(im)
        found = 0
        for _ in range(8 * per_image):
            y = int(rng.integers(0, im.shape[0] - s + 1))
            x = int(rng.integers(0, im.shape[1] - s + 1))
            crop = (y, x, s)
            if lo <= fg[y : y + s, x : x + s].mean() <= hi and found < per_image:
                near.append((im, crop))
                found += 1
            elif len(other) < per_image * len(images):
                other.append((im, crop))
    pick = near if len(near) >= max(4, len(images)) else near + other
    return [im[y : y + s, x : x + s] for im, (y, x, s) in pick]


def fit_renderer(
    masks: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    polarity: str = "bright",
    config: RendererConfig | None = None,
    progress: bool = True,
) -> dict:
    """Fit the renderer's settings to real micrographs.

    Parameters
    ----------
    masks : sequence of label images
        Simulated masks (stage 2) to render the candidates on.
    images : sequence of 2-D arrays
        The real micrographs (data bars removed).
    polarity : {"bright", "dark"}
        Bright particles (SEM renderer) or dark ones (bright-field TEM renderer).
    config : RendererConfig

    Returns
    -------
    dict
        ``style``, ``settings`` (the kept settings, best first), ``distances`` (theirs, and
        the median over the first round's candidates for comparison) and the statistics.
    """
    from tqdm.auto import tqdm

    config = config or RendererConfig()
    style = "sem" if polarity == "bright" else "tem"
    priors = PRIORS[style]
    rng = np.random.default_rng(config.seed)
    size = int(min(min(m.shape) for m in masks))
    cover = [float((np.asarray(m) > 0).mean()) for m in masks]
    crops = _crops(images, size, config.crops_per_image, rng, (min(cover), max(cover)), polarity)
    real = np.stack([image_statistics(c) for c in crops])
    mu, sd = real.mean(0), real.std(0) + 0.05 * (np.abs(real.mean(0)) + 0.05)

    def distance(settings: dict, seed: int) -> float:
        r = np.random.default_rng(seed)
        pick = r.choice(len(masks), size=min(config.masks_per_candidate, len(masks)), replace=False)
        stats = np.stack([image_statistics(render(masks[i], settings, style, r)) for i in pick])
        return float(np.sqrt(np.mean(((stats.mean(0) - mu) / sd) ** 2)))

    tried: list[tuple[float, dict]] = []
    bar = tqdm(
        total=config.candidates + config.refine, desc="stage 3/5 renderer fit", unit="setting", disable=not progress
    )
    try:
        for i in range(config.candidates):
            s = _draw(priors, rng)
            tried.append((distance(s, config.seed * 100003 + i), s))
            bar.update(1)
        first_median = float(np.median([d for d, _ in tried]))
        for i in range(config.refine):
            best = sorted(tried, key=lambda t: t[0])[: config.keep]
            s = _draw(priors, rng, around=best[int(rng.integers(len(best)))][1])
            tried.append((distance(s, config.seed * 100003 + config.candidates + i), s))
            bar.update(1)
    finally:
        bar.close()
    best = sorted(tried, key=lambda t: t[0])[: config.keep]
    return {
        "style": style,
        "settings": [s for _, s in best],
        "distances": [round(d, 4) for d, _ in best],
        "real_crops": len(crops),
        "mask_coverage": [round(min(cover), 3), round(max(cover), 3)],
        "median_distance_of_prior_draws": round(first_median, 4),
        "config": config.to_dict(),
        "real_statistics_mean": [round(float(v), 5) for v in mu],
    }


def render_fakes(
    fit: dict, label_paths: Sequence[Path], out_dir: str | os.PathLike, seed: int = 0, progress: bool = True
) -> list[Path]:
    """Render each simulated mask into a fake micrograph ``out_dir/NAME`` (uint8).

    Each uses one of the fitted settings; files already written are skipped (resumable: mask
    ``i`` always uses the seed ``(seed, i)``, so a resumed run writes the same files).
    """
    import tifffile
    from tqdm.auto import tqdm

    from ..io import write_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outs = [out_dir / Path(p).name for p in label_paths]
    todo = [i for i, o in enumerate(outs) if not o.exists()]
    for i in tqdm(
        todo,
        total=len(outs),
        initial=len(outs) - len(todo),
        desc="stage 3/5 fake micrographs",
        unit="image",
        disable=not progress,
    ):
        rng = np.random.default_rng([seed, i])
        settings = fit["settings"][int(rng.integers(len(fit["settings"])))]
        img = render(read_array(label_paths[i]), settings, fit["style"], rng)
        write_atomic(outs[i], lambda tmp, img=img: tifffile.imwrite(tmp, img), overwrite=True)
    return outs


def save_fit(fit: dict, path: str | os.PathLike) -> None:
    """Write the fit as JSON (atomically)."""
    from ..io import write_atomic

    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(fit, indent=1)), overwrite=True)
