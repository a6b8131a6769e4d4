"""SIMS particle screening: uranium-bearing particles in many fields of view.

Secondary ion mass spectrometry pre-screening records, for each of up to thousands of fields
of view, one ion image per mass (``234U+``, ``235U+``, ``236U+``, ``238U+``, ``238U1H+``; at least
``235U+`` and ``238U+``). Particles are found on the *sum of the uranium channels* by a fully
convolutional network followed by a watershed, which leaves two parameters: the probability
(softmax) threshold and the watershed level [1]_. Each particle's counts are summed per
isotope, the local background is subtracted, and the isotope ratios to ``238U`` are given with
their Poisson counting uncertainties.

The pieces, each a small function:

* :func:`canonical_isotope`, :func:`find_fields`, :func:`read_field` - fields of view as
  multi-channel TIFF stacks (channel names from ImageJ labels, OME-XML or an option) or as one
  file per isotope matched by a naming pattern such as ``{field}_{isotope}.tif``;
* :func:`detection_input` - the variance-stabilised total uranium image the network sees;
* :func:`predict_fields` - many fields as one network batch;
* :func:`detect_particles` - threshold and watershed;
* :func:`measure_particles` - counts, background, ratios and uncertainties;
* :func:`significant` - drops detections whose uranium counts do not stand out of the
  background (background fluctuations and detector spikes in empty fields);
* :func:`run_fields` - all of it for a folder of fields with progress, CSVs and plots;
* :func:`match_particles`, :func:`score_detection` - comparison with a simulator's truth
  (:mod:`particleseg.sims_simulate`), used to choose the two parameters.

References
----------
.. [1] F. J. Anscombe, "The transformation of Poisson, binomial and negative-binomial data",
       Biometrika 35, 246-254 (1948) (variance-stabilising transform of counts).
.. [2] G. F. Knoll, "Radiation Detection and Measurement", 4th ed., Wiley (2010), ch. 3
       (counting statistics, net counts after background subtraction).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from .errors import InputError, ParticlesegError

ISOTOPES = ("234U", "235U", "236U", "238U", "238U1H")
REQUIRED_ISOTOPES = ("235U", "238U")
REFERENCE = "238U"
RATIO_ISOTOPES = ("234U", "235U", "236U", "238U1H")  # ratios to 238U
TIFF_SUFFIXES = (".tif", ".tiff")
DEFAULT_PATTERN = "{field}_{isotope}"

# Input transform of the detection network: Anscombe's transform of the summed counts,
# 2 sqrt(x + 3/8), shifted to 0 at zero counts and divided by ``scale``. Poisson noise then has
# about the same spread (1/scale) at every count level, in bright and in dim fields.
DEFAULT_INPUT = {"transform": "anscombe", "scale": 8.0, "clip": 12.0}
DEFAULT_SIMS_POSTPROCESS = {"threshold": 0.5, "h": 1.0, "split": True, "min_area": 4,
                            "fill_holes": True, "exclude_border": False, "min_significance": 5.0}
URANIUM = ("234U", "235U", "236U", "238U")  # atomic uranium ions (238U1H is a molecular ion of 238U)


# --------------------------------------------------------------------------------------------
# channel names


def canonical_isotope(name: str) -> str | None:
    """The canonical name of a uranium species (``234U``, ``235U``, ``236U``, ``238U``,
    ``238U1H``), or None if ``name`` is not one.

    Accepts the spellings met in instrument exports: ``235U+``, ``U235``, ``U-235``,
    ``235 U``, ``238UH+``, ``238U1H``, ``238U-1H``, ``U238H``, case-insensitively.
    """
    s = re.sub(r"[\s+_\-]", "", str(name)).upper()
    m = re.fullmatch(r"(?:(\d{3})U|U(\d{3}))(1?H)?", s)
    if not m:
        return None
    mass = m.group(1) or m.group(2)
    iso = f"{mass}U" + ("1H" if m.group(3) else "")
    return iso if iso in ISOTOPES else None


def parse_channels(text: str | Sequence[str] | None) -> list[str] | None:
    """Channel names from ``"235U,238U"`` or a list. A name that is not a uranium species is
    kept as given (such channels are read and ignored); ``-`` or ``skip`` marks a channel to ignore."""
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


# --------------------------------------------------------------------------------------------
# fields of view


@dataclass
class FieldSource:
    """Where one field of view lives: a multi-channel stack, or one file per isotope."""

    name: str
    stack: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # isotope -> file

    @property
    def paths(self) -> list[Path]:
        return [self.stack] if self.stack is not None else list(self.files.values())

    @property
    def where(self) -> str:
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
        return next(iter(self.counts.values())).shape

    @property
    def isotopes(self) -> list[str]:
        return [iso for iso in ISOTOPES if iso in self.counts]

    def total(self) -> np.ndarray:
        """Sum of all uranium channels (the detection image), float32."""
        return np.sum([self.counts[iso] for iso in self.isotopes], axis=0, dtype=np.float32)


def _pattern_regex(pattern: str) -> re.Pattern:
    """``{field}_{isotope}.tif`` -> a regex with groups ``field`` and ``isotope`` (``*`` is any text).

    The field name is matched greedily and the isotope lazily, so ``a_b_235U.tif`` is field
    ``a_b``, isotope ``235U``."""
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


def find_fields(inputs: str | os.PathLike | Iterable[str | os.PathLike], pattern: str | None = None) -> list[FieldSource]:
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
            files.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in TIFF_SUFFIXES and not q.name.startswith(".")))
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
    fields = stacks + [FieldSource(name, files=dict(sorted(g.items(), key=lambda kv: ISOTOPES.index(kv[0]))))
                       for (_, name), g in groups.items()]
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
    import warnings

    from .io.read import read_tiff_series

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
            raise InputError(f"{path}: has {data.shape[0]} channels but {len(names)} channel names are given ({', '.join(names)})")
        index = _channel_map(names, str(path))
        counts = {iso: _check_counts(data[i], f"{path} [{iso}]") for iso, i in index.items()}
        return Field(source.name, {iso: counts[iso] for iso in ISOTOPES if iso in counts}, str(path))
    missing = [iso for iso in REQUIRED_ISOTOPES if iso not in source.files]
    if missing:
        raise InputError(f"{source.where}: field {source.name!r} lacks the {' and '.join(missing)} image "
                         f"(found {', '.join(source.files) or 'none'})")
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


# --------------------------------------------------------------------------------------------
# detection


def detection_input(total: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """The network input from the summed uranium counts: ``(2 sqrt(x + 3/8) - 2 sqrt(3/8)) / scale``,
    clipped to ``[0, clip]`` (float32, same shape).

    Anscombe's transform [1]_ makes Poisson noise about equally strong at every count level,
    so one network sees dim and bright fields, weak and strong background alike.
    """
    s = {**DEFAULT_INPUT, **(settings or {})}
    if s["transform"] != "anscombe":
        raise ValueError(f"unknown SIMS input transform {s['transform']!r}")
    x = np.asarray(total, np.float32)
    a = (2.0 * np.sqrt(np.maximum(x, 0) + 0.375) - 2.0 * np.sqrt(0.375)) / s["scale"]
    return np.clip(a, 0, s["clip"]).astype(np.float32)


def predict_fields(predict, inputs: np.ndarray, multiple_of: int = 8, batch_size: int = 64) -> np.ndarray:
    """Foreground probability of many same-size fields, ``batch_size`` fields per network call.

    Parameters
    ----------
    predict : callable
        ``(N, H, W, 1)`` float32 -> ``(N, H, W, K)`` (e.g. ``Bundle.predictor()``); channel 0
        of the output is the particle probability (a sigmoid ``foreground`` head, or the
        particle class of a 2-class softmax ``classes`` head, see :func:`probability_channel`).
    inputs : (N, Y, X) float32
        Detection inputs (:func:`detection_input`).
    multiple_of : int
        Fields are padded (reflecting) to a multiple of this and cropped back.

    Returns
    -------
    (N, Y, X, K) float32
    """
    x = np.asarray(inputs, np.float32)
    n, h, w = x.shape
    ph, pw = (-h) % multiple_of, (-w) % multiple_of
    out = None
    for b0 in range(0, n, max(1, batch_size)):
        b = x[b0:b0 + batch_size]
        if ph or pw:
            b = np.pad(b, ((0, 0), (0, ph), (0, pw)), mode="reflect" if ph < h and pw < w else "symmetric")
        p = np.asarray(predict(b[..., None]), np.float32)[:, :h, :w]
        if out is None:
            out = np.empty((n, h, w, p.shape[-1]), np.float32)
        out[b0:b0 + len(b)] = p
    return out if out is not None else np.zeros((0, h, w, 1), np.float32)


def probability_channel(heads: Sequence) -> int:
    """Channel of the network output holding the particle probability: the ``foreground`` head,
    or the second class of a ``classes`` (softmax) head."""
    offset = 0
    for h in heads:
        kind, ch = (h.kind, h.channels) if hasattr(h, "kind") else (h, 1)
        if kind == "foreground":
            return offset
        if kind == "classes":
            return offset + 1
        offset += ch
    raise ValueError("network has neither a foreground nor a classes head")


def detect_particles(probability: np.ndarray, threshold: float = 0.5, level: float | None = 1.0,
                     min_area: int = 4) -> np.ndarray:
    """Particles from a probability map: threshold, then a watershed that splits touching ones.

    Parameters
    ----------
    probability : (Y, X) float
    threshold : float
        Probability (softmax) threshold: pixels above it are particle.
    level : float or None
        Watershed level: the h-maxima depth, in pixels, of the distance transform of the mask
        (:func:`particleseg.postprocess.split_touching`). Lower splits more; ``None`` does not split.
    min_area : int
        Smaller regions are noise and removed.

    Returns
    -------
    (Y, X) int32 labels 1..n
    """
    from .postprocess import label_mask, relabel_sequential, remove_small, split_touching

    mask = np.asarray(probability) > threshold
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    labels = label_mask(mask) if level is None else split_touching(mask, None, h=float(level))
    return relabel_sequential(remove_small(labels, min_area))


# --------------------------------------------------------------------------------------------
# measurement


def _ratio(num, den, num_err, den_err):
    """``num/den`` and its uncertainty by first-order propagation, NaN where ``den <= 0``:
    ``sigma_R = sqrt(sigma_num^2 + R^2 sigma_den^2) / den`` (defined also for ``num = 0``)."""
    num, den = np.asarray(num, float), np.asarray(den, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / den, np.nan)
        err = np.where(den > 0, np.sqrt(num_err**2 + r**2 * den_err**2) / den, np.nan)
    return r, err


def ratio_columns(isotope: str) -> tuple[str, str]:
    """Column names of the ratio ``isotope/238U`` and its uncertainty."""
    return f"ratio_{isotope}_238U", f"ratio_{isotope}_238U_err"


def measure_particles(fld: Field, labels: np.ndarray, background: str = "annulus", grow: int = 1,
                      ring: tuple[int, int] = (3, 8), min_background_px: int = 30) -> pd.DataFrame:
    """Counts of every isotope in each particle, background-corrected, and ratios to 238U.

    Parameters
    ----------
    fld : Field
    labels : (Y, X) int
        Particles (0 is background).
    background : {"annulus", "global", "none"}
        ``annulus``: the background rate of each isotope is the mean count per pixel in a ring
        between ``ring[0]`` and ``ring[1]`` pixels around the particle, excluding all particles
        (grown by ``ring[0]``, where their tails lie); a ring with fewer than
        ``min_background_px`` pixels falls back to ``global``. ``global``: the mean over all
        pixels farther than ``ring[0]`` from any particle. ``none``: no subtraction.
    grow : int
        Counts are summed over the particle grown by this many pixels (the beam spreads a
        particle's ions beyond its outline).

    Returns
    -------
    DataFrame, one row per particle: ``particle``, ``y``, ``x`` (centroid, pixels), ``area``
    (pixels of the particle), ``area_measured`` (pixels summed); for each isotope present
    ``{iso}_counts`` (gross), ``{iso}_background`` (expected background counts in the summed
    area), ``{iso}_net`` and ``{iso}_net_err``; for 234U, 235U, 236U and 238U1H
    ``ratio_{iso}_238U`` and ``ratio_{iso}_238U_err`` (NaN where the isotope was not measured);
    ``significance``: net counts of the uranium isotopes together over their uncertainty (how
    many standard deviations the particle stands above the background).

    Notes
    -----
    With gross counts ``N`` in ``A`` pixels and ``M`` counts in ``A_b`` background pixels, the
    net counts are ``N - M A / A_b`` with variance ``N + M (A / A_b)^2`` (Poisson [2]_). The
    ratio ``R = a / b`` of net counts has ``sigma_R^2 = (sigma_a^2 + R^2 sigma_b^2) / b^2``.
    """
    if background not in ("annulus", "global", "none"):
        raise ValueError(f"background must be 'annulus', 'global' or 'none', got {background!r}")
    labels = np.asarray(labels)
    ids = np.setdiff1d(np.unique(labels), [0])
    cols = particle_columns()
    if len(ids) == 0:
        return pd.DataFrame(columns=cols)
    isos = fld.isotopes
    stack = np.stack([np.asarray(fld.counts[iso], np.float64) for iso in isos])
    h, w = labels.shape
    r_in, r_out = ring
    occupied = labels > 0
    near = ndi.binary_dilation(occupied, _disk(r_in)) if r_in > 0 else occupied
    glob_px = (~near).sum()
    glob_counts = stack[:, ~near].sum(1) if glob_px else np.zeros(len(isos))
    rows = []
    slices = ndi.find_objects(labels)
    pad = max(grow, r_out) + 1
    for lab in ids:
        sl = slices[lab - 1]
        ys = slice(max(sl[0].start - pad, 0), min(sl[0].stop + pad, h))
        xs = slice(max(sl[1].start - pad, 0), min(sl[1].stop + pad, w))
        own = labels[ys, xs] == lab
        region = ndi.binary_dilation(own, _disk(grow)) & (~occupied[ys, xs] | own) if grow > 0 else own
        local = stack[:, ys, xs]
        gross = local[:, region].sum(1)
        a = region.sum()
        if background == "none":
            bg_counts, bg_px = np.zeros(len(isos)), 0
        else:
            bg_px = 0
            if background == "annulus":
                ann = ndi.binary_dilation(own, _disk(r_out)) & ~near[ys, xs]
                bg_px = ann.sum()
                bg_counts = local[:, ann].sum(1)
            if bg_px < min_background_px:
                bg_counts, bg_px = glob_counts, glob_px
        if bg_px > 0:
            scale = a / bg_px
            bkg = bg_counts * scale
            var = gross + bg_counts * scale**2
        else:
            bkg = np.zeros(len(isos))
            var = gross.copy()
        net = gross - bkg
        yy, xx = np.nonzero(labels[ys, xs] == lab)
        row = {"particle": int(lab), "y": float(yy.mean() + ys.start), "x": float(xx.mean() + xs.start),
               "area": int(own.sum()), "area_measured": int(a)}
        for k, iso in enumerate(isos):
            row.update({f"{iso}_counts": gross[k], f"{iso}_background": bkg[k], f"{iso}_net": net[k],
                        f"{iso}_net_err": np.sqrt(max(var[k], 0.0))})
        u = [k for k, iso in enumerate(isos) if iso in URANIUM]
        u_err = np.sqrt(max(var[u].sum(), 0.0))
        row["significance"] = float(net[u].sum() / u_err) if u_err > 0 else 0.0
        rows.append(row)
    table = pd.DataFrame(rows).reindex(columns=cols)
    ref, ref_err = table[f"{REFERENCE}_net"].to_numpy(float), table[f"{REFERENCE}_net_err"].to_numpy(float)
    for iso in RATIO_ISOTOPES:
        if iso in isos:
            r, e = _ratio(table[f"{iso}_net"].to_numpy(float), ref, table[f"{iso}_net_err"].to_numpy(float), ref_err)
            table[ratio_columns(iso)[0]], table[ratio_columns(iso)[1]] = r, e
    return table


def particle_columns() -> list[str]:
    """Columns of a particle table (:func:`measure_particles`), without ``field``."""
    cols = ["particle", "y", "x", "area", "area_measured"]
    for iso in ISOTOPES:
        cols += [f"{iso}_counts", f"{iso}_background", f"{iso}_net", f"{iso}_net_err"]
    for iso in RATIO_ISOTOPES:
        cols += list(ratio_columns(iso))
    return cols + ["significance"]


def significant(table: pd.DataFrame, labels: np.ndarray | None = None, min_significance: float = 5.0):
    """Keep the particles whose uranium net counts stand ``min_significance`` standard deviations
    above the background (``significance`` column of :func:`measure_particles`).

    The network sees shapes, not statistics: on a strong background a Poisson fluctuation or a
    detector spike can look like a faint particle. A detection must also be significant in
    counts. Simulated test fields: 5 sigma removes all detections in empty fields and about
    85 % of the false ones elsewhere, for 1 % of the true particles (``docs/sims.md``).

    Parameters
    ----------
    table : DataFrame
        Particles of one field (:func:`measure_particles`).
    labels : (Y, X) int, optional
        The field's particle labels; the dropped particles are erased from a copy.
    min_significance : float
        ``0`` keeps everything.

    Returns
    -------
    table, or (table, labels) when ``labels`` is given
    """
    keep = table["significance"].to_numpy(float) >= min_significance if len(table) else np.zeros(0, bool)
    kept = table[keep].reset_index(drop=True) if min_significance > 0 else table
    if labels is None:
        return kept
    if min_significance > 0 and not keep.all():
        gone = table.loc[~keep, "particle"].to_numpy(int)
        labels = np.where(np.isin(labels, gone), 0, labels).astype(labels.dtype)
    return kept, labels


def concat_particles(tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """One particle table from per-field tables (each with a ``field`` column); empty ones allowed."""
    columns = ["field"] + particle_columns()
    nonempty = [t for t in tables if len(t)]
    return pd.concat(nonempty, ignore_index=True)[columns] if nonempty else pd.DataFrame(columns=columns)


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    return x * x + y * y <= r * r + r  # a little rounder than the exact disk for small r


# --------------------------------------------------------------------------------------------
# the batch


@dataclass
class SimsParams:
    """Settings of a SIMS run; ``None`` takes the model bundle's value."""

    threshold: float | None = None
    level: float | None = None  # watershed level (h); see detect_particles
    split: bool | None = None
    min_area: int | None = None
    background: str = "annulus"
    grow: int = 1
    ring: tuple[int, int] = (3, 8)
    batch_size: int = 64  # fields per network call
    channels: list[str] | None = None
    min_significance: float | None = None  # sigma of the uranium net counts; see significant

    def resolved(self, bundle) -> "SimsParams":
        pp = {**DEFAULT_SIMS_POSTPROCESS, **bundle.metadata.get("postprocess", {})}
        split = pp.get("split", True) if self.split is None else self.split
        level = self.level if self.level is not None else pp.get("h", 1.0)
        return SimsParams(
            threshold=float(self.threshold if self.threshold is not None else pp["threshold"]),
            level=float(level) if split else None,
            split=split,
            min_area=int(self.min_area if self.min_area is not None else pp.get("min_area", 4)),
            background=self.background, grow=self.grow, ring=tuple(self.ring),
            batch_size=self.batch_size, channels=self.channels,
            min_significance=float(self.min_significance if self.min_significance is not None
                                   else pp.get("min_significance", 0.0)),
        )


def output_paths(out_dir: str | os.PathLike) -> dict[str, Path]:
    out = Path(out_dir)
    return {"particles": out / "particles.csv", "fields": out / "fields.csv", "plot": out / "ratios.png",
            "labels": out / "labels"}


class FieldDetector:
    """A bundle's network and post-processing applied to batches of fields (arrays in, labels out)."""

    def __init__(self, bundle, params: SimsParams | None = None, predictor=None):
        self.bundle = bundle
        self.params = (params or SimsParams()).resolved(bundle)
        bundle.check_use("sims")
        bundle.check_channels(1, "SIMS detection input (sum of uranium channels)")
        self._predict = predictor  # (the bundle's network is loaded on first use)
        self.channel = probability_channel(bundle.network.heads)
        self.input_settings = {**DEFAULT_INPUT, **(bundle.metadata.get("sims", {}).get("input", {}))}
        self.tile = bundle.tile

    @property
    def predict(self):
        if self._predict is None:
            self._predict = self.bundle.predictor()
        return self._predict

    def probabilities(self, totals: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Particle probability maps of fields given as summed-count images (any sizes)."""
        from .inference import predict_tiled

        out: list[np.ndarray | None] = [None] * len(totals)
        by_shape: dict[tuple, list[int]] = {}
        for i, t in enumerate(totals):
            by_shape.setdefault(np.shape(t), []).append(i)
        m = self.bundle.network.multiple_of
        for shape, idx in by_shape.items():
            x = np.stack([detection_input(totals[i], self.input_settings) for i in idx])
            if max(shape) <= max(self.tile, 256):
                p = predict_fields(self.predict, x, m, self.params.batch_size)[..., self.channel]
            else:  # large fields: tiled, one at a time
                p = np.stack([predict_tiled(self.predict, xi, tile=self.tile, overlap=self.bundle.overlap,
                                            batch_size=max(1, self.params.batch_size // 4), multiple_of=m,
                                            progress=False)[..., self.channel] for xi in x])
            for j, i in enumerate(idx):
                out[i] = p[j]
        return out  # type: ignore[return-value]

    def labels(self, probability: np.ndarray) -> np.ndarray:
        p = self.params
        return detect_particles(probability, p.threshold, p.level if p.split else None, p.min_area)


#: columns of ``fields.csv``
FIELD_COLUMNS = ["field", "status", "particles", "isotopes", "height", "width", "error"]


def field_stem(name: str) -> str:
    """The file-name stem of a field's outputs and completion record (``a/b`` -> ``a_b``)."""
    return name.replace("/", "_")


def run_settings(bundle, params: SimsParams, save_labels: bool = False) -> dict:
    """Everything that decides a field's results besides the field: the model (its bundle and a
    hash of its metadata) and the resolved settings (not ``batch_size``). A rerun skips a field
    only when these are the same as recorded (:func:`particleseg.pipeline.plan_item`)."""
    import dataclasses
    import hashlib
    import json

    resolved = dataclasses.asdict(params.resolved(bundle))
    resolved.pop("batch_size", None)
    meta = json.dumps(bundle.metadata, sort_keys=True, default=str)
    settings = {"command": "sims run", "model": getattr(bundle, "label", bundle.name),
                "model_metadata_sha256": hashlib.sha256(meta.encode()).hexdigest()[:16], **resolved,
                "save_labels": bool(save_labels)}
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists, as read back


def table_to_record(table: pd.DataFrame) -> dict:
    """A particle table as JSON-able columns with their dtypes; :func:`table_from_record` gives
    back the same values and dtypes (floats round-trip exactly, NaN included)."""
    return {"columns": list(table.columns), "dtypes": [str(t) for t in table.dtypes],
            "data": [table[c].tolist() for c in table.columns]}


def table_from_record(record: dict) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(values, dtype=dtype)
                         for c, dtype, values in zip(record["columns"], record["dtypes"], record["data"])})


