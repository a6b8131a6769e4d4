"""Losses of the network's heads."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..models.architectures import Head


def make_loss(
    heads: Sequence[Head],
    foreground_fraction: float | None = None,
    dice: bool = False,
    head_weights: Sequence[float] | None = None,
    pixel_weights: bool = False,
) -> Callable:
    """Loss over all heads of a network's concatenated output.

    Sigmoid heads use binary cross-entropy (with soft targets for ``distance``); the
    ``foreground`` head is class-balanced: with a foreground fraction ``f`` in the training
    data, foreground pixels weigh ``0.5/f`` and background pixels ``0.5/(1-f)``, so both
    classes contribute equally [1]_. ``dice`` adds the soft Dice loss of the foreground.
    ``classes`` heads use categorical cross-entropy. With ``pixel_weights`` the targets carry
    one more channel, last (:func:`~particleseg.train.make_targets` with ``weights``, such as
    :func:`~particleseg.train.separation_weights`): every head's per-pixel loss is weighted by
    it, over its mean, so the loss keeps its scale.

    References
    ----------
    .. [1] O. Ronneberger et al., "U-Net", MICCAI 2015 (pixel-wise loss weights).
    """
    from keras import ops  # keras: only to train (lazy, docs/architecture.md)

    weights = list(head_weights or [1.0] * len(heads))
    offsets = np.cumsum([0] + [h.channels for h in heads])
    f = float(np.clip(foreground_fraction, 0.01, 0.99)) if foreground_fraction else None

    def loss(y_true, y_pred):
        total = 0.0
        eps = 1e-6
        w = None
        if pixel_weights:
            w = y_true[..., -1:]
            w = w / ops.mean(w)
        for head, wgt, a, b in zip(heads, weights, offsets[:-1], offsets[1:]):
            t, p = y_true[..., a:b], ops.clip(y_pred[..., a:b], eps, 1 - eps)
            if head.kind == "classes":
                ce = -ops.sum(t * ops.log(p), axis=-1, keepdims=True)
                term = ops.mean(ce if w is None else ce * w)
            else:
                bce = -(t * ops.log(p) + (1 - t) * ops.log(1 - p))
                if head.kind == "foreground" and f is not None:
                    bce = bce * (t * (0.5 / f) + (1 - t) * (0.5 / (1 - f)))
                term = ops.mean(bce if w is None else bce * w)
                if head.kind == "foreground" and dice:
                    inter = ops.sum(t * p)
                    term = term + 1 - (2 * inter + 1) / (ops.sum(t) + ops.sum(p) + 1)
            total = total + wgt * term
        return total

    return loss
