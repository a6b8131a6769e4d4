"""NumPy arrays <-> ImageJ 1.x ``ImagePlus``, keeping the spatial calibration.

ImageJ 1.x holds 8-bit (``byte``, signed in Java), 16-bit (``short``, signed in Java) and 32-bit
float images; the pixels cross JPype as one bulk copy of a primitive array. Other NumPy types
are converted the way :func:`particleseg.io.write_tiff` writes them: bool -> 8-bit 0/255,
integers that fit -> 16-bit, wider integers and float64 -> 32-bit float.

Calibration: :class:`particleseg.io.Calibration` (square pixels, ``nm``/``µm``/``mm``/``Å``/
``px``) <-> ``ij.measure.Calibration`` (``pixelWidth``, ``pixelHeight``, unit).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io import Calibration, canonical_unit, read_calibration


def _j(name: str):
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    return scyjava.jimport(name)


def to_processor(plane: np.ndarray):
    """Convert a 2D array to an ImageJ ``ImageProcessor`` (Byte-, Short- or FloatProcessor)."""
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    a = np.asarray(plane)
    if a.ndim != 2:
        raise ValueError(f"expected a 2D plane, got shape {a.shape}")
    h, w = a.shape
    a = _ij_dtype(a)
    flat = np.ascontiguousarray(a).ravel()
    if a.dtype == np.uint8:
        return _j("ij.process.ByteProcessor")(w, h, jpype.JArray(jpype.JByte)(flat.view(np.int8)))
    if a.dtype == np.uint16:
        return _j("ij.process.ShortProcessor")(w, h, jpype.JArray(jpype.JShort)(flat.view(np.int16)), None)
    return _j("ij.process.FloatProcessor")(w, h, jpype.JArray(jpype.JFloat)(flat))


def _ij_dtype(a: np.ndarray) -> np.ndarray:
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype in (np.uint8, np.uint16, np.float32):
        return a
    if a.dtype.kind in "iu":
        if a.size == 0 or (a.min() >= 0 and a.max() < 65536):
            return a.astype(np.uint16)
        return a.astype(np.float32)
    if a.dtype.kind == "f":
        return a.astype(np.float32)
    raise InputError(f"cannot show an array of type {a.dtype} in ImageJ")


def to_imageplus(
    array: np.ndarray, calibration: Calibration | None = None, title: str = "image", z_spacing: float | None = None
):
    """Convert a ``(Y, X)`` image or ``(Z, Y, X)`` stack to an ``ImagePlus`` with its calibration."""
    a = np.asarray(array)
    if a.ndim == 2:
        imp = _j("ij.ImagePlus")(title, to_processor(a))
    elif a.ndim == 3:
        stack = _j("ij.ImageStack")(a.shape[2], a.shape[1])
        a = _ij_dtype(a)  # one type for every slice
        for z in range(a.shape[0]):
            stack.addSlice(f"{z + 1}", to_processor(a[z]))
        imp = _j("ij.ImagePlus")(title, stack)
        imp.setDimensions(1, a.shape[0], 1)
    else:
        raise InputError(f"{title}: cannot make an ImageJ image of shape {a.shape} (expected (Y, X) or (Z, Y, X))")
    set_calibration(imp, calibration or Calibration(), z_spacing)
    return imp


def set_calibration(imp, calibration: Calibration, z_spacing: float | None = None) -> None:
    """Set ``calibration`` as the ImagePlus' spatial calibration (pixels when uncalibrated).

    ``z_spacing`` is the slice distance of a stack (default: the pixel size).
    """
    cal = imp.getCalibration().copy()
    if calibration.calibrated:
        cal.pixelWidth = cal.pixelHeight = float(calibration.pixel_size)
        cal.pixelDepth = float(z_spacing or calibration.pixel_size)
        cal.setUnit("um" if calibration.unit == "µm" else calibration.unit)
    else:
        cal.pixelWidth = cal.pixelHeight = cal.pixelDepth = 1.0
        cal.setUnit("pixel")
    imp.setCalibration(cal)


#: ImageJ units that are no scale: none, pixels, and the inch of a TIFF's resolution tags
#: (microscopes write 1 pixel per inch, or a screen resolution)
NO_SCALE_UNITS = ("", "pixel", "pixels", "px", "inch", "inches", "in")


def _no_scale(imp) -> bool:
    cal = imp.getCalibration()
    return not cal.scaled() or str(cal.getUnit()).strip().lower() in NO_SCALE_UNITS


def has_scale(imp) -> bool:
    """Return whether the ImagePlus has a usable spatial calibration.

    That is a length unit we know (not blank, pixels or inches).
    """
    if _no_scale(imp):
        return False
    try:
        canonical_unit(str(imp.getCalibration().getUnit()))
    except ValueError:
        return False
    return True


def calibrate_from_file(imp, strict: bool = False) -> tuple[Calibration, str]:
    """Return the calibration to measure an ImagePlus in, and a line for the Log.

    The line is empty when the calibration is ImageJ's.

    An image without a usable ImageJ calibration (:func:`has_scale`; a microscope's TIFF opened
    in ImageJ has a blank unit or inches) gets the one in its file's microscope metadata (Zeiss,
    FEI/Thermo Fisher, OME, ImageJ), read by :func:`particleseg.io.read_calibration` as the
    command line reads it, and it is set on the image; without any, it is measured in pixels.
    A unit that is no length we know (set in Image > Properties) is an error unless the file has
    a calibration. Pixels that are not square, in ImageJ's scale or in the file's metadata, are
    an error (as on the command line): the user allows them only by setting a square scale.
    With ``strict``, metadata that cannot be used (zero or infinite size, unknown unit) is an
    error too, as ``--strict`` makes it on the command line.
    """
    if has_scale(imp):
        return get_calibration(imp), ""
    name = str(imp.getTitle())
    unit = str(imp.getCalibration().getUnit()).strip()
    what = f"unit {unit!r}" if unit and unit.lower() not in ("pixel", "pixels") else "no scale"
    fi = imp.getOriginalFileInfo()
    path = None
    same_size = fi is not None and (int(fi.width), int(fi.height)) == (int(imp.getWidth()), int(imp.getHeight()))
    if same_size and fi.fileName is not None and fi.directory is not None:  # not resized since it was read
        path = str(fi.directory) + str(fi.fileName)
    if path:
        try:
            cal, source = read_calibration(path, strict=strict)
        except InputError as exc:
            if "pixels are not square" in str(exc):  # as on the command line: an error, never pixels
                raise InputError(
                    str(exc).split("; give --pixel-size")[0] + "; set a square scale in Image > "
                    "Properties or Analyze > Set Scale to measure it"
                ) from None
            if strict and "(--strict)" in str(exc):
                raise InputError(
                    str(exc).split(" (--strict)")[0] + " (strict); fix the metadata, set the scale in "
                    "Image > Properties or Analyze > Set Scale, or leave strict off"
                ) from None
            cal, source = Calibration(), ""
        if cal.calibrated:
            set_calibration(imp, cal)
            return cal, (
                f"{name}: {what} in ImageJ; {cal.pixel_size:g} {cal.unit} per pixel from the file's "
                f"{source} metadata, set as the image's scale"
            )
    if not _no_scale(imp):
        get_calibration(imp, name)  # raises: a unit we cannot measure in, and nothing better
    return Calibration(), (
        f"{name}: {what} in ImageJ and no scale in the file's metadata; measuring in pixels "
        "(set the scale with Analyze > Set Scale or Image > Properties)"
    )


def get_calibration(imp, name: str | None = None) -> Calibration:
    """Return the ImagePlus' calibration as a :class:`Calibration` (square pixels required).

    Pixels when it has none usable (:func:`has_scale`).
    """
    cal = imp.getCalibration()
    name = name or str(imp.getTitle())
    unit = str(cal.getUnit())
    if _no_scale(imp):
        return Calibration()
    pw, ph = float(cal.pixelWidth), float(cal.pixelHeight)
    if abs(pw - ph) > 1e-6 * max(pw, ph):
        raise InputError(
            f"{name}: pixels are not square ({pw:g} x {ph:g} {unit}); set equal sizes in Image > Properties"
        )
    try:
        return Calibration(pw, canonical_unit(unit))
    except ValueError:
        raise InputError(
            f"{name}: unit {unit!r} is not a length ImageJ's scale can be measured in here; "
            "use nm, µm, mm or Å in Image > Properties"
        ) from None


_GRAY = {0: "8-bit", 1: "16-bit", 2: "32-bit"}
_OTHER = {3: "8-bit color (indexed)", 4: "RGB"}


def from_processor(ip) -> np.ndarray:
    """Pixels of an ImageProcessor as a NumPy array (uint8, uint16 or float32)."""
    h, w = int(ip.getHeight()), int(ip.getWidth())
    pixels = np.array(ip.getPixels(), copy=True)
    if pixels.dtype == np.int8:
        pixels = pixels.view(np.uint8)
    elif pixels.dtype == np.int16:
        pixels = pixels.view(np.uint16)
    elif pixels.dtype == np.int32:  # ColorProcessor: packed RGB
        rgb = pixels.view(np.uint8).reshape(h, w, 4)
        return rgb[..., [2, 1, 0]].copy()
    return pixels.reshape(h, w)


def from_imageplus(imp, allow_stack: bool = True, allow_rgb: bool = False) -> tuple[np.ndarray, Calibration]:
    """Pixels and calibration of an ImagePlus: ``(Y, X)`` or, for a stack, ``(Z, Y, X)``.

    Raises
    ------
    InputError
        For RGB/indexed-color images (unless ``allow_rgb``, which gives ``(Y, X, 3)`` uint8),
        for stacks when ``allow_stack`` is False, for multi-channel hyperstacks.
    """
    name = str(imp.getTitle())
    itype = int(imp.getType())
    if itype not in _GRAY and not (allow_rgb and itype == 4):
        kind = _OTHER.get(itype, f"type {itype}")
        raise InputError(
            f"{name}: is an {kind} image; convert it to a gray image first (Image > Type > 8-bit or 32-bit)"
        )
    n = int(imp.getStackSize())
    if int(imp.getNChannels()) > 1:
        raise InputError(
            f"{name}: has {imp.getNChannels()} channels; split them first (Image > Color > Split Channels)"
        )
    if n > 1 and not allow_stack:
        raise InputError(
            f"{name}: is a stack of {n} slices; this command works on one 2D image "
            "(Image > Duplicate... one slice, or use Batch Segment Folder...)"
        )
    cal = get_calibration(imp, name)
    if n == 1:
        return from_processor(imp.getProcessor()), cal
    stack = imp.getStack()
    return np.stack([from_processor(stack.getProcessor(z + 1)) for z in range(n)]), cal
