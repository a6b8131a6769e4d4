"""Tests of particleseg.metrics and ``particleseg evaluate``.

Most cases are tiny images whose answers are worked out in the comments. Rows of pixels are
written as 1-row images ``np.array([[...]])``; particles are runs of equal labels.
"""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from particleseg import metrics as M
from particleseg.errors import InputError
from particleseg.metrics import inputs, isbi, topology
from particleseg.postprocess import labels_to_mask

FOUR = ndi.generate_binary_structure(2, 1)


def row(*values):
    return np.array([values])


def blobs(rng, shape=(48, 64), sigma=2.5, level=0.5):
    return ndi.gaussian_filter(rng.random(shape), sigma) > level


def random_labels(rng, shape=(48, 64), n=12):
    """Make a label image that covers the whole image: a Voronoi partition of n random seeds."""
    seeds = np.zeros(shape, np.int32)
    ys, xs = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    seeds[ys, xs] = np.arange(1, n + 1)
    _, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return seeds[iy, ix]


# ------------------------------------------------------------------------------------------
# inputs


def test_labels_to_mask_draws_one_pixel_lines_between_touching_particles():
    lab = np.zeros((4, 6), np.int32)
    lab[:, :3] = 1
    lab[:, 3:] = 2
    mask = labels_to_mask(lab)
    # the particle with the larger label gives up its pixels that touch the other one
    assert mask[:, 3].sum() == 0 and mask[:, :3].all() and mask[:, 4:].all()
    assert ndi.label(mask, FOUR)[1] == 2
    assert ndi.label(mask, np.ones((3, 3)))[1] == 2  # also for 8-connected tracing (ImageJ)


def test_classify_input_rules_and_errors():
    assert M.classify_input(np.array([[0, 255], [255, 0]], np.uint8))[0] == "mask"
    assert M.classify_input(np.zeros((3, 3), np.uint8))[0] == "mask"  # empty mask
    assert M.classify_input(np.array([[0.2, 0.7], [1.0, 0.0]]))[0] == "prob"
    kind, lab = M.classify_input(np.array([[0, 1, 2, 2]], np.uint16))
    assert kind == "labels" and lab.dtype == np.int32
    kind, prob = M.classify_input(np.array([[0, 51, 255]], np.uint8), "prob")
    assert kind == "prob" and np.allclose(prob, [[0, 0.2, 1]])  # 8-bit map scaled by 255
    with pytest.raises(InputError, match="p.tif: contains 1 NaN"):
        M.classify_input(np.array([[0.5, np.nan]]), name="p.tif")
    with pytest.raises(InputError, match="values 0.5 to 1.5 lie outside \\[0, 1\\]"):
        M.classify_input(np.array([[0.5, 1.5]]))
    kind, prob = M.classify_input(np.array([[-1e-17, 0.5, 1 + 1e-12]]))  # rounding of a smoothed map
    assert kind == "prob" and prob.min() == 0 and prob.max() == 1
    with pytest.raises(InputError, match="not a binary mask \\(3 distinct values"):
        M.classify_input(np.array([[0, 1, 2]]), "mask")
    with pytest.raises(InputError, match="fractional values; the ground truth"):
        M.classify_input(np.array([[0.5, 0.2]]), role="truth")
    with pytest.raises(InputError, match="negative"):
        M.classify_input(np.array([[-1, 0, 3]]))
    gray = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
    with pytest.raises(InputError, match="gray-value image"):
        M.classify_input(gray, name="t.tif", role="truth")


# ------------------------------------------------------------------------------------------
# pixel metrics


def test_foreground_iou_hand_example_and_degenerate_cases():
    pred = row(1, 1, 1, 1, 0, 0, 0)
    truth = row(0, 1, 1, 1, 1, 1, 1)
    # overlap 3 pixels, union 4 + 6 - 3 = 7
    assert M.foreground_iou(pred, truth) == pytest.approx(3 / 7)
    assert M.foreground_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0  # both empty: identical
    assert M.foreground_iou(np.zeros((2, 2)), np.ones((2, 2))) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        M.foreground_iou(np.array([[0.3, 0.6]]), row(0, 1))


# truth and a probability map on one row of five pixels, and what each threshold gives:
#   truth = 1 1 1 0 0,  prob = .9 .7 .3 .5 .1
#   t=0.0: pred 1 1 1 1 1  TP3 FP2 FN0 TN0  sens 1   spec 0    J 0    P 3/5 R 1   F 3/4
#   t=0.2: pred 1 1 1 1 0  TP3 FP1 FN0 TN1  sens 1   spec 1/2  J 1/2  P 3/4 R 1   F 6/7
#   t=0.4: pred 1 1 0 1 0  TP2 FP1 FN1 TN1  sens 2/3 spec 1/2  J 1/6  P 2/3 R 2/3 F 2/3
#   t=0.6: pred 1 1 0 0 0  TP2 FP0 FN1 TN2  sens 2/3 spec 1    J 2/3  P 1   R 2/3 F 4/5
#   t=0.8: pred 1 0 0 0 0  TP1 FP0 FN2 TN2  sens 1/3 spec 1    J 1/3  P 1   R 1/3 F 1/2
TRUTH5 = row(1, 1, 1, 0, 0)
PROB5 = row(0.9, 0.7, 0.3, 0.5, 0.1)
TH5 = (0.0, 0.2, 0.4, 0.6, 0.8)


