"""From network output to particles: threshold, split touching particles, clean up, filter.

Every step is a small function over arrays. Filters do not delete particles; they return
which particles to keep and why the others were rejected, so reports can show both.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .distance import distance_transform

THRESHOLD_METHODS = ("li", "otsu", "mean", "median")
#: Names of the shape ranges (the parameter vocabulary of every route), each a column of
#: :func:`particleseg.measure.measure_particles` (see ``measure.PARAMETER_COLUMNS``), and
#: ``feret_ratio``, ``Feret / MinFeret``.
SHAPE_COLUMNS = ("area", "ecd", "feret_min", "feret_max", "solidity", "circularity", "aspect_ratio", "feret_ratio")

_FOUR = ndi.generate_binary_structure(2, 1)


def label_mask(mask: np.ndarray) -> np.ndarray:
    """Label a binary mask with 4-connectivity.

    With 4-connectivity, one-pixel background lines (the convention of annotated masks with
    touching particles) separate particles.
    """
    return ndi.label(np.asarray(mask, bool), structure=_FOUR)[0].astype(np.int32)


def labels_to_mask(labels: np.ndarray, connectivity: int = 2, sizes: np.ndarray | None = None) -> np.ndarray:
    """Binary mask of a label image with one-pixel background lines between touching particles.

    Where two particles touch, the larger one (by pixel count; of two as large, the one with
    the larger label) gives up its pixels that touch the other, so labelling the mask gives
    the particles back, less the pixels given up to the lines. The smaller particle keeps all
    its pixels, so a particle of one pixel, or a thin one, is not cut away or cut in two by a
    larger neighbour. This is the convention of annotated masks of touching particles
    (the TiO2 ground truth), and the one function behind every mask this package writes or
    compares: the ``_mask.tif`` output, the Fiji mask images, the metrics' masks of label
    images and the foreground targets of training.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) int array
        0 is background. A stack is treated slice by slice.
    connectivity : {1, 2}
        Which neighbours touch: 1, the four edge neighbours (the lines then separate particles
        for 4-connected labelling, as :func:`label_mask` and annotated masks); 2, also the
        corner neighbours (the default: the lines also separate particles for 8-connected
        tracing, as ImageJ's Analyze Particles and wand trace, so that Analyze Particles on the
        mask finds the particles of the label image).
    sizes : int array, optional
        Pixel count of each label (entry 0: background), when ``labels`` is a part of a label
        image (:mod:`particleseg.strips`): the sizes of the whole particles decide who gives way.

    Returns
    -------
    bool array of the shape of ``labels``

    Examples
    --------
    >>> lab = np.array([[1, 1, 2, 2, 0],
    ...                 [1, 1, 2, 2, 0],
    ...                 [0, 0, 0, 0, 3]])
    >>> labels_to_mask(lab, connectivity=1).astype(int)
    array([[1, 1, 0, 1, 0],
           [1, 1, 0, 1, 0],
           [0, 0, 0, 0, 1]])
    >>> labels_to_mask(lab).astype(int)  # 3 touches 2 at a corner: 2, the larger, gives way
    array([[1, 1, 0, 1, 0],
           [1, 1, 0, 0, 0],
           [0, 0, 0, 0, 1]])
    """
    lab = np.asarray(labels)
    if lab.ndim == 3:
        return np.stack([labels_to_mask(s, connectivity) for s in lab])
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    # rank the particles by size, then label: a pixel stays if no neighbour ranks before it
    lab = lab.astype(np.int64, copy=False)
    part = sizes is not None
    sizes = np.bincount(lab.ravel()) if sizes is None else np.asarray(sizes)
    ids = np.flatnonzero(sizes[1:]) + 1
    rank = np.zeros(len(sizes), np.int64)
    rank[ids[np.lexsort((ids, sizes[ids]))]] = np.arange(1, len(ids) + 1)
    top = len(ids) + 1
    ranked = np.where(lab > 0, rank[lab], top)
    structure = ndi.generate_binary_structure(2, connectivity)
    first = ndi.minimum_filter(ranked, footprint=structure, mode="constant", cval=top)
    mask = (lab > 0) & (first >= ranked)
    # a thin particle that gave way on both sides can fall apart: keep its largest piece, so
    # that the mask still holds one region per particle
    parts, n = ndi.label(mask, structure=structure)
    if n > len(ids) or part and n:
        pairs, counts = np.unique(np.stack([lab[mask], parts[mask]]), axis=1, return_counts=True)
        order = np.lexsort((-counts, pairs[0]))  # per particle, its largest piece first
        pairs = pairs[:, order]
        first_piece = np.r_[True, pairs[0, 1:] != pairs[0, :-1]]
        drop = pairs[1][~first_piece]
        mask &= ~np.isin(parts, drop)
    return mask


def relabel_kept_first(labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Lookup table that renumbers particles so the kept ones come first.

    The kept particles become ``1..N`` and the others ``N+1..M``, each group in the order of
    its old labels.

    Parameters
    ----------
    labels : int array
        Label image (any shape), 0 background.
    kept : int array
        Labels of the kept particles.

    Returns
    -------
    int32 array
        ``lut[old]`` is the new label (``lut[0] == 0``); apply it as ``lut[labels]``.

    Examples
    --------
    >>> lab = np.array([0, 1, 2, 3, 5])
    >>> lut = relabel_kept_first(lab, np.array([2, 5]))
    >>> lut[lab].tolist()
    [0, 3, 1, 4, 2]
    """
    lab = np.asarray(labels)
    ids = np.setdiff1d(np.unique(lab), [0])
    is_kept = np.isin(ids, kept)
    order = np.concatenate([ids[is_kept], ids[~is_kept]])
    lut = np.zeros(int(lab.max(initial=0)) + 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1)
    return lut


