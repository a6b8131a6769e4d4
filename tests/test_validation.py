"""Validation of inputs and outputs (issue 15).

Evaluate with large label ids, the thinned Rand/VI scores of empty and full proposals as Fiji's
TWS computes them, bundles checked at load, non-finite pixels refused by every reader,
umask-respecting outputs, errors on stderr, and property-based tests (hypothesis) of the readers
and metrics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from particleseg import metrics as M
from particleseg.errors import InputError

# ------------------------------------------------------------------------------------------
# item 7: label ids of any size


def _two_particles(ids):
    lab = np.zeros((32, 32), np.int64)
    lab[2:12, 2:12] = ids[0]
    lab[16:30, 14:30] = ids[1]
    return lab


@pytest.mark.parametrize("big", [3 * 10**8, 4 * 10**9, 2**40])
def test_evaluate_label_ids_of_any_size_score_as_small_ids(big):
    """A bincount over raw ids of 4e9 needs 30 GiB; relabelling makes memory independent of them."""
    truth_small, pred_small = _two_particles((1, 2)), _two_particles((2, 1))
    pred_small[12, 2:12] = 2  # a slightly larger first particle
    truth_big = _two_particles((big, big + 7))
    pred_big = np.where(pred_small == 2, big - 5, np.where(pred_small == 1, big * 2, 0))
    small = M.evaluate_pair(pred_small, truth_small)
    large = M.evaluate_pair(pred_big, truth_big)
    for key in ("iou_image", "iou_instance", "ap", "f1_50", "rand_error", "rand_error_thinned", "vi_error_thinned"):
        assert large[key] == pytest.approx(small[key]), key
    assert large["n_truth"] == large["n_pred"] == 2
    assert large["iou_instance"] == pytest.approx((100 / 110 + 1) / 2)


def test_relabel_sequential_keeps_order_and_background():
    a = np.array([[0, 2**40, 5], [4 * 10**9, 5, 0]], np.uint64)
    np.testing.assert_array_equal(M.relabel_sequential(a), [[0, 3, 1], [2, 1, 0]])
    # without background the smallest id becomes 1
    np.testing.assert_array_equal(M.relabel_sequential(np.array([[7, 2**33]])), [[1, 2]])
    np.testing.assert_array_equal(M.relabel_sequential(np.array([[0, 9, 3]])), [[0, 2, 1]])
    assert M.relabel_sequential(np.array([[0, 9, 3]])).dtype == np.int32


def test_evaluate_files_with_huge_label_ids(tmp_path):
    import tifffile

    truth = _two_particles((1, 2)).astype(np.uint8) * 255
    truth[truth > 0] = 255
    pred = _two_particles((3 * 10**8, 4 * 10**9)).astype(np.uint32)
    (tmp_path / "p").mkdir()
    (tmp_path / "t").mkdir()
    tifffile.imwrite(tmp_path / "p" / "a_labels.tif", pred)
    tifffile.imwrite(tmp_path / "t" / "a_m.tif", truth)
    table, failures = M.evaluate_files([tmp_path / "p"], [tmp_path / "t"], tmp_path / "out", progress=False)
    assert failures == []
    assert table.loc[0, "iou_instance"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------
# item 8: thinned Rand and VI of empty and full proposals, as TWS
#
# TWS (trainableSegmentation.metrics, getMaximalVRandAfterThinning / getMaximalVInfoAfterThinning)
# inverts the binarised proposal (background 255, particles 0) and floods it with its classic
# WatershedTransform2D (4-connectivity). An empty proposal is a constant image of 255, a full
# one a constant image of 0; both are one plateau, which the flooding labels as one basin: the
# thinned proposal is ONE segment covering the image (no lines, no proposal background).
#
# Ground truth below: three particles of a = 4, 6, 10 pixels, n = 20.
# * Rand (N^2 normalisation): S_A = 4^2 + 6^2 + 10^2 = 152, S_B = n^2 = 400, S_AB = sum_ij n_ij^2
#   = 152 (every particle lies in the one segment). precision = 152/400 = 0.38, recall = 1,
#   V_Rand = 2 * 0.38 / 1.38 = 38/69, Rand error thinned = 1 - 38/69 = 31/69 = 0.449275...
# * VI: H(B) = 0 (one segment), so TWS sets precision 1, recall 0: V_Info = 0, error 1.
# Before the fix an empty proposal stayed all background, each ground-truth pixel a segment of
# its own: V_Rand = 2R/(1+R) with R = 20/152, error 0.767, and V_Info = 2 H(A)/(H(A) + ln 20),
# an error of about 0.4 - the 0.40-0.48 of the issue.


def _three_particles():
    truth = np.zeros((12, 12), np.uint8)
    truth[1:3, 1:3] = 255  # 4
    truth[5:7, 1:4] = 255  # 6
    truth[9:11, 2:7] = 255  # 10
    return truth


RAND_THINNED_ONE_SEGMENT = 31 / 69


def test_tws_reference_empty_proposal_by_hand():
    truth = _three_particles()
    empty = np.zeros(truth.shape, bool)
    r = M.evaluate_pair(empty, truth)
    assert r["rand_error_thinned"] == pytest.approx(RAND_THINNED_ONE_SEGMENT, abs=1e-12)
    assert r["vi_error_thinned"] == 1.0
    # the un-thinned Rand error keeps TWS's one-pixel segments for proposal background:
    # precision 1, recall 20/152, F = 40/172
    assert r["rand_error"] == pytest.approx(1 - 40 / 172, abs=1e-12)


def test_tws_reference_probability_map_at_threshold_one():
    truth = _three_particles()
    prob = np.where(truth > 0, 0.8, 0.1).astype(np.float32)  # nothing exceeds 1.0
    assert M.rand_error_thinned(prob, truth, thresholds=[1.0]) == pytest.approx(RAND_THINNED_ONE_SEGMENT)
    assert M.vi_error_thinned(prob, truth, thresholds=[1.0]) == 1.0
    # the sweep takes the perfect threshold, not the empty one
    r, sweep = M.evaluate_pair(prob, truth, return_sweep=True)
    assert r["vi_error_thinned"] == pytest.approx(0.0, abs=1e-12)
    last = sweep[sweep["threshold"] == 1.0].iloc[0]
    assert last["vi_error_thinned"] == 1.0
    assert last["rand_error_thinned"] == pytest.approx(RAND_THINNED_ONE_SEGMENT)


def test_tws_reference_full_proposal_by_hand():
    truth = _three_particles()
    full = np.ones(truth.shape, bool)
    r = M.evaluate_pair(full, truth)
    assert r["rand_error_thinned"] == pytest.approx(RAND_THINNED_ONE_SEGMENT, abs=1e-12)
    assert r["vi_error_thinned"] == 1.0
    # un-thinned: the same single segment, so the same Rand numbers
    assert r["rand_error"] == pytest.approx(RAND_THINNED_ONE_SEGMENT, abs=1e-12)


def test_tws_reference_single_particle_ground_truth():
    """One ground-truth particle: V_Rand = 1 (error 0), V_Info 0 as in TWS.

    The one-segment proposal puts all its pairs together, so V_Rand = 1 (error 0), while V_Info
    is 0 in TWS (H(A) = H(B) = 0: precision 0/recall 1, then H(B) = 0 overrides with precision
    1/recall 0).
    """
    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 3:8] = 1
    for pred in (np.zeros(truth.shape, bool), np.ones(truth.shape, bool)):
        r = M.evaluate_pair(pred, truth)
        assert r["rand_error_thinned"] == pytest.approx(0.0, abs=1e-12)
        assert r["vi_error_thinned"] == 1.0
    # a proposal that found the particle keeps the documented exception (difference 3): 1
    assert M.evaluate_pair(truth > 0, truth)["vi_error_thinned"] == pytest.approx(0.0)


@pytest.mark.tio2
def test_tio2_poor_proposal_no_longer_wins_at_threshold_one(tio2_dir):
    """The issue's case on a real image.

    A poor proposal (the inverted stand-in map of benchmarks/bench_metrics.py on TiO2 image
    1908256) scored its best VI error thinned, 0.3959, at threshold 1.0, where it is empty (TWS:
    1.0). Now threshold 1.0 scores 1.0 and Rand error thinned there is 1 - 2P/(1+P) with
    P = sum a_i^2 / n^2 of the ground-truth particles.
    """
    from scipy import ndimage as ndi

    from particleseg.datasets import tio2_items
    from particleseg.io import read_image
    from particleseg.postprocess import label_mask, threshold_value

    item = next(it for it in tio2_items(tio2_dir) if it.stem == "1908256")
    image = read_image(item.image)[0][:712]
    truth = M.read_array(item.mask)[:712]
    smooth = ndi.gaussian_filter(image.astype(np.float32), 1.5)
    prob = (1 / (1 + np.exp(-(smooth - threshold_value(image, "li")) / 8))).astype(np.float32)
    r, sweep = M.evaluate_pair(1 - prob, truth, return_sweep=True)
    last = sweep[sweep["threshold"] == 1.0].iloc[0]
    assert last["vi_error_thinned"] == 1.0
    areas = np.bincount(label_mask(truth > 0).ravel())[1:].astype(float)
    p = (areas**2).sum() / areas.sum() ** 2
    assert last["rand_error_thinned"] == pytest.approx(1 - 2 * p / (1 + p), rel=1e-12)
    assert r["vi_error_thinned_thr"] != 1.0 and r["vi_error_thinned"] > 0.7  # was 0.3959 at 1.0


def test_thin_borders_of_an_empty_proposal_is_one_segment():
    np.testing.assert_array_equal(M.thin_borders(np.zeros((3, 4), np.int32)), np.ones((3, 4)))
    full = np.full((3, 4), 5, np.int32)
    np.testing.assert_array_equal(M.thin_borders(full), full)


def test_stack_with_one_empty_slice_averages_tws_zero():
    truth = np.stack([_three_particles()] * 2)
    pred = np.stack([truth[0] > 0, np.zeros(truth.shape[1:], bool)])
    r = M.evaluate_pair(pred, truth)
    # slice 1 perfect (V_Info 1), slice 2 empty (V_Info 0): mean 0.5
    assert r["vi_error_thinned"] == pytest.approx(0.5)
    # Rand pair counts are summed: S_AB = 152 + 152, S_A = 304, S_B = 152 + 400
    p = 304 / 552
    assert r["rand_error_thinned"] == pytest.approx(1 - 2 * p / (1 + p))
    assert not math.isnan(r["rand_error"])


# ------------------------------------------------------------------------------------------
# item 4: bundles validated at load


def _copy_bundle(src, dst, **changes):
    import json
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "bundle.json").read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            meta[section][name] = value
        else:
            meta[section] = value
    (dst / "bundle.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize(
    "change, words",
    [
        ({"postprocess__threshold": 7}, "postprocess.threshold is 7; it must be a number from 0 to 1"),
        ({"postprocess__min_area": -3}, "postprocess.min_area is -3; it must be a whole number of at least 0"),
        ({"postprocess__min_area": 2.5}, "postprocess.min_area is 2.5"),
        ({"postprocess__seed_threshold": 1.5}, "postprocess.seed_threshold is 1.5"),
        ({"postprocess__merge_level": 1.2}, "postprocess.merge_level is 1.2; it must be a number from 0 to 1"),
        ({"postprocess__h": -1}, "postprocess.h is -1"),
        ({"postprocess__min_confidence": "high"}, 'postprocess.min_confidence is "high"'),
        ({"postprocess__split": "yes"}, 'postprocess.split is "yes"; it must be true or false'),
        ({"classifier": {"threshold": 2}}, "classifier.threshold is 2"),
        ({"scale__particle_size_px": -4}, "scale.particle_size_px is -4"),
        ({"input__polarity": "grey"}, 'input.polarity is "grey"'),
        ({"kind": "xray"}, 'kind is "xray"'),
    ],
)
def test_bundle_values_out_of_range_are_refused_naming_the_given_path(
    tiny_bundle, tmp_path, monkeypatch, change, words
):
    from particleseg.errors import BundleError
    from particleseg.models import load_bundle

    _copy_bundle(tiny_bundle.path, tmp_path / "bad", **change)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError) as exc:
        load_bundle("bad")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{'bad'}/bundle.json: ") or msg.startswith("bad/bundle.json: "), msg
    assert words in msg


def test_bundle_threshold_7_on_the_command_line_is_one_line_exit_1(tiny_bundle, tmp_path, capsys):
    import tifffile

    from particleseg.cli import main

    bad = _copy_bundle(tiny_bundle.path, tmp_path / "bad", postprocess__threshold=7)
    img = tmp_path / "a.tif"
    tifffile.imwrite(img, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    assert main(["segment", str(img), "--model", str(bad), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"particleseg: error: {bad}/bundle.json: postprocess.threshold is 7; it must be a number from 0 to 1"
    ]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_shipped_bundles_pass_validation_and_know_their_kind():
    from particleseg.models import load_bundle

    assert load_bundle("default").kind == "sem"
    assert load_bundle("sims-fcn").kind == "sims"


def test_sims_bundle_on_an_sem_image_is_refused_before_any_image(tmp_path):
    import tifffile

    from particleseg.errors import BundleError
    from particleseg.models import load_bundle
    from particleseg.pipeline import segment_files, segment_image

    bundle = load_bundle("sims-fcn")
    img = tmp_path / "sem.tif"
    tifffile.imwrite(img, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    with pytest.raises(BundleError) as exc:
        segment_files([img], tmp_path / "out", bundle, progress=False)
    msg = str(exc.value)
    assert "sims-fcn" in msg and "SIMS model" in msg and "SEM model" in msg and str(img) in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(BundleError, match="is a SIMS model.*on sem.tif"):
        segment_image(tifffile.imread(img), bundle, name="sem.tif")


def test_sem_bundle_on_sims_and_fibsem_bundle_on_sem_are_refused(tiny_bundle):
    from particleseg.errors import BundleError
    from particleseg.models.bundle import Bundle

    tiny_bundle.check_use("sem")
    tiny_bundle.check_use("sims")  # a network trained with `particleseg train` may detect SIMS particles
    fib = Bundle(tiny_bundle.path, {**tiny_bundle.metadata, "fibsem": {"phases": ["a", "b"]}})
    with pytest.raises(BundleError, match="FIB-SEM phase model; particleseg segment needs an SEM model"):
        fib.check_use("sem", "x.tif")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_keras_zip"])
def test_corrupt_model_file_is_reported_at_load(tiny_bundle, tmp_path, monkeypatch, damage):
    import zipfile

    from particleseg.errors import BundleError
    from particleseg.models import load_bundle

    bad = _copy_bundle(tiny_bundle.path, tmp_path / "b")
    model = bad / "model.keras"
    data = model.read_bytes()
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        model.write_bytes(np.random.default_rng(1).bytes(len(data)))
    elif damage == "empty":
        model.write_bytes(b"")
    else:
        with zipfile.ZipFile(model, "w") as zf:
            zf.writestr("readme.txt", "hello")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleError) as exc:
        load_bundle("b")  # at load, before any image
    msg = str(exc.value)
    assert msg.startswith("b/model.keras: corrupt or not a Keras model ("), msg
    assert "File not found" not in msg and "\n" not in msg


def test_corrupt_member_of_a_keras_archive_fails_the_crc_check(tiny_bundle, tmp_path):
    from particleseg.errors import BundleError
    from particleseg.models.bundle import check_keras_file

    src = tiny_bundle.path / "model.keras"
    data = bytearray(src.read_bytes())
    # flip bytes in the middle of the stored weights (past the local headers)
    mid = len(data) // 2
    data[mid : mid + 16] = bytes(b ^ 0xFF for b in data[mid : mid + 16])
    (tmp_path / "m.keras").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt or not a Keras model"):
        check_keras_file(tmp_path / "m.keras")


def test_zip_without_bundle_json_is_reported_under_the_zip_name(tmp_path, monkeypatch):
    import zipfile

    from particleseg.errors import BundleError
    from particleseg.models import load_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(tmp_path / "nobundle.zip", "w") as zf:
        zf.writestr("model.keras", b"x")
    for _ in range(2):  # the second time must not find a half-made cache folder
        with pytest.raises(BundleError) as exc:
            load_bundle("nobundle.zip")
        assert str(exc.value) == "nobundle.zip: not a model bundle (no bundle.json in the zip)"
    (tmp_path / "trunc.zip").write_bytes((tmp_path / "nobundle.zip").read_bytes()[:20])
    with pytest.raises(BundleError, match=r"^trunc.zip: not a model bundle"):
        load_bundle("trunc.zip")


def test_zipped_bundle_errors_name_the_zip(tiny_bundle, tmp_path, monkeypatch):
    import zipfile

    from particleseg.errors import BundleError
    from particleseg.models import load_bundle, zip_bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    bad = _copy_bundle(tiny_bundle.path, tmp_path / "b", postprocess__min_area=-3)
    zip_bundle(bad, tmp_path / "b.zip")
    with pytest.raises(BundleError, match=r"^b.zip: bundle.json: postprocess.min_area is -3"):
        load_bundle("b.zip")
    ok = _copy_bundle(tiny_bundle.path, tmp_path / "c")
    (ok / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    zip_bundle(ok, tmp_path / "c.zip")
    with pytest.raises(BundleError, match=r"^c.zip: model.keras: corrupt or not a Keras model"):
        load_bundle("c.zip")
    assert zipfile.is_zipfile(tmp_path / "c.zip")


# ------------------------------------------------------------------------------------------
# item 6: non-finite pixels in every reader

PHASES = ["matrix", "pore", "inclusion"]


@pytest.fixture(scope="module")
def phase_bundle(tmp_path_factory):
    """Make an untrained 2-level UNet taking 2 channels x 3 slices (its network is replaced by an oracle)."""
    import keras

    from particleseg import fibsem
    from particleseg.models import Head, NetworkConfig, build_network, save_bundle

    keras.utils.set_random_seed(1)
    cfg = fibsem.PhaseTrainConfig(context=1, depth=2, base_filters=4)
    net = NetworkConfig("unet", 6, (Head("classes", 3, "softmax"),), depth=2, base_filters=4)
    meta = fibsem.make_phase_metadata("phases-tiny", net, cfg, ["a", "b"], PHASES)
    return save_bundle(tmp_path_factory.mktemp("b") / "phases-tiny", build_network(net), meta, zip_copy=False)


def _oracle(batch):  # centre slice, channel 0 (index 2 of z-1, z, z+1 x 2 channels) holds the phase
    k = np.clip(np.round(np.nan_to_num(batch[..., 2]) * 2), 0, 2).astype(int)
    return np.eye(3, dtype=np.float32)[k]


@pytest.mark.parametrize("layout", ["array", "tiff", "tiff-zlib", "folder"])
def test_fibsem_one_nan_pixel_fails_its_slice_only(tmp_path, phase_bundle, layout):
    """Before: one NaN made the normalisation percentiles NaN and every slice 100 % phase 1."""
    import pandas as pd
    import tifffile

    from particleseg import fibsem

    rng = np.random.default_rng(3)
    truth = rng.integers(1, 4, (5, 32, 40))
    ch0 = ((truth - 1) * 100).astype(np.float32)
    ch1 = rng.random(truth.shape).astype(np.float32)
    ch0[3, 5, 7] = np.nan
    if layout == "array":
        inputs, where = [ch0, ch1], "array 0 slice 3"
    elif layout == "folder":
        for c, ch in enumerate((ch0, ch1)):
            (tmp_path / f"c{c}").mkdir()
            for z in range(5):
                tifffile.imwrite(tmp_path / f"c{c}" / f"s_{z:03d}.tif", ch[z])
        inputs, where = [tmp_path / "c0", tmp_path / "c1"], f"{tmp_path / 'c0' / 's_003.tif'} (slice 3)"
    else:
        comp = "zlib" if layout == "tiff-zlib" else None
        for c, ch in enumerate((ch0, ch1)):
            tifffile.imwrite(tmp_path / f"ch{c}.tif", ch, compression=comp, photometric="minisblack")
        inputs, where = [tmp_path / "ch0.tif", tmp_path / "ch1.tif"], f"{tmp_path / 'ch0.tif'} slice 3"
    with fibsem.open_stack(inputs) as st:
        fr = fibsem.segment_stack(st, phase_bundle, tmp_path / "o", tile=32, progress=False, predictor=_oracle)
    status = pd.read_csv(tmp_path / "o" / "slices.csv").set_index("slice")
    assert status.loc[3, "status"] == "error"
    assert f"{where}: contains 1 NaN or infinite pixel values" in status.loc[3, "message"]
    fr = fr.set_index("slice")
    for z in (0, 1, 4):  # slices whose context does not include slice 3 keep their true phases
        for i, name in enumerate(PHASES):
            assert fr.loc[z, name] == pytest.approx((truth[z] == i + 1).mean())


def test_fibsem_infinite_value_stops_with_on_error_stop(tmp_path, phase_bundle):
    from particleseg import fibsem

    ch0 = np.zeros((3, 32, 32), np.float32)
    ch0[:, :16] = 200
    ch0[0, 0, 0] = np.inf
    ch0[0, 1, 1] = -np.inf
    with fibsem.open_stack([ch0, ch0.copy()]) as st, pytest.raises(InputError, match="array 0 slice 0: contains 2 NaN"):
        fibsem.segment_stack(
            st, phase_bundle, tmp_path / "o", tile=32, progress=False, predictor=_oracle, on_error="stop"
        )


def test_segment_evaluate_and_sims_readers_refuse_nan(tmp_path):
    import tifffile

    from particleseg.io import read_image
    from particleseg.sims import read_field

    img = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    img[3, 4] = np.nan
    img[5, 6] = np.inf
    tifffile.imwrite(tmp_path / "a.tif", img)
    with pytest.raises(InputError, match=r"a.tif: contains 2 NaN or infinite pixel values$"):
        read_image(tmp_path / "a.tif")
    prob = np.clip(img, 0, 1)
    with pytest.raises(InputError, match=r"^pred.tif: contains 2 NaN or infinite pixel values$"):
        M.evaluate_pair(img, (prob > 0.5).astype(np.uint8), name="pred.tif")
    tifffile.imwrite(tmp_path / "p_prob.tif", img)
    tifffile.imwrite(tmp_path / "p_m.tif", (np.nan_to_num(img) > 0.5).astype(np.uint8) * 255)
    _, failures = M.evaluate_files([tmp_path / "p_prob.tif"], [tmp_path / "p_m.tif"], tmp_path / "ev", progress=False)
    assert (
        len(failures) == 1 and failures[0][1] == f"{tmp_path / 'p_prob.tif'}: contains 2 NaN or infinite pixel values"
    )
    stack = np.abs(np.random.default_rng(1).normal(5, 1, (2, 16, 16))).astype(np.float32)
    stack[1, 2, 2] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", stack, imagej=True, metadata={"Labels": ["235U", "238U"]})
    with pytest.raises(InputError, match=r"f.tif \[238U\]: contains 1 NaN or infinite"):
        read_field(tmp_path / "f.tif")


# ------------------------------------------------------------------------------------------
# item 9: outputs respect the umask; errors on stderr; no library noise


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_outputs_respect_the_umask(tmp_path, mask):
    import os
    import stat

    from particleseg.io import write_atomic

    old = os.umask(mask)
    try:
        out = write_atomic(tmp_path / "a.txt", lambda t: t.write_text("x"))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~mask == stat.S_IMODE(plain.stat().st_mode)


def test_saved_bundle_folder_respects_the_umask(tiny_bundle, tmp_path):
    import os
    import stat

    from particleseg.models import save_bundle

    old = os.umask(0o022)
    try:
        b = save_bundle(tmp_path / "copy", tiny_bundle.model, tiny_bundle.metadata, zip_copy=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(b.path.stat().st_mode) == 0o755
    assert stat.S_IMODE((b.path / "bundle.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "copy.zip").stat().st_mode) == 0o644


def zip_h5_names(path) -> list[str]:
    """Return the names of the datasets in a .keras archive's weights file."""
    import io
    import zipfile

    import h5py

    names = []
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_bundle_of_a_compiled_network_leaves_the_optimiser_out(tiny_bundle, tmp_path):
    # Keras 3 writes a compiled model's Adam state into .keras files (three times the weights);
    # a bundle keeps the weights alone, and they predict as before
    import keras

    from particleseg.models import load_bundle, save_bundle

    model = keras.models.clone_model(tiny_bundle.model)
    model.set_weights(tiny_bundle.model.get_weights())
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    model.fit(x, model.predict(x, verbose=0), epochs=1, verbose=0)  # the optimiser gets its state
    model.save(tmp_path / "with_optimiser.keras")
    saved = save_bundle(tmp_path / "trained", model, tiny_bundle.metadata)
    assert "optimizer/vars/0" in zip_h5_names(tmp_path / "with_optimiser.keras")
    assert not any(n.startswith("optimizer/vars/") for n in zip_h5_names(saved.path / "model.keras"))
    back = load_bundle(saved.path).model
    for a, b in zip(back.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_array_equal(a, b)


def test_segment_outputs_respect_the_umask_and_errors_go_to_stderr(tiny_bundle, tmp_path, capsys):
    import os
    import stat

    import tifffile

    from particleseg.cli import main

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "good.tif", (rng.random((64, 64)) * 255).astype(np.uint8))
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    old = os.umask(0o022)
    try:
        code = main(
            [
                "segment",
                str(tmp_path / "good.tif"),
                str(tmp_path / "bad.tif"),
                "--model",
                str(tiny_bundle.path),
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
    finally:
        os.umask(old)
    out, err = capsys.readouterr()
    assert code == 1
    assert "bad.tif" not in out
    assert f"particleseg: error: {tmp_path / 'bad.tif'}: cannot read image" in err
    files = [p for p in (tmp_path / "out").iterdir() if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in files), [
        (p.name, oct(p.stat().st_mode)) for p in files
    ]


def _png_files(folder):
    import os

    from PIL import Image

    rng = np.random.default_rng(0)
    a = (rng.random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([a, np.full_like(a, 255)], -1), "LA").save(folder / "la.png")
    Image.fromarray(a).save(folder / "gray.png")
    (folder / "rand.png").write_bytes(os.urandom(5000))
    (folder / "trunc.png").write_bytes((folder / "gray.png").read_bytes()[:300])
    return a


def test_grey_alpha_png_is_its_grey_values_and_random_bytes_one_line(tmp_path):
    from particleseg.io import read_array, read_image

    a = _png_files(tmp_path)
    img, _ = read_image(tmp_path / "la.png")
    np.testing.assert_array_equal(img, a)
    np.testing.assert_array_equal(read_array(tmp_path / "la.png"), a)
    with pytest.raises(InputError) as exc:
        read_image(tmp_path / "rand.png")
    assert str(exc.value) == f"{tmp_path / 'rand.png'}: cannot read image (not a valid PNG file, or damaged)"
    with pytest.raises(InputError, match=r"rand.png: cannot read proposal \(not a valid PNG file, or damaged\)$"):
        read_array(tmp_path / "rand.png", "proposal")
    with pytest.raises(InputError, match=r"trunc.png: cannot read image \(image file is truncated\)"):
        read_image(tmp_path / "trunc.png")


def test_cli_bad_pngs_give_one_line_each_and_no_library_noise(tmp_path):
    """A subprocess, as a user runs it.

    Random bytes named .png gave a DICOM-plugin message and 199 lines of ResourceWarning
    tracebacks, a grey+alpha PNG 'too small'.
    """
    import subprocess
    import sys

    _png_files(tmp_path)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONWARNINGS"] = "default"  # show every warning a user with -W default would see
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "particleseg",
            "segment",
            "rand.png",
            "trunc.png",
            "la.png",
            "--model",
            "default",
            "--out",
            "o",
            "--quiet",
            "--tile",
            "64",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 1
    err = run.stderr.strip().splitlines()
    # la.png's gray values are uniform noise: no particle-like structure, so one note
    assert err == [
        "particleseg: error: rand.png: cannot read image (not a valid PNG file, or damaged)",
        "particleseg: error: trunc.png: cannot read image (image file is truncated)",
        "particleseg: note: la.png: no particles found (polarity bright (estimated, both polarities compared by "
        "the network), particle size not estimated, not resampled); if there are particles, set --polarity or "
        "--particle-size",
        "particleseg: 2 of 3 image(s) failed (errors above)",
    ], run.stderr
    assert run.stdout.startswith("la.png: ")


# ------------------------------------------------------------------------------------------
# item 10: property-based tests of the readers and metrics (hypothesis; few examples, fast)

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

# 20 fixed examples per property in the suite (deterministic, a few seconds); set
# PARTICLESEG_HYPOTHESIS_EXAMPLES=500 for a longer random search.
_EXAMPLES = int(__import__("os").environ.get("PARTICLESEG_HYPOTHESIS_EXAMPLES", "20"))
FAST = settings(
    max_examples=_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=_EXAMPLES <= 20,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

GRAY_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])


@st.composite
def gray_images(draw, min_side=16, max_side=40, stack=False):
    dtype = np.dtype(draw(GRAY_DTYPES))
    shape = (draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side)))
    if stack:
        shape = (draw(st.integers(2, 3)),) + shape
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # a random image built from a few drawn values, so sizes above hypothesis' array limits stay cheap
    values = np.array(draw(st.lists(elements, min_size=2, max_size=6)), dtype)
    return values[rng.integers(0, len(values), shape)]


