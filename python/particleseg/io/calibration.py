"""Spatial calibration: length units, :class:`Calibration`, and the calibration in a file's metadata.

Calibration is taken, in this order, from ImageJ metadata, OME-XML, the Zeiss SEM tag
(``CZ_SEM``) and the FEI/Thermo Fisher SEM tag; electron-microscope formats
(:mod:`particleseg.formats`) and sidecar text files (Hitachi, JEOL) bring their own.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .. import formats
from ..errors import InputError, ParticlesegWarning

# Unit spellings met in TIFF metadata, mapped to a canonical name and its size in nanometres.
_UNITS = {
    "nm": ("nm", 1.0),
    "nanometer": ("nm", 1.0),
    "nanometre": ("nm", 1.0),
    "um": ("µm", 1e3),
    "µm": ("µm", 1e3),
    "μm": ("µm", 1e3),  # Greek mu, not the micro sign
    "micron": ("µm", 1e3),
    "microns": ("µm", 1e3),
    "micrometer": ("µm", 1e3),
    "micrometre": ("µm", 1e3),
    "mm": ("mm", 1e6),
    "a": ("Å", 0.1),
    "å": ("Å", 0.1),
    "angstrom": ("Å", 0.1),
    "m": ("m", 1e9),
    "px": ("px", None),
    "pixel": ("px", None),
    "pixels": ("px", None),
}


def canonical_unit(unit: str) -> str:
    """Return the canonical spelling of a length unit (``nm``, ``µm``, ``mm``, ``Å``, ``m``, ``px``).

    Raises
    ------
    ValueError
        If the unit is not a known length unit.
    """
    # ImageJ sometimes stores the micro sign as the escape text "\\u00B5".
    key = unit.strip().lower().replace("\\u00b5", "µ")
    if key not in _UNITS:
        raise ValueError(f"unknown length unit {unit!r} (use nm, um, mm, A or px)")
    return _UNITS[key][0]


@dataclass(frozen=True)
class Calibration:
    """Pixel size of an image: ``pixel_size`` units per pixel (square pixels).

    An uncalibrated image has ``unit == "px"`` and ``pixel_size == 1``.
    """

    pixel_size: float = 1.0
    unit: str = "px"

    def __post_init__(self):
        """Canonicalize the unit and check that the pixel size is a positive finite number."""
        object.__setattr__(self, "unit", canonical_unit(self.unit))
        if not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise ValueError(f"pixel size must be a positive number, got {self.pixel_size}")

    @property
    def calibrated(self) -> bool:
        """Whether the image has a length unit (not ``"px"``)."""
        return self.unit != "px"

    def nm_per_unit(self) -> float | None:
        """Nanometres per unit, or None for an uncalibrated image."""
        return _UNITS[self.unit.lower()][1]

    def scaled(self, factor: float) -> "Calibration":
        """Calibration of the image resampled by ``factor`` (``factor > 1`` enlarges)."""
        return Calibration(self.pixel_size / factor, self.unit)


def calibration_from_width(image_width: float, width_px: int, unit: str = "nm") -> Calibration:
    """Calibration from the width of the whole field of view, as SEM data bars state it."""
    if not image_width > 0:
        raise ValueError(f"image width must be positive, got {image_width}")
    return Calibration(image_width / width_px, unit)


def _calibration_notes(path: Path, notes: list[tuple[str, str]], allow_nonsquare: bool, strict: bool = False) -> None:
    """Raise or warn about the notes on a file's calibration.

    Raise for pixels that are not square (unless allowed) and, with ``strict``, for ignored
    metadata; else warn about it.
    """
    for kind, text in notes:
        if kind == "nonsquare" and not allow_nonsquare:
            raise InputError(f"{path}: {text}; give --pixel-size or --image-width to measure it with square pixels")
        if kind == "invalid" and strict:
            text = text.replace("ignored the calibration", "invalid calibration").replace(
                " calibration ignored (", " calibration invalid ("
            )
            text = text.split("; using ")[0].split("; measuring ")[0]
            raise InputError(
                f"{path}: {text} (--strict); fix the metadata, or give --pixel-size or --image-width, "
                "or leave out --strict to measure it without that metadata"
            )
    for kind, text in notes:
        message = f"{path}: {text}" + ("; measured with the pixel size given" if kind == "nonsquare" else "")
        warnings.warn(message, ParticlesegWarning, stacklevel=3)


def require_file(path: Path, what: str = "image") -> None:
    """Raise one clear :class:`InputError` unless ``path`` is a regular file.

    A missing path is "file not found"; a folder, a pipe, a socket or a device gets its own
    line and is never opened (reading a pipe nobody writes to would wait forever). ``what``
    names the file's role.
    """
    if path.is_file():
        return
    if not path.exists():
        raise InputError(f"{path}: {what} file not found")
    kind = "is a folder" if path.is_dir() else "not a regular file (a pipe, socket or device)"
    raise InputError(f"{path}: {kind}, expected {'an' if what[0] in 'aeiou' else 'a'} {what} file")


def read_calibration(
    path: str | os.PathLike, allow_nonsquare: bool = False, strict: bool = False
) -> tuple[Calibration, str]:
    """Read the calibration in an image file's metadata and where it came from.

    The calibration is read exactly as :func:`read_image` reads it, without reading the pixels;
    where it came from is one of ``ImageJ``, ``OME``, ``Zeiss SEM``, ``FEI/Thermo Fisher SEM``,
    or ``""`` (uncalibrated, also for PNG and JPEG). Unusable metadata gives a note (an error
    with ``strict``), pixels that are not square an error (see :func:`read_image`).

    Raises
    ------
    InputError
        The file is missing or not a readable TIFF, or its pixels are not square.
    """
    import logging

    import tifffile

    path = Path(path)
    if formats.handles(path):  # DM3/DM4, EMD, MRC, OME-Zarr (particleseg.formats)
        em_notes: list[tuple[str, str]] = []
        em_found = formats.read_calibration(path, em_notes)
        _calibration_notes(path, em_notes, allow_nonsquare, strict)
        return em_found
    require_file(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return formats.sidecar_calibration(path) or (Calibration(), "")
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    notes: list[tuple[str, str]] = []
    try:
        with tifffile.TiffFile(path) as tif:
            found = _tiff_calibration_and_source(tif, notes)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read the metadata ({detail})") from None
    _calibration_notes(path, notes, allow_nonsquare, strict)
    return found if found[0].calibrated else formats.sidecar_calibration(path) or found


def _tiff_calibration(tif) -> Calibration:
    """Pixel size from ImageJ, OME, Zeiss or FEI metadata; uncalibrated if none is usable."""
    return _tiff_calibration_and_source(tif)[0]


def _tiff_calibration_and_source(tif, notes: list | None = None) -> tuple[Calibration, str]:
    """Return the first usable calibration of ImageJ, OME, Zeiss and FEI metadata, and its source.

    Unusable metadata (see :func:`read_image`) is skipped and, with ``notes``, reported there as
    ``("invalid", text)``; pixels that are not square as ``("nonsquare", text)``.
    """
    import re

    problems: list[tuple[str, str]] = []
    nonsquare: list[str] = []

    def usable(source: str, size, unit, height=None, tags=("", "")) -> Calibration | None:
        """``tags``: the names of the size's and the unit's tags (said in the notes)."""
        try:
            unit = canonical_unit(str(unit))
        except ValueError:
            problems.append((source, f"{tags[1]}: unknown length unit {str(unit)!r}"))
            return None
        try:
            size = float(size)
        except (TypeError, ValueError):
            problems.append((source, f"{tags[0]}: pixel size {size!r} is not a number"))
            return None
        if not (math.isfinite(size) and size > 0):
            problems.append((source, f"{tags[0]}: pixel size {size:g} {unit}"))
            return None
        cal = Calibration(size, unit)
        try:
            h = float(height) if height is not None else None
        except (TypeError, ValueError):
            h = None
        if cal.calibrated and h is not None and math.isfinite(h) and h > 0 and abs(h - size) > 1e-4 * max(h, size):
            nonsquare.append(f"pixels are not square ({size:.6g} x {h:.6g} {unit} in its {source} metadata)")
        return cal

    def size_of(resolution):
        num, den = resolution
        return den / num if num else math.inf

    def found(cal: Calibration, source: str) -> tuple[Calibration, str]:
        if notes is not None:
            instead = f"using its {source} metadata" if source else "measuring in pixels"
            notes.extend(
                ("invalid", f"ignored the calibration in its {s} metadata ({d}); {instead}") for s, d in problems
            )
            notes.extend(("nonsquare", text) for text in nonsquare[:1])
        return cal, source

    page = tif.pages.first
    ij = tif.imagej_metadata
    if ij and ij.get("unit") and "XResolution" in page.tags:
        x = page.tags["XResolution"].value
        y = page.tags["YResolution"].value if "YResolution" in page.tags else None
        if not x[0]:
            problems.append(("ImageJ", "XResolution: resolution 0 pixels per unit"))
        else:
            cal = usable("ImageJ", size_of(x), ij["unit"], size_of(y) if y else None, ("XResolution", "unit"))
            if cal is not None:
                return found(cal, "ImageJ")
    if tif.is_ome:
        xml = tif.ome_metadata or ""
        size = re.search(r'PhysicalSizeX="([^"]*)"', xml)
        height = re.search(r'PhysicalSizeY="([^"]*)"', xml)
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', xml)
        if size:
            cal = usable(
                "OME",
                size.group(1),
                unit.group(1) if unit else "µm",
                height.group(1) if height else None,
                ("PhysicalSizeX", "PhysicalSizeXUnit"),
            )
            if cal is not None:
                return found(cal, "OME")
    sem = tif.sem_metadata
    if sem and "ap_image_pixel_size" in sem:
        entry = sem["ap_image_pixel_size"]
        if len(entry) >= 3:
            cal = usable("Zeiss SEM", entry[1], entry[2], tags=("AP_IMAGE_PIXEL_SIZE", "AP_IMAGE_PIXEL_SIZE"))
            if cal is not None:
                return found(cal, "Zeiss SEM")
    fei = tif.fei_metadata
    if fei:
        section = "Scan" if fei.get("Scan", {}).get("PixelWidth") not in (None, "") else "EScan"
        scan = fei.get(section, {})
        width, height = scan.get("PixelWidth"), scan.get("PixelHeight")
        if width not in (None, ""):

            def metres(v):  # stored in metres
                return float(v) * 1e9 if isinstance(v, (int, float)) else v

            cal = usable(
                "FEI/Thermo Fisher SEM",
                metres(width),
                "nm",
                metres(height) if height not in (None, "") else None,
                (f"[{section}] PixelWidth", ""),
            )
            if cal is not None:
                return found(cal, "FEI/Thermo Fisher SEM")
    return found(Calibration(), "")