def _plan_fields(sources: list[FieldSource], out: Path, settings: dict, overwrite: bool, save_labels: bool):
    """Each field's :class:`~particleseg.pipeline.ItemPlan` (done earlier, new, redo); fields
    whose outputs this run may not replace stop the run before any work, in one line."""
    from .pipeline import plan_item

    stems: dict[str, str] = {}
    for src in sources:
        other = stems.setdefault(field_stem(src.name), src.name)
        if other != src.name:
            raise InputError(f"{src.where}: fields {other!r} and {src.name!r} would have outputs of the same name; "
                             "rename one, or run them into different --out folders")
    plans = [plan_item(Path(src.where), out, settings, overwrite, outputs=_field_outputs(src, out, save_labels),
                       name=src.name, stem=f"{field_stem(src.name)}.field", inputs=src.paths) for src in sources]
    conflicts = [pl for pl in plans if pl.action == "conflict"]
    if conflicts:
        from .errors import OutputExistsError

        more = f" (and {len(conflicts) - 1} more field(s))" if len(conflicts) > 1 else ""
        raise OutputExistsError(conflicts[0].message + more)
    return plans


def _field_pixels(src: FieldSource) -> int:
    """Pixels of one channel of a field, from its first file's header (0 if unreadable)."""
    from .io import image_pixels

    try:
        return image_pixels(src.paths[0]) // (1 if src.stack is None else max(1, len(ISOTOPES)))
    except Exception:  # noqa: BLE001 - an unreadable field is reported when it is read
        return 0


