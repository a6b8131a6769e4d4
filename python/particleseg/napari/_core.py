"""The Qt-free part of the napari plugin: an Image layer in, particles and measurements out.

It goes through :func:`particleseg.pipeline.segment_image` (the pipeline every route uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import Calibration, canonical_unit
from ..io.read import _to_gray
from ..models import Bundle, load_bundle
from ..pipeline import SegmentParams, merge_slices, segment_image

#: particleseg's canonical units -> the names napari's (pint) layer units take
PINT_UNITS = {"nm": "nanometer", "µm": "micrometer", "mm": "millimeter", "Å": "angstrom", "m": "meter"}


@dataclass
class LayerResult:
    """What :func:`segment_layer` gives for one Image layer.

    ``labels``: the kept particles numbered ``1..N`` (through the slices of a stack), 0 elsewhere,
    the shape of the image (as ``particleseg segment``'s ``STEM_labels.tif``); ``table``: every
    particle, kept and rejected (``kept``, ``reject_reason``), as its ``STEM_particles.csv``;
    ``calibration``: the pixel size the measurements are in.
    """

    labels: np.ndarray
    table: pd.DataFrame
    calibration: Calibration
    segmentations: list

    @property
    def kept(self) -> pd.DataFrame:
        """The measurements of the kept particles (the rows of the Labels layer)."""
        if not len(self.table):
            return self.table
        return self.table[self.table["kept"]].reset_index(drop=True)

    def summary(self) -> str:
        """One line: the count and the median minimum Feret diameter."""
        kept = self.kept
        n = len(kept)
        unit = self.calibration.unit
        if n == 0:
            return "no particles kept"
        return f"{n} particle{'s' if n != 1 else ''}, median min Feret {kept['MinFeret'].median():.4g} {unit}"


def layer_units(calibration: Calibration, ndim: int = 2) -> tuple[str, ...]:
    """Return the ``units`` of a napari layer in ``calibration``'s unit (``pixel`` when uncalibrated)."""
    return (PINT_UNITS.get(calibration.unit, "pixel"),) * ndim


def calibration_of(layer) -> Calibration:
    """Return the pixel size of a napari layer.

    That is its ``scale`` along x in its ``units`` (a length unit particleseg knows), else
    uncalibrated.
    """
    scale = getattr(layer, "scale", None)
    units = getattr(layer, "units", None)
    if scale is None or units is None or len(units) == 0:
        return Calibration()
    try:
        unit = canonical_unit(str(units[-1]))
        size = float(scale[-1])
        return Calibration(size, unit) if unit != "px" else Calibration()
    except (ValueError, TypeError):  # a unit that is no length (seconds, ...), a zero scale
        return Calibration()


def image_of(layer) -> np.ndarray:
    """Return the gray values of an Image layer: ``(Y, X)`` or a stack ``(Z, Y, X)``.

    RGB(A) layers become luminance (as :func:`particleseg.io.read_image` reads RGB files).
    """
    data = getattr(layer, "data", layer)
    if getattr(layer, "multiscale", False):
        data = data[0]  # the full resolution
    data = np.asarray(data)
    name = getattr(layer, "name", "image")
    rgb = bool(getattr(layer, "rgb", False))
    axes = "Z" * (data.ndim - 3 if rgb else data.ndim - 2) + "YX" + ("S" if rgb else "")
    if data.ndim < 2 or len(axes) != data.ndim:
        raise InputError(f"{name}: expected a 2D image or a stack, got shape {data.shape}")
    gray = _to_gray(Path(name), data, axes, False)
    if gray.ndim > 3:
        gray = gray.reshape((-1,) + gray.shape[-2:])
    return gray


def segment_layer(layer, bundle=None, params=None, calibration: Calibration | None = None) -> LayerResult:
    """Segment, split, filter and measure the particles of an Image layer (or an array).

    ``bundle``: a :class:`~particleseg.models.Bundle`, a path or an installed name (default: the
    shipped default model); ``params``: :class:`~particleseg.pipeline.SegmentParams` (from the
    widget's values through :func:`particleseg.params.segment_params`); ``calibration``: default
    the layer's (:func:`calibration_of`). A stack is segmented slice by slice, its labels
    numbered on through the slices, the kept particles ``1..N`` first (as
    :func:`particleseg.pipeline.segment_file` does).
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    params = params or SegmentParams(progress=False)
    cal = calibration or calibration_of(layer)
    image = image_of(layer)
    name = str(getattr(layer, "name", "image"))
    stack = image if image.ndim == 3 else image[None]
    results = [
        segment_image(plane, bundle, params, cal, name=name if image.ndim == 2 else f"{name} (slice {z + 1})")
        for z, plane in enumerate(stack)
    ]
    _, table, kept = merge_slices(results, stacked=image.ndim == 3)
    return LayerResult(kept[0] if image.ndim == 2 else kept, table, cal, results)


def labels_layer_kwargs(result: LayerResult, image_layer=None, name: str | None = None) -> dict[str, Any]:
    """Return the keyword arguments of a napari Labels layer for ``result``.

    The kept particles' measurements as ``features`` (``index`` is the label), the image layer's
    scale, translation and units.
    """
    features = result.kept.copy()
    features.insert(0, "index", features["label"].astype(int) if len(features) else pd.Series(dtype=int))
    kw: dict[str, Any] = {
        "name": name or f"{getattr(image_layer, 'name', 'image')} particles",
        "features": features,
        "metadata": {
            "particleseg": {
                "unit": result.calibration.unit,
                "pixel_size": result.calibration.pixel_size,
                "summary": result.summary(),
            }
        },
    }
    if image_layer is not None:
        nd = result.labels.ndim
        kw["scale"] = tuple(image_layer.scale)[-nd:]
        kw["translate"] = tuple(image_layer.translate)[-nd:]
        units = getattr(image_layer, "units", None)
        if units is not None:
            kw["units"] = tuple(str(u) for u in units)[-nd:]
    return kw
