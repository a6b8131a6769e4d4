"""The Fiji commands' parameters, and ImageJ macro option strings, in pure Python (no Java).

Every command is described once, by a :class:`CommandSpec` whose :class:`OptionField` s give the
macro key, the dialog label, the type and the default of each parameter. The segmentation
parameters come from :data:`particleseg.params.PARAMETERS` (the same names, ranges, help and
bundle defaults as the command line's options). The ImageJ 1.x GenericDialog
(:mod:`particleseg.fiji.bridge`) and the SciJava scripts in ``fiji-scripts/`` use the same keys,
so one macro line works with both::

    run("Segment Particles...", "model=default threshold=0.5");

A key left out of a macro takes its default (the chosen bundle's, for the segmentation
parameters), check boxes included: ``split=false`` turns one off, a bare ``split`` (ImageJ's way
of writing a checked box) or ``split=true`` turns it on. Fiji's SciJava scripts read their
parameters the same way.

ImageJ turns a GenericDialog label into a macro key by taking its first word in lower case
(``Macro.trimKey``); labels here are written with underscores so that key and parameter name
agree (``Seed_level`` displays as "Seed level").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

from ..errors import InputError
from ..params import (  # noqa: F401 - re-exported: one implementation of each
    ALIASES,
    INTENSITY_METHODS,
    NONE,
    PARAMETERS,
    POLARITIES,
    SHAPE_NAMES,
    Parameter,
    format_range,
    parse_crop_rows,
    parse_range,
    parse_thresholds,
    shape_ranges,
)
from ..params import segment_params as _segment_params

SIZE_COLUMNS = ("feret_min", "feret_max", "ecd", "area")
#: shape ranges, in calibrated units; the order is the dialog's
SHAPE_FIELDS = SHAPE_NAMES
#: keys a macro may carry that are not parameters: Fiji records a SciJava script's image and
#: gateway inputs under these names
IGNORED_KEYS = ("imp", "ij")
#: the check box of a main dialog that opens its second, "advanced" dialog
ADVANCED = "advanced"


@dataclass(frozen=True)
class OptionField:
    """One parameter of a command.

    kind : ``number``, ``int``, ``bool``, ``string``, ``choice``, ``range``, ``dir``,
    ``image`` (title of an open image, or ``none`` when ``optional``), ``message`` (text only).
    advanced : in the second dialog. group : consecutive check boxes of one group share rows.
    same_row : shown to the right of the field before it. unit : ``px``, ``length`` or
    ``area`` (the label names the image's unit). dialog_only : not a parameter (the
    ``advanced`` check box); neither recorded nor a script parameter.
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
    advanced: bool = False
    group: str = ""
    same_row: bool = False
    unit: str = ""
    dialog_only: bool = False

    def __post_init__(self):
        """Check that ImageJ records the label as the key (``ValueError`` otherwise)."""
        if self.kind != "message" and self.label.split(" ")[0].lower() != self.key:
            raise ValueError(
                f"label {self.label!r} would be recorded as {self.label.split(' ')[0].lower()!r}, not {self.key!r}"
            )

    def label_for(self, unit: str | None) -> str:
        """Return the label with the unit of the image (``Area (nm²)``); ``unit`` None: generic."""
        if self.unit in ("length", "area"):
            u = "calibrated unit" if unit is None else ("px" if unit in ("px", "pixel", "") else unit)
            return f"{self.label} ({u}{'²' if self.unit == 'area' else ''})"
        if self.unit == "px":
            return f"{self.label} (px)"
        return self.label


@dataclass(frozen=True)
class CommandSpec:
    """One command: its menu label, its fields (the parameters, in dialog order) and its help.

    ``needs_image``: works on the active image; ``long_running``: from the menu, runs on a worker
    thread.
    """

    name: str  # menu label, e.g. "Segment Particles..."
    fields: tuple[OptionField, ...]
    help: str
    needs_image: bool = True  # works on the active image
    long_running: bool = False  # from the menu, runs on a worker thread

    @property
    def keys(self) -> tuple[str, ...]:
        """The macro keys (the ``advanced`` check box included: ImageJ may record it)."""
        return tuple(f.key for f in self.fields if f.kind != "message")

    @property
    def parameters(self) -> tuple[OptionField, ...]:
        """The fields that are parameters (recorded, script parameters)."""
        return tuple(f for f in self.fields if f.kind != "message" and not f.dialog_only)

    def field(self, key: str) -> OptionField:
        """Return the field of macro key ``key`` (``KeyError`` when the command has none)."""
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


