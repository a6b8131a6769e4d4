"""The napari plugin's checks in a real, headless napari (run by tests/napari/test_napari.py).

They run in a process of their own: Qt's offscreen platform, OpenGL from Mesa on a private Xvfb display (napari's canvas
needs a GL context), one napari.Viewer(show=False) for the module. The widget's labels must equal
``particleseg segment``'s for the same image and parameters.

TensorFlow is kept out of this process: its libraries and Mesa's OpenGL (llvmpipe, with its own
LLVM) crash a process that loads both (TensorFlow imported after the GL context: a segmentation
fault; before it: an abort at exit). The shipped model runs with ONNX Runtime, so nothing here needs
TensorFlow; an accidental import fails as an ImportError instead of a crash.
"""

from __future__ import annotations

import sys

sys.modules.setdefault("tensorflow", None)  # see above

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("napari")
pytest.importorskip("npe2")

from particleseg.cli import main  # noqa: E402
from particleseg.params import PARAMETERS, bundle_defaults  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "python" / "particleseg" / "data" / "sample_sem.tif"


@pytest.fixture(scope="module")
def viewer():
    """Yield a headless viewer; a private Xvfb gives the GL context when no DISPLAY is set.

    The environment is restored afterwards (Xvfb stays until this process ends, with Qt's connection).
    """
    saved = {k: os.environ.get(k) for k in ("QT_QPA_PLATFORM", "DISPLAY")}
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    if not os.environ.get("DISPLAY"):
        if not shutil.which("Xvfb"):
            pytest.skip("napari's canvas needs OpenGL: no DISPLAY and no Xvfb (apt-get install xvfb)")
        from particleseg.fiji.environment import VirtualDisplay

        os.environ["DISPLAY"] = VirtualDisplay().display
    import napari

    v = napari.Viewer(show=False)
    yield v
    v.close()
    for k, value in saved.items():
        if value is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = value


@pytest.fixture(scope="module")
def widget(viewer):
    """Return the Segment particles widget as napari opens it from the plugin's manifest.

    It works on the sample image, opened as the plugin's sample data.
    """
    viewer.open_sample("particleseg", "sample_sem")
    _, w = viewer.window.add_plugin_dock_widget("particleseg", "Segment particles")
    return w


def test_fields_are_the_parameters_with_the_bundles_defaults(widget):
    from particleseg.models import load_bundle
    from particleseg.napari._widget import FILE_ONLY

    assert list(widget.fields) == [p.name for p in PARAMETERS if p.name not in FILE_ONLY]
    bundle = load_bundle("default")
    defaults = bundle_defaults(bundle)
    for p in widget.parameters:
        value = widget.fields[p.name].value
        if p.name in ("tile", "overlap"):
            assert value == getattr(bundle, p.name)
        elif p.kind in ("number", "int"):
            assert value == pytest.approx(defaults[p.name], abs=1e-4), p.name
        elif p.kind in ("range", "string"):
            assert value == str(defaults[p.name]), p.name
        else:
            assert value == defaults[p.name], p.name
    # untouched fields are the bundle's own defaults (None), as options left out of the command line
    values = widget.values()
    assert all(values[p.name] is None for p in widget.parameters if p.bundle or p.name in ("tile", "overlap"))
    # the sample's calibration reached the layer and the unit labels
    layer = widget.layer.value
    assert layer.name == "sample_sem" and tuple(str(u) for u in layer.units) == ("nanometer", "nanometer")
    assert widget.fields["feret_min"].label.endswith("(nm)") and widget.fields["area"].label.endswith("(nm²)")


