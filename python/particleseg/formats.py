"""Electron-microscopy file formats and the calibration sidecar files of SEMs.

Gatan DM3/DM4, EMD (Thermo Fisher Velox and Berkeley), MRC, OME-Zarr, and the calibration
sidecar files of Hitachi and JEOL SEMs.

:func:`particleseg.io.read_image` and :func:`particleseg.io.read_calibration` hand these files
to :func:`read` and :func:`read_calibration` by their suffix (:data:`SUFFIXES`); TIFF, PNG and
JPEG stay with :mod:`particleseg.io`, which asks :func:`sidecar_calibration` when their own
metadata has no pixel size.

The readers are maintained libraries, imported only when such a file is read (the optional extra
``particleseg[formats]``):

* **RosettaSciIO** (``rsciio``, the HyperSpy project's readers, split out of HyperSpy for other
  programs) for DM3/DM4 and EMD: one library for both Gatan formats and both EMD flavours, with
  the calibrated axes (scale, unit) of each signal; actively maintained and tested on files
  from the instruments.
* **mrcfile** (CCP-EM's reference implementation of the MRC2014 format) for MRC, MRCS and
  IMOD's REC/ALI/ST stacks: validated headers and the voxel size in Å.
* **zarr** for OME-Zarr (OME-NGFF 0.4 and 0.5: ``multiscales`` metadata, the first, full
  resolution, dataset, the ``scale`` transformation and the axis units). ome-zarr-py is not
  used: it pulls in s3fs/botocore, whose python-dateutil<3 conflicts with the rest of the
  environment, and the metadata particleseg needs is a few keys of JSON.
* OME-TIFF calibration (``PhysicalSizeX`` and its unit) is read by :mod:`particleseg.io`
  through tifffile, as are ImageJ, Zeiss and FEI/Thermo Fisher TIFF tags.

Each reader returns the data with tifffile-style axis letters (``YX``, ``ZYX``, ``CYX``, ...), a
:class:`~particleseg.io.Calibration` and the calibration's source; a file that cannot be read
raises :class:`~particleseg.errors.InputError` in one line naming it.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

GATAN = (".dm3", ".dm4")
EMD = (".emd",)
MRC = (".mrc", ".mrcs", ".rec", ".ali", ".st")
ZARR = (".zarr",)
#: suffixes read by this module (lower case); ``.zarr`` is a folder
SUFFIXES = GATAN + EMD + MRC + ZARR
#: sidecar files of SEM images that carry their calibration (Hitachi, JEOL): ``IMAGE.txt``
SIDECAR_SUFFIX = ".txt"

_NGFF_UNITS = {"angstrom": "Å", "nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "meter": "m"}


def handles(path: str | os.PathLike) -> bool:
    """Whether :func:`read` reads ``path`` (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES


def is_container(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder that is one image (an OME-Zarr store), not a folder of images."""
    path = Path(path)
    return path.suffix.lower() in ZARR and path.is_dir()


def _calibration(size, unit, source: str, path: Path, notes: list | None):
    """Make a :class:`Calibration` from a pixel size and unit.

    An uncalibrated one (with a note) when they cannot be used (no length unit, zero, NaN).
    """
    from .io import Calibration, canonical_unit  # cycle: io.calibration and io.read import formats

    if unit in (None, "", "<undefined>", "px", "pixel", "pixels") or size in (None, 0, 1.0) and not unit:
        return Calibration(), ""
    try:
        unit = canonical_unit(_NGFF_UNITS.get(str(unit).lower(), str(unit)))
        size = float(size)
        if not (math.isfinite(size) and size > 0):
            raise ValueError(f"pixel size {size}")
        if unit == "px":
            return Calibration(), ""
        return Calibration(size, unit), source
    except (TypeError, ValueError) as exc:
        why = str(exc) if "pixel size" in str(exc) else f"unit {unit!r} is no length"
        if notes is not None:
            notes.append(("invalid", f"{source} calibration ignored ({why})"))
        return Calibration(), ""


def _f32(value):
    """Round a pixel size the file stores as float32 to the 7 digits float32 holds.

    So 0.4, not 0.4000000059604645.
    """
    try:
        return float(f"{float(value):.7g}")
    except (TypeError, ValueError):
        return value


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# reading


def read(path: str | os.PathLike, notes: list | None = None) -> tuple[np.ndarray, str, Any, str]:
    """Read an EM file: ``(data, axes, calibration, source)``.

    ``axes`` uses tifffile's letters (``YX``, ``ZYX``, ``CYX``, ``TZCYX``...); ``source`` says
    where the calibration came from (``Gatan DM``, ``EMD``, ``MRC``, ``OME-Zarr``) or is ``""``.
    Unusable calibration is appended to ``notes`` as ``("invalid", text)``.

    Raises
    ------
    InputError
        One line naming the file: missing, not of its format, truncated, no image in it, or the
        reader library not installed.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    suffix = path.suffix.lower()
    reader = {
        **{s: _read_gatan for s in GATAN},
        **{s: _read_emd for s in EMD},
        **{s: _read_mrc for s in MRC},
        **{s: _read_zarr for s in ZARR},
    }.get(suffix)
    if reader is None:
        raise InputError(f"{path}: unsupported file type {suffix!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reader(path, notes)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        raise InputError(f"{path}: cannot read {_FORMAT_NAMES[suffix]} file ({_one_line(exc)})") from None


def read_calibration(path: str | os.PathLike, notes: list | None = None):
    """Read the calibration of an EM file and its source, as :func:`read` gives it.

    The pixels are read lazily or not at all where the library allows.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if suffix in MRC:
                return _mrc_header(path, notes)[1:]
            if suffix in ZARR:
                return _zarr_meta(path, notes)[2:]
            return _rsciio_image(path, notes, lazy=True)[2:]
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read {_FORMAT_NAMES[suffix]} file ({_one_line(exc)})") from None


_FORMAT_NAMES = {
    **{s: "Gatan DigitalMicrograph" for s in GATAN},
    **{s: "EMD" for s in EMD},
    **{s: "MRC" for s in MRC},
    **{s: "OME-Zarr" for s in ZARR},
}


def _import(module: str, package: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"reading this file needs {package} (pip install 'particleseg[formats]')") from None


def _read_gatan(path: Path, notes):
    return _rsciio_image(path, notes)


def _read_emd(path: Path, notes):
    return _rsciio_image(path, notes)


def _rsciio_image(path: Path, notes, lazy: bool = False):
    """Read the first image (2D signal, or a stack of them) of a DM or EMD file, through RosettaSciIO."""
    suffix = path.suffix.lower()
    if suffix in GATAN:
        reader = _import("rsciio.digitalmicrograph", "rosettasciio").file_reader
        source = "Gatan DM"
        signals = reader(str(path), lazy=lazy)
    else:
        reader = _import("rsciio.emd", "rosettasciio").file_reader
        source = "EMD"
        try:
            signals = reader(str(path), lazy=lazy, select_type="images")
        except TypeError:
            signals = reader(str(path), lazy=lazy)
    images = [s for s in signals if _image_axes(s) is not None]
    if not images:
        kinds = ", ".join(f"{np.ndim(s['data'])}-D" for s in signals) or "nothing"
        raise InputError(f"{path}: no image in this {_FORMAT_NAMES[suffix]} file (holds {kinds})")
    sig = images[0]
    axes = _image_axes(sig)
    x = sig["axes"][axes.index("X")]
    y = sig["axes"][axes.index("Y")]
    if notes is not None and len(images) > 1:
        names = [_title(s) for s in images]
        notes.append(("other", f"holds {len(images)} images ({', '.join(names)}); reading the first"))
    cal, src = _calibration(_f32(x.get("scale")), x.get("units"), source, path, notes)
    if cal.calibrated and not math.isclose(float(y.get("scale", x["scale"])), float(x["scale"]), rel_tol=1e-3):
        if notes is not None:
            notes.append(("nonsquare", f"pixels are not square ({y.get('scale')} x {x.get('scale')} {x.get('units')})"))
    data = sig["data"]
    if not lazy:
        data = np.asarray(data)
    return data, axes, cal, src


def _title(sig: dict) -> str:
    md = sig.get("metadata") or {}
    return str((md.get("General") or {}).get("title") or "untitled")


def _image_axes(sig: dict) -> str | None:
    """Give the tifffile-style axes of an rsciio signal that is an image or a stack of images, else None.

    rsciio lists the axes in array order, navigation axes first.
    """
    axes = sig.get("axes") or []
    shape = np.shape(sig["data"])
    if len(axes) != len(shape) or len(shape) not in (2, 3):
        return None
    signal = [a for a in axes if not a.get("navigate", False)]
    if len(signal) != 2:
        return None
    if any(str(a.get("units", "")).startswith("1/") for a in signal):  # diffraction pattern
        return None
    return "YX" if len(shape) == 2 else "ZYX"


def _mrc_header(path: Path, notes):
    mrcfile = _import("mrcfile", "mrcfile")
    with mrcfile.open(str(path), mode="r", permissive=False, header_only=True) as mrc:
        voxel = mrc.voxel_size
        nz = int(mrc.header.nz)
    vx, vy = _f32(voxel.x), _f32(voxel.y)
    cal, src = _calibration(vx / 10 if vx else None, "nm" if vx else None, "MRC", path, notes)
    if cal.calibrated and not math.isclose(vx, vy, rel_tol=1e-3) and notes is not None:
        notes.append(("nonsquare", f"pixels are not square ({vy:g} x {vx:g} Å)"))
    return nz, cal, src


def _read_mrc(path: Path, notes):
    mrcfile = _import("mrcfile", "mrcfile")
    _, cal, src = _mrc_header(path, notes)
    with mrcfile.open(str(path), mode="r", permissive=False) as mrc:
        data = np.array(mrc.data)
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: MRC data has {data.ndim} dimensions; expected an image or a stack")
    return data, "YX" if data.ndim == 2 else "ZYX", cal, src


def _ngff_multiscales(attrs: dict) -> list | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict):  # NGFF 0.5
        attrs = attrs["ome"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _zarr_meta(path: Path, notes):
    """Open the full-resolution array of an OME-Zarr image; return it, its axes and its calibration."""
    zarr = _import("zarr", "zarr")
    if not path.is_dir():
        raise InputError(f"{path}: not an OME-Zarr store (expected a folder)")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: not an OME-Zarr store ({_one_line(exc)})") from None
    ms = _ngff_multiscales(dict(group.attrs))
    if ms is None:
        raise InputError(
            f"{path}: not an OME-Zarr image (no 'multiscales' metadata; a plate or label store, or a plain Zarr array)"
        )
    m = ms[0]
    names = []
    units = []
    for a in m.get("axes") or []:
        if isinstance(a, str):  # NGFF 0.3
            names.append(a)
            units.append(None)
        else:
            names.append(a.get("name", ""))
            units.append(a.get("unit"))
    dataset = m["datasets"][0]
    array = group[dataset["path"]]
    if not names:
        names = ["t", "c", "z", "y", "x"][-array.ndim :]
    if len(names) != array.ndim:
        raise InputError(f"{path}: OME-Zarr metadata names {len(names)} axes for a {array.ndim}-D array")
    scale = [1.0] * array.ndim
    for t in [*(dataset.get("coordinateTransformations") or []), *(m.get("coordinateTransformations") or [])]:
        if t.get("type") == "scale" and len(t.get("scale", [])) == array.ndim:
            scale = [s * float(v) for s, v in zip(scale, t["scale"])]
    letters = "".join({"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}.get(n.lower(), "Q") for n in names)
    if "Y" not in letters or "X" not in letters:
        raise InputError(f"{path}: OME-Zarr image without y and x axes (axes {', '.join(names)})")
    iy, ix = letters.index("Y"), letters.index("X")
    cal, src = _calibration(scale[ix], units[ix], "OME-Zarr", path, notes)
    if cal.calibrated and not math.isclose(scale[iy], scale[ix], rel_tol=1e-3) and notes is not None:
        notes.append(("nonsquare", f"pixels are not square ({scale[iy]:g} x {scale[ix]:g} {units[ix]})"))
    return array, letters, cal, src


def _read_zarr(path: Path, notes):
    array, axes, cal, src = _zarr_meta(path, notes)
    return np.asarray(array[...]), axes, cal, src


def z_spacing(path: str | os.PathLike) -> float | None:
    """Slice spacing of an MRC or OME-Zarr volume, in the unit of its pixel size.

    None when the file has no z axis or does not say.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if suffix in MRC:
            mrcfile = _import("mrcfile", "mrcfile")
            with mrcfile.open(str(path), mode="r", header_only=True, permissive=True) as mrc:
                vz = _f32(mrc.voxel_size.z)
                nz = int(mrc.header.nz)
            return vz / 10 if vz > 0 and nz > 1 else None
        if suffix in ZARR:
            array, axes, cal, _ = _zarr_meta(path, None)
            if "Z" not in axes:
                return None
            zarr = _import("zarr", "zarr")
            m = _ngff_multiscales(dict(zarr.open_group(str(path), mode="r").attrs))[0]
            units = [a.get("unit") if isinstance(a, dict) else None for a in m.get("axes") or []]
            scale = 1.0
            for t in [
                *(m["datasets"][0].get("coordinateTransformations") or []),
                *(m.get("coordinateTransformations") or []),
            ]:
                if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
                    scale *= float(t["scale"][axes.index("Z")])
            zcal, _ = _calibration(scale, units[axes.index("Z")] if units else None, "OME-Zarr", path, None)
            if not zcal.calibrated or not cal.calibrated:
                return scale if not cal.calibrated else None
            return zcal.pixel_size * zcal.nm_per_unit() / cal.nm_per_unit()
    return None


# --------------------------------------------------------------------------------------------
# sidecar calibration of SEM images (Hitachi, JEOL)


def sidecar_calibration(path: str | os.PathLike, width: int | None = None, notes: list | None = None):
    """Read the calibration in the ``.txt`` file beside an SEM image (same stem), and its source.

    * **Hitachi** (S-4800, SU series, ...): ``PixelSize=`` in nanometres (section
      ``[SemImageFile]``).
    * **JEOL** (``$CM_FORMAT JEOL-SEM``): the scale bar, ``$$SM_MICRON_BAR`` pixels long and
      ``$$SM_MICRON_MARKER`` (``1um``, ``500nm``) in length, at the resolution of
      ``$CM_FULL_SIZE`` (rescaled to the image's ``width`` when that differs).

    Returns ``None`` when there is no sidecar or it holds neither.
    """
    path = Path(path)
    side = None
    for cand in (path.with_suffix(SIDECAR_SUFFIX), path.with_suffix(SIDECAR_SUFFIX.upper())):
        if cand.is_file() and cand != path:
            side = cand
            break
    if side is None:
        return None
    try:
        text = side.read_bytes()[:1_000_000].decode("latin-1")
    except OSError:
        return None
    hit = re.search(r"^\s*PixelSize\s*=\s*([0-9.eE+-]+)\s*$", text, re.M)
    if hit and ("[SemImageFile]" in text or "Hitachi" in text or "InstructName" in text):
        cal, src = _calibration(hit.group(1), "nm", f"Hitachi sidecar {side.name}", path, notes)
        return (cal, src) if cal.calibrated else None
    bar = re.search(r"^\s*\$\$?SM_MICRON_BAR\s+([0-9.]+)", text, re.M)
    marker = re.search(r"^\s*\$\$?SM_MICRON_MARKER\s+([0-9.]+)\s*([A-Za-zµμ]+)", text, re.M)
    if bar and marker and float(bar.group(1)) > 0:
        unit = {"um": "µm", "nm": "nm", "mm": "mm", "μm": "µm"}.get(marker.group(2), marker.group(2))
        size = float(marker.group(1)) / float(bar.group(1))
        full = re.search(r"^\s*\$CM_FULL_SIZE\s+(\d+)\s+(\d+)", text, re.M)
        if full and width and int(full.group(1)) != int(width) and int(width) > 0:
            size *= int(full.group(1)) / int(width)
        cal, src = _calibration(size, unit, f"JEOL sidecar {side.name}", path, notes)
        return (cal, src) if cal.calibrated else None
    return None


def describe() -> dict[str, str]:
    """List the EM formats and the library that reads each, for messages and docs."""
    return {
        "DM3/DM4": "rosettasciio",
        "EMD (Velox, Berkeley)": "rosettasciio",
        "MRC/MRCS/REC": "mrcfile",
        "OME-Zarr": "zarr",
        "OME-TIFF, ImageJ, Zeiss, FEI TIFF": "tifffile (particleseg.io)",
        "Hitachi/JEOL .txt sidecar": "particleseg.formats",
    }


__all__ = [
    "SUFFIXES",
    "handles",
    "is_container",
    "read",
    "read_calibration",
    "sidecar_calibration",
    "z_spacing",
    "describe",
]
