"""Splitting, cleaning and filtering particles; measurements against worked-out values."""

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from particleseg.io import Calibration
from particleseg.measure import (
    convex_hull,
    feret_values,
    fit_ellipse,
    measure_particles,
    summarize,
    traced_perimeter,
    with_units,
)
from particleseg.postprocess import (
    border_labels,
    fill_holes,
    intensity_filter,
    label_mask,
    labels_to_mask,
    merge_touching,
    particle_scores,
    relabel_kept_first,
    remove_small,
    remove_uncertain,
    shape_filter,
    split_touching,
    threshold_value,
)


def two_touching_disks(r=10, gap=18):
    mask = np.zeros((40, 70), bool)
    for cx in (20, 20 + gap):
        rr, cc = disk((20, cx), r, shape=mask.shape)
        mask[rr, cc] = True
    return mask


def test_label_mask_uses_four_connectivity():
    m = np.zeros((5, 5), bool)
    m[1, 1] = m[2, 2] = True  # diagonal neighbours: two particles, as in annotated masks
    assert label_mask(m).max() == 2


def test_distance_transform_watershed_splits_two_disks():
    mask = two_touching_disks()
    assert label_mask(mask).max() == 1
    lab = split_touching(mask, h=1.0)
    assert lab.max() == 2
    assert np.array_equal(lab > 0, mask)  # no foreground lost
    # the cut runs between the centres
    assert lab[20, 20] != lab[20, 38]


def test_h_sets_the_saddle_depth_that_splits():
    # distance-transform peaks of 10, saddle of 5 between the disks: a dynamic of 5
    mask = two_touching_disks()
    assert split_touching(mask, h=4.5).max() == 2
    assert split_touching(mask, h=5.5).max() == 1


def test_h_maxima_of_a_profile():
    from particleseg.postprocess import h_maxima

    f = np.array([[0, 3, 1, 5, 4, 9, 0]], float)
    # peaks 3 (dynamic 2: saddle 1 towards 5), 5 (dynamic 1: saddle 4 towards 9), 9 (global)
    assert np.flatnonzero(h_maxima(f, 1.5)).tolist() == [1, 5]
    assert np.flatnonzero(h_maxima(f, 2.5)).tolist() == [5]


def test_seeds_from_a_distance_map():
    mask = two_touching_disks()
    dist = np.zeros(mask.shape, np.float32)
    for cx in (20, 38):
        yy, xx = np.mgrid[:40, :70]
        dist = np.maximum(dist, np.clip(1 - np.hypot(yy - 20, xx - cx) / 10, 0, 1))
    lab = split_touching(mask, dist, seed_threshold=0.5)
    assert lab.max() == 2
    # a high seed threshold removes seeds; the unseeded foreground is still kept
    lab = split_touching(mask, dist, seed_threshold=0.99)
    assert np.array_equal(lab > 0, mask)


def _peak(shape, cy, cx, radius, height):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return height * np.clip(1 - np.hypot(yy - cy, xx - cx) / radius, 0, 1)


def test_seed_depth_gives_a_small_particle_with_a_low_peak_its_seed():
    """Give a small particle with a low but distinct peak its own seed.

    Its distance peak (0.4) stays below the seed level, so by the seed level alone it joins its
    neighbour; as a peak about 0.3 deep it gets its own seed, and a deeper seed depth ignores it.
    """
    shape = (40, 70)
    dist = np.maximum(_peak(shape, 20, 20, 12, 1.0), _peak(shape, 20, 38, 7, 0.4)).astype(np.float32)
    mask = dist > 0.02
    assert ndi.label(mask)[0].max() == 1
    assert split_touching(mask, dist, seed_threshold=0.5).max() == 1
    lab = split_touching(mask, dist, seed_threshold=0.1, seed_depth=0.1)
    assert lab.max() == 2
    assert lab[20, 20] != lab[20, 38] and lab[20, 38] > 0
    # the small peak rises 0.4 - saddle (about 0.08) = 0.32 above its saddle: deeper asks are one seed
    assert split_touching(mask, dist, seed_threshold=0.1, seed_depth=0.4).max() == 1
    # peaks lower than the seed level seed nothing
    assert split_touching(mask, dist, seed_threshold=0.45, seed_depth=0.1).max() == 1


