"""bioimage.io model packages: export a tiny bundle and load it back as the same bundle.

In between, bioimageio.spec validates the package and bioimageio.core tests it.
"""

import json
import shutil
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.spec")
pytest.importorskip("bioimageio.core")
pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from conftest import draw_disks  # noqa: E402
from particleseg.cli import main  # noqa: E402
from particleseg.errors import BundleError  # noqa: E402
from particleseg.io import write_tiff  # noqa: E402
from particleseg.models import bioimageio as bio  # noqa: E402
from particleseg.models import bundle as bundle_module  # noqa: E402
from particleseg.models import load_bundle  # noqa: E402
from particleseg.pipeline import SegmentParams, segment_image  # noqa: E402


@pytest.fixture(scope="module")
def package(tiny_bundle, tmp_path_factory):
    """Export the tiny bundle as a bioimage.io package, with all three weights formats, through the CLI."""
    out = tmp_path_factory.mktemp("bioimageio") / "tiny.bioimageio.zip"
    rc = main(["models", "export", "--format", "bioimageio", str(tiny_bundle.path), "--out", str(out), "--no-test"])
    assert rc == 0
    return out


def test_package_passes_spec_validation_and_holds_what_it_should(package, tiny_bundle):
    summary = bio.validate_package(package)
    assert summary.status in ("passed", "valid-format"), summary.format()
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = zf.read("rdf.yaml").decode()
        attached = json.loads(zf.read("bundle.json"))
        x = np.load(zf.open("test_input.npy"))
        y = np.load(zf.open("test_output.npy"))
    assert {
        "rdf.yaml",
        "model.keras",
        "model.onnx",
        "tf_saved_model.zip",
        "test_input.npy",
        "test_output.npy",
        "cover.png",
        "README.md",
        "bundle.json",
    } <= names
    assert attached == tiny_bundle.metadata
    assert bio.CITATION["doi"] in rdf and "license: BSD-3-Clause" in rdf
    # the bundle's normalisation as preprocessing, its post-processing defaults in the config
    assert "scale_range" in rdf and "max_percentile: 99.8" in rdf and "id: clip" in rdf
    assert "min_confidence" in rdf and "seed_threshold" in rdf
    assert x.shape[0] == 1 and x.shape[-1] == 1 and x.shape[1] % tiny_bundle.network.multiple_of == 0
    assert y.shape == x.shape[:3] + (2,) and 0 <= y.min() and y.max() <= 1


