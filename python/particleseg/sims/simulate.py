"""Simulated SIMS fields of view of uranium-bearing particles with known isotopic compositions.

A *sample* is a mixture of reference materials; every particle is made of one of them. A field
of view holds none to a dozen particles of varied size and shape (the star-convex outlines and
placement of :mod:`particleseg.simulate`), each emitting ``238U`` ions at its own rate; the other
isotopes follow the material's atom ratios, the hydride ``238U1H`` a hydride-formation ratio.
The ion image of every mass is the particles' emission blurred by the primary beam (a Gaussian),
plus a background that varies between fields (over two orders of magnitude) and within a
field (Perlin noise), plus a few detector spikes, drawn as Poisson counts.

The truth written with every field: the particle masks (label images) and, per particle, its
material, true ratios and expected counts per isotope.

References
----------
.. [1] Certificates of the NBL/IRMM uranium isotopic reference materials of the "U" series
       (e.g. CRM U010, U030, U100, U500). The ratios below are rounded values of such
       materials, for simulation only, not certified values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..io import check_outputs, write_atomic, write_csv, write_tiff
from ..simulate import perlin_noise, place_particles, random_particle
from .isotopes import ISOTOPES, RATIO_ISOTOPES, REFERENCE, ratio_columns


@dataclass(frozen=True)
class Material:
    """An isotopic composition: atom ratios to 238U (and the hydride ratio 238U1H/238U)."""

    name: str
    ratios: dict  # isotope -> ratio to 238U, for "234U", "235U", "236U", "238U1H"

    def ratio(self, iso: str) -> float:
        """Atom ratio of ``iso`` to 238U (1 for 238U itself, 0 for an isotope not given)."""
        return 1.0 if iso == REFERENCE else float(self.ratios.get(iso, 0.0))


# rounded atom ratios of common uranium reference materials (simulation only)
HYDRIDE = 3e-4
REFERENCE_MATERIALS = {
    "DU": Material("DU", {"234U": 1.0e-5, "235U": 0.0020, "236U": 3.0e-5, "238U1H": HYDRIDE}),
    "NU": Material("NU", {"234U": 5.5e-5, "235U": 0.007253, "236U": 0.0, "238U1H": HYDRIDE}),
    "U010": Material("U010", {"234U": 5.5e-5, "235U": 0.01014, "236U": 6.9e-5, "238U1H": HYDRIDE}),
    "U030": Material("U030", {"234U": 2.0e-4, "235U": 0.03143, "236U": 2.1e-4, "238U1H": HYDRIDE}),
    "U100": Material("U100", {"234U": 6.8e-4, "235U": 0.1136, "236U": 7.6e-4, "238U1H": HYDRIDE}),
    "U500": Material("U500", {"234U": 0.01042, "235U": 0.9997, "236U": 0.00152, "238U1H": HYDRIDE}),
}
DEFAULT_MIXTURE = {"NU": 0.4, "U010": 0.2, "U100": 0.2, "U500": 0.2}

# background count rate of each mass relative to 238U (dark counts and molecular ions)
BACKGROUND_FACTORS = {"234U": 0.3, "235U": 0.5, "236U": 0.4, "238U": 1.0, "238U1H": 0.4}


def parse_mixture(text: str | dict | None) -> dict[str, float]:
    """``"NU:0.4,U500:0.6"`` (or a dict) -> normalised weights of known materials."""
    if text is None:
        mix = dict(DEFAULT_MIXTURE)
    elif isinstance(text, dict):
        mix = dict(text)
    else:
        mix = {}
        for part in text.split(","):
            name, _, w = part.partition(":")
            try:
                mix[name.strip()] = float(w) if w.strip() else 1.0
            except ValueError:
                raise ValueError(f"mixture {text!r}: weight of {name!r} is not a number") from None
    unknown = [m for m in mix if m not in REFERENCE_MATERIALS]
    if unknown:
        raise ValueError(f"unknown material(s) {', '.join(unknown)}; known: {', '.join(REFERENCE_MATERIALS)}")
    total = sum(mix.values())
    if total <= 0 or any(w < 0 for w in mix.values()):
        raise ValueError(f"mixture {text!r}: weights must be non-negative and not all zero")
    return {k: v / total for k, v in mix.items()}


@dataclass
class SimsSettings:
    """Ranges the simulator draws from (a tuple is a uniform or log-uniform range)."""

    shape: tuple[int, int] = (128, 128)
    isotopes: tuple[str, ...] = ISOTOPES
    mixture: dict = field(default_factory=lambda: dict(DEFAULT_MIXTURE))
    empty_fraction: float = 0.2  # fields with no particle
    particles: tuple[int, int] = (1, 12)  # particles per non-empty field (uniform)
    diameter: tuple[float, float] = (3.5, 14.0)  # pixels (log-uniform)
    rate_238: tuple[float, float] = (3.0, 300.0)  # 238U counts per particle pixel (log-uniform)
    background_238: tuple[float, float] = (0.02, 2.0)  # 238U background counts per pixel (log-uniform)
    background_variation: float = 0.8  # within a field: factor in [1 - v/2, 1 + v/2] (Perlin)
    psf_sigma: tuple[float, float] = (0.6, 1.2)  # beam, pixels
    spikes: float = 2.0  # mean detector spikes (single hot pixels in one mass) per field
    attach: float = 0.15  # probability that a particle touches another
    max_overlap: float = 0.05


@dataclass
class SimsField:
    """A simulated field of view: its counts, its true particles and its background level."""

    counts: np.ndarray  # (C, Y, X) int32, channels in ``isotopes`` order
    isotopes: tuple[str, ...]
    labels: np.ndarray  # (Y, X) int32, visible particles 1..n
    truth: pd.DataFrame  # one row per particle (see truth_columns)
    background_238: float


def truth_columns() -> list[str]:
    """Columns of a field's truth table (``truth.csv`` has a ``field`` column before them)."""
    cols = ["label", "material", "y", "x", "area", "diameter", "rate_238"]
    cols += [ratio_columns(iso)[0] for iso in RATIO_ISOTOPES]
    cols += [f"{iso}_expected" for iso in ISOTOPES]
    return cols