@FAST
@given(img=gray_images(), suffix=st.sampled_from([".tif", ".png"]))
def test_property_read_image_round_trip_or_one_clear_error(tmp_path_factory, img, suffix):
    import tifffile

    from particleseg.io import read_image

    folder = tmp_path_factory.mktemp("rt")
    path = folder / f"x{suffix}"
    if suffix == ".png":
        if img.dtype not in (np.uint8, np.uint16):
            img = (img.astype(np.float64) % 256).astype(np.uint8)
        import imageio.v3 as iio

        iio.imwrite(path, img)
    else:
        tifffile.imwrite(path, img)
    if img.min() == img.max():
        with pytest.raises(InputError, match=r"image is constant"):
            read_image(path)
        return
    out, cal = read_image(path)
    assert out.dtype == img.dtype
    np.testing.assert_array_equal(out, img)
    assert cal.pixel_size > 0


@FAST
@given(img=gray_images(stack=True), n_bad=st.integers(1, 5), inf=st.booleans())
def test_property_non_finite_pixels_are_counted_in_every_reader(tmp_path_factory, img, n_bad, inf):
    import tifffile

    from particleseg import fibsem
    from particleseg.io import read_image

    img = img.astype(np.float32)
    flat = img.reshape(-1)
    idx = np.random.default_rng(n_bad).choice(img[0].size, n_bad, replace=False)  # all in slice 0
    flat[idx] = np.inf if inf else np.nan
    path = tmp_path_factory.mktemp("nf") / "s.tif"
    tifffile.imwrite(path, img, photometric="minisblack")
    with pytest.raises(InputError, match=rf"s.tif: contains {n_bad} NaN or infinite pixel values$"):
        read_image(path)
    with pytest.raises(InputError, match=rf"^pred: contains {n_bad} NaN or infinite pixel values$"):
        M.classify_input(img, name="pred")
    with fibsem.open_stack([path]) as st_:
        with pytest.raises(InputError, match=rf"s.tif slice 0: contains {n_bad} NaN or infinite pixel values$"):
            st_.read(0)
        assert np.isfinite(st_.read(1)).all()


