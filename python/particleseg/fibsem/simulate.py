"""Simulated serial-section FIB-SEM stacks of a multi-phase material, with exact phase labels.

The microstructure is three-dimensional: each phase after the first (the matrix) is where a
smooth random field (Gaussian-filtered noise, its own correlation length) exceeds a level set
by the phase's volume fraction, painted in order, so a phase continues from slice to slice.
Two detector signals see the phases with *different* contrast, so that each alone confuses a
pair of phases the other separates:

* channel 0 (in-chamber, SE-like): pores dark, matrix and inclusions close together, strong
  curtaining (topographic), lower noise;
* channel 1 (through-the-lens, BSE-like): inclusions bright, pores and matrix close together,
  weaker curtaining, more noise.

On top: curtaining stripes (streaks along the milling direction at an angle that varies from
slice to slice, partly persisting through the stack), a smooth detector-response gradient
(a ramp and a broad bump, different in each channel), Gaussian blur and noise drawn anew for
every slice. Neighbouring slices share the structure but not the noise, which is why context
slices help.

References
----------
.. [1] L. Holzer, M. Cantoni, "Review of FIB-tomography", in Nanofabrication Using Focused Ion
       and Electron Beams, Oxford University Press (2012), 410-435 (curtaining, detector
       signals, pore back-wall artefacts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..io import check_outputs, write_tiff

DEFAULT_PHASES = ("matrix", "pore", "inclusion")
CHANNEL_NAMES = ("in-chamber", "in-lens")


@dataclass
class FibsemSettings:
    """Parameters of the simulated stack and its imaging."""

    shape: tuple[int, int, int] = (32, 192, 192)  # Z, Y, X
    phases: tuple[str, ...] = DEFAULT_PHASES
    fractions: tuple[float, ...] = (0.0, 0.25, 0.15)  # phases 2.. by volume (the first fills the rest)
    correlation: tuple[float, ...] = (0.0, 5.0, 3.5)  # smoothing sigma (pixels in Y, X) of each phase's field
    z_correlation: float = 0.5  # sigma along Z relative to Y, X (slices thicker than pixels)
    # mean signal of each phase in each channel (rows: channels, columns: phases)
    levels: tuple[tuple[float, ...], ...] = ((0.55, 0.15, 0.63), (0.40, 0.33, 0.80))
    noise: tuple[float, ...] = (0.10, 0.14)
    curtain: tuple[float, ...] = (0.18, 0.07)  # stripe amplitude per channel
    stripes_per_100px: float = 6.0
    angle_range: float = 12.0  # degrees from the milling direction (vertical)
    gradient: tuple[float, ...] = (0.35, 0.25)  # detector response: relative change across the slice
    blur: float = 0.8


@dataclass
class FibsemSimulation:
    """A simulated stack: its detector channels, the true phase of every voxel and the names."""

    channels: np.ndarray  # (C, Z, Y, X) uint8
    labels: np.ndarray  # (Z, Y, X) uint8, phases 1..K
    phases: tuple[str, ...]
    channel_names: tuple[str, ...]


def phase_volume(rng: np.random.Generator, s: FibsemSettings) -> np.ndarray:
    """Phase labels ``1..K`` of a random microstructure, ``(Z, Y, X)`` uint8."""
    z, h, w = s.shape
    labels = np.ones(s.shape, np.uint8)
    for p in range(1, len(s.phases)):
        sig = s.correlation[p]
        f = ndi.gaussian_filter(rng.normal(0, 1, s.shape), (sig * s.z_correlation, sig, sig), mode="wrap")
        level = np.quantile(f, 1 - s.fractions[p])
        labels[f > level] = p + 1
    return labels


def _curtains(rng, shape, n_slices, density, angle_range):
    """Stripe fields ``(Z, Y, X)`` in [-1, 1]: streaks along a direction near vertical.

    Half of the streaks persist through the stack (drifting in angle), half are new in every slice.
    """
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    n = max(1, int(round(density * w / 100)))
    persistent = [
        (
            rng.uniform(-0.2 * w, 1.2 * w),
            rng.uniform(0.7, 3.0),
            rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
            rng.uniform(0, 0.7 * h),
        )
        for _ in range(n // 2 + 1)
    ]
    base = rng.uniform(-angle_range, angle_range)
    drift = rng.uniform(-angle_range, angle_range) / max(n_slices, 1)
    out = np.zeros((n_slices, h, w), np.float32)
    for z in range(n_slices):
        ang = np.deg2rad(np.clip(base + drift * z + rng.normal(0, angle_range / 4), -2 * angle_range, 2 * angle_range))
        u = xx * np.cos(ang) - yy * np.sin(ang)  # across the streaks
        fresh = [
            (
                rng.uniform(-0.2 * w, 1.2 * w),
                rng.uniform(0.7, 3.0),
                rng.choice([-1, 1]) * rng.uniform(0.4, 1.0),
                rng.uniform(0, 0.7 * h),
            )
            for _ in range(n - n // 2)
        ]
        field_ = np.zeros((h, w), np.float32)
        for c, width, amp, start in persistent + fresh:
            streak = np.exp(-0.5 * ((u - c) / width) ** 2)
            fade = np.clip((yy - start) / 20.0, 0, 1)  # a curtain starts below a feature
            field_ += amp * streak * fade
        out[z] = np.clip(field_, -1.5, 1.5)
    return out


def _response(rng, shape, strength):
    """Smooth multiplicative detector response: a ramp in a random direction times a broad bump."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / np.array([h, w]).reshape(2, 1, 1).max()
    a = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.35**2))
    g = 1 + strength * (ramp + 0.5 * (bump - bump.mean()))
    return g.astype(np.float32)


