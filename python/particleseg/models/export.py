"""Exports of a bundle's network for other runtimes: ONNX and TensorFlow SavedModel.

ONNX serves ONNX Runtime and DeepImageJ-style Java runtimes; each export is checked against
Keras on a test image.

Exports live in the bundle's ``export/`` folder and are listed in ``bundle.json`` under
``exports``, with the largest difference from the Keras output that the check found::

    "exports": {"onnx": {"file": "export/model.onnx", "input": "image", "output": "...",
                         "layout": "NHWC", "max_abs_diff": 3e-07, "checked_on": "64x64 test image"}}

Exporting needs the TensorFlow backend (``keras.Model.export``); running an ONNX export needs
only ``onnxruntime``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ..errors import BundleError, OutputExistsError, ParticlesegWarning
from .bundle import Bundle, keras_predictor, load_bundle, write_metadata, zip_bundle

FORMATS = ("onnx", "saved_model")
EXPORT_DIR = "export"
FILES = {"onnx": "model.onnx", "saved_model": "saved_model"}
TOLERANCE = 1e-4
#: threads of each ONNX Runtime session (None: ONNX Runtime's default, one per core); the worker
#: processes of a parallel batch set their share of the cores (the outputs do not depend on it)
INTRA_OP_THREADS: int | None = None
#: side of the small run that releases ONNX Runtime's memory arena (a multiple of any network's
#: ``2 ** depth`` up to depth 8)
RELEASE_SIDE = 256


def test_image(size: int = 64, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A ``(1, size, size, channels)`` float32 test batch: smooth blobs plus noise in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.random((size, size, channels)), (3, 3, 0))
    x = (x - x.min()) / max(np.ptp(x), 1e-6) + rng.normal(0, 0.02, x.shape)
    return x[None].astype(np.float32)


def onnx_predictor(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """Batch prediction with ONNX Runtime: ``(N, H, W, C)`` float32 -> ``(N, H, W, K)``.

    Usable as the ``predictor`` of :func:`particleseg.pipeline.segment_image`. The function has
    a ``release_memory()`` attribute that hands ONNX Runtime's memory arena back to the system
    (what :func:`particleseg.pipeline.predict_probabilities` calls after a large image).
    """
    try:
        import onnxruntime as ort  # onnxruntime: optional, only to run ONNX (lazy)
    except ImportError:
        raise BundleError(f"{path}: onnxruntime is not installed (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # no busy-waiting between operators: on a shared machine (or with post-processing in another
    # thread or process) spinning threads take the CPU the other work needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no memory pattern (ONNX Runtime's plan of one block for all of a run's tensors, made from
    # the first run of each input shape): the same outputs and speed (0.97-1.04x, interleaved
    # runs of 1024 and 2048 px tiles), a third less memory at its peak (a 2048x2048 tile: 2.2
    # instead of 3.5 GiB; 1024x1024: 0.57 instead of 0.9 GiB)
    opts.enable_mem_pattern = False
    if INTRA_OP_THREADS:
        opts.intra_op_num_threads = int(INTRA_OP_THREADS)
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise BundleError(f"{path}: cannot load ONNX model ({str(exc).splitlines()[0]})") from None
    name = session.get_inputs()[0].name
    channels = session.get_inputs()[0].shape[-1]
    channels = channels if isinstance(channels, int) else 1

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.asarray(batch, np.float32)})[0]

    def release_memory() -> None:
        # ONNX Runtime keeps the memory arena of its largest run (about 0.85 GiB after a
        # 1024x1024 tile) for later runs; a small run with arena shrinkage hands it back, so what
        # follows inference (the particle search of a large image) does not sit on top of it.
        # The next large run grows the arena again (about 0.07 s for a 1024x1024 tile).
        shrink = ort.RunOptions()
        shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        session.run(None, {name: np.zeros((1, RELEASE_SIDE, RELEASE_SIDE, channels), np.float32)}, shrink)

    predict.release_memory = release_memory
    return predict


def saved_model_predictor(path: str | os.PathLike) -> Callable[[np.ndarray], np.ndarray]:
    """Batch prediction with a TensorFlow SavedModel's ``serve`` endpoint (TensorFlow only)."""
    import tensorflow as tf  # noqa: PLC0415 - the TF-only export path

    loaded = tf.saved_model.load(str(path))

    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(loaded.serve(tf.constant(np.asarray(batch, np.float32))))

    return predict


