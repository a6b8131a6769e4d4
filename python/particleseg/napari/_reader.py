"""napari reader for the electron-microscopy formats (:mod:`particleseg.formats`) and the sample.

The image and its calibration come from :func:`particleseg.io.read_image` (the reader of
``particleseg segment``), so the layer's ``scale`` and ``units`` carry the file's pixel size and
the widget measures in the same units as the command line.
"""

from __future__ import annotations

from pathlib import Path

from .. import formats
from ..io import read_image
from ._core import layer_units


def layer_data(path, name: str | None = None) -> list[tuple]:
    """Return ``[(data, kwargs, "image")]`` for an image file read by :func:`particleseg.io.read_image`."""
    path = Path(path)
    data, cal = read_image(path)
    kw = {
        "name": name or path.stem,
        "metadata": {"particleseg": {"path": str(path), "unit": cal.unit, "pixel_size": cal.pixel_size}},
    }
    if cal.calibrated:
        kw["scale"] = (1.0,) * (data.ndim - 2) + (cal.pixel_size, cal.pixel_size)
        kw["units"] = ("pixel",) * (data.ndim - 2) + layer_units(cal)
    return [(data, kw, "image")]


def get_reader(path):
    """Return the npe2 reader: a function for one DM3/DM4, EMD, MRC file or OME-Zarr store, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not formats.handles(path):
        return None

    def read(p):
        p = p[0] if isinstance(p, (list, tuple)) else p
        return layer_data(p)

    return read


def sample_sem() -> list[tuple]:
    """Return the shipped sample SEM image (calibrated), as ``particleseg segment`` reads it."""
    return layer_data(Path(__file__).resolve().parents[1] / "data" / "sample_sem.tif", name="sample_sem")