def test_youden_index_hand_example():
    assert M.youden_index(PROB5, TRUTH5, TH5) == pytest.approx(2 / 3)  # best at t = 0.6
    assert M.youden_index(PROB5, TRUTH5, (0.4,)) == pytest.approx(1 / 6)


def test_pixel_error_hand_example_is_one_minus_best_f_score():
    assert M.pixel_error(PROB5, TRUTH5, TH5) == pytest.approx(1 - 6 / 7)  # best at t = 0.2
    assert M.pixel_error(PROB5, TRUTH5, (0.8,)) == pytest.approx(0.5)


def test_pixel_error_of_masks_is_one_minus_dice_and_degenerate_cases():
    pred = row(1, 1, 1, 1, 0, 0, 0)
    truth = row(0, 1, 1, 1, 1, 1, 1)
    iou = 3 / 7
    assert M.pixel_error(pred, truth) == pytest.approx(1 - 2 * iou / (1 + iou))  # Dice = 2*3/(4+6)
    assert M.pixel_error(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8)) == 0.0
    assert M.pixel_error(np.zeros((3, 3), np.uint8), np.eye(3, dtype=np.uint8)) == 1.0  # recall 0


# ------------------------------------------------------------------------------------------
# instance metrics

# truth: A = columns 0-1 (2 px), B = columns 4-6 (3 px), C = column 9 (1 px, missed)
# pred:  P1 = columns 1-2 (overlaps A in 1 px: IoU 1/(2+2-1) = 1/3), P2 = columns 4-6 (= B: IoU 1)
TRUTH_ABC = row(1, 1, 0, 0, 2, 2, 2, 0, 0, 3)
PRED_12 = row(0, 5, 5, 0, 7, 7, 7, 0, 0, 0)


def test_iou_matrix_hand_example():
    iou, tids, pids = M.iou_matrix(TRUTH_ABC, PRED_12, return_ids=True)
    assert list(tids) == [1, 2, 3] and list(pids) == [5, 7]
    np.testing.assert_allclose(iou, [[1 / 3, 0], [0, 1], [0, 0]])


def test_iou_matrix_agrees_with_brute_force_on_random_labels(rng):
    t = random_labels(rng, n=15) * blobs(rng, level=0.45)
    p = random_labels(rng, n=20)
    iou = M.iou_matrix(t, p)
    tids, pids = np.setdiff1d(np.unique(t), [0]), np.setdiff1d(np.unique(p), [0])
    brute = np.array([[((t == a) & (p == b)).sum() / ((t == a) | (p == b)).sum() for b in pids] for a in tids])
    np.testing.assert_allclose(iou, brute)


def test_instance_iou_both_conventions():
    # "truth": best IoU per ground-truth particle, averaged: (1/3 + 1 + 0) / 3 = 4/9
    assert M.instance_iou(PRED_12, TRUTH_ABC, average="truth") == pytest.approx(4 / 9)
    # "pred": best IoU per proposed particle, averaged: (1/3 + 1) / 2 = 2/3
    assert M.instance_iou(PRED_12, TRUTH_ABC, average="pred") == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.instance_iou(PRED_12, TRUTH_ABC, average="both")


def test_instance_iou_degenerate_cases():
    empty = np.zeros((1, 10), np.int32)
    assert M.instance_iou(empty, empty) == 1.0 and M.instance_iou(empty, empty, "pred") == 1.0
    assert M.instance_iou(empty, TRUTH_ABC, "truth") == 0.0  # everything missed
    assert M.instance_iou(empty, TRUTH_ABC, "pred") == 0.0  # nothing proposed
    assert M.instance_iou(TRUTH_ABC, empty, "truth") == 0.0  # only false positives
    assert M.instance_iou(TRUTH_ABC, TRUTH_ABC, "truth") == 1.0


def test_match_instances_hand_example():
    # at 0.5 only B-P2 matches: TP 1, FP 1 (P1), FN 2 (A, C); F1 = 2/(2+1+2)
    m = M.match_instances(TRUTH_ABC, PRED_12, 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 2)
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(0.4)
    # at 0.3 A-P1 (IoU 1/3) matches too: TP 2, FP 0, FN 1, F1 = 4/5
    m = M.match_instances(TRUTH_ABC, PRED_12, 0.3)
    assert (m["tp"], m["fp"], m["fn"], m["f1"]) == (2, 0, 1, pytest.approx(0.8))


