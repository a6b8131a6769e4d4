"""Tiled network inference on images of any size, exact and with bounded memory.

The image (padded at its bottom and right to multiples of ``2 ** depth``, as a whole-image call
pads it) is cut into kept parts; each is predicted in a tile that adds a *halo* of real image
around it, or reaches the image's side, and only the kept part of the tile's output is used.
With a halo of at least the network's receptive field (:mod:`particleseg.models.receptive`) and
tiles starting on multiples of ``2 ** depth``, the result is the whole-image prediction at any
tile size (:func:`exact_tiles`, :func:`tiling_plan`). Tiles are processed one row of tiles (a
*strip*) at a time and written at once: working memory is proportional to ``tile x image
width``, and ``out`` may be a memory-mapped array, so the output never has to fit in memory.
:func:`tile_starts`, :func:`blend_window` and :func:`even_tile_size` are the earlier blended
layout (overlapping tiles weighted by a smooth window), kept for callers that use them.

The prediction function is any callable from a ``(N, h, w, C)`` float32 batch to a
``(N, h, w, K)`` array (a Keras model, an ONNX Runtime session, ...), so this module depends on
no deep-learning framework. Keras runs on the GPU by itself when its backend sees one.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

PredictFn = Callable[[np.ndarray], np.ndarray]


#: the eight symmetries of the square, as (transpose, quarter turns): the identity first
DIHEDRAL: tuple[tuple[bool, int], ...] = tuple((t, r) for t in (False, True) for r in range(4))


def _dihedral(batch: np.ndarray, transpose: bool, turns: int, inverse: bool = False) -> np.ndarray:
    """Transpose then turn a ``(N, h, w, C)`` batch by ``turns`` quarter turns (or undo that)."""
    if not inverse:
        batch = batch.transpose(0, 2, 1, 3) if transpose else batch
        return np.rot90(batch, turns, axes=(1, 2))
    batch = np.rot90(batch, -turns, axes=(1, 2))
    return batch.transpose(0, 2, 1, 3) if transpose else batch


def augmented(predict: PredictFn, transforms: int = 8) -> PredictFn:
    """Test-time augmentation: the mean of ``predict`` over flips and quarter turns of each batch.

    Each batch is predicted in its first ``transforms`` orientations of :data:`DIHEDRAL` (8: all
    flips and rotations), each output turned back, and the outputs averaged. The network sees
    every particle eight ways, which smooths outlines and removes detections that only one
    orientation believes in, for ``transforms`` times the network time. The outputs must be
    maps that turn with the image (probabilities, distances, class scores: every head of the
    project's networks).

    Wrapped around the network given to :func:`predict_tiled`, the tiled result is still the
    whole-image result: each orientation of a tile is the same tile of that orientation of the
    padded image, starting on a multiple of ``multiple_of``.

    Parameters
    ----------
    predict : callable
        Batch ``(N, h, w, C)`` float32 -> ``(N, h, w, K)``. Must accept ``(N, w, h, C)`` too.
    transforms : int
        How many of the orientations of :data:`DIHEDRAL`, in its order (1: ``predict`` itself;
        4: the four quarter turns; 8: with their transposes too).

    Returns
    -------
    callable
        Batch -> mean output, float32.

    References
    ----------
    .. [1] C. Stringer et al., "Cellpose: a generalist algorithm for cellular segmentation",
       Nature Methods 18, 100-106 (2021) (``augment``: predictions averaged over flipped tiles).

    Examples
    --------
    A "network" that sees the row number is averaged to the mean of the row and column numbers:

    >>> rows = lambda b: np.broadcast_to(np.arange(b.shape[1], dtype=np.float32)[None, :, None, None], b.shape)
    >>> out = augmented(rows)(np.zeros((1, 4, 4, 1), np.float32))
    >>> float(out[0, 0, 0, 0]), float(out[0, 3, 3, 0]), float(out[0, 0, 3, 0])
    (1.5, 1.5, 1.5)
    """
    if not 1 <= transforms <= len(DIHEDRAL):
        raise ValueError(f"transforms must be 1 to {len(DIHEDRAL)}, got {transforms}")
    chosen = DIHEDRAL[:transforms]

    def predict_augmented(batch: np.ndarray) -> np.ndarray:
        total = None
        for transpose, turns in chosen:
            x = np.ascontiguousarray(_dihedral(batch, transpose, turns))
            y = _dihedral(np.asarray(predict(x), np.float32), transpose, turns, inverse=True)
            if total is None:
                total = y.copy()
            else:
                total += y
        return total / np.float32(len(chosen))

    return predict_augmented


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
    """Separable weight window for blending tiles.

    The window has ``sin^2`` ramps over ``overlap`` pixels at each side, is 1 inside, and is
    never below ``floor`` (so image-border pixels, covered by one tile only, still get a
    defined value).
    """

    def ramp(n: int) -> np.ndarray:
        w = np.ones(n, np.float32)
        if overlap > 0:
            k = min(overlap, n // 2)
            r = np.sin(0.5 * np.pi * (np.arange(k, dtype=np.float32) + 0.5) / k) ** 2
            w[:k] = r
            w[n - k :] = r[::-1]
        return np.maximum(w, floor)

    return np.outer(ramp(shape[0]), ramp(shape[1]))


def _round_up(n: int, m: int) -> int:
    return ((n + m - 1) // m) * m


def even_tile_size(length: int, max_tile: int, overlap: int, multiple_of: int) -> int:
    """Smallest tile that covers ``length`` with as few tiles as ``max_tile`` would need.

    The tile is a multiple of ``multiple_of`` and at most about ``max_tile``; neighbours share
    ``overlap`` pixels (the layout of :func:`tile_starts`; :func:`predict_tiled` uses
    :func:`exact_tiles`).
    """
    max_tile = max(multiple_of, _round_up(max_tile, multiple_of))
    if length <= max_tile:
        return _round_up(length, multiple_of)
    n = math.ceil((length - overlap) / (max_tile - overlap))
    return min(max_tile, _round_up(math.ceil((length + (n - 1) * overlap) / n), multiple_of))


def exact_tiles(
    length: int, max_tile: int | None, halo: int, multiple_of: int = 1
) -> tuple[int, list[tuple[int, int, int]]]:
    """Tiles of one axis for exact tiled prediction: ``(tile, [(start, keep_from, keep_to), ...])``.

    ``length`` (a multiple of ``multiple_of``) is cut into consecutive kept parts
    ``[keep_from, keep_to)``; the tile ``[start, start + tile)`` that predicts a kept part
    reaches at least ``halo`` pixels beyond it on each side, or to the end of the axis (where
    the whole-image run sees the same 'same' padding). All tiles have one size (so they can be
    batched), the fewest that fit in ``max_tile``, each made as small as that number allows;
    starts are multiples of ``multiple_of``. ``max_tile`` below ``2 * halo + multiple_of`` is
    raised to it; ``None`` gives one tile.

    >>> exact_tiles(1024, 512, 64, 16)
    (432, [(0, 0, 368), (304, 368, 672), (592, 672, 1024)])
    """
    m = multiple_of
    if length % m:
        raise ValueError(f"length {length} is not a multiple of {m}")
    halo = _round_up(max(0, int(halo)), m)
    if max_tile is None:
        return length, [(0, 0, length)]
    max_tile = max(_round_up(int(max_tile), m), 2 * halo + m)
    if length <= max_tile:
        return length, [(0, 0, length)]

    def smallest(n: int) -> int:  # n tiles of this size cover the axis: n*T - 2*(n-1)*halo >= length
        return _round_up(math.ceil((length + 2 * (n - 1) * halo) / n), m)

    n = 2
    while smallest(n) > max_tile:
        n += 1
    tile = smallest(n)
    bounds = [0] + [min(length, tile - halo + k * (tile - 2 * halo)) for k in range(n - 1)] + [length]
    tiles = [(min(max(a - halo, 0), length - tile), a, b) for a, b in zip(bounds, bounds[1:])]
    return tile, tiles


def tiling_plan(shape: tuple[int, int], tile: int | tuple[int, int] | None, halo: int, multiple_of: int = 16) -> dict:
    """How :func:`predict_tiled` cuts an image of ``shape`` (Y, X).

    The plan gives the tile size, the number of tiles, and the ``overhead``: network pixels
    computed over those of one whole-image call (both on the image padded to multiples of
    ``multiple_of``).
    """
    h, w = shape[:2]
    hp, wp = _round_up(h, multiple_of), _round_up(w, multiple_of)
    ty, tx = (tile, tile) if tile is None or np.isscalar(tile) else tile
    th, ys = exact_tiles(hp, ty, halo, multiple_of)
    tw, xs = exact_tiles(wp, tx, halo, multiple_of)
    return {
        "tile": (th, tw),
        "tiles": (len(ys), len(xs)),
        "padded": (hp, wp),
        "overhead": len(ys) * th * len(xs) * tw / (hp * wp),
    }


#: Most pixels of one network tile that :func:`bounded_tile` allows: ONNX Runtime needs about
#: 0.5 GiB per Mpx of tile for the default model, so a tile costs at most about 1.3 GiB.
MAX_TILE_PIXELS = 2560 * 1024


def bounded_tile(
    shape: tuple[int, int],
    tile: int | tuple[int, int] | None,
    halo: int,
    multiple_of: int = 16,
    max_pixels: int | None = MAX_TILE_PIXELS,
) -> int | tuple[int, int] | None:
    """Tile sides (Y, X) for :func:`predict_tiled` of an image of ``shape``: memory bounded, fewest pixels.

    Tiles are at most ``tile`` a side (as :func:`predict_tiled` takes it) and at most
    ``max_pixels`` in area; of the layouts that fit (counts of tiles along each axis, each tile
    as small as its count allows, :func:`exact_tiles`), the one with the fewest network pixels
    wins, then the one with fewer tiles. ``tile`` is returned unchanged when its own layout
    fits, or when it or ``max_pixels`` is None. Tiled prediction is exact, so the choice changes
    the memory and the time, not the output. A 2048x2048 image, one tile of 4.2 Mpx for
    ``tile=2048``, becomes two tiles of 1136x2048 (2.3 Mpx; 1.11 times the network pixels).

    Examples
    --------
    >>> bounded_tile((2048, 2048), 2048, 112)
    (1136, 2048)
    >>> bounded_tile((768, 1024), 2048, 112)
    2048
    >>> bounded_tile((272, 272), 64, 112)  # a tile under twice the halo: raised, as predict_tiled does
    64
    """
    if tile is None or max_pixels is None:
        return tile
    ty, tx = (tile, tile) if np.isscalar(tile) else tile
    m = multiple_of
    hp, wp = _round_up(shape[0], m), _round_up(shape[1], m)
    h = _round_up(max(0, int(halo)), m)

    def layouts(length: int, most: int) -> list[tuple[int, int]]:  # (tile side, tiles), fewest tiles last
        most = max(_round_up(int(most), m), 2 * h + m)  # as exact_tiles raises a tile under 2 halos
        found = {}
        for n in range(1, 65):
            side = length if n == 1 else _round_up(math.ceil((length + 2 * (n - 1) * h) / n), m)
            if side <= most:
                t, parts = exact_tiles(length, side, halo, m)
                found.setdefault(t, len(parts))
            if side <= 2 * h + m:
                break
        return sorted(found.items())

    ys, xs = layouts(hp, ty), layouts(wp, tx)
    if ys[-1][0] * xs[-1][0] <= max_pixels:
        return tile
    fits = [(a * na * b * nb, na * nb, a, b) for a, na in ys for b, nb in xs if a * b <= max_pixels]
    if not fits:
        return (ys[0][0], xs[0][0])
    _, _, a, b = min(fits)
    return (a, b)


def _pad_index(n: int, padded: int, mode: str) -> np.ndarray:
    """Source row (or column) of each row of the image padded from ``n`` to ``padded``.

    The padding is the one ``np.pad(..., mode)`` makes: only tiles read from the padding, the
    image is never copied.
    """
    return np.pad(np.arange(n), (0, padded - n), mode=mode) if padded > n else np.arange(n)


def _as_float32(block: np.ndarray) -> np.ndarray:
    return block if block.dtype == np.float32 else np.asarray(block, np.float32)


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
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Predict a large image tile by tile.

    With a halo of at least the network's receptive field, the result is the whole-image
    prediction.

    The image is padded at its bottom and right to multiples of ``multiple_of`` (reflecting,
    as a whole-image call would be padded), cut into kept parts, and each part is predicted in
    a tile that adds ``overlap`` pixels of real image around it (or reaches the image's side,
    where the network's own zero padding is the whole-image run's). Only the kept part of each
    tile's output is used: no blending, so the output does not depend on the tile size.

    Parameters
    ----------
    predict : callable
        Batch ``(N, h, w, C)`` float32 -> ``(N, h, w, K)``.
    image : ndarray
        ``(H, W)`` or ``(H, W, C)``, already normalised.
    tile : int, (int, int) or None
        Largest tile side (Y, X); tiles are made as small as their number allows (see
        :func:`exact_tiles`). At most ``tile * tile`` pixels go to one network call (fewer
        tiles per batch for larger tiles). ``None`` predicts the whole image at once.
    overlap : int
        The halo: pixels of context on each side of a tile's kept part, rounded up to a
        multiple of ``multiple_of``. At least the network's receptive-field radius
        (:func:`particleseg.models.receptive.receptive_field`, ``Bundle.overlap``) makes the
        tiled output equal the whole-image output; less makes seams.
    batch_size : int
        Tiles per network call (at most).
    multiple_of : int
        The network's input sides must be multiples of this (``2 ** depth``); tiles start on
        multiples of it, so a pooling network sees the whole image's pooling grid.
    out : ndarray, optional
        ``(H, W, K)`` float32 array (for example a ``numpy.memmap``) to write into, one strip
        of tiles at a time.
    progress : bool or None
        Show a progress bar; ``None`` shows it when there are more than 16 tiles.
    prepare : callable, optional
        Applied to each strip of rows ``(h, W, C)`` of ``image`` (the rows one row of tiles
        needs) before the tiles are cut from it, for example the normalisation of
        :func:`particleseg.preprocess.input_normalizer`; ``image`` is then used as it is (any
        dtype, not yet normalised), so no whole-image float32 copy is made.

    Returns
    -------
    ndarray of float32, ``(H, W, K)``
    """
    if prepare is not None:
        img = np.asanyarray(image)
    else:
        img = image if isinstance(image, np.ndarray) and image.dtype == np.float32 else np.asarray(image, np.float32)
        prepare = _as_float32
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {image.shape}")
    h, w, _ = img.shape
    m = multiple_of
    hp, wp = _round_up(h, m), _round_up(w, m)
    ty, tx = (tile, tile) if tile is None or np.isscalar(tile) else tile
    th, ys = exact_tiles(hp, ty, overlap, m)
    tw, xs = exact_tiles(wp, tx, overlap, m)
    if tile is not None:  # at most tile * tile pixels in one call
        batch_size = max(1, min(batch_size, (ty * tx) // (th * tw)))
    mode = "reflect" if hp - h < h and wp - w < w else "symmetric"
    iy, ix = _pad_index(h, hp, mode), _pad_index(w, wp, mode)
    whole = hp == h and wp == w and len(ys) == len(xs) == 1

    n_tiles = len(ys) * len(xs)
    show = progress if progress is not None else n_tiles > 16
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_tiles, desc=desc, unit="tile", leave=False)
    try:
        for sy, ay, by in ys:
            # the rows of this row of tiles, prepared once for all its tiles
            strip = prepare(img if whole or (sy == 0 and th == h) else img[iy[sy : sy + th]])
            if isinstance(img, np.memmap):  # read from a file: its pages need not stay
                from .io.write import release_pages

                release_pages(img)
            for b0 in range(0, len(xs), batch_size):
                bx = xs[b0 : b0 + batch_size]
                if whole:
                    batch = strip[None]
                else:
                    batch = np.stack([strip[:, ix[sx : sx + tw]] for sx, _, _ in bx])
                pred = np.asarray(predict(batch), np.float32)
                if pred.shape[:3] != batch.shape[:3]:
                    raise ValueError(f"prediction has shape {pred.shape} for a batch of shape {batch.shape}")
                if out is None:
                    out = np.empty((h, w, pred.shape[-1]), np.float32)
                elif out.shape != (h, w, pred.shape[-1]):
                    raise ValueError(f"out has shape {out.shape}, expected {(h, w, pred.shape[-1])}")
                y1 = min(by, h)
                for (sx, ax, bxe), p in zip(bx, pred):
                    x1 = min(bxe, w)
                    if ay < y1 and ax < x1:
                        out[ay:y1, ax:x1] = p[ay - sy : y1 - sy, ax - sx : x1 - sx]
                if bar is not None:
                    bar.update(len(bx))
    finally:
        if bar is not None:
            bar.close()
    return out
