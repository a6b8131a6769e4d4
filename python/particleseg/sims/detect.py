"""Detection of SIMS particles: the network input, batched prediction, threshold and watershed.

Particles are found on the *sum of the uranium channels* by a fully convolutional network
followed by a watershed, which leaves two parameters: the probability (softmax) threshold and
the watershed level.

References
----------
.. [1] F. J. Anscombe, "The transformation of Poisson, binomial and negative-binomial data",
       Biometrika 35, 246-254 (1948) (variance-stabilising transform of counts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..inference import predict_tiled
from ..postprocess import label_mask, relabel_sequential, remove_small, split_touching
from .params import SimsParams

# Input transform of the detection network: Anscombe's transform of the summed counts,
# 2 sqrt(x + 3/8), shifted to 0 at zero counts and divided by ``scale``. Poisson noise then has
# about the same spread (1/scale) at every count level, in bright and in dim fields.
DEFAULT_INPUT = {"transform": "anscombe", "scale": 8.0, "clip": 12.0}


def detection_input(total: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """Make the network input from the summed uranium counts.

    The input is ``(2 sqrt(x + 3/8) - 2 sqrt(3/8)) / scale``, clipped to ``[0, clip]`` (float32,
    same shape). Anscombe's transform [1]_ makes Poisson noise about equally strong at every count level,
    so one network sees dim and bright fields, weak and strong background alike.
    """
    s = {**DEFAULT_INPUT, **(settings or {})}
    if s["transform"] != "anscombe":
        raise ValueError(f"unknown SIMS input transform {s['transform']!r}")
    x = np.asarray(total, np.float32)
    a = (2.0 * np.sqrt(np.maximum(x, 0) + 0.375) - 2.0 * np.sqrt(0.375)) / s["scale"]
    return np.clip(a, 0, s["clip"]).astype(np.float32)


def predict_fields(predict, inputs: np.ndarray, multiple_of: int = 8, batch_size: int = 64) -> np.ndarray:
    """Foreground probability of many same-size fields, ``batch_size`` fields per network call.

    Parameters
    ----------
    predict : callable
        ``(N, H, W, 1)`` float32 -> ``(N, H, W, K)`` (e.g. ``Bundle.predictor()``); channel 0
        of the output is the particle probability (a sigmoid ``foreground`` head, or the
        particle class of a 2-class softmax ``classes`` head, see :func:`probability_channel`).
    inputs : (N, Y, X) float32
        Detection inputs (:func:`detection_input`).
    multiple_of : int
        Fields are padded (reflecting) to a multiple of this and cropped back.

    Returns
    -------
    (N, Y, X, K) float32
    """
    x = np.asarray(inputs, np.float32)
    n, h, w = x.shape
    ph, pw = (-h) % multiple_of, (-w) % multiple_of
    out = None
    for b0 in range(0, n, max(1, batch_size)):
        b = x[b0 : b0 + batch_size]
        if ph or pw:
            b = np.pad(b, ((0, 0), (0, ph), (0, pw)), mode="reflect" if ph < h and pw < w else "symmetric")
        p = np.asarray(predict(b[..., None]), np.float32)[:, :h, :w]
        if out is None:
            out = np.empty((n, h, w, p.shape[-1]), np.float32)
        out[b0 : b0 + len(b)] = p
    return out if out is not None else np.zeros((0, h, w, 1), np.float32)


def probability_channel(heads: Sequence) -> int:
    """Find the channel of the network output that holds the particle probability.

    It is the ``foreground`` head, or the second class of a ``classes`` (softmax) head.
    """
    offset = 0
    for h in heads:
        kind, ch = (h.kind, h.channels) if hasattr(h, "kind") else (h, 1)
        if kind == "foreground":
            return offset
        if kind == "classes":
            return offset + 1
        offset += ch
    raise ValueError("network has neither a foreground nor a classes head")


def detect_particles(
    probability: np.ndarray, threshold: float = 0.5, level: float | None = 1.0, min_area: int = 4
) -> np.ndarray:
    """Particles from a probability map: threshold, then a watershed that splits touching ones.

    Parameters
    ----------
    probability : (Y, X) float
    threshold : float
        Probability (softmax) threshold: pixels above it are particle.
    level : float or None
        Watershed level: the h-maxima depth, in pixels, of the distance transform of the mask
        (:func:`particleseg.postprocess.split_touching`). Lower splits more; ``None`` does not split.
    min_area : int
        Smaller regions are noise and removed.

    Returns
    -------
    (Y, X) int32 labels 1..n
    """
    mask = np.asarray(probability) > threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    labels = label_mask(mask) if level is None else split_touching(mask, None, h=float(level))
    return relabel_sequential(remove_small(labels, min_area))


class FieldDetector:
    """A bundle's network and post-processing applied to batches of fields (arrays in, labels out)."""

    def __init__(self, bundle, params: SimsParams | None = None, predictor=None):
        self.bundle = bundle
        self.params = (params or SimsParams()).resolved(bundle)
        bundle.check_use("sims")
        bundle.check_channels(1, "SIMS detection input (sum of uranium channels)")
        self._predict = predictor  # (the bundle's network is loaded on first use)
        self.channel = probability_channel(bundle.network.heads)
        self.input_settings = {**DEFAULT_INPUT, **(bundle.metadata.get("sims", {}).get("input", {}))}
        self.tile = bundle.tile

    @property
    def predict(self):
        """The bundle's predictor (or the one given), loaded on first use."""
        if self._predict is None:
            self._predict = self.bundle.predictor()
        return self._predict

    def probabilities(self, totals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Compute particle probability maps of fields given as summed-count images (any sizes)."""
        out: list[np.ndarray | None] = [None] * len(totals)
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(totals):
            by_shape.setdefault(np.shape(t), []).append(i)
        m = self.bundle.network.multiple_of
        for shape, idx in by_shape.items():
            x = np.stack([detection_input(totals[i], self.input_settings) for i in idx])
            if max(shape) <= max(self.tile, 256):
                p = predict_fields(self.predict, x, m, self.params.batch_size)[..., self.channel]
            else:  # large fields: tiled, one at a time
                p = np.stack(
                    [
                        predict_tiled(
                            self.predict,
                            xi,
                            tile=self.tile,
                            overlap=self.bundle.overlap,
                            batch_size=max(1, self.params.batch_size // 4),
                            multiple_of=m,
                            progress=False,
                        )[..., self.channel]
                        for xi in x
                    ]
                )
            for j, i in enumerate(idx):
                out[i] = p[j]
        return out  # type: ignore[return-value]

    def labels(self, probability: np.ndarray) -> np.ndarray:
        """Label the particles of one probability map with the resolved settings (:func:`detect_particles`)."""
        p = self.params
        return detect_particles(probability, p.threshold, p.level if p.split else None, p.min_area)
