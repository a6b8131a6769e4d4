"""The Fiji commands' parameters, and ImageJ macro option strings, in pure Python (no Java).

Every command is described once, by a :class:`CommandSpec` whose :class:`Field` s give the
macro key, the dialog label, the type and the default of each parameter. The ImageJ 1.x
GenericDialog (:mod:`particleseg.fiji.bridge`) and the SciJava scripts in ``fiji-scripts/``
use the same keys, so one macro line works with both::

    run("Segment Particles...", "model=default threshold=0.50 split display add");

ImageJ turns a GenericDialog label into a macro key by taking its first word in lower case
(``Macro.trimKey``); labels here are written with underscores so that key and parameter name
agree (``Seed_level`` displays as "Seed level" and is recorded as ``seed_level=``).
Check boxes are recorded as a bare key when checked and left out when not (ImageJ's rule);
``key=true`` / ``key=false``, as Fiji records SciJava script parameters, are accepted too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import InputError

NONE = "none"
INTENSITY_METHODS = (NONE, "li", "otsu", "mean", "median")
POLARITIES = ("bright", "dark")
SIZE_COLUMNS = ("feret_min", "feret_max", "ecd", "area")
#: shape ranges, in calibrated units; the order is the dialog's
SHAPE_FIELDS = ("area", "ecd", "feret_min", "feret_max", "circularity", "solidity", "aspect_ratio")
#: keys a macro may carry that are not parameters: Fiji records a SciJava script's image and
#: gateway inputs under these names
IGNORED_KEYS = ("imp", "ij")


@dataclass(frozen=True)
class Field:
    """One parameter of a command.

    kind : ``number``, ``int``, ``bool``, ``string``, ``choice``, ``range``, ``dir``,
    ``image`` (title of an open image, or ``none`` when ``optional``), ``message`` (text only).
    """

    key: str
    label: str
    kind: str
    default: Any = None
    choices: tuple[str, ...] = ()
    digits: int = 2
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False
    help: str = ""
    columns: int = 0

    def __post_init__(self):
        if self.kind != "message" and self.label.split(" ")[0].lower() != self.key:
            raise ValueError(f"label {self.label!r} would be recorded as {self.label.split(' ')[0].lower()!r}, not {self.key!r}")


@dataclass(frozen=True)
class CommandSpec:
    name: str  # menu label, e.g. "Segment Particles..."
    fields: tuple[Field, ...]
    help: str
    needs_image: bool = True  # works on the active image
    long_running: bool = False  # from the menu, runs on a worker thread

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.key for f in self.fields if f.kind != "message")

    def field(self, key: str) -> Field:
        for f in self.fields:
            if f.key == key:
                return f
        raise KeyError(key)

    @property
    def script_name(self) -> str:
        """File name of the SciJava script (Fiji turns ``_`` into spaces in menus)."""
        return self.name.replace(" ", "_") + ".py"


# ------------------------------------------------------------------------------------------
# the parameters shared by the commands


def _particle_fields(defaults: dict[str, Any] | None = None) -> tuple[Field, ...]:
    d = {"threshold": 0.5, "split": True, "seed_threshold": 0.5, "h": 1.0, "min_area": 15,
         "fill_holes": True, "exclude_border": True, **(defaults or {})}
    return (
        Field("threshold", "Threshold", "number", d["threshold"], minimum=0, maximum=1,
              help="foreground probability threshold"),
        Field("split", "Split touching particles", "bool", d["split"], help="watershed splitting"),
        Field("seed_level", "Seed_level", "number", d["seed_threshold"], minimum=0, maximum=1,
              help="watershed seed level on the network's distance map (higher splits more)"),
        Field("split_level", "Split_level (px)", "number", d["h"], minimum=0,
              help="h-maxima depth of the distance-transform watershed (lower splits more)"),
        Field("min_size", "Min_size (px)", "int", d["min_area"], minimum=0,
              help="particles of fewer pixels are noise and removed"),
        Field("fill_holes", "Fill_holes", "bool", d["fill_holes"]),
    )


def _filter_fields(exclude_border: bool = True) -> tuple[Field, ...]:
    return (
        Field("exclude_border", "Exclude_border particles", "bool", exclude_border,
              help="reject particles touching the image border (or the data bar)"),
        Field("intensity_filter", "Intensity_filter", "choice", NONE, INTENSITY_METHODS,
              help="reject particles whose mean gray value is on the background side of this threshold"),
        Field("polarity", "Polarity", "choice", "bright", POLARITIES,
              help="particles brighter (SEM) or darker (TEM) than the background"),
    ) + tuple(
        Field(name, label, "range", "0.00-1.00" if name in ("circularity", "solidity") else "0-Infinity", help=hint, columns=14)
        for name, (label, hint) in _SHAPE_LABELS.items()
    )


_SHAPE_LABELS = {
    "area": ("Area (unit²)", "keep particles whose area (calibrated) is in MIN-MAX"),
    "ecd": ("ECD (unit)", "keep particles whose equivalent circular diameter is in MIN-MAX"),
    "feret_min": ("Feret_min (unit)", "keep particles whose minimum Feret diameter is in MIN-MAX"),
    "feret_max": ("Feret_max (unit)", "keep particles whose maximum Feret diameter is in MIN-MAX"),
    "circularity": ("Circularity (0-1)", "keep particles whose circularity 4 pi area / perimeter² is in MIN-MAX"),
    "solidity": ("Solidity (0-1)", "keep particles whose solidity (area / convex area) is in MIN-MAX"),
    "aspect_ratio": ("Aspect_ratio", "keep particles whose aspect ratio (major / minor axis) is in MIN-MAX"),
}


_HISTOGRAM_OF = Field("histogram_of", "Histogram_of", "choice", "feret_min", SIZE_COLUMNS)


def segment_fields(model: str = "default", models: Sequence[str] = ("default",), defaults: dict | None = None) -> tuple[Field, ...]:
    """Parameters of Segment Particles... (and of the batch), with a bundle's defaults."""
    return (
        Field("model", "Model", "choice", model, tuple(models),
              help="installed model bundle, or in a macro the path of a bundle folder or zip"),
        *_particle_fields(defaults),
        *_filter_fields((defaults or {}).get("exclude_border", True)),
        Field("crop_rows", "Crop_rows (auto or N)", "string", "auto", columns=6,
              help="rows of the microscope's data bar at the bottom to ignore"),
        Field("particle_size", "Particle_size (px, 0 = as trained)", "number", 0.0, minimum=0,
              help="typical particle diameter in this image; it is resampled to the model's scale"),
    )