def _loguniform(rng, lo_hi):
    lo, hi = lo_hi
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def simulate_field(
    rng: np.random.Generator | int | None = None,
    settings: SimsSettings | None = None,
    n_particles: int | None = None,
    particles: Sequence[dict] | None = None,
    background_238: float | None = None,
) -> SimsField:
    """One simulated SIMS field of view.

    Parameters
    ----------
    rng : Generator, int or None
    settings : SimsSettings
    n_particles : int, optional
        Number of particles to place (before hidden ones are dropped); drawn from
        ``settings`` if None (``0`` with probability ``empty_fraction``).
    particles : list of dict, optional
        Hand-placed particles instead of random ones, each with ``y``, ``x``, ``diameter``,
        ``material`` (name or :class:`Material`) and ``rate_238``; round discs.
    background_238 : float, optional
        Mean 238U background counts per pixel (drawn if None).

    Returns
    -------
    SimsField
    """
    rng = np.random.default_rng(rng)
    s = settings or SimsSettings()
    h, w = s.shape
    mix = parse_mixture(s.mixture)
    names, weights = list(mix), np.array(list(mix.values()))
    if particles is not None:
        labels = np.zeros((h, w), np.int32)
        yy, xx = np.mgrid[:h, :w]
        specs = []
        for k, p in enumerate(particles, start=1):
            disc = (yy - p["y"]) ** 2 + (xx - p["x"]) ** 2 <= (p["diameter"] / 2) ** 2
            labels[disc & (labels == 0)] = k
            mat = p["material"]
            specs.append(
                (
                    mat if isinstance(mat, Material) else REFERENCE_MATERIALS[mat],
                    float(p["rate_238"]),
                    float(p["diameter"]),
                )
            )
    else:
        if n_particles is None:
            n_particles = (
                0 if rng.random() < s.empty_fraction else int(rng.integers(s.particles[0], s.particles[1] + 1))
            )
        diam = [_loguniform(rng, s.diameter) for _ in range(n_particles)]
        shapes = [
            random_particle(rng, d, elongation=rng.uniform(1.0, 1.6), roughness=rng.uniform(0.02, 0.1), lobed=0.15)
            for d in diam
        ]
        labels, placed = place_particles((h, w), shapes, rng, None, attach=s.attach, max_overlap=s.max_overlap)
        # place_particles keeps the visible particles in placement order; their sizes follow
        kept = [i for i, sh in enumerate(shapes) if any(sh[0] is pp.mask for pp in placed)]
        specs = [
            (REFERENCE_MATERIALS[names[rng.choice(len(names), p=weights)]], _loguniform(rng, s.rate_238), diam[i])
            for i in kept
        ]
    n = int(labels.max())
    psf = rng.uniform(*s.psf_sigma)
    # expected 238U emission, blurred by the beam; each particle's own map for the minor isotopes
    iso_list = tuple(s.isotopes)
    expected = np.zeros((len(iso_list), h, w), np.float64)
    rows = []
    objs = ndi.find_objects(labels)
    for k in range(1, n + 1):
        mat, rate, diam = specs[k - 1]
        sl = objs[k - 1]
        if sl is None:
            continue
        pad = int(np.ceil(4 * psf)) + 1
        ys = slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, h))
        xs = slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, w))
        own = (labels[ys, xs] == k).astype(np.float64)
        emission = ndi.gaussian_filter(own * rate, psf, mode="constant")
        total_238 = rate * own.sum()
        for c, iso in enumerate(iso_list):
            expected[c, ys, xs] += emission * mat.ratio(iso)
        cy, cx = np.argwhere(labels[ys, xs] == k).mean(0) + (ys.start, xs.start)
        row = {
            "label": k,
            "material": mat.name,
            "y": float(cy),
            "x": float(cx),
            "area": int(own.sum()),
            "diameter": float(diam),
            "rate_238": float(rate),
        }
        for iso in RATIO_ISOTOPES:
            row[ratio_columns(iso)[0]] = mat.ratio(iso)
        for iso in ISOTOPES:
            row[f"{iso}_expected"] = total_238 * mat.ratio(iso) if iso in iso_list else np.nan
        rows.append(row)
    bg = background_238 if background_238 is not None else _loguniform(rng, s.background_238)
    v = s.background_variation
    shade = (1 - v / 2) + v * perlin_noise((h, w), rng.uniform(32, 128), rng, octaves=2)
    for c, iso in enumerate(iso_list):
        expected[c] += bg * BACKGROUND_FACTORS.get(iso, 0.5) * shade
    counts = rng.poisson(expected).astype(np.int32)
    for _ in range(rng.poisson(s.spikes)):
        c = rng.integers(len(iso_list))
        counts[c, rng.integers(h), rng.integers(w)] += int(rng.integers(5, 60))
    truth = pd.DataFrame(rows, columns=truth_columns())
    return SimsField(counts, iso_list, labels, truth, bg)


