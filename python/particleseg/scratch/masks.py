"""Stage 2 of the from-scratch workflow: simulated masks assembled from generated shapes.

Each mask is a ``tile x tile`` instance label image. Per mask a number of particles is drawn
uniformly from a range, each one a shape from the shape GAN's bank (:mod:`.shapegan`) scaled
by a factor from a size distribution (by default normal around 1.0 with standard deviation
0.1, cut at 3 standard deviations), and placed by :func:`particleseg.simulate.place_particles`
(painter's order, bounded overlap) at positions drawn from thresholded 2D Perlin noise, so
that particles crowd in patches and agglomerate as in real samples [1]_. The training target
is the foreground with a 1-pixel background line between touching particles
(:func:`particleseg.postprocess.labels_to_mask`, 4-neighbour lines).

The particle count refers to a *canvas*: the tile enlarged by a margin on every side (by
default the diagonal of a maximally scaled shape box, 118 px for 64-px shapes), over which the
particles are scattered before the tile is cut out of its centre, as in the publication's
implementation; particles cut by the tile border are then as frequent as in a crop of a real
micrograph. The default range of 100-150 holds for the default 384x384 tile (a 618x618
canvas); for other tiles it is scaled by the canvas area unless a range is given.

References
----------
.. [1] B. Ruehle, J. F. Krumrey, V.-D. Hodoroaba, Sci. Rep. 11, 4942 (2021).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..io import read_array, write_atomic
from ..simulate import perlin_noise, place_particles
from .grids import save_grid

STAGE = "stage 2, mask simulation"
REFERENCE_TILE = 384
DEFAULT_COUNT = (100, 150)  # particles per REFERENCE_TILE (with its canvas margin)


@dataclass
class MaskConfig:
    """Settings of the mask simulation (stage 2).

    Attributes
    ----------
    tile : int
        Side of the simulated masks in pixels (at the scale of the outlines and micrographs).
    count : (int, int) or None
        Particles per tile (scattered over its canvas), drawn uniformly. None: 100-150 for a
        384x384 tile, scaled by the canvas area for other tiles. Overestimating is safer than
        underestimating.
    size : str
        Size-scale distribution (see :func:`size_sampler`): ``normal:1.0,0.1`` (cut at 3
        standard deviations), ``lognormal:1.0,0.1`` (median, sigma of the log; cut at 3),
        ``uniform:0.75,1.25``, or ``file:PATH`` (one scale per line, drawn with replacement).
    perlin_threshold : float
        Particles are placed where the Perlin noise (in [0, 1]) exceeds this; higher gives
        fewer, denser patches; 0 places uniformly.
    perlin_cells : float
        Perlin lattice cells across the canvas (larger: more, smaller patches).
    max_overlap : float
        Largest fraction of a particle's area that may cover or be covered by others
        (publication: 0.5 for SEM, 0.05 for TEM).
    attach : float
        Probability that a particle is put against an already placed one (extra agglomeration).
    rotate : bool
        Rotate each shape by a random angle (the GAN's flips only give four orientations).
    margin : int or None
        Canvas margin in pixels (None: the diagonal of a maximally scaled shape box).
    """

    tile: int = 384
    count: tuple[int, int] | None = None
    size: str = "normal:1.0,0.1"
    perlin_threshold: float = 0.5
    perlin_cells: float = 4.0
    max_overlap: float = 0.5
    attach: float = 0.0
    rotate: bool = False
    margin: int | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        """Return the settings as a plain dict (``count`` as a list)."""
        d = asdict(self)
        d["count"] = list(self.count) if self.count is not None else None
        return d


# --------------------------------------------------------------------------------------------
# size distributions


def size_sampler(spec: str | Callable) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Return a function ``(rng, n) -> n`` positive size scales from a distribution specification.

    ``normal:MEAN,SD`` and ``lognormal:MEDIAN,SIGMA`` are truncated at 3 standard deviations
    (values beyond are drawn again); ``uniform:LO,HI``; ``file:PATH`` draws with replacement
    from the numbers in a text file (one per line, or separated by commas or spaces);
    ``values:A,B,...`` from the numbers given. A callable is returned as it is.
    """
    if callable(spec):
        return spec
    kind, _, args = str(spec).partition(":")
    kind = kind.strip().lower()

    def numbers(text):
        try:
            return [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise InputError(f"{spec}: not a list of numbers ({STAGE}: see --size-distribution)") from None

    if kind in ("normal", "lognormal", "uniform"):
        vals = numbers(args) if args else ([1.0, 0.1] if kind != "uniform" else [0.75, 1.25])
        if len(vals) != 2:
            raise InputError(f"{spec}: {kind} needs two numbers ({STAGE}: e.g. {kind}:1.0,0.1)")
        a, b = vals
        if kind == "uniform":
            if not 0 < a <= b:
                raise InputError(f"{spec}: need 0 < LO <= HI ({STAGE})")
            return lambda rng, n: rng.uniform(a, b, n)
        if a <= 0 or b < 0:
            raise InputError(f"{spec}: the centre must be positive and the spread not negative ({STAGE})")

        def truncated(rng, n, draw):
            out = draw(n)
            bad = np.abs(out) > 3 * b
            while bad.any():
                out[bad] = draw(int(bad.sum()))
                bad = np.abs(out) > 3 * b
            return out

        if kind == "normal":
            if a - 3 * b <= 0:
                raise InputError(
                    f"{spec}: scales down to {a - 3 * b:g} are not positive ({STAGE}: use a smaller SD or lognormal)"
                )
            return lambda rng, n: a + truncated(rng, n, lambda k: rng.normal(0, b, k))
        return lambda rng, n: a * np.exp(truncated(rng, n, lambda k: rng.normal(0, b, k)))
    if kind in ("file", "values"):
        if kind == "file":
            p = Path(args)
            if not p.is_file():
                raise InputError(f"{p}: size distribution file not found ({STAGE})")
            vals = np.array(numbers(p.read_text()), float)
        else:
            vals = np.array(numbers(args), float)
        if vals.size == 0 or np.any(vals <= 0):
            raise InputError(f"{spec}: needs at least one scale, all positive ({STAGE})")
        return lambda rng, n: rng.choice(vals, n)
    raise InputError(f"{spec}: unknown size distribution ({STAGE}: use normal, lognormal, uniform, file: or values:)")


def size_range(spec: str, rng_seed: int = 0) -> float:
    """Largest scale the distribution gives (estimated from draws for files and callables)."""
    s = size_sampler(spec)
    return float(np.max(s(np.random.default_rng(rng_seed), 20000)))


# --------------------------------------------------------------------------------------------
# simulation


def canvas_margin(config: MaskConfig, shape_size: int) -> int:
    """Return the canvas margin in pixels.

    ``config.margin`` when set, else the diagonal of a ``shape_size`` box at the largest scale
    of ``config.size``, rounded up.
    """
    if config.margin is not None:
        return int(config.margin)
    return int(np.ceil(np.sqrt(2) * shape_size * size_range(config.size)))


def count_range(config: MaskConfig, shape_size: int) -> tuple[int, int]:
    """Return the particle-count range for this tile.

    ``count``, or 100-150 scaled from the 384x384 tile's canvas to this tile's canvas.
    """
    if config.count is not None:
        lo, hi = config.count
        if not 0 <= lo <= hi:
            raise InputError(f"{lo}:{hi}: particle count range must have 0 <= MIN <= MAX ({STAGE}: see --particles)")
        return int(lo), int(hi)
    m = canvas_margin(config, shape_size)
    f = ((config.tile + 2 * m) / (REFERENCE_TILE + 2 * m)) ** 2
    lo, hi = DEFAULT_COUNT
    return max(0, int(round(lo * f))), max(0, int(round(hi * f)))


def _scaled(shape: np.ndarray, scale: float, angle: float | None) -> np.ndarray:
    ys, xs = np.nonzero(shape)
    m = shape[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    m = np.pad(m, 2)
    if angle is not None:
        m = ndi.rotate(m, angle, order=1, reshape=True)
    if abs(scale - 1) > 1e-3:
        m = ndi.zoom(m, scale, order=1)
    out = m > 0.5
    if not out.any():
        out = np.zeros((1, 1), bool)
        out[0, 0] = True
    ys, xs = np.nonzero(out)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def simulate_mask(
    shapes: np.ndarray,
    config: MaskConfig,
    rng: np.random.Generator,
    sampler: Callable | None = None,
    counts: tuple[int, int] | None = None,
    margin: int | None = None,
) -> np.ndarray:
    """One ``(tile, tile)`` int32 label image of visible particles (1..n, painter's order)."""
    shape_size = shapes.shape[-1]
    sampler = sampler or size_sampler(config.size)
    lo, hi = counts or count_range(config, shape_size)
    m = canvas_margin(config, shape_size) if margin is None else margin
    side = config.tile + 2 * m
    n = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
    scales = np.maximum(sampler(rng, n), 0.05)
    picks = rng.integers(0, len(shapes), n)
    particles = []
    for k, s in zip(picks, scales):
        angle = rng.uniform(0, 360) if config.rotate else None
        particles.append((_scaled(shapes[k], float(s), angle), None))
    density = None
    if config.perlin_threshold > 0:
        noise = perlin_noise((side, side), side / max(config.perlin_cells, 0.5), rng)
        density = (noise > config.perlin_threshold).astype(np.float64)
        if density.sum() == 0:
            density = None
    labels, _ = place_particles(
        (side, side),
        particles,
        rng,
        density=density,
        attach=config.attach,
        max_overlap=config.max_overlap,
        sample_position=_fast_sampler(density, side) if density is not None else None,
    )
    labels = labels[m : m + config.tile, m : m + config.tile]
    return _relabel(labels)


def _fast_sampler(density: np.ndarray, side: int):
    """Draw pixel positions with probability proportional to ``density`` (inverse CDF)."""
    cdf = np.cumsum(density.ravel())
    cdf /= cdf[-1]

    def sample(rng):
        idx = int(np.searchsorted(cdf, rng.random(), side="right"))
        return divmod(min(idx, cdf.size - 1), side)

    return sample


def _relabel(labels: np.ndarray, min_visible: int = 8) -> np.ndarray:
    counts = np.bincount(labels.ravel())
    keep = np.flatnonzero(counts[1:] >= min_visible) + 1
    lut = np.zeros(len(counts), np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels]


def target_mask(labels: np.ndarray) -> np.ndarray:
    """Return the binary training target: foreground with 1-pixel lines between touching particles."""
    from ..postprocess import labels_to_mask

    return labels_to_mask(labels, connectivity=1)


def simulate_masks(
    shapes: np.ndarray, n: int, config: MaskConfig, workdir: str | os.PathLike, progress: bool = True
) -> list[Path]:
    """Simulate ``n`` label images into ``workdir/labels/NNNNN.tif`` (uint16).

    Resumes after the files that exist. Mask ``i`` uses the seed ``(config.seed, i)`` whether
    or not the run was interrupted. Writes ``summary.json`` (particles per mask, coverage) and
    ``samples.png`` (targets of the first masks).


    Raises InputError when every mask is empty.
    """
    import tifffile
    from tqdm.auto import tqdm

    workdir = Path(workdir)
    out = workdir / "labels"
    out.mkdir(parents=True, exist_ok=True)
    sampler = size_sampler(config.size)
    counts = count_range(config, shapes.shape[-1])
    margin = canvas_margin(config, shapes.shape[-1])
    paths = [out / f"{i:05d}.tif" for i in range(n)]
    stats = []
    for i, p in enumerate(tqdm(paths, desc="stage 2/5 masks", unit="mask", disable=not progress)):
        if p.exists():
            lab = read_array(p)
        else:
            lab = simulate_mask(shapes, config, np.random.default_rng([config.seed, i]), sampler, counts, margin)
            write_atomic(
                p, lambda tmp, lab=lab: tifffile.imwrite(tmp, lab.astype(np.uint16), compression="zlib"), overwrite=True
            )
        stats.append((int(lab.max()), float((lab > 0).mean())))
    n_particles = np.array([s[0] for s in stats])
    if n and n_particles.max() == 0:
        raise InputError(
            f"{workdir}: all {n} simulated masks are empty ({STAGE}: the particle count {counts[0]}-{counts[1]} "
            f"per {config.tile}x{config.tile} tile is far too low, or the shapes too small; raise --particles)"
        )
    summary = {
        "masks": n,
        "tile": config.tile,
        "canvas_margin": margin,
        "count_range_used": list(counts),
        "visible_particles_mean": float(n_particles.mean()) if n else 0.0,
        "visible_particles_min": int(n_particles.min()) if n else 0,
        "visible_particles_max": int(n_particles.max()) if n else 0,
        "empty_masks": int((n_particles == 0).sum()),
        "coverage_mean": float(np.mean([s[1] for s in stats])) if n else 0.0,
    }
    write_atomic(workdir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)), overwrite=True)
    sample = [target_mask(read_array(p)).astype(np.uint8) * 255 for p in paths[:16]]
    save_grid(workdir / "samples.png", sample, columns=4, gap=4)
    return paths