SEGMENT_OUTPUTS = (
    Field("probability", "Probability image", "bool", True),
    Field("labels", "Labels image", "bool", True),
    Field("mask", "Mask image", "bool", True),
    Field("clear", "Clear results", "bool", True, help="reset the Results table (and ROI Manager) first"),
    Field("add", "Add to ROI Manager", "bool", True),
    Field("overlay", "Overlay on image", "bool", True, help="kept particles green, rejected red"),
    Field("histogram", "Histogram plot", "bool", True),
    _HISTOGRAM_OF,
)


def build_specs(model: str = "default", models: Sequence[str] = ("default",), defaults: dict | None = None) -> dict[str, CommandSpec]:
    """All commands, with the model choice and particle defaults of the given bundle."""
    seg = segment_fields(model, models, defaults)
    specs = [
        CommandSpec(
            "Segment Particles...", seg + SEGMENT_OUTPUTS,
            "Segment the particles of the active 2D image with a model bundle, split, filter and "
            "measure them: Results table, ROI Manager, probability/labels/mask images, overlay and histogram.",
        ),
        CommandSpec(
            "Split Touching Particles...",
            (
                Field("distance", "Distance map", "image", NONE, optional=True,
                      help="a map that is high in particle centres (the probability or distance output); "
                           "none: the Euclidean distance transform of the mask"),
                Field("seed_level", "Seed_level", "number", 0.5, minimum=0, maximum=1,
                      help="seed level on the distance map (higher splits more)"),
                Field("split_level", "Split_level (px)", "number", 1.0, minimum=0,
                      help="h-maxima depth of the distance-transform watershed (lower splits more)"),
                Field("min_size", "Min_size (px)", "int", 0, minimum=0),
                Field("mask", "Mask image (with separating lines)", "bool", False),
                Field("add", "Add to ROI Manager", "bool", False),
            ),
            "Separate touching particles of the active mask or label image by a marker-controlled watershed.",
        ),
        CommandSpec(
            "Filter Particles...",
            (
                Field("intensity", "Intensity image", "image", NONE, optional=True,
                      help="gray image for the intensity filter and columns, and for the overlay"),
                Field("min_size", "Min_size (px)", "int", 0, minimum=0),
                *_filter_fields(True),
                Field("clear", "Clear results", "bool", True),
                Field("add", "Add to ROI Manager", "bool", True),
                Field("overlay", "Overlay on image", "bool", True),
                Field("histogram", "Histogram plot", "bool", False),
                _HISTOGRAM_OF,
            ),
            "Reject particles of the active mask or label image by size, shape, border contact and intensity.",
        ),
        CommandSpec(
            "Measure Particles...",
            (
                Field("intensity", "Intensity image", "image", NONE, optional=True),
                Field("clear", "Clear results", "bool", True),
                Field("add", "Add to ROI Manager", "bool", False),
                Field("histogram", "Histogram plot", "bool", False),
                _HISTOGRAM_OF,
            ),
            "Measure each particle of the active mask or label image in calibrated units "
            "(exact Feret diameters, ECD, shape, intensity) into the Results table.",
        ),
        CommandSpec(
            "Evaluate Segmentation...",
            (
                Field("prediction", "Prediction (probability, mask or labels)", "image", None),
                Field("ground_truth", "Ground_truth (mask or labels)", "image", None),
                Field("thresholds", "Thresholds", "string", "0:1:0.1", columns=14,
                      help="probability thresholds: a list 0.3,0.5 or START:STOP:STEP"),
                Field("watershed", "Watershed split before scoring", "bool", False),
                Field("crop_rows", "Crop_rows", "int", 0, minimum=0),
                Field("exclude_border", "Exclude_border particles from size distributions", "bool", True),
            ),
            "Score a segmentation against ground truth (ISBI metrics, instance IoU, F1, AP, size "
            "distributions) into the Evaluation table.",
            needs_image=False,
        ),
        CommandSpec(
            "Batch Segment Folder...",
            (
                Field("input", "Input folder", "dir", ""),
                Field("output", "Output folder", "dir", ""),
                *seg,
                Field("overwrite", "Overwrite existing outputs", "bool", False),
                Field("overview", "Overview figures", "bool", True),
            ),
            "Segment every image of a folder and write the labels, mask, probability, ROI set, "
            "particle table and overview of each, and summary.csv (as `particleseg segment`).",
            needs_image=False, long_running=True,
        ),
        CommandSpec(
            "Train Model...",
            (
                Field("images", "Images folder", "dir", ""),
                Field("masks", "Masks folder", "dir", "", help="label or mask images with the images' names"),
                Field("output", "Output bundle folder", "dir", ""),
                Field("name", "Name of the model", "string", "my-model", columns=16),
                Field("architecture", "Architecture", "choice", "multires_unet", ("multires_unet", "unet", "fcn")),
                Field("epochs", "Epochs", "int", 50, minimum=1),
                Field("tile", "Tile (px)", "int", 256, minimum=32),
                Field("base_model", "Base_model (fine-tune; none)", "string", NONE, columns=16),
                Field("wait", "Wait until done (macros)", "bool", False,
                      help="block until training ends; from the menu, training always runs in the background"),
            ),
            "Train a segmentation network on image/mask pairs in the background, with progress "
            "in the status bar and the Log; the result is a model bundle.",
            needs_image=False, long_running=True,
        ),
        CommandSpec("Models...", (), "List the installed model bundles in the Models table.", needs_image=False),
    ]
    return {s.name: s for s in specs}


