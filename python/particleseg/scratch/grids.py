"""PNG sample grids for inspecting each stage of the from-scratch workflow."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..io import write_atomic


def to_uint8(image: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Gray image to uint8, mapping ``low``..``high`` (default: the 0.5 and 99.5 percentiles) to 0..255."""
    a = np.asarray(image, np.float32)
    if low is None or high is None:
        lo, hi = np.percentile(a, [0.5, 99.5]) if a.size else (0.0, 1.0)
        low = lo if low is None else low
        high = hi if high is None else high
    span = max(float(high) - float(low), 1e-6)
    return np.clip((a - low) / span * 255, 0, 255).astype(np.uint8)


def outline_overlay(
    image: np.ndarray,
    labels: np.ndarray,
    color=(255, 60, 60),
    dropped: np.ndarray | None = None,
    dropped_color=(60, 140, 255),
) -> np.ndarray:
    """Return an RGB image with the borders of ``labels`` drawn in ``color``.

    The borders of ``dropped``, when given, are drawn in ``dropped_color``.

    """
    from skimage.segmentation import find_boundaries

    gray = to_uint8(image) if image.dtype != np.uint8 else image
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    if dropped is not None and np.any(dropped):
        rgb[find_boundaries(dropped, mode="inner")] = dropped_color
    if np.any(labels):
        rgb[find_boundaries(labels, mode="inner")] = color
    return rgb


def save_grid(
    path: str | os.PathLike,
    tiles: Sequence[np.ndarray],
    columns: int = 8,
    gap: int = 2,
    overwrite: bool = True,
    max_side: int = 2400,
) -> None:
    """Write gray (uint8) or RGB tiles of possibly different sizes as one PNG grid (white gaps).

    Tiles are shown at full resolution unless the grid would exceed ``max_side`` pixels, in
    which case all tiles are downsampled by the same integer factor.
    """
    from PIL import Image

    tiles = [np.asarray(t) for t in tiles]
    if not tiles:
        return
    tiles = [t if t.ndim == 3 else np.repeat(t[..., None], 3, -1) for t in tiles]
    tiles = [t if t.dtype == np.uint8 else to_uint8(t) for t in tiles]
    columns = max(1, min(columns, len(tiles)))
    rows = int(np.ceil(len(tiles) / columns))
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    step = max(1, int(np.ceil(max(rows * (th + gap), columns * (tw + gap)) / max_side)))
    tiles = [t[::step, ::step] for t in tiles]
    th, tw = -(-th // step), -(-tw // step)
    canvas = np.full((rows * (th + gap) - gap, columns * (tw + gap) - gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * (th + gap) : r * (th + gap) + t.shape[0], c * (tw + gap) : c * (tw + gap) + t.shape[1]] = t
    write_atomic(path, lambda tmp: Image.fromarray(canvas).save(tmp, format="PNG"), overwrite=overwrite)
