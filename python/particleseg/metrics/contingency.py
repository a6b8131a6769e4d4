"""Contingency tables: the overlap counts of two label images that the region metrics share.

Sparse and vectorised (one ``bincount`` over the pixels): the instance metrics
(:mod:`particleseg.metrics.instance`) and the Rand and information scores
(:mod:`particleseg.metrics.isbi`) are computed from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel ``labels`` (flattened) to 0..n with 0 kept as background; returns (labels, n)."""
    flat = np.asarray(labels).ravel()
    if flat.size == 0:
        return flat.astype(np.intp), 0
    hi = int(flat.max())
    if hi < 1 << 22:
        present = np.bincount(flat, minlength=hi + 1) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        return lut[flat], int(present.sum()) - 1
    ids, inv = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        inv = inv + 1
        return inv, len(ids)
    return inv, len(ids) - 1


@dataclass
class Contingency:
    """Overlap counts of a ground-truth and a proposed label image (one 2D slice or any array).

    ``rows``/``cols``/``counts`` list the nonzero entries ``n_ij`` over the ground-truth
    foreground: ``rows`` are ground-truth particles 1..``n_truth`` (compact numbering),
    ``cols`` proposed particles 1..``n_pred`` or 0 for proposal background.
    """

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    truth_area: np.ndarray  # (n_truth + 1,), index 0 = background
    pred_area: np.ndarray  # (n_pred + 1,), over the whole image
    n_truth: int
    n_pred: int

    @property
    def n(self) -> int:
        """Number of ground-truth foreground pixels."""
        return int(self.truth_area[1:].sum())


def contingency(truth_labels: np.ndarray, pred_labels: np.ndarray) -> Contingency:
    """Contingency table of two label images over the ground-truth foreground (vectorised, sparse).

    Examples
    --------
    >>> import numpy as np
    >>> c = contingency(np.array([[1, 1, 0, 2]]), np.array([[1, 0, 0, 1]]))
    >>> c.n_truth, c.n_pred, c.n
    (2, 1, 3)
    """
    t, nt = _compact(truth_labels)
    p, npr = _compact(pred_labels)
    truth_area = np.bincount(t, minlength=nt + 1)
    pred_area = np.bincount(p, minlength=npr + 1)
    fg = t > 0
    width = npr + 1
    code = t[fg].astype(np.int64) * width + p[fg]
    if (nt + 1) * width <= 1 << 24:
        full = np.bincount(code, minlength=(nt + 1) * width)
        nz = np.flatnonzero(full)
        counts = full[nz]
    else:
        nz, counts = np.unique(code, return_counts=True)
    rows, cols = np.divmod(nz, width)
    return Contingency(rows, cols, counts.astype(np.int64), truth_area, pred_area, nt, npr)