@st.composite
def label_pairs(draw):
    """Two small label images of one shape: rectangles with ids drawn from a large range."""
    h, w = draw(st.integers(6, 24)), draw(st.integers(6, 24))
    out = []
    for _ in range(2):
        lab = np.zeros((h, w), np.int64)
        for _ in range(draw(st.integers(0, 5))):
            y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
            y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
            lab[y0:y1, x0:x1] = draw(st.integers(1, 2**45))
        out.append(lab)
    return out


SCORE_KEYS = (
    "iou_image",
    "iou_instance",
    "iou_instance_truth",
    "youden",
    "ap",
    "f1_50",
    "pixel_error",
    "warping_error",
    "rand_error",
    "rand_error_thinned",
    "vi_error_thinned",
)


def _scramble(lab, seed):
    """Give the same particles other ids, random and huge, in the same order.

    The order stays: where two touching particles are equally large, labels_to_mask lets the id
    order decide which gives up the touching pixels, so only the values, not the order, can be
    free.
    """
    ids = np.unique(lab[lab > 0])
    new = np.sort(np.random.default_rng(seed).choice(2**40, len(ids), replace=False)) + 1
    out = np.zeros_like(lab)
    for a, b in zip(ids, new):
        out[lab == a] = b
    return out


@FAST
@given(pair=label_pairs(), seed=st.integers(0, 1000))
def test_property_metrics_in_range_and_independent_of_label_ids(pair, seed):
    truth, pred = pair
    r = M.evaluate_pair(pred, truth, pred_kind="labels", truth_kind="labels")
    for key in SCORE_KEYS:
        v = r[key]
        if key in ("rand_error", "rand_error_thinned", "vi_error_thinned") and not truth.any():
            assert math.isnan(v), key
            continue
        assert (-1 if key == "youden" else 0) - 1e-12 <= v <= 1 + 1e-12, (key, v)
    again = M.evaluate_pair(_scramble(pred, seed), _scramble(truth, seed + 1), pred_kind="labels", truth_kind="labels")
    for key in SCORE_KEYS:
        assert again[key] == pytest.approx(r[key], nan_ok=True), key