def _label(p: Parameter) -> str:
    return {
        "ecd": "ECD",
        "split": "Split touching particles",
        "exclude_border": "Exclude_border particles",
        "min_score": "Min_score (classifier)",
        "crop_rows": "Crop_rows (auto or N)",
        "particle_size": "Particle_size",
    }.get(p.name, p.name[0].upper() + p.name[1:])


def parameter_field(name: str, default: Any = None, **changes) -> OptionField:
    """Return the OptionField of a segmentation parameter (:data:`particleseg.params.PARAMETERS`)."""
    p = next(q for q in PARAMETERS if q.name == name)
    value = p.default if default is None else default
    if p.kind == "range" and isinstance(value, tuple):
        value = format_range(*value)
    f = OptionField(
        p.name,
        _label(p),
        p.kind,
        value,
        p.choices,
        digits=2,
        minimum=p.minimum,
        maximum=p.maximum,
        help=p.help,
        columns=10 if p.kind == "range" else (6 if p.kind == "string" else 0),
        advanced=p.advanced,
        unit=p.unit,
    )
    return replace(f, **changes) if changes else f


def _segmentation_fields(defaults: dict[str, Any] | None) -> tuple[OptionField, ...]:
    d = defaults or {}
    fields = []
    for p in PARAMETERS:
        if not p.fiji:
            continue
        changes = {}
        if p.name in ("split", "exclude_border"):
            changes["group"] = "particles"
        if p.name in ("seed_depth", "min_confidence", "polarity"):  # (ImageJ 1.53t clips text fields on a shared row)
            changes["same_row"] = True
        fields.append(parameter_field(p.name, d.get(p.name), **changes))
    return tuple(fields)


def _advanced_toggle() -> OptionField:
    return OptionField(
        ADVANCED,
        "Advanced options (second dialog)",
        "bool",
        False,
        dialog_only=True,
        help="show the second dialog with the other parameters (watershed, confidence, classifier, "
        "filters, data bar, scale); in a macro they are read from the option string anyway",
    )


def _outputs(*names: str, on: bool = True) -> tuple[OptionField, ...]:
    labels = {
        "probability": "Probability image",
        "labels": "Labels image",
        "mask": "Mask image",
        "clear": "Clear results",
        "add": "Add to ROI Manager",
        "overlay": "Overlay on image",
        "histogram": "Histogram plot",
    }
    helps = {
        "clear": "reset the Results table (and ROI Manager) first",
        "overlay": "kept particles green, rejected red",
    }
    return tuple(OptionField(n, labels[n], "bool", on, help=helps.get(n, ""), group="outputs") for n in names)


_HISTOGRAM_OF = OptionField("histogram_of", "Histogram_of", "choice", "feret_min", SIZE_COLUMNS)


def segment_fields(
    model: str = "default", models: Sequence[str] = ("default",), defaults: dict | None = None
) -> tuple[OptionField, ...]:
    """Return the parameters of Segment Particles... (and of the batch), with a bundle's defaults.

    The defaults are :func:`particleseg.params.bundle_defaults` of the bundle.
    """
    return (
        OptionField(
            "model",
            "Model",
            "choice",
            model,
            tuple(models),
            help="installed model bundle, or in a macro the path of a bundle folder or zip",
        ),
        *_segmentation_fields(defaults),
    )


SEGMENT_OUTPUTS = _outputs("probability", "labels", "mask", "clear", "add", "overlay", "histogram") + (_HISTOGRAM_OF,)


def _filter_fields() -> tuple[OptionField, ...]:
    fields = [parameter_field("exclude_border", True, group="", advanced=False)]
    for name in ("intensity_filter", "polarity", *SHAPE_NAMES):
        fields.append(parameter_field(name, advanced=False, same_row=name == "polarity"))
    return tuple(fields)


