"""Where a phase segmentation is written: its output files, one label file per slice, one stack."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from ..io import write_atomic


def phase_output_paths(out_dir: str | os.PathLike, name: str = "phases") -> dict[str, Path]:
    """Return the paths a phase segmentation of a stack writes in ``out_dir``.

    Parameters
    ----------
    out_dir : path
        The output folder of :func:`~particleseg.fibsem.segment.segment_stack`.
    name : str
        The name of the labels (``NAME.tif``, ``slices/NAME_zNNNNN.tif``).

    Returns
    -------
    dict
        ``slices`` (the folder of per-slice labels), ``stack`` (``NAME.tif``, all slices),
        ``fractions`` (``volume_fractions.csv``), ``plot`` (``volume_fractions.png``),
        ``status`` (``slices.csv``) and ``run`` (``run.json``).
    """
    out = Path(out_dir)
    return {
        "slices": out / "slices",
        "stack": out / f"{name}.tif",
        "fractions": out / "volume_fractions.csv",
        "plot": out / "volume_fractions.png",
        "status": out / "slices.csv",
        "run": out / "run.json",
    }


def slice_path(out_dir: str | os.PathLike, z: int, name: str = "phases") -> Path:
    """Return the path of slice ``z``'s labels in ``out_dir``: ``slices/NAME_zNNNNN.tif``."""
    return Path(out_dir) / "slices" / f"{_slice_stem(z, name)}.tif"


def _finished(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """Read the labels of a finished slice; None if it is missing or unreadable (then redone)."""
    if not path.is_file():
        return None
    try:
        a = tifffile.imread(path)
    except Exception:  # noqa: BLE001
        return None
    return a if a.shape == tuple(shape) else None


def _slice_stem(z: int, name: str) -> str:
    """Return the stem of slice ``z``'s label file and completion record: ``NAME_zNNNNN``."""
    return f"{name}_z{z:05d}"


def assemble_stack(
    out_dir: str | os.PathLike, n_slices: int, shape: tuple[int, int], name: str = "phases", overwrite: bool = False
) -> Path:
    """Copy the per-slice label files into one ImageJ stack ``NAME.tif``; missing slices are 0.

    The stack is written through a memory map (one slice in memory at a time), as a BigTIFF
    beyond 4 GB.
    """
    out = Path(out_dir)
    nbytes = n_slices * shape[0] * shape[1]

    def write(tmp: Path) -> None:
        big = nbytes > 3_900_000_000
        kwargs = {"bigtiff": True} if big else {"imagej": True, "metadata": {"axes": "ZYX"}}
        mm = tifffile.memmap(tmp, shape=(n_slices, *shape), dtype=np.uint8, **kwargs)
        for z in range(n_slices):
            a = _finished(slice_path(out, z, name), shape)
            mm[z] = a if a is not None else 0
        mm.flush()
        del mm

    return write_atomic(phase_output_paths(out, name)["stack"], write, overwrite)
