"""ONNX Runtime as the inference engine, and exact tiling (issue 16, items 1 and 2).

* bundles carry an ONNX export checked against Keras; segmenting with one does not import
  TensorFlow; Keras is the fallback,
* tiles with a halo of the network's receptive field give the whole-image output (1e-4) at any
  tile size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import REPO
from particleseg import SegmentParams, read_image, segment_image
from particleseg.errors import BundleError, ParticlesegWarning
from particleseg.inference import MAX_TILE_PIXELS, augmented, bounded_tile, exact_tiles, predict_tiled, tiling_plan
from particleseg.models import (
    Head,
    NetworkConfig,
    build_network,
    keras_predictor,
    load_bundle,
    make_metadata,
    save_bundle,
    write_metadata,
)
from particleseg.models import bundle as bundle_mod
from particleseg.models import export as export_mod
from particleseg.models.export import check_export, export_model, onnx_predictor
from particleseg.models.receptive import exact_halo, receptive_field
from particleseg.params import BY_NAME, add_arguments, segment_params

SHIPPED = REPO / "python" / "particleseg" / "bundles"
SAMPLE = REPO / "python" / "particleseg" / "data" / "sample_sem.tif"


# ------------------------------------------------------------------------------------------
# receptive field and tile layout


def test_receptive_field_follows_the_architecture():
    # default UNet, depth 4: 2 convolutions per level and the bottom, at strides 1..16
    assert receptive_field(NetworkConfig("unet", depth=4)) == 107
    assert exact_halo(NetworkConfig("unet", depth=4)) == 112
    assert receptive_field(NetworkConfig("unet", depth=2)) == 23
    assert receptive_field(NetworkConfig("multires-unet", depth=4)) > receptive_field(NetworkConfig("unet", depth=4))
    assert receptive_field(NetworkConfig("unet", depth=4, normalization="group")) is None
    for name in ("default", "sims-fcn"):
        b = load_bundle(SHIPPED / name)
        tiling = b.metadata["tiling"]
        assert tiling["receptive_field"] == receptive_field(b.network) and tiling["exact"] is True
        assert b.overlap == tiling["overlap"] >= tiling["receptive_field"] and b.overlap % b.network.multiple_of == 0


@pytest.mark.parametrize(
    "length,max_tile,halo,m",
    [
        (1024, 512, 64, 16),
        (768, 2048, 112, 16),
        (4096, 1536, 112, 16),
        (208, 52, 24, 4),
        (96, 40, 8, 8),
        (8192, 2048, 112, 16),
    ],
)
def test_exact_tile_layout(length, max_tile, halo, m):
    tile, tiles = exact_tiles(length, max_tile, halo, m)
    assert tile % m == 0 and tile <= max(max_tile, 2 * halo + m) and tile <= length
    assert tiles[0][1] == 0 and tiles[-1][2] == length
    for (s, a, b), nxt in zip(tiles, tiles[1:] + [None]):
        assert s % m == 0 and a % m == 0 and 0 <= s <= a < b <= s + tile <= length
        assert a - s >= halo or s == 0  # context before the kept part, or the image's side
        assert s + tile - b >= halo or s + tile == length
        if nxt is not None:
            assert nxt[1] == b  # kept parts tile the axis
    n = len(tiles)
    if n > 1:  # each tile as small as their number allows: n tiles m pixels smaller would not cover the axis
        assert n * (tile - m) - 2 * (n - 1) * halo < length


def test_tiling_plan_overhead():
    # an image that fits in one tile is predicted whole
    assert tiling_plan((768, 1024), 2048, 112)["overhead"] == 1.0
    plan = tiling_plan((4096, 4096), 3072, 112)
    assert plan["tiles"] == (2, 2) and plan["overhead"] <= 1.12


@pytest.mark.parametrize(
    "shape,tile,halo,m,max_pixels",
    [
        ((2048, 2048), 2048, 112, 16, MAX_TILE_PIXELS),
        ((1536, 2048), 2048, 112, 16, MAX_TILE_PIXELS),
        ((2000, 1100), 2048, 112, 16, MAX_TILE_PIXELS),
        ((157, 203), 256, 24, 8, 96 * 120),
        ((300, 90), 512, 16, 16, 80 * 96),
    ],
)
def test_bounded_tile_is_the_cheapest_layout_within_the_pixel_budget(shape, tile, halo, m, max_pixels):
    """Against every layout of at most 12 tiles a side: none within the budget needs fewer pixels."""
    chosen = bounded_tile(shape, tile, halo, m, max_pixels)
    plan = tiling_plan(shape, chosen, halo, m)
    th, tw = plan["tile"]
    assert th * tw <= max_pixels and th <= tile and tw <= tile
    hp, wp = plan["padded"]
    best = min(
        tiling_plan(shape, (a, b), halo, m)["overhead"]
        for a in {exact_tiles(hp, s, halo, m)[0] for s in range(m, tile + 1, m)}
        for b in {exact_tiles(wp, s, halo, m)[0] for s in range(m, tile + 1, m)}
        if a * b <= max_pixels
    )
    assert plan["overhead"] == pytest.approx(best)


def test_bounded_tile_leaves_a_fitting_or_absent_tile_alone():
    assert bounded_tile((768, 1024), 2048, 112) == 2048  # one tile of 0.8 Mpx
    assert bounded_tile((2048, 2048), 1024, 112) == 1024  # 1 Mpx tiles
    assert bounded_tile((2048, 2048), None, 112) is None  # the whole image, as asked
    assert bounded_tile((2048, 2048), 2048, 112, max_pixels=None) == 2048


def test_segment_bounds_the_tile_of_a_2048_image():
    """The pipeline gives the network two 1136x2048 tiles, not one 2048x2048 (4.2 Mpx) tile.

    A recording stand-in for the network shows the tiles. That the output does not depend on
    the layout is test_tiled_equals_untiled's (rectangular tiles included).
    """
    from particleseg import pipeline

    seen = []

    def record(batch):
        seen.append(batch.shape)
        return np.zeros(batch.shape[:3] + (2,), np.float32)

    bundle = load_bundle("default")
    image = np.random.default_rng(0).integers(0, 255, (2048, 2048), dtype=np.uint8)
    pipeline.predict_probabilities(image, bundle, SegmentParams(progress=False), predictor=record)
    assert seen == [(1, 1136, 2048, 1), (1, 1136, 2048, 1)]
    assert max(h * w for _, h, w, _ in seen) <= MAX_TILE_PIXELS


# ------------------------------------------------------------------------------------------
# exact tiling with small networks


def _random_network(arch: str, depth: int, seed: int = 1):
    """Build a small network with random weights and batch-normalisation statistics (inference mode)."""
    import keras  # keras: only for the tests that build networks (lazy, docs/architecture.md)

    cfg = NetworkConfig(arch, 1, (Head("foreground"), Head("distance")), depth=depth, base_filters=4)
    keras.utils.set_random_seed(seed)
    model = build_network(cfg)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2, n).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 2, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, n).astype("float32"))
    return cfg, model


@pytest.mark.parametrize("arch,depth", [("unet", 2), ("fcn", 3), ("multires-unet", 2), ("unet", 3)])
def test_tiled_equals_untiled(arch, depth, rng):
    cfg, model = _random_network(arch, depth)
    predict = keras_predictor(model)
    halo, m = exact_halo(cfg), cfg.multiple_of
    img = rng.random((157, 203)).astype(np.float32)  # not multiples of 2**depth: padded as the whole image is
    whole = predict_tiled(predict, img, tile=None, multiple_of=m, progress=False)
    for tile in (3 * halo, 128, (4 * halo + m, 2 * halo + 2 * m)):
        tiled = predict_tiled(predict, img, tile=tile, overlap=halo, batch_size=3, multiple_of=m, progress=False)
        assert tiled.shape == whole.shape
        assert np.abs(tiled - whole).max() <= 1e-4, (arch, depth, tile)


def test_tiled_equals_untiled_with_onnx(tmp_path, rng):
    """The same through ONNX Runtime (with the FCN's bilinear upsampling)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")

    cfg, model = _random_network("fcn", 3)
    export_model(model, tmp_path / "m.onnx", "onnx")
    predict = onnx_predictor(tmp_path / "m.onnx")
    assert check_export(model, predict, rng.random((1, 96, 160, 1)).astype(np.float32)) <= 1e-4
    img = rng.random((150, 230)).astype(np.float32)
    whole = predict_tiled(predict, img, tile=None, multiple_of=8, progress=False)
    for tile in (72, 128):
        assert (
            np.abs(
                predict_tiled(predict, img, tile=tile, overlap=exact_halo(cfg), multiple_of=8, progress=False) - whole
            ).max()
            <= 1e-4
        )


# ------------------------------------------------------------------------------------------
# the ONNX exports of bundles


@pytest.mark.parametrize("name", ["default", "sims-fcn"])
def test_shipped_bundles_carry_a_checked_onnx_export(name, rng):
    pytest.importorskip("onnxruntime")

    b = load_bundle(SHIPPED / name)
    entry = b.metadata["exports"]["onnx"]
    path = b.path / entry["file"]
    assert path == b.onnx_file and path.stat().st_size < 10e6  # small enough to ship
    assert entry["max_abs_diff"] <= 1e-4
    m = b.network.multiple_of
    x = rng.random((1, 6 * m, 10 * m, 1)).astype(np.float32)  # another size than the export's check
    assert np.abs(onnx_predictor(path)(x) - keras_predictor(b.model)(x)).max() <= 1e-4
    assert b.engine("auto") == "onnx" and b.engine("keras") == "keras"


def test_segmenting_with_onnx_does_not_import_tensorflow(tmp_path):
    pytest.importorskip("onnxruntime")
    code = (
        "import sys\n"
        "from particleseg.cli import main\n"
        f"rc = main(['segment', {str(SAMPLE)!r}, '--out', {str(tmp_path / 'out')!r}, '--quiet'])\n"
        "print('RESULT', rc, 'tensorflow' in sys.modules, 'keras' in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIPPED.parents[1])] + sys.path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, run.stdout + run.stderr
    assert line[0].split()[1:] == ["0", "False", "False", "True"], run.stderr
    assert "Keras" not in run.stderr


def test_onnx_and_keras_engines_segment_alike():
    image, cal = read_image(SAMPLE)
    image = image[:400, :512]
    b = load_bundle(SHIPPED / "default")
    res = {e: segment_image(image, b, SegmentParams(engine=e, progress=False), cal) for e in ("onnx", "keras")}
    assert np.abs(res["onnx"].probabilities - res["keras"].probabilities).max() <= 1e-4
    assert len(res["onnx"].table) == len(res["keras"].table)


def test_fallback_to_keras_with_one_note(tmp_path):
    copy = tmp_path / "no-export"
    shutil.copytree(SHIPPED / "sims-fcn", copy)
    shutil.rmtree(copy / "export")
    meta = json.loads((copy / "bundle.json").read_text())
    meta["exports"] = {}
    (copy / "bundle.json").write_text(json.dumps(meta))
    b = load_bundle(copy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert b.engine("auto") == "keras"
        assert b.engine("auto") == "keras"  # noted once
    notes = [w for w in caught if issubclass(w.category, ParticlesegWarning)]
    assert len(notes) == 1 and "no ONNX export" in str(notes[0].message)
    with pytest.raises(BundleError, match="no ONNX export"):
        b.engine("onnx")
    with pytest.raises(BundleError, match="engine"):
        b.engine("tensorrt")
    # with an export but without onnxruntime
    shipped = load_bundle(SHIPPED / "sims-fcn")
    real = export_mod.has_module
    try:
        export_mod.has_module = lambda name: False if name == "onnxruntime" else real(name)
        with pytest.raises(BundleError, match="onnxruntime is not installed"):
            shipped.engine("onnx")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert shipped.engine("auto") == "keras"
        assert any("onnxruntime is not installed" in str(w.message) for w in caught)
    finally:
        export_mod.has_module = real
        bundle_mod._NOTED.discard(shipped.label)


def test_save_bundle_exports_onnx_and_tiling(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")

    cfg, model = _random_network("fcn", 2)
    meta = make_metadata("t", cfg, tile=32, overlap=4)
    assert meta["tiling"] == {"tile": 36, "overlap": 16, "receptive_field": 16, "exact": True}  # raised to the field
    b = save_bundle(tmp_path / "t", model, meta, zip_copy=False)
    entry = b.metadata["exports"]["onnx"]
    assert b.onnx_file == tmp_path / "t" / "export" / "model.onnx" and entry["max_abs_diff"] <= 1e-4
    assert b.engine() == "onnx"
    # a script that rewrites the metadata it built keeps the export
    write_metadata(b.path, {**meta, "description": "rewritten"})
    again = load_bundle(b.path)
    assert again.metadata["description"] == "rewritten" and again.metadata["exports"]["onnx"] == entry
    assert not (tmp_path / "u").exists()
    plain = save_bundle(tmp_path / "u", model, meta, zip_copy=False, onnx=False)
    assert plain.onnx_file is None


def test_engine_is_a_parameter():
    assert BY_NAME["engine"].choices == ("auto", "onnx", "keras")
    assert segment_params({"engine": "keras"}).engine == "keras"
    assert segment_params({}).engine == "auto"
    scripts = REPO / "fiji-scripts"
    assert any("engine" in p.read_text() for p in scripts.rglob("*.py"))


def test_a_particle_classifier_is_exported_too(tmp_path, rng):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    import keras  # keras: only for the tests that build networks (lazy, docs/architecture.md)

    cfg, model = _random_network("unet", 2)
    ccfg = NetworkConfig("unet", 2, (Head("foreground"),), depth=2, base_filters=4)
    keras.utils.set_random_seed(3)
    classifier = build_network(ccfg)
    meta = make_metadata("c", cfg, tile=64, overlap=8)
    meta["classifier"] = {"network": ccfg.to_dict(), "threshold": 0.5}
    b = save_bundle(tmp_path / "c", model, meta, classifier=classifier, zip_copy=False)
    entry = b.metadata["exports"]["classifier_onnx"]
    assert entry["file"] == "export/classifier.onnx" and entry["max_abs_diff"] <= 1e-4
    x = rng.random((1, 48, 64, 2)).astype(np.float32)
    onnx_out, keras_out = b.classifier_predictor("auto")(x), b.classifier_predictor("keras")(x)
    assert np.abs(onnx_out - keras_out).max() <= 1e-4


# ------------------------------------------------------------------------------------------
# test-time augmentation (SegmentParams.augment, particleseg.inference.augmented)


@pytest.mark.parametrize("arch,depth", [("unet", 3), ("fcn", 3)])
def test_augmented_tiles_give_the_augmented_whole_image(arch, depth, rng):
    """Averaged over the 8 orientations, the tiled output is still the whole-image output."""
    cfg, model = _random_network(arch, depth)
    predict = augmented(keras_predictor(model))
    halo, m = exact_halo(cfg), cfg.multiple_of
    img = rng.random((157, 203)).astype(np.float32)  # padded at the bottom and right, as the whole image is
    whole = predict_tiled(predict, img, tile=None, multiple_of=m, progress=False)
    plain = predict_tiled(keras_predictor(model), img, tile=None, multiple_of=m, progress=False)
    assert np.abs(whole - plain).max() > 1e-3  # a random network is not symmetric: the average changes it
    for tile in (3 * halo, (4 * halo + m, 2 * halo + 2 * m)):
        tiled = predict_tiled(predict, img, tile=tile, overlap=halo, batch_size=3, multiple_of=m, progress=False)
        assert np.abs(tiled - whole).max() <= 1e-4, (arch, tile)


def test_augmented_is_the_mean_over_the_eight_orientations_and_leaves_a_symmetric_network_alone(rng):
    x = rng.random((2, 32, 48, 1)).astype(np.float32)
    ramp = lambda b: b * np.arange(b.shape[2], dtype=np.float32)[None, None, :, None]  # noqa: E731
    want = np.zeros_like(x)
    for k in range(4):
        for t in (False, True):
            xt = np.rot90(x.transpose(0, 2, 1, 3) if t else x, k, axes=(1, 2))
            y = np.rot90(ramp(xt), -k, axes=(1, 2))
            want += y.transpose(0, 2, 1, 3) if t else y
    np.testing.assert_allclose(augmented(ramp)(x), want / 8, rtol=1e-6)
    pointwise = lambda b: 1 / (1 + np.exp(-b))  # noqa: E731
    np.testing.assert_allclose(augmented(pointwise)(x), pointwise(x), rtol=1e-6)
    with pytest.raises(ValueError, match="transforms must be 1 to 8"):
        augmented(ramp, 9)


def test_segment_with_augment_averages_the_networks_views_of_the_image():
    """``augment=True`` averages the network over the 8 orientations of the image.

    The same name on the command line (``--augment``) and in macros; a bundle may make it its default.
    """
    image, _ = read_image(REPO / "python/particleseg/data/sample_sem.tif")
    image = image[:256, :320]  # multiples of 16: no padding, so each view is exactly the turned image
    bundle = load_bundle("default")
    params = SegmentParams(crop_rows=0, rescale=1, polarity="bright", progress=False)
    views = []
    for k in range(4):
        for t in (False, True):
            view = np.rot90(image.T if t else image, k)
            p = segment_image(view, bundle, params).probabilities
            p = np.rot90(p, -k, axes=(0, 1))
            views.append(p.transpose(1, 0, 2) if t else p)
    tta = segment_image(image, bundle, SegmentParams(crop_rows=0, rescale=1, polarity="bright", augment=True))
    np.testing.assert_allclose(tta.probabilities, np.mean(views, axis=0), atol=1e-5)
    assert np.abs(tta.probabilities - views[0]).max() > 0.05
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--augment"]).augment is True
    assert segment_params(vars(parser.parse_args([]))).augment is None  # the bundle decides
    assert SegmentParams().resolved(bundle).augment is False


def test_a_bundle_whose_augment_setting_is_no_flag_is_refused(tmp_path):
    shutil.copytree(load_bundle("default").path, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["postprocess"]["augment"] = "yes"
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match='postprocess.augment is "yes"; it must be true or false'):
        load_bundle(tmp_path / "b")