def _field_outputs(src: FieldSource, out: Path, save_labels: bool) -> dict[str, Path]:
    return {"labels": out / "labels" / f"{field_stem(src.name)}_labels.tif"} if save_labels else {}


def _check_reports(out: Path, reports: list[Path], overwrite: bool) -> None:
    """``particles.csv``, ``fields.csv`` and ``ratios.png`` are rewritten by every run into a
    folder this command made (its ``.particleseg/sims.json``); found anywhere else they are
    refused (without ``overwrite``)."""
    from .io import check_outputs
    from .pipeline import RECORD_DIR

    if not overwrite and not (out / RECORD_DIR / "sims.json").is_file():
        check_outputs(reports, False)


def run_fields(
    inputs,
    bundle,
    out_dir: str | os.PathLike,
    params: SimsParams | None = None,
    pattern: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    save_labels: bool = False,
    plot: bool = True,
    predictor=None,
    scheduler=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Detect and measure the particles of all fields of view in ``inputs``, resumably.

    Fields are read ``params.batch_size`` at a time, predicted as one network batch, then
    thresholded, split and measured; a field that cannot be read is listed with its error in
    ``fields.csv`` and the run goes on.

    Each field's results are kept, as soon as it is measured, in its completion record
    ``.particleseg/FIELD.field.done.json`` (input fingerprint, settings, its particles and its
    row of ``fields.csv``; written last and atomically, after ``labels/FIELD_labels.tif``), the
    same records :func:`particleseg.pipeline.segment_files` keeps per image. A rerun of the same
    run (after a kill, Ctrl-C or a crash) takes the finished fields from their records and
    computes the others; the network batches are formed as in an uninterrupted run, so the
    outputs are identical to one. Fields whose records were made from other inputs or settings
    stop the run before any work (``overwrite`` redoes everything). Ctrl-C (KeyboardInterrupt)
    rolls back the field being written, writes the reports of the finished fields (the others
    listed as ``not started``) and is raised again.

    Writes to ``out_dir``: ``particles.csv`` (one row per particle: field, position, counts,
    background, net counts, ratios and uncertainties), ``fields.csv`` (one row per field:
    status, number of particles, error), ``ratios.png`` (:func:`plot_ratios`) and, with
    ``save_labels``, ``labels/FIELD_labels.tif``.

    ``scheduler`` (``local:N``, ``tcp://HOST:PORT`` or a :class:`distributed.Client`; see
    :mod:`particleseg.distributed`): each network batch of fields is read, predicted and measured
    by a task on a Dask cluster, and this process writes the results, as above; the outputs are
    those of a local run.

    Returns
    -------
    particles, fields : DataFrame
        ``fields.attrs`` holds ``seconds`` and the counts ``done_earlier``, ``measured``.
    """
    import json

    from tqdm.auto import tqdm

    from .io import check_output_folder, remove_stale_temporaries, write_atomic, write_csv
    from .pipeline import RECORD_DIR, _json_default, _write_item, input_fingerprint

    sources = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], FieldSource) else find_fields(inputs, pattern)
    if not sources:
        raise InputError(f"{inputs}: no TIFF fields of view found")
    out = Path(out_dir)
    paths = output_paths(out)
    reports = [paths["particles"], paths["fields"]] + ([paths["plot"]] if plot else [])
    det = FieldDetector(bundle, params, predictor)
    p = det.params
    settings = run_settings(bundle, p, save_labels)
    _check_reports(out, reports, overwrite)
    check_output_folder(out)  # (the reports are small; 16-bit labels if asked for, checked below)
    for folder in (out, out / RECORD_DIR, paths["labels"]):
        remove_stale_temporaries(folder, [q.name for q in reports])
    plans = _plan_fields(sources, out, settings, overwrite, save_labels)
    if save_labels:
        check_output_folder(out, 2 * sum(_field_pixels(src) for src, pl in zip(sources, plans) if pl.action != "done"))
    write_atomic(out / RECORD_DIR / "sims.json",
                 lambda tmp: tmp.write_text(json.dumps({"command": "sims run", "settings": settings}, indent=1)), True)
    results: dict[str, tuple[dict, pd.DataFrame | None]] = {}  # field -> (its fields.csv row, particles)
    for src, pl in zip(sources, plans):
        if pl.action == "done" and pl.row:
            results[src.name] = (pl.row["field"], table_from_record(pl.row["particles"]))
    counts = {"done_earlier": len(results), "measured": 0}
    # the same network batches as an uninterrupted run; fields done earlier are in them again
    chunks = [(chunk, {src.name for src in chunk if src.name in results})
              for chunk in (sources[b0:b0 + max(1, p.batch_size)] for b0 in range(0, len(sources), max(1, p.batch_size)))
              if not all(src.name in results for src in chunk)]
    if scheduler is not None and predictor is not None:
        raise InputError("sims run: a predictor of this process cannot run on a Dask cluster; give the bundle only")
    t0 = time.perf_counter()
    bar = tqdm(total=len(sources), desc="SIMS fields", unit="field", disable=not progress)
    interrupted = None
    cluster = contextlib.ExitStack()
    try:
        bar.update(len(results))
        if scheduler is None or not chunks:
            measured = ((i, (measure_chunk(det, chunk, done), None, [])) for i, (chunk, done) in enumerate(chunks))
        else:
            from .distributed import bundle_state, connect, map_ordered

            client = cluster.enter_context(connect(scheduler))
            measured = map_ordered(client, _chunk_task, chunks, (bundle_state(bundle), params),
                                   names=[f"fields {chunk[0].name}..{chunk[-1].name}" for chunk, _ in chunks])
        for _, (entries, error, notes) in measured:
            _show_notes(notes)
            if error is not None:
                raise error
            for src, row, t, lab in entries:
                if t is None:  # could not be read
                    results[src.name] = (row, None)
                    bar.update(1)
                    continue
                outputs = _field_outputs(src, out, save_labels)
                writers = {"labels": lambda q, lab=lab: write_tiff_labels(q, lab)}
                fingerprint = {"name": src.name, **input_fingerprint(src.paths)}
                record_row = json.loads(json.dumps({"field": row, "particles": table_to_record(t)}, default=_json_default))
                _write_item(Path(src.where), out, outputs, writers, fingerprint, settings, record_row,
                            stem=f"{field_stem(src.name)}.field")
                results[src.name] = (row, t)
                counts["measured"] += 1
                bar.update(1)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM in the CLI: the reports of what is finished
        interrupted = exc
    finally:
        bar.close()
        cluster.close()
    elapsed = time.perf_counter() - t0
    particles, fields_table = _tables(sources, results)
    fields_table.attrs.update(seconds=elapsed, **counts)
    write_csv(paths["particles"], particles, True)
    write_csv(paths["fields"], fields_table, True)
    if plot:
        plot_ratios(particles, paths["plot"], overwrite=True)
    if interrupted is not None:
        raise interrupted
    return particles, fields_table


def measure_chunk(det: FieldDetector, chunk: Sequence[FieldSource], done: set) -> Iterator[tuple]:
    """Read, predict (one network batch) and measure the fields of ``chunk`` not in ``done``.

    Yields ``(source, fields.csv row, particles, labels)`` for each: first those that cannot be
    read (particles and labels None, the row says why), then each measured field as soon as it is
    measured (the batch writes it before the next is measured). The fields in ``done`` are read
    again only to give the network the batch it had before.
    """
    p = det.params
    read: dict[str, Field] = {}
    for src in chunk:
        if src.name in done:
            continue
        try:
            read[src.name] = read_field(src, p.channels)
        except ParticlesegError as exc:
            yield src, {"field": src.name, "status": "error", "particles": 0, "isotopes": "",
                        "height": np.nan, "width": np.nan, "error": str(exc)}, None, None
    if not read:
        return
    fields = [(src, read[src.name] if src.name in read else _reread(src, p.channels))
              for src in chunk if src.name in read or src.name in done]
    fields = [(src, f) for src, f in fields if f is not None]
    probs = det.probabilities([f.total() for _, f in fields])
    for (src, f), prob in zip(fields, probs):
        if src.name in done:
            continue
        lab = det.labels(prob)
        t = measure_particles(f, lab, p.background, p.grow, p.ring)
        t, lab = significant(t, lab, p.min_significance)
        t.insert(0, "field", f.name)
        row = {"field": f.name, "status": "ok", "particles": len(t), "isotopes": " ".join(f.isotopes),
               "height": f.shape[0], "width": f.shape[1], "error": ""}
        yield src, row, t, lab


def _chunk_task(chunk_done: tuple, state: tuple, params: SimsParams | None):
    """:func:`measure_chunk` in a Dask worker, its detector made once per process
    (:mod:`particleseg.distributed`)."""
    import json as _json

    from .distributed import _noted, worker_bundle, worker_cached

    def measure():
        key = ("sims", str(state[0]), _json.dumps(state[1], sort_keys=True, default=str), repr(params))
        det = worker_cached(key, lambda: FieldDetector(worker_bundle(state), params))
        return list(measure_chunk(det, *chunk_done))

    return _noted(measure, catch=())


def _show_notes(notes) -> None:
    import warnings

    for message, category, filename, lineno in notes:
        warnings.warn_explicit(message, category, filename, lineno)


def _reread(src: FieldSource, channels) -> Field | None:
    """A field done earlier, read again for the network batch (None if it cannot be read now)."""
    try:
        return read_field(src, channels)
    except ParticlesegError:
        return None


def write_tiff_labels(path: Path, labels: np.ndarray) -> None:
    """A field's labels as 16-bit ``labels/FIELD_labels.tif``."""
    from .io import write_tiff

    write_tiff(path, labels.astype(np.uint16), overwrite=True)


def _tables(sources: Sequence[FieldSource], results: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``particles.csv`` and ``fields.csv`` of the fields in ``results``, in the order of
    ``sources``; fields without results are listed as ``not started``."""
    rows, tables = [], []
    for src in sources:
        row, table = results.get(src.name, ({"field": src.name, "status": "not started", "particles": 0, "isotopes": "",
                                             "height": np.nan, "width": np.nan, "error": ""}, None))
        rows.append(row)
        if table is not None:
            tables.append(table)
    return concat_particles(tables), pd.DataFrame(rows, columns=FIELD_COLUMNS)


# --------------------------------------------------------------------------------------------
# plots


def plot_ratios(particles: pd.DataFrame, path: str | os.PathLike, truth: pd.DataFrame | None = None,
                overwrite: bool = False, title: str = "") -> Path:
    """Ratio plots as a PNG: 235U/238U against 238U net counts (with uncertainties), the
    distribution of 235U/238U (counts-weighted and not), and 234U/238U and 236U/238U against
    235U/238U. With ``truth`` (a simulator's ``truth.csv``) the true values are drawn too."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .io import write_atomic

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), layout="constrained")
    r5, e5 = ratio_columns("235U")
    t = particles
    ok = t[r5].notna() & (t[f"{REFERENCE}_net"] > 0) if len(t) else np.zeros(0, bool)
    t = t[ok] if len(t) else t
    ax = axes[0, 0]
    if len(t):
        ax.errorbar(t[f"{REFERENCE}_net"], t[r5], yerr=t[e5], fmt="o", ms=3, alpha=0.6, elinewidth=0.7, label="particles")
    if truth is not None and len(truth):
        ax.plot(truth[f"{REFERENCE}_expected"], truth[r5], "x", color="k", ms=4, alpha=0.6, label="truth")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("238U net counts")
    ax.set_ylabel("235U/238U")
    _legend(ax)
    ax = axes[0, 1]
    vals = t[r5].to_numpy(float) if len(t) else np.zeros(0)
    vals = vals[vals > 0]
    tv = truth[r5].to_numpy(float) if truth is not None and len(truth) else np.zeros(0)
    allv = np.concatenate([vals, tv[tv > 0]])
    if len(allv):
        bins = np.logspace(np.log10(allv.min()) - 0.1, np.log10(allv.max()) + 0.1, 50)
        ax.hist(vals, bins=bins, alpha=0.6, label=f"recovered ({len(vals)})")
        if len(tv):
            ax.hist(tv[tv > 0], bins=bins, histtype="step", color="k", label=f"truth ({len(tv)})")
        ax.set_xscale("log")
    ax.set_xlabel("235U/238U")
    ax.set_ylabel("particles")
    _legend(ax)
    for ax, iso in zip(axes[1], ("234U", "236U")):
        rc, ec = ratio_columns(iso)
        if len(t) and rc in t and t[rc].notna().any():
            ax.errorbar(t[r5], t[rc], xerr=t[e5], yerr=t[ec], fmt="o", ms=3, alpha=0.5, elinewidth=0.5, label="particles")
        if truth is not None and len(truth) and rc in truth:
            ax.plot(truth[r5], truth[rc], "x", color="k", ms=4, alpha=0.6, label="truth")
        ax.set_xscale("log")
        ax.set_xlabel("235U/238U")
        ax.set_ylabel(f"{iso}/238U")
        _legend(ax)
    fig.suptitle(title or f"{len(particles)} particles")
    out = write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), overwrite)
    plt.close(fig)
    return out


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8)


