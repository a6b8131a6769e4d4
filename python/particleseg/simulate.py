"""Simulated SEM images of agglomerated particles, with exact instance labels.

The shipped default model is trained only on these images, so that it may be redistributed.
The simulator is built from small, reusable pieces:

* :func:`perlin_noise` - smooth random fields (particle density, background shading);
* :func:`random_particle` - a star-convex particle outline with a dome-shaped height map;
* :func:`place_particles` - non-uniform placement (density from Perlin noise, agglomerates
  grown by attaching particles to their neighbours) with bounded occlusion, painter's order;
* :func:`render_sem` - secondary-electron contrast: yield rising with the surface tilt
  (bright rims, the *edge effect*), directional shading, surface texture, dark crevices where
  one particle lies on another, background with debris, defocus blur, shot and scan noise;
* :func:`simulate_sem_image` - all of the above with randomised settings;
* :func:`shaped_particle`, :func:`render_tem`, :func:`draw_annotations` and
  :func:`simulate_micrograph` - other materials: spheres, rods, cubes, faceted plates,
  core-shell particles, TEM bright-field contrast (shown inverted, as the pipeline shows a
  dark-on-bright image to the network), burned-in scale bars and panel letters.

References
----------
.. [1] L. Reimer, "Scanning Electron Microscopy", 2nd ed., Springer (1998), ch. 4
       (secondary-electron yield and topographic contrast).
.. [2] K. Perlin, "Improving noise", ACM Trans. Graphics 21, 681-682 (2002).
.. [3] B. Ruehle et al., Sci. Rep. 11, 4942 (2021): Perlin-noise placement of simulated
       particles so that they agglomerate as in real samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

# scikit-image and particleseg.postprocess (pandas) are imported inside the functions that use
# them: `particleseg train-from-scratch --help` imports this module (through scratch.workflow) and
# may load NumPy and SciPy only (tests/test_startup.py).


def perlin_noise(
    shape: tuple[int, int], scale: float, rng: np.random.Generator, octaves: int = 1, persistence: float = 0.5
) -> np.ndarray:
    """Gradient (Perlin) noise on a grid, normalised to [0, 1].

    Parameters
    ----------
    shape : (int, int)
    scale : float
        Size in pixels of one lattice cell of the first octave (the feature size).
    octaves : int
        Each further octave halves the cell size and multiplies the amplitude by ``persistence``.
    """
    h, w = shape
    total = np.zeros(shape, np.float64)
    amp = 1.0
    for o in range(octaves):
        cell = max(2.0, scale / 2**o)
        gh, gw = int(np.ceil(h / cell)) + 2, int(np.ceil(w / cell)) + 2
        angles = rng.uniform(0, 2 * np.pi, (gh, gw))
        gx, gy = np.cos(angles), np.sin(angles)
        y = (np.arange(h) + rng.uniform(0, cell)) / cell
        x = (np.arange(w) + rng.uniform(0, cell)) / cell
        yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
        fy, fx = (y - yi)[:, None], (x - xi)[None, :]

        # this iteration's lattice bound as defaults (B023): dot is called below, in the same iteration
        def dot(oy, ox, gx=gx, gy=gy, yi=yi, xi=xi, fx=fx, fy=fy):
            return gx[yi[:, None] + oy, xi[None, :] + ox] * (fx - ox) + gy[yi[:, None] + oy, xi[None, :] + ox] * (
                fy - oy
            )

        def fade(t):
            return t * t * t * (t * (t * 6 - 15) + 10)

        u, v = fade(fx), fade(fy)
        n0 = dot(0, 0) * (1 - u) + dot(0, 1) * u
        n1 = dot(1, 0) * (1 - u) + dot(1, 1) * u
        total += amp * (n0 * (1 - v) + n1 * v)
        amp *= persistence
    lo, hi = total.min(), total.max()
    return ((total - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


@dataclass
class Particle:
    """A particle as placed: its mask and dome height in a local box at ``(y0, x0)``."""

    mask: np.ndarray
    height: np.ndarray
    y0: int
    x0: int


def random_particle(
    rng: np.random.Generator, diameter: float, elongation: float = 1.3, roughness: float = 0.08, lobed: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a random star-convex particle: its mask and a dome-shaped height map.

    The outline is ``r(theta) = R (1 + sum_k a_k cos(k theta + phi_k))`` (k = 2..6, amplitudes
    decaying with k), stretched by an aspect ratio drawn up to ``elongation`` and rotated; with
    probability ``lobed`` it is fused with a second, smaller blob (as sintered primary
    particles look). The height rises from 0 at the outline like an ellipsoid cap, so the
    surface is steepest at the border.

    Returns
    -------
    mask : bool array, height : float32 array (same shape, 0 outside, about R at the top)
    """
    from skimage.draw import polygon  # lazy: see the note at the top

    def outline(radius):
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 7):
            r += rng.normal(0, roughness / (k - 1)) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        r = np.clip(r, 0.6, 1.4) * radius
        ar = rng.uniform(1.0, elongation)
        x, y = r * np.cos(t) * np.sqrt(ar), r * np.sin(t) / np.sqrt(ar)
        a = rng.uniform(0, np.pi)
        return x * np.cos(a) - y * np.sin(a), x * np.sin(a) + y * np.cos(a)

    radius = diameter / 2
    xs, ys = outline(radius)
    if rng.random() < lobed:
        x2, y2 = outline(radius * rng.uniform(0.5, 0.8))
        ang = rng.uniform(0, 2 * np.pi)
        off = radius * rng.uniform(0.5, 0.8)
        xs, ys = [xs, x2 + off * np.cos(ang)], [ys, y2 + off * np.sin(ang)]
    else:
        xs, ys = [xs], [ys]
    allx, ally = np.concatenate(xs), np.concatenate(ys)
    pad = 2
    x_min, y_min = np.floor(allx.min()) - pad, np.floor(ally.min()) - pad
    size = (int(np.ceil(ally.max() - y_min)) + pad, int(np.ceil(allx.max() - x_min)) + pad)
    mask = np.zeros(size, bool)
    for px, py in zip(xs, ys):
        rr, cc = polygon(py - y_min, px - x_min, size)
        mask[rr, cc] = True
    d = ndi.distance_transform_edt(mask)
    dmax = max(d.max(), 1.0)
    height = (dmax * np.sqrt(np.clip(1 - (1 - d / dmax) ** 2, 0, 1))).astype(np.float32)
    return mask, height