def test_match_instances_uses_optimal_assignment_below_one_half():
    # truth T1 = columns 0-9, T2 = columns 10-19
    # pred  P2 = columns 0-2, P1 = columns 3-12
    # IoU(P1, T1) = 7/13 = .54, IoU(P1, T2) = 3/17 = .18, IoU(P2, T1) = 3/10 = .3
    # greedy best-first pairs P1-T1 and leaves P2 and T2 alone (TP 1); the optimal
    # one-to-one matching at 0.15 pairs P1-T2 and P2-T1 (TP 2)
    truth = np.array([[1] * 10 + [2] * 10])
    pred = np.array([[2] * 3 + [1] * 10 + [0] * 7])
    m = M.match_instances(truth, pred, 0.15)
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)
    assert M.match_instances(truth, pred, 0.5)["tp"] == 1  # above 0.5 only P1-T1
    # an exact tie at 0.5: T split into two halves, each with IoU exactly 1/2; one can match
    m = M.match_instances(np.ones((1, 8), int), np.array([[1] * 4 + [2] * 4]), 0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 0)


def test_match_instances_degenerate_cases():
    empty = np.zeros((1, 10), np.int32)
    m = M.match_instances(empty, empty)
    assert (m["tp"], m["fp"], m["fn"], m["f1"]) == (0, 0, 0, 1.0)
    m = M.match_instances(TRUTH_ABC, empty)
    assert (m["tp"], m["fn"], m["recall"], m["f1"]) == (0, 3, 0.0, 0.0)


def test_average_precision_hand_example():
    # truth A = columns 0-24, B = columns 30-39; pred P = columns 0-17 (IoU with A 18/25 = 0.72),
    # Q = B exactly. At IoU thresholds .50 .55 .60 .65 .70: TP 2 -> TP/(TP+FP+FN) = 1;
    # at .75 .80 .85 .90 .95: TP 1, FP 1, FN 1 -> 1/3. AP = (5 * 1 + 5 * 1/3) / 10 = 2/3
    truth = np.array([[1] * 25 + [0] * 5 + [2] * 10])
    pred = np.array([[4] * 18 + [0] * 12 + [9] * 10])
    assert M.average_precision(truth, pred) == pytest.approx(2 / 3)
    assert M.average_precision(truth, truth) == 1.0
    empty = np.zeros_like(truth)
    assert M.average_precision(empty, empty) == 1.0 and M.average_precision(truth, empty) == 0.0


# ------------------------------------------------------------------------------------------
# Rand and information scores


def test_adapted_rand_hand_examples():
    # one particle of 4 px split in two: S_A = 4^2 = 16, S_B = 2^2 + 2^2 = 8, S_AB = 8
    # precision 8/8 = 1, recall 8/16 = 1/2, F = 2/3
    f, p, r = M.adapted_rand(row(1, 1, 1, 1), row(1, 1, 2, 2))
    assert (f, p, r) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.5))
    # two particles merged into one: S_A = 8, S_B = 16, S_AB = 8: precision 1/2, recall 1
    f, p, r = M.adapted_rand(row(1, 1, 2, 2), row(3, 3, 3, 3))
    assert (f, p, r) == (pytest.approx(2 / 3), pytest.approx(0.5), 1.0)
    # proposal background inside the particle: those 2 px are one-pixel segments (TWS):
    # S_AB = 2^2 + 2 = 6, S_B = 6, S_A = 16: precision 1, recall 6/16, F = (3/4)/(11/8) = 6/11
    f, p, r = M.adapted_rand(row(1, 1, 1, 1), row(1, 1, 0, 0))
    assert f == pytest.approx(6 / 11) and p == 1.0
    # ground-truth background is ignored, whatever the proposal puts there
    assert M.adapted_rand(row(1, 1, 0, 0), row(1, 1, 2, 3))[0] == 1.0
    assert all(math.isnan(v) for v in M.adapted_rand(row(0, 0), row(1, 1)))  # undefined


def test_adapted_rand_agrees_with_skimage_where_definitions_coincide(rng):
    from skimage.metrics import adapted_rand_error

    for _ in range(5):
        truth = random_labels(rng, n=10) * blobs(rng, level=0.4)  # with background
        pred = random_labels(rng, n=14)  # covers every pixel: no proposal background
        are, prec, rec = adapted_rand_error(truth, pred)  # pairs of distinct pixels
        f, p, r = M.adapted_rand(truth, pred, self_pairs=False)
        assert f == pytest.approx(1 - are)
        # skimage calls precision what TWS calls recall, and vice versa
        assert (p, r) == (pytest.approx(rec), pytest.approx(prec))


def test_information_scores_hand_examples():
    ln2 = math.log(2)
    # identical two-particle partitions: H(A) = H(B) = I = ln 2, V_Info = 1, VI = 0
    s = M.information_scores(row(1, 1, 2, 2), row(5, 5, 6, 6))
    assert s["fscore"] == pytest.approx(1) and s["vi"] == pytest.approx(0, abs=1e-12)
    # p_ij = 1/4 each for (1,1), (1,2), (2,2), (2,3): H(A,B) = ln 4, H(A) = ln 2,
    # b = (1/4, 1/2, 1/4): H(B) = 1.5 ln 2; I = ln2 + 1.5 ln2 - 2 ln2 = 0.5 ln 2
    # V_Info = 2 I / (H(A) + H(B)) = 1 / 2.5 = 0.4; VI = 2 H(A,B) - H(A) - H(B) = 1.5 ln 2
    s = M.information_scores(row(1, 1, 2, 2), row(1, 2, 2, 3))
    assert s["h_truth"] == pytest.approx(ln2) and s["h_pred"] == pytest.approx(1.5 * ln2)
    assert s["fscore"] == pytest.approx(0.4) and s["vi"] == pytest.approx(1.5 * ln2)
    assert s["h_truth_given_pred"] == pytest.approx(0.5 * ln2)  # merges
    assert s["h_pred_given_truth"] == pytest.approx(ln2)  # splits
    # one particle split in two: H(A) = 0, so V_Info = 0 (TWS); VI = ln 2
    s = M.information_scores(row(1, 1, 1, 1), row(1, 1, 2, 2))
    assert s["fscore"] == 0.0 and s["vi"] == pytest.approx(ln2)
    # one particle, one segment: perfect (TWS would report 0 here)
    assert M.information_scores(row(1, 1, 1), row(4, 4, 4))["fscore"] == 1.0
    assert math.isnan(M.information_scores(row(0, 0), row(1, 1))["fscore"])