def field_paths(out_dir: Path, name: str, isotopes: Sequence[str], layout: str) -> dict[str, Path]:
    """Give the files :func:`write_field` writes for the field ``name``.

    Keys: ``stack`` (layout ``stack``) or each isotope (layout ``files``), and ``mask``.
    """
    if layout == "stack":
        images = {"stack": out_dir / "fields" / f"{name}.tif"}
    else:
        images = {iso: out_dir / "fields" / f"{name}_{iso}.tif" for iso in isotopes}
    return {**images, "mask": out_dir / "masks" / f"{name}_mask.tif"}


def write_field(
    sim: SimsField, out_dir: str | os.PathLike, name: str, layout: str = "stack", overwrite: bool = False
) -> dict[str, Path]:
    """Write a simulated field: its counts and its label mask.

    The counts are an ImageJ ``CYX`` stack with the isotope names as channel labels, or one file
    per isotope named ``NAME_ISOTOPE.tif``.
    """
    import tifffile

    if layout not in ("stack", "files"):
        raise ValueError(f"layout must be 'stack' or 'files', got {layout!r}")
    out_dir = Path(out_dir)
    paths = field_paths(out_dir, name, sim.isotopes, layout)
    counts = sim.counts.astype(np.uint16) if sim.counts.max() < 65536 else sim.counts.astype(np.float32)
    if layout == "stack":
        write_atomic(
            paths["stack"],
            lambda tmp: tifffile.imwrite(
                tmp, counts, imagej=True, metadata={"axes": "CYX", "Labels": list(sim.isotopes)}
            ),
            overwrite,
        )
    else:
        for c, iso in enumerate(sim.isotopes):
            write_tiff(paths[iso], counts[c], overwrite=overwrite)
    write_tiff(paths["mask"], sim.labels.astype(np.uint16), overwrite=overwrite)
    return paths


def simulate_fields(
    n: int,
    out_dir: str | os.PathLike,
    settings: SimsSettings | None = None,
    seed: int = 0,
    layout: str = "stack",
    overwrite: bool = False,
    progress: bool = True,
    prefix: str = "field",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate ``n`` fields and write them with their truth.

    Writes ``fields/PREFIX_NNNN.tif`` (or ``fields/PREFIX_NNNN_ISOTOPE.tif``),
    ``masks/PREFIX_NNNN_mask.tif``, ``truth.csv`` (one row per particle: field, label,
    material, position, area, true ratios, expected counts per isotope) and
    ``fields_truth.csv`` (one row per field: particles, background level). Field ``i`` uses the
    seed ``(seed, i)``, so any field can be made again alone.

    Returns
    -------
    truth, fields : DataFrame
    """
    from tqdm.auto import tqdm

    s = settings or SimsSettings()
    out_dir = Path(out_dir)
    width = max(4, len(str(n - 1)))
    names = [f"{prefix}_{i:0{width}d}" for i in range(n)]
    outs = [out_dir / "truth.csv", out_dir / "fields_truth.csv"]
    for nm in names:
        outs += list(field_paths(out_dir, nm, s.isotopes, layout).values())
    check_outputs(outs, overwrite)
    truths, frows = [], []
    for i, nm in enumerate(tqdm(names, desc="simulating SIMS fields", unit="field", disable=not progress)):
        sim = simulate_field(np.random.default_rng([seed, i]), s)
        write_field(sim, out_dir, nm, layout, overwrite)
        t = sim.truth.copy()
        t.insert(0, "field", nm)
        truths.append(t)
        frows.append(
            {
                "field": nm,
                "particles": len(t),
                "background_238": sim.background_238,
                "height": s.shape[0],
                "width": s.shape[1],
            }
        )
    nonempty = [t for t in truths if len(t)]
    truth = pd.concat(nonempty, ignore_index=True) if nonempty else pd.DataFrame(columns=["field"] + truth_columns())
    fields = pd.DataFrame(frows)
    write_csv(out_dir / "truth.csv", truth, overwrite)
    write_csv(out_dir / "fields_truth.csv", fields, overwrite)
    return truth, fields
