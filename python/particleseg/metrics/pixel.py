"""Pixel metrics: foreground IoU, Youden's index and the pixel error of the ISBI 2012 challenge.

Also the ratio conventions of Fiji's Trainable Weka Segmentation (TWS) that the other metrics
share: precision is 1 without false positives, recall 1 without false negatives. References
([1]_, [5]_, [7]_) are those of the package docstring (:mod:`particleseg.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .inputs import DEFAULT_THRESHOLDS, _check_thresholds, _levels, _prepare


def _ratio(num: float, den: float, empty: float = 1.0) -> float:
    return float(num) / float(den) if den else empty


def _f_score(tp, fp, fn) -> tuple[float, float, float]:
    """Precision, recall and F-score with TWS's conventions.

    Precision is 1 without false positives, recall 1 without false negatives, F 0 when both are 0.
    """
    precision = 1.0 if fp == 0 else float(tp) / float(tp + fp)
    recall = 1.0 if fn == 0 else float(tp) / float(tp + fn)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f


def pixel_counts(pred_mask: np.ndarray, truth_mask: np.ndarray) -> np.ndarray:
    """``[TP, FP, FN, TN]`` pixel counts of two binary masks (nonzero is foreground)."""
    p = np.asarray(pred_mask, bool)
    t = np.asarray(truth_mask, bool)
    tp = int(np.count_nonzero(p & t))
    np_, nt = int(np.count_nonzero(p)), int(np.count_nonzero(t))
    return np.array([tp, np_ - tp, nt - tp, p.size - np_ - nt + tp], np.int64)


def _iou_from_counts(c) -> float:
    tp, fp, fn, _ = c
    return _ratio(tp, tp + fp + fn)


def _youden_from_counts(c) -> float:
    tp, fp, fn, tn = c
    return _ratio(tp, tp + fn) + _ratio(tn, tn + fp) - 1.0


def _pixel_f_from_counts(c) -> float:
    return _f_score(c[0], c[1], c[2])[2]


def foreground_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of the foreground of two masks or label images, over the whole image.

    ``IoU = |P ∩ T| / |P ∪ T|`` with P and T the foreground pixels (nonzero) of ``pred`` and
    ``truth``. Both empty: 1. This is "IoU (image)" of the publication's Table 1 [7]_, where
    it is the best value over a threshold sweep (see :func:`evaluate_pair`).

    Parameters
    ----------
    pred, truth : array (any shape, same shape)
        Masks or label images; a probability map must be thresholded first.

    Examples
    --------
    >>> import numpy as np
    >>> foreground_iou(np.array([[0, 1, 1, 0]]), np.array([[0, 1, 1, 1]]))
    0.6666666666666666
    """
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: {p.shape} and {t.shape}")
    if p.dtype.kind == "f" and not np.array_equal(p, np.round(p)):
        raise ValueError("pred has fractional values; threshold the probability map first")
    return _iou_from_counts(pixel_counts(p != 0, t != 0))


def _sweep_counts(pred, truth, thresholds, watershed=False, pred_kind="auto"):
    inp = _prepare(pred, truth, pred_kind)
    out = []
    for t, _labels, mask in _levels(inp, _check_thresholds(thresholds), watershed):
        out.append((t, sum(pixel_counts(m, tm) for m, tm in zip(mask, inp.truth_mask))))
    return out


def youden_index(prob: np.ndarray, truth_mask: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> float:
    """Youden's index of a probability map: the best point of its ROC curve over the thresholds.

    ``J = max_t (sensitivity(t) + specificity(t) - 1)`` with sensitivity ``TP/(TP+FN)`` and
    specificity ``TN/(TN+FP)`` of the mask ``prob > t`` [5]_. Without ground-truth particles
    the sensitivity counts as 1 (nothing to miss), without background the specificity does.
    A binary mask or label image gives the index of its single operating point.

    Parameters
    ----------
    prob : (Y, X) or (Z, Y, X) array
        Probability map in [0, 1] (or a mask / label image).
    truth_mask : array
        Ground-truth mask or label image.
    thresholds : sequence of float
    """
    return max(_youden_from_counts(c) for _, c in _sweep_counts(prob, truth_mask, thresholds))


def pixel_error(pred: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> float:
    """Pixel error as in TWS's ``getPixelErrorMaximalFScore``: ``1 - max_t F(t)``.

    ``F`` is the F-score (harmonic mean of precision ``TP/(TP+FP)`` and recall ``TP/(TP+FN)``)
    of the foreground pixels of ``pred > t`` against the ground-truth foreground [1]_; TWS
    conventions for empty denominators (see the module notes). For binary masks ``F`` is the
    Dice coefficient, so ``pixel_error = 1 - 2 IoU / (1 + IoU)``.

    Examples
    --------
    Two masks with ``IoU = 2/3``: ``1 - 2 IoU / (1 + IoU) = 0.2``.

    >>> import numpy as np
    >>> round(pixel_error(np.array([[0, 1, 1, 0]]), np.array([[0, 1, 1, 1]])), 12)
    0.2
    """
    return 1.0 - max(_pixel_f_from_counts(c) for _, c in _sweep_counts(pred, truth, thresholds))