def test_information_scores_agree_with_skimage_variation_of_information(rng):
    from skimage.metrics import variation_of_information

    for _ in range(5):
        truth = random_labels(rng, n=9) * blobs(rng, level=0.4)
        pred = random_labels(rng, n=13)
        splits, merges = variation_of_information(truth, pred, ignore_labels=(0,))  # in bits
        s = M.information_scores(truth, pred)
        assert s["h_pred_given_truth"] == pytest.approx(splits * math.log(2))
        assert s["h_truth_given_pred"] == pytest.approx(merges * math.log(2))


def test_thin_borders_hand_examples():
    # gap of 3: pixels 1 and 3 join their nearest particle, the middle one is equidistant: line
    np.testing.assert_array_equal(M.thin_borders(row(1, 0, 0, 0, 2)), row(1, 1, 0, 2, 2))
    # gap of 2: both pixels are as near to either side; the later one in raster order is the line
    np.testing.assert_array_equal(M.thin_borders(row(1, 0, 0, 2)), row(1, 1, 0, 2))
    # no two particles: the background disappears
    np.testing.assert_array_equal(M.thin_borders(row(0, 3, 0, 0)), row(3, 3, 3, 3))


def test_thin_borders_keeps_particles_and_leaves_thin_lines(rng):
    lab = ndi.label(blobs(rng, level=0.55), FOUR)[0]
    thin = M.thin_borders(lab)
    fg = lab > 0
    np.testing.assert_array_equal(thin[fg], lab[fg])  # particles unchanged
    assert (thin == 0).sum() < 0.2 * (lab == 0).sum()
    # particles grown into the background never touch another particle (a line separates them)
    for a, b in ((thin[:, :-1], thin[:, 1:]), (thin[:-1], thin[1:])):
        grown = (a != b) & (a > 0) & (b > 0)
        orig_a = lab[:, :-1] if a.shape == thin[:, :-1].shape else lab[:-1]
        orig_b = lab[:, 1:] if a.shape == thin[:, :-1].shape else lab[1:]
        assert not np.any(grown & ((orig_a == 0) | (orig_b == 0)))


def test_thinned_scores_are_close_to_a_watershed_thinning(rng):
    from skimage.segmentation import watershed

    truth = ndi.label(blobs(rng, (96, 96), level=0.5), FOUR)[0]
    pred = ndi.label(blobs(rng, (96, 96), level=0.5) | (truth > 0), FOUR)[0]
    ws = watershed(np.zeros(pred.shape, np.uint8), markers=pred, connectivity=1, watershed_line=True)
    ours = M.contingency(truth, M.thin_borders(pred))
    theirs = M.contingency(truth, ws)
    # the same definition up to how ties are broken
    assert isbi._rand_f_from_sums(isbi._rand_sums(ours)) == pytest.approx(
        isbi._rand_f_from_sums(isbi._rand_sums(theirs)), abs=0.01
    )
    assert isbi._information(ours)["fscore"] == pytest.approx(isbi._information(theirs)["fscore"], abs=0.01)


def test_rand_error_over_a_threshold_sweep():
    # truth: two particles separated by a one-pixel line. At t=0.5 the proposal is exact;
    # at t=0.3 it merges them: S_A = 8, S_B = 16, S_AB = 8, F = 2/3
    truth = row(1, 1, 0, 1, 1)
    prob = row(0.9, 0.9, 0.4, 0.9, 0.9)
    assert M.rand_error(prob, truth, (0.3, 0.5)) == pytest.approx(0.0)
    assert M.rand_error(prob, truth, (0.3,)) == pytest.approx(1 / 3)
    assert M.rand_error_thinned(prob, truth, (0.3,)) == pytest.approx(1 / 3)
    assert M.vi_error_thinned(prob, truth, (0.3, 0.5)) == pytest.approx(0.0)
    # a merge leaves no information about the two particles: V_Info = 0
    assert M.vi_error_thinned(prob, truth, (0.3,)) == pytest.approx(1.0)


