"""Training targets made from instance label images: one annotation serves every head."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

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


def make_targets(labels: np.ndarray, heads: Sequence[Head], classes: np.ndarray | None = None) -> np.ndarray:
    """Stack the training target of each head: ``(Y, X, K)`` float32.

    ``foreground``: :func:`particleseg.postprocess.labels_to_mask` (4-neighbour lines, as
    annotated masks); ``distance``: :func:`normalized_distance`;
    ``boundary``: :func:`boundary_map`; ``classes``: one-hot of ``classes`` (a class-label image).
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
    return np.concatenate(parts, axis=-1)
