"""Training targets made from instance label images: one annotation serves every head."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from ..distance import distance_transform
from ..models.architectures import Head
from ..postprocess import label_mask, labels_to_mask


def labels_from_mask(mask: np.ndarray) -> np.ndarray:
    """Instance labels of an annotation.

    Label images pass through; binary masks are labelled with 4-connectivity so that one-pixel
    background lines separate touching particles.
    """
    mask = np.asarray(mask)
    values = np.unique(mask)
    if len(values) <= 2:
        return label_mask(mask > values.min() if len(values) == 2 else mask > 0)
    if mask.dtype.kind == "f" and not np.all(np.mod(values, 1) == 0):
        raise ValueError("mask holds fractional values; expected a binary mask or a label image")
    return mask.astype(np.int32)


def normalized_distance(labels: np.ndarray) -> np.ndarray:
    """Distance of each particle pixel to its particle's border, over the particle's largest distance.

    1 at the centre, falling towards 0 at the border, 0 in the background.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.float32)
    if labels.max() == 0:
        return out
    # distance to the nearest pixel that is background or another particle
    inner = (labels > 0) & ~find_boundaries(labels, mode="inner")
    d = ndi.distance_transform_edt(inner) + (labels > 0)
    dmax = ndi.maximum(d, labels, np.arange(1, labels.max() + 1))
    dmax = np.concatenate([[1.0], np.maximum(dmax, 1.0)])
    out = (d / dmax[labels]).astype(np.float32)
    out[labels == 0] = 0
    return out


def boundary_map(labels: np.ndarray) -> np.ndarray:
    """Particle borders (including borders between touching particles), two pixels wide."""
    return find_boundaries(labels, mode="thick").astype(np.float32)


def separation_weights(
    labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0, size_balance: float = 3.0
) -> np.ndarray:
    """Per-pixel loss weights that stress the gaps between touching particles and small particles.

    The border term of the U-Net paper [1]_: a background pixel at distances ``d1`` and ``d2``
    from its nearest and second-nearest particle weighs ``1 + w0 * exp(-(d1 + d2)**2 / (2 sigma**2))``,
    so the thin background lines between touching particles count up to ``1 + w0`` times.
    Particle pixels weigh ``sqrt(median area / area)``, clipped to ``[1, size_balance]``: a
    particle smaller than the typical one counts more, as it does in the instance metrics,
    which average over particles, not pixels.

    Parameters
    ----------
    labels : (Y, X) int array
        Instance labels, 0 background.
    w0, sigma : float
        Height and width (px) of the border term (the paper's 10 and 5).
    size_balance : float
        Largest weight of a small particle's pixels (1: off).

    Returns
    -------
    (Y, X) float32 array, at least 1 everywhere.

    References
    ----------
    .. [1] O. Ronneberger, P. Fischer, T. Brox, "U-Net: convolutional networks for biomedical
       image segmentation", MICCAI 2015, eq. 2.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((5, 9), int); lab[1:4, 1:4] = 1; lab[1:4, 5:8] = 2
    >>> w = separation_weights(lab)
    >>> round(float(w[2, 4]), 2), round(float(w[0, 4]), 2), float(w[2, 2])  # the gap, beside it, a particle
    (10.23, 9.52, 1.0)
    """
    labels = np.asarray(labels)
    weights = np.ones(labels.shape, np.float32)
    if labels.max() == 0:
        return weights
    reach = int(np.ceil(3 * sigma))
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for i, sl in enumerate(ndi.find_objects(labels), 1):
        if sl is None:
            continue
        win = tuple(slice(max(s.start - reach, 0), s.stop + reach) for s in sl)
        d = distance_transform(labels[win] != i)
        a, b = d1[win], d2[win]
        closer = d < a
        b[...] = np.where(closer, a, np.minimum(b, d))
        a[...] = np.where(closer, d, a)
    gap = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    weights += np.where(labels == 0, gap, 0).astype(np.float32)
    if size_balance > 1:
        area = np.bincount(labels.ravel())
        typical = np.median(area[1:][area[1:] > 0])
        factor = np.clip(np.sqrt(typical / np.maximum(area, 1)), 1, size_balance).astype(np.float32)
        factor[0] = 1
        weights *= factor[labels]
    return weights


def make_targets(
    labels: np.ndarray,
    heads: Sequence[Head],
    classes: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Stack the training target of each head: ``(Y, X, K)`` float32.

    ``foreground``: :func:`particleseg.postprocess.labels_to_mask` (4-neighbour lines, as
    annotated masks); ``distance``: :func:`normalized_distance`;
    ``boundary``: :func:`boundary_map`; ``classes``: one-hot of ``classes`` (a class-label image).
    ``weights`` (for example :func:`separation_weights`) is appended as a last channel, which a
    loss made with ``make_loss(..., pixel_weights=True)`` reads.
    """
    parts = []
    for head in heads:
        if head.kind == "foreground":
            # the annotators' convention: lines that separate particles for 4-connected labelling
            parts.append(labels_to_mask(labels, connectivity=1).astype(np.float32)[..., None])
        elif head.kind == "distance":
            parts.append(normalized_distance(labels)[..., None])
        elif head.kind == "boundary":
            parts.append(boundary_map(labels)[..., None])
        elif head.kind == "classes":
            if classes is None:
                raise ValueError("a classes head needs a class-label image")
            parts.append(np.eye(head.channels, dtype=np.float32)[np.clip(classes, 0, head.channels - 1)])
    if weights is not None:
        parts.append(np.asarray(weights, np.float32)[..., None])
    return np.concatenate(parts, axis=-1)
