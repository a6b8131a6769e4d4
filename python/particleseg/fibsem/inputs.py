"""The network input of a slice: its channels and those of ``k`` slices before and after it.

:func:`context_indices` (the window, mirrored at the ends of the stack), :func:`input_names`,
:func:`stack_normalization` (percentiles of the whole stack) and :class:`InputBuilder` (the
input ``(Y, X, (2k + 1) * C)``, slice-offset-major: ``z-k`` channels first).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from .stacks import Stack


def context_indices(z: int, n_slices: int, k: int) -> list[int]:
    """Slices ``z-k .. z+k``, mirrored at the ends of the stack (``-1 -> 1``, ``n -> n-2``).

    Raises :class:`InputError` if the window of ``2k + 1`` slices is larger than the stack.
    """
    if k < 0:
        raise InputError(f"context must not be negative, got {k}")
    if 2 * k + 1 > n_slices:
        raise InputError(
            f"context window of {2 * k + 1} slices (k={k} before and after) is larger than the stack "
            f"({n_slices} slice{'s' if n_slices != 1 else ''}); use --context {max(0, (n_slices - 1) // 2)} or less"
        )
    out = []
    for i in range(z - k, z + k + 1):
        if i < 0:
            i = -i
        elif i >= n_slices:
            i = 2 * (n_slices - 1) - i
        out.append(i)
    return out


def input_names(channel_names: Sequence[str], k: int) -> list[str]:
    """Names of the network input channels, slice-offset-major: ``name@z-1, ..., name@z+1``."""
    return [f"{c}@z{off:+d}" if off else f"{c}@z" for off in range(-k, k + 1) for c in channel_names]


def stack_normalization(
    stack: Stack,
    low: float = 1.0,
    high: float = 99.8,
    samples: int = 8,
    max_pixels: int = 1_000_000,
    skip: Callable[[int], bool] | None = None,
) -> list[tuple[float, float]]:
    """Percentiles ``low`` and ``high`` of each channel, so every slice of a stack is normalised alike.

    They are taken over up to ``samples`` slices spread through the stack (a regular pixel
    subsample of each). Unreadable slices are skipped.
    """
    n = stack.n_slices
    zs = sorted(set(np.linspace(0, n - 1, min(samples, n)).round().astype(int).tolist()))
    values: list[list[np.ndarray]] = [[] for _ in range(stack.n_channels)]
    h, w = stack.shape
    step = max(1, int(math.sqrt(h * w * len(zs) / max_pixels)))
    for z in zs:
        if skip is not None and skip(z):
            continue
        for c, src in enumerate(stack.sources):
            try:
                values[c].append(np.asarray(src.read(z))[::step, ::step].ravel())
            except InputError:
                continue
    out = []
    for c, v in enumerate(values):
        if not v:
            raise InputError(f"{stack.sources[c].name}: none of the sampled slices can be read")
        lo, hi = np.percentile(np.concatenate(v), [low, high])
        if hi <= lo:
            hi = lo + 1.0
        out.append((float(lo), float(hi)))
    return out


class InputBuilder:
    """Network inputs of slices, ``(Y, X, (2k + 1) C)`` float32.

    A small cache of normalised slices lets a pass through the stack read each slice once. An
    unreadable context slice is replaced by the nearest readable slice of the window (noted in
    ``substitutions``); an unreadable centre slice raises :class:`InputError`.
    """

    def __init__(
        self, stack: Stack, k: int, norm: Sequence[tuple[float, float]], clip: tuple[float, float] | None = (-0.5, 1.5)
    ):
        context_indices(0, stack.n_slices, k)  # checks the window
        if len(norm) != stack.n_channels:
            raise InputError(f"{len(norm)} normalisation ranges for {stack.n_channels} channels")
        self.stack, self.k, self.norm, self.clip = stack, k, list(norm), clip
        self.cache: OrderedDict[int, np.ndarray | InputError] = OrderedDict()
        self.substitutions: dict[int, list[tuple[int, int]]] = {}

    def slice(self, z: int) -> np.ndarray:
        """Normalised ``(Y, X, C)`` of slice ``z`` (cached)."""
        if z in self.cache:
            self.cache.move_to_end(z)
            v = self.cache[z]
        else:
            try:
                raw = self.stack.read(z)
                v = np.stack([_normalize(raw[c], lo, hi, self.clip) for c, (lo, hi) in enumerate(self.norm)], -1)
            except InputError as exc:
                v = exc
            self.cache[z] = v
            while len(self.cache) > 2 * self.k + 2:
                self.cache.popitem(last=False)
        if isinstance(v, InputError):
            raise v
        return v

    def __call__(self, z: int) -> np.ndarray:
        """Build the network input of slice ``z``: its window's normalised slices, ``z-k`` first."""
        idx = context_indices(z, self.stack.n_slices, self.k)
        centre = self.slice(z)  # raises for a bad centre slice
        parts, subs = [], []
        for i in idx:
            try:
                parts.append(self.slice(i))
            except InputError:
                alt = self._nearest_readable(i, z, idx)
                subs.append((i, alt))
                parts.append(self.slice(alt) if alt != z else centre)
        if subs:
            self.substitutions[z] = subs
        return np.concatenate(parts, axis=-1)

    def _nearest_readable(self, bad: int, z: int, window: list[int]) -> int:
        for cand in sorted(set(window), key=lambda i: (abs(i - bad), abs(i - z))):
            if cand == bad:
                continue
            try:
                self.slice(cand)
                return cand
            except InputError:
                continue
        return z


def _normalize(a: np.ndarray, lo: float, hi: float, clip) -> np.ndarray:
    out = (np.asarray(a, np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out