def check_export(
    model,
    predict: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray | None = None,
    tolerance: float = TOLERANCE,
    source: str = "export",
) -> float:
    """Largest absolute difference between Keras and an exported model on a test image.

    Parameters
    ----------
    model : keras.Model
    predict : callable
        The exported model as a batch function (:func:`onnx_predictor`, ...).
    image : array, optional
        ``(H, W, C)`` or ``(N, H, W, C)``; default :func:`test_image` (sides must suit the
        network: multiples of ``2 ** depth``).
    tolerance : float
        Raise :class:`BundleError` when the difference is larger.
    """
    x = test_image(64, model.inputs[0].shape[-1]) if image is None else np.asarray(image, np.float32)
    if x.ndim == 3:
        x = x[None]
    want = keras_predictor(model)(x)
    got = np.asarray(predict(x))
    if got.shape != want.shape:
        raise BundleError(f"{source}: output shape {got.shape} differs from Keras {want.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= tolerance:
        raise BundleError(f"{source}: output differs from Keras by up to {diff:.3g} (tolerance {tolerance:g})")
    return diff


def export_model(model, path: str | os.PathLike, fmt: str) -> Path:
    """Write ``model`` as ``fmt`` (``onnx`` file or ``saved_model`` folder) to ``path``."""
    if fmt not in FORMATS:
        raise BundleError(f"{fmt}: unknown export format; choose one of {', '.join(FORMATS)}")
    path = Path(path)
    try:
        if not getattr(model, "_called", True):  # Keras exports only a model that was called once
            model(test_image(64, model.inputs[0].shape[-1]), training=False)
        # tf2onnx and the SavedModel writer print pages of progress and NumPy deprecation warnings
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), _traceable_upsampling(model):
            warnings.simplefilter("ignore", FutureWarning)
            model.export(str(path), format="onnx" if fmt == "onnx" else "tf_saved_model", verbose=False)
    except Exception as exc:  # noqa: BLE001
        raise BundleError(
            f"{path}: cannot export as {fmt} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return path


class _traceable_upsampling:
    """While exporting, Keras' bilinear ``UpSampling2D`` (the FCN's) calls ``tf.image.resize`` directly.

    Keras' own call compares the traced output size with 0, which a graph with
    unknown sides cannot do. The same operation (half-pixel centres, no antialiasing), so the
    export still matches Keras (checked by :func:`check_export`).
    """

    def __init__(self, model):
        self.layers = []
        try:
            import keras  # keras: only to export (lazy, docs/architecture.md)

            if keras.backend.backend() == "tensorflow":
                self.layers = [
                    layer
                    for layer in _all_layers(model)
                    if isinstance(layer, keras.layers.UpSampling2D)
                    and layer.interpolation != "nearest"
                    and layer.data_format == "channels_last"
                ]
        except Exception:  # noqa: BLE001
            self.layers = []

    def __enter__(self):
        import tensorflow as tf  # noqa: PLC0415 - only with layers to patch, on the TensorFlow backend

        for layer in self.layers:
            fy, fx = layer.size
            method = layer.interpolation

            def call(x, fy=fy, fx=fx, method=method):
                s = tf.shape(x)
                return tf.image.resize(x, tf.stack([s[1] * fy, s[2] * fx]), method=method)

            layer.call = call
        return self

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.__dict__.pop("call", None)
        return False


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def export_onnx(
    model,
    folder: str | os.PathLike,
    network=None,
    required: bool = False,
    source: str = "bundle",
    tolerance: float = TOLERANCE,
    filename: str = FILES["onnx"],
) -> dict | None:
    """Write ``folder/export/model.onnx`` for a bundle being saved and return its ``exports`` entry.

    The export is checked against Keras first (largest difference at most ``tolerance`` on a test
    image whose sides are twice ``2 ** depth`` or 64).

    Needs the TensorFlow backend and ``tf2onnx``, and ``onnxruntime`` for the check; without
    them (or when the export fails) it returns None with one note, or raises
    :class:`BundleError` if ``required``.
    """
    folder = Path(folder)
    missing = [name for name in ("tf2onnx", "onnxruntime") if not has_module(name)]
    try:
        import keras  # keras: only to export (lazy, docs/architecture.md)

        backend = keras.backend.backend()
    except Exception:  # noqa: BLE001
        backend = "unknown"
    why = (
        f"{' and '.join(missing)} not installed (pip install particleseg[export])"
        if missing
        else f"the Keras backend is {backend}, the ONNX export needs tensorflow"
        if backend != "tensorflow"
        else ""
    )
    channels = network.input_channels if network is not None else model.inputs[0].shape[-1]
    m = network.multiple_of if network is not None else 16
    entry = None
    if not why:
        out_dir = folder / EXPORT_DIR
        out_dir.mkdir(exist_ok=True)
        target = out_dir / filename
        try:
            export_model(model, target, "onnx")
            image = test_image(max(64, 2 * m), channels)
            diff = check_export(model, onnx_predictor(target), image, tolerance, f"{source}: {EXPORT_DIR}/{filename}")
            heads = ", ".join(h.kind for h in network.heads) if network is not None else "network output"
            entry = {
                "file": f"{EXPORT_DIR}/{filename}",
                "layout": "NHWC",
                "input": f"(N, H, W, C) float32, normalised as in 'input'; H and W multiples of {m}",
                "output": f"(N, H, W, {network.output_channels if network is not None else 'K'}) float32: {heads}",
                "max_abs_diff": diff,
                "checked_on": f"{image.shape[2]}x{image.shape[1]} test image (particleseg.models.export.test_image)",
            }
        except BundleError as exc:
            target.unlink(missing_ok=True)
            if not any(out_dir.iterdir()):
                out_dir.rmdir()
            why = str(exc)
    if entry is None:
        if required:
            raise BundleError(f"{source}: no ONNX export ({why})")
        warnings.warn(
            f"{source}: saved without an ONNX export ({why}); segmentation will use Keras",
            ParticlesegWarning,
            stacklevel=3,
        )
    return entry


def has_module(name: str) -> bool:
    """Return whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def export_bundle(bundle, formats=FORMATS, overwrite: bool = False, check: bool = True, tolerance: float = TOLERANCE):
    """Export a bundle's segmentation network and record the exports in its metadata.

    Each export is written under a temporary name in ``export/``, checked against Keras on a
    test image (:func:`check_export`), then moved into place; ``bundle.json`` is replaced
    atomically, and a ``.zip`` of the bundle beside it is rewritten to match.

    Returns the bundle, loaded again.
    """
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if bundle.path.parent.name == "bundles" and ".cache" in bundle.path.parts:
        raise BundleError(f"{bundle.path}: a zipped bundle cannot be changed; unzip it and export the folder")
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        if fmt not in FORMATS:
            raise BundleError(f"{fmt}: unknown export format; choose one of {', '.join(FORMATS)}")
    out_dir = bundle.path / EXPORT_DIR
    targets = {fmt: out_dir / FILES[fmt] for fmt in formats}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]}: export exists; use --overwrite to replace it")
    out_dir.mkdir(exist_ok=True)
    model = bundle.model
    image = test_image(max(64, 2 * bundle.network.multiple_of), bundle.network.input_channels)
    meta = dict(bundle.metadata)
    exports = dict(meta.get("exports") or {})
    try:
        _export_all(model, bundle, targets, out_dir, image, check, tolerance, exports)
    finally:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
    meta["exports"] = exports
    write_metadata(bundle.path, meta)
    zipped = bundle.path.with_suffix(".zip")
    if zipped.is_file():
        zip_bundle(bundle.path, zipped, overwrite=True)
    return load_bundle(bundle.path)


def _export_all(model, bundle, targets, out_dir, image, check, tolerance, exports) -> None:
    for fmt, target in targets.items():
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{fmt}.", dir=out_dir))
        try:
            tmp = export_model(model, tmp_dir / FILES[fmt], fmt)
            entry = {
                "file": f"{EXPORT_DIR}/{FILES[fmt]}",
                "layout": "NHWC",
                "input": "(N, H, W, C) float32, normalised as in 'input'; H and W multiples of "
                f"{bundle.network.multiple_of}",
                "output": f"(N, H, W, {bundle.network.output_channels}) float32: " + ", ".join(bundle.heads),
            }
            if check:
                predict = onnx_predictor(tmp) if fmt == "onnx" else saved_model_predictor(tmp)
                entry["max_abs_diff"] = check_export(model, predict, image, tolerance, str(target))
                entry["checked_on"] = (
                    f"{image.shape[2]}x{image.shape[1]} test image (particleseg.models.export.test_image)"
                )
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        exports[fmt] = entry
