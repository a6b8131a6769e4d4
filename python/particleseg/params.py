"""The segmentation parameters, declared once for every route.

Each parameter of a segmentation run has one name, used as it is everywhere:

* the Python API: ``SegmentParams(seed_level=0.6)`` (:class:`particleseg.pipeline.SegmentParams`),
* the command line: ``particleseg segment --seed-level 0.6`` (underscores become dashes),
* ImageJ macros and the recorder: ``run("Segment Particles...", "seed_level=0.6")``,
* the SciJava scripts of ``fiji-scripts/`` (``#@ Double (...) seed_level``).

The command-line options (:func:`add_arguments`), the GenericDialogs and the SciJava script
parameters (:mod:`particleseg.fiji.options`) are generated from :data:`PARAMETERS`, with the
range, the help text and the default. A default marked ``bundle`` comes from the model bundle
(:func:`bundle_defaults`): the dialog shows it, and a macro, a command line or a Python call that
leaves the parameter out gets it.

Names are chosen so that ImageJ reads each one as its own macro key: ImageJ finds ``key=``
anywhere not preceded by a letter, so no name ends with ``_`` + another name (``min_area``
would be read as ``area``, ``seed_threshold`` and ``classifier_threshold`` as ``threshold``).
The former names are accepted as aliases (:data:`ALIASES`): ``seed_threshold`` -> ``seed_level``,
``h`` -> ``split_level``, ``min_area`` -> ``min_size``, ``classifier_threshold`` -> ``min_score``;
on the command line ``--seed-threshold``, ``--min-area``, ``--classifier-threshold``, ``--keep-border``.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import InputError

NONE = "none"
INTENSITY_METHODS = (NONE, "li", "otsu", "mean", "median")
POLARITIES = ("bright", "dark")
#: the inference engines (:meth:`particleseg.models.Bundle.predictor`)
ENGINES = ("auto", "onnx", "keras")
#: the shape ranges, in the order of the dialog and of ``SegmentParams.shape``
SHAPE_NAMES = ("area", "ecd", "feret_min", "feret_max", "circularity", "solidity", "aspect_ratio")
#: ranges that can never exceed 1 (``0-1`` is no constraint)
UNIT_INTERVAL = ("circularity", "solidity")


@dataclass(frozen=True)
class Parameter:
    """One segmentation parameter.

    Attributes
    ----------
    name : str
        The one name (Python keyword, macro key, script parameter; ``--name-with-dashes`` on
        the command line).
    kind : {"number", "int", "bool", "choice", "range", "string"}
    help : str
    default :
        The default when the bundle has none (``bundle`` is None), and the dialog's fallback.
    bundle : str or None
        Where the bundle holds the default: ``postprocess.KEY``, ``input.polarity`` or
        ``classifier.threshold``.
    unit : {"", "px", "length", "area"}
        What the number is measured in (labels say ``px`` or the image's calibrated unit).
    advanced : bool
        In the second ("advanced") dialog of the Fiji commands.
    aliases : tuple of str
        Former names, still accepted.
    cli, fiji : bool
        Offered on the command line / in the Fiji commands.
    """

    name: str
    kind: str
    help: str
    default: Any = None
    bundle: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    unit: str = ""
    advanced: bool = True
    aliases: tuple[str, ...] = ()
    cli: bool = True
    fiji: bool = True

    @property
    def option(self) -> str:
        """The command-line option, ``--seed-level``."""
        return "--" + self.name.replace("_", "-")


def _range(name: str, what: str, unit: str) -> Parameter:
    default = "0-1" if name in UNIT_INTERVAL else "0-Infinity"
    return Parameter(name, "range", f"keep particles whose {what} is in MIN-MAX", default, unit=unit)


PARAMETERS: tuple[Parameter, ...] = (
    Parameter(
        "threshold", "number", "foreground probability threshold", 0.5, "postprocess.threshold", 0, 1, advanced=False
    ),
    Parameter("split", "bool", "split touching particles (watershed)", True, "postprocess.split", advanced=False),
    Parameter(
        "exclude_border",
        "bool",
        "reject particles touching the image border or the data bar",
        True,
        "postprocess.exclude_border",
        advanced=False,
    ),
    Parameter(
        "seed_level",
        "number",
        "watershed seed level on the network's distance map (higher splits more)",
        0.5,
        "postprocess.seed_threshold",
        0,
        1,
        aliases=("seed_threshold",),
    ),
    Parameter(
        "seed_depth",
        "number",
        "watershed seeds are the peaks of the network's distance map rising this far above "
        "their saddle, above the seed level (0: every region above the seed level; lower splits more)",
        0.0,
        "postprocess.seed_depth",
        0,
        1,
    ),
    Parameter(
        "merge_level",
        "number",
        "after the watershed, touching particles whose shared border has at least this mean "
        "foreground probability become one (0: never; lower merges more)",
        0.0,
        "postprocess.merge_level",
        0,
        1,
    ),
    Parameter(
        "split_level",
        "number",
        "h-maxima depth of the distance-transform watershed, without a distance head (lower splits more)",
        1.0,
        "postprocess.h",
        0,
        unit="px",
        aliases=("h",),
    ),
    Parameter(
        "min_size",
        "int",
        "remove particles of fewer pixels (noise)",
        15,
        "postprocess.min_area",
        0,
        unit="px",
        aliases=("min_area",),
    ),
    Parameter(
        "min_confidence",
        "number",
        "remove particles whose mean foreground probability is below this (0 keeps all)",
        0.0,
        "postprocess.min_confidence",
        0,
        1,
    ),
    Parameter("fill_holes", "bool", "fill holes inside particles", True, "postprocess.fill_holes"),
    Parameter(
        "augment",
        "bool",
        "average the network's output over the 8 flips and rotations of the image "
        "(test-time augmentation): smoother outlines, fewer spurious particles, 8x the network time",
        False,
        "postprocess.augment",
    ),
    Parameter(
        "min_score",
        "number",
        "keep particles whose particle-classifier score reaches this (bundles with a classifier; 0 keeps all)",
        0.0,
        "classifier.threshold",
        0,
        1,
        aliases=("classifier_threshold",),
    ),
    Parameter(
        "intensity_filter",
        "choice",
        "reject particles whose mean gray value is on the background side of this global threshold",
        NONE,
        choices=INTENSITY_METHODS,
    ),
    Parameter(
        "polarity",
        "choice",
        "particles brighter (SEM) or darker (TEM bright field) than the background; auto: estimated per image",
        "auto",
        choices=("auto",) + POLARITIES,
    ),
    _range("area", "area", "area"),
    _range("ecd", "equivalent circular diameter", "length"),
    _range("feret_min", "minimum Feret diameter", "length"),
    _range("feret_max", "maximum Feret diameter", "length"),
    _range("circularity", "circularity (4 pi area / perimeter², 0-1)", ""),
    _range("solidity", "solidity (area / convex area, 0-1)", ""),
    _range("aspect_ratio", "aspect ratio (major / minor axis)", ""),
    Parameter(
        "crop_rows",
        "string",
        "rows of the microscope's data bar at the bottom to ignore (auto detects them, 0 keeps all)",
        "auto",
    ),
    Parameter(
        "annotations",
        "bool",
        "find burned-in scale bars, their labels and panel letters: paint them "
        "over for the network and reject particles lying on them",
        True,
    ),
    Parameter(
        "particle_size",
        "number",
        "typical particle diameter in this image, in pixels; the image is "
        "resampled to the model's training scale (0: estimated per image)",
        0.0,
        minimum=0,
        unit="px",
    ),
    Parameter(
        "rescale",
        "number",
        "resample the image by this factor before inference instead of the estimated scale (1: as it is; 0: estimated)",
        0.0,
        minimum=0,
    ),
    Parameter(
        "tile",
        "int",
        "largest tile side in pixels, at most tile x tile pixels per network call; an image "
        "that fits is predicted whole, in tiles of at most 2.5 Mpx (default: the bundle's)",
        None,
        minimum=16,
        fiji=False,
    ),
    Parameter(
        "overlap",
        "int",
        "halo of each tile in pixels: context predicted and cut off (default: the bundle's, "
        "at least the network's receptive field, so that tiles give the whole-image result)",
        None,
        minimum=0,
        fiji=False,
    ),
    Parameter("batch_size", "int", "tiles per network call", 4, minimum=1, fiji=False),
    Parameter(
        "engine",
        "choice",
        "what runs the network: auto (ONNX Runtime when the model has an ONNX export and "
        "onnxruntime is installed, else Keras), onnx or keras",
        "auto",
        choices=ENGINES,
    ),
    Parameter(
        "jobs",
        "int",
        "images of a batch segmented at the same time, each in a worker process, with the "
        "results of one after another (0: one per usable CPU core, the command line's default; 1: one after "
        "another, the Python default)",
        0,
        minimum=0,
        fiji=False,
    ),
    Parameter(
        "strict",
        "bool",
        "calibration metadata that cannot be used (zero or infinite pixel size, unknown unit) "
        "is an error naming the file and the tag, instead of a note and measuring without it",
        False,
    ),
)

#: where a batch runs: not a segmentation parameter (it decides no result, so it is no SegmentParams
#: field and no Fiji or napari field); an option of ``segment``, ``sims run`` and ``fibsem segment``
#: and an argument of :func:`particleseg.distributed.segment_files`, :func:`particleseg.sims.run_fields`
#: and :func:`particleseg.fibsem.segment_stack` (:mod:`particleseg.distributed`)
SCHEDULER = Parameter(
    "scheduler",
    "string",
    "run the batch on a Dask cluster, each image, network batch of fields "
    "or slice a task, with the outputs of a local run: local:N (N worker processes on this "
    "machine) or tcp://HOST:PORT (a running dask scheduler; its workers read the inputs at the "
    "same paths); needs particleseg[dask]",
    None,
    fiji=False,
)
BATCH_PARAMETERS: tuple[Parameter, ...] = (SCHEDULER,)

BY_NAME: dict[str, Parameter] = {p.name: p for p in PARAMETERS}
#: the parameters whose default is one of the bundle's post-processing settings
#: (``postprocess.*``): what :func:`bundle_defaults` reads from a bundle besides the polarity
#: and the classifier's threshold
POSTPROCESS_PARAMETERS: tuple[str, ...] = tuple(
    p.name for p in PARAMETERS if p.bundle and p.bundle.startswith("postprocess.")
)
#: former name -> name
ALIASES: dict[str, str] = {a: p.name for p in PARAMETERS for a in p.aliases}


def parameter(name: str) -> Parameter:
    """Return the :class:`Parameter` called ``name`` (a former name, :data:`ALIASES`, is accepted)."""
    return BY_NAME[ALIASES.get(name, name)]


# ------------------------------------------------------------------------------------------
# defaults


def bundle_defaults(bundle) -> dict[str, Any]:
    """Return the default of every parameter for ``bundle`` (a :class:`~particleseg.models.Bundle`), by name.

    The defaults are the bundle's post-processing settings, its input polarity and its
    classifier's threshold (0 without a classifier).
    """
    post = bundle.postprocess
    meta = bundle.metadata
    out = {}
    for p in PARAMETERS:
        value = p.default
        if p.bundle and p.bundle.startswith("postprocess."):
            value = post.get(p.bundle.split(".", 1)[1], value)
        elif p.bundle == "input.polarity":
            value = meta.get("input", {}).get("polarity") or value
        elif p.bundle == "classifier.threshold":
            value = (meta.get("classifier") or {}).get("threshold", 0.5) if bundle.has_classifier else p.default
        out[p.name] = value
    return out


# ------------------------------------------------------------------------------------------
# values


def parse_range(text, name: str = "range") -> tuple[float | None, float | None]:
    """Parse ``MIN-MAX`` or ``MIN:MAX`` to ``(min, max)``, with None for an open side.

    ``MIN-MAX`` is ImageJ's syntax (``10-500``, ``0-Infinity``, ``0.2-1.00``); in ``MIN:MAX``
    either side may be empty. A side is open when it is 0 or less below, Infinity above.

    >>> parse_range("10-Infinity")
    (10.0, None)
    >>> parse_range(":0.9")
    (None, 0.9)
    """
    if isinstance(text, tuple):
        return text
    s = str(text).strip()
    sep = s.find(":") if ":" in s else next((i for i in range(1, len(s)) if s[i] == "-" and s[i - 1] not in "eE"), -1)
    try:
        if sep < 0:
            raise ValueError
        lo_s, hi_s = s[:sep].strip(), s[sep + 1 :].strip()
        lo = float(lo_s) if lo_s else 0.0
        hi = float(hi_s.replace("Infinity", "inf").replace("infinity", "inf")) if hi_s else math.inf
    except ValueError:
        raise InputError(f"{name}: expected MIN-MAX such as 10-500 or 0-Infinity, got {text!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise InputError(f"{name}: invalid range {text!r} (MIN must not exceed MAX)")
    return (lo if lo > 0 else None, hi if math.isfinite(hi) else None)


def format_range(lo: float | None, hi: float | None) -> str:
    """Format a range as :func:`parse_range` reads it: ``(10, None)`` -> ``10-Infinity``."""
    return f"{0 if lo is None else lo:g}-{'Infinity' if hi is None else f'{hi:g}'}"


def parse_crop_rows(text) -> int | str:
    """``auto`` (or empty) or a number of rows >= 0."""
    s = str(text).strip().lower()
    if s in ("auto", ""):
        return "auto"
    try:
        n = int(float(s))
    except ValueError:
        raise InputError(f"crop_rows: expected a number of rows or auto, got {text!r}") from None
    if n < 0:
        raise InputError(f"crop_rows: must not be negative, got {n}")
    return n


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``0.3,0.5,0.7`` or ``START:STOP:STEP`` (STOP included) -> thresholds in [0, 1]."""
    s = str(text).strip()
    try:
        if ":" in s:
            parts = [float(p) for p in s.split(":")]
            if len(parts) != 3 or parts[2] <= 0:
                raise ValueError
            start, stop, step = parts
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = tuple(round(start + i * step, 10) for i in range(max(n, 0)))
        else:
            values = tuple(float(p) for p in re.split(r"[,\s]+", s) if p)
    except ValueError:
        raise InputError(
            f"thresholds: expected a list such as 0.3,0.5 or START:STOP:STEP such as 0:1:0.1, got {text!r}"
        ) from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise InputError(f"thresholds: need values between 0 and 1, got {text!r}")
    return values


def shape_ranges(values: dict[str, Any], where: str = "") -> dict[str, tuple[float | None, float | None]]:
    """Return the shape filter of the range parameters in ``values``: only real constraints."""
    shape = {}
    for name in SHAPE_NAMES:
        text = values.get(name)
        if text is None or text == "":
            continue
        lo, hi = parse_range(text, f"{where}: {name}" if where else name)
        if name in UNIT_INTERVAL and hi is not None and hi >= 1:
            hi = None
        if lo is not None or hi is not None:
            shape[name] = (lo, hi)
    return shape


def segment_params(values: dict[str, Any], where: str = "", progress: bool | None = False):
    """Make :class:`~particleseg.pipeline.SegmentParams` from parameter values by name.

    The values are a dialog's, a macro's, a script's or the command line's. Missing or None
    values take the bundle's default when the run starts; former names (:data:`ALIASES`) are
    accepted.
    """
    from .pipeline import SegmentParams  # cycle (pipeline imports params), and pipeline loads NumPy: --help stays light

    v = {ALIASES.get(k, k): x for k, x in values.items()}
    method = v.get("intensity_filter")
    size = v.get("particle_size")
    rescale = v.get("rescale")
    kw = {name: v.get(name) for name in (*POSTPROCESS_PARAMETERS, "min_score", "polarity", "tile", "overlap")}
    for name in ("threshold", "seed_level", "seed_depth", "merge_level", "split_level", "min_confidence", "min_score"):
        if kw[name] is not None:
            kw[name] = float(kw[name])
    for name in ("split", "fill_holes", "exclude_border"):
        if kw[name] is not None:
            kw[name] = bool(kw[name])
    for name in ("min_size", "tile", "overlap"):
        if kw[name] is not None:
            kw[name] = int(kw[name])
    return SegmentParams(
        **kw,
        intensity_filter=None if method in (None, NONE) else method,
        shape=shape_ranges(v, where),
        crop_rows=parse_crop_rows(v["crop_rows"]) if v.get("crop_rows") is not None else "auto",
        particle_size=float(size) if size else None,
        rescale=float(rescale) if rescale else None,
        batch_size=int(v.get("batch_size") or 4),
        engine=str(v.get("engine") or "auto"),
        progress=progress,
        strict=bool(v.get("strict") or False),
        annotations=True if v.get("annotations") is None else bool(v["annotations"]),
        jobs=1 if v.get("jobs") is None else int(v["jobs"]),
    )


# ------------------------------------------------------------------------------------------
# the command line


def _cli_type(p: Parameter):
    if p.kind in ("number", "int"):
        convert = float if p.kind == "number" else int

        def number_type(text):
            value = convert(text)  # ValueError: argparse says "invalid float value: 'x'"
            low, high = p.minimum, p.maximum
            if (low is not None and value < low) or (high is not None and value > high) or value != value:
                span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
                raise argparse.ArgumentTypeError(f"must be {span}, got {text}")
            return value

        number_type.__name__ = convert.__name__  # argparse names the type in its message
        return number_type
    if p.kind == "range":

        def range_type(text):
            try:
                return parse_range(text, p.option)
            except InputError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return range_type
    if p.kind == "string" and p.name == "crop_rows":

        def crop_type(text):
            try:
                return parse_crop_rows(text)
            except InputError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        return crop_type
    return str


def add_arguments(parser, names: Iterable[str] | None = None, groups: dict[str, Any] | None = None) -> None:
    """Add the command-line options of the parameters (all, or ``names``) to ``parser``.

    Every option defaults to None ("the bundle's default"); a boolean parameter ``x`` gets
    ``--x`` and ``--no-x``. Former names are accepted as hidden aliases.
    """
    groups = groups or {}
    for p in PARAMETERS:
        if not p.cli or (names is not None and p.name not in names):
            continue
        g = groups.get(p.name, parser)
        default = (
            f"; default: {'the bundle' if p.bundle else p.default}" if (p.bundle or p.default not in (None, "")) else ""
        )
        if p.kind == "bool":
            g.add_argument(
                p.option, dest=p.name, action=argparse.BooleanOptionalAction, default=None, help=p.help + default
            )
            if p.name == "exclude_border":
                g.add_argument("--keep-border", dest=p.name, action="store_false", help=argparse.SUPPRESS)
            continue
        metavar = {"range": "MIN-MAX", "int": "N", "number": "X"}.get(p.kind, p.name.upper())
        if p.name == "crop_rows":
            metavar = "N|auto"
        kwargs = dict(dest=p.name, type=_cli_type(p), default=None, metavar=metavar, help=p.help + default)
        if p.kind == "choice":
            kwargs.update(choices=p.choices, metavar=None)
        former = ["--" + a.replace("_", "-") for a in p.aliases if a != "h"]
        if former:
            kwargs["help"] += f" (formerly {', '.join(former)})"
        g.add_argument(p.option, **kwargs)
        for option in former:
            g.add_argument(option, **{**kwargs, "help": argparse.SUPPRESS})


def add_scheduler_argument(parser) -> None:
    """Add the ``--scheduler`` option (:data:`SCHEDULER`) of a batch command to ``parser``.

    Its value is checked when the command parses it (:func:`particleseg.distributed.parse_scheduler`).
    """
    p = SCHEDULER

    def scheduler_type(text):
        from .distributed import parse_scheduler  # when --scheduler is parsed: registering options stays fast

        try:
            parse_scheduler(text)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc).replace("scheduler: ", "", 1)) from None
        return text

    parser.add_argument(
        p.option, dest=p.name, type=scheduler_type, default=None, metavar="local:N|tcp://HOST:PORT", help=p.help
    )


def values_from_args(args) -> dict[str, Any]:
    """Return the parameter values of parsed command-line arguments, by name (None: not given)."""
    return {p.name: getattr(args, p.name, None) for p in PARAMETERS if p.cli}


__all__ = [
    "PARAMETERS",
    "Parameter",
    "ALIASES",
    "SHAPE_NAMES",
    "bundle_defaults",
    "POSTPROCESS_PARAMETERS",
    "parse_range",
    "format_range",
    "parse_crop_rows",
    "parse_thresholds",
    "shape_ranges",
    "segment_params",
    "add_arguments",
    "values_from_args",
    "parameter",
    "SCHEDULER",
    "BATCH_PARAMETERS",
    "add_scheduler_argument",
]