@FAST
@given(pair=label_pairs())
def test_property_identical_segmentations_score_perfectly(pair):
    truth = M.relabel_sequential(pair[0])
    assume(truth.any())
    r = M.evaluate_pair(truth, truth, pred_kind="labels", truth_kind="labels")
    assert r["iou_image"] == r["ap"] == r["f1_50"] == r["iou_instance"] == 1.0
    assert r["rand_error"] == pytest.approx(0, abs=1e-12)
    assert r["rand_error_thinned"] == pytest.approx(0, abs=1e-12)
    full_one = truth.min() == truth.max()  # one particle covering the image: TWS's 0 (see item 8)
    assert r["vi_error_thinned"] == (1.0 if full_one else pytest.approx(0, abs=1e-9))


@FAST
@given(pair=label_pairs())
def test_property_thin_borders_keeps_particles_and_separates_them(pair):
    lab = M.relabel_sequential(pair[0])
    thin = M.thin_borders(lab)
    fg = lab > 0
    np.testing.assert_array_equal(thin[fg], lab[fg])
    if not fg.any():
        assert (thin == 1).all()
        return
    assert set(np.unique(thin[thin > 0])) == set(np.unique(lab[fg]))
    for a, b in ((thin[1:], thin[:-1]), (thin[:, 1:], thin[:, :-1])):
        touching = (a > 0) & (b > 0) & (a != b)
        # two particles may touch only where they touched in the input
        orig = (
            (lab[1:] if a.shape[0] < thin.shape[0] else lab[:, 1:]),
            (lab[:-1] if a.shape[0] < thin.shape[0] else lab[:, :-1]),
        )
        assert not (touching & ~((orig[0] > 0) & (orig[1] > 0))).any()


