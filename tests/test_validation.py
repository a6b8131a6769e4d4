"""Validation of inputs and outputs (issue 15): evaluate with large label ids, the thinned
Rand/VI scores of empty and full proposals as Fiji's TWS computes them, bundles checked at
load, non-finite pixels refused by every reader, umask-respecting outputs, errors on stderr,
and property-based tests (hypothesis) of the readers and metrics.
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
    """One ground-truth particle: the one-segment proposal puts all its pairs together, so
    V_Rand = 1 (error 0), while V_Info is 0 in TWS (H(A) = H(B) = 0: precision 0/recall 1, then
    H(B) = 0 overrides with precision 1/recall 0)."""
    truth = np.zeros((10, 10), np.uint8)
    truth[2:6, 3:8] = 1
    for pred in (np.zeros(truth.shape, bool), np.ones(truth.shape, bool)):
        r = M.evaluate_pair(pred, truth)
        assert r["rand_error_thinned"] == pytest.approx(0.0, abs=1e-12)
        assert r["vi_error_thinned"] == 1.0
    # a proposal that found the particle keeps the documented exception (difference 3): 1
    assert M.evaluate_pair(truth > 0, truth)["vi_error_thinned"] == pytest.approx(0.0)


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
