"""Splitting, cleaning and filtering particles; measurements against worked-out values."""

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from particleseg.io import Calibration
from particleseg.measure import feret_diameters, measure_particles, summarize
from particleseg.postprocess import (
    border_labels,
    fill_holes,
    intensity_filter,
    label_mask,
    particle_scores,
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


def test_empty_mask_gives_no_particles():
    assert split_touching(np.zeros((20, 20), bool)).max() == 0


def test_remove_small_and_border():
    lab = np.zeros((20, 20), np.int32)
    lab[0:3, 0:3] = 1      # 9 px, at the border
    lab[10:12, 10:12] = 2  # 4 px
    lab[5:9, 12:17] = 3    # 20 px
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
    t = pd.DataFrame({"area": [10.0, 100.0, 1000.0], "circularity": [0.9, 0.5, 0.9]})
    r = shape_filter(t, {"area": (50, 500), "circularity": (0.7, None)})
    assert list(r) == ["area<50", "circularity<0.7", "area>500"]
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


def test_feret_of_a_rotated_rectangle():
    # rectangle with sides (3, 4) -> length 5 and (-8, 6) -> length 10
    pts = np.array([[0, 0], [3, 4], [-5, 10], [-8, 6]])
    fmax, amax, fmin, amin = feret_diameters(pts)
    assert fmax == pytest.approx(np.hypot(5, 10))
    assert fmin == pytest.approx(5)
    # narrowest along (3, 4); y points down on screen, so the angle is -atan(4/3) mod 180
    assert amin == pytest.approx(180 - np.degrees(np.arctan2(4, 3)))


def test_measurements_of_a_calibrated_rectangle_and_disk():
    lab = np.zeros((60, 80), np.int32)
    lab[10:20, 10:40] = 1  # 30 x 10 px
    rr, cc = disk((40, 60), 10.5)
    lab[rr, cc] = 2
    t = measure_particles(lab, calibration=Calibration(2.0, "nm"))
    rect, circ = t.iloc[0], t.iloc[1]
    assert rect.area == 300 * 4
    assert rect.feret_max == pytest.approx(2 * np.hypot(30, 10))
    assert rect.feret_min == pytest.approx(20)
    assert rect.feret_min_angle == pytest.approx(90)  # narrowest vertically
    assert rect.bbox_width == 60 and rect.bbox_height == 20
    assert rect.centroid_x == pytest.approx(2 * 25) and rect.centroid_y == pytest.approx(2 * 15)
    assert rect.solidity == 1
    assert circ.ecd == pytest.approx(2 * np.sqrt(circ.area / np.pi))
    assert circ.feret_min == pytest.approx(42, abs=1e-9)  # 21 pixels across, 2 nm each
    assert circ.circularity > 0.9 and rect.circularity < 0.7
    assert t.unit.tolist() == ["nm", "nm"]


def test_tiny_particles_are_measured():
    lab = np.zeros((10, 10), np.int32)
    lab[2, 2] = 1
    lab[5, 5:7] = 2
    t = measure_particles(lab)
    assert t.feret_min.tolist() == [1.0, 1.0]
    assert (t.circularity <= 1).all() and np.isfinite(t.circularity).all()


def test_intensity_and_border_columns(rng):
    lab = np.zeros((20, 20), np.int32)
    lab[0:4, 0:4] = 1
    lab[8:12, 8:12] = 2
    img = np.arange(400, dtype=float).reshape(20, 20)
    t = measure_particles(lab, img)
    assert t.touches_border.tolist() == [True, False]
    assert t.mean_intensity[1] == pytest.approx(img[8:12, 8:12].mean())
    assert t.max_intensity[1] == img[11, 11]


def test_summary_and_nanomaterial_criterion():
    t = pd.DataFrame({"feret_min": [50.0, 80.0, 120.0], "feret_max": [60.0, 90, 130], "ecd": [55.0, 85, 125],
                      "area": [1.0, 2, 3], "kept": [True, True, True]})
    s = summarize(t, "nm", 1.0)
    assert s["count"] == 3 and s["feret_min_median"] == 80
    assert s["median_feret_min_nm"] == 80 and s["nano_by_median_feret"] is True
    s = summarize(t, "µm", 1000.0)  # the same numbers in micrometres are far above 100 nm
    assert s["nano_by_median_feret"] is False
    assert summarize(t, "px", None)["nano_by_median_feret"] is None
    t.loc[0, "kept"] = False
    assert summarize(t)["count"] == 2


def test_no_particles_gives_an_empty_table():
    t = measure_particles(np.zeros((10, 10), np.int32))
    assert len(t) == 0 and "feret_min" in t.columns
    assert summarize(t.assign(kept=[]))["count"] == 0
