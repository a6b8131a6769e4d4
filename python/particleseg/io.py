"""Reading images with their spatial calibration, and writing outputs that ImageJ and Fiji open.

Readers return gray-value arrays, ``(Y, X)`` for an image and ``(Z, Y, X)`` for a stack, in
their original data type (RGB is converted to float32 luminance), together with a
:class:`Calibration`. Calibration is taken, in this order, from ImageJ metadata, OME-XML, the
Zeiss SEM tag (``CZ_SEM``) and the FEI/Thermo Fisher SEM tag.

Writers never modify inputs, write atomically (a temporary file in the target folder, then an
atomic rename) and refuse to replace an existing file unless ``overwrite=True``.
"""

from __future__ import annotations

import errno
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from . import formats
from .errors import InputError, OutputExistsError, ParticlesegError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")

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
        object.__setattr__(self, "unit", canonical_unit(self.unit))
        if not (math.isfinite(self.pixel_size) and self.pixel_size > 0):
            raise ValueError(f"pixel size must be a positive number, got {self.pixel_size}")

    @property
    def calibrated(self) -> bool:
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


# --------------------------------------------------------------------------------------------
# Reading


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files (non-recursive for folders)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not formats.is_container(p):  # an OME-Zarr store is one image
            found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES + formats.SUFFIXES))
        else:
            found.append(p)
    return found