SPECS = build_specs()
COMMAND_NAMES = tuple(SPECS)


# ------------------------------------------------------------------------------------------
# macro option strings


_TOKEN = re.compile(r"\s*([^\s=]+)(?:=(\[[^\]]*\]|\S*))?")


def parse_macro_options(text: str | None) -> dict[str, str | bool]:
    """Parse an ImageJ macro option string into ``{key: value}``.

    ``key=value`` and ``key=[value with spaces]`` give strings; a bare ``key`` (a checked
    box) gives True. Keys are lower case, as ImageJ matches them.

    >>> parse_macro_options("model=[my model] threshold=0.5 split")
    {'model': 'my model', 'threshold': '0.5', 'split': True}
    """
    out: dict[str, str | bool] = {}
    text = (text or "").strip()
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        key, value = m.group(1).lower(), m.group(2)
        if value is None:
            out[key] = True
        else:
            out[key] = value[1:-1] if value.startswith("[") and value.endswith("]") else value
        pos = m.end()
    return out


def format_macro_options(values: dict[str, Any]) -> str:
    """The inverse of :func:`parse_macro_options`: True -> bare key, False/None -> omitted,
    values with spaces in brackets (as ImageJ's recorder writes them)."""
    parts = []
    for key, value in values.items():
        if value is True:
            parts.append(key)
        elif value is False or value is None:
            continue
        else:
            s = _format_value(value)
            parts.append(f"{key}=[{s}]" if (" " in s or s == "") else f"{key}={s}")
    return " ".join(parts)


