"""Reading images and stacks as gray values, with their calibration (:mod:`.calibration`).

Readers return gray-value arrays, ``(Y, X)`` for an image and ``(Z, Y, X)`` for a stack, in
their original data type (RGB is converted to float32 luminance). Every command reads through
:func:`read_image` (images to segment) or :func:`read_array` (masks, labels, proposals).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from .. import formats
from ..errors import InputError
from .calibration import Calibration, _calibration_notes, _tiff_calibration_and_source, require_file

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files (non-recursive for folders)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and not formats.is_container(p):  # an OME-Zarr store is one image
            found.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES + formats.SUFFIXES))
        else:
            found.append(p)
    return found


def read_image(
    path: str | os.PathLike, channel_axis_ok: bool = False, allow_nonsquare: bool = False, strict: bool = False
) -> tuple[np.ndarray, Calibration]:
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
    if not (path.is_dir() and formats.is_container(path)):  # an OME-Zarr store is a folder
        require_file(path)
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
                raise InputError(
                    f"{path}: unsupported file type {suffix!r} (use TIFF, PNG, JPEG, DM3/DM4, EMD, MRC or OME-Zarr)"
                )
            side = (
                None
                if calibration.calibrated or formats.handles(path)
                else formats.sidecar_calibration(path, data.shape[axes.index("X")], notes)
            )  # Hitachi/JEOL .txt
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


def read_array(path: str | os.PathLike, what: str = "image") -> np.ndarray:
    """Read an image file (TIFF, PNG, JPEG, or an EM format of :mod:`particleseg.formats`) as an array.

    The array is squeezed and has not had the checks of :func:`read_image` (a mask or proposal may
    be empty, a label image is not gray levels). RGB(A) data whose channels are equal is reduced to
    one channel; ``what`` names the file's role in error messages.

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
    require_file(path, what)
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
    data, axes, calibration, _ = read_tiff_series(path, notes)
    return data, axes, calibration


def read_tiff_series(path: str | os.PathLike, notes: list | None = None):
    """Read the first series of a TIFF file, with its metadata.

    The one TIFF reader behind :func:`read_image` and :func:`read_array`, and the SIMS field
    reader (which needs the channel names).

    Parameters
    ----------
    path : path-like
    notes : list, optional
        Collects ``(kind, text)`` notes on unusable calibration metadata
        (:func:`~particleseg.io.calibration._tiff_calibration_and_source`).

    Returns
    -------
    data : ndarray
    axes : str
        tifffile's axes of the series (``YX``, ``ZYX``, ``CYX``, ``YXS``, ...).
    calibration : Calibration
    channel_names : list of str or None
        From ImageJ's ``Labels``, OME-XML's ``Channel Name`` or tifffile's shaped metadata.

    Raises
    ------
    InputError
        Not a TIFF with image data (tifffile's own exceptions pass through: the callers name
        the file and the problem in one line).
    """
    import logging
    import re

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
        names = None
        ij = tif.imagej_metadata or {}
        if ij.get("Labels"):
            names = list(ij["Labels"])
        elif tif.is_ome and tif.ome_metadata:
            names = re.findall(r'<Channel [^>]*?Name="([^"]*)"', tif.ome_metadata) or None
        elif tif.shaped_metadata and tif.shaped_metadata[0].get("channels"):
            names = list(tif.shaped_metadata[0]["channels"])
    return data, axes, calibration, names


def _imread_pillow(path: Path) -> np.ndarray:
    """Read a PNG or JPEG file through Pillow only.

    Only Pillow: imageio's plugin search would try DICOM and other readers on a damaged file and
    report theirs instead.
    """
    import imageio.v3 as iio
    from PIL import UnidentifiedImageError

    try:
        return np.asarray(iio.imread(path, plugin="pillow"))
    except (UnidentifiedImageError, OSError) as exc:
        if isinstance(exc, UnidentifiedImageError) or "can not handle" in str(exc):
            raise InputError(
                f"{path}: cannot read image (not a valid {path.suffix.lstrip('.').upper() or 'image'} file, or damaged)"
            ) from None
        raise


def _read_plain(path: Path):
    data = _imread_pillow(path)
    if data.ndim == 3 and data.shape[-1] in (2, 3, 4):  # gray + alpha, RGB, RGBA
        axes = "YXS"
    elif data.ndim == 2:
        axes = "YX"
    else:
        axes = "QYX"[-data.ndim :] if data.ndim <= 3 else "?" * data.ndim
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
        raise InputError(
            f"{name}: image of shape {image.shape} is too small (need at least {min_size}x{min_size} pixels)"
        )
    if image.dtype.kind == "f":
        bad = ~np.isfinite(image)
        if bad.any():
            raise InputError(f"{name}: contains {int(bad.sum())} NaN or infinite pixel values")
    lo, hi = image.min(), image.max()
    if lo == hi:
        raise InputError(f"{name}: image is constant (every pixel is {lo}); nothing to segment")


def image_pixels(path: str | os.PathLike) -> int:
    """Return the number of gray values in an image file (all slices), from its header; 0 if unknown."""
    import logging

    path = Path(path)
    if not path.is_file() and not formats.is_container(path):
        return 0  # never opened here: a pipe would block (read_image reports it)
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
