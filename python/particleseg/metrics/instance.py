"""Instance metrics: IoU of matched particles, one-to-one matching, F1 and average precision.

In the conventions of instance-segmentation tools (StarDist, the 2018 Data Science Bowl [6]_)
and of the publication's "IoU (instance)" [7]_; references as in the package docstring
(:mod:`particleseg.metrics`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .contingency import Contingency, contingency
from .inputs import _check_thresholds
from .pixel import _ratio

#: IoU thresholds of average precision: 0.50, 0.55, ..., 0.95.
AP_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.5, 0.95, 10), 10))


def _instance_ious(c: Contingency) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (ground-truth, proposed) particle pair: (rows, cols, iou)."""
    keep = c.cols > 0
    r, k, inter = c.rows[keep], c.cols[keep], c.counts[keep]
    iou = inter / (c.truth_area[r] + c.pred_area[k] - inter)
    return r, k, iou


def iou_matrix(truth_labels: np.ndarray, pred_labels: np.ndarray, return_ids: bool = False):
    """IoU of every ground-truth particle with every proposed particle.

    Computed from a sparse contingency table (one ``bincount`` over the pixels), so it is fast
    for hundreds of particles; the dense result takes ``8 * n_truth * n_pred`` bytes.

    Parameters
    ----------
    truth_labels, pred_labels : int arrays of the same shape
        Label images (0 background). Any dimensionality: a label is one object.
    return_ids : bool
        Also return the label values of the rows and columns.

    Returns
    -------
    iou : (n_truth, n_pred) float array
        Rows are the ground-truth labels present, ascending; columns the proposed ones.
    truth_ids, pred_ids : int arrays, only with ``return_ids``
    """
    t, p = np.asarray(truth_labels), np.asarray(pred_labels)
    if t.shape != p.shape:
        raise ValueError(f"shapes differ: {t.shape} and {p.shape}")
    c = contingency(t, p)
    out = np.zeros((c.n_truth, c.n_pred))
    r, k, iou = _instance_ious(c)
    out[r - 1, k - 1] = iou
    if return_ids:
        return out, np.setdiff1d(np.unique(t), [0]), np.setdiff1d(np.unique(p), [0])
    return out