def _format_value(value) -> str:
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinity"
        return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else repr(value)
    return str(value)


def key_clashes(keys: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs (a, b) where ImageJ would read option ``a`` out of ``b=...``.

    ImageJ's ``Macro.getValue`` finds ``key=`` anywhere not preceded by a letter, so ``area``
    would be read from ``min_area=5``; the keys of a command must not clash that way.
    """
    out = []
    for a in keys:
        for b in keys:
            if a != b and b.endswith(a) and not b[len(b) - len(a) - 1].isalpha():
                out.append((a, b))
    return out


def check_option_keys(spec: CommandSpec, options: dict[str, Any]) -> None:
    """Raise :class:`InputError` naming an unknown key (ImageJ would silently ignore it)."""
    allowed = set(spec.keys) | set(IGNORED_KEYS)
    unknown = [k for k in options if k not in allowed and not k.startswith("&")]
    if unknown:
        valid = ", ".join(spec.keys) or "none"
        raise InputError(f'{spec.name}: unknown option "{unknown[0]}" (valid options: {valid})')


def normalize_options(spec: CommandSpec, text: str | None) -> str:
    """Rewrite a macro option string so that ImageJ's GenericDialog reads it: booleans given as
    ``key=true``/``key=false`` become a bare key or nothing; unknown keys raise InputError."""
    opts = parse_macro_options(text)
    check_option_keys(spec, opts)
    out = []
    raw = _split_raw(text or "")
    for key, token in raw:
        if key in IGNORED_KEYS:
            continue
        kind = spec.field(key).kind if key in spec.keys else None
        if kind == "bool":
            v = opts[key]
            if v is True or str(v).lower() in ("true", "1", "yes", "on"):
                out.append(key)
            elif str(v).lower() in ("false", "0", "no", "off"):
                continue
            else:
                raise InputError(f'{spec.name}: option "{key}" is a check box; give it as "{key}" or {key}=true/false, not {key}={v}')
        else:
            out.append(token)
    return " ".join(out) + " "


def _split_raw(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            break
        tokens.append((m.group(1).lower(), m.group(0).strip()))
        pos = m.end()
    return tokens


# ------------------------------------------------------------------------------------------
# values


def parse_range(text: str, name: str = "range") -> tuple[float | None, float | None]:
    """ImageJ's ``MIN-MAX`` (``10-500``, ``0-Infinity``, ``0.2-1.00``; also ``MIN:MAX``)
    -> ``(min, max)``, with None for an open side (0 below, Infinity above).

    >>> parse_range("10-Infinity")
    (10.0, None)
    """
    s = str(text).strip()
    sep = s.find(":") if ":" in s else next((i for i in range(1, len(s)) if s[i] == "-" and s[i - 1] not in "eE"), -1)
    try:
        if sep < 0:
            raise ValueError
        lo_s, hi_s = s[:sep].strip(), s[sep + 1:].strip()
        lo = float(lo_s) if lo_s else 0.0
        hi = float(hi_s.replace("Infinity", "inf").replace("infinity", "inf")) if hi_s else math.inf
    except ValueError:
        raise InputError(f"{name}: expected MIN-MAX such as 10-500 or 0-Infinity, got {text!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo > hi:
        raise InputError(f"{name}: invalid range {text!r} (MIN must not exceed MAX)")
    return (lo if lo > 0 else None, hi if math.isfinite(hi) else None)


def parse_crop_rows(text) -> int | str:
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
        raise InputError(f"thresholds: expected a list such as 0.3,0.5 or START:STOP:STEP such as 0:1:0.1, got {text!r}") from None
    if not values or any(not 0 <= v <= 1 for v in values):
        raise InputError(f"thresholds: need values between 0 and 1, got {text!r}")
    return values


def check_value(spec: CommandSpec, key: str, value):
    """Range-check a number; returns it or raises InputError naming command and key."""
    f = spec.field(key)
    if f.kind in ("number", "int"):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise InputError(f"{spec.name}: {key} needs a number")
        if f.minimum is not None and value < f.minimum or f.maximum is not None and value > f.maximum:
            lo = "" if f.minimum is None else f"{f.minimum:g}"
            hi = "" if f.maximum is None else f"{f.maximum:g}"
            bound = f"between {lo} and {hi}" if lo and hi else (f"at least {lo}" if lo else f"at most {hi}")
            raise InputError(f"{spec.name}: {key} must be {bound}, got {value:g}")
        if f.kind == "int":
            if float(value) != int(value):
                raise InputError(f"{spec.name}: {key} must be a whole number, got {value:g}")
            return int(value)
    if f.kind == "choice" and f.choices and key != "model" and value not in f.choices:
        raise InputError(f"{spec.name}: {key} must be one of {', '.join(f.choices)}, got {value!r}")
    return value


def shape_ranges(values: dict[str, Any], command: str = "") -> dict[str, tuple[float | None, float | None]]:
    """The shape filter of the range fields: only real constraints (circularity and solidity
    never exceed 1, so ``0-1`` is no constraint)."""
    shape = {}
    for name in SHAPE_FIELDS:
        lo, hi = parse_range(values.get(name, "0-Infinity"), f"{command}: {name}" if command else name)
        if name in ("circularity", "solidity") and hi is not None and hi >= 1:
            hi = None
        if lo is not None or hi is not None:
            shape[name] = (lo, hi)
    return shape


def segment_params(values: dict[str, Any], command: str = "Segment Particles..."):
    """:class:`~particleseg.pipeline.SegmentParams` from the values of the segmentation fields."""
    from ..pipeline import SegmentParams

    shape = shape_ranges(values, command)
    method = values.get("intensity_filter", NONE)
    size = float(values.get("particle_size") or 0)
    return SegmentParams(
        threshold=float(values["threshold"]),
        split=bool(values["split"]),
        seed_threshold=float(values["seed_level"]),
        h=float(values["split_level"]),
        min_area=int(values["min_size"]),
        fill_holes=bool(values["fill_holes"]),
        exclude_border=bool(values["exclude_border"]),
        intensity_filter=None if method == NONE else method,
        polarity=values.get("polarity", "bright"),
        shape=shape,
        crop_rows=parse_crop_rows(values.get("crop_rows", "auto")),
        particle_size=size if size > 0 else None,
        progress=False,
    )


def defaults(spec: CommandSpec) -> dict[str, Any]:
    """The default value of each parameter of a command."""
    return {f.key: f.default for f in spec.fields if f.kind != "message"}

