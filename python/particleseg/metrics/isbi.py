"""Rand and information-theoretic scores of the ISBI 2012 challenge, with and without thinning.

Foreground-restricted, as Fiji's Trainable Weka Segmentation (TWS) computes them [1]_, [3]_,
[4]_: the Rand error, the Rand error and the information-theoretic (VI) error after the
proposal's borders are thinned to one-pixel lines (:func:`thin_borders`). References as in the
package docstring (:mod:`particleseg.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

from .contingency import Contingency, contingency
from .inputs import DEFAULT_THRESHOLDS, _check_thresholds, _Inputs, _levels, _prepare
from .pixel import _f_score


def _rand_sums(c: Contingency) -> np.ndarray:
    """``[S_AB, S_A, S_B]``: pair counts (N^2 normalisation) of the foreground-restricted Rand index.

    Over the ground-truth foreground: ``S_A = sum_i a_i^2`` (ground-truth particle sizes),
    ``S_B = sum_{j>0} b_j^2 + n_0`` and ``S_AB = sum_{i, j>0} n_ij^2 + n_0`` where ``b_j`` counts
    the ground-truth foreground pixels of proposed particle j and ``n_0`` those on proposal
    background, each of which counts as a particle of its own (TWS).
    """
    fgc = c.cols > 0
    n0 = int(c.counts[~fgc].sum())
    b = np.bincount(c.cols[fgc], weights=c.counts[fgc], minlength=c.n_pred + 1).astype(np.int64)
    s_ab = int(np.sum(c.counts[fgc] ** 2)) + n0
    s_a = int(np.sum(c.truth_area[1:].astype(np.int64) ** 2))
    s_b = int(np.sum(b**2)) + n0
    return np.array([s_ab, s_a, s_b], np.int64)


def _rand_f_from_sums(s) -> float:
    s_ab, s_a, s_b = (int(v) for v in s)
    if s_a == 0:
        return math.nan
    return _f_score(s_ab, s_b - s_ab, s_a - s_ab)[2]


def adapted_rand(
    truth_labels: np.ndarray, pred_labels: np.ndarray, self_pairs: bool = True
) -> tuple[float, float, float]:
    """Foreground-restricted Rand F-score ``V_Rand`` of a proposal against the ground truth.

    Only pixels of the ground-truth foreground count. With ``p_ij`` the fraction of them in
    ground-truth particle i and proposed particle j, ``a_i``, ``b_j`` the marginals,
    precision ``= sum p_ij^2 / sum b_j^2`` and recall ``= sum p_ij^2 / sum a_i^2``, and
    ``V_Rand = 2 PR / (P + R)`` [1]_, [3]_. As in TWS, ground-truth pixels on proposal
    background (label 0) count as one-pixel particles, pairs are counted with N^2
    normalisation (a pixel pairs with itself), and precision (recall) is 1 when there are no
    false positive (negative) pairs.

    Parameters
    ----------
    truth_labels, pred_labels : int arrays of the same shape
    self_pairs : bool
        False counts unordered pairs of distinct pixels (``n(n-1)`` normalisation) and treats
        proposal label 0 as an ordinary segment; this is
        :func:`skimage.metrics.adapted_rand_error` (whose precision and recall are swapped).

    Returns
    -------
    fscore, precision, recall : float
        NaN without ground-truth foreground.

    Examples
    --------
    Two ground-truth particles merged into one: every true pair is found (recall 1), half of the
    proposed pairs are true (precision 0.5).

    >>> import numpy as np
    >>> adapted_rand(np.array([[1, 1, 2, 2]]), np.array([[1, 1, 1, 1]]))
    (0.6666666666666666, 0.5, 1.0)
    """
    c = contingency(truth_labels, pred_labels)
    if c.n == 0:
        return math.nan, math.nan, math.nan
    if self_pairs:
        s_ab, s_a, s_b = (int(v) for v in _rand_sums(c))
    else:
        b = np.bincount(c.cols, weights=c.counts, minlength=c.n_pred + 1)
        s_ab = int(np.sum(c.counts**2)) - c.n
        s_a = int(np.sum(c.truth_area[1:].astype(np.int64) ** 2)) - c.n
        s_b = int(np.sum(b.astype(np.int64) ** 2)) - c.n
    precision, recall, f = _f_score(s_ab, s_b - s_ab, s_a - s_ab)
    return f, precision, recall


def information_scores(truth_labels: np.ndarray, pred_labels: np.ndarray) -> dict:
    """Foreground-restricted entropies and the information-theoretic score ``V_Info``.

    Over the ground-truth foreground, with ``p_ij``, ``a_i``, ``b_j`` as in :func:`adapted_rand`
    (proposal background pixels count as one-pixel segments, as in TWS): entropies
    ``H(A) = -sum a log a`` (ground truth), ``H(B)`` (proposal), ``H(A, B)``, the mutual
    information ``I = H(A) + H(B) - H(A, B)`` and ``V_Info = 2 I / (H(A) + H(B))``, the harmonic
    mean of ``I/H(A)`` and ``I/H(B)`` [1]_, [4]_. Natural logarithms.

    Degenerate cases as TWS, except that identical single-segment partitions (``H(A) = H(B) =
    0``) score 1, where TWS reports 0.

    Returns
    -------
    dict
        ``h_truth``, ``h_pred``, ``h_truth_given_pred`` (merge part of the variation of
        information), ``h_pred_given_truth`` (split part), ``vi`` (their sum, Meila's variation
        of information) and ``fscore`` (``V_Info``). All NaN without ground-truth foreground.
    """
    return _information(contingency(truth_labels, pred_labels))


def _xlogx(x: np.ndarray) -> float:
    x = x[x > 0]
    return float(np.sum(x * np.log(x)))


def _information(c: Contingency) -> dict:
    n = c.n
    keys = ("h_truth", "h_pred", "h_truth_given_pred", "h_pred_given_truth", "vi", "fscore")
    if n == 0:
        return dict.fromkeys(keys, math.nan)
    fgc = c.cols > 0
    n0 = c.counts[~fgc].sum() / n  # fraction of ground-truth foreground on proposal background
    singles = n0 * math.log(n)  # each of those pixels is a segment of probability 1/n
    b = np.bincount(c.cols[fgc], weights=c.counts[fgc], minlength=c.n_pred + 1) / n
    h_a = -_xlogx(c.truth_area[1:] / n)
    h_b = -_xlogx(b) + singles
    h_ab = -_xlogx(c.counts[fgc] / n) + singles
    mutual = max(h_a + h_b - h_ab, 0.0)
    eps = 1e-12
    if h_a < eps and h_b < eps:
        f = 1.0  # one segment each, the same pixels: perfect (TWS: 0)
    elif h_a < eps or h_b < eps:
        f = 0.0
    else:
        f = 2 * mutual / (h_a + h_b)
    return {
        "h_truth": h_a,
        "h_pred": h_b,
        "h_truth_given_pred": max(h_ab - h_b, 0.0),
        "h_pred_given_truth": max(h_ab - h_a, 0.0),
        "vi": max(2 * h_ab - h_a - h_b, 0.0),
        "fscore": f,
    }


def thin_borders(labels: np.ndarray) -> np.ndarray:
    """Thin the background of a 2D label image to one-pixel lines between its particles.

    Each background pixel joins the particle nearest to it in city-block distance, which is
    the flooding order of a watershed of the binary proposal with 4-connectivity; a
    background pixel next to (4-adjacent) a pixel of another particle that is nearer to its
    particle, or as near and earlier in raster order, becomes a line pixel (0). Particles that
    grew into the background therefore never touch each other. This is the border thinning
    of the "V_Rand/V_Info after thinning" scores [1]_, which TWS computes with a classic
    watershed transform of the binarised proposal; the result can differ from it in how ties
    are broken (which of two equidistant pixels becomes the line), and lines can be two pixels
    wide where such ties meet.

    An image without particles becomes one segment covering it (label 1), as TWS's watershed
    floods a constant image into a single basin; an image without background is returned as
    it is (a full binary proposal is one particle, so one segment too).

    Examples
    --------
    >>> import numpy as np
    >>> thin_borders(np.array([[1, 0, 0, 0, 0, 2]]))
    array([[1, 1, 1, 0, 2, 2]])
    """
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"expected a 2D label image, got shape {lab.shape}")
    fg = lab > 0
    if not fg.any():
        return np.ones(lab.shape, lab.dtype if lab.dtype.kind in "iu" else np.int32)
    if fg.all():
        return lab.copy()
    dist, (iy, ix) = ndi.distance_transform_cdt(~fg, metric="taxicab", return_indices=True)
    vor = lab[iy, ix]
    key = dist.astype(np.int64) * lab.size + np.arange(lab.size, dtype=np.int64).reshape(lab.shape)
    bg = ~fg
    line = np.zeros(lab.shape, bool)
    # p becomes a line pixel if a 4-neighbour q of another particle comes first in the flooding
    # order (nearer, or as near and earlier in raster order); then every 4-adjacent pair of
    # different particles that involves a former background pixel has a line pixel between them
    for sp, sq in (
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
    ):
        line[sp] |= bg[sp] & (vor[sq] != vor[sp]) & (key[sq] < key[sp])
    return np.where(line, 0, vor).astype(lab.dtype, copy=False)


def _one_segment(labels: np.ndarray) -> bool:
    """Tell whether a proposal is empty, or full with a single particle.

    TWS's thinning watershed makes such a proposal one segment covering the image.
    """
    hi = labels.max(initial=0)
    return bool(hi == 0 or labels.min() == hi)


def _thinned_tables(truth_labels: np.ndarray, labels: np.ndarray) -> tuple[list[Contingency], list[bool]]:
    """Contingency tables of each slice after border thinning, and which slices were empty or full."""
    tables = [contingency(tl, thin_borders(pl)) for tl, pl in zip(truth_labels, labels)]
    return tables, [_one_segment(pl) for pl in labels]


def _levels_table(
    inp: _Inputs, thresholds, watershed=False, thin=False
) -> Iterator[tuple[float, list[Contingency], list[bool]]]:
    for t, labels, _ in _levels(inp, thresholds, watershed):
        if thin:
            yield (t, *_thinned_tables(inp.truth_labels, labels))
        else:
            yield t, [contingency(tl, pl) for tl, pl in zip(inp.truth_labels, labels)], [False] * len(labels)


def rand_error(
    pred: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, watershed: bool = False
) -> float:
    """Foreground-restricted Rand error: ``1 - max_t V_Rand(t)``.

    TWS ``getForegroundRestrictedRandIndexMaximalFScore``.
    At each threshold the proposal's particles are the 4-connected components of ``pred > t``
    (or its watershed split); ``V_Rand`` is :func:`adapted_rand` with TWS conventions. Stacks:
    pair counts summed over the slices. NaN without ground-truth foreground.
    """
    inp = _prepare(pred, truth)
    best = math.nan
    for _, tables, _ in _levels_table(inp, _check_thresholds(thresholds), watershed):
        f = _rand_f_from_sums(sum(_rand_sums(c) for c in tables))
        best = f if math.isnan(best) or f > best else best
    return 1.0 - best


def rand_error_thinned(
    pred: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, watershed: bool = False
) -> float:
    """Foreground-restricted Rand error after border thinning: ``1 - max_t V_Rand(thinned)``.

    As :func:`rand_error`, but the proposal's background is first thinned to one-pixel lines
    (:func:`thin_borders`), so thick proposal borders inside ground-truth particles are not
    counted against it (TWS ``getMaximalVRandAfterThinning``, the final ISBI 2012 metric [1]_).
    """
    inp = _prepare(pred, truth)
    best = math.nan
    for _, tables, _ in _levels_table(inp, _check_thresholds(thresholds), watershed, thin=True):
        f = _rand_f_from_sums(sum(_rand_sums(c) for c in tables))
        best = f if math.isnan(best) or f > best else best
    return 1.0 - best


def _vi_score_of_tables(tables: list[Contingency], one_segment: Sequence[bool] | None = None) -> float:
    """``V_Info`` averaged over the slices with ground-truth foreground.

    A slice whose proposal was empty or full (``one_segment``) scores 0, as in TWS: its thinned
    proposal is one segment, ``H(B) = 0``, so TWS's precision is 1 and its recall 0. The
    single-segment exception of :func:`information_scores` (1 for identical one-particle
    partitions) is for proposals that found one particle, not for those that found none.
    """
    one_segment = one_segment or [False] * len(tables)
    scores = [0.0 if flat else _information(c)["fscore"] for c, flat in zip(tables, one_segment) if c.n > 0]
    return float(np.mean(scores)) if scores else math.nan


def vi_error_thinned(
    pred: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, watershed: bool = False
) -> float:
    """Information-theoretic error after border thinning: ``1 - max_t V_Info(thinned)``.

    ``V_Info`` (:func:`information_scores`) of the ground truth against the proposal whose
    background is thinned to one-pixel lines (:func:`thin_borders`); TWS
    ``getMaximalVInfoAfterThinning`` [1]_. Stacks: the score is averaged over the slices with
    ground-truth foreground, as TWS does. NaN without ground-truth foreground.
    """
    inp = _prepare(pred, truth)
    best = math.nan
    for _, tables, flat in _levels_table(inp, _check_thresholds(thresholds), watershed, thin=True):
        f = _vi_score_of_tables(tables, flat)
        best = f if math.isnan(best) or f > best else best
    return 1.0 - best
