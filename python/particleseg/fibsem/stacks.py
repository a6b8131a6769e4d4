"""Stacks of a FIB-SEM run: slice sources read slice by slice, so a stack never has to fit in memory.

:class:`SliceSource` and its kinds (:class:`TiffStackSource` memory-maps or reads a multi-page
TIFF page by page, :class:`FolderSource` reads one file per slice, :class:`EMFileSource` reads an
electron-microscopy volume, :class:`ArraySource` wraps an array) and :class:`Stack` (one source
per channel, checked to agree); :func:`open_stack` opens one from files, folders or arrays and
:func:`stack_files` lists the files it is read from.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import tifffile

from .. import formats
from ..errors import InputError, ParticlesegError

TIFF_SUFFIXES = (".tif", ".tiff")


class SliceSource:
    """One channel of a stack, read slice by slice. ``read(z)`` returns a ``(Y, X)`` array."""

    name: str = ""
    n_slices: int = 0
    shape: tuple[int, int] = (0, 0)

    def read(self, z: int) -> np.ndarray:
        """Read slice ``z``, ``(Y, X)``; :class:`InputError` if it cannot be read."""
        raise NotImplementedError

    def where(self, z: int) -> str:
        """Name slice ``z`` in a message (the file and the slice)."""
        return f"{self.name} slice {z}"

    def close(self) -> None:
        """Release the open files (nothing to release here)."""
        pass

    def _check_index(self, z: int) -> None:
        if not 0 <= z < self.n_slices:
            raise IndexError(f"{self.name}: slice {z} out of range 0..{self.n_slices - 1}")


def _quiet_tifffile():
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _detail(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _checked(a: np.ndarray, where: str) -> np.ndarray:
    """Return a slice as read, refused if it holds NaN or infinite values or is not numeric.

    One NaN pixel would make the stack's normalisation percentiles NaN and every slice one phase.
    """
    if a.dtype.kind not in "uifb":
        raise InputError(f"{where}: unsupported data type {a.dtype}")
    if a.dtype.kind == "f":
        bad = np.count_nonzero(~np.isfinite(a))
        if bad:
            raise InputError(f"{where}: contains {bad} NaN or infinite pixel values")
    return a


class ArraySource(SliceSource):
    """A ``(Z, Y, X)`` array (or memmap) as a slice source."""

    def __init__(self, array: np.ndarray, name: str = "array"):
        a = np.asarray(array) if not isinstance(array, np.memmap) else array
        if a.ndim != 3:
            raise InputError(f"{name}: expected a (Z, Y, X) stack, got shape {a.shape}")
        self.array, self.name = a, name
        self.n_slices, self.shape = a.shape[0], tuple(a.shape[1:])

    def read(self, z: int) -> np.ndarray:
        """Copy slice ``z`` out of the array, checked."""
        self._check_index(z)
        return _checked(np.array(self.array[z]), self.where(z))


class EMFileSource(ArraySource):
    """A volume in an electron-microscopy file (MRC/IMOD stacks, OME-Zarr, DM, EMD), read into memory.

    The file is read by :func:`particleseg.formats.read`, the one reader of every command.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        data, axes, _, _ = formats.read(self.path)
        keep = [i for i, (ax, n) in enumerate(zip(axes, data.shape)) if n > 1 or ax in "YX"]
        data = np.squeeze(data, axis=tuple(i for i in range(data.ndim) if i not in keep))
        axes = "".join(axes[i] for i in keep)
        if axes == "YX":
            data, axes = data[None], "ZYX"
        if axes != "ZYX":
            raise InputError(
                f"{self.path}: expected a (Z, Y, X) volume, got axes {axes} of shape {data.shape}; "
                "give one file per channel"
            )
        super().__init__(data, str(self.path))
        self.files = [self.path]  # what a rerun compares (stack_files), not the values

    def __reduce__(self):
        """Pickle as the file's path: a Dask worker reads the file itself."""
        return EMFileSource, (self.path,)