def build_specs(
    model: str = "default", models: Sequence[str] = ("default",), defaults: dict | None = None
) -> dict[str, CommandSpec]:
    """All commands, with the model choice and segmentation defaults of the given bundle."""
    seg = segment_fields(model, models, defaults)
    specs = [
        CommandSpec(
            "Segment Particles...",
            seg + SEGMENT_OUTPUTS + (_advanced_toggle(),),
            "Segment the particles of the active 2D image with a model bundle, split, filter and "
            "measure them: Results table, ROI Manager, probability/labels/mask images, overlay and histogram.",
        ),
        CommandSpec(
            "Split Touching Particles...",
            (
                OptionField(
                    "distance",
                    "Distance map",
                    "image",
                    NONE,
                    optional=True,
                    help="a map that is high in particle centres (the probability or distance output); "
                    "none: the Euclidean distance transform of the mask",
                ),
                parameter_field("seed_level", 0.5, advanced=False),
                parameter_field("seed_depth", 0.0, advanced=False, same_row=True),
                parameter_field("split_level", 1.0, advanced=False),
                parameter_field("min_size", 0, advanced=False),
                OptionField("mask", "Mask image (with separating lines)", "bool", False),
                OptionField("add", "Add to ROI Manager", "bool", False),
            ),
            "Separate touching particles of the active mask or label image by a marker-controlled watershed.",
        ),
        CommandSpec(
            "Filter Particles...",
            (
                OptionField(
                    "intensity",
                    "Intensity image",
                    "image",
                    NONE,
                    optional=True,
                    help="gray image for the intensity filter and columns, and for the overlay",
                ),
                parameter_field("min_size", 0, advanced=False),
                *_filter_fields(),
                *_outputs("clear", "add", "overlay"),
                *_outputs("histogram", on=False),
                _HISTOGRAM_OF,
            ),
            "Reject particles of the active mask or label image by size, shape, border contact and intensity.",
        ),
        CommandSpec(
            "Measure Particles...",
            (
                OptionField("intensity", "Intensity image", "image", NONE, optional=True),
                OptionField("clear", "Clear results", "bool", True),
                OptionField("add", "Add to ROI Manager", "bool", False),
                OptionField("histogram", "Histogram plot", "bool", False),
                _HISTOGRAM_OF,
            ),
            "Measure each particle of the active mask or label image in calibrated units "
            "(exact Feret diameters, ECD, shape, intensity) into the Results table.",
        ),
        CommandSpec(
            "Evaluate Segmentation...",
            (
                OptionField("prediction", "Prediction (probability, mask or labels)", "image", None),
                OptionField("ground_truth", "Ground_truth (mask or labels)", "image", None),
                OptionField(
                    "thresholds",
                    "Thresholds",
                    "string",
                    "0:1:0.1",
                    columns=14,
                    help="probability thresholds: a list 0.3,0.5 or START:STOP:STEP",
                ),
                OptionField("watershed", "Watershed split before scoring", "bool", False),
                OptionField("crop_rows", "Crop_rows", "int", 0, minimum=0),
                OptionField("exclude_border", "Exclude_border particles from size distributions", "bool", True),
            ),
            "Score a segmentation against ground truth (ISBI metrics, instance IoU, F1, AP, size "
            "distributions) into the Evaluation table.",
            needs_image=False,
        ),
        CommandSpec(
            "Batch Segment Folder...",
            (
                OptionField("input", "Input folder", "dir", ""),
                OptionField("output", "Output folder", "dir", ""),
                *seg,
                OptionField("overwrite", "Overwrite existing outputs", "bool", False, group="outputs"),
                OptionField("overview", "Overview figures", "bool", True, group="outputs"),
                _advanced_toggle(),
            ),
            "Segment every image of a folder and write the labels, mask, probability, ROI set, "
            "particle table and overview of each, and summary.csv (as `particleseg segment`).",
            needs_image=False,
            long_running=True,
        ),
        CommandSpec(
            "Train Model...",
            (
                OptionField("images", "Images folder", "dir", ""),
                OptionField("masks", "Masks folder", "dir", "", help="label or mask images with the images' names"),
                OptionField("output", "Output bundle folder", "dir", ""),
                OptionField("name", "Name of the model", "string", "my-model", columns=16),
                OptionField(
                    "base_model",
                    "Base_model (fine-tune; none: new network)",
                    "string",
                    "default",
                    columns=16,
                    help="the model to fine-tune: default (the shipped default model), a bundle folder or "
                    "name, or none to train a new network",
                ),
                OptionField(
                    "minutes",
                    "Minutes (time budget; 0: use epochs)",
                    "int",
                    0,
                    minimum=0,
                    help="plan the epochs to finish in about this many minutes",
                ),
                OptionField("epochs", "Epochs", "int", 20, minimum=1),
                OptionField("tile", "Tile (px)", "int", 256, minimum=32),
                OptionField(
                    "architecture",
                    "Architecture (new network only)",
                    "choice",
                    "multires_unet",
                    ("multires_unet", "unet", "fcn"),
                ),
                OptionField(
                    "wait",
                    "Wait until done (macros)",
                    "bool",
                    False,
                    help="block until training ends; from the menu, training always runs in the background",
                ),
            ),
            "Train a segmentation network on image/mask pairs in the background, with progress "
            "in the status bar and the Log; the result is a model bundle.",
            needs_image=False,
            long_running=True,
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
    """Format ``{key: value}`` as a macro option string, the inverse of :func:`parse_macro_options`.

    True gives a bare key, False/None leave the key out, values with spaces are put in brackets
    (as ImageJ's recorder writes them).
    """
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
        valid = ", ".join(k for k in spec.keys if k != ADVANCED) or "none"
        now = f'now "{ALIASES[unknown[0]]}"; ' if ALIASES.get(unknown[0]) in spec.keys else ""
        raise InputError(f'{spec.name}: unknown option "{unknown[0]}" ({now}valid options: {valid})')


def normalize_options(spec: CommandSpec, text: str | None) -> str:
    """Rewrite a macro option string so that ImageJ's GenericDialog reads it.

    Booleans given as ``key=true``/``key=false`` become a bare key or nothing; unknown keys raise
    InputError.
    """
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
                raise InputError(
                    f'{spec.name}: option "{key}" is a check box; give it as "{key}" or {key}=true/false, not {key}={v}'
                )
        else:
            out.append(token)
    return " ".join(out) + " "


def given_booleans(spec: CommandSpec, text: str | None) -> dict[str, bool]:
    """Return the check boxes a macro option string sets (``key``, ``key=true``, ``key=false``).

    The others take their defaults.
    """
    out = {}
    for key, v in parse_macro_options(text).items():
        if key in spec.keys and spec.field(key).kind == "bool":
            out[key] = v is True or str(v).lower() in ("true", "1", "yes", "on")
    return out


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


def segment_params(values: dict[str, Any], command: str = "Segment Particles..."):
    """Make :class:`~particleseg.pipeline.SegmentParams` from the values of the segmentation fields.

    The conversion is :func:`particleseg.params.segment_params`, the command line's too.
    """
    return _segment_params({k: v for k, v in values.items() if k != "model"}, command, progress=False)


def recorded_options(spec: CommandSpec, values: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Return what the recorder writes for a run with ``values``.

    ``(key, value)`` pairs, value None for a checked box. Every parameter is written, so the line
    repeats the run even when defaults change; an unchecked box whose default is on is written
    ``key=false`` (a key left out takes its default).
    """
    out: list[tuple[str, str | None]] = []
    for f in spec.parameters:
        if f.key not in values:
            continue
        v = values[f.key]
        if f.kind == "bool":
            if v:
                out.append((f.key, None))
            elif f.default:
                out.append((f.key, "false"))
        elif f.kind == "int":
            out.append((f.key, str(int(v))))
        elif f.kind == "number":
            out.append((f.key, _format_value(float(v))))
        else:
            out.append((f.key, str(v)))
    return out


def defaults(spec: CommandSpec) -> dict[str, Any]:
    """Return the default value of each parameter of a command."""
    return {f.key: f.default for f in spec.fields if f.kind != "message"}