def read_image(path: str | os.PathLike, channel_axis_ok: bool = False,
               allow_nonsquare: bool = False, strict: bool = False) -> tuple[np.ndarray, Calibration]:
    """Read a gray-value image or stack and its calibration.

    Parameters
    ----------
    path : path-like
        TIFF (including ImageJ hyperstacks and OME-TIFF), PNG or JPEG file, or an electron
        microscope's DM3/DM4, EMD, MRC file or OME-Zarr store (:mod:`particleseg.formats`).
    channel_axis_ok : bool
        If True, a multi-channel image is returned as ``(C, Y, X)`` (or ``(Z, C, Y, X)``)
        instead of raising. Used by the multi-channel workflows.
    allow_nonsquare : bool
        Metadata with pixels that are not square is an error (lengths and shapes would be
        wrong) unless this is True (the caller gives its own, square, pixel size); then a note.
    strict : bool
        Metadata that cannot be used is an error (``--strict``) instead of a note.

    Calibration policy: metadata that cannot be used (zero, negative, infinite or NaN pixel
    size or resolution, a unit that is no length) is ignored with one note
    (:class:`~particleseg.errors.ParticlesegWarning`) naming the file and the metadata (tag),
    and the image is measured with the next usable source, else in pixels; with ``strict`` it
    is an :class:`~particleseg.errors.InputError` instead.

    Returns
    -------
    image : ndarray
        ``(Y, X)`` or ``(Z, Y, X)``. RGB(A) images are converted to float32 luminance
        (ITU-R BT.709 weights, as :func:`skimage.color.rgb2gray`).
    calibration : Calibration

    Raises
    ------
    InputError
        One line naming the file and the problem: missing, unreadable or truncated file,
        unsupported dimensions, NaNs, an empty or constant image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir() and not formats.is_container(path):
        raise InputError(f"{path}: is a folder, expected an image file")
    suffix = path.suffix.lower()
    notes: list[tuple[str, str]] = []
    if formats.handles(path):  # DM3/DM4, EMD, MRC, OME-Zarr (particleseg.formats)
        data, axes, calibration, _ = formats.read(path, notes)
    try:
        with warnings.catch_warnings():
            # tifffile reports truncated strips as warnings and fills with zeros; treat as errors
            warnings.simplefilter("error")
            # but not the unclosed files of a failed reader (raised in __del__ they print tracebacks)
            warnings.simplefilter("ignore", ResourceWarning)
            if formats.handles(path):
                pass
            elif suffix in (".tif", ".tiff"):
                data, axes, calibration = _read_tiff(path, notes)
            elif suffix in (".png", ".jpg", ".jpeg"):
                data, axes, calibration = _read_plain(path)
            else:
                raise InputError(f"{path}: unsupported file type {suffix!r} (use TIFF, PNG, JPEG, DM3/DM4, EMD, "
                                 "MRC or OME-Zarr)")
            side = None if calibration.calibrated or formats.handles(path) else \
                formats.sidecar_calibration(path, data.shape[axes.index("X")], notes)  # Hitachi/JEOL .txt
            calibration = side[0] if side else calibration
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read image ({detail})") from None
    _calibration_notes(path, notes, allow_nonsquare, strict)
    data = _to_gray(path, data, axes, channel_axis_ok)
    check_image(data, path)
    return data, calibration


def _calibration_notes(path: Path, notes: list[tuple[str, str]], allow_nonsquare: bool, strict: bool = False) -> None:
    """Raise for pixels that are not square (unless allowed) and, with ``strict``, for ignored
    metadata; else warn about it."""
    from .errors import ParticlesegWarning

    for kind, text in notes:
        if kind == "nonsquare" and not allow_nonsquare:
            raise InputError(f"{path}: {text}; give --pixel-size or --image-width to measure it with square pixels")
        if kind == "invalid" and strict:
            text = text.replace("ignored the calibration", "invalid calibration").replace(" calibration ignored (", " calibration invalid (")
            text = text.split("; using ")[0].split("; measuring ")[0]
            raise InputError(f"{path}: {text} (--strict); fix the metadata, or give --pixel-size or --image-width, "
                             "or leave out --strict to measure it without that metadata")
    for kind, text in notes:
        message = f"{path}: {text}" + ("; measured with the pixel size given" if kind == "nonsquare" else "")
        warnings.warn(message, ParticlesegWarning, stacklevel=3)


def read_array(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an image file (TIFF, PNG, JPEG, or an EM format of :mod:`particleseg.formats`) as
    a squeezed array, without the checks of
    :func:`read_image` (a mask or proposal may be empty, a label image is not gray levels).
    RGB(A) data whose channels are equal is reduced to one channel; ``what`` names the file's
    role in error messages.

    Raises
    ------
    InputError
        Missing or unreadable file.
    """
    import warnings

    path = Path(path)
    if formats.handles(path):  # DM3/DM4, EMD, MRC, OME-Zarr: one reader for every command
        if not path.exists():
            raise InputError(f"{path}: {what} file not found")
        return np.squeeze(np.asarray(formats.read(path)[0]))
    if not path.is_file():
        raise InputError(f"{path}: {what} file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix.lower() in (".tif", ".tiff"):
                data = _read_tiff(path)[0]
            else:
                data = _imread_pillow(path)
    except InputError as exc:
        raise InputError(str(exc).replace("cannot read image", f"cannot read {what}")) from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read {what} ({detail})") from None
    data = np.squeeze(np.asarray(data))
    if data.ndim == 3 and data.shape[-1] == 2 and path.suffix.lower() not in (".tif", ".tiff"):
        data = data[..., 0]  # gray + alpha PNG: the gray values
    if data.ndim == 3 and data.shape[-1] in (3, 4) and np.all(data[..., :3] == data[..., :1]):
        data = data[..., 0]  # gray values saved as RGB(A)
    return data


def _read_tiff(path: Path, notes: list | None = None):
    import logging

    import tifffile

    # tifffile logs damaged structures and carries on; we report them as one error instead
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    with tifffile.TiffFile(path) as tif:
        if not tif.series or not len(tif.pages):
            raise InputError(f"{path}: cannot read image (not a valid TIFF, or truncated)")
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        calibration = _tiff_calibration_and_source(tif, notes)[0]
    return data, axes, calibration


def read_calibration(path: str | os.PathLike, allow_nonsquare: bool = False,
                     strict: bool = False) -> tuple[Calibration, str]:
    """The calibration in an image file's metadata, exactly as :func:`read_image` reads it,
    without reading the pixels; and where it came from: ``ImageJ``, ``OME``, ``Zeiss SEM``,
    ``FEI/Thermo Fisher SEM``, or ``""`` (uncalibrated, also for PNG and JPEG). Unusable
    metadata gives a note (an error with ``strict``), pixels that are not square an error (see
    :func:`read_image`).

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
    if not path.is_file():
        raise InputError(f"{path}: file not found")
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
    """The first usable calibration of ImageJ, OME, Zeiss and FEI metadata, and its source.
    Unusable metadata (see :func:`read_image`) is skipped and, with ``notes``, reported there as
    ``("invalid", text)``; pixels that are not square as ``("nonsquare", text)``."""
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
            notes.extend(("invalid", f"ignored the calibration in its {s} metadata ({d}); {instead}") for s, d in problems)
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
            cal = usable("OME", size.group(1), unit.group(1) if unit else "µm", height.group(1) if height else None,
                         ("PhysicalSizeX", "PhysicalSizeXUnit"))
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
            metres = (lambda v: float(v) * 1e9 if isinstance(v, (int, float)) else v)  # stored in metres
            cal = usable("FEI/Thermo Fisher SEM", metres(width), "nm", metres(height) if height not in (None, "") else None,
                         (f"[{section}] PixelWidth", ""))
            if cal is not None:
                return found(cal, "FEI/Thermo Fisher SEM")
    return found(Calibration(), "")


def _imread_pillow(path: Path) -> np.ndarray:
    """A PNG or JPEG file through Pillow only (imageio's plugin search would try DICOM and other
    readers on a damaged file and report theirs instead)."""
    import imageio.v3 as iio
    from PIL import UnidentifiedImageError

    try:
        return np.asarray(iio.imread(path, plugin="pillow"))
    except (UnidentifiedImageError, OSError) as exc:
        if isinstance(exc, UnidentifiedImageError) or "can not handle" in str(exc):
            raise InputError(f"{path}: cannot read image (not a valid {path.suffix.lstrip('.').upper() or 'image'} "
                             "file, or damaged)") from None
        raise


def _read_plain(path: Path):
    data = _imread_pillow(path)
    if data.ndim == 3 and data.shape[-1] in (2, 3, 4):  # gray + alpha, RGB, RGBA
        axes = "YXS"
    elif data.ndim == 2:
        axes = "YX"
    else:
        axes = "QYX"[-data.ndim:] if data.ndim <= 3 else "?" * data.ndim
    return data, axes, Calibration()


def _to_gray(path: Path, data: np.ndarray, axes: str, channel_axis_ok: bool) -> np.ndarray:
    """Drop singleton axes, convert RGB samples to luminance, and check the layout."""
    keep = [i for i, n in enumerate(data.shape) if n > 1 or axes[i] in "YX"]
    data = data.reshape([data.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if "S" in axes and data.shape[axes.index("S")] == 2:  # gray + alpha: the gray values
        data = np.take(data, 0, axis=axes.index("S"))
        axes = axes.replace("S", "")
    if "S" in axes and data.shape[axes.index("S")] in (3, 4):
        data = np.moveaxis(data, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
        rgb = data[..., :3].astype(np.float32)
        data = rgb @ np.array([0.2125, 0.7154, 0.0721], np.float32)
        axes = axes[:-1]
    if "C" in axes:
        if not channel_axis_ok:
            n = data.shape[axes.index("C")]
            raise InputError(
                f"{path}: has {n} channels; this command expects a single-channel image "
                "(split the channels first, or use a multi-channel model)"
            )
    if not axes.endswith("YX"):
        raise InputError(f"{path}: unsupported axis order {axes!r} (expected ...YX)")
    if data.ndim not in (2, 3, 4) or (data.ndim == 4 and "C" not in axes):
        raise InputError(f"{path}: unsupported dimensions {data.shape} (axes {axes}); expected an image or a stack")
    return data


def check_image(image: np.ndarray, name: str | os.PathLike = "image", min_size: int = 16) -> None:
    """Raise :class:`InputError` if an array cannot be segmented.

    Checks: numeric data type, at least ``min_size`` pixels along Y and X, no NaN or infinite
    values, and not constant.
    """
    if image.dtype.kind not in "uifb":
        raise InputError(f"{name}: unsupported data type {image.dtype}")
    if image.ndim < 2 or min(image.shape[-2:]) < min_size:
        raise InputError(f"{name}: image of shape {image.shape} is too small (need at least {min_size}x{min_size} pixels)")
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image)
        if bad.any():
            raise InputError(f"{name}: contains {int(bad.sum())} NaN or infinite pixel values")
    lo, hi = image.min(), image.max()
    if lo == hi:
        raise InputError(f"{name}: image is constant (every pixel is {lo}); nothing to segment")


# --------------------------------------------------------------------------------------------
# Writing


def check_outputs(paths: Sequence[str | os.PathLike], overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if any of ``paths`` exists and ``overwrite`` is False."""
    if overwrite:
        return
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]}: output exists{more}; use --overwrite to replace it")


