"""particleseg.distance: the fast distance transform returns SciPy's values exactly."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from conftest import REPO
from particleseg import distance
from particleseg.autoscale import granulometric_diameter, particle_mask
from particleseg.io import read_image
from particleseg.preprocess import detect_data_bar

SAMPLE = REPO / "python" / "particleseg" / "data" / "sample_sem.tif"


def _sample_mask() -> np.ndarray:
    """Return the particle mask the size estimate measures on the shipped raw SEM TIFF (data bar cropped)."""
    image, _ = read_image(SAMPLE)
    return particle_mask(image[: image.shape[0] - detect_data_bar(image)], "bright")


def test_edt_is_installed_with_the_package():
    # the speed of the size estimate depends on it; a missing dependency must not pass unseen
    assert distance._edt is not None


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40)), elements=st.booleans()))
def test_same_values_as_scipy_on_any_mask(mask):
    np.testing.assert_array_equal(distance.distance_transform(mask), ndi.distance_transform_edt(mask))


def test_same_values_as_scipy_on_a_real_sem_mask():
    mask = _sample_mask()
    fast = distance.distance_transform(mask)
    assert fast.dtype == np.float64
    np.testing.assert_array_equal(fast, ndi.distance_transform_edt(mask))
    np.testing.assert_array_equal(distance.distance_transform(~mask), ndi.distance_transform_edt(~mask))


def test_the_largest_side_and_a_mask_without_background_match_scipy():
    # one background pixel in a corner: distances up to the whole side, squared still exact
    # in float32; and no background pixel at all, where edt gives inf and SciPy is used
    mask = np.ones((8, distance._EDT_MAX_SIDE), bool)
    mask[0, 0] = False
    np.testing.assert_array_equal(distance.distance_transform(mask), ndi.distance_transform_edt(mask))
    full = np.ones((5, 7), bool)
    np.testing.assert_array_equal(distance.distance_transform(full), ndi.distance_transform_edt(full))


def test_without_edt_the_results_are_the_same(monkeypatch):
    mask = _sample_mask()
    fast = granulometric_diameter(mask)
    monkeypatch.setattr(distance, "_edt", None)
    assert granulometric_diameter(mask) == fast
