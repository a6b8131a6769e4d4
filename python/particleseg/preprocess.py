"""Preparing an image for a network: data-bar cropping, resampling and contrast normalisation."""

from __future__ import annotations

import numpy as np


def normalize_percentile(
    image: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    clip: tuple[float, float] | None = (-0.5, 1.5),
    max_samples: int = 4_000_000,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Map the ``low`` and ``high`` percentiles of ``image`` to 0 and 1 (float32).

    Percentiles rather than the minimum and maximum keep hot and cold pixels, text labels and
    saturated spots from compressing the contrast of the particles, as in CSBDeep's
    ``normalize``. Values beyond the percentiles are kept (then clipped to ``clip``) so the
    network still sees that a pixel is brighter than the particles.

    Parameters
    ----------
    image : ndarray
        Any shape; the percentiles are taken over all values (a regular subsample of at most
        ``max_samples`` values for very large images).
    low, high : float
        Percentiles in [0, 100], ``low < high``.
    clip : (float, float) or None
        Range the result is clipped to.
    out : float32 ndarray, optional
        Where to write the result, the shape of ``image``; it may be ``image`` itself (then
        normalised in place, no copy: the same values).

    Returns
    -------
    ndarray of float32

    References
    ----------
    .. [1] M. Weigert et al., "Content-aware image restoration: pushing the limits of
           fluorescence microscopy", Nature Methods 15, 1090-1097 (2018).
    """
    flat = np.asarray(image).ravel()
    step = max(1, flat.size // max_samples)
    lo, scale = _percentile_scale(flat[::step], low, high, lambda: (float(flat.min()), float(flat.max())))
    if out is None:
        out = np.empty(np.shape(image), np.float32)
    # in float32, as (float32(image) - lo) * scale: written into out, no whole-image temporaries
    np.subtract(np.asarray(image, np.float32), np.float32(lo), out=out)
    np.multiply(out, np.float32(scale), out=out)
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out


def _percentile_scale(sample: np.ndarray, low: float, high: float, full_range) -> tuple:
    """Return ``lo`` and ``1 / (hi - lo)`` of the ``low`` and ``high`` percentiles of ``sample``.

    For an almost constant image (the percentiles meet) ``full_range()`` gives ``(lo, hi)``.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    lo, hi = np.percentile(sample, [low, high])
    if hi <= lo:
        lo, hi = full_range()
    return lo, (1.0 / (hi - lo) if hi > lo else 1.0)


def normalize_input(image: np.ndarray, normalization: dict) -> np.ndarray:
    """Normalise a network input ``(Y, X, C)`` channel by channel as a bundle's ``input.normalization`` says.

    The method is ``percentile`` (:func:`normalize_percentile` with its ``low``, ``high`` and
    ``clip``) or ``none``. Training and inference both call this, so a network sees the same
    values in both; :func:`input_normalizer` gives the same values a strip at a time.

    Returns
    -------
    ndarray of float32, the shape of ``image``: a new array (one whole-image float32 array is
    all this allocates; at 8192x8192 the former per-channel copies and stacking took 0.5 GiB more),
    or ``image`` itself for the method ``none`` when it is float32 already
    """
    if normalization.get("method", "percentile") == "none":
        return np.asarray(image, np.float32)
    out = np.array(image, np.float32)
    low, high = normalization.get("low", 1.0), normalization.get("high", 99.8)
    clip = tuple(normalization["clip"]) if normalization.get("clip") else None
    for c in range(out.shape[-1]):
        normalize_percentile(out[..., c], low, high, clip, out=out[..., c])
    return out


def _raster_sample(values: np.ndarray, max_samples: int) -> np.ndarray:
    """Every ``step``-th value of ``values`` in raster order, ``step = size // max_samples``.

    The sample :func:`normalize_percentile` takes (``values.ravel()[::step]``), without copying
    a non-contiguous array (one channel of a ``(Y, X, C)`` image) whole first.
    """
    step = max(1, values.size // max_samples)
    if values.flags.c_contiguous:
        return values.reshape(-1)[::step]
    return values[np.unravel_index(np.arange(0, values.size, step), values.shape)]


def input_normalizer(image: np.ndarray, normalization: dict, invert: bool = False):
    """Return a function that normalises rows of ``image`` as :func:`normalize_input` does the whole.

    The percentiles (from the same regular sample of at most 4 million values) and, with
    ``invert``, the gray-value range are taken from the whole ``(Y, X, C)`` image once; the
    function maps any block of its rows ``(y, X, C)`` (any dtype) to float32, value for value
    what ``normalize_input(image)[rows]`` holds (or, with ``invert``, what
    ``normalize_input(particleseg.pipeline.invert(image))[rows]`` holds). So tiled inference
    (:func:`particleseg.inference.predict_tiled` with ``prepare``) needs no whole-image float32
    copy of the input: at 16384x16384 that copy alone took 1 GiB.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).integers(0, 255, (64, 48, 1)).astype(np.uint8)
    >>> norm = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}
    >>> prepare = input_normalizer(img, norm)
    >>> bool(np.array_equal(prepare(img[10:20]), normalize_input(img, norm)[10:20]))
    True
    """
    image = np.asarray(image)
    mirror = None
    if invert:  # as particleseg.pipeline.invert: (max + min) - image, in float32
        mirror = np.float32(np.float32(image.max()) + np.float32(image.min()))
    if normalization.get("method", "percentile") == "none":
        ranges = None
    else:
        low, high = normalization.get("low", 1.0), normalization.get("high", 99.8)
        clip = tuple(normalization["clip"]) if normalization.get("clip") else None
        ranges = []
        for c in range(image.shape[-1]):
            channel = image[..., c]
            sample = np.asarray(_raster_sample(channel, 4_000_000), np.float32)
            if mirror is not None:
                sample = mirror - sample

            def full(channel=channel):  # as normalize_percentile: the full range
                a, b = np.float32(channel.min()), np.float32(channel.max())
                return (float(mirror - b), float(mirror - a)) if mirror is not None else (float(a), float(b))

            lo, scale = _percentile_scale(sample, low, high, full)
            ranges.append((np.float32(lo), np.float32(scale)))

    def prepare(block: np.ndarray) -> np.ndarray:
        out = np.array(block, np.float32)
        if mirror is not None:
            np.subtract(mirror, out, out=out)
        if ranges is not None:
            for c, (lo, scale) in enumerate(ranges):
                view = out[..., c]
                np.subtract(view, lo, out=view)
                np.multiply(view, scale, out=view)
                if clip is not None:
                    np.clip(view, clip[0], clip[1], out=view)
        return out

    return prepare


def detect_data_bar(image: np.ndarray, min_fraction: float = 0.02, max_fraction: float = 0.3) -> int:
    """Count the rows at the bottom of an SEM image that hold the microscope's data bar.

    A data bar is a band of rows on a uniform background (with text and a scale bar on it):
    in each of its rows more than half of the pixels share one value, which almost never
    happens in a noisy micrograph. The band must end within a few rows of the bottom edge
    (1 % of the height; those rows are cropped too), cover between
    ``min_fraction`` and ``max_fraction`` of the height, and the rows just above it must look
    like a micrograph. Returns 0 when no such band is found.

    Parameters
    ----------
    image : ndarray
        2D gray image in its original data type (exact equality of values is used).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.kind == "f" and not np.all(np.mod(image[-8:], 1) == 0):
        # Float images rarely hold a data bar with exact values; only integer-valued ones can.
        return 0
    h = image.shape[0]
    top = int(h * (1 - max_fraction))
    rows = image[top:]
    mode_fraction = np.array([_mode_fraction(r) for r in rows])
    is_bar = mode_fraction > 0.5
    # Some microscopes leave a few picture rows below the bar; they are cropped with it.
    tail = max(2, int(0.01 * h))
    bottom = next((i for i in range(len(rows) - 1, len(rows) - 1 - tail, -1) if is_bar[i]), None)
    if bottom is None:
        return 0
    # Grow the band upwards, allowing short gaps (lines of large text).
    start = bottom
    gap = 0
    for i in range(bottom, -1, -1):
        if is_bar[i]:
            start, gap = i, 0
        else:
            gap += 1
            if gap > 3:
                break
    n = len(rows) - start
    if bottom - start + 1 < max(3, min_fraction * h) or start == 0:
        return 0
    above = image[max(0, top + start - 20) : top + start]
    if np.mean([_mode_fraction(r) for r in above]) > 0.4:
        return 0  # the band continues into the picture: a uniform region, not a data bar
    if _edge_share(image, top + start) < 0.25:
        return 0  # no edge across the image at its top: a flat background with particles, not a bar
    return int(n)


def _edge_share(image: np.ndarray, row: int, jump: float = 0.08) -> float:
    """Share of the columns whose gray value jumps where a band starting at ``row`` begins.

    The largest share over the rows within 4 above and 2 below ``row``; a jump is more than
    ``jump`` times the picture's gray-value range (1st to 99th percentile). A data bar starts
    with a straight edge across the image (31 % of the columns or more jump on the 16 bars of
    the EMPS development set, 80 % on the TiO2 images); a flat background that reaches the
    bottom edge, with particles cut by it, has none (at most 15 % on the 3 such EMPS images
    that looked like a bar by their uniform rows). The threshold of 25 % was set from them.
    """
    lo, hi = np.percentile(np.asarray(image[: row : max(1, row // 256)], np.float32), [1, 99])  # <= 256 rows
    step = jump * max(float(hi - lo), 1e-6)
    share = 0.0
    for i in range(max(1, row - 4), min(image.shape[0], row + 2)):
        diff = np.abs(np.asarray(image[i], np.float32) - np.asarray(image[i - 1], np.float32))
        share = max(share, float((diff > step).mean()))
    return share


def _mode_fraction(row: np.ndarray) -> float:
    _, counts = np.unique(row, return_counts=True)
    return counts.max() / row.size


def rescale(image: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """Resample a 2D image by ``factor`` (``factor > 1`` enlarges), anti-aliased when shrinking."""
    if factor == 1:
        return image
    from skimage.transform import rescale as _rescale

    return _rescale(
        np.asarray(image, np.float32),
        factor,
        order=order,
        preserve_range=True,
        anti_aliasing=factor < 1,
        mode="reflect",
    ).astype(np.float32)


def rescaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, ...]:
    """Shape of an image of ``shape`` after :func:`rescale` by ``factor`` (scikit-image's rounding).

    Examples
    --------
    >>> rescaled_shape((768, 1024), 0.5)
    (384, 512)
    """
    return tuple(int(v) for v in np.maximum(np.round(np.asarray(shape, float) * factor), 1))


class _FloatRows:
    """Rows of a 2D image as float32, mirrored and smoothed as whole-image calls would make them.

    ``read(y0, y1)`` gives rows of ``mirror - image`` (when ``mirror`` is given, as
    :func:`particleseg.pipeline.invert` mirrors), smoothed by
    ``scipy.ndimage.gaussian_filter(..., sigma, mode="mirror")`` as on the whole image: each read
    smooths its rows with a halo of the filter's radius (the image's own rows, or its top and
    bottom edge), so the rows are exact.
    """

    def __init__(self, image: np.ndarray, sigma: tuple[float, float], mirror=None):
        self.image, self.sigma, self.mirror = image, sigma, mirror
        self.shape, self.dtype = tuple(image.shape), np.dtype(np.float32)
        self.smooth = any(s > 1e-15 for s in sigma)
        self.halo = int(4.0 * sigma[0] + 0.5) + 1 if sigma[0] > 1e-15 else 0  # radius of truncate=4

    def read(self, y0: int, y1: int) -> np.ndarray:
        from scipy import ndimage as ndi

        a, b = max(0, y0 - self.halo), min(self.shape[0], y1 + self.halo)
        block = np.asarray(self.image[a:b], np.float32)
        if self.mirror is not None:
            block = self.mirror - block
        if self.smooth:
            block = ndi.gaussian_filter(block, self.sigma, mode="mirror")
        return block[y0 - a : y1 - a]


class _Clipped:
    """Write rows into ``out`` clipped to ``[lo, hi]`` (skimage's ``clip=True`` of its warps)."""

    def __init__(self, out, lo, hi):
        self.out, self.lo, self.hi = out, lo, hi

    def __setitem__(self, key, value) -> None:
        self.out[key] = np.clip(value, self.lo, self.hi)


def rescale_rows(image: np.ndarray, factor: float, out=None, invert: bool = False, strip_rows: int = 256):
    """:func:`rescale` a strip of rows at a time, into ``out``: the same values, bounded memory.

    ``rescale(image, factor)`` (or, with ``invert``, ``rescale(particleseg.pipeline.invert(image),
    factor)``) value for value, without whole-image temporaries: scikit-image's anti-aliasing
    Gaussian, its bilinear resampling (:func:`resize_to`) and its clipping to the input's range
    are applied to the rows each output strip needs. At 16384x16384 the whole-image call held
    about 3 GiB of float arrays at once.

    Parameters
    ----------
    image : (Y, X) array
        Any dtype; read by rows.
    factor : float
        Resampling factor (``> 1`` enlarges).
    out : array or row store, optional
        ``(round(Y * factor), round(X * factor))`` float32, written ``out[y0:y1, :] = rows``
        (a :class:`particleseg.strips.RowFile`); by default a new array.
    invert : bool
        Mirror the gray values within their range first.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    >>> bool(np.array_equal(rescale_rows(img, 0.45, strip_rows=7), rescale(img, 0.45)))
    True
    """
    image = np.asanyarray(image)
    shape = rescaled_shape(image.shape, factor)
    lo, hi = np.float32(image.min()), np.float32(image.max())
    mirror = np.float32(lo + hi) if invert else None
    lo, hi = (mirror - hi, mirror - lo) if invert else (lo, hi)
    sigma = tuple(max(0.0, (i / o - 1) / 2) for i, o in zip(image.shape, shape)) if factor < 1 else (0.0, 0.0)
    if out is None:
        out = np.empty(shape, np.float32)
    resize_to(_FloatRows(image, sigma, mirror), shape, out=_Clipped(out, lo, hi), strip_rows=strip_rows)
    return out


def resize_to(image, shape: tuple[int, int], order: int = 1, out=None, strip_rows: int = 256) -> np.ndarray:
    """Resample a ``(Y, X)`` or ``(Y, X, C)`` array to the spatial ``shape`` (bilinear).

    The values of ``skimage.transform.resize(image, shape, order=1, mode="reflect",
    anti_aliasing=False, preserve_range=True)`` (both sample the input at
    ``(y + 0.5) * in_rows / out_rows - 0.5`` with SciPy's spline of order 1, mirrored at the
    borders), computed ``strip_rows`` output rows at a time with
    ``scipy.ndimage.map_coordinates`` from only the input rows each strip needs. So a large
    image's probabilities are resampled in bounded memory (a whole 8192x8192 two-channel
    output took 1.6 GiB of temporaries at once), twice as fast, and a strip is the same
    whatever the strips around it: the coordinates come from the output row's index alone,
    and a strip's input rows are shifted by a whole number, which is exact in floating point.

    Parameters
    ----------
    image : array or row store
        ``(Y, X[, C])``; or an object with ``shape`` and ``read(y0, y1)`` giving rows (a
        :class:`particleseg.strips.RowFile`), read a strip's rows at a time.
    shape : (int, int)
        Output rows and columns.
    order : int
        1 (bilinear); kept for the callers' clarity, other orders are refused.
    out : array or row store, optional
        Written as ``out[y0:y1, :] = strip`` (a :class:`~particleseg.strips.RowFile`, whose
        ``__setitem__`` writes rows); by default a new array of ``image``'s dtype.
    strip_rows : int
        Output rows per strip.

    Returns
    -------
    ``out``, or the new array.

    Examples
    --------
    >>> import numpy as np
    >>> resize_to(np.array([[0.0, 4.0]]), (1, 4))
    array([[1., 1., 3., 3.]])
    """
    if order != 1:
        raise ValueError(f"resize_to interpolates bilinearly (order 1), not order {order}")
    in_shape = tuple(image.shape)
    if in_shape[:2] == tuple(shape) and out is None:
        return image
    from scipy import ndimage as ndi

    read = image.read if hasattr(image, "read") else (lambda y0, y1: np.asarray(image[y0:y1]))
    dtype = np.dtype(getattr(image, "dtype", np.float32))
    if out is None:
        out = np.empty(tuple(shape) + in_shape[2:], dtype)
    cx = (np.arange(shape[1]) + 0.5) * (in_shape[1] / shape[1]) - 0.5
    for y0 in range(0, shape[0], strip_rows):
        y1 = min(y0 + strip_rows, shape[0])
        cy = (np.arange(y0, y1) + 0.5) * (in_shape[0] / shape[0]) - 0.5
        lo = max(int(np.floor(cy[0])) - 1, 0)
        hi = min(int(np.floor(cy[-1])) + 3, in_shape[0])
        slab = read(lo, hi)
        yy, xx = np.meshgrid(cy - lo, cx, indexing="ij")
        block = np.empty((y1 - y0, shape[1]) + in_shape[2:], dtype)
        if slab.ndim == 2:
            ndi.map_coordinates(slab, [yy, xx], output=block, order=1, mode="mirror")
        else:
            for c in range(slab.shape[2]):
                ndi.map_coordinates(slab[..., c], [yy, xx], output=block[..., c], order=1, mode="mirror")
        out[y0:y1, :] = block
    return out