def split_touching(
    mask: np.ndarray,
    distance: np.ndarray | None = None,
    seed_threshold: float = 0.5,
    h: float = 1.0,
    return_markers: bool = False,
    seed_depth: float = 0.0,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Separate touching particles of a binary mask by a marker-controlled watershed.

    Parameters
    ----------
    mask : (Y, X) bool array
    distance : (Y, X) float array, optional
        A predicted map that is high in particle centres and falls to 0 at particle borders
        (the ``distance`` head of a network). Seeds are its connected regions above
        ``seed_threshold`` or, with ``seed_depth``, its peaks. Without it, the Euclidean
        distance transform of ``mask`` is used, with the regional maxima deeper than ``h`` as
        seeds (the classic approach).
    seed_threshold : float
        Seed level on ``distance`` in [0, 1]. Without ``seed_depth``, each connected region of
        the map above it is a seed: higher splits more, but a small particle whose peak stays
        below it gets no seed of its own and joins a neighbour. With ``seed_depth``, peaks
        lower than this seed nothing.
    h : float
        h-maxima depth in pixels on the distance transform (no ``distance``): lower splits more.
    return_markers : bool
        Also return the markers (the seeds' 8-connected regions, numbered ``1..n`` in raster
        order of their first pixel; the labels ``1..n`` grow from them, larger labels are
        the unseeded parts). :mod:`particleseg.strips` numbers particles by them.
    seed_depth : float
        With ``distance``: when above 0, the seeds are the peaks of the map (within the mask)
        that rise at least this much above the saddle joining them to a higher peak (the
        h-maxima, :func:`h_maxima`), higher than ``seed_threshold``: a small particle with a
        low but distinct peak gets its own seed, and a plateau with shallow bumps stays one.
        Lower splits more. Each region of the mask is treated on its own, so strips and the
        whole image agree.

    Returns
    -------
    (Y, X) int32 label image. Parts of the mask that no seed reaches keep their own labels,
    so no foreground is lost. With ``return_markers``, also the (Y, X) int32 markers.

    References
    ----------
    .. [1] P. Soille, "Morphological Image Analysis", 2nd ed., Springer (2003), ch. 9.
    .. [2] S. Beucher, F. Meyer, "The morphological approach to segmentation: the watershed
           transformation", in Mathematical Morphology in Image Processing (1993), 433-481.
    """
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    if not mask.any():
        empty = np.zeros(mask.shape, np.int32)
        return (empty, empty.copy()) if return_markers else empty
    if distance is None:
        surface = distance_transform(mask)
        seeds = h_maxima(surface, h) if h > 0 else _local_maxima(surface)
    else:
        surface = np.where(mask, np.asarray(distance, np.float32), 0)
        seeds = (surface > seed_threshold) & mask
        if seed_depth > 0:
            seeds &= _peaks(surface, mask, seed_depth)
    markers = ndi.label(seeds & mask, structure=np.ones((3, 3)))[0]
    labels = watershed(-surface, markers, mask=mask)
    # components of the mask without a seed: keep as particles of their own
    rest = mask & (labels == 0)
    if rest.any():
        extra = label_mask(rest)
        labels = np.where(rest, extra + labels.max(), labels)
    if return_markers:
        return labels.astype(np.int32), markers.astype(np.int32)
    return labels.astype(np.int32)


def h_maxima(image: np.ndarray, h: float) -> np.ndarray:
    """Regional maxima of the h-maximum transform.

    These are the peaks of ``image`` whose dynamic (depth of the saddle that separates them
    from a higher peak) is at least ``h``.

    Two peaks joined by a saddle less than ``h`` below them give a single connected marker.
    (``skimage.morphology.h_maxima`` marks each peak that rises ``h`` above the
    reconstruction instead, which keeps both.)

    References
    ----------
    .. [1] P. Soille, "Morphological Image Analysis", 2nd ed., Springer (2003), sec. 6.3.4.
    """
    from skimage.morphology import local_maxima, reconstruction

    image = np.asarray(image, float)
    if h <= 0 or not np.any(image > image.min()):
        return _local_maxima(image)
    hmax = reconstruction(image - h, image, method="dilation")
    return local_maxima(hmax, connectivity=2) & (image > image.min())


def _peaks(surface: np.ndarray, mask: np.ndarray, depth: float) -> np.ndarray:
    """Return the h-maxima of ``surface`` (in ``[0, 1]``) within ``mask``, each mask region on its own.

    Each 8-connected region of the mask is reconstructed in its bounding box (one pixel wider),
    with the rest of the box lowered to -1: a path through the background is then lower than any
    value the h-maximum transform takes inside the region (``depth <= 1``), so one region cannot
    raise another's (as a background at 0 would, where the map is below ``depth``), and the work
    is that of the regions' boxes, not of the whole image (3x faster on the TiO2 SEM images).
    """
    from skimage.morphology import local_maxima, reconstruction

    regions = ndi.label(mask, structure=np.ones((3, 3)))[0]
    out = np.zeros(mask.shape, bool)
    for i, box in enumerate(ndi.find_objects(regions), 1):
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        inside = regions[box] == i
        image = np.where(inside, surface[box], -1.0)
        hmax = reconstruction(image - min(depth, 1.0), image, method="dilation")
        out[box] |= local_maxima(hmax, connectivity=2) & inside
    return out


def _local_maxima(surface: np.ndarray) -> np.ndarray:
    from skimage.morphology import local_maxima

    return local_maxima(surface, connectivity=2) & (surface > 0)


def merge_touching(labels: np.ndarray, foreground: np.ndarray, level: float) -> np.ndarray:
    """Merge touching particles whose shared border the network calls foreground throughout.

    The watershed cuts a particle wherever its distance map has two peaks, also where the
    foreground probability never dips between them; the network learnt to lower it in the
    background gaps between touching particles (the border weights of the training loss,
    :func:`particleseg.train.separation_weights`). Each pair of 4-neighbouring pixels of two
    particles scores the lower foreground probability of the two; two particles whose pairs
    average at least ``level`` become one, and chains of such pairs one particle.

    Parameters
    ----------
    labels : (Y, X) int array
        Particles, 0 background (a watershed's output).
    foreground : (Y, X) float array
        The network's foreground probability.
    level : float
        Mean foreground probability along a shared border from which the two particles merge;
        0 (or None): nothing is merged.

    Returns
    -------
    (Y, X) int32 label image. A merged particle takes the smallest label of its parts, the others
    keep theirs, so labels may have gaps (:func:`relabel_sequential`) and the order of the
    particles (by their smallest label) is that of the watershed's seeds.

    Notes
    -----
    Written here rather than with ``skimage.graph.rag_boundary`` and ``cut_threshold``:
    ``rag_boundary`` pairs each border pixel only with the smallest and the largest label around
    it (a grey erosion and dilation) and makes the background a region particles can merge
    into, and ``cut_threshold`` renumbers the particles, while the strips of
    :mod:`particleseg.strips` need each merged particle to keep the number of its first part.
    Measured on the TiO2 validation split with a fine-tuned model (docs/training.md).

    Examples
    --------
    >>> labels = np.array([[1, 1, 2, 2, 0, 3, 3]])
    >>> fg = np.array([[0.9, 0.99, 0.98, 0.9, 0.2, 0.9, 0.9]])
    >>> merge_touching(labels, fg, 0.95)
    array([[1, 1, 1, 1, 0, 3, 3]], dtype=int32)
    >>> merge_touching(labels, fg, 0.99)
    array([[1, 1, 2, 2, 0, 3, 3]], dtype=int32)
    """
    labels = np.asarray(labels)
    fg = np.asarray(foreground, np.float32)
    if not level or labels.max(initial=0) == 0:
        return labels.astype(np.int32, copy=False)
    lows, highs, values = [], [], []
    for a, b, fa, fb in (
        (labels[:, :-1], labels[:, 1:], fg[:, :-1], fg[:, 1:]),
        (labels[:-1], labels[1:], fg[:-1], fg[1:]),
    ):
        pair = (a != b) & (a > 0) & (b > 0)
        lows.append(np.minimum(a[pair], b[pair]))
        highs.append(np.maximum(a[pair], b[pair]))
        values.append(np.minimum(fa[pair], fb[pair]))
    low, high, value = np.concatenate(lows), np.concatenate(highs), np.concatenate(values)
    if not len(low):
        return labels.astype(np.int32, copy=False)
    n = int(labels.max()) + 1
    key = low.astype(np.int64) * n + high
    keys, index = np.unique(key, return_inverse=True)
    mean = np.bincount(index.ravel(), value.astype(np.float64)) / np.bincount(index.ravel())
    joined = keys[mean >= level]
    if not len(joined):
        return labels.astype(np.int32, copy=False)
    # each chain of joined particles takes its smallest label
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(joined)), (joined // n, joined % n)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    smallest = np.full(n, n, np.int64)
    np.minimum.at(smallest, component, np.arange(n))
    return smallest[component][labels].astype(np.int32)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the particles of a label image ``1..N`` in the order of their labels, as int32.

    Background (0) stays 0 (``skimage.segmentation.relabel_sequential``).
    """
    from skimage.segmentation import relabel_sequential as _rs

    return _rs(np.asarray(labels))[0].astype(np.int32)


def remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Set particles with fewer than ``min_area`` pixels to background (noise, not particles)."""
    labels = np.asarray(labels)
    if min_area <= 1 or labels.max() == 0:
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels).astype(labels.dtype)


def remove_uncertain(labels: np.ndarray, probability: np.ndarray, min_confidence: float) -> np.ndarray:
    """Set particles whose mean ``probability`` is below ``min_confidence`` to background.

    A thresholded probability map keeps every region above the threshold, also faint
    background structures (rings, blobs) that the network rates just above it; a real particle
    is rated near 1 over most of its area, so its mean stays high.
    """
    labels = np.asarray(labels)
    ids, scores = particle_scores(labels, probability)
    if len(ids) == 0:
        return labels
    return np.where(np.isin(labels, ids[scores < min_confidence]), 0, labels).astype(labels.dtype)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill holes inside particles.

    A hole is a background region not connected to the image border and surrounded by a single
    particle; background enclosed by a ring of several particles (a gap in an agglomerate) is
    left alone.
    """
    labels = np.asarray(labels)
    background = labels == 0
    holes = background & ndi.binary_fill_holes(~background, structure=_FOUR)
    if not holes.any():
        return labels
    hole_lab, _ = ndi.label(holes, structure=_FOUR)
    out = labels.copy()
    for k, sl in enumerate(ndi.find_objects(hole_lab), start=1):
        sl = tuple(slice(max(d.start - 1, 0), d.stop + 1) for d in sl)
        hole = hole_lab[sl] == k
        ring = ndi.binary_dilation(hole, structure=_FOUR) & ~hole
        neighbours = np.unique(labels[sl][ring])
        if len(neighbours) == 1 and neighbours[0] != 0:
            out[sl][hole] = neighbours[0]
    return out


def border_labels(labels: np.ndarray, border: np.ndarray | None = None) -> np.ndarray:
    """Labels of the particles that touch the image border (or the pixels of ``border``)."""
    labels = np.asarray(labels)
    if border is None:
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    else:
        edge = labels[border]
    return np.setdiff1d(np.unique(edge), [0])


def threshold_value(values: np.ndarray, method: str = "li") -> float:
    """Global threshold of gray values by Li's minimum cross entropy, Otsu, the mean or the median.

    References
    ----------
    .. [1] C. H. Li, P. K. S. Tam, "An iterative algorithm for minimum cross entropy
           thresholding", Pattern Recognition Letters 19, 771-776 (1998).
    .. [2] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans.
           Systems, Man, and Cybernetics 9, 62-66 (1979).
    """
    from skimage import filters

    v = np.asarray(values, float).ravel()
    if method == "li":
        return float(filters.threshold_li(v))
    if method == "otsu":
        return float(filters.threshold_otsu(v))
    if method == "mean":
        return float(v.mean())
    if method == "median":
        return float(np.median(v))
    raise ValueError(f"unknown threshold method {method!r}; choose one of {', '.join(THRESHOLD_METHODS)}")


def intensity_filter(
    labels: np.ndarray,
    image: np.ndarray,
    method: str = "li",
    polarity: str = "bright",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Apply the intensity artifact filter of Rühle et al. (2021).

    The filter keeps a particle when its mean gray value lies on the particle side of a global
    threshold of the image.

    Parameters
    ----------
    labels : (Y, X) int array
    image : (Y, X) array
    method : {"li", "otsu", "mean", "median"}
        Threshold of all image pixels.
    polarity : {"bright", "dark"}
        ``bright``: particles brighter than the background (SEM); ``dark``: darker (TEM
        brightfield).

    Returns
    -------
    ids : int array
        The particle labels, ascending.
    keep : bool array
        Whether each particle passes.
    threshold : float

    References
    ----------
    .. [1] B. Ruehle, J. F. Krumrey, V.-D. Hodoroaba, "Workflow towards automated
           segmentation of agglomerated, non-spherical particles from electron microscopy
           images using artificial neural networks", Sci. Rep. 11, 4942 (2021).
    """
    if polarity not in ("bright", "dark"):
        raise ValueError(f"polarity must be 'bright' or 'dark', got {polarity!r}")
    ids = np.setdiff1d(np.unique(labels), [0])
    thr = threshold_value(image, method)
    if len(ids) == 0:
        return ids, np.zeros(0, bool), thr
    means = np.asarray(ndi.mean(np.asarray(image, float), labels, ids))
    keep = means > thr if polarity == "bright" else means < thr
    return ids, keep, thr


def shape_filter(table: pd.DataFrame, ranges: dict[str, tuple[float | None, float | None]]) -> pd.Series:
    """Reason each particle fails the shape ranges, or ``""`` if it passes.

    Parameters
    ----------
    table : DataFrame
        Measurements (see :func:`particleseg.measure.measure_particles`), calibrated units.
    ranges : dict
        Name -> ``(min, max)``, either bound may be None. Names: those of
        :data:`SHAPE_COLUMNS` (``feret_min`` is the column ``MinFeret``, ``circularity``
        ``Circ.``, ... as ``measure.PARAMETER_COLUMNS`` says).

    Returns
    -------
    pandas.Series of str
        ``""`` or the first range the particle fails, as ``feret_min<20``.

    Examples
    --------
    >>> t = pd.DataFrame({"Area": [10.0, 100.0], "Circ.": [0.9, 0.5]})
    >>> shape_filter(t, {"area": (50, None), "circularity": (0.7, 1)}).tolist()
    ['area<50', 'circularity<0.7']
    """
    from .measure import PARAMETER_COLUMNS

    reasons = pd.Series("", index=table.index, dtype=object)
    for col, (lo, hi) in ranges.items():
        if col not in SHAPE_COLUMNS:
            raise ValueError(f"unknown shape filter {col!r}; choose from {', '.join(SHAPE_COLUMNS)}")
        if col == "feret_ratio":
            v = table["Feret"] / table["MinFeret"]
        else:
            v = table[PARAMETER_COLUMNS[col]]
        if lo is not None:
            reasons[(reasons == "") & (v < lo)] = f"{col}<{lo:g}"
        if hi is not None:
            reasons[(reasons == "") & (v > hi)] = f"{col}>{hi:g}"
    return reasons


def overlap_fraction(labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fraction of each particle's pixels inside ``mask``, indexed by label (entry 0: background).

    Examples
    --------
    >>> lab = np.array([[1, 1, 0, 2, 2, 2]])
    >>> overlap_fraction(lab, np.array([[1, 0, 0, 1, 1, 1]], bool)).tolist()
    [0.0, 0.5, 1.0]
    """
    labels = np.asarray(labels).ravel()
    n = int(labels.max()) + 1 if labels.size else 1
    area = np.bincount(labels, minlength=n).astype(float)
    inside = np.bincount(labels[np.asarray(mask, bool).ravel()], minlength=n).astype(float)
    out = np.divide(inside, area, out=np.zeros(n), where=area > 0)
    out[0] = 0.0
    return out


def particle_scores(labels: np.ndarray, score_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a per-pixel score map (a classifier network's output) over each particle."""
    ids = np.setdiff1d(np.unique(labels), [0])
    if len(ids) == 0:
        return ids, np.zeros(0)
    return ids, np.asarray(ndi.mean(np.asarray(score_map, float), labels, ids))
