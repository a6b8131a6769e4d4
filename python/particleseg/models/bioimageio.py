"""bioimage.io model packages: export a bundle as one, and read one back as a bundle.

A bioimage.io model package is a zip (or folder) holding ``rdf.yaml`` (the model description of
the bioimage.io specification, format 0.5) and the files it names. DeepImageJ runs such
packages inside Fiji without Python; ``bioimageio.core``, ilastik and QuPath read them too.

:func:`export_bioimageio` writes a package of a bundle's segmentation network:

* weights as Keras 3 (``model.keras``, the bundle's own file), ONNX (``model.onnx``) and
  TensorFlow SavedModel (``tf_saved_model.zip``), each exported from the Keras model and checked
  against it on the test input;
* the input tensor ``(batch, y, x, channel)`` with the bundle's normalisation as preprocessing
  (``scale_range`` between the 1st and 99.8th percentiles of each channel, then ``clip``), the
  output ``(batch, y, x, channel)`` with one channel per network output (``foreground``,
  ``distance``, ...), and the bundle's tiling halo (:attr:`Bundle.overlap`) for tiled prediction;
* a test input (a crop of the shipped sample image, raw) and the output particleseg's own
  normalisation and Keras give for it, a cover image (input and foreground probability),
  documentation (``README.md``), the citation of Rühle et al. 2021 and a licence;
* the bundle's ``bundle.json`` as an attachment and its post-processing defaults (threshold,
  watershed levels, minimum size, ...) under ``config.particleseg``, so that particleseg loads
  the package back as exactly the bundle it came from (:func:`particleseg.models.load_bundle`
  accepts the zip or the folder).

The package is validated with ``bioimageio.spec`` as it is written; :func:`test_package` runs
``bioimageio.core``'s model test (every weights format on the test input). Both libraries are
the optional extra ``particleseg[bioimageio]``; reading a package back needs neither.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BundleError, OutputExistsError
from ..io import read_image
from ..preprocess import normalize_input
from .bundle import Bundle, _json_default, keras_predictor, load_bundle, versions
from .export import TOLERANCE, check_export, export_model, onnx_predictor, test_image

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
BUNDLE_ATTACHMENT = "bundle.json"
WEIGHTS = ("keras", "onnx", "saved_model")
CITATION = {
    "text": "Rühle, B., Krumrey, J. F. & Hodoroaba, V.-D. Workflow towards automated segmentation of "
    "agglomerated, non-spherical particles from electron microscopy images using artificial "
    "neural networks. Scientific Reports 11, 4942 (2021).",
    "doi": "10.1038/s41598-021-84287-6",
}
DEFAULT_LICENSE = "BSD-3-Clause"
DEFAULT_AUTHOR = "particleseg contributors"
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_sem.tif"


def _need_spec():
    try:
        import bioimageio.spec  # noqa: F401 - the optional extra particleseg[bioimageio]
    except ImportError:
        raise BundleError("bioimage.io export needs bioimageio.spec (pip install 'particleseg[bioimageio]')") from None


def package_name(name: str) -> str:
    """Return a file name for a bundle's package: ``NAME.bioimageio.zip``."""
    return re.sub(r"[^\w.-]+", "_", name) + ".bioimageio.zip"


def _identifier(text: str, fallback: str) -> str:
    ident = re.sub(r"\W+", "_", text.strip()).strip("_").lower()
    if not ident or not ident.isidentifier():
        ident = fallback
    return ident