# --------------------------------------------------------------------------------------------
# comparison with the truth of simulated fields


def match_particles(labels: np.ndarray, truth_labels: np.ndarray, min_iou: float = 0.3) -> dict[int, int]:
    """Detected particle -> true particle, one-to-one, greedily by IoU (pairs above ``min_iou``)."""
    from .metrics import iou_matrix

    if labels.max() == 0 or truth_labels.max() == 0:
        return {}
    iou, truth_ids, pred_ids = iou_matrix(truth_labels, labels, return_ids=True)
    pairs = sorted(((iou[i, j], truth_ids[i], pred_ids[j]) for i, j in zip(*np.nonzero(iou >= min_iou))), reverse=True)
    used_t, used_p, out = set(), set(), {}
    for _, t, p in pairs:
        if t not in used_t and p not in used_p:
            out[int(p)] = int(t)
            used_t.add(t)
            used_p.add(p)
    return out


def score_detection(particles: pd.DataFrame, truth: pd.DataFrame, matches: pd.DataFrame | None = None,
                    isotope: str = "235U", min_counts: float = 0.0) -> dict:
    """How well a run recovers the truth of simulated fields.

    Parameters
    ----------
    particles : DataFrame
        Detected particles (:func:`measure_particles` with a ``field`` column).
    truth : DataFrame
        True particles (``truth.csv`` of :func:`particleseg.sims_simulate.simulate_fields`).
    matches : DataFrame, optional
        Columns ``field``, ``particle``, ``truth_label`` pairing detections with true particles;
        gives the per-particle pulls.
    isotope : str
        The ratio ``isotope/238U`` whose distribution is compared.
    min_counts : float
        Particles whose true expected 238U counts are below this are left out of the truth.

    Returns
    -------
    dict with ``n_true``, ``n_detected``, ``count_error`` (relative), ``matched``, ``recall``,
    ``precision``, ``ratio_distance`` (1-Wasserstein distance between the log10 ratio
    distributions, each particle weighted by its 238U counts), ``ratio_distance_unweighted``,
    ``pull_median``, ``pull_iqr_sigma`` (robust spread of ``(R - R_true)/sigma_R`` of matched
    particles; 1 means the uncertainties are right) and ``score`` (``count_error + ratio_distance``,
    lower is better: the criterion of the parameter sweep).
    """
    from scipy.stats import wasserstein_distance

    rc, ec = ratio_columns(isotope)
    tr = truth[truth[f"{REFERENCE}_expected"] >= min_counts] if min_counts else truth
    n_true, n_det = len(tr), len(particles)
    out = {"n_true": n_true, "n_detected": n_det,
           "count_error": abs(n_det - n_true) / max(n_true, 1)}
    det = particles[(particles[f"{REFERENCE}_net"] > 0) & particles[rc].gt(0)] if n_det else particles
    if len(det) and len(tr):
        a = np.log10(det[rc].to_numpy(float))
        b = np.log10(tr[rc].to_numpy(float))
        wa = det[f"{REFERENCE}_net"].to_numpy(float)
        wb = tr[f"{REFERENCE}_expected"].to_numpy(float)
        out["ratio_distance"] = float(wasserstein_distance(a, b, wa, wb))
        out["ratio_distance_unweighted"] = float(wasserstein_distance(a, b))
    else:
        out["ratio_distance"] = out["ratio_distance_unweighted"] = float("nan") if (n_det or n_true) else 0.0
    if matches is not None and len(matches):
        m = matches.merge(particles, on=["field", "particle"]).merge(
            truth.rename(columns={c: "true_" + c for c in truth.columns if c not in ("field", "label")}),
            left_on=["field", "truth_label"], right_on=["field", "label"])
        pull = ((m[rc] - m["true_" + rc]) / m[ec]).to_numpy(float)
        pull = pull[np.isfinite(pull)]
        out["matched"] = len(m)
        out["recall"] = len(m) / max(n_true, 1)
        out["precision"] = len(m) / max(n_det, 1)
        if len(pull):
            q1, med, q3 = np.percentile(pull, [25, 50, 75])
            out["pull_median"] = float(med)
            out["pull_iqr_sigma"] = float((q3 - q1) / 1.349)
    d = out["ratio_distance"]
    out["score"] = out["count_error"] + (d if np.isfinite(d) else 1.0)
    return out
