"""Where a phase segmentation is written: its output files, one label file per slice, one stack."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from ..io import write_atomic

def phase_output_paths(out_dir: str | os.PathLike, name: str = "phases") -> dict[str, Path]:
    out = Path(out_dir)
    return {"slices": out / "slices", "stack": out / f"{name}.tif", "fractions": out / "volume_fractions.csv",
            "plot": out / "volume_fractions.png", "status": out / "slices.csv", "run": out / "run.json"}


def slice_path(out_dir: str | os.PathLike, z: int, name: str = "phases") -> Path:
    return Path(out_dir) / "slices" / f"{_slice_stem(z, name)}.tif"


def _finished(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The labels of a finished slice, or None if it is missing or unreadable (then redone)."""
    if not path.is_file():
        return None
    try:
        a = tifffile.imread(path)
    except Exception:  # noqa: BLE001
        return None
    return a if a.shape == tuple(shape) else None

def _slice_stem(z: int, name: str) -> str:
    return f"{name}_z{z:05d}"

def assemble_stack(out_dir: str | os.PathLike, n_slices: int, shape: tuple[int, int], name: str = "phases",
                   overwrite: bool = False) -> Path:
    """Copy the per-slice label files into one ImageJ stack ``NAME.tif`` through a memory map
    (one slice in memory at a time); missing slices are 0. BigTIFF beyond 4 GB."""
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