def output_channel_names(bundle) -> list[str]:
    """One name per output channel: the head kind, or the class names of a ``classes`` head."""
    names: list[str] = []
    classes = list(bundle.metadata.get("classes") or [])
    for head in bundle.network.heads:
        if head.channels == 1:
            names.append(head.kind)
        elif head.kind == "classes" and len(classes) == head.channels:
            names.extend(f"class_{_identifier(c, str(i))}" for i, c in enumerate(classes))
        else:
            names.extend(f"{head.kind}_{i}" for i in range(head.channels))
    # channel names must be unique identifiers
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def make_test_input(bundle, size: int | None = None) -> np.ndarray:
    """Make the raw test input ``(1, size, size, C)`` float32 of a bundle's package.

    A single-channel SEM bundle gets a crop of the shipped sample image (inverted for a network
    trained on dark particles); other bundles get smooth random blobs
    (:func:`particleseg.models.export.test_image`). ``size`` (default 256, at least the package's
    smallest input) is rounded up to a multiple of the network's ``multiple_of``.
    """
    m = bundle.network.multiple_of
    size = max(int(size or 256), _halo_and_min_size(bundle)[1])
    size = max(m, -(-size // m) * m)
    c = bundle.network.input_channels
    if c == 1 and bundle.kind == "sem" and SAMPLE.is_file():
        image, _ = read_image(SAMPLE)
        image = np.asarray(image, np.float32)
        if min(image.shape) >= size + 64:
            crop = image[:size, :size]
            if bundle.metadata["input"].get("polarity", "bright") == "dark":
                crop = crop.max() + crop.min() - crop
            return crop[None, :, :, None].astype(np.float32)
    return test_image(size, c)


def _onnx_opset(path: Path) -> int:
    import onnx  # onnx: the optional extra particleseg[export]

    model = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return int(versions[0]) if versions else 15


def _cover(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Write a 2:1 PNG: the test input (left) and the first output channel (right)."""
    from PIL import Image  # Pillow: only for the cover; load_bundle imports this module

    def gray(a):
        a = np.asarray(a, np.float64)
        lo, hi = np.percentile(a, [1, 99.8])
        return (np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)

    left = gray(x[0, :, :, 0])
    right = (np.clip(y[0, :, :, 0], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def _documentation(bundle, channel_names: list[str], weights: list[str]) -> str:
    meta = bundle.metadata
    norm = meta["input"].get("normalization", {})
    scale = meta["scale"]
    post = bundle.postprocess
    size = scale.get("particle_size_px")
    rng = scale.get("particle_size_range_px")
    pol = meta["input"].get("polarity", "bright")
    lines = [
        f"# {meta['name']} (particleseg)",
        "",
        meta.get("description") or "Segmentation of particles in electron-microscopy images.",
        "",
        "Exported from a particleseg model bundle (the workflow of Rühle et al. 2021, cited below). The network "
        "gives per-pixel maps; particleseg turns them into particles (threshold, network-seeded watershed "
        "split of touching particles, size and confidence filters) and measures them (Feret diameters, ECD, "
        "area) in calibrated units.",
        "",
        "## Input",
        "",
        f"* One gray image ({bundle.network.input_channels} channel(s): "
        f"{', '.join(meta['input'].get('channels') or [])}), any size; sides are padded or tiled to multiples of "
        f"{bundle.network.multiple_of}.",
        f"* Polarity: the network was trained on **{pol}** particles on a "
        f"{'dark' if pol == 'bright' else 'bright'} background. Invert images of the other kind first "
        "(ImageJ: Edit > Invert).",
    ]
    if size:
        lines.append(
            f"* Scale: typical particle diameter about {size:.0f} pixels"
            + (f" (trained on {rng[0]:g}-{rng[1]:g} px)" if rng else "")
            + "; resample images whose particles are much larger or smaller (ImageJ: Image > Scale)."
        )
    if norm.get("method") == "percentile":
        lines.append(
            f"* Normalisation (done by the preprocessing of this package): the {norm.get('low', 1.0):g} and "
            f"{norm.get('high', 99.8):g} percentiles of each channel map to 0 and 1, then values are clipped to "
            f"{norm.get('clip')}."
        )
    lines += [
        "",
        "## Output",
        "",
        f"Channels: {', '.join(channel_names)} (float32 in [0, 1]). `foreground` is the particle probability; "
        "`distance` is high in particle centres (the watershed seeds); `boundary` is the probability of a "
        "particle border.",
        "",
        "## From probabilities to particles",
        "",
        "With particleseg (Python): `particleseg segment IMAGE --model THIS_PACKAGE.zip` runs the network and "
        "the post-processing below in one go. In Fiji without Python (DeepImageJ): threshold the foreground "
        f"channel at {post['threshold']:g}, split touching particles (Process > Binary > Watershed, or particleseg's "
        "Split Touching Particles... with the distance channel as the distance map) and measure with "
        "Analyze Particles (Feret's diameter). See particleseg's docs/bioimageio.md.",
        "",
        "Post-processing defaults of the bundle (also under `config.particleseg.postprocess`):",
        "",
    ]
    lines += [f"* `{k}`: {json.dumps(v)}" for k, v in post.items()]
    lines += [
        "",
        f"Weights: {', '.join(weights)}. `bundle.json` is the particleseg bundle metadata; particleseg loads this "
        "package as that bundle.",
        "",
        "## Citation",
        "",
        CITATION["text"] + f" https://doi.org/{CITATION['doi']}",
        "",
    ]
    return "\n".join(lines)


def export_bioimageio(
    bundle,
    out: str | os.PathLike | None = None,
    *,
    weights: Sequence[str] = WEIGHTS,
    authors: Sequence[str] | None = None,
    license: str | None = None,  # noqa: A002 - the rdf field
    overwrite: bool = False,
    test_size: int | None = None,
    tolerance: float | None = None,
) -> Path:
    """Write a bioimage.io model package of a bundle; return its path.

    Parameters
    ----------
    bundle : Bundle or str or path
        The bundle (a :class:`~particleseg.models.Bundle`, a folder, a zip or an installed name).
    out : path, optional
        A ``.zip`` (the usual form; DeepImageJ installs it) or a folder. Default
        ``NAME.bioimageio.zip`` in the current folder.
    weights : sequence of {"keras", "onnx", "saved_model"}
        Weights formats to include (default all three; the Keras file is always the source the
        others are converted from).
    authors : list of str, optional
        Author names (default the bundle's ``authors`` or "particleseg contributors").
    license : str, optional
        SPDX licence identifier (default the bundle's ``license`` or BSD-3-Clause).
    tolerance : float, optional
        Largest difference of an exported format from Keras on the test input
        (default :data:`particleseg.models.export.TOLERANCE`).

    Raises
    ------
    BundleError
        When the bundle cannot be described (an unknown format, a failed export check) or the
        description does not pass ``bioimageio.spec`` validation (the first errors, one line).
    """
    _need_spec()
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    weights = list(dict.fromkeys(weights))
    unknown = [w for w in weights if w not in WEIGHTS]
    if unknown:
        raise BundleError(f"{unknown[0]}: unknown weights format; choose from {', '.join(WEIGHTS)}")
    if "keras" not in weights:
        weights.insert(0, "keras")
    out = Path(out) if out is not None else Path(package_name(bundle.name))
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists; use --overwrite to replace it")
    tolerance = TOLERANCE if tolerance is None else tolerance
    meta = bundle.metadata
    norm = meta["input"].get("normalization", {"method": "none"})

    stage = Path(tempfile.mkdtemp(prefix=".bioimageio-"))
    try:
        # test tensors: raw input, and the output of particleseg's own normalisation + Keras
        x = make_test_input(bundle, test_size)
        xn = normalize_input(x[0], norm)[None]
        model = bundle.model
        y = np.asarray(keras_predictor(model)(xn), np.float32)
        np.save(stage / "test_input.npy", x)
        np.save(stage / "test_output.npy", y)
        _cover(x, y, stage / "cover.png")

        shutil.copyfile(bundle.path / bundle.metadata.get("model_file", "model.keras"), stage / "model.keras")
        (stage / BUNDLE_ATTACHMENT).write_text(
            json.dumps(meta, indent=2, default=_json_default) + "\n", encoding="utf-8"
        )
        attachments = [{"source": BUNDLE_ATTACHMENT}]
        if bundle.has_classifier:
            rel = meta["classifier"].get("model_file", "classifier.keras")
            shutil.copyfile(bundle.path / rel, stage / Path(rel).name)
            attachments.append({"source": Path(rel).name})
            # its ONNX export too, so that the loaded package runs the classifier with ONNX Runtime
            entry = (meta.get("exports") or {}).get("classifier_onnx") or {}
            if entry.get("file") and (bundle.path / entry["file"]).is_file():
                shutil.copyfile(bundle.path / entry["file"], stage / Path(entry["file"]).name)
                attachments.append({"source": Path(entry["file"]).name})

        vers = versions()
        import keras  # keras: only to export (lazy, docs/architecture.md)

        backend = keras.backend.backend()
        wdescr: dict[str, Any] = {
            "keras_v3": {
                "source": "model.keras",
                "keras_version": keras.__version__,
                "backend": [backend, vers.get(backend) or vers.get("tensorflow-cpu") or vers.get("tensorflow", "0")],
                "comment": "the particleseg bundle's own network file",
            },
        }
        if "onnx" in weights:
            export_model(model, stage / "model.onnx", "onnx")
            check_export(model, onnx_predictor(stage / "model.onnx"), xn, tolerance, "model.onnx")
            wdescr["onnx"] = {
                "source": "model.onnx",
                "opset_version": _onnx_opset(stage / "model.onnx"),
                "parent": "keras_v3",
                "comment": "converted with tf2onnx (keras.Model.export)",
            }
        if "saved_model" in weights:
            _export_saved_model(model, stage / "tf_saved_model.zip", xn, tolerance)
            import tensorflow as tf  # tensorflow: only for this weights format (lazy)

            wdescr["tensorflow_saved_model_bundle"] = {
                "source": "tf_saved_model.zip",
                "tensorflow_version": tf.__version__,
                "parent": "keras_v3",
                "comment": "keras.Model.export(format='tf_saved_model'); endpoint 'serve' returns {'prediction': ...}",
            }

        names = output_channel_names(bundle)
        (stage / "README.md").write_text(_documentation(bundle, names, list(wdescr)), encoding="utf-8")
        rdf = _rdf(bundle, x, names, wdescr, attachments, authors, license)
        descr = _build(rdf, stage)
        _save(descr, out, overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def _export_saved_model(model, target: Path, xn: np.ndarray, tolerance: float) -> None:
    """Write a TensorFlow SavedModel of ``model``, zipped to ``target`` and checked against Keras.

    Its ``serve`` endpoint returns ``{"prediction": ...}`` (bioimageio.core's TensorFlow runner
    takes a dict of outputs).
    """
    import keras  # keras, tensorflow: only to export (lazy, docs/architecture.md)
    import tensorflow as tf

    inp = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    wrapper = keras.Model(inp, {"prediction": model(inp)})
    sm = target.parent / "saved_model"
    export_model(wrapper, sm, "saved_model")
    loaded = tf.saved_model.load(str(sm))
    check_export(
        model,
        lambda b: np.asarray(loaded.serve(tf.constant(np.asarray(b, np.float32)))["prediction"]),
        xn,
        tolerance,
        target.name,
    )
    loaded = None  # the SavedModel released before its folder is zipped and removed
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(sm.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(sm))
    shutil.rmtree(sm)


def _halo_and_min_size(bundle) -> tuple[int, int]:
    """Return the output halo and the smallest input side of a bundle's package.

    The halo is the context pixels each side of a tile's kept part (particleseg's tiling halo,
    :attr:`Bundle.overlap`); the smallest input side must leave something of the output once the
    halo is cut off.
    """
    m = bundle.network.multiple_of
    halo = max(0, int(bundle.overlap))
    return halo, max(m, -(-(2 * halo + 1) // m) * m)


def _rdf(bundle, x, channel_names, wdescr, attachments, authors, license) -> dict[str, Any]:  # noqa: A002
    meta = bundle.metadata
    net = bundle.network
    norm = meta["input"].get("normalization", {"method": "none"})
    scale = meta["scale"]
    m = net.multiple_of
    halo, min_size = _halo_and_min_size(bundle)
    space: dict[str, Any] = {}
    pixel_size, unit = scale.get("pixel_size"), scale.get("unit")
    spec_units = {
        "nm": "nanometer",
        "µm": "micrometer",
        "um": "micrometer",
        "mm": "millimeter",
        "Å": "angstrom",
        "m": "meter",
    }
    if pixel_size and unit in spec_units:
        space = {"unit": spec_units[unit], "scale": float(pixel_size)}
    in_names = [_identifier(c, f"channel{i}") for i, c in enumerate(meta["input"].get("channels") or [])]
    if len(set(in_names)) != net.input_channels:
        in_names = ["gray"] if net.input_channels == 1 else [f"channel{i}" for i in range(net.input_channels)]
    preprocessing: list[dict] = []
    if norm.get("method") == "percentile":
        preprocessing.append(
            {
                "id": "scale_range",
                "kwargs": {
                    "axes": ["y", "x"],
                    "min_percentile": float(norm.get("low", 1.0)),
                    "max_percentile": float(norm.get("high", 99.8)),
                    "eps": 1e-6,
                },
            }
        )
        if norm.get("clip"):
            lo, hi = norm["clip"]
            preprocessing.append({"id": "clip", "kwargs": {"min": float(lo), "max": float(hi)}})
    preprocessing.append({"id": "ensure_dtype", "kwargs": {"dtype": "float32"}})
    heads = ", ".join(f"{h.kind} ({h.activation})" for h in net.heads)
    arch = {"unet": "U-Net", "multires-unet": "MultiResUNet", "fcn": "FCN"}.get(net.architecture, net.architecture)
    post = bundle.postprocess
    description = meta.get("description") or f"particleseg {bundle.kind} segmentation network"
    description = description.strip().splitlines()[0][:1024]
    return {
        "format_version": "0.5.12",
        "type": "model",
        "name": _display_name(meta["name"]),
        "description": description,
        "authors": [{"name": a} for a in (authors or meta.get("authors") or [DEFAULT_AUTHOR])],
        "cite": [CITATION],
        "license": license or meta.get("license") or DEFAULT_LICENSE,
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": [
            "particleseg",
            "segmentation",
            "electron-microscopy",
            "sem",
            "particles",
            "2d",
            net.architecture,
            "onnx" if "onnx" in wdescr else "keras",
        ],
        "attachments": attachments,
        "inputs": [
            {
                "id": "image",
                "description": "gray image, raw values (normalised by the preprocessing); "
                f"{meta['input'].get('polarity', 'bright')} particles",
                "axes": [
                    {"type": "batch"},
                    {"type": "space", "id": "y", "size": {"min": min_size, "step": m}, **space},
                    {"type": "space", "id": "x", "size": {"min": min_size, "step": m}, **space},
                    {"type": "channel", "channel_names": in_names},
                ],
                "test_tensor": {"source": "test_input.npy"},
                "data": {"type": "float32"},
                "preprocessing": preprocessing,
            }
        ],
        "outputs": [
            {
                "id": "prediction",
                "description": f"network outputs, one channel per head: {heads}",
                "axes": [
                    {"type": "batch"},
                    {"type": "space", "id": "y", "size": {"tensor_id": "image", "axis_id": "y"}, "halo": halo, **space},
                    {"type": "space", "id": "x", "size": {"tensor_id": "image", "axis_id": "x"}, "halo": halo, **space},
                    {"type": "channel", "channel_names": channel_names},
                ],
                "test_tensor": {"source": "test_output.npy"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }
        ],
        "weights": wdescr,
        "config": {
            "bioimageio": {
                "architecture_type": arch,
                "architecture_description": f"{arch}, depth {net.depth}, {net.base_filters} base filters; "
                f"heads {heads}",
                "modality": "electron microscopy (SEM, TEM)",
                "task": "semantic segmentation with instance seeds",
                "target_structure": ["particles"],
                "model_parameter_count": int(bundle.model.count_params()),
            },
            "particleseg": {
                "bundle": BUNDLE_ATTACHMENT,
                "bundle_format_version": meta["format_version"],
                "kind": bundle.kind,
                "postprocess": post,
                "polarity": meta["input"].get("polarity", "bright"),
                "normalization": norm,
                "scale": scale,
                "tiling": meta["tiling"],
                "test_input_shape": list(x.shape),
            },
        },
    }


def _display_name(name: str) -> str:
    # bioimage.io names: letters, digits, spaces and a few marks, at least 5 characters
    text = re.sub(r"[^\w ()+.,-]+", " ", f"particleseg {name}").strip()
    return re.sub(r"\s+", " ", text)[:128]


def _first_errors(summary, n: int = 3) -> str:
    errs = []
    for detail in getattr(summary, "details", []):
        for e in getattr(detail, "errors", []):
            loc = ".".join(str(p) for p in getattr(e, "loc", ()))
            errs.append(f"{loc}: {e.msg}" if loc else e.msg)
    return "; ".join(errs[:n]) or str(getattr(summary, "status", "failed"))


def _build(rdf: dict, root: Path):
    """Validate ``rdf`` (files relative to ``root``) with bioimageio.spec; return the description."""
    from bioimageio.spec import ValidationContext, build_description  # the optional extra particleseg[bioimageio]
    from bioimageio.spec.model.v0_5 import ModelDescr

    with ValidationContext(root=root, perform_io_checks=True):
        descr = build_description(rdf)
    if not isinstance(descr, ModelDescr):
        raise BundleError(f"bioimage.io description invalid: {_first_errors(descr.validation_summary)}")
    return descr


def _save(descr, out: Path, overwrite: bool) -> None:
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder  # optional extra

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if out.suffix.lower() == ".zip":
            written = save_bioimageio_package(descr, output_path=tmp / out.name)
        else:
            written = save_bioimageio_package_as_folder(descr, output_path=tmp / out.name)
        if out.exists():
            if not overwrite:
                raise OutputExistsError(f"{out}: exists; use --overwrite to replace it")
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(written, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def validate_package(path: str | os.PathLike):
    """Validate a package (zip or folder) with bioimageio.spec; return its validation summary."""
    _need_spec()
    from bioimageio.spec import load_description  # the optional extra particleseg[bioimageio]

    # an absolute path: a bare file name would be taken for a bioimage.io model id (a download)
    descr = load_description(str(_rdf_source(Path(path)).resolve()), perform_io_checks=True)
    return descr.validation_summary


def test_package(path: str | os.PathLike, weight_format: str | None = None):
    """Run bioimageio.core's model test on a package; return the validation summary.

    Every weights format is tested unless ``weight_format`` names one; the summary's ``.status``
    is "passed" or "failed".
    """
    try:
        from bioimageio.core import test_model  # the optional extra particleseg[bioimageio]
    except ImportError:
        raise BundleError(
            "testing a bioimage.io package needs bioimageio.core (pip install 'particleseg[bioimageio]')"
        ) from None
    source = str(_rdf_source(Path(path)).resolve())
    # the TensorFlow runner unpacks its weights into the current folder: run it in a temporary one
    # (and the Keras runner draws progress bars: off while testing)
    import keras  # keras: only to run the test (lazy, docs/architecture.md)

    cwd = os.getcwd()
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    tf_log = logging.getLogger("tensorflow")
    tf_level = tf_log.level
    tf_log.setLevel(logging.ERROR)  # retracing warnings for each tested input size
    with tempfile.TemporaryDirectory(prefix="bioimageio-test-") as tmp:
        os.chdir(tmp)
        try:
            return test_model(source, weight_format=weight_format)
        finally:
            os.chdir(cwd)
            tf_log.setLevel(tf_level)
            if interactive:
                keras.config.enable_interactive_logging()


def package_weights(folder: str | os.PathLike) -> dict[str, str]:
    """Return the weights of a package folder by format (``onnx``, ``keras_v3``, ...).

    Their files, as its ``rdf.yaml`` names them (empty when the folder is no package).
    """
    folder = Path(folder)
    rdf = _rdf_source(folder)
    if not rdf.is_file() or rdf == folder:
        return {}
    text = rdf.read_text(encoding="utf-8", errors="replace")
    try:
        import yaml  # PyYAML: optional (no dependency of particleseg)

        weights = (yaml.safe_load(text) or {}).get("weights") or {}
        return {k: str(v["source"]) for k, v in weights.items() if isinstance(v, dict) and v.get("source")}
    except ImportError:  # PyYAML is no dependency of particleseg: the block as bioimageio.spec writes it
        block = re.search(r"^weights:\n((?:[ \t]+.*\n?)*)", text, re.M)
        found, fmt = {}, None
        for line in block.group(1).splitlines() if block else []:
            m = re.match(r"^  (\w+):\s*$", line)
            if m:
                fmt = m.group(1)
                continue
            m = re.match(r"^    source:\s*['\"]?([^'\"]+?)['\"]?\s*$", line)
            if m and fmt:
                found[fmt] = m.group(1)
        return found


def package_metadata(folder: str | os.PathLike, meta: dict[str, Any]) -> dict[str, Any]:
    """Return the metadata of a bundle loaded from a package folder written by :func:`export_bioimageio`.

    The attached ``bundle.json`` is the exported bundle's; its ``exports`` name that bundle's
    files (``export/model.onnx``, ...), which the package holds under other names or not at all.
    Here they point at the package's own files: ``exports.onnx`` at its ONNX weights (checked
    against Keras when the package was written), so that the package runs with ONNX Runtime as
    the bundle did (:meth:`~particleseg.models.Bundle.predictor`); the classifier's ONNX export at
    its attachment; exports the package lacks are dropped. Anything else is returned unchanged.
    """
    folder = Path(folder)
    if not is_package(folder):
        return meta
    exports = {}
    for key, entry in (meta.get("exports") or {}).items():
        rel = entry.get("file") if isinstance(entry, dict) else None
        if not rel or (folder / rel).exists():
            exports[key] = entry
        elif (folder / Path(rel).name).exists():
            exports[key] = {**entry, "file": Path(rel).name}
    onnx = package_weights(folder).get("onnx")
    if onnx and (folder / onnx).is_file():
        exports["onnx"] = {
            **(exports.get("onnx") or {"layout": "NHWC"}),
            "file": onnx,
            "source": "the bioimage.io package's onnx weights",
        }
    else:
        exports.pop("onnx", None)
    out = {k: v for k, v in meta.items() if k != "exports"}
    if exports:
        out["exports"] = exports
    return out


def _rdf_source(path: Path) -> Path:
    if path.is_dir():
        for name in RDF_NAMES:
            if (path / name).is_file():
                return path / name
    return path


def rdf_file_in(names: Sequence[str]) -> str | None:
    """Return the bioimage.io description among the root-level file names of a package, if any."""
    for n in names:
        if "/" not in n.strip("/") and (n in RDF_NAMES or n.endswith(".bioimageio.yaml")):
            return n
    return None


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package.

    A package is a folder or zip with ``rdf.yaml`` (or ``bioimageio.yaml``) at its root.
    """
    path = Path(path)
    if path.is_dir():
        return rdf_file_in([p.name for p in path.iterdir() if p.is_file()]) is not None
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                return rdf_file_in(zf.namelist()) is not None
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def check_usable(path: str | os.PathLike) -> None:
    """Raise :class:`BundleError` (one line) for a bioimage.io package particleseg cannot load.

    Such a package is one particleseg did not write (no ``bundle.json`` attachment). One written by
    :func:`export_bioimageio` holds ``bundle.json`` and ``model.keras`` at its root, so it is a
    bundle folder or zip as it is.
    """
    path = Path(path)
    if not is_package(path):
        return
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        rdf_text = (path / rdf_file_in(names)).read_text(encoding="utf-8", errors="replace")
    else:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            rdf_text = zf.read(rdf_file_in(names)).decode("utf-8", "replace")
    if BUNDLE_ATTACHMENT in names:
        return
    name = re.search(r"^name:\s*(.+?)\s*$", rdf_text, re.M)
    formats = re.findall(
        r"^  (keras_hdf5|keras_v3|onnx|pytorch_state_dict|tensorflow_js|"
        r"tensorflow_saved_model_bundle|torchscript):",
        rdf_text,
        re.M,
    )
    what = f"model {name.group(1).strip(chr(39) + chr(34))!r}" if name else "model"
    raise BundleError(
        f"{path}: a bioimage.io {what} not exported by particleseg (no {BUNDLE_ATTACHMENT} attachment"
        f"{'; weights ' + ', '.join(formats) if formats else ''}); particleseg cannot use it as a bundle, "
        "but DeepImageJ or bioimageio.core can run it and particleseg's split and measure commands can take "
        "its probability map"
    )