def test_labels_equal_particleseg_segment(widget, viewer, tmp_path):
    import tifffile

    from particleseg.measure import without_units

    options = {"seed_level": 0.6, "min_size": 30, "exclude_border": False, "feret_min": "60-Infinity"}
    widget.reset_defaults()
    widget.set_values(**options)
    labels = widget.segment()

    rc = main(
        [
            "segment",
            str(SAMPLE),
            "--out",
            str(tmp_path),
            "--quiet",
            "--seed-level",
            "0.6",
            "--min-size",
            "30",
            "--no-exclude-border",
            "--feret-min",
            "60-Infinity",
        ]
    )
    assert rc == 0
    want = tifffile.imread(tmp_path / "sample_sem_labels.tif")
    assert labels.data.shape == want.shape and labels.data.dtype == np.int32
    np.testing.assert_array_equal(labels.data, want)
    assert labels.name == "sample_sem particles" and labels in viewer.layers
    assert tuple(labels.scale) == tuple(widget.layer.value.scale)

    # the measurements: the kept rows of the command line's _particles.csv, as layer features and table
    import pandas as pd

    csv = without_units(pd.read_csv(tmp_path / "sample_sem_particles.csv"))
    kept = csv[csv["kept"]].reset_index(drop=True)
    n = int(want.max())
    assert n > 20 and len(kept) == n
    feats = labels.features
    assert feats["index"].tolist() == list(range(1, n + 1)) == kept["label"].tolist()
    np.testing.assert_allclose(feats["MinFeret"], kept["MinFeret"], rtol=1e-6)
    assert (kept["MinFeret"] >= 60).all()  # the filter worked in nm, the sample's unit
    assert widget.table.shape[0] == n and "MinFeret [nm]" in widget.table.column_headers
    assert widget.status.value.startswith(f"sample_sem: {n} particles")
    # the whole table (kept and rejected) saves as the command line's CSV
    saved = without_units(pd.read_csv(widget.save_table(tmp_path / "saved.csv")))
    assert len(saved) == len(csv)
    np.testing.assert_allclose(saved["Area"], csv["Area"], rtol=1e-6)


def test_the_button_segments_in_a_worker_and_replaces_the_result(widget, viewer):
    from qtpy.QtWidgets import QApplication

    sample = viewer.layers["sample_sem"]
    crop = viewer.add_image(np.asarray(sample.data)[:256, :320], name="crop", scale=sample.scale, units=sample.units)
    widget.layer.value = crop
    widget.reset_defaults()
    widget.run_button.native.click()
    deadline = time.monotonic() + 120
    while "crop particles" not in viewer.layers or not widget.run_button.enabled:
        assert time.monotonic() < deadline, widget.status.value
        QApplication.processEvents()
        time.sleep(0.02)
    first = viewer.layers["crop particles"]
    threaded = first.data.copy()
    assert threaded.max() > 0 and len(first.features) == threaded.max()
    widget.segment()  # the same in this thread, into the same layer
    assert [layer.name for layer in viewer.layers].count("crop particles") == 1
    np.testing.assert_array_equal(viewer.layers["crop particles"].data, threaded)


def test_other_bundle_shows_its_defaults(widget, tmp_path):
    from particleseg.models import load_bundle

    other = tmp_path / "other"  # the default model with other post-processing defaults
    shutil.copytree(load_bundle("default").path, other)
    meta = json.loads((other / "bundle.json").read_text())
    meta["postprocess"].update(min_area=10, seed_threshold=0.4137)
    (other / "bundle.json").write_text(json.dumps(meta))
    widget.set_model(other)
    assert widget.fields["min_size"].value == 10
    assert widget.fields["seed_level"].value == pytest.approx(0.4137)
    assert widget.values()["seed_level"] is None  # the bundle's own value, unrounded
    assert widget.status.value.startswith("model ")
    widget.set_model("default")
    assert widget.fields["min_size"].value == bundle_defaults(widget.bundle())["min_size"]


def test_reader_opens_an_mrc_file_with_its_calibration(viewer, tmp_path):
    mrcfile = pytest.importorskip("mrcfile")
    from particleseg.napari import calibration_of

    path = tmp_path / "particles.mrc"
    data = (np.random.default_rng(0).random((48, 64)) * 100).astype(np.float32)
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 12.5  # Å
    layers = viewer.open(path, plugin="particleseg")
    assert len(layers) == 1
    np.testing.assert_array_equal(layers[0].data, data)
    cal = calibration_of(layers[0])  # read_image gives MRC's Å in nm
    assert cal.unit == "nm" and cal.pixel_size == pytest.approx(1.25)
    viewer.layers.remove(layers[0])