def test_thinning_forgives_thick_proposal_borders():
    # one particle of 7 px; the proposal cuts it with a gap of 3 px
    truth = np.ones((1, 7), np.uint8)
    pred = row(1, 1, 0, 0, 0, 1, 1)
    # unthinned: segments of 2 and 2 px and three one-pixel segments:
    # S_AB = S_B = 4 + 4 + 3 = 11, S_A = 49: F = 2*11 / (49 + 11) = 11/30
    assert M.rand_error(pred, truth) == pytest.approx(1 - 11 / 30)
    # thinned to 1 1 1 0 2 2 2: S_AB = S_B = 9 + 9 + 1 = 19: F = 2*19 / (49 + 19) = 19/34
    assert M.rand_error_thinned(pred, truth) == pytest.approx(1 - 19 / 34)


def test_rand_and_vi_errors_degenerate_cases():
    truth = row(1, 1, 0, 1, 1)
    for f in (M.rand_error, M.rand_error_thinned, M.vi_error_thinned):
        assert f(truth, truth) == pytest.approx(0.0)  # identical
        assert math.isnan(f(truth, np.zeros_like(truth)))  # no ground-truth foreground
    # empty proposal: every ground-truth pixel is its own segment: precision 1,
    # recall S_AB/S_A = 4 / (2^2 + 2^2) = 1/2, F = 2/3
    assert M.rand_error(np.zeros_like(truth), truth) == pytest.approx(1 / 3)


def test_stack_pools_rand_pair_counts_over_slices():
    # slice 1: the split of test_adapted_rand_hand_examples (S_AB 8, S_A 16, S_B 8);
    # slice 2: identical one-particle slices (S_AB = S_A = S_B = 16). Pooled:
    # precision 24/24 = 1, recall 24/32 = 3/4, F = 6/7
    truth = np.stack([row(1, 1, 1, 1), row(1, 1, 1, 1)])
    pred = np.stack([row(1, 1, 2, 2), row(1, 1, 1, 1)])
    assert M.rand_error(pred, truth) == pytest.approx(1 / 7)


# ------------------------------------------------------------------------------------------
# warping error


def yokoi_simple(code: int) -> bool:
    """Yokoi's 4-connectivity number equals 1: an independent characterisation of simple points."""
    nb = {(dy, dx): code >> k & 1 for k, (dy, dx) in enumerate(topology._N8)}
    # x1..x8 counter-clockwise from the east neighbour
    x = [nb[(0, 1)], nb[(-1, 1)], nb[(-1, 0)], nb[(-1, -1)], nb[(0, -1)], nb[(1, -1)], nb[(1, 0)], nb[(1, 1)]]
    x = x + x[:1]
    n4 = sum(x[k] - x[k] * x[k + 1] * x[k + 2] for k in (0, 2, 4, 6))
    return n4 == 1


def test_simple_point_table_matches_yokoi_connectivity_number():
    table = M.simple_point_table()
    assert [bool(v) for v in table] == [yokoi_simple(c) for c in range(256)]
    # an isolated pixel, an interior pixel and a bridge are not simple; an end point is
    assert not table[0] and not table[255]
    bridge = sum(1 << k for k, d in enumerate(topology._N8) if d in ((0, -1), (0, 1)))
    end = 1 << topology._N8.index((0, 1))
    assert not table[bridge] and table[end]


def test_simple_point_flips_keep_the_topology(rng):
    # flipping one simple pixel keeps the numbers of 4-connected particles and 8-connected
    # background components (holes + outside); flipping a non-simple one changes one of them
    def components(m):
        return ndi.label(m, FOUR)[1], ndi.label(np.pad(~m, 1, constant_values=True), np.ones((3, 3)))[1]

    for _ in range(40):
        m = blobs(rng, (24, 24), 1.5)
        simple = M.simple_points(m)
        y, x = rng.integers(1, 23, 2)
        flipped = m.copy()
        flipped[y, x] = ~flipped[y, x]
        assert (components(flipped) == components(m)) == bool(simple[y, x])


def test_warping_never_splits_merges_creates_or_removes_particles(rng):
    for _ in range(30):
        src = blobs(rng, (40, 50), 2.0)
        tgt = blobs(rng, (40, 50), 2.0)
        labels = ndi.label(src, FOUR)[0]
        warped, wl = M.warp_mask(src, tgt, labels=labels)
        np.testing.assert_array_equal(wl > 0, warped)
        # the same particles, each still one 4-connected piece, none touching another
        assert set(np.unique(wl)) == set(np.unique(labels))
        assert ndi.label(warped, FOUR)[1] == labels.max()
        for k in range(1, labels.max() + 1):
            assert ndi.label(wl == k, FOUR)[1] == 1
        # holes neither created nor filled
        bg = lambda m: ndi.label(np.pad(~m, 1, constant_values=True), np.ones((3, 3)))[1]  # noqa: E731
        assert bg(warped) == bg(src)
        # it went as far as it could: every remaining disagreement is a non-simple pixel
        assert not np.any(M.simple_points(warped) & (warped != tgt))
        assert (warped != tgt).sum() <= (src != tgt).sum()