def test_bioimageio_core_reproduces_the_test_output_with_every_weights_format(package):
    summary = bio.test_package(package)
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    for fmt in ("keras_v3", "onnx", "tensorflow_saved_model_bundle"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in names


def _without_exports(meta):
    return {k: v for k, v in meta.items() if k != "exports"}


def test_package_loads_back_as_the_same_bundle(package, tiny_bundle, tmp_path):
    assert bio.is_package(package)
    from_zip = load_bundle(package)
    # the same metadata, but for the exports: the package's own files
    assert _without_exports(from_zip.metadata) == _without_exports(tiny_bundle.metadata)
    assert from_zip.metadata["exports"]["onnx"]["file"] == "model.onnx"
    assert from_zip.label == str(package)
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(package) as zf:
        zf.extractall(folder)
    from_folder = load_bundle(folder)
    assert from_folder.metadata == from_zip.metadata
    # the same network file, so the same outputs (up to float rounding of two Keras calls)
    assert (from_zip.path / "model.keras").read_bytes() == (tiny_bundle.path / "model.keras").read_bytes()
    x = np.random.default_rng(0).random((1, 32, 32, 1)).astype(np.float32)
    np.testing.assert_allclose(from_zip.predictor("keras")(x), tiny_bundle.predictor("keras")(x), atol=1e-6)


def test_a_loaded_package_runs_with_onnx_runtime(package, tiny_bundle, monkeypatch):
    """The package's ONNX weights are its engine, as a bundle's ONNX export is: Keras never runs."""
    b = load_bundle(package)
    assert b.onnx_file == b.path / "model.onnx" and b.engine("auto") == "onnx"
    assert bio.package_weights(b.path)["onnx"] == "model.onnx"
    x = np.random.default_rng(1).random((1, 64, 64, 1)).astype(np.float32)
    np.testing.assert_allclose(b.predictor()(x), tiny_bundle.predictor("keras")(x), atol=1e-4)

    def no_keras(model):
        raise AssertionError("Keras was asked to run the network")

    monkeypatch.setattr(bundle_module, "keras_predictor", no_keras)
    image, _ = draw_disks((96, 96), [(30, 30, 10), (65, 60, 12)])
    params = SegmentParams(polarity="bright", rescale=1, progress=False)
    seg = segment_image(image, b, params)
    assert set(b.__dict__["_predictors"]) == {"onnx"}
    # the same labels as the exported bundle's own ONNX export gives
    ref = segment_image(image, tiny_bundle, SegmentParams(polarity="bright", rescale=1, progress=False, engine="onnx"))
    np.testing.assert_array_equal(seg.labels, ref.labels)


def test_package_without_onnx_weights_runs_with_keras(tiny_bundle, tmp_path):
    out = bio.export_bioimageio(tiny_bundle, tmp_path / "keras-only", weights=["keras"])
    b = load_bundle(out)
    assert "onnx" not in (b.metadata.get("exports") or {}) and b.onnx_file is None
    assert b.engine("auto") == "keras"
    assert _without_exports(b.metadata) == _without_exports(tiny_bundle.metadata)


def test_segment_runs_with_a_package_as_model(package, tmp_path, capsys):
    image, _ = draw_disks((96, 96), [(30, 30, 10), (65, 60, 12)])
    write_tiff(tmp_path / "disks.tif", image)
    rc = main(
        [
            "segment",
            str(tmp_path / "disks.tif"),
            "--model",
            str(package),
            "--out",
            str(tmp_path / "out"),
            "--polarity",
            "bright",
            "--rescale",
            "1",
        ]
    )
    assert rc == 0
    assert (tmp_path / "out" / "disks_labels.tif").is_file()


def test_foreign_package_is_refused_in_one_line(package, tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(foreign, "w") as dst:
        for name in src.namelist():
            if name != "bundle.json":
                dst.writestr(name, src.read(name))
    with pytest.raises(BundleError) as exc:
        load_bundle(foreign)
    msg = str(exc.value)
    assert "\n" not in msg and str(foreign) in msg and "not exported by particleseg" in msg and "onnx" in msg
    folder = tmp_path / "foreign"
    with zipfile.ZipFile(foreign) as zf:
        zf.extractall(folder)
    with pytest.raises(BundleError, match="not exported by particleseg"):
        load_bundle(folder)


def test_export_refuses_to_replace_and_names_unknown_formats(package, tiny_bundle, capsys):
    assert main(["models", "export", "--format", "bioimageio", str(tiny_bundle.path), "--out", str(package)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["models", "export", "--format", "tflite", str(tiny_bundle.path)]) == 1
    assert "unknown export format" in capsys.readouterr().err


def test_onnx_only_package_in_a_folder(tiny_bundle, tmp_path):
    out = bio.export_bioimageio(tiny_bundle, tmp_path / "pkg", weights=["onnx"], authors=["A. Tester"], license="MIT")
    assert (out / "rdf.yaml").is_file() and not (out / "tf_saved_model.zip").exists()
    rdf = (out / "rdf.yaml").read_text()
    assert "A. Tester" in rdf and "license: MIT" in rdf
    assert bio.validate_package(out).status in ("passed", "valid-format")
    loaded = load_bundle(out)
    assert _without_exports(loaded.metadata) == _without_exports(tiny_bundle.metadata)
    assert loaded.engine() == "onnx"
    shutil.rmtree(out)
