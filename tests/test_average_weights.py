"""scripts/average_weights.py: the weights of two bundles of one network, averaged into a new bundle."""

import importlib.util

import numpy as np
import pytest

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("average_weights", REPO / "scripts" / "average_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _perturbed(bundle, path, shift):
    """Return a copy of ``bundle`` whose weights are all moved by ``shift``."""
    from particleseg.models import save_bundle

    model = bundle.model
    original = model.get_weights()
    model.set_weights([w + shift for w in original])
    try:
        return save_bundle(path, model, bundle.metadata, zip_copy=False)
    finally:
        model.set_weights(original)


def test_the_average_lies_between_the_two_and_runs_like_any_bundle(tiny_bundle, tmp_path, capsys):
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image

    script = _script()
    other = _perturbed(tiny_bundle, tmp_path / "other", 0.5)
    out = tmp_path / "soup"
    assert (
        script.main(
            [str(tiny_bundle.path), str(other.path), "--alpha", "0.25", "--out", str(out), "--set", "threshold=0.4"]
        )
        == 0
    )
    soup = load_bundle(out)
    for a, b, s in zip(tiny_bundle.model.get_weights(), other.model.get_weights(), soup.model.get_weights()):
        np.testing.assert_allclose(s, 0.75 * a + 0.25 * b, rtol=1e-6, atol=1e-7)
    assert soup.postprocess["threshold"] == 0.4
    assert "weights averaged: 0.75 x" in soup.metadata["training"]["data"]
    # its ONNX export was made again from the averaged network, and it segments
    assert soup.engine("auto") == "onnx"
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    onnx = soup.predictor("onnx")(image[None, ..., None])
    keras_out = soup.predictor("keras")(image[None, ..., None])
    np.testing.assert_allclose(onnx, keras_out, atol=1e-4)
    segment_image(image, soup, SegmentParams(crop_rows=0, progress=False))
    # an existing folder is not replaced
    assert script.main([str(tiny_bundle.path), str(other.path), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_different_networks_or_settings_get_one_line(tiny_bundle, threshold_bundle, tmp_path, capsys):
    script = _script()
    assert script.main([str(tiny_bundle.path), str(threshold_bundle.path), "--out", str(tmp_path / "x")]) == 2
    assert "different networks" in capsys.readouterr().err
    assert (
        script.main([str(tiny_bundle.path), str(tiny_bundle.path), "--out", str(tmp_path / "y"), "--set", "no_such=1"])
        == 2
    )
    assert "--set no_such=1" in capsys.readouterr().err
    args = [str(tiny_bundle.path), str(tiny_bundle.path), "--out", str(tmp_path / "y"), "--set", "threshold=high"]
    assert script.main(args) == 2
    assert "--set threshold=high: 'high' is not a number" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        script.main([str(tiny_bundle.path), str(tiny_bundle.path), "--out", str(tmp_path / "z"), "--alpha", "2"])