def test_warping_error_counts_a_merger():
    # truth: two 3x2 particles separated by a background column; the proposal fills the column
    truth = np.zeros((5, 7), np.uint8)
    truth[1:4, 1:3] = truth[1:4, 4:6] = 1
    pred = np.zeros((5, 7), np.uint8)
    pred[1:4, 1:6] = 1
    # filling any of the 3 column pixels would merge the particles: 3 merger pixels of 35
    res = M.warping_error(pred, truth)
    assert (res["mergers"], res["splits"]) == (3, 0)
    assert res["error"] == pytest.approx(3 / 35)


def test_warping_error_counts_a_split():
    # truth: one 3x5 particle; the proposal cuts it with a background column. Warping removes
    # the column's top and bottom pixels (simple), but not the middle one (a bridge): 1 split
    truth = np.zeros((5, 7), np.uint8)
    truth[1:4, 1:6] = 1
    pred = truth.copy()
    pred[:, 3] = 0
    res = M.warping_error(pred, truth)
    assert (res["splits"], res["mergers"]) == (1, 0)
    assert res["error"] == pytest.approx(1 / 35)
    coords, cls = M.classify_mismatches(M.warp_mask(truth > 0, pred > 0), pred > 0)
    assert list(map(tuple, coords)) == [(2, 3)] and list(cls) == [M.SPLIT]


def test_warping_error_degenerate_cases():
    truth = np.zeros((6, 8), np.uint8)
    truth[1:3, 1:3] = truth[3:5, 5:7] = 1
    assert M.warping_error(truth, truth) == {
        "error": 0.0,
        "splits": 0,
        "mergers": 0,
        "threshold": pytest.approx(math.nan, nan_ok=True),
    }
    # an empty proposal deletes each particle down to one pixel: object deletions, not counted
    empty = np.zeros_like(truth)
    warped = M.warp_mask(truth > 0, empty > 0)
    assert warped.sum() == 2
    _, cls = M.classify_mismatches(warped, empty > 0)
    assert list(cls) == [M.OBJECT_DELETION] * 2
    assert M.warping_error(empty, truth)["error"] == 0.0
    assert M.warping_error(truth, empty)["error"] == 0.0  # only object additions


def test_warping_sweep_skips_thresholds_near_the_maximum():
    # as the publication's script: no threshold above max(prob) - 0.1, where the proposal
    # (almost) vanishes and only deletes particles
    truth = np.zeros((5, 7), np.uint8)
    truth[1:4, 1:3] = truth[1:4, 4:6] = 1
    prob = np.where(truth > 0, 0.85, 0.0)
    prob[1:4, 3] = 0.5  # fills the gap (a merger) for thresholds below 0.5
    inp = inputs._prepare(prob, truth)
    assert topology._warping_thresholds(inp, M.DEFAULT_THRESHOLDS) == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert M.warping_error(prob, truth)["threshold"] == 0.5
    assert M.warping_error(prob, truth, thresholds=(0.0, 0.1))["mergers"] == 3


# ------------------------------------------------------------------------------------------
# size distributions


def test_size_distribution_agreement_hand_example():
    truth = pd.DataFrame({"feret_min": [4.0, 5.0, 6.0], "area": [10.0, 20.0, 60.0]})
    pred = pd.DataFrame({"feret_min": [1.0, 2.0, 3.0], "area": [10.0, 20.0, 60.0]})
    out = M.size_distribution_agreement(pred, truth, columns=("feret_min", "area"))
    # mean 2 vs 5: (2 - 5)/5 = -0.6; medians 2 vs 5: -0.6; disjoint samples: KS distance 1
    assert out["feret_min_mean_relerr"] == pytest.approx(-0.6)
    assert out["feret_min_median_relerr"] == pytest.approx(-0.6)
    assert out["feret_min_ks"] == pytest.approx(1.0)
    assert (out["area_mean_relerr"], out["area_ks"]) == (0.0, 0.0)
    empty = pd.DataFrame({"feret_min": [], "area": []})
    assert math.isnan(M.size_distribution_agreement(empty, truth, ("area",))["area_ks"])


# ------------------------------------------------------------------------------------------
# evaluate_pair


def two_discs(shape=(40, 60)):
    """Make two overlapping discs (radius 10, centres 16 apart) and a probability map.

    The ground truth is split at x = 28 with a separating line; the probability map is 1 on
    their union and falls to 0 within 3 px.
    """
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d1 = np.hypot(yy - 20, xx - 20)
    d2 = np.hypot(yy - 20, xx - 36)
    union = (d1 < 10) | (d2 < 10)
    lab = np.where(union, np.where(xx < 28, 1, 2), 0)
    mask = labels_to_mask(lab)
    prob = np.clip(1 - ndi.distance_transform_edt(~union) / 3, 0, 1)
    return mask.astype(np.uint8) * 255, lab, prob


def test_evaluate_pair_identical_inputs_score_perfectly():
    mask, lab, _ = two_discs()
    res = M.evaluate_pair(mask, mask)
    for key in ("iou_image", "iou_instance", "iou_instance_truth", "youden", "ap", "f1_50"):
        assert res[key] == pytest.approx(1.0), key
    for key in (
        "pixel_error",
        "warping_error",
        "rand_error",
        "rand_error_thinned",
        "vi_error_thinned",
        "MinFeret_ks",
        "Area_mean_relerr",
    ):
        assert res[key] == pytest.approx(0.0, abs=1e-12), key
    assert (res["n_truth"], res["tp"], res["fp"], res["fn"]) == (2, 2, 0, 0)
    # a label image of the same particles scores the same as their mask
    assert M.evaluate_pair(lab, mask)["rand_error"] == pytest.approx(0.0, abs=1e-12)