def test_merge_touching_joins_the_pieces_the_network_saw_no_gap_between():
    """Merge the watershed's pieces of one particle, not two particles with a gap between them.

    On the left, an elongated particle the watershed cut into three pieces (its distance map has
    three peaks); the foreground probability stays 0.99 across the cuts. On the right, two
    particles touching along a line where the probability dips to 0.75, as between real
    neighbours. At 0.9 the three pieces become one particle with the number of the first, the
    two neighbours stay apart; from a level the border's mean does not reach, nothing merges.
    """
    shape = (40, 120)
    dist = np.maximum.reduce([_peak(shape, 20, cx, 9, 1.0) for cx in (12, 26, 40)])
    dist = np.maximum(dist, np.maximum(_peak(shape, 20, 80, 10, 1.0), _peak(shape, 20, 98, 10, 1.0)))
    mask = dist > 0.02
    labels = split_touching(mask, dist.astype(np.float32), seed_threshold=0.1, seed_depth=0.2)
    assert labels.max() == 5 and ndi.label(mask)[1] == 2
    fg = np.where(mask, 0.99, 0.0).astype(np.float32)
    fg[:, 89] = np.where(mask[:, 89], 0.75, 0)  # the dip between the two neighbours on the right
    merged = merge_touching(labels, fg, 0.9)
    left = np.unique(labels[:, :60])[1:]
    assert np.all(merged[labels > 0][np.isin(labels[labels > 0], left)] == left.min())
    assert len(np.unique(merged[:, 60:])) == 3 and np.array_equal(merged[:, 60:], labels[:, 60:])
    assert merged.dtype == np.int32
    # the cuts on the left average 0.99, the line on the right 0.75 (0.99 at its ends)
    assert np.array_equal(merge_touching(labels, fg, 0.995), labels)
    assert np.array_equal(merge_touching(labels, fg, 0), labels)
    assert len(np.unique(merge_touching(labels, fg, 0.7))) == 3  # everything that touches joins: two particles


