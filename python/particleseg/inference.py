"""Tiled network inference on images of any size, with smooth blending and bounded memory.

The image is cut into overlapping tiles which are predicted in batches. Each tile's output is
weighted by a window that falls smoothly to (almost) zero at the tile's sides, so seams vanish
where tiles overlap, and the weighted sum is divided by the summed weights. Tiles are processed
one row of tiles (a *strip*) at a time, and rows of the output are written as soon as no later
strip touches them: working memory is proportional to ``tile x image width``, and ``out`` may be
a memory-mapped array, so the output never has to fit in memory.

The prediction function is any callable from a ``(N, h, w, C)`` float32 batch to a
``(N, h, w, K)`` array (a Keras model, an ONNX Runtime session, ...), so this module depends on
no deep-learning framework. Keras runs on the GPU by itself when its backend sees one.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap``.

    The last tile ends exactly at ``length``; ``length >= tile`` is required.
    """
    if length < tile:
        raise ValueError(f"length {length} is smaller than the tile {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap}")
    stride = tile - overlap
    n = max(1, math.ceil((length - overlap) / stride))
    starts = [min(i * stride, length - tile) for i in range(n)]
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return sorted(set(starts))


def blend_window(shape: tuple[int, int], overlap: int, floor: float = 1e-3) -> np.ndarray:
    """Separable weight window for blending tiles: ``sin^2`` ramps over ``overlap`` pixels at
    each side, 1 inside, never below ``floor`` (so image-border pixels, covered by one tile
    only, still get a defined value)."""

    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, np.float32)
        if overlap > 0:
            k = min(overlap, n // 2)
            r = np.sin(0.5 * np.pi * (np.arange(k, dtype=np.float32) + 0.5) / k) ** 2
            w[:k] = r
            w[n - k:] = r[::-1]
        return np.maximum(w, floor)

    return np.outer(ramp(shape[0]), ramp(shape[1]))


def _round_up(n: int, m: int) -> int:
    return ((n + m - 1) // m) * m


def even_tile_size(length: int, max_tile: int, overlap: int, multiple_of: int) -> int:
    """Smallest tile (a multiple of ``multiple_of``, at most about ``max_tile``) that covers
    ``length`` with as few tiles as ``max_tile`` would need.

    Spreading the tiles evenly keeps the extra work of overlapping tiles near ``overlap`` per
    tile, instead of a last tile that mostly repeats its neighbour.
    """
    max_tile = max(multiple_of, _round_up(max_tile, multiple_of))
    if length <= max_tile:
        return _round_up(length, multiple_of)
    n = math.ceil((length - overlap) / (max_tile - overlap))
    return min(max_tile, _round_up(math.ceil((length + (n - 1) * overlap) / n), multiple_of))


def predict_tiled(
    predict: PredictFn,
    image: np.ndarray,
    tile: int | tuple[int, int] | None = 256,
    overlap: int = 32,
    batch_size: int = 4,
    multiple_of: int = 16,
    out: np.ndarray | None = None,
    progress: bool | None = None,
    desc: str = "inference",
) -> np.ndarray:
    """Predict a large image tile by tile.

    Parameters
    ----------
    predict : callable
        Batch ``(N, h, w, C)`` float32 -> ``(N, h, w, K)``.
    image : ndarray
        ``(H, W)`` or ``(H, W, C)``, already normalised.
    tile : int, (int, int) or None
        Largest tile size; tiles are made as even as possible (see :func:`even_tile_size`),
        multiples of ``multiple_of``, and shrunk for small images.
        ``None`` predicts the whole image at once (padded to a multiple of ``multiple_of``).
    overlap : int
        Pixels shared by neighbouring tiles and blended. About the network's receptive-field
        halo (32 for a depth-4 UNet) makes tiled and untiled outputs agree.
    batch_size : int
        Tiles per network call.
    multiple_of : int
        The network's input sides must be multiples of this (``2 ** depth``).
    out : ndarray, optional
        ``(H, W, K)`` float32 array (for example a ``numpy.memmap``) to write into.
    progress : bool or None
        Show a progress bar; ``None`` shows it when there are more than 16 tiles.

    Returns
    -------
    ndarray of float32, ``(H, W, K)``
    """
    from tqdm.auto import tqdm

    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {image.shape}")
    h, w, _ = img.shape

    if tile is None:
        th, tw = _round_up(h, multiple_of), _round_up(w, multiple_of)
        overlap = 0
    else:
        th, tw = (tile, tile) if np.isscalar(tile) else tile
        th = even_tile_size(h, th, overlap, multiple_of)
        tw = even_tile_size(w, tw, overlap, multiple_of)
        overlap = min(overlap, th // 2 - 1, tw // 2 - 1) if min(th, tw) > 2 else 0
    # Pad (reflecting) only when the image is smaller than one tile along an axis.
    ph, pw = max(0, th - h), max(0, tw - w)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "symmetric"
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
    H, W = img.shape[:2]
    ys = tile_starts(H, th, overlap)
    xs = tile_starts(W, tw, overlap)
    window = blend_window((th, tw), overlap)[..., None]

    n_tiles = len(ys) * len(xs)
    bar = tqdm(total=n_tiles, desc=desc, unit="tile", disable=not (progress if progress is not None else n_tiles > 16),
               leave=False)
    acc = wsum = None
    try:
        for i, y0 in enumerate(ys):
            # predict one strip of tiles in batches
            for b0 in range(0, len(xs), batch_size):
                bx = xs[b0:b0 + batch_size]
                batch = np.stack([img[y0:y0 + th, x0:x0 + tw] for x0 in bx])
                pred = np.asarray(predict(batch), np.float32)
                if pred.shape[:3] != batch.shape[:3]:
                    raise ValueError(f"prediction has shape {pred.shape} for a batch of shape {batch.shape}")
                if acc is None:
                    k = pred.shape[-1]
                    acc = np.zeros((th, W, k), np.float32)
                    wsum = np.zeros((th, W, 1), np.float32)
                    if out is None:
                        out = np.empty((h, w, k), np.float32)
                    elif out.shape != (h, w, k):
                        raise ValueError(f"out has shape {out.shape}, expected {(h, w, k)}")
                for x0, p in zip(bx, pred):
                    acc[:, x0:x0 + tw] += p * window
                    wsum[:, x0:x0 + tw] += window
                bar.update(len(bx))
            # rows [y0, next y0) are final: write them and shift the strip buffer
            y1 = ys[i + 1] if i + 1 < len(ys) else y0 + th
            done = y1 - y0
            rows = slice(y0, min(y1, h))
            if rows.start < rows.stop:
                out[rows] = (acc[: rows.stop - rows.start, :w] / wsum[: rows.stop - rows.start, :w])
            acc[: th - done] = acc[done:]
            acc[th - done:] = 0
            wsum[: th - done] = wsum[done:]
            wsum[th - done:] = 0
    finally:
        bar.close()
    return out