def test_evaluate_pair_watershed_splits_touching_particles():
    mask, _, prob = two_discs()
    plain = M.evaluate_pair(prob, mask)
    split = M.evaluate_pair(prob, mask, watershed=True)
    # without the watershed the two touching discs are one particle at every threshold
    assert plain["f1_50"] < 1.0 and plain["rand_error"] > 0.3
    assert split["f1_50"] == 1.0 and split["rand_error"] < plain["rand_error"]
    assert 0.0 <= split["f1_50_thr"] <= 1.0


def test_evaluate_pair_sweep_crop_and_stack():
    mask, _, prob = two_discs()
    res, sweep = M.evaluate_pair(prob, mask, thresholds=(0.2, 0.5), return_sweep=True)
    assert list(sweep["threshold"]) == [0.2, 0.5]
    assert res["iou_image"] == sweep["iou_image"].max()
    assert res["iou_image_thr"] == sweep["threshold"][sweep["iou_image"].idxmax()]
    # rows below the crop are ignored
    noisy = mask.copy()
    noisy[-5:] = 255 - noisy[-5:]
    assert M.evaluate_pair(noisy, mask, crop_rows=5)["pixel_error"] == 0.0
    assert M.evaluate_pair(noisy, mask)["pixel_error"] > 0.0
    # a stack pools particles and pixels over slices
    stack = M.evaluate_pair(np.stack([mask, np.zeros_like(mask)]), np.stack([mask, mask]))
    assert (stack["slices"], stack["n_truth"], stack["tp"], stack["fn"]) == (2, 4, 2, 2)
    assert stack["iou_image"] == pytest.approx(0.5)


def test_evaluate_pair_bad_input_messages():
    mask, _, prob = two_discs()
    with pytest.raises(
        InputError, match="p.tif: shape \\(40, 60\\) does not match the ground truth t.tif \\(40, 59\\)"
    ):
        M.evaluate_pair(prob, mask[:, :-1], name="p.tif", truth_name="t.tif")
    bad = prob.copy()
    bad[3, 3] = np.nan
    with pytest.raises(InputError, match="p.tif: contains 1 NaN"):
        M.evaluate_pair(bad, mask, name="p.tif")
    with pytest.raises(InputError, match="not a binary mask"):
        M.evaluate_pair((prob * 3).astype(np.uint8), mask, pred_kind="mask")


# ------------------------------------------------------------------------------------------
# files and command line


def test_pair_files_rule(tmp_path):
    for name in ("a_prob.tif", "a_labels.tif", "b.tif", "c_mask.png", "a_overview.png", "x_prob.tif"):
        (tmp_path / "p").mkdir(exist_ok=True)
        (tmp_path / "p" / name).write_bytes(b"")
    for name in ("a_m.tif", "b_m.tif", "c.tif", "d_m.tif"):
        (tmp_path / "t").mkdir(exist_ok=True)
        (tmp_path / "t" / name).write_bytes(b"")
    pairs, unmatched_pred, unmatched_truth = M.pair_files([tmp_path / "p"], [tmp_path / "t"])
    got = {p.name: (t.name, kind) for p, t, kind, _ in pairs}
    assert got == {"a_prob.tif": ("a_m.tif", "prob"), "b.tif": ("b_m.tif", "auto"), "c_mask.png": ("c.tif", "mask")}
    assert "a_labels.tif" in pairs[0][3]  # noted as not scored
    assert [p.name for p, _ in unmatched_pred] == ["x_prob.tif"]
    assert [t.name for t, _ in unmatched_truth] == ["d_m.tif"]
    pairs, *_ = M.pair_files([tmp_path / "p"], [tmp_path / "t"], pred_kind="labels")
    assert {p.name for p, *_ in pairs} >= {"a_labels.tif"}