@FAST
@given(
    ids=hnp.arrays(
        np.int64,
        hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
        elements=st.one_of(st.just(0), st.integers(1, 2**50)),
    )
)
def test_property_relabel_sequential_is_an_order_preserving_bijection(ids):
    out = M.relabel_sequential(ids)
    assert out.shape == ids.shape and out.dtype == np.int32
    assert ((out == 0) == (ids == 0)).all() or not (ids == 0).any() and (out > 0).all()
    u_in, u_out = np.unique(ids[ids > 0]), np.unique(out[ids > 0])
    np.testing.assert_array_equal(u_out, np.arange(1, len(u_in) + 1))
    for a, b in zip(u_in, u_out):
        assert (out[ids == a] == b).all()


@FAST
@given(pair=label_pairs())
def test_property_contingency_counts_add_up(pair):
    truth, pred = pair
    c = M.contingency(truth, pred)
    assert c.counts.sum() == c.n == (truth > 0).sum()
    assert c.pred_area.sum() == truth.size
    assert c.n_truth == len(np.unique(truth[truth > 0])) and c.n_pred == len(np.unique(pred[pred > 0]))


@FAST
@given(
    h=st.integers(8, 30),
    w=st.integers(8, 30),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32]),
    seed=st.integers(0, 2**32 - 1),
    negative=st.booleans(),
)
def test_property_sims_field_reader_round_trip_or_one_clear_error(tmp_path_factory, h, w, dtype, seed, negative):
    import tifffile

    from particleseg.sims import read_field

    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, (2, h, w)).astype(dtype)
    if negative and np.dtype(dtype).kind in "if":
        counts[1, 0, 0] = -1
    path = tmp_path_factory.mktemp("sims") / "f.tif"
    tifffile.imwrite(
        path,
        counts,
        imagej=dtype != np.int32,
        photometric="minisblack",
        metadata={"Labels": ["235U", "238U"]} if dtype != np.int32 else None,
    )
    channels = ["235U", "238U"] if dtype == np.int32 else None
    if negative and np.dtype(dtype).kind in "if":
        with pytest.raises(InputError, match=r"f.tif \[238U\]: has negative values; expected ion counts$"):
            read_field(path, channels)
        return
    fld = read_field(path, channels)
    np.testing.assert_array_equal(fld.counts["235U"], counts[0])
    np.testing.assert_array_equal(fld.counts["238U"], counts[1])


@FAST
@given(
    shape=hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.uint32, np.float32]),
    seed=st.integers(0, 1000),
)
def test_property_evaluate_reader_round_trip_tiny_shapes(tmp_path_factory, shape, dtype, seed):
    import tifffile

    from particleseg.io import read_array

    a = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    path = tmp_path_factory.mktemp("ra") / "m.tif"
    tifffile.imwrite(path, a)
    out = read_array(path, "mask")
    np.testing.assert_array_equal(out, np.squeeze(a))
    assert out.dtype == a.dtype


def test_python_api_loads_and_runs_a_model_without_tensorflow_chatter(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    code = (
        "import numpy as np\nfrom particleseg.models import load_bundle\nb = load_bundle()\n"
        "print(b.predictor()(np.zeros((1, 32, 32, 1), np.float32)).shape)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1, 32, 32, 2)"
    assert run.stderr == "", (
        run.stderr
    )  # was: absl's 'All log messages before absl::InitializeLog()' and cpu_feature_guard