def check_output_folder(folder: str | os.PathLike, need_bytes: int = 0) -> Path:
    """Before any work: ``folder`` is a folder or can be made, files can be created in it, and
    it has at least ``need_bytes`` free. Makes the folder.

    Raises
    ------
    OutputError
        One line: ``OUT: is a file, not a folder``, ``OUT: cannot create the folder (...)``,
        ``OUT: not writable``, ``OUT: not enough free space (...)``.
    """
    import shutil

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; give a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OutputError(describe_os_error(exc, folder)) from None
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            raise OutputError(f"{folder}: cannot create the folder (a file is in its path)") from None
        raise OutputError(f"{folder}: cannot create the folder ({exc.strerror or exc})") from None
    try:  # writable? (permissions alone do not say it: root, read-only mounts, ACLs)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.tmp{os.getpid()}-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, folder)) from None
    if need_bytes:
        free = shutil.disk_usage(folder).free
        if free < need_bytes:
            raise OutputError(f"{folder}: not enough free space ({_mb(free)} free, the outputs need at least "
                              f"{_mb(need_bytes)})")
    return folder


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def image_pixels(path: str | os.PathLike) -> int:
    """Number of gray values in an image file (all slices), from its header; 0 if unknown."""
    import logging

    path = Path(path)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _image_pixels(path)
    except Exception:  # noqa: BLE001 - an unreadable file is reported when it is read
        return 0


