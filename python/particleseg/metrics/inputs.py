"""Proposals and ground truth as the metrics read them.

Decides whether an array is a probability map, a binary mask or a label image
(:func:`classify_input`), numbers particles 1..n (:func:`relabel_sequential`), and turns a
pair into (Z, Y, X) arrays with the proposal's levels over a threshold sweep: the conventions
of the package docstring (:mod:`particleseg.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..postprocess import label_mask, labels_to_mask, split_touching

#: The threshold sweep of the publication: 0.0 to 1.0 in steps of 0.1 (11 thresholds).
DEFAULT_THRESHOLDS = tuple(float(t) for t in np.round(np.linspace(0.0, 1.0, 11), 10))


def _label_slices(mask: np.ndarray, watershed: bool = False) -> np.ndarray:
    """4-connected labels (or the distance-transform watershed) of each 2D slice of a mask."""
    m = np.asarray(mask, bool)
    if m.ndim == 2:
        return split_touching(m) if watershed else label_mask(m)
    return np.stack([_label_slices(s, watershed) for s in m])


def _looks_like_gray_image(a: np.ndarray) -> bool:
    """Tell a gray-value image from a label image: it changes between most neighbours."""
    s = a if a.ndim == 2 else a[0]
    if min(s.shape) < 16:
        return False  # too small to tell
    s = s[:: max(1, s.shape[0] // 256), :]  # a sample of rows is enough
    diff = s[:, 1:] != s[:, :-1]
    return bool(diff.mean() > 0.5)


def classify_input(
    array: np.ndarray, kind: str = "auto", name: str = "image", role: str = "pred"
) -> tuple[str, np.ndarray]:
    """Check an input array and decide whether it is a probability map, a binary mask or labels.

    Parameters
    ----------
    array : (Y, X) or (Z, Y, X) array
    kind : {"auto", "prob", "mask", "labels"}
        ``auto`` decides from the values: floats with fractional values are probability maps
        (they must lie within [0, 1]; not allowed for the ground truth); booleans, a single value,
        or two values one of which is 0 make a binary mask; other non-negative whole numbers are
        labels. An 8-bit or 16-bit probability map (0-255, 0-65535) must be declared with
        ``kind="prob"`` (the CLI does so for names ending in ``_prob``).
    name : str
        File name for messages.
    role : {"pred", "truth"}
        The ground truth cannot be a probability map.

    Returns
    -------
    kind : str
        ``prob``, ``mask`` or ``labels``.
    array : ndarray
        float32 in [0, 1], bool, or int32 labels numbered 1..n in the order of the input's ids
        (:func:`relabel_sequential`; memory does not depend on the id values).

    Raises
    ------
    InputError
        One line naming the input: unsupported dimensions or type, NaNs, values outside [0, 1]
        for a probability map, more than two values for a mask, negative or fractional labels,
        or a gray-value image given as labels.

    Examples
    --------
    >>> import numpy as np
    >>> kind, labels = classify_input(np.array([[0, 7], [7, 3]]))
    >>> kind
    'labels'
    >>> labels
    array([[0, 2],
           [2, 1]], dtype=int32)
    >>> classify_input(np.array([[0.2, 0.9]]))
    ('prob', array([[0.2, 0.9]], dtype=float32))
    """
    if kind not in ("auto", "prob", "mask", "labels"):
        raise ValueError(f"unknown input kind {kind!r}; choose auto, prob, mask or labels")
    if role == "truth" and kind == "prob":
        raise ValueError("the ground truth must be a mask or a label image, not a probability map")
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name}: unsupported data type {a.dtype}")
    if a.ndim not in (2, 3) or min(a.shape) == 0:
        raise InputError(f"{name}: expected a 2D image or a (Z, Y, X) stack, got shape {a.shape}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            raise InputError(f"{name}: contains {int(bad.sum())} NaN or infinite pixel values")
    if a.dtype == bool:
        if kind in ("auto", "mask"):
            return "mask", a
        a = a.astype(np.uint8)
    lo, hi = a.min(), a.max()
    if kind == "auto":
        if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
            if role == "truth":
                raise InputError(f"{name}: has fractional values; the ground truth must be a mask or a label image")
            kind = "prob"
        else:
            n_values = _count_values(a, lo, hi)
            kind = "mask" if n_values == 1 or n_values == 2 and lo == 0 else "labels"
    if kind == "prob":
        if a.dtype.kind == "f":
            if lo < -_ROUNDING or hi > 1 + _ROUNDING:
                raise InputError(
                    f"{name}: values {float(lo):.6g} to {float(hi):.6g} lie outside [0, 1]; not a probability "
                    "map (declare it a mask or label image, or rescale it)"
                )
            a = a.astype(np.float32, copy=False)
            return "prob", (np.clip(a, 0, 1) if lo < 0 or hi > 1 else a)
        if lo < 0:
            raise InputError(f"{name}: negative values in a probability map")
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(a.dtype, 1.0)
        if hi > scale:
            raise InputError(f"{name}: integer values up to {int(hi)} cannot be a probability map")
        return "prob", (a / scale).astype(np.float32)
    if a.dtype.kind == "f" and not np.array_equal(a, np.round(a)):
        raise InputError(
            f"{name}: has fractional values; expected a {'binary mask' if kind == 'mask' else 'label image'}"
        )
    if lo < 0:
        raise InputError(
            f"{name}: has negative values; expected a {'binary mask' if kind == 'mask' else 'label image'}"
        )
    if kind == "mask":
        n_values = _count_values(a, lo, hi)
        if n_values > 2 or n_values == 2 and lo != 0:
            values = np.unique(a)
            shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
            raise InputError(
                f"{name}: not a binary mask ({len(values)} distinct values: {shown}); "
                "expected 0 for background and one value for particles"
            )
        return "mask", a > 0
    # labels
    if _looks_like_gray_image(a):
        raise InputError(
            f"{name}: looks like a gray-value image, not a mask or a label image (most neighbouring pixels differ)"
        )
    return "labels", relabel_sequential(a)


def relabel_sequential(labels: np.ndarray) -> np.ndarray:
    """Renumber the particles of a label image 1..n in the order of their ids, 0 kept as background.

    Memory and time depend on the number of pixels only, not on the id values: ids such as
    3e8, 4e9 or 2**40 (which would make a ``bincount`` over the raw ids allocate gigabytes)
    are handled like 1, 2, 3. Returns int32 labels (there are fewer particles than pixels).

    Examples
    --------
    >>> import numpy as np
    >>> relabel_sequential(np.array([[0, 40], [2**40, 40]]))
    array([[0, 1],
           [2, 1]], dtype=int32)
    """
    a = np.asarray(labels)
    flat = a.ravel()
    if flat.size == 0:
        return a.astype(np.int32)
    hi = int(flat.max())
    if hi < 1 << 22:  # small ids: a lookup table is faster than sorting
        present = np.bincount(flat.astype(np.intp, copy=False), minlength=hi + 1) > 0
        present[0] = True
        lut = (np.cumsum(present) - 1).astype(np.int32)
        return lut[flat].reshape(a.shape)
    ids, inv = np.unique(flat, return_inverse=True)
    if ids[0] != 0:  # no background pixel: ids start at 1
        inv = inv + 1
    return inv.astype(np.int32).reshape(a.shape)


_ROUNDING = 1e-6  # probability maps may overshoot [0, 1] by rounding (e.g. after smoothing)


def _count_values(a: np.ndarray, lo, hi) -> int:
    """1, 2, or 3 meaning "more than two" distinct values (without sorting the image)."""
    if lo == hi:
        return 1
    return 2 if not np.any((a != lo) & (a != hi)) else 3


@dataclass
class _Inputs:
    """Normalised inputs: everything as (Z, Y, X)."""

    pred_kind: str
    pred: np.ndarray  # prob (float32), mask (bool) or labels
    truth_labels: np.ndarray
    truth_mask: np.ndarray
    squeeze: bool


def _prepare(
    pred, truth, pred_kind="auto", truth_kind="auto", crop_rows=None, name="pred", truth_name="truth"
) -> _Inputs:
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if crop_rows:
        crop_rows = int(crop_rows)
        for arr, nm in ((pred, name), (truth, truth_name)):
            if arr.ndim >= 2 and crop_rows >= arr.shape[-2]:
                raise InputError(f"{nm}: cannot crop {crop_rows} rows from an image of {arr.shape[-2]} rows")
        pred = pred[..., : pred.shape[-2] - crop_rows, :]
        truth = truth[..., : truth.shape[-2] - crop_rows, :]
    if pred.shape != truth.shape:
        raise InputError(f"{name}: shape {pred.shape} does not match the ground truth {truth_name} {truth.shape}")
    kind, p = classify_input(pred, pred_kind, name, "pred")
    tkind, t = classify_input(truth, truth_kind, truth_name, "truth")
    squeeze = p.ndim == 2
    if squeeze:
        p, t = p[None], t[None]
    if tkind == "mask":
        truth_mask = t
        truth_labels = _label_slices(t)
    else:
        truth_labels = t
        truth_mask = labels_to_mask(t)
    return _Inputs(kind, p, truth_labels, truth_mask, squeeze)


def _levels(
    inp: _Inputs, thresholds: Sequence[float], watershed: bool = False
) -> Iterator[tuple[float, np.ndarray, np.ndarray]]:
    """Yield the proposal at each threshold: ``(threshold, labels, mask)`` as (Z, Y, X) arrays.

    Masks and label images give one level (threshold NaN); a probability map gives one level
    per threshold. With ``watershed``, touching particles of each mask are split by the
    distance-transform watershed of :func:`particleseg.postprocess.split_touching` and the
    mask gets one-pixel lines between them.
    """
    if inp.pred_kind == "prob":
        for t in thresholds:
            mask = inp.pred > t
            labels = _label_slices(mask, watershed)
            yield float(t), labels, (labels_to_mask(labels) if watershed else mask)
    elif inp.pred_kind == "mask":
        labels = _label_slices(inp.pred, watershed)
        yield math.nan, labels, (labels_to_mask(labels) if watershed else inp.pred)
    else:
        yield math.nan, inp.pred, labels_to_mask(inp.pred)


def _check_thresholds(thresholds) -> tuple[float, ...]:
    th = tuple(float(t) for t in np.atleast_1d(np.asarray(thresholds, float)))
    if not th:
        raise ValueError("need at least one threshold")
    return th
