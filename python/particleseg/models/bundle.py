"""Model bundles: a trained network with everything needed to use it correctly.

A bundle is a folder (or a ``.zip`` of one) holding::

    bundle.json        metadata (see :data:`REQUIRED_KEYS` and ``docs/bundle-format.md``)
    model.keras        the segmentation network (Keras 3)
    classifier.keras   optional particle classifier network
    export/            optional exports: model.onnx, saved_model/

The metadata says what the network expects (input channels, normalisation, tile size, the pixel
and particle size of its training data) and how its output is turned into particles (default
threshold and watershed parameters), so that the command line, the Python API and the Fiji
commands all use a model the same way, as CSBDeep/StarDist bundles do.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import numbers
import os
import platform
import shutil
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import BundleError, OutputExistsError, ParticlesegWarning
from ..io import respect_umask, write_atomic
from .architectures import NetworkConfig
from .receptive import exact_halo, receptive_field

# TensorFlow's C++ start-up lines (absl, cpu_feature_guard) are not for the users of a library
# either: off unless the user set the level (the command line does the same).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FORMAT = "particleseg-bundle"
FORMAT_VERSION = 1
METADATA_FILE = "bundle.json"
MODEL_FILE = "model.keras"
CLASSIFIER_FILE = "classifier.keras"
DEFAULT_MODEL = "default"

REQUIRED_KEYS = ("format", "format_version", "name", "network", "input", "tiling", "scale", "postprocess")

DEFAULT_POSTPROCESS = {
    "threshold": 0.5,
    "split": True,
    "seed_threshold": 0.5,  # distance-head seeds: centre region of each particle
    "seed_depth": 0.0,  # distance-head seeds: peaks this deep (0: regions above seed_threshold)
    "merge_level": 0.0,  # touching particles merge where their border's mean foreground reaches it (0: never)
    "h": 1.0,  # h-maxima depth (pixels) of the distance-transform watershed
    "min_area": 15,
    "min_confidence": 0.0,  # mean foreground probability a detection needs (0: keep all)
    "fill_holes": True,
    "exclude_border": True,
    "augment": False,  # test-time augmentation (mean over the 8 flips and rotations)
}


#: the bundles shipped with the package (package data)
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "bundles"


def model_search_path() -> list[Path]:
    """Folders searched for a bundle given by name, in order.

    ``$PARTICLESEG_MODELS`` (``os.pathsep``-separated), the shipped bundles inside the
    package (``particleseg/bundles``, package data: the same from a wheel, an editable install
    or a Fiji Python environment; ``models/`` in a checkout links to it), and
    ``~/.local/share/particleseg/models``.
    """
    paths = [Path(p) for p in os.environ.get("PARTICLESEG_MODELS", "").split(os.pathsep) if p]
    paths.append(SHIPPED_MODELS)
    paths.append(Path.home() / ".local" / "share" / "particleseg" / "models")
    return paths


def bundle_origin(path: str | os.PathLike) -> str:
    """Where a bundle on the search path comes from.

    ``package`` (shipped with particleseg), ``$PARTICLESEG_MODELS``, ``user folder`` or ``path``
    (anywhere else).
    """
    folder = Path(path).resolve().parent
    if folder == SHIPPED_MODELS.resolve():
        return "package"
    env = [Path(p).resolve() for p in os.environ.get("PARTICLESEG_MODELS", "").split(os.pathsep) if p]
    if folder in env:
        return "$PARTICLESEG_MODELS"
    if folder == (Path.home() / ".local" / "share" / "particleseg" / "models").resolve():
        return "user folder"
    return "path"


def list_bundles() -> dict[str, Path]:
    """Installed bundles by name (first found on :func:`model_search_path` wins)."""
    found: dict[str, Path] = {}
    for folder in model_search_path():
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                name = p.name[:-4] if p.suffix == ".zip" else p.name
                if name not in found and ((p / METADATA_FILE).is_file() or p.suffix == ".zip"):
                    found[name] = p
    return found


def resolve_bundle(name_or_path: str | os.PathLike | None) -> Path:
    """Path of a bundle given as a folder, a ``.zip``, or the name of an installed bundle."""
    if name_or_path is None or str(name_or_path) in ("", "default", "[default]"):
        name_or_path = DEFAULT_MODEL
    p = Path(name_or_path)
    if p.exists():
        return p
    installed = list_bundles()
    if str(name_or_path) in installed:
        return installed[str(name_or_path)]
    names = ", ".join(installed) or "none"
    raise BundleError(
        f"{name_or_path}: model not found (not a folder or zip, nor an installed bundle; installed: {names})"
    )


@dataclass
class Bundle:
    """A loaded model bundle. The Keras models are loaded on first use."""

    path: Path
    metadata: dict[str, Any]
    #: how the user named the bundle, for messages (a zip's name rather than its cache folder)
    source: str | None = None

    @property
    def name(self) -> str:
        """The bundle's name (its metadata's ``name``)."""
        return self.metadata["name"]

    @property
    def label(self) -> str:
        """The bundle as the user gave it: its folder, its zip, or its installed path."""
        return self.source or str(self.path)

    @property
    def kind(self) -> str:
        """What the network segments: ``sem``, ``sims`` or ``fibsem``.

        ``sem``: gray images (``particleseg segment``); ``sims``: summed SIMS counts
        (``particleseg sims run``); ``fibsem``: phase maps of FIB-SEM stacks. The metadata's
        ``kind`` if it has one; otherwise a ``fibsem`` section makes a FIB-SEM bundle, a ``sims``
        section or a ``min_significance`` post-processing setting a SIMS bundle, anything else an
        SEM bundle.
        """
        return bundle_kind(self.metadata)

    def check_use(self, use: str, target: str = "") -> None:
        """Refuse a bundle made for another kind of data.

        An SEM ``segment`` with a SIMS or FIB-SEM bundle, or a SIMS run with a FIB-SEM bundle, is
        refused in one line naming the bundle, its kind and ``target``, the image or images it
        was to be used on.
        """
        kind = self.kind
        refused = {"sem": ("sims", "fibsem"), "sims": ("fibsem",), "fibsem": ("sem", "sims")}.get(use, ())
        if kind in refused:
            command = {
                "sem": "particleseg segment",
                "sims": "particleseg sims run",
                "fibsem": "particleseg fibsem segment",
            }
            on = f" on {target}" if target else ""
            raise BundleError(
                f"{self.label}: model {self.name!r} is a {KIND_NAMES[kind]} model; {command[use]} needs "
                f"a{'n' if use in ('sem', 'fibsem') else ''} {KIND_NAMES[use]} model (cannot use it{on}; "
                f"use {command[kind]} with it)"
            )

    @cached_property
    def network(self) -> NetworkConfig:
        """The network's settings (its metadata's ``network``)."""
        return NetworkConfig.from_dict(self.metadata["network"])

    @property
    def heads(self) -> list[str]:
        """The kinds of the network's heads, in the order of its output channels."""
        return [h.kind for h in self.network.heads]

    @property
    def postprocess(self) -> dict[str, Any]:
        """Post-processing settings: the package defaults, updated by the metadata's ``postprocess``."""
        return {**DEFAULT_POSTPROCESS, **self.metadata.get("postprocess", {})}

    @property
    def tile(self) -> int:
        """Largest tile side of tiled inference.

        Memory: at most ``tile * tile`` pixels per network call; an image that fits is predicted
        whole.
        """
        return int(self.metadata["tiling"]["tile"])

    @cached_property
    def receptive_field(self) -> int | None:
        """Receptive-field radius of the network in pixels, from its architecture.

        See :func:`particleseg.models.receptive.receptive_field`; None when unbounded (group
        normalisation).
        """
        return receptive_field(self.network)

    @property
    def overlap(self) -> int:
        """The halo of tiled inference: context pixels around each tile's kept part.

        At least the receptive field rounded up to ``2 ** depth`` (then tiled = untiled), whatever
        an older bundle's ``tiling.overlap`` says; the stored value for networks without a finite
        receptive field.
        """
        stored = int(self.metadata["tiling"]["overlap"])
        halo = exact_halo(self.network)
        return stored if halo is None else max(stored, halo)

    @property
    def exact_tiles(self) -> bool:
        """Whether tiled inference gives the whole-image output (a finite receptive field)."""
        return self.receptive_field is not None

    @property
    def particle_size_px(self) -> float | None:
        """Typical particle size in pixels of the training images (metadata ``scale``); None if unknown."""
        return self.metadata["scale"].get("particle_size_px")

    @property
    def has_classifier(self) -> bool:
        """Whether the bundle holds a particle classifier (metadata ``classifier``)."""
        return bool(self.metadata.get("classifier"))

    @property
    def model_files(self) -> list[str]:
        """The Keras files of the bundle (relative paths): the network, and the classifier if any."""
        files = [self.metadata.get("model_file", MODEL_FILE)]
        if self.has_classifier:
            files.append(self.metadata["classifier"].get("model_file", CLASSIFIER_FILE))
        return files

    def _display(self, rel: str) -> str:
        return (
            f"{self.source}: {rel}"
            if self.source and self.source.endswith(".zip")
            else str(Path(self.source) / rel if self.source else self.path / rel)
        )

    @cached_property
    def model(self):
        """The Keras network, loaded on first use (BundleError when its file is corrupt)."""
        rel = self.metadata.get("model_file", MODEL_FILE)
        return _load_keras(self.path / rel, self._display(rel))

    @cached_property
    def classifier(self):
        """The Keras particle classifier, loaded on first use; None when the bundle has none."""
        if not self.has_classifier:
            return None
        rel = self.metadata["classifier"].get("model_file", CLASSIFIER_FILE)
        return _load_keras(self.path / rel, self._display(rel))

    def check_files(self) -> None:
        """Check that the Keras files are there and are intact archives (cheap: no network is built).

        So a missing, truncated or corrupt ``model.keras`` is reported when the bundle is loaded
        rather than at the first image.
        """
        for rel in self.model_files:
            check_keras_file(self.path / rel, self._display(rel))

    @property
    def onnx_file(self) -> Path | None:
        """The bundle's ONNX export (``exports.onnx.file``), if it has one and the file is there."""
        entry = (self.metadata.get("exports") or {}).get("onnx")
        if not entry or not entry.get("file"):
            return None
        path = self.path / entry["file"]
        return path if path.is_file() else None

    def engine(self, engine: str | None = "auto") -> str:
        """Return the engine :meth:`predictor` uses for ``engine``: ``onnx`` or ``keras``.

        ``auto`` (the default) is ONNX Runtime when the bundle has an ONNX export and
        ``onnxruntime`` is installed, else Keras (with one note saying why); ``onnx`` insists on
        ONNX Runtime (:class:`BundleError` naming what is missing); ``keras`` is Keras.
        """
        engine = (engine or "auto").lower()
        if engine not in ENGINES:
            raise BundleError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
        if engine == "keras":
            return "keras"
        from .export import has_module  # export imports this module at its top

        have_ort = has_module("onnxruntime")
        if self.onnx_file is not None and have_ort:
            return "onnx"
        if engine == "onnx":
            why = (
                "onnxruntime is not installed (pip install onnxruntime)"
                if not have_ort
                else f"the bundle has no ONNX export (particleseg models export {self.label} --format onnx)"
            )
            raise BundleError(f"{self.label}: cannot run with ONNX Runtime: {why}")
        if self.label not in _NOTED:
            _NOTED.add(self.label)
            why = (
                "onnxruntime is not installed"
                if self.onnx_file is not None
                else f"the bundle has no ONNX export; particleseg models export {self.label} --format onnx adds one"
            )
            _note(f"{self.label}: running the network with Keras ({why})")
        return "keras"

    def classifier_predictor(self, engine: str | None = "auto") -> Callable[[np.ndarray], np.ndarray]:
        """Return the particle classifier as a batch function, run by ONNX Runtime or Keras.

        ONNX Runtime when the network runs with it (:meth:`engine`) and the bundle has
        ``exports.classifier_onnx``, else Keras.
        """
        entry = (self.metadata.get("exports") or {}).get("classifier_onnx") or {}
        path = self.path / entry["file"] if entry.get("file") else None
        chosen = "onnx" if self.engine(engine) == "onnx" and path is not None and path.is_file() else "keras"
        cache = self.__dict__.setdefault("_predictors", {})
        key = "classifier-" + chosen
        if key not in cache:
            if chosen == "onnx":
                from .export import onnx_predictor  # cycle: .export imports .bundle

                cache[key] = onnx_predictor(path)
            else:
                cache[key] = keras_predictor(self.classifier)
        return cache[key]

    def predictor(self, engine: str | None = "auto") -> Callable[[np.ndarray], np.ndarray]:
        """Return a function from a batch ``(N, H, W, C)`` float32 to the network output ``(N, H, W, K)``.

        It is run by ONNX Runtime or Keras as :meth:`engine` decides (made once per bundle and
        engine). ONNX Runtime needs neither TensorFlow nor Keras, which are imported only for Keras.
        """
        chosen = self.engine(engine)
        cache = self.__dict__.setdefault("_predictors", {})
        if chosen not in cache:
            if chosen == "onnx":
                from .export import onnx_predictor  # cycle: .export imports .bundle

                cache[chosen] = onnx_predictor(self.onnx_file)
            else:
                cache[chosen] = keras_predictor(self.model)
        return cache[chosen]

    def check_channels(self, n_channels: int, source: str = "image") -> None:
        """Raise :class:`BundleError` (one line naming ``source``) unless the network takes ``n_channels``."""
        expected = self.network.input_channels
        if n_channels != expected:
            names = ", ".join(self.metadata["input"].get("channels", [])) or "unnamed"
            raise BundleError(
                f"{source}: has {n_channels} channel(s) but model {self.name!r} expects {expected} ({names})"
            )


