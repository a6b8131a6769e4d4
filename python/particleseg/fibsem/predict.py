"""Phase labels of one slice: tiled, blended inference of its network input."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..inference import predict_tiled
from .inputs import InputBuilder


def predict_slice(
    predict,
    x: np.ndarray,
    tile: int | None = 256,
    overlap: int = 32,
    batch_size: int = 4,
    multiple_of: int = 8,
    memmap_dir: str | os.PathLike | None = None,
    memory_limit: int = 1 << 30,
    progress: bool | None = False,
    n_outputs: int | None = None,
) -> np.ndarray:
    """Phase labels ``1..K`` (uint8) of one slice's network input ``(Y, X, C)`` by tiled, blended inference.

    When the probability map (``n_outputs`` channels) would exceed ``memory_limit`` bytes it goes
    to a temporary memory-mapped file in ``memmap_dir``.
    """
    h, w = x.shape[:2]
    out = None
    tmp = None
    try:
        if memmap_dir is not None and n_outputs and h * w * n_outputs * 4 > memory_limit:
            fd, tmp = tempfile.mkstemp(prefix=f".prob.tmp{os.getpid()}-", suffix=".dat", dir=memmap_dir)
            os.close(fd)
            out = np.memmap(tmp, np.float32, "w+", shape=(h, w, n_outputs))
        prob = predict_tiled(
            predict,
            x,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            multiple_of=multiple_of,
            out=out,
            progress=progress,
            desc="tiles",
        )
        labels = np.empty((h, w), np.uint8)
        step = max(1, (64 << 20) // max(1, w * prob.shape[-1] * 4))
        for y0 in range(0, h, step):  # strip-wise argmax keeps memory bounded for a memmap
            labels[y0 : y0 + step] = np.argmax(prob[y0 : y0 + step], axis=-1).astype(np.uint8) + 1
        return labels
    finally:
        if out is not None:
            del out
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def predict_stack_slice(
    builder: InputBuilder, predict, bundle, z: int, options: dict, memmap_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, list]:
    """Phase labels of slice ``z`` and the context slices substituted for unreadable ones.

    The labels are :func:`predict_slice` of the slice's network input; :class:`InputError` for
    an unreadable slice.
    """
    x = builder(z)
    labels = predict_slice(
        predict,
        x,
        tile=options["tile"],
        overlap=options["overlap"],
        batch_size=options["batch_size"],
        multiple_of=bundle.network.multiple_of,
        memmap_dir=memmap_dir,
        memory_limit=options["memory_limit"],
        n_outputs=bundle.network.output_channels,
    )
    return labels, builder.substitutions.get(z)