def _best_ious(c: Contingency, kept: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU of each ground-truth particle and of each proposed particle (0 without overlap).

    ``kept`` (bool, ``n_pred + 1``, by compact proposal id) scores the proposals as if those not
    kept were background: removing a particle changes no other particle's area or overlaps.
    """
    r, k, iou = _instance_ious(c)
    if kept is not None:
        sel = kept[k]
        r, k, iou = r[sel], k[sel], iou[sel]
    best_t = np.zeros(c.n_truth + 1)
    best_p = np.zeros(c.n_pred + 1)
    np.maximum.at(best_t, r, iou)
    np.maximum.at(best_p, k, iou)
    return best_t[1:], best_p[1:]


def instance_iou(pred_labels: np.ndarray, truth_labels: np.ndarray, average: str = "truth") -> float:
    """Mean best-match IoU of particles, in one of two conventions.

    ``average="truth"``
        For **each ground-truth particle**, the best IoU with any proposed particle (0 when it
        overlaps none), averaged over the ground-truth particles. Missed particles pull it
        down; false positives do not count. This is the floor check of the project's quality
        targets (issue 2).
    ``average="pred"``
        For **each proposed particle**, the best IoU with any ground-truth particle, averaged
        over the proposed particles: "IoU (instance)" of the publication's Table 1 [7]_.
        False positives pull it down; missed particles do not count.

    Both without particles: 1. Nothing to average over while the other image has particles: 0.

    Parameters
    ----------
    pred_labels, truth_labels : int arrays of the same shape
        Label images (note the order: proposal first).
    average : {"truth", "pred"}

    Examples
    --------
    One ground-truth particle found exactly, the other overlapped by a third:

    >>> import numpy as np
    >>> truth = np.array([[1, 1, 0, 2, 2, 2]])
    >>> pred = np.array([[1, 1, 0, 0, 0, 3]])
    >>> instance_iou(pred, truth, average="truth")
    0.6666666666666666
    """
    if average not in ("truth", "pred"):
        raise ValueError(f"average must be 'truth' or 'pred', got {average!r}")
    c = contingency(truth_labels, pred_labels)
    best_t, best_p = _best_ious(c)
    if average == "truth":
        return _mean_best(best_t, c.n_pred)
    return _mean_best(best_p, c.n_truth)


def _mean_best(best: np.ndarray, n_other: int) -> float:
    """Mean of the best IoUs ``best``; without particles 1 when the other side has none either, else 0."""
    if best.size == 0:
        return 1.0 if n_other == 0 else 0.0
    return float(best.mean())


def _true_positives(r: np.ndarray, k: np.ndarray, iou: np.ndarray, threshold: float) -> int:
    """Largest number of one-to-one matches with IoU >= threshold.

    Above 0.5 a pair with IoU > 0.5 is unique for both of its particles, so counting suffices;
    at or below 0.5 the matching is an optimal assignment (most matches, then largest IoU sum).
    """
    ok = iou >= threshold
    if threshold > 0.5 or not ok.any():
        return int(ok.sum())
    # imported here: scipy.optimize takes about 0.5 s to import and only matchings at IoU <= 0.5 need it
    from scipy.optimize import linear_sum_assignment

    r, k, iou = r[ok], k[ok], iou[ok]
    ur, ri = np.unique(r, return_inverse=True)
    uk, ki = np.unique(k, return_inverse=True)
    # weight 1 per match plus IoU scaled below 1 in total: most matches first, then best IoU
    w = np.zeros((len(ur), len(uk)))
    w[ri, ki] = 1.0 + iou / (min(len(ur), len(uk)) + 1)
    rows, cols = linear_sum_assignment(w, maximize=True)
    return int((w[rows, cols] > 0).sum())


def _match_counts(c: Contingency, thresholds: Sequence[float]) -> np.ndarray:
    """(len(thresholds), 3) array of TP, FP, FN."""
    r, k, iou = _instance_ious(c)
    out = np.zeros((len(thresholds), 3), np.int64)
    for i, th in enumerate(thresholds):
        tp = _true_positives(r, k, iou, th)
        out[i] = (tp, c.n_pred - tp, c.n_truth - tp)
    return out


def _match_summary(tp: int, fp: int, fn: int, threshold: float) -> dict:
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "iou_threshold": float(threshold),
        "tp": int(tp),
        "fp": int(fp),
        "fn": int(fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def match_instances(truth_labels: np.ndarray, pred_labels: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """One-to-one matching of ground-truth and proposed particles at an IoU threshold.

    A pair matches when its IoU is at least ``iou_threshold``. Above 0.5 such pairs are unique
    (two particles cannot both overlap a third by more than half of their union); at or below
    0.5 the matching is an optimal assignment (:func:`scipy.optimize.linear_sum_assignment`)
    that maximises the number of matches, then their summed IoU [6]_.

    Returns
    -------
    dict
        ``tp`` (matched pairs), ``fp`` (unmatched proposed particles), ``fn`` (unmatched
        ground-truth particles), ``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``,
        ``f1 = 2TP/(2TP+FP+FN)`` (each 1 when its denominator is 0) and ``iou_threshold``.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[1, 1, 0, 2, 2, 2]])
    >>> pred = np.array([[1, 1, 0, 0, 0, 3]])
    >>> m = match_instances(truth, pred, iou_threshold=0.5)
    >>> m["tp"], m["fp"], m["fn"], m["f1"]
    (1, 1, 1, 0.5)
    """
    t, p = np.asarray(truth_labels), np.asarray(pred_labels)
    if t.shape != p.shape:
        raise ValueError(f"shapes differ: {t.shape} and {p.shape}")
    tp, fp, fn = _match_counts(contingency(t, p), [iou_threshold])[0]
    return _match_summary(tp, fp, fn, iou_threshold)


def _ap_from_counts(counts: np.ndarray) -> float:
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    den = tp + fp + fn
    return float(np.mean(np.where(den > 0, tp / np.maximum(den, 1), 1.0)))


def average_precision(
    truth_labels: np.ndarray, pred_labels: np.ndarray, thresholds: Sequence[float] = AP_THRESHOLDS
) -> float:
    """Average precision in the convention of the 2018 Data Science Bowl and StarDist.

    ``AP = mean_τ TP(τ) / (TP(τ) + FP(τ) + FN(τ))`` over the IoU thresholds ``τ`` (0.50 to 0.95
    in steps of 0.05 by default), with the one-to-one matching of :func:`match_instances` [6]_.
    (StarDist calls this ratio "accuracy"; it is not the area under a precision-recall curve
    of object detection benchmarks.) Both images without particles: 1.
    """
    t, p = np.asarray(truth_labels), np.asarray(pred_labels)
    if t.shape != p.shape:
        raise ValueError(f"shapes differ: {t.shape} and {p.shape}")
    return _ap_from_counts(_match_counts(contingency(t, p), _check_thresholds(thresholds)))