def test_seed_depth_treats_each_region_on_its_own():
    """Another region of the mask does not change a region's seeds (strips rely on it).

    On the left, two touching particles and a small one alone whose peak (0.15) is lower than
    the seed depth; on the right, a large particle. With the background at 0 in the h-maximum
    transform, the large particle would raise the background, and the small one's pixels with
    it, to a plateau that is no peak.
    """
    shape = (40, 120)
    dist = np.maximum(_peak(shape, 14, 15, 10, 1.0), _peak(shape, 14, 28, 6, 0.4))
    dist = np.maximum(dist, _peak(shape, 33, 50, 5, 0.15))
    dist = np.maximum(dist, _peak(shape, 20, 95, 15, 0.9)).astype(np.float32)
    mask = dist > 0.02
    assert ndi.label(mask)[0].max() == 3
    both, seeds = split_touching(mask, dist, seed_threshold=0.05, seed_depth=0.2, return_markers=True)
    left = mask.copy()
    left[:, 70:] = False
    alone, seeds_alone = split_touching(left, dist, seed_threshold=0.05, seed_depth=0.2, return_markers=True)
    np.testing.assert_array_equal(seeds[:, :70] > 0, seeds_alone[:, :70] > 0)
    assert seeds[33, 50] > 0 and both.max() == 4
    # the same particles on the left (their numbers may differ)
    pairs = np.unique(np.stack([both[:, :70].ravel(), alone[:, :70].ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(both[:, :70])) == len(np.unique(alone[:, :70])) == 4


def test_empty_mask_gives_no_particles():
    assert split_touching(np.zeros((20, 20), bool)).max() == 0


def test_remove_small_and_border():
    lab = np.zeros((20, 20), np.int32)
    lab[0:3, 0:3] = 1  # 9 px, at the border
    lab[10:12, 10:12] = 2  # 4 px
    lab[5:9, 12:17] = 3  # 20 px
    out = remove_small(lab, 5)
    assert set(np.unique(out)) == {0, 1, 3}
    assert list(border_labels(lab)) == [1]


def test_fill_holes_only_inside_one_particle():
    lab = np.zeros((20, 30), np.int32)
    lab[2:10, 2:10] = 1
    lab[5, 5] = 0  # a hole in particle 1
    lab[2:10, 12:16] = 2
    lab[2:10, 18:22] = 3
    lab[2:4, 16:18] = 2
    lab[8:10, 16:18] = 3  # background enclosed by particles 2 and 3 together
    out = fill_holes(lab)
    assert out[5, 5] == 1
    assert out[5, 17] == 0


@pytest.mark.parametrize("method", ["li", "otsu", "mean", "median"])
def test_intensity_filter_rejects_dark_particles(method, rng):
    image = rng.normal(40, 5, (60, 60))
    lab = np.zeros((60, 60), np.int32)
    lab[5:20, 5:20] = 1
    lab[30:45, 30:45] = 2
    image[lab == 1] = 200  # real particle
    image[lab == 2] = 35  # artifact: segmented, but as dark as the background
    ids, keep, thr = intensity_filter(lab, image, method)
    assert list(ids) == [1, 2] and list(keep) == [True, False]
    ids, keep, _ = intensity_filter(lab, 255 - image, method, polarity="dark")
    assert list(keep) == [True, False]


def test_threshold_value_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown threshold method"):
        threshold_value(np.arange(10), "magic")


def test_shape_filter_reasons():
    # the ranges' names (the parameter vocabulary) refer to ImageJ's columns
    t = pd.DataFrame(
        {"Area": [10.0, 100.0, 1000.0], "Circ.": [0.9, 0.5, 0.9], "Feret": [4.0, 4.0, 9.0], "MinFeret": [2.0, 2.0, 3.0]}
    )
    r = shape_filter(t, {"area": (50, 500), "circularity": (0.7, None)})
    assert list(r) == ["area<50", "circularity<0.7", "area>500"]
    assert list(shape_filter(t, {"feret_ratio": (None, 2.5), "feret_min": (2.5, None)})) == [
        "feret_min<2.5",
        "feret_min<2.5",
        "feret_ratio>2.5",
    ]
    with pytest.raises(ValueError, match="unknown shape filter"):
        shape_filter(t, {"colour": (1, 2)})


def test_particle_scores_are_means():
    lab = np.array([[1, 1, 0, 2]])
    ids, s = particle_scores(lab, np.array([[0.2, 0.4, 0.9, 1.0]]))
    assert list(ids) == [1, 2] and np.allclose(s, [0.3, 1.0])


def test_remove_uncertain_uses_the_mean_probability():
    lab = np.array([[1, 1, 0, 2, 2, 3]])
    prob = np.array([[0.6, 0.9, 0.0, 0.95, 1.0, 0.5]])
    out = remove_uncertain(lab, prob, 0.8)
    assert out.tolist() == [[0, 0, 0, 2, 2, 0]]
    assert remove_uncertain(lab, prob, 0.0).tolist() == lab.tolist()
    assert not remove_uncertain(np.zeros((3, 3), int), np.ones((3, 3)), 0.9).any()


# --------------------------------------------------------------------------------------------
# measurements


def test_labels_to_mask_separates_for_four_and_eight_connectivity():
    lab = np.zeros((6, 9), np.int32)
    lab[1:5, 1:4] = 1
    lab[1:5, 4:7] = 2  # touches 1 along an edge
    lab[5, 7] = 3  # touches 2 only at a corner
    eight = labels_to_mask(lab)
    assert ndi.label(eight, np.ones((3, 3)))[1] == 3 and ndi.label(eight)[1] == 3
    # of two as large, the larger label gives up the line
    assert eight[1:5, 4].sum() == 0 and eight[1:5, 1:4].all()
    # the larger particle gives way to the one-pixel particle at their corner
    assert eight[5, 7] and not eight[4, 6]
    four = labels_to_mask(lab, connectivity=1)
    assert four[5, 7] and four[4, 6] and ndi.label(four)[1] == 3
    # a stack slice by slice
    assert np.array_equal(labels_to_mask(np.stack([lab, lab]))[1], eight)


def test_relabel_kept_first():
    lab = np.array([[0, 4, 7, 9]])
    lut = relabel_kept_first(lab, np.array([9, 4]))
    assert lut[lab].tolist() == [[0, 1, 3, 2]]


def test_traced_perimeter_as_imagej():
    # a 3 x 2 rectangle: no corner is cut (ImageJ counts a corner at every vertex whose incoming
    # side is longer than 1 and at every other vertex of a staircase)
    rect = np.array([[0, 0], [3, 0], [3, 2], [0, 2]])
    assert traced_perimeter(rect) == pytest.approx(10 - 4 * (2 - np.sqrt(2)))
    # a staircase of 1-px sides between long sides: 2 of the run's 4 vertices count
    stair = np.array([[0, 0], [5, 0], [5, 3], [4, 3], [4, 4], [3, 4], [3, 5], [0, 5]])
    n_corners = 4 + 2  # the vertices after the 4 long sides, and every other one of the run
    assert traced_perimeter(stair) == pytest.approx(20 - n_corners * (2 - np.sqrt(2)))


def test_feret_values_of_a_rectangle_hull():
    hull = convex_hull(np.array([[0, 0], [4, 0], [4, 3], [0, 3], [2, 0]]))
    assert hull.tolist() == [[0, 0], [0, 3], [4, 3], [4, 0]]  # ImageJ's order, no collinear vertex
    v = feret_values(hull, pixel_size=2.0)
    assert v["Feret"] == pytest.approx(10) and v["MinFeret"] == pytest.approx(6)
    # of the two diagonals, ImageJ reports the first pair in hull order: (0, 0)-(4, 3)
    assert (v["FeretX"], v["FeretY"]) == (0, 0)
    assert v["FeretAngle"] == pytest.approx(180 - np.degrees(np.arctan2(3, 4)))


def test_fit_ellipse_of_an_axis_aligned_bar():
    major, minor, angle = fit_ellipse(np.ones((3, 12), bool))
    assert np.pi * major * minor / 4 == pytest.approx(36)  # same area
    # second moments of uniform unit squares: variance (w^2)/12 per axis, ratio of the axes w/h
    assert major / minor == pytest.approx(12 / 3, rel=1e-6) and angle == 0
    assert fit_ellipse(np.ones((12, 3), bool))[2] == pytest.approx(90)


def test_measurements_of_a_calibrated_rectangle_and_disk():
    lab = np.zeros((60, 80), np.int32)
    lab[10:20, 10:40] = 1  # 30 x 10 px
    rr, cc = disk((40, 60), 10.5)
    lab[rr, cc] = 2
    t = measure_particles(lab, calibration=Calibration(2.0, "nm"))
    assert list(t.columns[:4]) == ["label", "Area", "Mean", "StdDev"]
    rect, circ = t.iloc[0], t.iloc[1]
    assert rect.Area == 300 * 4
    assert rect.Feret == pytest.approx(2 * np.hypot(30, 10))
    assert rect.MinFeret == pytest.approx(20)
    assert rect.Width == 60 and rect.Height == 20 and (rect.BX, rect.BY) == (20, 20)
    assert rect.X == pytest.approx(2 * 25) and rect.Y == pytest.approx(2 * 15)
    assert rect["Perim."] == pytest.approx(2 * (80 - 4 * (2 - np.sqrt(2))))
    assert rect.Solidity == 1 and rect.AR == pytest.approx(3, rel=1e-6) and rect.Angle == 0
    assert rect.Round == pytest.approx(1 / rect.AR)
    assert circ.ECD == pytest.approx(2 * np.sqrt(circ.Area / np.pi))
    assert circ.MinFeret == pytest.approx(42, abs=1e-9)  # 21 pixels across, 2 nm each
    assert circ["Circ."] > 0.9 and rect["Circ."] < 0.8
    assert np.isnan(rect.Mean)  # no intensity image


def test_units_in_the_csv_header():
    t = measure_particles(np.pad(np.ones((3, 3), np.int32), 2), calibration=Calibration(0.5, "µm"))
    cols = list(with_units(t, "µm").columns)
    assert "Area [µm^2]" in cols and "Perim. [µm]" in cols and "MinFeret [µm]" in cols
    assert "FeretAngle [deg]" in cols and "FeretX [px]" in cols and "Circ." in cols and "label" in cols


def test_tiny_particles_are_measured():
    lab = np.zeros((10, 10), np.int32)
    lab[2, 2] = 1
    lab[5, 5:7] = 2
    t = measure_particles(lab)
    assert t.MinFeret.tolist() == [1.0, 1.0]
    assert (t["Circ."] <= 1).all() and np.isfinite(t["Circ."]).all()
    assert t["Perim."][0] == pytest.approx(4 - 2 * (2 - np.sqrt(2)))


def test_a_particle_is_measured_as_its_traced_roi():
    # holes are part of the ROI, as ImageJ's Measure of the traced outline counts them
    lab = np.zeros((9, 9), np.int32)
    lab[1:8, 1:8] = 1
    lab[4, 4] = 0
    assert measure_particles(lab).Area[0] == 49


def test_intensity_and_border_columns(rng):
    lab = np.zeros((20, 20), np.int32)
    lab[0:4, 0:4] = 1
    lab[8:12, 8:12] = 2
    img = np.arange(400, dtype=float).reshape(20, 20)
    t = measure_particles(lab, img)
    assert t.touches_border.tolist() == [True, False]
    assert t.Mean[1] == pytest.approx(img[8:12, 8:12].mean())
    assert t.Max[1] == img[11, 11] and t.Min[1] == img[8, 8]
    assert t.StdDev[1] == pytest.approx(img[8:12, 8:12].std(ddof=1))
    assert t.RawIntDen[1] == img[8:12, 8:12].sum() and t.IntDen[1] == t.Area[1] * t.Mean[1]
    # ImageJ's median of a float image averages the two middle values
    assert t.Median[1] == pytest.approx(np.median(img[8:12, 8:12]))
    # integer images: the value at which the count passes half, as ImageJ's histogram median
    assert measure_particles(lab, img.astype(np.uint16)).Median[1] == np.sort(img[8:12, 8:12].ravel())[8]
    yy, xx = np.mgrid[8:12, 8:12]
    w = img[8:12, 8:12]
    assert t.XM[1] == pytest.approx(((xx + 0.5) * w).sum() / w.sum())
    assert t.YM[1] == pytest.approx(((yy + 0.5) * w).sum() / w.sum())


def test_summary_and_nanomaterial_criterion():
    t = pd.DataFrame(
        {
            "MinFeret": [50.0, 80.0, 120.0],
            "Feret": [60.0, 90, 130],
            "ECD": [55.0, 85, 125],
            "Area": [1.0, 2, 3],
            "kept": [True, True, True],
        }
    )
    s = summarize(t, "nm", 1.0)
    assert s["count"] == 3 and s["MinFeret_median"] == 80 and s["Area_median"] == 2
    assert s["unit"] == "nm" and s["area_unit"] == "nm^2"
    assert s["MinFeret_median_nm"] == 80 and s["nano_by_median_MinFeret"] is True
    s = summarize(t, "µm", 1000.0)  # the same numbers in micrometres are far above 100 nm
    assert s["nano_by_median_MinFeret"] is False
    assert summarize(t, "px", None)["nano_by_median_MinFeret"] is None
    t.loc[0, "kept"] = False
    assert summarize(t)["count"] == 2


def test_no_particles_gives_an_empty_table():
    t = measure_particles(np.zeros((10, 10), np.int32))
    assert len(t) == 0 and "MinFeret" in t.columns
    assert summarize(t.assign(kept=[]))["count"] == 0