def _image_pixels(path: Path) -> int:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            n = int(np.prod(series.shape))
            if "S" in series.axes:
                n //= series.shape[series.axes.index("S")]
            return n
    from PIL import Image

    with Image.open(path) as im:
        return int(im.size[0] * im.size[1] * getattr(im, "n_frames", 1))


def current_umask() -> int:
    """The process's file-creation mask (read without changing it where the OS allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: str | os.PathLike) -> None:
    """Give a file made by :func:`tempfile.mkstemp` (mode 0600) or a folder made by
    :func:`tempfile.mkdtemp` (0700) the mode a plain ``open``/``mkdir`` would have given it:
    0666 (files) or 0777 (folders) less the umask."""
    path = Path(path)
    if path.exists():
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~current_umask())


class OutputError(ParticlesegError, OSError):
    """An output cannot be written (disk full, folder not writable, not a folder): one line
    naming the output folder and the final file, never a temporary file."""


def describe_os_error(exc: OSError, folder: str | os.PathLike, name: str | None = None) -> str:
    """One line for an OS error while writing ``name`` into ``folder``:
    ``OUT: disk full writing NAME``, ``OUT: not writable``, ``OUT: cannot write NAME (cause)``."""
    what = f" writing {name}" if name else ""
    text = str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) or ("requested and" in text and "written" in text):
        return f"{folder}: disk full{what}"  # numpy's tofile says "786432 requested and 102232 written"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{folder}: not writable" + (" (read-only file system)" if exc.errno == errno.EROFS else "")
    if exc.errno == errno.ENOTDIR:
        return f"{folder}: is not a folder"
    cause = exc.strerror or (text.splitlines()[0] if text else type(exc).__name__)
    return f"{folder}: cannot write {name or 'there'} ({cause})"


#: temporary files of :func:`write_atomic`: ``.STEM.tmpPID-XXXXXXXX.SUFFIX`` (the process id
#: lets a later run remove those of a killed run, never those of a running one)
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp(?P<pid>\d+)-[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")


_OLD_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")


def _temp_prefix(path: Path) -> str:
    return f".{path.stem}.tmp{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def stale_temporaries(folder: str | os.PathLike, names: Iterable[str] = ()) -> list[Path]:
    """The temporary files :func:`write_atomic` left in ``folder`` when its process was killed
    (``kill -9``, power cut): those whose process no longer runs; and, for the final file names
    in ``names``, those of earlier versions (``.STEM.XXXXXXXX.SUFFIX``, no process id)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set(names)
    found = []
    for entry in folder.iterdir():
        if not entry.name.startswith(".") or not entry.is_file():
            continue
        m = _TEMP_NAME.match(entry.name)
        old = _OLD_TEMP_NAME.match(entry.name)
        if (m and not _pid_alive(int(m["pid"]))) or (old and old["stem"] + (old["suffix"] or "") in names):
            found.append(entry)
    return sorted(found)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] = ()) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``folder``; returns what was removed."""
    removed = []
    for p in stale_temporaries(folder, names):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def write_atomic(path: str | os.PathLike, write: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one atomic rename.

    A reader never sees a half-written file, and an interrupted run leaves no partial output
    (a run killed with ``kill -9`` leaves its temporary file, which
    :func:`remove_stale_temporaries` recognises). The file gets the permissions the umask gives
    new files (not the 0600 of a temporary file).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is False.
    OutputError
        An OS error (disk full, not writable, ...), as one line naming the folder and
        ``path``'s name, never the temporary file.
    """
    path = Path(path)
    check_outputs([path], overwrite)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=path.suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(tmp)
        write(tmp)
        respect_umask(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, (OutputError, OutputExistsError)):
            raise
        raise OutputError(describe_os_error(exc, path.parent, path.name)) from None
    finally:
        if tmp is not None and tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return path