class TiffStackSource(SliceSource):
    """A multi-page TIFF (``ZYX``, or one channel of a ``ZCYX``/``CZYX`` hyperstack) read slice by slice.

    Memory-mapped when the data are stored uncompressed and contiguous, else read page by page.
    Only the page headers are read when it is opened.
    """

    def __init__(self, path: str | os.PathLike, channel: int | None = None):
        _quiet_tifffile()
        self.path = Path(path)
        self.channel = channel
        self.name = str(self.path) if channel is None else f"{self.path} [channel {channel}]"
        if not self.path.is_file():
            raise InputError(f"{self.path}: file not found")
        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            shape, axes = tuple(series.shape), series.axes
            pages = series.pages
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: cannot read TIFF ({_detail(exc)})") from None
        if "S" in axes:
            self.close()
            raise InputError(
                f"{self.path}: RGB or multi-sample images are not supported; save each channel as a gray stack"
            )
        lead = [(a, n) for a, n in zip(axes[:-2], shape[:-2]) if n > 1]
        channel_axes = [i for i, (a, _) in enumerate(lead) if a == "C"]
        if channel is None and channel_axes:
            self.close()
            raise InputError(f"{self.path}: holds {lead[channel_axes[0]][1]} channels; open it with open_stack()")
        if len(lead) > 2 or (len(lead) == 2 and not channel_axes):
            self.close()
            raise InputError(
                f"{self.path}: unsupported dimensions {shape} (axes {axes}); expected Z x Y x X, or Z and C"
            )
        self.shape = tuple(shape[-2:])
        if channel is not None and not channel_axes:
            if channel != 0:
                raise InputError(f"{self.path}: has one channel, channel {channel} requested")
            channel = None
        lead_shape = [n for _, n in lead]
        if channel is not None:
            ci = channel_axes[0]
            z_shape = [n for i, n in enumerate(lead_shape) if i != ci]
            self.n_slices = z_shape[0] if z_shape else 1

            def page_index(z):
                idx = [z if i != ci else channel for i in range(len(lead_shape))]
                return int(np.ravel_multi_index(idx, lead_shape))
        else:
            self.n_slices = lead_shape[0] if lead_shape else 1

            def page_index(z):
                return z

        self._page_index = page_index
        n_planes = int(np.prod(lead_shape)) if lead_shape else 1
        self._pages = pages
        self._mm = None
        if len(pages) != n_planes:
            self.close()
            raise InputError(f"{self.path}: {len(pages)} pages for {n_planes} planes; cannot read it slice by slice")
        try:
            mm = tifffile.memmap(self.path, mode="r")
            if tuple(mm.shape[-2:]) == self.shape and mm.size == n_planes * self.shape[0] * self.shape[1]:
                self._mm = mm.reshape(n_planes, *self.shape)
        except Exception:  # noqa: BLE001 - compressed or scattered data: page by page
            self._mm = None
        if self._mm is None:
            # slices of different sizes show in the page headers
            for z in range(self.n_slices):
                p = pages[page_index(z)]
                if p is not None and tuple(p.shape[-2:]) != self.shape:
                    self.close()
                    raise InputError(
                        f"{self.path}: slice {z} is {p.shape[-2]}x{p.shape[-1]}, "
                        f"the first is {self.shape[0]}x{self.shape[1]}; all slices must have one size"
                    )

    def read(self, z: int) -> np.ndarray:
        """Read slice ``z`` from the memory map or its page, checked."""
        self._check_index(z)
        i = self._page_index(z)
        try:
            if self._mm is not None:
                a = np.array(self._mm[i])
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    warnings.simplefilter("ignore", ResourceWarning)  # unclosed files of a failed read: no tracebacks
                    a = self._pages[i].asarray()
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{self.path}: slice {z} cannot be read ({_detail(exc)})") from None
        if self._mm is None:
            a = np.squeeze(a)
        if a.shape != self.shape:
            raise InputError(f"{self.path}: slice {z} has shape {a.shape}, expected {self.shape}")
        return _checked(a, self.where(z))

    def where(self, z: int) -> str:
        """Name slice ``z`` in a message: the file and the slice."""
        return f"{self.path} slice {z}"

    def __reduce__(self):
        """Pickle (for a Dask worker) as its file, opened again where it arrives."""
        return TiffStackSource, (self.path, self.channel)

    def close(self) -> None:
        """Close the TIFF file."""
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
            self._tif = None


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


class FolderSource(SliceSource):
    """A folder of single-slice TIFF files, or a glob pattern such as ``stack/ch1_*.tif``.

    The files are sorted by the numbers in their names. Slice sizes are checked from the file
    headers.
    """

    def __init__(self, folder_or_glob: str | os.PathLike, files: Sequence[Path] | None = None):
        _quiet_tifffile()
        spec = Path(folder_or_glob)
        if files is None:
            if spec.is_dir():
                files = [q for q in spec.iterdir() if q.suffix.lower() in TIFF_SUFFIXES and not q.name.startswith(".")]
            else:
                files = list(spec.parent.glob(spec.name))
        self.files = sorted(files, key=_natural_key)
        self.name = str(spec)
        if not self.files:
            raise InputError(f"{spec}: no TIFF slices found")
        self.n_slices = len(self.files)
        shapes = []
        for f in self.files:
            try:
                with tifffile.TiffFile(f) as tif:
                    shapes.append(tuple(tif.series[0].shape))
            except Exception:  # noqa: BLE001
                shapes.append(None)  # unreadable header: reported when the slice is read
        good = [s for s in shapes if s is not None]
        if not good:
            raise InputError(f"{spec}: none of the {len(self.files)} slice files can be read")
        self.shape = tuple(good[0][-2:])
        for f, s in zip(self.files, shapes):
            if s is not None and (len([n for n in s if n > 1]) > 2 or tuple(s[-2:]) != self.shape):
                raise InputError(
                    f"{f}: slice of shape {s} differs from the first slice ({self.shape[0]}x{self.shape[1]}); "
                    "all slices must have one size"
                )

    def read(self, z: int) -> np.ndarray:
        """Read slice ``z`` from its file, checked."""
        self._check_index(z)
        f = self.files[z]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                warnings.simplefilter("ignore", ResourceWarning)  # unclosed files of a failed read: no tracebacks
                a = np.squeeze(tifffile.imread(f))
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{f}: slice {z} cannot be read ({_detail(exc)})") from None
        if a.shape != self.shape:
            raise InputError(f"{f}: slice {z} has shape {a.shape}, expected {self.shape}")
        return _checked(a, self.where(z))

    def where(self, z: int) -> str:
        """Name slice ``z`` in a message: its file."""
        return f"{self.files[z]} (slice {z})"

    def __reduce__(self):
        """Pickle (for a Dask worker) as its files."""
        return FolderSource, (self.name, self.files)


