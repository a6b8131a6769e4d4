"""Augmentation of training tiles (flips, rotations, elastic deformation, gray values, noise)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi


@dataclass
class Augmentation:
    """Random changes applied to each training tile (image and target together where spatial).

    Intensity changes apply to the normalised image: ``brightness`` shifts by up to this much,
    ``contrast`` scales by up to this factor around the mean, ``gamma`` raises the (clipped)
    image to a power in ``[1/(1+gamma), 1+gamma]``, ``noise`` adds Gaussian noise with a
    standard deviation up to this. ``elastic`` is the displacement amplitude in pixels of a
    smooth random deformation (0 disables it; it costs a few milliseconds per tile). ``zoom``
    shows the particles at other sizes: each tile is cut from a square ``s`` times the tile's
    side and resampled to the tile (:func:`particleseg.train.tiles.tile_batch`), ``s`` drawn
    log-uniformly from ``[1/(1+zoom), 1+zoom]`` (0 disables it and draws nothing, so the tiles
    stay those of a run without it).
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.3
    noise: float = 0.03
    elastic: float = 0.0
    elastic_sigma: float = 10.0
    zoom: float = 0.0
    intensity_channels: tuple[int, ...] | None = None  # channels the intensity changes apply to (None: all)

    def cut_side(self, tile: int, rng: np.random.Generator) -> int:
        """Return the side of the square to cut for a ``tile``-pixel tile (``tile`` without ``zoom``)."""
        if not self.zoom:
            return tile
        return max(1, int(round(tile * np.exp(rng.uniform(-1, 1) * np.log1p(self.zoom)))))

    def __call__(self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator):
        """Augment an image and its target with random draws from ``rng``.

        Flips, rotation and elastic warp change both alike; intensity changes (contrast,
        brightness, gamma, noise) change the image only (its ``intensity_channels``). Returns the
        image and the target as float32.
        """
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
        return np.stack(
            [ndi.map_coordinates(a[..., c], coords, order=order, mode="reflect") for c in range(a.shape[-1])], -1
        )

    return warp(image, 1), warp(target, 1)