#: the inference engines of :meth:`Bundle.predictor`
ENGINES = ("auto", "onnx", "keras")
_NOTED: set[str] = set()  # bundles whose Keras fallback was noted (once per process)


def _note(text: str) -> None:
    warnings.warn(text, ParticlesegWarning, stacklevel=3)


def keras_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a Keras model as a batch prediction function returning NumPy arrays."""
    import keras  # keras: only for the Keras engine (lazy, docs/architecture.md)

    eager = [False]

    def predict(batch: np.ndarray) -> np.ndarray:
        # the compiled predict function: about 25 % faster than an eager call on CPU; a network
        # whose graph cannot take a new input size (Keras' bilinear UpSampling2D, as in the FCN,
        # when TensorFlow retraces with unknown sides) runs eagerly instead
        if not eager[0]:
            try:
                return keras.ops.convert_to_numpy(model.predict_on_batch(batch))
            except Exception as exc:  # noqa: BLE001
                if type(exc).__name__ != "OperatorNotAllowedInGraphError":
                    raise
                eager[0] = True
        return keras.ops.convert_to_numpy(model(batch, training=False))

    return predict


KIND_NAMES = {"sem": "SEM", "sims": "SIMS", "fibsem": "FIB-SEM phase"}


def model_identity(bundle) -> dict[str, str]:
    """Return the model part of a run's settings: the bundle's name and a hash of its metadata.

    ``segment``, ``sims run`` and ``fibsem segment`` record it with every output, and a rerun
    skips an item only when it is the same, so a retrained or edited bundle of the same name
    redoes the work.
    """
    meta = json.dumps(bundle.metadata, sort_keys=True, default=str)
    return {
        "model": getattr(bundle, "label", bundle.name),
        "model_metadata_sha256": hashlib.sha256(meta.encode()).hexdigest()[:16],
    }


def bundle_kind(meta: dict[str, Any]) -> str:
    """``sem``, ``sims`` or ``fibsem``: see :attr:`Bundle.kind`."""
    kind = meta.get("kind")
    if kind:
        return str(kind)
    if meta.get("fibsem"):
        return "fibsem"
    if meta.get("sims") or "min_significance" in (meta.get("postprocess") or {}):
        return "sims"
    return "sem"


def check_keras_file(path: Path, display: str | None = None) -> None:
    """Raise :class:`BundleError` unless ``path`` is an intact Keras 3 archive.

    An intact archive is a zip holding ``config.json`` whose members pass their CRC check. Legacy
    ``.h5`` files are checked for the HDF5 signature only.
    """
    display = display or str(path)
    if not path.is_file():
        raise BundleError(f"{display}: model file missing from bundle")
    if path.suffix == ".h5":
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                raise BundleError(f"{display}: corrupt or not a Keras model (not an HDF5 file)")
        return
    problem = ""
    try:
        with zipfile.ZipFile(path) as zf:
            if "config.json" not in zf.namelist():
                problem = "no config.json in the archive"
            else:
                bad = zf.testzip()
                if bad is not None:
                    problem = f"member {bad} is damaged"
    except zipfile.BadZipFile:
        problem = "not a .keras archive, or truncated" if path.stat().st_size else "empty file"
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        problem = f"unreadable archive: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
    if problem:
        raise BundleError(f"{display}: corrupt or not a Keras model ({problem})")


def _load_keras(path: Path, display: str | None = None):
    import keras  # keras: only for the Keras engine (lazy, docs/architecture.md)

    check_keras_file(path, display)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BundleError(f"{display or path}: corrupt or not a Keras model ({first})") from None


def validate_metadata(meta: Any, source: str = "bundle.json") -> dict[str, Any]:
    """Check a bundle's metadata and return it; raise :class:`BundleError` naming the problem."""
    if not isinstance(meta, dict):
        raise BundleError(f"{source}: metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise BundleError(f"{source}: not a particleseg bundle (format is {meta.get('format')!r}, expected {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise BundleError(f"{source}: metadata lacks {', '.join(missing)}")
    if not isinstance(meta["format_version"], int) or meta["format_version"] > FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format version {meta['format_version']} is newer than this particleseg "
            f"understands ({FORMAT_VERSION}); update particleseg"
        )
    try:
        config = NetworkConfig.from_dict(meta["network"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{source}: invalid network settings ({exc})") from None
    tiling = meta["tiling"]
    if not (
        isinstance(tiling, dict) and isinstance(tiling.get("tile"), int) and isinstance(tiling.get("overlap"), int)
    ):
        raise BundleError(f"{source}: tiling needs integer 'tile' and 'overlap'")
    if tiling["tile"] % config.multiple_of or tiling["tile"] <= 2 * tiling["overlap"]:
        raise BundleError(
            f"{source}: tile {tiling['tile']} must be a multiple of {config.multiple_of} "
            "and more than twice the overlap"
        )
    norm = meta["input"].get("normalization", {})
    if norm.get("method") not in ("percentile", "none"):
        raise BundleError(f"{source}: unknown normalization method {norm.get('method')!r}")
    channels = meta["input"].get("channels")
    if channels is not None and len(channels) != config.input_channels:
        raise BundleError(
            f"{source}: names {len(channels)} input channels but the network takes {config.input_channels}"
        )
    if "foreground" not in [h.kind for h in config.heads] and "classes" not in [h.kind for h in config.heads]:
        raise BundleError(f"{source}: network has neither a foreground nor a classes head")
    _check_values(meta, source)
    return meta


#: Allowed values of the post-processing settings: (lowest, highest, whole numbers only).
POSTPROCESS_RANGES = {
    "threshold": (0.0, 1.0, False),
    "seed_threshold": (0.0, 1.0, False),
    "seed_depth": (0.0, 1.0, False),
    "merge_level": (0.0, 1.0, False),
    "h": (0.0, math.inf, False),
    "min_area": (0.0, math.inf, True),
    "min_confidence": (0.0, 1.0, False),
    "min_significance": (0.0, math.inf, False),
}
POSTPROCESS_FLAGS = ("split", "fill_holes", "exclude_border", "augment")


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))


def _show(v) -> str:
    try:
        return json.dumps(v, default=_json_default)
    except (TypeError, ValueError):
        return repr(v)


def _check_number(
    value, key: str, source: str, lo: float, hi: float, whole: bool = False, none_ok: bool = False
) -> None:
    if value is None and none_ok:
        return
    if not _is_number(value) or not math.isfinite(value) or not lo <= value <= hi or whole and value != int(value):
        span = f"from {lo:g} to {hi:g}" if math.isfinite(hi) else f"of at least {lo:g}"
        what = "a whole number" if whole else "a number"
        raise BundleError(f"{source}: {key} is {_show(value)}; it must be {what} {span}")


def _check_values(meta: dict[str, Any], source: str) -> None:
    """Ranges of the settings a bundle gives its users (one line naming the key and the value)."""
    post = meta["postprocess"]
    if not isinstance(post, dict):
        raise BundleError(f"{source}: postprocess must be a JSON object")
    for key, (lo, hi, whole) in POSTPROCESS_RANGES.items():
        if key in post:
            _check_number(post[key], f"postprocess.{key}", source, lo, hi, whole)
    for key in POSTPROCESS_FLAGS:
        if key in post and not isinstance(post[key], (bool, np.bool_)):
            raise BundleError(f"{source}: postprocess.{key} is {_show(post[key])}; it must be true or false")
    classifier = meta.get("classifier")
    if classifier:
        if not isinstance(classifier, dict):
            raise BundleError(f"{source}: classifier must be a JSON object or null")
        if "threshold" in classifier:
            _check_number(classifier["threshold"], "classifier.threshold", source, 0.0, 1.0)
    tiling = meta["tiling"]
    _check_number(tiling["tile"], "tiling.tile", source, 1, math.inf, True)
    _check_number(tiling["overlap"], "tiling.overlap", source, 0, math.inf, True)
    scale = meta["scale"]
    if not isinstance(scale, dict):
        raise BundleError(f"{source}: scale must be a JSON object")
    for key in ("pixel_size", "particle_size_px"):
        if scale.get(key) is not None:
            _check_number(scale[key], f"scale.{key}", source, 1e-300, math.inf)
    inp = meta["input"]
    norm = inp.get("normalization", {})
    if norm.get("method") == "percentile":
        low, high = norm.get("low", 1.0), norm.get("high", 99.8)
        _check_number(low, "input.normalization.low", source, 0.0, 100.0)
        _check_number(high, "input.normalization.high", source, 0.0, 100.0)
        if low >= high:
            raise BundleError(f"{source}: input.normalization.low ({low:g}) must be below high ({high:g})")
    if inp.get("polarity") not in (None, "bright", "dark"):
        raise BundleError(f'{source}: input.polarity is {_show(inp["polarity"])}; it must be "bright" or "dark"')
    if "kind" in meta and meta["kind"] not in KIND_NAMES:
        raise BundleError(f"{source}: kind is {_show(meta['kind'])}; it must be one of {', '.join(KIND_NAMES)}")


def load_bundle(name_or_path: str | os.PathLike | None = None) -> Bundle:
    """Load and validate a bundle from a folder, a ``.zip`` or an installed bundle's name.

    ``None`` or ``"default"`` gives the shipped default model. A bioimage.io model package
    written by particleseg (its zip or folder, :mod:`.bioimageio`) loads as the bundle it was
    exported from; another bioimage.io package is refused in one line.
    """
    path = resolve_bundle(name_or_path)
    given = Path(name_or_path) if name_or_path is not None and Path(name_or_path).exists() else path
    from .bioimageio import check_usable  # cycle: .bioimageio imports .bundle

    check_usable(path)  # a bioimage.io package particleseg did not write: one line
    if path.suffix == ".zip":
        source = str(given)
        meta_label = f"{given}: {METADATA_FILE}"
        path = _unpack_zip(path)
    else:
        source = str(given)
        meta_label = str(given / METADATA_FILE)
    meta_file = path / METADATA_FILE
    if not path.is_dir():
        raise BundleError(f"{source}: not a model bundle (expected a folder or a .zip holding {METADATA_FILE})")
    if not meta_file.is_file():
        raise BundleError(f"{source}: not a model bundle ({METADATA_FILE} missing)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_label}: invalid JSON ({exc})") from None
    validate_metadata(meta, meta_label)
    from .bioimageio import package_metadata  # cycle: .bioimageio imports .bundle

    # a package's exports are its own files (its ONNX weights)
    bundle = Bundle(path, package_metadata(path, meta), source)
    bundle.check_files()
    return bundle


def _unpack_zip(path: Path) -> Path:
    """Unpack a zipped bundle once into a cache folder keyed by its content hash."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "particleseg" / "bundles" / digest
    if (cache / METADATA_FILE).is_file():
        return cache
    tmp = None
    try:
        with zipfile.ZipFile(path) as zf:
            tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=_mkdir(cache.parent)))
            zf.extractall(tmp)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        why = "not a zip file" if isinstance(exc, zipfile.BadZipFile) else "a damaged or truncated zip file"
        raise BundleError(f"{path}: not a model bundle ({why})") from None
    # A zip may hold the bundle folder itself or its contents.
    inner = [p for p in tmp.iterdir() if (p / METADATA_FILE).is_file()]
    if not (tmp / METADATA_FILE).is_file() and not inner:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(f"{path}: not a model bundle (no {METADATA_FILE} in the zip)")
    src = inner[0] if not (tmp / METADATA_FILE).is_file() else tmp
    try:
        os.replace(src, cache)
    except OSError:  # another process unpacked it meanwhile
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def versions() -> dict[str, str]:
    """Versions of the packages that shape a bundle, for its metadata."""
    out = {"python": platform.python_version()}
    for pkg in ("particleseg", "keras", "tensorflow", "tensorflow-cpu", "torch", "jax", "numpy", "scikit-image"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        import keras  # keras: only when installed (lazy, docs/architecture.md)

        out["keras_backend"] = keras.backend.backend()
    except Exception:  # noqa: BLE001
        pass
    return out


def make_metadata(
    name: str,
    network: NetworkConfig,
    *,
    description: str = "",
    channels: list[str] | None = None,
    normalization: dict | None = None,
    tile: int = 256,
    overlap: int = 32,
    pixel_size: float | None = None,
    unit: str = "px",
    particle_size_px: float | None = None,
    particle_size_range_px: tuple[float, float] | None = None,
    classes: list[str] | None = None,
    polarity: str = "bright",
    postprocess: dict | None = None,
    training: dict | None = None,
    metrics: dict | None = None,
) -> dict[str, Any]:
    """Assemble the metadata of a new bundle (validated by :func:`validate_metadata`).

    ``tile`` is the largest inference tile side; ``overlap`` the tiles' halo, raised to the
    network's receptive field rounded up to ``2 ** depth`` (exact tiles), which is recorded as
    ``tiling.receptive_field``; ``tile`` is raised to more than twice the halo.
    """
    tiling = tiling_metadata(network, tile, overlap)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": description,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "network": network.to_dict(),
        "model_file": MODEL_FILE,
        "input": {
            "channels": channels or [f"channel {i}" for i in range(network.input_channels)],
            "normalization": normalization or {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]},
            "polarity": polarity,
        },
        "tiling": tiling,
        "scale": {
            "pixel_size": pixel_size,
            "unit": unit,
            "particle_size_px": particle_size_px,
            **(
                {"particle_size_range_px": [float(v) for v in particle_size_range_px]} if particle_size_range_px else {}
            ),
        },
        "classes": classes or ["background", "particle"],
        "postprocess": {**DEFAULT_POSTPROCESS, **(postprocess or {})},
        "training": training or {},
        "metrics": metrics or {},
        "classifier": None,
        "exports": {},
        "versions": versions(),
    }
    return validate_metadata(meta, name)


def tiling_metadata(network: NetworkConfig, tile: int, overlap: int) -> dict[str, Any]:
    """Return the ``tiling`` section of a bundle.

    ``tile`` (largest tile side), ``overlap`` (the halo, at least the receptive field rounded up to
    ``2 ** depth``), ``receptive_field`` (radius in pixels, None when unbounded) and ``exact``
    (tiled output = whole-image output).
    """
    rf = receptive_field(network)
    halo = exact_halo(network)
    overlap = int(overlap) if halo is None else max(int(overlap), halo)
    m = network.multiple_of
    tile = max(-(-int(tile) // m) * m, 2 * overlap + m)
    return {"tile": tile, "overlap": overlap, "receptive_field": rf, "exact": rf is not None}


def _without_optimizer(model):
    """Return the network without its optimiser's state, for a bundle (a third of the size after Adam).

    Keras 3 writes a compiled model's optimiser state into ``.keras`` files and has no option to
    leave it out (``clone_model`` compiles the clone too); a bundle is for prediction and a
    fine-tuning starts a new optimiser, so the bundle gets an uncompiled functional model over
    the same layers. Training resumes from the checkpoints of its work folder, never from a
    bundle.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    import keras

    return keras.Model(model.inputs, model.outputs, name=model.name)


def save_bundle(
    path: str | os.PathLike,
    model,
    metadata: dict[str, Any],
    classifier=None,
    overwrite: bool = False,
    zip_copy: bool = True,
    extra_files: dict[str, str | os.PathLike] | None = None,
    onnx: bool | str = "auto",
) -> Bundle:
    """Write a bundle folder atomically (and a ``.zip`` of it beside, if ``zip_copy``).

    ``extra_files`` maps paths inside the bundle to files copied there (e.g. the training
    log and loss curve).

    ``onnx``: also write ``export/model.onnx``, checked against Keras to 1e-4 and recorded in
    ``exports`` (:func:`particleseg.models.export.export_onnx`), so that segmentation runs on
    ONNX Runtime without TensorFlow. ``"auto"`` (default) exports when ``tf2onnx`` and
    ``onnxruntime`` are installed and the Keras backend is TensorFlow, and notes why not
    otherwise; ``True`` insists (:class:`BundleError` when the export fails); ``False`` skips it.

    The folder is assembled under a temporary name next to ``path`` and renamed at the end, so
    an interrupted save never leaves a half-written bundle.
    """
    path = Path(path)
    validate_metadata(metadata, str(path))
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: bundle exists; use --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        meta = dict(metadata)
        _without_optimizer(model).save(tmp / MODEL_FILE)
        if classifier is not None:
            _without_optimizer(classifier).save(tmp / CLASSIFIER_FILE)
            meta["classifier"] = {"model_file": CLASSIFIER_FILE, **(meta.get("classifier") or {})}
        for rel, src in (extra_files or {}).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        if onnx:
            from .export import export_onnx  # cycle: .export imports .bundle

            entry = export_onnx(
                model, tmp, NetworkConfig.from_dict(meta["network"]), required=onnx is True, source=str(path)
            )
            if entry is not None:
                meta["exports"] = {**(meta.get("exports") or {}), "onnx": entry}
                if classifier is not None:  # the classifier too, so that its bundles run without TensorFlow
                    net = meta["classifier"].get("network")
                    entry = export_onnx(
                        classifier,
                        tmp,
                        NetworkConfig.from_dict(net) if net else None,
                        required=onnx is True,
                        source=str(path),
                        filename="classifier.onnx",
                    )
                    if entry is not None:
                        meta["exports"]["classifier_onnx"] = entry
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=_json_default) + "\n", encoding="utf-8")
        respect_umask(tmp)  # mkdtemp made it 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if zip_copy:
        zip_bundle(path, path.with_suffix(".zip"), overwrite=True)
    return load_bundle(path)


