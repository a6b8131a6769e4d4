"""The receptive field of the networks of :mod:`.architectures`, computed from their layers.

Exact tiling (:func:`particleseg.inference.predict_tiled`) gives every tile a *halo* of
context that is predicted and thrown away; when the halo reaches at least as far as any output
pixel of the kept part can see, and tiles start on multiples of ``2 ** depth`` (so the pooling
grid of a tile is the image's), the tiled output equals the whole-image output.

The walk below follows the builders of :mod:`.architectures` layer by layer, without Keras. Each
tensor is described by its stride ``j`` (input pixels per feature pixel) and the interval
``[lo, hi]`` of input pixels, relative to the first input pixel of a feature pixel, that the
feature pixel depends on:

* a ``k x k`` convolution ('same', odd ``k``) widens it by ``(k // 2) * j`` on each side,
* a 2x2 max-pooling adds ``j`` on the high side and doubles ``j``,
* a 2x2, stride-2 transposed convolution adds ``j / 2`` on the low side and halves ``j``,
* a bilinear upsampling by ``s`` adds the two source pixels it interpolates between,
* concatenations and additions take the union.

The interval of a feature pixel always holds its own block of input pixels, so "the tile holds
the interval of every output pixel kept" also means every intermediate feature a kept pixel
depends on lies inside the tile, where it sees what the whole-image run sees ('same' zero
padding only where the tile's side is the image's side). Batch normalisation in inference mode
is per pixel; group normalisation takes statistics over the whole tile, so a network with it has
no finite receptive field (:func:`receptive_field` returns None) and its tiles are never exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .architectures import NetworkConfig


@dataclass(frozen=True)
class _T:
    lo: float  # input pixels, relative to the feature pixel's first input pixel
    hi: float
    j: float  # stride: input pixels per feature pixel

    def conv(self, k: int = 3) -> "_T":
        r = (k // 2) * self.j
        return _T(self.lo - r, self.hi + r, self.j)

    def pool(self) -> "_T":
        return _T(self.lo, self.hi + self.j, 2 * self.j)

    def up(self) -> "_T":  # Conv2DTranspose(kernel 2, strides 2, 'same'): output o reads input o // 2
        return _T(self.lo - self.j / 2, self.hi, self.j / 2)

    def upsample_bilinear(self, s: int) -> "_T":
        # half-pixel centres: output o reads source floor(x) and floor(x) + 1, x = (o + 0.5) / s - 0.5
        return _T(self.lo + self.j * (0.5 / s - 1.5), self.hi + self.j * (0.5 / s + 0.5), self.j / s)

    def __or__(self, other: "_T") -> "_T":
        assert self.j == other.j, (self.j, other.j)
        return _T(min(self.lo, other.lo), max(self.hi, other.hi), self.j)


def _unet(x: _T, c: NetworkConfig) -> _T:
    skips = []
    for _ in range(c.depth):
        x = x.conv().conv()
        skips.append(x)
        x = x.pool()
    x = x.conv().conv()
    for level in reversed(range(c.depth)):
        x = (x.up() | skips[level]).conv().conv()
    return x


def _multires_block(x: _T) -> _T:
    shortcut = x.conv(1)
    a = x.conv()
    b = a.conv()
    cc = b.conv()
    return shortcut | a | b | cc


def _multires_unet(x: _T, c: NetworkConfig) -> _T:
    skips = []
    for level in range(c.depth):
        x = _multires_block(x)
        s = x
        for _ in range(c.depth - level):  # res path: 3x3 conv plus a 1x1 shortcut
            s = s.conv(1) | s.conv()
        skips.append(s)
        x = x.pool()
    x = _multires_block(x)
    for level in reversed(range(c.depth)):
        x = _multires_block(x.up() | skips[level])
    return x


def _fcn(x: _T, c: NetworkConfig) -> _T:
    pools = []
    for _ in range(c.depth):
        x = x.conv().conv().pool()
        pools.append(x)
    score = x.conv(3).conv(1)
    for level in range(c.depth - 2, max(c.depth - 4, -1), -1):
        score = score.up() | pools[level]
    remaining = c.depth - min(2, c.depth - 1)
    if c.depth == 1:
        remaining = 1
    return score.upsample_bilinear(2**remaining).conv(3)


def receptive_interval(config: NetworkConfig) -> tuple[float, float] | None:
    """``(lo, hi)``: the input pixels an output pixel ``p`` depends on are ``p + lo .. p + hi``.

    None for group normalisation, whose statistics span the whole input.
    """
    if config.normalization == "group":
        return None
    body = {"unet": _unet, "multires-unet": _multires_unet, "fcn": _fcn}[config.architecture]
    out = body(_T(0.0, 0.0, 1.0), config)  # the 1x1 heads add nothing
    return out.lo, out.hi


def receptive_field(config: NetworkConfig) -> int | None:
    """Receptive-field radius in pixels: the farthest input pixel an output pixel depends on.

    None when it is unbounded, with group normalisation.

    >>> receptive_field(NetworkConfig("unet", depth=4))
    107
    """
    interval = receptive_interval(config)
    if interval is None:
        return None
    lo, hi = interval
    return int(math.ceil(max(-lo, hi)))


def exact_halo(config: NetworkConfig) -> int | None:
    """Return the receptive-field radius rounded up to a multiple of ``2 ** depth``.

    That is the halo that makes tiles exact (None with group normalisation).
    """
    r = receptive_field(config)
    if r is None:
        return None
    m = config.multiple_of
    return -(-r // m) * m