def simulate_stack(
    rng: np.random.Generator | int | None = None, settings: FibsemSettings | None = None
) -> FibsemSimulation:
    """Simulate a two-channel FIB-SEM stack and its phase labels."""
    rng = np.random.default_rng(rng)
    s = settings or FibsemSettings()
    if len(s.fractions) != len(s.phases) or len(s.correlation) != len(s.phases):
        raise ValueError("fractions and correlation need one entry per phase")
    if any(len(lv) != len(s.phases) for lv in s.levels):
        raise ValueError("levels need one value per phase for each channel")
    labels = phase_volume(rng, s)
    nz, h, w = s.shape
    curtain = _curtains(rng, (h, w), nz, s.stripes_per_100px, s.angle_range)
    chans = []
    for c, lv in enumerate(s.levels):
        lut = np.array((0.0,) + tuple(lv), np.float32)
        resp = _response(rng, (h, w), s.gradient[c])
        img = lut[labels]
        img = ndi.gaussian_filter(img, (0, s.blur, s.blur)) if s.blur > 0 else img
        img = img * resp[None] + s.curtain[c] * curtain
        img = img + rng.normal(0, s.noise[c], img.shape).astype(np.float32)
        chans.append(np.clip(np.round(img * 200 + 25), 0, 255).astype(np.uint8))
    names = tuple(CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"channel {c}" for c in range(len(s.levels)))
    return FibsemSimulation(np.stack(chans), labels, tuple(s.phases), names)


def annotation_slices(n_slices: int, n: int) -> list[int]:
    """``n`` slices spread evenly through a stack, away from its ends."""
    if n <= 0:
        return []
    return sorted(set(np.linspace(0, n_slices - 1, n + 2)[1:-1].round().astype(int).tolist()))


def write_simulation(
    sim: FibsemSimulation,
    out_dir: str | os.PathLike,
    annotate: Sequence[int] = (),
    layout: str = "stack",
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a simulated stack, its labels and the annotations a person would make for training.

    The stack is one ``ZYX`` TIFF per channel (``ch0_in-chamber.tif``, ...), or with
    ``layout="slices"`` one folder per channel of single-slice files; ``labels.tif`` holds the
    full truth, ``annotations.tif`` the truth on the ``annotate`` slices (0 elsewhere).
    """
    out = Path(out_dir)
    if layout not in ("stack", "slices"):
        raise ValueError(f"layout must be 'stack' or 'slices', got {layout!r}")
    paths: dict[str, Path] = {}
    nz = sim.labels.shape[0]
    for c, name in enumerate(sim.channel_names):
        key = f"ch{c}"
        paths[key] = out / (f"{key}_{name}.tif" if layout == "stack" else f"{key}_{name}")
    paths["labels"] = out / "labels.tif"
    paths["annotations"] = out / "annotations.tif"
    targets = [p for k, p in paths.items() if k.startswith("ch") and layout == "stack"]
    if layout == "slices":
        targets += [paths[f"ch{c}"] / f"slice_{z:04d}.tif" for c in range(len(sim.channel_names)) for z in range(nz)]
    check_outputs(targets + [paths["labels"], paths["annotations"]], overwrite)
    for c in range(len(sim.channel_names)):
        if layout == "stack":
            write_tiff(paths[f"ch{c}"], sim.channels[c], overwrite=overwrite)
        else:
            for z in range(nz):
                write_tiff(paths[f"ch{c}"] / f"slice_{z:04d}.tif", sim.channels[c, z], overwrite=overwrite)
    write_tiff(paths["labels"], sim.labels, overwrite=overwrite)
    ann = np.zeros_like(sim.labels)
    for z in annotate:
        ann[z] = sim.labels[z]
    write_tiff(paths["annotations"], ann, overwrite=overwrite)
    return paths