def write_metadata(bundle_path: str | os.PathLike, metadata: dict[str, Any]) -> None:
    """Replace a bundle's metadata file atomically (after validation).

    The ``exports`` describe files of the folder: when ``metadata`` names none, those of the
    metadata it replaces whose files are there are kept (so that a script that saves a bundle,
    then rewrites the metadata it built, keeps the ONNX export :func:`save_bundle` made).
    """
    metadata = _keep_exports(Path(bundle_path), metadata)
    validate_metadata(metadata, str(bundle_path))
    text = json.dumps(metadata, indent=2, default=_json_default) + "\n"
    write_atomic(Path(bundle_path) / METADATA_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)


def _keep_exports(folder: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    if metadata.get("exports"):
        return metadata
    try:
        old = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8")).get("exports") or {}
    except (OSError, ValueError, AttributeError):
        return metadata
    kept = {k: e for k, e in old.items() if isinstance(e, dict) and e.get("file") and (folder / e["file"]).exists()}
    return {**metadata, "exports": kept} if kept else metadata


def zip_bundle(folder: str | os.PathLike, zip_path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Zip a bundle folder (its files at the archive root)."""
    folder = Path(folder)

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(folder))

    return write_atomic(zip_path, write, overwrite)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot store {type(o).__name__} in bundle metadata")
