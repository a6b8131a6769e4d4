"""Fields of view of SIMS: where they are (:class:`FieldSource`), reading them (:class:`Field`).

A field is a multi-channel TIFF stack (channel names from ImageJ labels, OME-XML or an option)
or one file per isotope matched by a naming pattern such as ``{field}_{isotope}.tif``.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import InputError
from ..io.read import read_tiff_series
from .isotopes import ISOTOPES, REQUIRED_ISOTOPES, canonical_isotope

TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_PATTERN = "{field}_{isotope}"


def parse_channels(text: str | Sequence[str] | None) -> list[str] | None:
    """Parse channel names from ``"235U,238U"`` or a list.

    A name that is not a uranium species is kept as given (such channels are read and ignored);
    ``-`` or ``skip`` marks a channel to ignore.
    """
    if text is None:
        return None
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text)]
    if any(not n for n in names):
        raise InputError(f"--channels {text!r}: empty channel name")
    return names


def _channel_map(names: Sequence[str], source: str) -> dict[str, int]:
    """Isotope -> index of its channel; check duplicates and the required isotopes."""
    found: dict[str, int] = {}
    for i, n in enumerate(names):
        iso = canonical_isotope(n)
        if iso is None:
            continue
        if iso in found:
            raise InputError(f"{source}: isotope {iso} appears twice (channels {names[found[iso]]!r} and {n!r})")
        found[iso] = i
    missing = [iso for iso in REQUIRED_ISOTOPES if iso not in found]
    if missing:
        have = ", ".join(found) or "none"
        raise InputError(
            f"{source}: lacks the {' and '.join(missing)} channel{'s' if len(missing) > 1 else ''} "
            f"(uranium channels found: {have}; channel names {', '.join(map(str, names))}; "
            "name the channels with --channels if they are unnamed or misnamed)"
        )
    return found


@dataclass
class FieldSource:
    """Where one field of view lives: a multi-channel stack, or one file per isotope."""

    name: str
    stack: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # isotope -> file

    @property
    def paths(self) -> list[Path]:
        """The field's files: its stack, or its per-isotope files."""
        return [self.stack] if self.stack is not None else list(self.files.values())

    @property
    def where(self) -> str:
        """Where the field is, for messages: the stack, or ``FOLDER/NAME (isotopes)``."""
        if self.stack is not None:
            return str(self.stack)
        first = next(iter(self.files.values()), Path(self.name))
        return str(first.parent / f"{self.name} ({', '.join(self.files)})")


@dataclass
class Field:
    """A field of view: ``counts[isotope]`` is a ``(Y, X)`` count image."""

    name: str
    counts: dict[str, np.ndarray]
    source: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        """The ``(Y, X)`` shape of the count images."""
        return next(iter(self.counts.values())).shape

    @property
    def isotopes(self) -> list[str]:
        """The uranium species the field has, in the order of :data:`ISOTOPES`."""
        return [iso for iso in ISOTOPES if iso in self.counts]

    def total(self) -> np.ndarray:
        """Sum of all uranium channels (the detection image), float32."""
        return np.sum([self.counts[iso] for iso in self.isotopes], axis=0, dtype=np.float32)


def _pattern_regex(pattern: str) -> re.Pattern:
    """``{field}_{isotope}.tif`` -> a regex with groups ``field`` and ``isotope`` (``*`` is any text).

    The field name is matched greedily and the isotope lazily, so ``a_b_235U.tif`` is field
    ``a_b``, isotope ``235U``.
    """
    if "{field}" not in pattern or "{isotope}" not in pattern:
        raise InputError(f"pattern {pattern!r}: needs both {{field}} and {{isotope}}, e.g. '{{field}}_{{isotope}}.tif'")
    parts = re.split(r"(\{field\}|\{isotope\}|\*)", pattern)
    rx = ""
    for p in parts:
        if p == "{field}":
            rx += r"(?P<field>.+)"
        elif p == "{isotope}":
            rx += r"(?P<isotope>[^/\\]+?)"
        elif p == "*":
            rx += ".*"
        else:
            rx += re.escape(p)
    if not re.search(r"\.[A-Za-z]+$", pattern):
        rx += r"\.(?:tif|tiff)"
    return re.compile(rx + "$", re.IGNORECASE)