def test_cli_evaluate_tiny_files_with_a_bad_pair(tmp_path, capsys):
    import tifffile

    from particleseg.cli import main

    mask, lab, prob = two_discs()
    pred, truth, out = tmp_path / "pred", tmp_path / "truth", tmp_path / "out"
    pred.mkdir()
    truth.mkdir()
    tifffile.imwrite(pred / "good_prob.tif", prob.astype(np.float32))
    tifffile.imwrite(pred / "same_labels.tif", lab.astype(np.uint16))
    tifffile.imwrite(pred / "small.tif", mask[:, :-4])  # shape mismatch
    tifffile.imwrite(pred / "lonely_prob.tif", prob.astype(np.float32))  # no ground truth
    for name in ("good_m.tif", "same_m.tif", "small_m.tif"):
        tifffile.imwrite(truth / name, mask)
    argv = [
        "evaluate",
        "--pred",
        str(pred),
        "--truth",
        str(truth),
        "--out",
        str(out),
        "--thresholds",
        "0.1:0.9:0.2",
        "--watershed",
        "--quiet",
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "small.tif: shape (40, 56) does not match the ground truth" in err
    assert "lonely_prob.tif: no ground truth named lonely_m.tif" in err
    table = pd.read_csv(out / "metrics.csv")
    status = dict(zip(table["file"], table["status"]))
    assert status == {
        "lonely_prob.tif": "failed",
        "good_prob.tif": "ok",
        "same_labels.tif": "ok",
        "small.tif": "failed",
        "mean": "mean",
    }
    same = table[table["file"] == "same_labels.tif"].iloc[0]
    assert same["rand_error"] == pytest.approx(0.0, abs=1e-12) and same["ap"] == 1.0
    good = table[table["file"] == "good_prob.tif"].iloc[0]
    assert good["f1_50"] == 1.0 and good["iou_image_thr"] in (0.1, 0.3, 0.5, 0.7, 0.9)
    mean = table[table["file"] == "mean"].iloc[0]
    assert mean["iou_image"] == pytest.approx((same["iou_image"] + good["iou_image"]) / 2)
    md = (out / "metrics.md").read_text()
    assert (
        "| image | IoU (image) | IoU (instance) | Youden | pixel err | warping err | Rand err | Rand err thinned "
        "| VI/IT err thinned | AP | F1@0.5 |" in md
    )
    assert "small.tif: shape" in md
    sweep = pd.read_csv(out / "metrics_sweep.csv")
    assert sorted(sweep.loc[sweep["file"] == "good_prob.tif", "threshold"]) == [0.1, 0.3, 0.5, 0.7, 0.9]
    # outputs exist: refused without --overwrite, before any work
    assert main(argv) == 1
    assert "use --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 1


def test_cli_threshold_parser():
    import argparse

    from particleseg.cli.evaluate import parse_thresholds

    assert parse_thresholds("0:1:0.1") == M.DEFAULT_THRESHOLDS
    assert parse_thresholds("0.3,0.5") == (0.3, 0.5)
    for bad in ("0:2:0.5", "1:0:0.1", "a:b", "0:1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_thresholds(bad)


# ------------------------------------------------------------------------------------------
# the real TiO2 data


@pytest.mark.tio2
def test_tio2_manual_mask_against_itself_and_a_li_threshold(tio2_dir):
    from particleseg import io
    from particleseg.datasets import tio2_items
    from particleseg.postprocess import threshold_value

    items = tio2_items(tio2_dir)
    mask = M.read_array(items[0].mask)
    res = M.evaluate_pair(mask, mask, crop_rows=56)
    assert res["n_truth"] > 100
    for key in ("iou_image", "iou_instance", "iou_instance_truth", "youden", "ap", "f1_50"):
        assert res[key] == pytest.approx(1.0), key
    for key in ("pixel_error", "warping_error", "rand_error", "rand_error_thinned", "vi_error_thinned"):
        assert res[key] == pytest.approx(0.0, abs=1e-12), key
    # a global Li threshold of the SEM image finds the particles' area well but not the
    # particles: foreground IoU 0.85 on average over the 32 images (0.70-0.91 per image)
    ious = []
    for it in items:
        image = io.read_image(it.image)[0][:712]
        truth = M.read_array(it.mask)[:712]
        ious.append(M.foreground_iou(image > threshold_value(image, "li"), truth))
    assert np.mean(ious) == pytest.approx(0.85, abs=0.03)
    assert min(ious) > 0.6


def test_tio2_score_labels_on_a_worked_case():
    """The per-image TiO2 scores on a worked case.

    The truth has particles 1 (4x4) and 2 (2x2); the prediction finds particle 1 exactly and
    adds a false 2x2 particle elsewhere.
    """
    from particleseg.datasets import score_labels

    truth = np.zeros((10, 10), np.int32)
    truth[1:5, 1:5] = 1
    truth[7:9, 7:9] = 2
    pred = np.zeros_like(truth)
    pred[1:5, 1:5] = 5
    pred[7:9, 1:3] = 9
    s = score_labels(pred, truth)
    assert s["foreground_iou"] == pytest.approx(16 / 24)  # 16 shared of 16 + 4 + 4 pixels
    assert s["instance_iou"] == pytest.approx(0.5)  # truth average: 1 and 0
    assert s["instance_iou_pred"] == pytest.approx(0.5)  # prediction average: 1 and 0
    assert s["f1_iou50"] == pytest.approx(0.5)  # 1 TP, 1 FP, 1 FN
    assert (s["n_truth"], s["n_pred"]) == (2, 2)


# ------------------------------------------------------------------------------------------
# docstring examples


@pytest.mark.parametrize(
    "module", ["inputs", "contingency", "pixel", "instance", "isbi", "topology", "sizes", "evaluate"]
)
def test_docstring_examples_run_as_written(module):
    """The Examples sections of the metrics modules are doctests (issue 18).

    A failing example is printed with what it gave.
    """
    mod = importlib.import_module(f"particleseg.metrics.{module}")
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0, f"particleseg.metrics.{module} has no docstring examples"
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples of particleseg.metrics.{module} failed"
