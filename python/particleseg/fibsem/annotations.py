"""Annotated slices for training: a label stack or a folder of label files, phases ``1..K``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile

from ..errors import InputError
from .stacks import TIFF_SUFFIXES, _detail, _natural_key


def read_annotations(
    path: str | os.PathLike, n_slices: int, shape: tuple[int, int], slices: Sequence[int] | None = None
) -> dict[int, np.ndarray]:
    """Read the annotated slices from a label stack or a folder of label files.

    A label stack is ``(Z, Y, X)`` with as many slices as the image stack (``0`` = not
    annotated, phases ``1..K``); the names of label files carry the slice number
    (``slice_0012.tif``, ``labels-12.tif``). Slices that hold no label are not annotated.
    ``slices`` keeps only those.
    """
    p = Path(path)
    out: dict[int, np.ndarray] = {}
    if p.is_dir():
        for f in sorted(p.iterdir(), key=_natural_key):
            if f.suffix.lower() not in TIFF_SUFFIXES or f.name.startswith("."):
                continue
            nums = re.findall(r"\d+", f.stem)
            if not nums:
                raise InputError(f"{f}: no slice number in the file name (expected e.g. slice_0012.tif)")
            z = int(nums[-1])
            try:
                a = np.squeeze(tifffile.imread(f))
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{f}: cannot read annotation ({_detail(exc)})") from None
            out[z] = a
    else:
        if not p.is_file():
            raise InputError(f"{p}: annotations not found")
        try:
            a = tifffile.imread(p)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{p}: cannot read annotations ({_detail(exc)})") from None
        a = np.asarray(a)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[0] != n_slices:
            raise InputError(
                f"{p}: annotation stack of shape {a.shape} does not match the image stack "
                f"({n_slices} slices of {shape[0]}x{shape[1]}); give a label stack with as many slices, "
                "or a folder of slice_NNNN.tif"
            )
        out = {z: a[z] for z in range(a.shape[0]) if a[z].any()}
    for z, a in list(out.items()):
        if not 0 <= z < n_slices:
            raise InputError(f"{p}: annotation of slice {z}, but the stack has slices 0..{n_slices - 1}")
        if a.shape != tuple(shape):
            raise InputError(
                f"{p}: annotation of slice {z} is {a.shape[0]}x{a.shape[1]}, the slices are {shape[0]}x{shape[1]}"
            )
        if a.dtype.kind not in "iub" or (a.size and a.min() < 0):
            raise InputError(
                f"{p}: annotation of slice {z} must hold non-negative integers (0 = not annotated, phases 1..K)"
            )
        if not a.any():
            del out[z]
    if slices is not None:
        missing = [z for z in slices if z not in out]
        if missing:
            raise InputError(
                f"{p}: slice(s) {', '.join(map(str, missing))} are not annotated "
                f"(annotated: {', '.join(map(str, sorted(out))) or 'none'})"
            )
        out = {z: out[z] for z in slices}
    if not out:
        raise InputError(f"{p}: no annotated slice (all labels are 0)")
    return {z: out[z].astype(np.int32) for z in sorted(out)}