def find_fields(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], pattern: str | None = None
) -> list[FieldSource]:
    """Fields of view in folders and files.

    Parameters
    ----------
    inputs : path or paths
        Folders (their TIFF files, not recursive) and TIFF files.
    pattern : str, optional
        How per-isotope files are named, with ``{field}`` and ``{isotope}`` placeholders and
        ``*`` for any text, e.g. ``"{field}_{isotope}.tif"`` or ``"*_{field}-{isotope}.tif"``.
        Files that match with a uranium species as ``{isotope}`` are grouped into fields; the
        other files are multi-channel stacks, one field each. Without a pattern,
        ``{field}_{isotope}`` is tried.

    Returns
    -------
    list of FieldSource, sorted by name.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            files.extend(
                sorted(q for q in p.iterdir() if q.suffix.lower() in TIFF_SUFFIXES and not q.name.startswith("."))
            )
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: not found")
    rx = _pattern_regex(pattern or DEFAULT_PATTERN)
    groups: dict[tuple[Path, str], dict[str, Path]] = {}
    stacks: list[FieldSource] = []
    for f in files:
        m = rx.fullmatch(f.name)
        iso = canonical_isotope(m.group("isotope")) if m else None
        if iso is None:
            stacks.append(FieldSource(f.stem, stack=f))
            continue
        g = groups.setdefault((f.parent, m.group("field")), {})
        if iso in g:
            raise InputError(f"{f}: field {m.group('field')!r} has two {iso} files ({g[iso].name} and {f.name})")
        g[iso] = f
    fields = stacks + [
        FieldSource(name, files=dict(sorted(g.items(), key=lambda kv: ISOTOPES.index(kv[0]))))
        for (_, name), g in groups.items()
    ]
    names = [fs.name for fs in fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        # same field name in two folders, or a stack beside per-isotope files: qualify by folder
        for fs in fields:
            if fs.name in dup:
                fs.name = f"{fs.paths[0].parent.name}/{fs.name}"
    return sorted(fields, key=lambda fs: fs.name)


def _read_tiff_array(path: Path):
    """Array, axes and channel names (or None) of a TIFF's first series (io's TIFF reader)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", ResourceWarning)  # unclosed files of a failed read: no tracebacks
            data, axes, _, names = read_tiff_series(path)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file for the user
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read image ({detail})") from None
    return data, axes, names


def _check_counts(a: np.ndarray, where: str) -> np.ndarray:
    if a.dtype.kind not in "uifb":
        raise InputError(f"{where}: unsupported data type {a.dtype}")
    if a.dtype.kind == "f":
        bad = ~np.isfinite(a)
        if bad.any():
            raise InputError(f"{where}: contains {int(bad.sum())} NaN or infinite values")
    if a.size and a.min() < 0:
        raise InputError(f"{where}: has negative values; expected ion counts")
    if min(a.shape) < 8:
        raise InputError(f"{where}: image of shape {a.shape} is too small (need at least 8x8 pixels)")
    return a


def read_field(source: FieldSource | str | os.PathLike, channels: Sequence[str] | None = None) -> Field:
    """Read one field of view.

    Parameters
    ----------
    source : FieldSource or path
        A multi-channel TIFF (``(C, Y, X)``; an ImageJ hyperstack, OME-TIFF or plain 3D TIFF)
        or a :class:`FieldSource` of per-isotope files.
    channels : list of str, optional
        Names of the channels of a stack, in order (overrides names stored in the file). Needed
        for stacks without ImageJ labels or OME channel names.

    Raises
    ------
    InputError
        Unreadable file, too few or unnamed channels, a channel count that does not match
        ``channels``, missing ``235U`` or ``238U``, duplicate isotopes, per-isotope images of
        different sizes, negative or NaN counts.
    """
    if not isinstance(source, FieldSource):
        p = Path(source)
        source = FieldSource(p.stem, stack=p)
    if source.stack is not None:
        path = source.stack
        data, axes, names = _read_tiff_array(path)
        keep = [i for i, n in enumerate(data.shape) if n > 1 or axes[i] in "YX"]
        data = data.reshape([data.shape[i] for i in keep])
        if data.ndim == 2:
            raise InputError(
                f"{path}: has one channel; a SIMS field needs at least 235U and 238U images "
                "(give a multi-channel stack, or one file per isotope named like {field}_{isotope}.tif)"
            )
        if data.ndim != 3:
            raise InputError(f"{path}: unsupported dimensions {data.shape}; expected channels x Y x X")
        if channels is not None:
            names = list(channels)
        if names is None:
            raise InputError(
                f"{path}: channel names unknown (no ImageJ labels or OME channel names); "
                "give them in order with --channels, e.g. --channels 235U,238U"
            )
        if len(names) != data.shape[0]:
            raise InputError(
                f"{path}: has {data.shape[0]} channels but {len(names)} channel names are given ({', '.join(names)})"
            )
        index = _channel_map(names, str(path))
        counts = {iso: _check_counts(data[i], f"{path} [{iso}]") for iso, i in index.items()}
        return Field(source.name, {iso: counts[iso] for iso in ISOTOPES if iso in counts}, str(path))
    missing = [iso for iso in REQUIRED_ISOTOPES if iso not in source.files]
    if missing:
        raise InputError(
            f"{source.where}: field {source.name!r} lacks the {' and '.join(missing)} image "
            f"(found {', '.join(source.files) or 'none'})"
        )
    counts = {}
    shapes = {}
    for iso, path in source.files.items():
        data, axes, _ = _read_tiff_array(path)
        data = np.squeeze(data)
        if data.ndim != 2:
            raise InputError(f"{path}: expected one {iso} image, got shape {data.shape}")
        counts[iso] = _check_counts(data, str(path))
        shapes[iso] = data.shape
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{iso} {s[0]}x{s[1]}" for iso, s in shapes.items())
        raise InputError(f"{source.where}: isotope images of field {source.name!r} differ in size ({desc})")
    return Field(source.name, counts, source.where)
