"""Phase segmentation of serial-section FIB-SEM stacks: several detector channels, neighbouring
slices as context, stacks larger than memory.

A FIB-SEM stack is a series of slices milled and imaged one after the other, often with two
detector signals (in-chamber and through-the-lens), with curtaining stripes, a non-uniform
detector response and noise. A network that sees all channels of the current slice and of
``k`` slices before and after it labels every pixel with a phase (a softmax ``classes`` head).

The pieces:

* :class:`SliceSource` and its kinds (:class:`TiffStackSource` memory-maps or reads a multi-page
  TIFF page by page, :class:`FolderSource` reads one file per slice, :class:`ArraySource` wraps
  an array) and :class:`Stack` (one source per channel, checked to agree): slices are read one
  at a time, so a stack never has to fit in memory;
* :func:`context_indices`, :func:`stack_normalization`, :class:`InputBuilder` - the network
  input of a slice: ``(Y, X, (2k + 1) * C)``, slice-offset-major (``z-k`` channels first);
* :func:`train_phases` - training from a few annotated slices, with part held out for
  validation and independent slices for evaluation (:func:`phase_metrics`, per class);
* :func:`segment_stack` - tiled inference slice by slice, each slice's labels written as soon as
  it is done (so an interrupted run resumes where it stopped), bad slices reported, per-phase
  volume fractions per slice and for the stack (CSV and plot), and the labels assembled into
  one stack at the end.

Label convention: phases are ``1..K`` in label images and annotations; ``0`` means *not
annotated* (ignored in training) or *not segmented* (a slice that could not be read).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import InputError, OutputExistsError, ParticlesegError

TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------------------------
# slice sources


class SliceSource:
    """One channel of a stack, read slice by slice. ``read(z)`` returns a ``(Y, X)`` array."""

    name: str = ""
    n_slices: int = 0
    shape: tuple[int, int] = (0, 0)

    def read(self, z: int) -> np.ndarray:
        raise NotImplementedError

    def where(self, z: int) -> str:
        return f"{self.name} slice {z}"

    def close(self) -> None:
        pass

    def _check_index(self, z: int) -> None:
        if not 0 <= z < self.n_slices:
            raise IndexError(f"{self.name}: slice {z} out of range 0..{self.n_slices - 1}")


def _quiet_tifffile():
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def _detail(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _checked(a: np.ndarray, where: str) -> np.ndarray:
    """A slice as read, refused if it holds NaN or infinite values (one NaN pixel would make the
    stack's normalisation percentiles NaN and every slice one phase) or is not numeric."""
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
        self._check_index(z)
        return _checked(np.array(self.array[z]), self.where(z))


class EMFileSource(ArraySource):
    """A volume in an electron-microscopy file (MRC/IMOD stacks, OME-Zarr, DM, EMD), read by
    :func:`particleseg.formats.read` (the one reader of every command) into memory."""

    def __init__(self, path: str | os.PathLike):
        from . import formats

        self.path = Path(path)
        data, axes, _, _ = formats.read(self.path)
        keep = [i for i, (ax, n) in enumerate(zip(axes, data.shape)) if n > 1 or ax in "YX"]
        data = np.squeeze(data, axis=tuple(i for i in range(data.ndim) if i not in keep))
        axes = "".join(axes[i] for i in keep)
        if axes == "YX":
            data, axes = data[None], "ZYX"
        if axes != "ZYX":
            raise InputError(f"{self.path}: expected a (Z, Y, X) volume, got axes {axes} of shape {data.shape}; "
                             "give one file per channel")
        super().__init__(data, str(self.path))
        self.files = [self.path]  # what a rerun compares (stack_files), not the values

    def __reduce__(self):  # (a Dask worker reads the file itself)
        return EMFileSource, (self.path,)


class TiffStackSource(SliceSource):
    """A multi-page TIFF (``ZYX``, or one channel of a ``ZCYX``/``CZYX`` hyperstack) read slice
    by slice: memory-mapped when the data are stored uncompressed and contiguous, else page by
    page. Only the page headers are read when it is opened."""

    def __init__(self, path: str | os.PathLike, channel: int | None = None):
        import tifffile

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
            raise InputError(f"{self.path}: RGB or multi-sample images are not supported; save each channel as a gray stack")
        lead = [(a, n) for a, n in zip(axes[:-2], shape[:-2]) if n > 1]
        channel_axes = [i for i, (a, _) in enumerate(lead) if a == "C"]
        if channel is None and channel_axes:
            self.close()
            raise InputError(f"{self.path}: holds {lead[channel_axes[0]][1]} channels; open it with open_stack()")
        if len(lead) > 2 or (len(lead) == 2 and not channel_axes):
            self.close()
            raise InputError(f"{self.path}: unsupported dimensions {shape} (axes {axes}); expected Z x Y x X, or Z and C")
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
                    raise InputError(f"{self.path}: slice {z} is {p.shape[-2]}x{p.shape[-1]}, "
                                     f"the first is {self.shape[0]}x{self.shape[1]}; all slices must have one size")

    def read(self, z: int) -> np.ndarray:
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
        return f"{self.path} slice {z}"

    def __reduce__(self):  # pickled (for a Dask worker) as its file, opened again where it arrives
        return TiffStackSource, (self.path, self.channel)

    def close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
            self._tif = None


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


class FolderSource(SliceSource):
    """A folder of single-slice TIFF files (sorted by the numbers in their names), or a glob
    pattern such as ``stack/ch1_*.tif``. Slice sizes are checked from the file headers."""

    def __init__(self, folder_or_glob: str | os.PathLike, files: Sequence[Path] | None = None):
        import tifffile

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
                raise InputError(f"{f}: slice of shape {s} differs from the first slice ({self.shape[0]}x{self.shape[1]}); "
                                 "all slices must have one size")

    def read(self, z: int) -> np.ndarray:
        import tifffile

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
        return f"{self.files[z]} (slice {z})"

    def __reduce__(self):  # pickled (for a Dask worker) as its files
        return FolderSource, (self.name, self.files)


@dataclass
class Stack:
    """The channels of one stack, each a :class:`SliceSource` with the same slices and size."""

    sources: list[SliceSource]
    channel_names: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.sources:
            raise InputError("no channels given")
        first = self.sources[0]
        for s in self.sources[1:]:
            if s.n_slices != first.n_slices:
                raise InputError(f"{s.name}: has {s.n_slices} slices but {first.name} has {first.n_slices}; channels must match")
            if s.shape != first.shape:
                raise InputError(f"{s.name}: slices are {s.shape[0]}x{s.shape[1]} but those of {first.name} are "
                                 f"{first.shape[0]}x{first.shape[1]}; channels must match")
        if not self.channel_names:
            self.channel_names = [f"channel {i}" for i in range(len(self.sources))]
        if len(self.channel_names) != len(self.sources):
            raise InputError(f"{len(self.channel_names)} channel names for {len(self.sources)} channels")

    @property
    def n_slices(self) -> int:
        return self.sources[0].n_slices

    @property
    def shape(self) -> tuple[int, int]:
        return self.sources[0].shape

    @property
    def n_channels(self) -> int:
        return len(self.sources)

    def read(self, z: int) -> np.ndarray:
        """All channels of slice ``z``: ``(C, Y, X)``."""
        return np.stack([s.read(z) for s in self.sources])

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_stack(inputs: Sequence[str | os.PathLike | np.ndarray], channel_names: Sequence[str] | None = None) -> Stack:
    """Open a stack from one entry per channel: a multi-page TIFF, a folder (or glob) of slice
    files, a volume in an electron-microscopy file (MRC/IMOD, OME-Zarr, DM3/DM4, EMD; see
    :mod:`particleseg.formats`), or a ``(Z, Y, X)`` array; or from one hyperstack TIFF holding
    all channels (``ZCYX`` as ImageJ writes it, or ``CZYX``)."""
    import tifffile

    from . import formats

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


# --------------------------------------------------------------------------------------------
# network input


def context_indices(z: int, n_slices: int, k: int) -> list[int]:
    """Slices ``z-k .. z+k``, mirrored at the ends of the stack (``-1 -> 1``, ``n -> n-2``).

    Raises :class:`InputError` if the window of ``2k + 1`` slices is larger than the stack.
    """
    if k < 0:
        raise InputError(f"context must not be negative, got {k}")
    if 2 * k + 1 > n_slices:
        raise InputError(f"context window of {2 * k + 1} slices (k={k} before and after) is larger than the stack "
                         f"({n_slices} slice{'s' if n_slices != 1 else ''}); use --context {max(0, (n_slices - 1) // 2)} or less")
    out = []
    for i in range(z - k, z + k + 1):
        if i < 0:
            i = -i
        elif i >= n_slices:
            i = 2 * (n_slices - 1) - i
        out.append(i)
    return out


def input_names(channel_names: Sequence[str], k: int) -> list[str]:
    """Names of the network input channels, slice-offset-major: ``name@z-1, ..., name@z+1``."""
    return [f"{c}@z{off:+d}" if off else f"{c}@z" for off in range(-k, k + 1) for c in channel_names]


def stack_normalization(stack: Stack, low: float = 1.0, high: float = 99.8, samples: int = 8,
                        max_pixels: int = 1_000_000, skip: Callable[[int], bool] | None = None) -> list[tuple[float, float]]:
    """Percentiles ``low`` and ``high`` of each channel over up to ``samples`` slices spread
    through the stack (a regular pixel subsample of each), so every slice of a stack is
    normalised alike. Unreadable slices are skipped."""
    n = stack.n_slices
    zs = sorted(set(np.linspace(0, n - 1, min(samples, n)).round().astype(int).tolist()))
    values: list[list[np.ndarray]] = [[] for _ in range(stack.n_channels)]
    h, w = stack.shape
    step = max(1, int(math.sqrt(h * w * len(zs) / max_pixels)))
    for z in zs:
        if skip is not None and skip(z):
            continue
        for c, src in enumerate(stack.sources):
            try:
                values[c].append(np.asarray(src.read(z))[::step, ::step].ravel())
            except InputError:
                continue
    out = []
    for c, v in enumerate(values):
        if not v:
            raise InputError(f"{stack.sources[c].name}: none of the sampled slices can be read")
        lo, hi = np.percentile(np.concatenate(v), [low, high])
        if hi <= lo:
            hi = lo + 1.0
        out.append((float(lo), float(hi)))
    return out


class InputBuilder:
    """Network inputs of slices, ``(Y, X, (2k + 1) C)`` float32, with a small cache of normalised
    slices so that a pass through the stack reads each slice once. An unreadable context slice
    is replaced by the nearest readable slice of the window (noted in ``substitutions``); an
    unreadable centre slice raises :class:`InputError`."""

    def __init__(self, stack: Stack, k: int, norm: Sequence[tuple[float, float]],
                 clip: tuple[float, float] | None = (-0.5, 1.5)):
        context_indices(0, stack.n_slices, k)  # checks the window
        if len(norm) != stack.n_channels:
            raise InputError(f"{len(norm)} normalisation ranges for {stack.n_channels} channels")
        self.stack, self.k, self.norm, self.clip = stack, k, list(norm), clip
        self.cache: OrderedDict[int, np.ndarray | InputError] = OrderedDict()
        self.substitutions: dict[int, list[tuple[int, int]]] = {}

    def slice(self, z: int) -> np.ndarray:
        """Normalised ``(Y, X, C)`` of slice ``z`` (cached)."""
        if z in self.cache:
            self.cache.move_to_end(z)
            v = self.cache[z]
        else:
            try:
                raw = self.stack.read(z)
                v = np.stack([_normalize(raw[c], lo, hi, self.clip) for c, (lo, hi) in enumerate(self.norm)], -1)
            except InputError as exc:
                v = exc
            self.cache[z] = v
            while len(self.cache) > 2 * self.k + 2:
                self.cache.popitem(last=False)
        if isinstance(v, InputError):
            raise v
        return v

    def __call__(self, z: int) -> np.ndarray:
        idx = context_indices(z, self.stack.n_slices, self.k)
        centre = self.slice(z)  # raises for a bad centre slice
        parts, subs = [], []
        for i in idx:
            try:
                parts.append(self.slice(i))
            except InputError:
                alt = self._nearest_readable(i, z, idx)
                subs.append((i, alt))
                parts.append(self.slice(alt) if alt != z else centre)
        if subs:
            self.substitutions[z] = subs
        return np.concatenate(parts, axis=-1)

    def _nearest_readable(self, bad: int, z: int, window: list[int]) -> int:
        for cand in sorted(set(window), key=lambda i: (abs(i - bad), abs(i - z))):
            if cand == bad:
                continue
            try:
                self.slice(cand)
                return cand
            except InputError:
                continue
        return z


def _normalize(a: np.ndarray, lo: float, hi: float, clip) -> np.ndarray:
    out = (np.asarray(a, np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if clip is not None:
        np.clip(out, clip[0], clip[1], out=out)
    return out


# --------------------------------------------------------------------------------------------
# annotations and metrics


def read_annotations(path: str | os.PathLike, n_slices: int, shape: tuple[int, int],
                     slices: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Annotated slices from a label stack (``(Z, Y, X)``, as many slices as the image stack;
    ``0`` = not annotated, phases ``1..K``), or a folder of label files whose names carry the
    slice number (``slice_0012.tif``, ``labels-12.tif``). Slices that hold no label are not
    annotated. ``slices`` keeps only those."""
    import tifffile

    p = Path(path)
    out: dict[int, np.ndarray] = {}
    if p.is_dir():
        for f in sorted(p.iterdir(), key=_natural_key):
            if f.suffix.lower() not in TIFF_SUFFIXES or f.name.startswith("."):
                continue
            nums = re.findall(r"\d+", f.stem)
            if not nums:
                raise InputError(f"{f}: no slice number in the file name (expected e.g. slice_0012.tif)")
            z = int(nums[-1])
            try:
                a = np.squeeze(tifffile.imread(f))
            except Exception as exc:  # noqa: BLE001
                raise InputError(f"{f}: cannot read annotation ({_detail(exc)})") from None
            out[z] = a
    else:
        if not p.is_file():
            raise InputError(f"{p}: annotations not found")
        try:
            a = tifffile.imread(p)
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{p}: cannot read annotations ({_detail(exc)})") from None
        a = np.asarray(a)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[0] != n_slices:
            raise InputError(f"{p}: annotation stack of shape {a.shape} does not match the image stack "
                             f"({n_slices} slices of {shape[0]}x{shape[1]}); give a label stack with as many slices, or a folder of slice_NNNN.tif")
        out = {z: a[z] for z in range(a.shape[0]) if a[z].any()}
    for z, a in list(out.items()):
        if not 0 <= z < n_slices:
            raise InputError(f"{p}: annotation of slice {z}, but the stack has slices 0..{n_slices - 1}")
        if a.shape != tuple(shape):
            raise InputError(f"{p}: annotation of slice {z} is {a.shape[0]}x{a.shape[1]}, the slices are {shape[0]}x{shape[1]}")
        if a.dtype.kind not in "iub" or (a.size and a.min() < 0):
            raise InputError(f"{p}: annotation of slice {z} must hold non-negative integers (0 = not annotated, phases 1..K)")
        if not a.any():
            del out[z]
    if slices is not None:
        missing = [z for z in slices if z not in out]
        if missing:
            raise InputError(f"{p}: slice(s) {', '.join(map(str, missing))} are not annotated (annotated: {', '.join(map(str, sorted(out))) or 'none'})")
        out = {z: out[z] for z in slices}
    if not out:
        raise InputError(f"{p}: no annotated slice (all labels are 0)")
    return {z: out[z].astype(np.int32) for z in sorted(out)}


def phase_metrics(pred: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict:
    """Per-phase agreement of predicted and annotated phases (``1..K``; truth ``0`` ignored).

    Returns
    -------
    dict with ``accuracy`` (fraction of annotated pixels labelled right), ``mean_iou``,
    ``mean_f1``, ``pixels``, ``confusion`` (K x K list, rows = truth) and ``per_class``: for each
    phase its ``iou``, ``precision``, ``recall``, ``f1`` (Dice) and ``support`` (annotated pixels).
    """
    k = len(classes)
    t = np.asarray(truth).ravel()
    p = np.asarray(pred).ravel()
    sel = (t > 0) & (t <= k)
    t, p = t[sel].astype(np.int64) - 1, np.clip(p[sel].astype(np.int64) - 1, -1, k - 1)
    valid = p >= 0
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (t[valid], p[valid]), 1)
    per = {}
    for i, name in enumerate(classes):
        tp = conf[i, i]
        fp = conf[:, i].sum() - tp
        fn = conf[i].sum() - tp + int((~valid & (t == i)).sum())
        support = int((t == i).sum())
        per[name] = {
            "iou": float(tp / (tp + fp + fn)) if tp + fp + fn else float("nan"),
            "precision": float(tp / (tp + fp)) if tp + fp else float("nan"),
            "recall": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan"),
            "support": support,
        }
    present = [v for v in per.values() if v["support"] > 0]
    return {
        "accuracy": float(np.trace(conf) / max(len(t), 1)),
        "mean_iou": float(np.mean([v["iou"] for v in present])) if present else float("nan"),
        "mean_f1": float(np.mean([v["f1"] for v in present])) if present else float("nan"),
        "pixels": int(len(t)),
        "confusion": conf.tolist(),
        "per_class": per,
    }


def metrics_table(metrics: dict) -> pd.DataFrame:
    """Per-class metrics as a table (one row per phase, plus ``all``)."""
    rows = [{"phase": name, **vals} for name, vals in metrics["per_class"].items()]
    rows.append({"phase": "all", "iou": metrics["mean_iou"], "f1": metrics["mean_f1"],
                 "precision": np.nan, "recall": np.nan, "support": metrics["pixels"], "accuracy": metrics["accuracy"]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# training


@dataclass
class PhaseTrainConfig:
    """Settings of a phase-segmentation training run (stored in the bundle's metadata)."""

    context: int = 1
    architecture: str = "unet"
    depth: int = 3
    base_filters: int = 8
    normalization: str = "batch"
    tile: int = 128
    batch_size: int = 8
    epochs: int = 20
    steps_per_epoch: int = 40
    validation_steps: int = 8
    learning_rate: float = 2e-3
    lr_step_epochs: int = 8
    lr_step_factor: float = 0.5
    val_fraction: float = 0.2  # rows held out at the bottom of each training slice (without val slices)
    patience: int = 0
    seed: int = 0
    percentiles: tuple[float, float] = (1.0, 99.8)
    augment: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _targets(labels: np.ndarray, heads) -> np.ndarray:
    """One-hot targets of phases 1..K; unannotated pixels (0) get all-zero targets, so they add
    nothing to the categorical cross-entropy."""
    from .train import make_targets

    k = heads[0].channels
    t = make_targets(labels, heads, classes=np.clip(labels - 1, 0, k - 1))
    return (t * ((labels > 0) & (labels <= k))[..., None]).astype(np.float32)


def train_phases(
    stack: Stack,
    annotations: dict[int, np.ndarray],
    classes: Sequence[str],
    config: PhaseTrainConfig,
    workdir: str | os.PathLike,
    train_slices: Sequence[int] | None = None,
    val_slices: Sequence[int] | None = None,
    eval_slices: Sequence[int] | None = None,
    verbose: int = 2,
):
    """Train a phase-segmentation network from a few annotated slices.

    Parameters
    ----------
    stack : Stack
    annotations : dict
        Slice index -> ``(Y, X)`` labels (0 = not annotated, phases ``1..K``).
    classes : list of str
        Phase names, ``K`` of them.
    train_slices, val_slices, eval_slices : lists of int, optional
        Default: the last annotated slice is the independent evaluation slice (with at least
        two annotated slices), the others train; without ``val_slices`` the bottom
        ``config.val_fraction`` of the rows of every training slice is held out for validation.

    Returns
    -------
    model, log (list of dicts per epoch), evaluation (dict: slice -> :func:`phase_metrics`, and
    ``"all"`` over the evaluation slices), split (the slices used for each part), normalization
    """
    from .models import Head, NetworkConfig
    from .train import Augmentation, TrainConfig, fit_targets, make_loss

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    annotated = sorted(annotations)
    if not annotated:
        raise InputError("no annotated slices")
    if eval_slices is None:
        eval_slices = [annotated[-1]] if len(annotated) > 1 else []
    if val_slices is None:
        val_slices = []
    if train_slices is None:
        train_slices = [z for z in annotated if z not in eval_slices and z not in val_slices]
    for name, zs in (("training", train_slices), ("validation", val_slices), ("evaluation", eval_slices)):
        for z in zs:
            if z not in annotations:
                raise InputError(f"{name} slice {z} is not annotated (annotated: {', '.join(map(str, annotated))})")
    if set(train_slices) & set(eval_slices):
        raise InputError(f"slice(s) {sorted(set(train_slices) & set(eval_slices))} used for training and evaluation; the evaluation slice must be independent")
    if not train_slices:
        raise InputError("no training slice left (annotate more slices, or name them with --train-slices)")
    k = len(classes)
    top = max(int(a.max()) for a in annotations.values())
    if top > k:
        raise InputError(f"annotations hold phase {top} but only {k} phase names are given ({', '.join(classes)})")

    norm = stack_normalization(stack, *config.percentiles)
    builder = InputBuilder(stack, config.context, norm)
    net = NetworkConfig(config.architecture, stack.n_channels * (2 * config.context + 1),
                        (Head("classes", k, "softmax"),), depth=config.depth, base_filters=config.base_filters,
                        normalization=config.normalization)
    m = net.multiple_of
    tile = min(config.tile, (min(stack.shape) // m) * m)
    if tile < m:
        raise InputError(f"slices of {stack.shape[0]}x{stack.shape[1]} are smaller than the network's {m}-pixel grid")
    train_x, train_y, val_x, val_y = [], [], [], []
    for z in train_slices:
        x, y = builder(z), _targets(annotations[z], net.heads)
        if val_slices:
            train_x.append(x)
            train_y.append(y)
        else:
            cut = int(round(x.shape[0] * (1 - config.val_fraction)))
            vt = min(tile, ((x.shape[0] - cut) // m) * m)
            if vt < m or cut < tile:
                raise InputError(f"slice {z}: {x.shape[0]} rows are too few to hold out {config.val_fraction:.0%} for "
                                 f"validation with {tile}-pixel tiles; name validation slices with --val-slices")
            train_x.append(x[:cut])
            train_y.append(y[:cut])
            val_x.append(x[cut:])
            val_y.append(y[cut:])
    for z in val_slices:
        val_x.append(builder(z))
        val_y.append(_targets(annotations[z], net.heads))
    val_tile = min(tile, min((v.shape[0] // m) * m for v in val_x), min((v.shape[1] // m) * m for v in val_x))

    # the package's one fit loop (particleseg.train.fit_targets): the phase targets leave the
    # unannotated pixels out of the loss, the batch statistics are recalibrated before each
    # validation; a fresh run each time (resume=False), as the workflow was written
    loop = TrainConfig(
        network=net, tile=tile, batch_size=config.batch_size, epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch, validation_steps=config.validation_steps,
        learning_rate=config.learning_rate, lr_step_epochs=config.lr_step_epochs, lr_step_factor=config.lr_step_factor,
        schedule="step", select="val_loss", class_balance=False, patience=config.patience, seed=config.seed,
        jit_compile=False,
        augmentation=Augmentation(brightness=0.05, contrast=0.1, gamma=0.0, noise=0.0) if config.augment else None,
    )
    model, log = fit_targets(train_x, train_y, val_x, val_y, make_loss(net.heads), loop, workdir, resume=False,
                             verbose=verbose, callbacks=[_recalibration_callback(train_x, tile, config.seed)],
                             val_tile=val_tile)
    recalibrate_batchnorm(model, train_x, tile, seed=config.seed)

    evaluation = {}
    if eval_slices:
        from .models import keras_predictor

        predict = keras_predictor(model)
        preds, truths = [], []
        for z in eval_slices:
            pred = predict_slice(predict, builder(z), tile=max(tile, 256), overlap=min(32, tile // 4), multiple_of=m)
            evaluation[z] = phase_metrics(pred, annotations[z], classes)
            preds.append(pred.ravel())
            truths.append(annotations[z].ravel())
        evaluation["all"] = phase_metrics(np.concatenate(preds), np.concatenate(truths), classes)
    split = {"train": list(map(int, train_slices)), "validation": list(map(int, val_slices)) or f"bottom {config.val_fraction:.0%} of the training slices",
             "evaluation": list(map(int, eval_slices))}
    return model, log, evaluation, split, norm


def recalibrate_batchnorm(model, images: Sequence[np.ndarray], tile: int, n_tiles: int = 32, seed: int = 0):
    """Set the moving mean and variance of every batch-normalisation layer to the statistics of
    one batch of ``n_tiles`` random ``tile x tile`` crops of the training inputs.

    Keras keeps exponential moving averages (momentum 0.99) for inference. After the few hundred
    steps of a training from a few slices they still lag far behind the trained weights, and the
    network predicts much worse at inference than in training (on simulated stacks: mean IoU
    0.44 instead of 0.87 after 90 steps). One pass with momentum 0 replaces them by the
    statistics of the training data [1]_.

    Parameters
    ----------
    model : keras.Model
    images : list of (Y, X, C) float32
        Network inputs (at least ``tile`` pixels in each direction).
    tile : int
        Crop size (a multiple of the network's grid).

    Returns
    -------
    model (changed in place)

    References
    ----------
    .. [1] S. Ioffe, C. Szegedy, "Batch normalization: accelerating deep network training by
           reducing internal covariate shift", ICML (2015), section 3.1 (population statistics).
    """
    import keras

    bns = [l for l in model._flatten_layers(include_self=False) if isinstance(l, keras.layers.BatchNormalization)]
    if not bns or not len(images):
        return model
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n_tiles):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        th, tw = min(tile, h), min(tile, w)
        y0, x0 = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        crops.append(img[y0:y0 + th, x0:x0 + tw])
    if len({c.shape for c in crops}) > 1:  # images smaller than the tile in different ways
        th, tw = min(c.shape[0] for c in crops), min(c.shape[1] for c in crops)
        crops = [c[:th, :tw] for c in crops]
    momenta = [l.momentum for l in bns]
    try:
        for l in bns:
            l.momentum = 0.0
        model(np.stack(crops).astype(np.float32), training=True)
    finally:
        for l, m in zip(bns, momenta):
            l.momentum = m
    return model


def _recalibration_callback(images, tile: int, seed: int):
    """A Keras callback that runs :func:`recalibrate_batchnorm` before every validation, so the
    validation loss (and the checkpoint chosen by it) reflects the network as it will predict."""
    import keras

    class Recalibrate(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            recalibrate_batchnorm(self.model, images, tile, seed=seed)

    return Recalibrate()


def make_phase_metadata(name: str, network, config: PhaseTrainConfig, channel_names: Sequence[str],
                        classes: Sequence[str], evaluation: dict | None = None, split: dict | None = None,
                        description: str = "") -> dict:
    """Bundle metadata of a phase-segmentation network (``metadata["fibsem"]`` holds the context
    ``k``, the channel names of one slice and the phase names)."""
    from .models import make_metadata

    meta = make_metadata(
        name, network, description=description or "FIB-SEM phase segmentation (softmax over phases)",
        channels=input_names(channel_names, config.context),
        normalization={"method": "percentile", "low": config.percentiles[0], "high": config.percentiles[1],
                       "clip": [-0.5, 1.5], "per": "stack"},
        tile=256, overlap=32, classes=list(classes), postprocess={"split": False},
        training={**config.to_dict()} | ({"split": split} if split else {}),
        metrics={"evaluation": {str(k): v for k, v in (evaluation or {}).items()}},
    )
    meta["fibsem"] = {"context": config.context, "channels": list(channel_names), "classes": list(classes),
                      "label_values": "phases 1..K, 0 = not segmented"}
    return meta


# --------------------------------------------------------------------------------------------
# inference


def predict_slice(predict, x: np.ndarray, tile: int | None = 256, overlap: int = 32, batch_size: int = 4,
                  multiple_of: int = 8, memmap_dir: str | os.PathLike | None = None,
                  memory_limit: int = 1 << 30, progress: bool | None = False, n_outputs: int | None = None) -> np.ndarray:
    """Phase labels ``1..K`` (uint8) of one slice's network input ``(Y, X, C)`` by tiled,
    blended inference. When the probability map (``n_outputs`` channels) would exceed
    ``memory_limit`` bytes it goes to a temporary memory-mapped file in ``memmap_dir``."""
    from .inference import predict_tiled

    h, w = x.shape[:2]
    out = None
    tmp = None
    try:
        if memmap_dir is not None and n_outputs and h * w * n_outputs * 4 > memory_limit:
            import tempfile

            fd, tmp = tempfile.mkstemp(prefix=f".prob.tmp{os.getpid()}-", suffix=".dat", dir=memmap_dir)
            os.close(fd)
            out = np.memmap(tmp, np.float32, "w+", shape=(h, w, n_outputs))
        prob = predict_tiled(predict, x, tile=tile, overlap=overlap, batch_size=batch_size, multiple_of=multiple_of,
                             out=out, progress=progress, desc="tiles")
        labels = np.empty((h, w), np.uint8)
        step = max(1, (64 << 20) // max(1, w * prob.shape[-1] * 4))
        for y0 in range(0, h, step):  # strip-wise argmax keeps memory bounded for a memmap
            labels[y0:y0 + step] = np.argmax(prob[y0:y0 + step], axis=-1).astype(np.uint8) + 1
        return labels
    finally:
        if out is not None:
            del out
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def output_paths(out_dir: str | os.PathLike, name: str = "phases") -> dict[str, Path]:
    out = Path(out_dir)
    return {"slices": out / "slices", "stack": out / f"{name}.tif", "fractions": out / "volume_fractions.csv",
            "plot": out / "volume_fractions.png", "status": out / "slices.csv", "run": out / "run.json"}


def slice_path(out_dir: str | os.PathLike, z: int, name: str = "phases") -> Path:
    return Path(out_dir) / "slices" / f"{name}_z{z:05d}.tif"


def _finished(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The labels of a finished slice, or None if it is missing or unreadable (then redone)."""
    import tifffile

    if not path.is_file():
        return None
    try:
        a = tifffile.imread(path)
    except Exception:  # noqa: BLE001
        return None
    return a if a.shape == tuple(shape) else None


def stack_files(stack: Stack) -> list[Path]:
    """The files a stack is read from (each file once, in channel order); none for arrays."""
    files: list[Path] = []
    for src in stack.sources:
        for f in ([src.path] if isinstance(src, TiffStackSource) else list(getattr(src, "files", []))):
            if f not in files:
                files.append(f)
    return files


def run_settings(stack: Stack, bundle, tile: int, overlap: int) -> dict:
    """Everything that decides a slice's labels besides the stack's files: the model (its bundle
    and a hash of its metadata), the tiling and, for stacks given as arrays (not read from a
    file, whose content :func:`stack_files` covers), a hash of their values. A rerun skips a slice only when these are the same as recorded."""
    import hashlib

    meta = json.dumps(bundle.metadata, sort_keys=True, default=str)
    arrays = [hashlib.sha256(np.ascontiguousarray(s.array).data).hexdigest()[:16]
              for s in stack.sources if isinstance(s, ArraySource) and not getattr(s, "files", None)]
    return {"command": "fibsem segment", "model": getattr(bundle, "label", bundle.name),
            "model_metadata_sha256": hashlib.sha256(meta.encode()).hexdigest()[:16], "tile": int(tile),
            "overlap": int(overlap), "n_slices": stack.n_slices, "shape": list(stack.shape), "arrays_sha256": arrays}


def _slice_stem(z: int, name: str) -> str:
    return f"{name}_z{z:05d}"


def _plan_slices(stack: Stack, out: Path, zs: Sequence[int], settings: dict, overwrite: bool, name: str) -> dict:
    """Each slice's :class:`~particleseg.pipeline.ItemPlan`; slices whose outputs this run may not
    replace stop the run before any work, in one line."""
    from .pipeline import plan_item

    label = " + ".join(s.name for s in stack.sources)
    files = stack_files(stack)
    plans = {z: plan_item(Path(stack.sources[0].name), out, settings, overwrite,
                          outputs={"slice": slice_path(out, z, name)}, name=f"{label} slice {z}",
                          stem=_slice_stem(z, name), inputs=files) for z in zs}
    conflicts = [pl for pl in plans.values() if pl.action == "conflict"]
    if conflicts:
        more = f" (and {len(conflicts) - 1} more slice(s))" if len(conflicts) > 1 else ""
        raise OutputExistsError(conflicts[0].message + more)
    return plans


def segment_stack(
    stack: Stack,
    bundle,
    out_dir: str | os.PathLike,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 4,
    slices: Sequence[int] | None = None,
    resume: bool = True,
    overwrite: bool = False,
    on_error: str = "continue",
    assemble: bool = True,
    progress: bool = True,
    name: str = "phases",
    predictor=None,
    memory_limit: int = 1 << 30,
    scheduler=None,
) -> pd.DataFrame:
    """Segment the phases of a stack slice by slice, streaming from disk, resumably.

    Each slice's input (its channels and those of ``k`` neighbours, normalised by percentiles
    of the whole stack) is predicted tile by tile and its labels written at once to
    ``slices/NAME_zNNNNN.tif`` (atomically), then its completion record
    ``.particleseg/NAME_zNNNNN.done.json`` (the fingerprint of the stack's files, the settings,
    its phase counts; the records of :func:`particleseg.pipeline.segment_files`). So finished
    work survives an interruption: a rerun skips the slices done earlier from the same stack
    with the same settings and redoes an interrupted one; the result equals an uninterrupted
    run's. Slices made from another stack or with other settings, and outputs particleseg has no
    record of, stop the run before any work (``overwrite`` redoes everything). ``resume`` is
    kept for old callers: resuming is what every run does.

    A slice that cannot be read is reported in ``slices.csv`` and skipped
    (``on_error="continue"``) or ends the run after the reports are written (``"stop"``); an
    unreadable *neighbour* is replaced by the nearest readable slice of the window and noted.
    Ctrl-C rolls back the slice being written and writes the reports of the finished slices.

    Writes to ``out_dir``: ``slices/``, ``slices.csv`` (status per slice: ``ok``, ``resumed``
    for one done earlier, ``error``), ``volume_fractions.csv`` (fraction of each phase per
    slice, and the stack in the last row), ``volume_fractions.png``, ``run.json`` (model and
    stack) and, with ``assemble``, ``NAME.tif`` (all slices as one ImageJ stack, 0 where a slice
    failed).

    ``scheduler`` (``local:N``, ``tcp://HOST:PORT`` or a :class:`distributed.Client`; see
    :mod:`particleseg.distributed`): each slice is predicted by a task on a Dask cluster (the
    stack opened once per worker, normalised by the percentiles this process computes), and this
    process writes the slices in their order, as above; the outputs are those of a local run.

    Returns
    -------
    DataFrame of volume fractions (rows: slices, then ``stack``).
    """
    from tqdm.auto import tqdm

    from .io import check_output_folder, check_outputs, remove_stale_temporaries, write_atomic, write_csv, write_tiff
    from .pipeline import RECORD_DIR, _write_item, input_fingerprint

    if on_error not in ("continue", "stop"):
        raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}")
    fib = bundle.metadata.get("fibsem")
    if not fib:
        raise ParticlesegError(f"{bundle.path}: not a phase-segmentation bundle (no 'fibsem' section); train one with particleseg fibsem train")
    k = int(fib["context"])
    classes = list(fib["classes"])
    n_ch = len(fib["channels"])
    if stack.n_channels != n_ch:
        raise InputError(f"{stack.sources[0].name}: stack has {stack.n_channels} channel(s) but model {bundle.name!r} "
                         f"expects {n_ch} ({', '.join(fib['channels'])}); give one input per channel in that order")
    context_indices(0, stack.n_slices, k)
    zs = list(range(stack.n_slices)) if slices is None else list(slices)
    bad = [z for z in zs if not 0 <= z < stack.n_slices]
    if bad:
        raise InputError(f"slice {bad[0]} is outside the stack (0..{stack.n_slices - 1})")
    out = Path(out_dir)
    paths = output_paths(out, name)
    tile = tile or bundle.tile
    overlap = bundle.overlap if overlap is None else overlap
    overlap = max(0, min(overlap, tile // 2 - 1))  # predict_tiled needs overlap < tile
    run_info = {"model": bundle.name, "model_path": str(bundle.path), "n_slices": stack.n_slices,
                "shape": list(stack.shape), "channels": [s.name for s in stack.sources], "context": k, "classes": classes}
    reports = [paths["fractions"], paths["plot"], paths["status"]] + ([paths["stack"]] if assemble else [])
    if not overwrite and paths["run"].exists():  # a folder this command made: its reports are rewritten
        try:
            prev = json.loads(paths["run"].read_text())
        except (OSError, ValueError):
            prev = {}
        for key in ("n_slices", "shape", "context", "classes"):
            if prev.get(key) != run_info[key]:
                raise OutputExistsError(f"{paths['run']}: the finished slices come from another run ({key} was {prev.get(key)}, "
                                        f"now {run_info[key]}); use another --out or --overwrite")
    elif not overwrite:
        check_outputs(reports, False)
    # free space for the slices to do and the assembled stack (8-bit labels)
    check_output_folder(out, (len(zs) + (stack.n_slices if assemble else 0)) * stack.shape[0] * stack.shape[1])
    for folder in (out, out / RECORD_DIR, paths["slices"]):
        remove_stale_temporaries(folder, [q.name for q in reports])
    settings = run_settings(stack, bundle, tile, overlap)
    plans = _plan_slices(stack, out, zs, settings, overwrite, name)
    write_atomic(paths["run"], lambda tmp: tmp.write_text(json.dumps(run_info, indent=2)), overwrite=True)

    counts: dict[int, np.ndarray] = {}
    status: list[dict] = []
    for z in zs:  # done earlier: from the records
        if plans[z].action == "done" and plans[z].row and "counts" in plans[z].row:
            counts[z] = np.asarray(plans[z].row["counts"], np.int64)
            status.append({"slice": z, "status": "resumed", "message": plans[z].row.get("message", "")})
    todo = [z for z in zs if z not in counts]
    stopped = None
    fingerprint = None
    if scheduler is not None and predictor is not None:
        raise InputError("fibsem segment: a predictor of this process cannot run on a Dask cluster; give the bundle only")
    bar = tqdm(total=len(zs), initial=len(counts), desc="slices", unit="slice", disable=not progress)
    cluster = contextlib.ExitStack()
    done: Iterable = ()  # (index in todo, (labels and substitutions, error, seconds)) per slice
    try:
        if todo:
            norm_cfg = bundle.metadata["input"]["normalization"]
            low, high = (norm_cfg.get("low", 1.0), norm_cfg.get("high", 99.8)) if norm_cfg.get("method") == "percentile" else (0.0, 100.0)
            norm = stack_normalization(stack, low, high)
            clip = tuple(norm_cfg["clip"]) if norm_cfg.get("clip") else None
            options = {"tile": tile, "overlap": overlap, "batch_size": batch_size, "memory_limit": memory_limit}
            files = stack_files(stack)
            label = " + ".join(s.name for s in stack.sources)
            if scheduler is None:
                builder = InputBuilder(stack, k, norm, clip)
                predict = predictor or bundle.predictor()
                done = ((i, _noted_local(predict_stack_slice, builder, predict, bundle, z, options, out))
                        for i, z in enumerate(todo))
            else:
                from .distributed import bundle_state, connect, map_ordered

                client = cluster.enter_context(connect(scheduler))
                spec = client.scatter((stack, k, norm, clip), broadcast=True, hash=False)
                done = map_ordered(client, _slice_task, todo, (spec, bundle_state(bundle), options, str(out)),
                                   names=[f"slice {z}" for z in todo])
        t0 = time.perf_counter()
        for i, (result, exc, seconds) in done:
            z = todo[i]
            sp = slice_path(out, z, name)
            if exc is not None:
                status.append({"slice": z, "status": "error", "message": str(exc)})
                bar.write(f"particleseg: slice {z}: {exc}", file=sys.stderr)
                if on_error == "stop":
                    stopped = (z, exc)
                    break
                bar.update(1)
                t0 = time.perf_counter()
                continue
            labels, subs = result
            c = np.bincount(labels.ravel(), minlength=len(classes) + 1)[: len(classes) + 1]
            msg = "; ".join(f"context slice {a} unreadable, used {b}" for a, b in subs) if subs else ""
            if fingerprint is None:
                fingerprint = input_fingerprint(files)
            t_write = time.perf_counter()
            _write_item(sp, out, {"slice": sp}, {"slice": lambda p, labels=labels: write_tiff(p, labels, overwrite=True)},
                        {"name": f"{label} slice {z}", **fingerprint}, settings,
                        {"counts": [int(v) for v in c], "message": msg}, stem=_slice_stem(z, name))
            counts[z] = c
            # its seconds: reading, network and writing (in a worker, its computing and the writing here)
            now = time.perf_counter()
            status.append({"slice": z, "status": "ok" if not subs else "ok (context substituted)", "message": msg,
                           "seconds": round(now - t0 if scheduler is None else seconds + now - t_write, 3)})
            t0 = now
            bar.update(1)
    finally:
        bar.close()
        cluster.close()
        # the reports cover whatever is finished, also after an interruption
        fractions = volume_fractions(counts, classes)
        order = {z: i for i, z in enumerate(zs)}
        status.sort(key=lambda r: order[r["slice"]])
        write_csv(paths["fractions"], fractions, overwrite=True)
        write_csv(paths["status"], pd.DataFrame(status, columns=["slice", "status", "message", "seconds"]), overwrite=True)
        plot_volume_fractions(fractions, paths["plot"], overwrite=True)
    if assemble and stopped is None:
        assemble_stack(out, stack.n_slices, stack.shape, name, overwrite=True)
    if stopped is not None:
        z, exc = stopped
        raise InputError(f"{exc} -- stopped at slice {z}; {len(counts)} finished slice(s) kept in {paths['slices']}; "
                         "rerun the same command to go on once the slice can be read (a changed stack needs "
                         "--overwrite), or use --on-error continue")
    return fractions


def predict_stack_slice(builder: InputBuilder, predict, bundle, z: int, options: dict,
                        memmap_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, list]:
    """Phase labels of slice ``z`` (:func:`predict_slice` of its network input) and the context
    slices substituted for unreadable ones; :class:`InputError` for an unreadable slice."""
    x = builder(z)
    labels = predict_slice(predict, x, tile=options["tile"], overlap=options["overlap"],
                           batch_size=options["batch_size"], multiple_of=bundle.network.multiple_of,
                           memmap_dir=memmap_dir, memory_limit=options["memory_limit"],
                           n_outputs=bundle.network.output_channels)
    return labels, builder.substitutions.get(z)


def _noted_local(fn, *args) -> tuple:
    """``(result, None, seconds)``, or ``(None, error, seconds)`` for an unreadable slice."""
    t0 = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - t0
    except InputError as exc:
        return None, exc, time.perf_counter() - t0


def _slice_task(z: int, spec: tuple, state: tuple, options: dict, out: str) -> tuple:
    """:func:`predict_stack_slice` in a Dask worker: the stack (opened again from its files when
    it reaches the worker), its input builder and the bundle made once per process. Returns
    ``(result, error, seconds)`` as :func:`_noted_local`; its warnings are shown by the worker."""
    from .distributed import worker_bundle, worker_cached

    stack, k, norm, clip = spec
    bundle = worker_bundle(state)
    key = ("fibsem-builder", id(stack), k, repr(norm), repr(clip))
    builder = worker_cached(key, lambda: InputBuilder(stack, k, norm, clip), most=2)
    memmap_dir = out if os.path.isdir(out) else None
    return _noted_local(predict_stack_slice, builder, bundle.predictor(), bundle, z, options, memmap_dir)


def volume_fractions(counts: dict[int, np.ndarray], classes: Sequence[str]) -> pd.DataFrame:
    """Fraction of each phase per slice and over the stack (last row, ``slice == "stack"``),
    from per-slice pixel counts (index 0: unsegmented pixels, left out)."""
    rows = []
    total = np.zeros(len(classes) + 1, np.int64)
    for z in sorted(counts):
        c = np.asarray(counts[z], np.int64)
        total += c
        n = c[1:].sum()
        rows.append({"slice": z, "pixels": int(n), **{name: (c[i + 1] / n if n else np.nan) for i, name in enumerate(classes)}})
    n = total[1:].sum()
    rows.append({"slice": "stack", "pixels": int(n), **{name: (total[i + 1] / n if n else np.nan) for i, name in enumerate(classes)}})
    return pd.DataFrame(rows, columns=["slice", "pixels", *classes])


def plot_volume_fractions(fractions: pd.DataFrame, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Phase fractions against slice number, with the stack's fractions as dashed lines."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io import write_atomic

    classes = [c for c in fractions.columns if c not in ("slice", "pixels")]
    per = fractions[fractions["slice"] != "stack"]
    stack_row = fractions[fractions["slice"] == "stack"]
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for i, c in enumerate(classes):
        line, = ax.plot(per["slice"].astype(int), per[c], "o-", ms=3, label=c)
        if len(stack_row) and np.isfinite(stack_row[c].iloc[0]):
            ax.axhline(stack_row[c].iloc[0], color=line.get_color(), ls="--", lw=0.8)
    ax.set_xlabel("slice")
    ax.set_ylabel("volume fraction")
    ax.set_ylim(0, 1)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("phase fractions per slice (dashed: whole stack)")
    out = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite)
    plt.close(fig)
    return out


def assemble_stack(out_dir: str | os.PathLike, n_slices: int, shape: tuple[int, int], name: str = "phases",
                   overwrite: bool = False) -> Path:
    """Copy the per-slice label files into one ImageJ stack ``NAME.tif`` through a memory map
    (one slice in memory at a time); missing slices are 0. BigTIFF beyond 4 GB."""
    import tifffile

    from .io import write_atomic

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

    return write_atomic(output_paths(out, name)["stack"], write, overwrite)