def place_particles(
    shape: tuple[int, int],
    shapes: list[tuple[np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    density: np.ndarray | None = None,
    attach: float = 0.6,
    max_overlap: float = 0.25,
    tries: int = 20,
    attach_distance: tuple[float, float] = (0.75, 1.05),
    sample_position: Callable[[np.random.Generator], tuple[float, float]] | None = None,
) -> tuple[np.ndarray, list[Particle]]:
    """Place particles in painter's order (later ones on top) and return the visible labels.

    Parameters
    ----------
    shape : (int, int)
        Image size.
    shapes : list of (mask, height)
        Local particle masks and height maps, e.g. from :func:`random_particle` or a shape GAN
        (height may be None: a dome is derived from the mask).
    density : (Y, X) array, optional
        Relative placement probability (e.g. :func:`perlin_noise` to a power); uniform if None.
    attach : float
        Probability that a particle is put against an already placed one (agglomerates).
    max_overlap : float
        Largest fraction of a new particle's area that may cover earlier particles, and of an
        earlier particle's visible area that may be covered.
    tries : int
        Placement attempts per particle before it is dropped.
    attach_distance : (float, float)
        Range of the centre distance of an attached particle, as a fraction of the sum of the
        two equivalent radii (below 1: overlapping).
    sample_position : callable, optional
        ``rng -> (y, x)``: draws the centre of a particle not attached to another, instead of
        sampling ``density`` (e.g. a precomputed inverse-CDF sampler, much faster for many
        particles on large canvases).

    Returns
    -------
    labels : (Y, X) int32
        Visible part of each particle, 1..n in placement order (hidden ones dropped).
    placed : list of Particle
    """
    h, w = shape
    labels = np.zeros(shape, np.int32)
    placed: list[Particle] = []
    visible = np.zeros(len(shapes) + 1, np.int64)  # visible pixels of each placed particle
    if density is not None:
        cdf = np.cumsum(np.asarray(density, float).ravel())
        cdf /= cdf[-1]
    for mask, height in shapes:
        if height is None:
            d = ndi.distance_transform_edt(mask)
            dmax = max(d.max(), 1.0)
            height = (dmax * np.sqrt(np.clip(1 - (1 - d / dmax) ** 2, 0, 1))).astype(np.float32)
        mh, mw = mask.shape
        area = mask.sum()
        for _ in range(tries):
            if placed and rng.random() < attach:
                # against a random placed particle, at a random angle, just touching or overlapping a bit
                other = placed[rng.integers(len(placed))]
                oy, ox = np.argwhere(other.mask).mean(0) + (other.y0, other.x0)
                ang = rng.uniform(0, 2 * np.pi)
                r_sum = 0.5 * (np.sqrt(other.mask.sum() / np.pi) + np.sqrt(area / np.pi)) * 2
                dist = r_sum * rng.uniform(*attach_distance)
                cy, cx = oy + dist * np.sin(ang), ox + dist * np.cos(ang)
            elif sample_position is not None:
                cy, cx = sample_position(rng)
            elif density is not None:
                idx = min(int(np.searchsorted(cdf, rng.random())), cdf.size - 1)
                cy, cx = divmod(idx, w)
            else:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            y0, x0 = int(round(cy - mh / 2)), int(round(cx - mw / 2))
            ys, xs = slice(max(y0, 0), min(y0 + mh, h)), slice(max(x0, 0), min(x0 + mw, w))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            local = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            if local.sum() < 0.3 * area:  # mostly outside the image
                continue
            under = labels[ys, xs][local]
            if (under > 0).mean() > max_overlap:
                continue
            covered = np.bincount(under, minlength=len(placed) + 1)
            covered[0] = 0
            if np.any(covered > max_overlap * np.maximum(visible[: len(placed) + 1], 1)):
                continue
            visible[: len(placed) + 1] -= covered
            labels[ys, xs][local] = len(placed) + 1
            visible[len(placed) + 1] = local.sum()
            placed.append(Particle(mask, height, y0, x0))
            break
    return _drop_hidden(labels, placed)


def _drop_hidden(labels, placed, min_visible: int = 8):
    counts = np.bincount(labels.ravel(), minlength=len(placed) + 1)
    keep = np.flatnonzero(counts[1:] >= min_visible) + 1
    lut = np.zeros(len(placed) + 1, np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels], [placed[i - 1] for i in keep]


def render_sem(
    labels: np.ndarray,
    particles: list[Particle],
    rng: np.random.Generator,
    edge_exponent: float = 1.0,
    directional: float = 0.15,
    texture: float = 0.06,
    crevice: float = 0.4,
    background: float = 0.25,
    debris: float = 0.08,
    blur: float = 0.8,
    noise: float = 0.05,
    brightness_range: tuple[float, float] = (0.75, 1.15),
) -> np.ndarray:
    """Render the secondary-electron image of placed particles, as float32.

    The background is about ``background``, flat particle tops about 1.

    The SE yield of a surface element grows with its tilt ``theta`` as ``1/cos(theta)`` [1]_;
    ``edge_exponent`` sets how strongly, which makes the bright rims that outline particles in
    SEM images. ``directional`` adds shading towards a random detector direction; ``texture``
    a fine multiplicative surface roughness; ``crevice`` darkens the lower particle along the
    border of a particle lying on it; ``debris`` adds faint rings, blobs and wrinkles to the
    background, which the network must learn to ignore. The image is blurred with a Gaussian
    of ``blur`` pixels and gets signal-dependent noise of relative size ``noise`` plus scan-line
    jitter. Each particle's yield is scaled by a factor drawn from ``brightness_range``
    (real samples mix bright and dim particles).
    """
    h, w = labels.shape
    n = len(particles)
    img = background * (0.85 + 0.3 * perlin_noise((h, w), rng.uniform(64, 256), rng, octaves=2))
    img += _debris(labels.shape, rng) * debris * (1 - background)
    det = rng.uniform(0, 2 * np.pi)
    ux, uy = np.cos(det), np.sin(det)
    fine = ndi.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(0.7, 2.0))
    fine /= fine.std() + 1e-6
    for p, ys, xs, ly, lx, vis in _visible(labels, particles):
        gy, gx = np.gradient(p.height)
        slope = np.minimum(np.hypot(gx, gy), 6.0)
        tilt = np.sqrt(1 + slope**2) ** edge_exponent  # 1/cos(theta)
        shade = 1 + directional * np.clip((gx * ux + gy * uy) / (1 + slope), -1, 1)
        brightness = rng.uniform(brightness_range[0], brightness_range[1])
        y = brightness * tilt * shade
        y = y[ly, lx] * (1 + texture * fine[ys, xs])
        region = img[ys, xs]
        region[vis] = y[vis]
    if crevice > 0 and n > 1:
        img *= 1 - crevice * _crevices(labels, particles)
    img = ndi.gaussian_filter(img, blur) if blur > 0 else img
    img = img + noise * np.sqrt(np.maximum(img, 0.02)) * rng.normal(0, 1, img.shape)
    img += rng.normal(0, noise * 0.3, (h, 1))  # scan-line jitter
    return img.astype(np.float32)


def _visible(labels: np.ndarray, particles: list[Particle]):
    """Yield each particle with visible pixels, in painter's order.

    With the particle come the image slices of its box (clipped to the image), the same box in
    the particle's own arrays, and its visible pixels there.
    """
    h, w = labels.shape
    for k, p in enumerate(particles, start=1):
        ys = slice(max(p.y0, 0), min(p.y0 + p.mask.shape[0], h))
        xs = slice(max(p.x0, 0), min(p.x0 + p.mask.shape[1], w))
        vis = labels[ys, xs] == k
        if vis.any():
            yield p, ys, xs, slice(ys.start - p.y0, ys.stop - p.y0), slice(xs.start - p.x0, xs.stop - p.x0), vis


def _crevices(labels: np.ndarray, particles: list[Particle]) -> np.ndarray:
    """Darkening in [0, 1] of lower particles along the edge of a particle lying on them."""
    # pixels of particle j next to a particle i > j (placed later, so on top)
    up = ndi.grey_dilation(labels, size=(3, 3))
    lower_edge = (labels > 0) & (up > labels)
    strength = np.exp(-ndi.distance_transform_edt(~lower_edge) / 1.0) * (labels > 0)
    return np.clip(strength, 0, 1).astype(np.float32)


def _debris(shape, rng) -> np.ndarray:
    """Faint background structures: rings, blobs and thin wrinkles, in [0, 1]."""
    from skimage.draw import disk  # lazy: see the note at the top

    h, w = shape
    out = np.zeros(shape, np.float32)
    n = rng.poisson(h * w / 6000)
    for _ in range(n):
        r = rng.uniform(2, 12)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        rr, cc = disk((cy, cx), r, shape=shape)
        blob = np.zeros(shape, bool)
        blob[rr, cc] = True
        if rng.random() < 0.6:  # ring: only the rim
            blob &= ~ndi.binary_erosion(blob, iterations=max(1, int(r / 4)))
        out[blob] = np.maximum(out[blob], rng.uniform(0.2, 1.0))
    # wrinkles: thresholded band of a smooth field
    f = perlin_noise(shape, rng.uniform(40, 120), rng, octaves=2)
    level = rng.uniform(0.3, 0.7)
    out = np.maximum(out, (np.abs(f - level) < 0.008) * rng.uniform(0.2, 0.8))
    return ndi.gaussian_filter(out, 0.7)


def _outlines(shape, size: float, rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """Faint outlines of particle size for the background, in [0, 1]: the rims of particle-shaped masks.

    Real SEM backgrounds show such rings (the TiO2 images), which networks trained on
    backgrounds without them learn to fill in as particles
    (``benchmarks/bench_ghost_outlines.py``, docs/other-materials.md). With ``avoid`` (a
    boolean map) an outline whose shape (rim or inside) would touch it is left out (drawn with
    the same random numbers, so the others stay where they were).
    """
    h, w = shape
    out = np.zeros(shape, np.float32)
    for _ in range(rng.poisson(h * w / (25 * size**2))):
        m, _ = random_particle(rng, size * np.exp(rng.normal(0, 0.2)), rng.uniform(1.05, 1.6), 0.08)
        if m.shape[0] >= h or m.shape[1] >= w:
            continue
        y, x = rng.integers(0, h - m.shape[0]), rng.integers(0, w - m.shape[1])
        rim = m & ~ndi.binary_erosion(m)
        if avoid is not None and avoid[y : y + m.shape[0], x : x + m.shape[1]][m].any():
            rng.uniform(0.7, 1.0)  # (drawn as for an outline kept)
            continue
        region = out[y : y + m.shape[0], x : x + m.shape[1]]
        region[rim] = np.maximum(region[rim], rng.uniform(0.7, 1.0))
    return ndi.gaussian_filter(out, 0.8)


@dataclass
class SemSimulation:
    """A simulated micrograph (:func:`simulate_sem_image`, :func:`simulate_micrograph`) and its truth."""

    image: np.ndarray  # (Y, X) uint8
    labels: np.ndarray  # (Y, X) int32 visible particles
    particle_size: float  # median equivalent diameter in pixels used for this image


def simulate_sem_image(
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | int | None = None,
    particle_size: float | tuple[float, float] = (14.0, 44.0),
    coverage: float | tuple[float, float] = (0.05, 0.45),
    empty_fraction: float = 0.04,
    outlines: float | tuple[float, float] = 0.0,
    outline_clearance: float | None = None,
) -> SemSimulation:
    """One simulated SEM image with randomised particles, agglomeration and imaging settings.

    Parameters
    ----------
    shape : (int, int)
    rng : Generator, int or None
    particle_size : float or (min, max)
        Median equivalent circular diameter in pixels (drawn uniformly from the range);
        individual sizes are log-normal around it.
    coverage : float or (min, max)
        Fraction of the image area the particles would cover if they did not overlap.
    empty_fraction : float
        Probability of an image with background only.
    outlines : float or (min, max)
        Brightness of faint particle-sized outlines in the background (background, not
        particles), as a fraction of the particles' bright parts (90th percentile) above the
        median background (drawn uniformly from the range);
        0: none. They come from a generator spawned from ``rng``, so the image is otherwise
        the same as without them.
    outline_clearance : float or None
        When given, only outlines that stay more than this many pixels from every particle,
        and enclose none, are drawn (None: outlines may run up to a particle's edge, where their bright
        pixels then lie right outside it).
    """
    rng = np.random.default_rng(rng)
    size = rng.uniform(*particle_size) if np.ndim(particle_size) else float(particle_size)
    cov = rng.uniform(*coverage) if np.ndim(coverage) else float(coverage)
    sigma = rng.uniform(0.12, 0.3)
    mean_area = np.pi * (size / 2) ** 2 * np.exp(2 * sigma**2)
    # a few fields hold no particle at all: the model must then find none
    n = 0 if rng.random() < empty_fraction else max(1, int(rng.poisson(cov * shape[0] * shape[1] / mean_area)))
    elongation = rng.uniform(1.05, 1.8)
    roughness = rng.uniform(0.03, 0.12)
    shapes = [
        random_particle(rng, size * np.exp(rng.normal(0, sigma)), elongation, roughness, lobed=rng.uniform(0, 0.25))
        for _ in range(n)
    ]
    gamma = rng.uniform(1.0, 4.0)
    density = perlin_noise(shape, rng.uniform(60, 200), rng, octaves=2) ** gamma
    labels, placed = place_particles(
        shape,
        shapes,
        rng,
        density,
        attach=rng.uniform(0.4, 0.95),
        max_overlap=rng.uniform(0.05, 0.35),
        attach_distance=(0.65, 1.0),
    )
    img = render_sem(
        labels,
        placed,
        rng,
        edge_exponent=rng.uniform(0.7, 2.0),
        directional=rng.uniform(0.0, 0.35),
        texture=rng.uniform(0.02, 0.12),
        crevice=rng.uniform(0.0, 0.6),
        background=rng.uniform(0.12, 0.45),
        debris=rng.uniform(0.0, 0.25),
        blur=rng.uniform(0.4, 1.3),
        noise=rng.uniform(0.02, 0.12),
        brightness_range=(rng.uniform(0.25, 0.7), rng.uniform(0.9, 1.2)),
    )
    # detector gain and offset to 8 bits, background ~30-80, sometimes saturating
    bg = np.percentile(img, 20)
    top = np.percentile(img[labels > 0], 60) if (labels > 0).any() else bg + 0.6
    # particle interiors well below saturation, so that the bright rims keep their contrast
    lo_t, hi_t = rng.uniform(25, 80), rng.uniform(100, 190)
    scale = (hi_t - lo_t) / max(top - bg, 1e-3)
    if np.max(outlines) > 0:
        # (a spawned generator: the particles, their rendering and the noise stay as without)
        orng = rng.spawn(1)[0]
        strength = orng.uniform(*outlines) if np.ndim(outlines) else float(outlines)
        # relative to the particles' bright parts (90th percentile) above the median background
        fg, back = img[labels > 0], img[labels == 0]
        contrast = (np.percentile(fg, 90) if fg.size else top) - (np.median(back) if back.size else bg)
        avoid = None
        if outline_clearance is not None:
            avoid = ndi.distance_transform_edt(labels == 0) <= outline_clearance
        img = img + strength * contrast * _outlines(shape, size, orng, avoid) * (labels == 0)
    out = np.clip(np.round(lo_t + (img - bg) * scale), 0, 255).astype(np.uint8)
    return SemSimulation(out, labels, size)


# ------------------------------------------------------------------------------------------
# a broader simulator: more shapes, TEM contrast, annotations (issue 13)

#: particle shapes of :func:`shaped_particle`
SHAPES = ("blob", "sphere", "rod", "cube", "triangle", "hexagon")
#: contrast styles of :func:`simulate_micrograph`
STYLES = ("sem", "tem")
#: the training sets of :func:`simulate_training_pair`
SIMULATORS = ("sem", "mixed", "mixed-outlines", "mixed-outlines-apart")


def _polygon_particle(xs: np.ndarray, ys: np.ndarray, dome: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mask and height map of a closed outline: a dome (ellipsoid cap) or a flat plate."""
    from skimage.draw import polygon  # lazy: see the note at the top

    pad = 2
    x_min, y_min = np.floor(xs.min()) - pad, np.floor(ys.min()) - pad
    size = (int(np.ceil(ys.max() - y_min)) + pad, int(np.ceil(xs.max() - x_min)) + pad)
    mask = np.zeros(size, bool)
    rr, cc = polygon(ys - y_min, xs - x_min, size)
    mask[rr, cc] = True
    d = ndi.distance_transform_edt(mask)
    dmax = max(d.max(), 1.0)
    if dome:
        height = dmax * np.sqrt(np.clip(1 - (1 - d / dmax) ** 2, 0, 1))
    else:  # a plate or a cube: flat top, steep rim of two pixels
        height = np.minimum(d, 2.0) / 2.0 * dmax * 0.3
    return mask, height.astype(np.float32)


def shaped_particle(rng: np.random.Generator, diameter: float, kind: str = "blob") -> tuple[np.ndarray, np.ndarray]:
    """Draw a particle of a given kind and equivalent circular diameter: its mask and height map.

    ``blob`` is :func:`random_particle` (irregular, sometimes lobed); ``sphere`` a nearly
    round dome; ``rod`` a capsule of aspect ratio 2-6; ``cube`` a rounded square (a
    superellipse) with a flat top; ``triangle`` and ``hexagon`` flat faceted plates.
    All are rotated at random.

    Examples
    --------
    >>> import numpy as np
    >>> mask, height = shaped_particle(np.random.default_rng(0), 30.0, "rod")
    >>> bool(abs(2 * np.sqrt(mask.sum() / np.pi) / 30 - 1) < 0.15)
    True
    """
    if kind not in SHAPES:
        raise ValueError(f"unknown particle shape {kind!r}; choose one of {', '.join(SHAPES)}")
    if kind == "blob":
        return random_particle(rng, diameter, rng.uniform(1.05, 1.8), rng.uniform(0.03, 0.12), rng.uniform(0, 0.25))
    if kind == "sphere":
        return random_particle(rng, diameter, 1.08, 0.01, 0.0)
    r = diameter / 2
    t = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    if kind == "rod":
        ar = rng.uniform(2.0, 6.0)
        w = diameter * np.sqrt(np.pi / (4 * ar))  # width: same area as the disk
        half = w * (ar - 1) / 2 + w / 2
        # a capsule: a stadium of half-width w/2 and half-length ``half``
        x = np.clip(np.cos(t) * (half + w / 2), -half, half)
        y = np.sign(np.sin(t)) * np.sqrt(
            np.clip((w / 2) ** 2 - np.maximum(np.abs(np.cos(t) * (half + w / 2)) - half, 0) ** 2, 0, None)
        )
        dome = True
    elif kind == "cube":
        n = rng.uniform(4, 10)  # superellipse exponent: higher is sharper corners
        a = r * np.sqrt(np.pi) / 2 * 1.02
        c, s = np.cos(t), np.sin(t)
        x = a * np.sign(c) * np.abs(c) ** (2 / n)
        y = a * np.sign(s) * np.abs(s) ** (2 / n)
        dome = False
    else:
        k = 3 if kind == "triangle" else 6
        area = np.pi * r * r
        R = np.sqrt(2 * area / (k * np.sin(2 * np.pi / k)))  # circumradius of a regular k-gon of that area
        ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
        x, y = R * np.cos(ang), R * np.sin(ang)
        dome = False
    a = rng.uniform(0, np.pi)
    xs, ys = x * np.cos(a) - y * np.sin(a), x * np.sin(a) + y * np.cos(a)
    return _polygon_particle(xs, ys, dome)


def render_tem(
    labels: np.ndarray,
    particles: list[Particle],
    rng: np.random.Generator,
    film: float = 0.15,
    film_texture: float = 0.04,
    hole: bool = False,
    mass_thickness: float = 0.6,
    diffraction: float = 0.2,
    core_shell: float = 0.0,
    fringe: float = 0.05,
    blur: float = 1.0,
    noise: float = 0.06,
) -> np.ndarray:
    """Render a bright-field TEM image of placed particles, **inverted**, as float32.

    Inverted, the particles are brighter than the support film (the way the network sees
    every image).

    The support film is a level ``film`` with a fine amorphous-carbon texture of relative
    size ``film_texture``; with ``hole`` part of the field is an empty hole of the holey film
    (darker here, brighter in the original), with a smooth edge the network must ignore.
    Particles absorb in proportion to their thickness (``mass_thickness``: flat plates
    uniform, spheres brightest in the centre); ``diffraction`` adds bend contours (bands
    across a crystal), ``core_shell`` a core of different contrast, ``fringe`` a thin
    Fresnel ring at the outline. Then blur and shot noise.
    """
    h, w = labels.shape
    img = film * (1 + film_texture * ndi.gaussian_filter(rng.normal(0, 1, (h, w)), rng.uniform(0.5, 1.5)) * 3)
    img *= 0.9 + 0.2 * perlin_noise((h, w), rng.uniform(100, 300), rng)
    if hole:
        field = perlin_noise((h, w), rng.uniform(150, 400), rng, octaves=2)
        edge = ndi.gaussian_filter((field > rng.uniform(0.35, 0.65)).astype(np.float32), rng.uniform(1, 3))
        img = img * (1 - edge) + edge * film * rng.uniform(0.2, 0.6)
    for p, ys, xs, ly, lx, vis in _visible(labels, particles):
        t = p.height[ly, lx] / max(p.height.max(), 1e-6)
        level = film + mass_thickness * rng.uniform(0.5, 1.2) * (0.45 + 0.55 * t)
        if diffraction > 0 and rng.random() < 0.6:
            yy, xx = np.mgrid[: level.shape[0], : level.shape[1]]
            a, f = rng.uniform(0, np.pi), rng.uniform(0.05, 0.25)
            band = np.cos(f * (xx * np.cos(a) + yy * np.sin(a)) + rng.uniform(0, 6.3)) > rng.uniform(0.3, 0.8)
            level = level * (1 + diffraction * band * rng.choice([-1, 1]))
        if core_shell > 0:
            core = ndi.binary_erosion(
                p.mask[ly, lx], iterations=max(1, int(min(p.mask.shape) * rng.uniform(0.1, 0.25)))
            )
            level = np.where(core, level * (1 + core_shell * rng.choice([-1, 1])), level)
        region = img[ys, xs]
        region[vis] = level[vis]
    if fringe > 0:
        edges = (labels > 0) & ~ndi.binary_erosion(labels > 0)
        img += fringe * ndi.gaussian_filter(edges.astype(np.float32), 0.7) * rng.choice([-1, 1])
    img = ndi.gaussian_filter(img, blur) if blur > 0 else img
    img = img + noise * np.sqrt(np.maximum(img, 0.02)) * rng.normal(0, 1, img.shape)
    return img.astype(np.float32)


def draw_annotations(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> None:
    """Burn a scale bar with a caption and a panel letter into an 8-bit ``image`` in place.

    The pixels they cover are removed from ``labels`` (annotations are not particles).
    """
    h, w = image.shape
    ink = np.zeros((h, w), bool)
    light = rng.random() < 0.5

    def glyphs(y0, x0, n, size):
        for i in range(n):  # letter-like strokes: a few bars per letter
            gx = x0 + i * int(size * 0.8)
            for _ in range(rng.integers(2, 4)):
                if rng.random() < 0.5:
                    ink[y0 : y0 + size, gx + rng.integers(0, max(1, size // 2)) :][:, : max(1, size // 6)] = True
                else:
                    yy = y0 + rng.integers(0, size)
                    ink[yy : yy + max(1, size // 6), gx : gx + size // 2] = True

    if rng.random() < 0.8:  # scale bar with a caption, near a bottom corner
        bw, bh = int(rng.uniform(0.12, 0.3) * w), int(rng.uniform(3, 8))
        y0 = h - int(rng.uniform(0.05, 0.12) * h)
        x0 = int(rng.uniform(0.03, 0.1) * w) if rng.random() < 0.5 else w - bw - int(rng.uniform(0.03, 0.1) * w)
        ink[y0 : y0 + bh, x0 : x0 + bw] = True
        size = int(rng.uniform(10, 22))
        glyphs(max(0, y0 - size - 4), x0, int(rng.integers(3, 7)), size)
        if rng.random() < 0.4:  # on a box
            box = np.zeros_like(ink)
            box[max(0, y0 - size - 8) : min(h, y0 + bh + 4), max(0, x0 - 4) : min(w, x0 + bw + 4)] = True
            image[box] = 30 if light else 225
            labels[box] = 0
    if rng.random() < 0.6:  # panel letter in the top-left corner, sometimes on a box
        size = int(rng.uniform(14, 30))
        y0, x0 = int(rng.uniform(2, 12)), int(rng.uniform(2, 12))
        if rng.random() < 0.5:
            box = np.zeros_like(ink)
            box[y0 : y0 + size + 8, x0 : x0 + size + 8] = True
            image[box] = 30 if light else 225
            labels[box] = 0
            y0, x0 = y0 + 4, x0 + 4
        glyphs(y0, x0, 1, size)
    image[ink] = 250 if light else 5
    labels[ink] = 0


def simulate_micrograph(
    shape: tuple[int, int] = (256, 256),
    rng: np.random.Generator | int | None = None,
    particle_size: float | tuple[float, float] = (14.0, 44.0),
    style: str | None = None,
    annotations: float = 0.3,
) -> SemSimulation:
    """Simulate one micrograph of a random material, shown as the network sees it.

    The particles are bright: SEM contrast (:func:`render_sem`) or inverted TEM bright field
    (:func:`render_tem`), particles of one or two of :data:`SHAPES`, sparse to dense, and
    with probability ``annotations`` a burned-in scale bar and panel letter
    (:func:`draw_annotations`).

    Parameters
    ----------
    style : {"sem", "tem"} or None
        Contrast; drawn at random when None.
    """
    rng = np.random.default_rng(rng)
    style = style or rng.choice(STYLES)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose one of {', '.join(STYLES)}")
    size = rng.uniform(*particle_size) if np.ndim(particle_size) else float(particle_size)
    cov = rng.uniform(0.03, 0.5)
    sigma = rng.uniform(0.05, 0.3)
    kinds = rng.choice(SHAPES, size=2)
    mean_area = np.pi * (size / 2) ** 2 * np.exp(2 * sigma**2)
    n = 0 if rng.random() < 0.03 else max(1, int(rng.poisson(cov * shape[0] * shape[1] / mean_area)))
    shapes = [
        shaped_particle(rng, size * np.exp(rng.normal(0, sigma)), kinds[int(rng.random() < 0.3)]) for _ in range(n)
    ]
    density = perlin_noise(shape, rng.uniform(60, 200), rng, octaves=2) ** rng.uniform(0.5, 4.0)
    labels, placed = place_particles(
        shape,
        shapes,
        rng,
        density,
        attach=rng.uniform(0.0, 0.95),
        max_overlap=rng.uniform(0.0, 0.3),
        attach_distance=(0.65, 1.0),
    )
    if style == "sem":
        img = render_sem(
            labels,
            placed,
            rng,
            edge_exponent=rng.uniform(0.3, 2.0),
            directional=rng.uniform(0, 0.35),
            texture=rng.uniform(0.02, 0.25),
            crevice=rng.uniform(0, 0.6),
            background=rng.uniform(0.1, 0.5),
            debris=rng.uniform(0, 0.25),
            blur=rng.uniform(0.4, 1.8),
            noise=rng.uniform(0.02, 0.18),
            brightness_range=(rng.uniform(0.3, 0.8), rng.uniform(0.9, 1.2)),
        )
    else:
        img = render_tem(
            labels,
            placed,
            rng,
            film=rng.uniform(0.1, 0.3),
            film_texture=rng.uniform(0.01, 0.08),
            hole=rng.random() < 0.25,
            mass_thickness=rng.uniform(0.3, 0.9),
            diffraction=rng.uniform(0, 0.4),
            core_shell=rng.uniform(0, 0.4) if rng.random() < 0.25 else 0.0,
            fringe=rng.uniform(0, 0.08),
            blur=rng.uniform(0.5, 2.0),
            noise=rng.uniform(0.02, 0.15),
        )
    lo, hi = np.percentile(img, [0.5, 99.5])
    lo_t, hi_t = rng.uniform(10, 80), rng.uniform(160, 250)
    out = np.clip(np.round(lo_t + (img - lo) * (hi_t - lo_t) / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
    labels = labels.copy()
    if rng.random() < annotations:
        draw_annotations(out, labels, rng)
        from .postprocess import relabel_sequential  # lazy: see the note at the top

        labels = relabel_sequential(labels)
    return SemSimulation(out, labels, size)


def simulate_training_pair(
    i: int,
    seed: int,
    shape: tuple[int, int] = (512, 512),
    particle_size_range: tuple[float, float] = (14.0, 44.0),
    simulator: str = "sem",
) -> tuple[np.ndarray, np.ndarray]:
    """Return image ``i`` of a simulated training set and its label image, from the seed ``[seed, i]`` alone.

    ``simulator`` ``"sem"``: :func:`simulate_sem_image` (TiO2-like SEM); ``"mixed"``: every
    odd-numbered image from :func:`simulate_micrograph` (other shapes, SEM and inverted TEM
    contrast, annotations), the others as ``"sem"``; ``"mixed-outlines"``: as ``"mixed"``, the
    SEM images with faint particle-sized outlines in their backgrounds (``outlines`` 0-0.3 of
    :func:`simulate_sem_image`); ``"mixed-outlines-apart"``: as ``"mixed-outlines"``, with only
    the outlines that stay more than 3 px from every particle (``outline_clearance``; an outline
    that runs into a particle puts bright background pixels right outside its edge, where real
    particles have their own bright rims). Since an image depends on its index and
    seed only, a set can be made in any order and by any number of worker processes.

    Examples
    --------
    >>> image, labels = simulate_training_pair(1, 0, (64, 64), (8.0, 12.0), "mixed")
    >>> image.shape == labels.shape == (64, 64)
    True
    """
    rng = np.random.default_rng([seed, i])
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator {simulator!r}: choose one of {', '.join(SIMULATORS)}")
    if simulator != "sem" and i % 2:
        s = simulate_micrograph(shape, rng, particle_size_range)
    else:
        outlines = (0.0, 0.3) if simulator.startswith("mixed-outlines") else 0.0
        clearance = 3.0 if simulator == "mixed-outlines-apart" else None
        s = simulate_sem_image(shape, rng, particle_size_range, outlines=outlines, outline_clearance=clearance)
    return s.image, s.labels