def _imagej_unit(unit: str) -> str:
    # ImageJ's TIFF reader understands "micron" and turns it into µm; the description is ASCII.
    return {"µm": "micron", "Å": "angstrom", "px": "pixel"}.get(unit, unit)


def write_tiff(
    path: str | os.PathLike,
    data: np.ndarray,
    calibration: Calibration | None = None,
    overwrite: bool = False,
    z_spacing: float | None = None,
) -> Path:
    """Write an ImageJ-compatible TIFF (2D image or ``(Z, Y, X)`` stack) with its calibration.

    ImageJ reads 8-bit, 16-bit and 32-bit float images; other types are converted: integers
    that fit in uint16 become uint16, wider integers become float32, booleans become 0/255 uint8.
    """
    import tifffile

    data = np.asarray(data)
    if data.dtype == bool:
        data = data.astype(np.uint8) * 255
    elif data.dtype.kind in "iu" and data.dtype not in (np.uint8, np.uint16):
        data = data.astype(np.uint16 if data.size == 0 or (data.min() >= 0 and data.max() < 65536) else np.float32)
    elif data.dtype.kind == "f" and data.dtype != np.float32:
        data = data.astype(np.float32)
    calibration = calibration or Calibration()
    metadata = {"unit": _imagej_unit(calibration.unit)}
    if data.ndim == 3:
        metadata["axes"] = "ZYX"
        if z_spacing:
            metadata["spacing"] = z_spacing
    resolution = (1.0 / calibration.pixel_size, 1.0 / calibration.pixel_size)

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, data, imagej=True, resolution=resolution, metadata=metadata)

    return write_atomic(path, write, overwrite)


def write_csv(path: str | os.PathLike, table, overwrite: bool = False) -> Path:
    """Write a pandas DataFrame as CSV (UTF-8, no index), atomically."""
    return write_atomic(path, lambda tmp: table.to_csv(tmp, index=False), overwrite)