@dataclass
class Stack:
    """The channels of one stack, each a :class:`SliceSource` with the same slices and size."""

    sources: list[SliceSource]
    channel_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        """Check that the channels agree in slices and size; name them if unnamed."""
        if not self.sources:
            raise InputError("no channels given")
        first = self.sources[0]
        for s in self.sources[1:]:
            if s.n_slices != first.n_slices:
                raise InputError(
                    f"{s.name}: has {s.n_slices} slices but {first.name} has {first.n_slices}; channels must match"
                )
            if s.shape != first.shape:
                raise InputError(
                    f"{s.name}: slices are {s.shape[0]}x{s.shape[1]} but those of {first.name} are "
                    f"{first.shape[0]}x{first.shape[1]}; channels must match"
                )
        if not self.channel_names:
            self.channel_names = [f"channel {i}" for i in range(len(self.sources))]
        if len(self.channel_names) != len(self.sources):
            raise InputError(f"{len(self.channel_names)} channel names for {len(self.sources)} channels")

    @property
    def n_slices(self) -> int:
        """The number of slices."""
        return self.sources[0].n_slices

    @property
    def shape(self) -> tuple[int, int]:
        """The size of a slice, ``(Y, X)``."""
        return self.sources[0].shape

    @property
    def n_channels(self) -> int:
        """The number of channels."""
        return len(self.sources)

    def read(self, z: int) -> np.ndarray:
        """Read all channels of slice ``z``: ``(C, Y, X)``."""
        return np.stack([s.read(z) for s in self.sources])

    def close(self) -> None:
        """Close the files of every channel."""
        for s in self.sources:
            s.close()

    def __enter__(self):
        """Use the stack in a ``with`` block, which closes it."""
        return self

    def __exit__(self, *exc):
        """Close the stack."""
        self.close()


def open_stack(inputs: Sequence[str | os.PathLike | np.ndarray], channel_names: Sequence[str] | None = None) -> Stack:
    """Open a stack from one entry per channel, or from one hyperstack TIFF holding all channels.

    An entry is a multi-page TIFF, a folder (or glob) of slice files, a volume in an
    electron-microscopy file (MRC/IMOD, OME-Zarr, DM3/DM4, EMD; see :mod:`particleseg.formats`),
    or a ``(Z, Y, X)`` array. A hyperstack is ``ZCYX`` as ImageJ writes it, or ``CZYX``.
    """
    sources: list[SliceSource] = []
    try:
        for item in inputs:
            if isinstance(item, np.ndarray):
                sources.append(ArraySource(item, f"array {len(sources)}"))
                continue
            p = Path(item)
            if formats.handles(p) and (p.exists() or formats.is_container(p)):  # MRC, OME-Zarr, DM, EMD
                sources.append(EMFileSource(p))
            elif p.is_dir() or any(ch in p.name for ch in "*?["):
                sources.append(FolderSource(p))
            elif not p.exists():
                raise InputError(f"{p}: not found")
            else:
                _quiet_tifffile()
                try:
                    with tifffile.TiffFile(p) as tif:
                        s = tif.series[0]
                        n_c = dict(zip(s.axes, s.shape)).get("C", 1)
                except Exception as exc:  # noqa: BLE001
                    raise InputError(f"{p}: cannot read TIFF ({_detail(exc)})") from None
                if n_c > 1:
                    sources.extend(TiffStackSource(p, c) for c in range(n_c))
                else:
                    sources.append(TiffStackSource(p))
        return Stack(sources, list(channel_names) if channel_names else [])
    except ParticlesegError:
        for s in sources:
            s.close()
        raise


def stack_files(stack: Stack) -> list[Path]:
    """Return the files a stack is read from (each file once, in channel order); none for arrays."""
    files: list[Path] = []
    for src in stack.sources:
        for f in [src.path] if isinstance(src, TiffStackSource) else list(getattr(src, "files", [])):
            if f not in files:
                files.append(f)
    return files