def roi_region(mask: np.ndarray) -> np.ndarray:
    """The pixels inside the traced outline of a binary region (see :func:`trace_outline`):
    its largest 8-connected component with the holes filled.

    This is the region ImageJ measures for the traced polygon ROI of the particle.

    Examples
    --------
    >>> m = np.array([[1, 1, 1, 0, 0],
    ...               [1, 0, 1, 0, 1],
    ...               [1, 1, 1, 0, 0]], bool)
    >>> roi_region(m).astype(int)
    array([[1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0]])
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        mask = lab == (np.argmax(sizes) + 1)
    return ndi.binary_fill_holes(mask)


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Outline of a binary region along pixel edges, as ImageJ's wand traces it.

    Returns the vertices (x, y) of the outer boundary of the largest 8-connected component,
    in pixel-corner coordinates, clockwise as displayed (y down), with collinear
    vertices removed. The polygon encloses the pixels of :func:`roi_region`.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros((0, 2), np.int32)
    mask = roi_region(mask)
    p = np.pad(mask, 1)
    # Directed boundary edges, clockwise as displayed, so the region lies to the right of each
    # step. Corner (x, y) is the top-left corner of pixel (y, x).
    y, x = np.nonzero(p[1:-1, 1:-1])
    y = y + 1
    x = x + 1
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(a, b):
        for s, e in zip(zip(*a), zip(*b)):
            nxt.setdefault(s, []).append(e)

    up, down, left, right = ~p[y - 1, x], ~p[y + 1, x], ~p[y, x - 1], ~p[y, x + 1]
    add((x[up], y[up]), (x[up] + 1, y[up]))                         # top edge, left to right
    add((x[down] + 1, y[down] + 1), (x[down], y[down] + 1))         # bottom edge, right to left
    add((x[left], y[left] + 1), (x[left], y[left]))                 # left edge, bottom to top
    add((x[right] + 1, y[right]), (x[right] + 1, y[right] + 1))     # right edge, top to bottom
    # Start at the top-left-most corner, which lies on the outer boundary.
    start = min(nxt, key=lambda c: (c[1], c[0]))
    path = [start]
    prev_dir = (1, 0)
    cur = start
    while True:
        options = nxt[cur]
        if len(options) == 1:
            nb = options[0]
        else:
            # Two pixels touch only at this corner: take the turn that keeps them one region
            # (8-connectivity, as ImageJ's wand), which is the left turn as displayed.
            def turn(o):
                d = (o[0] - cur[0], o[1] - cur[1])
                return prev_dir[0] * d[1] - prev_dir[1] * d[0]

            nb = min(options, key=turn)
        options.remove(nb)
        prev_dir = (nb[0] - cur[0], nb[1] - cur[1])
        cur = nb
        if cur == start:
            break
        path.append(cur)
    pts = np.array(path, np.int32) - 1  # undo padding
    # Drop vertices in the middle of straight runs.
    prev = np.roll(pts, 1, axis=0)
    nxt_pts = np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt_pts[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt_pts[:, 0] - pts[:, 0])
    return pts[cross != 0]


def label_outlines(labels: np.ndarray, ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Pixel-edge outline (see :func:`trace_outline`) of each labelled particle."""
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    slices = ndi.find_objects(labels)
    wanted = set(ids) if ids is not None else None
    out = {}
    for i, sl in enumerate(slices, start=1):
        if sl is None or (wanted is not None and i not in wanted):
            continue
        poly = trace_outline(labels[sl] == i)
        out[i] = poly + np.array([sl[1].start, sl[0].start], np.int32)
    return out


def write_rois(
    path: str | os.PathLike,
    labels: np.ndarray,
    ids: Iterable[int] | None = None,
    overwrite: bool = False,
    slice_index: np.ndarray | None = None,
) -> Path:
    """Write the particles of a label image as an ImageJ ROI set (a ``.zip`` for the ROI Manager).

    Each particle becomes a traced polygon ROI named ``particle-<label>``. For a ``(Z, Y, X)``
    label stack, ROIs carry their slice position.
    """
    import zipfile

    import roifile

    labels = np.asarray(labels)
    stack = labels if labels.ndim == 3 else labels[None]
    rois = []
    for z, plane in enumerate(stack):
        for lab, poly in label_outlines(plane, ids).items():
            roi = roifile.ImagejRoi.frompoints(poly, name=f"particle-{lab}")
            roi.roitype = roifile.ROI_TYPE.TRACED
            # vertices are pixel corners, so the bounds end at the largest vertex (roifile
            # assumes pixel indices and adds one)
            roi.right, roi.bottom = int(poly[:, 0].max()), int(poly[:, 1].max())
            if labels.ndim == 3:
                roi.position = z + 1
            rois.append(roi)

    def write(tmp: Path) -> None:
        # roifile appends to an existing zip; write a fresh archive explicitly.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i, roi in enumerate(rois):
                zf.writestr(f"{i + 1:05d}-{roi.name}.roi", roi.tobytes())

    return write_atomic(path, write, overwrite)
