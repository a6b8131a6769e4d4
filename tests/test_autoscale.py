"""Automatic polarity and scale (issue 13).

The estimators on images of known answer, and the pipeline's use of them (inverted = dark,
given size = equivalent rescale, refinement).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from conftest import REPO
from particleseg import autoscale
from particleseg.errors import ParticlesegWarning
from particleseg.models import load_bundle
from particleseg.pipeline import SegmentParams, choose_scale, invert, segment_image
from particleseg.preprocess import detect_data_bar

SAMPLE = REPO / "python" / "particleseg" / "data" / "sample_sem.tif"


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle("default")


def disks(shape, centres, radius, inside=200.0, outside=40.0, noise=4.0, seed=0):
    img = np.full(shape, outside, np.float32)
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 < radius**2
    for cy, cx in centres:
        y0, x0 = cy - r, cx - r
        ys, xs = slice(max(y0, 0), min(cy + r + 1, shape[0])), slice(max(x0, 0), min(cx + r + 1, shape[1]))
        img[ys, xs][disk[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]] = inside
    return img + np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)


def grid(shape, radius, spacing):
    return [
        (y, x)
        for y in range(spacing // 2, shape[0] - radius, spacing)
        for x in range(spacing // 2, shape[1] - radius, spacing)
    ]


@pytest.mark.parametrize("radius", [3, 8, 25, 60, 150])
def test_granulometric_diameter_of_disks(radius):
    shape = (max(256, 5 * radius), max(256, 5 * radius))
    mask = disks(shape, grid(shape, radius, int(3 * radius)), radius, noise=0) > 100
    d = autoscale.granulometric_diameter(mask)
    assert abs(d / (2 * radius) - 1) < 0.12


def test_granulometry_sees_particles_not_agglomerates():
    # rows of touching disks (an agglomerate 8 particles long): the particles' size, not the row's
    shape, r = (200, 400), 12
    centres = [(y, 30 + 2 * r * i) for y in (40, 100, 160) for i in range(8)]
    d = autoscale.granulometric_diameter(disks(shape, centres, r, noise=0) > 100)
    assert abs(d / (2 * r) - 1) < 0.15


def scanned_diameter(mask):
    """Return the granulometric diameter by a scan of every radius up to the crossing (the former way)."""
    radii = 1.1 ** np.arange(80)
    radii = radii[radii < max(mask.shape) / 2]
    spectrum = autoscale.opening_spectrum(mask, radii)
    below = np.nonzero(spectrum < 0.5)[0]
    if not len(below):
        return float(2 * radii[-1])
    i = below[0]
    if i == 0:
        return None
    a0, a1 = spectrum[i - 1], spectrum[i]
    t = (a0 - 0.5) / max(a0 - a1, 1e-12)
    return float(2 * np.exp(np.log(radii[i - 1]) + t * (np.log(radii[i]) - np.log(radii[i - 1]))))


@pytest.mark.parametrize("seed", range(6))
def test_bisection_finds_the_crossing_a_scan_finds(seed):
    """Random particles of mixed sizes and shapes, noise specks, and a real SEM image's mask."""
    rng = np.random.default_rng(seed)
    shape = (300, 400)
    img = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(5, 60))):
        r = float(rng.uniform(1.5, 30))
        cy, cx = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        ry, rx = r * rng.uniform(0.5, 1.5), r * rng.uniform(0.5, 1.5)
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = 1
    mask = (img + rng.normal(0, 0.3 * (seed % 3), shape)) > 0.5
    assert autoscale.granulometric_diameter(mask) == scanned_diameter(mask)
    if seed == 0:
        sample = autoscale.particle_mask(tifffile.imread(SAMPLE)[:712].astype(np.float32), "bright")
        assert autoscale.granulometric_diameter(sample) == scanned_diameter(sample)


def test_chunked_moments_of_the_polarity_cues_are_numpys():
    """The class deviations and the skewness by chunks of rows: NumPy's and SciPy's values."""
    from scipy.stats import skew

    rng = np.random.default_rng(4)
    values = rng.gamma(2.0, 10.0, (300, 70)).astype(np.float32)
    mask = values > 20
    assert autoscale._std(values, mask) == pytest.approx(values[mask].astype(np.float64).std(), rel=1e-12)
    assert autoscale._std(values, np.zeros_like(mask)) == 0.0
    assert autoscale._skewness(values) == pytest.approx(skew(values.astype(np.float64), axis=None), rel=1e-9)
    chunked = autoscale._row_chunks(values, chunk=1000)
    assert len(chunked) == 22 and chunked[0] == slice(0, 14)  # 14 rows of 70 pixels per chunk


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_polarity_of_disks(polarity):
    img = disks((256, 256), grid((256, 256), 14, 60), 14)
    if polarity == "dark":
        img = invert(img)
    assert autoscale.estimate_polarity(img) == polarity
    est = autoscale.estimate_image(img)
    assert est.polarity == polarity and est.in_range
    assert abs(est.particle_size / 28 - 1) < 0.3


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_polarity_of_a_dense_packing_that_fills_the_frame(polarity, monkeypatch):
    """Close-packed spheres: the connectivity cue decides.

    Close-packed spheres (a colloidal crystal) cover most of the frame and give the gray values
    no bright tail, which misleads the frame and skewness cues; the connectivity cue (the
    background is one web around the particles) decides.
    """
    r = 20
    centres = [
        (y, x + (r if row % 2 else 0))
        for row, y in enumerate(range(r, 300, int(1.75 * r)))
        for x in range(0, 300, 2 * r + 2)
    ]
    img = disks((300, 320), centres, r, inside=170.0, outside=60.0, noise=8.0)
    img[disks((300, 320), centres, r - 6, noise=0) > 100] = 150.0  # flat centres, brighter rims
    if polarity == "dark":
        img = invert(img)
    assert autoscale.estimate_polarity(img) == polarity
    monkeypatch.setattr(autoscale, "CONNECTED_WEIGHT", 0.0)
    monkeypatch.setattr(autoscale, "SOLIDITY_WEIGHT", 0.0)
    assert autoscale.estimate_polarity(img) != polarity  # the three older cues alone get it wrong


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_polarity_of_agglomerates_on_a_textured_background(polarity, monkeypatch):
    """Flat, overlapping particles in agglomerates on a textured support: the solidity cue decides.

    The textured background is the more varied class, which misleads the variance cue, and the
    agglomerates hold much of the particle class, which weakens the connectivity cue; the
    particles (disks, even when they overlap) are solid, the background between them is not.
    """
    rng = np.random.default_rng(1)
    centres = [(int(rng.integers(0, 256)), int(rng.integers(0, 256))) for _ in range(140)]
    particles = disks((256, 256), centres, 12, noise=0) > 100
    texture = 25 * ndi.gaussian_filter(rng.normal(0, 1, (256, 256)), 2)
    img = np.where(particles, 170 + rng.normal(0, 2, (256, 256)), 80 + texture).astype(np.float32)
    if polarity == "dark":
        img = invert(img)
    assert autoscale.estimate_polarity(img) == polarity
    solid, web = (autoscale._solidity(ndi.binary_opening(m)) for m in (particles, ~particles))
    assert solid > web + 0.15  # agglomerates 0.66, the background between them 0.45
    monkeypatch.setattr(autoscale, "SOLIDITY_WEIGHT", 0.0)
    assert autoscale.estimate_polarity(img) != polarity  # the four older cues get it wrong


def test_large_image_with_small_particles_uses_a_full_resolution_crop():
    shape, r = (2400, 2400), 4
    img = disks(shape, grid(shape, r, 20), r)
    d = autoscale.estimate_particle_size(img, "bright")
    assert abs(d / (2 * r) - 1) < 0.3


def test_constant_image_has_no_estimate():
    est = autoscale.estimate_image(np.full((64, 64), 7.0))
    assert est.particle_size is None and est.polarity == "bright" and not est.in_range
    assert autoscale.polarity_score(np.full((64, 64), 7.0)) == 0


@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_pure_noise_has_no_particle_size_but_small_particles_do(kind):
    """White noise, smoothed and opened, looks like 5-px "particles".

    The permutation check (the same gray values shuffled over the pixels) recognises it; disks
    of 6 px in as much noise keep their estimate.
    """
    rng = np.random.default_rng(1)
    noise = rng.normal(100, 20, (300, 300)) if kind == "gaussian" else rng.integers(0, 256, (300, 300)).astype(float)
    assert autoscale.estimate_image(noise).particle_size is None
    img = disks((300, 300), grid((300, 300), 3, 15), 3.0, inside=140, outside=100, noise=20)
    d = autoscale.estimate_particle_size(img, "bright")
    assert d is not None and abs(d / 6 - 1) < 0.35


def test_pure_noise_is_not_blown_up_into_particles(default_bundle):
    """Without the check, noise was segmented into thousands of particles.

    It was estimated at 5 px, resampled 4.8 times and segmented into 7206 particles (512x512).
    """
    noise = np.clip(np.random.default_rng(0).normal(100, 20, (256, 256)), 0, 255).astype(np.uint8)
    with pytest.warns(ParticlesegWarning, match="no particles found"):
        seg = segment_image(noise, default_bundle, SegmentParams(crop_rows=0))
    assert seg.labels.max() == 0
    assert seg.scale.factor == 1 and seg.scale.particle_size is None and not seg.scale.auto_size


def test_sample_is_bright_and_shown_as_it_is(default_bundle):
    image = tifffile.imread(SAMPLE)
    work = image[: image.shape[0] - detect_data_bar(image)]
    scale = choose_scale(work, default_bundle, SegmentParams().resolved(default_bundle))
    assert scale.polarity == "bright" and scale.polarity_source == "estimated"
    assert scale.size_source == "estimated" and scale.factor == 1.0  # in the trained range


@pytest.mark.slow
def test_inverted_image_segments_like_the_original(default_bundle):
    """A dark-on-bright image (the sample inverted) gives the sample's particles, with no flag."""
    image = tifffile.imread(SAMPLE)[:400, :400].astype(np.float32)
    ref = segment_image(image, default_bundle, SegmentParams(crop_rows=0, polarity="bright"))
    inv = invert(image)
    given = segment_image(inv, default_bundle, SegmentParams(crop_rows=0, polarity="dark"))
    np.testing.assert_array_equal(given.labels, ref.labels)
    auto = segment_image(inv, default_bundle, SegmentParams(crop_rows=0))
    assert auto.scale.polarity == "dark" and auto.scale.polarity_source == "estimated"
    np.testing.assert_array_equal(auto.labels, ref.labels)


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_a_weak_polarity_score_is_checked_by_the_network(default_bundle, polarity):
    """Dense particles that cover 60 % of the image: the gray values alone point the wrong way.

    The score is weak (and wrong), so both polarities go through the network; in the wrong one
    the network takes the background web for particles, and the right polarity is chosen. The
    result is the one the polarity given would have given.
    """
    from particleseg.simulate import simulate_sem_image

    sim = simulate_sem_image((256, 256), rng=4, particle_size=24, coverage=0.6, empty_fraction=0)
    image = sim.image if polarity == "bright" else invert(sim.image)
    score = autoscale.polarity_score(image)
    assert abs(score) < autoscale.POLARITY_CHECK_BELOW
    assert autoscale.polarity_from_score(score, "bright") != polarity  # the score alone is wrong
    auto = segment_image(image, default_bundle, SegmentParams(progress=False))
    assert (auto.scale.polarity, auto.scale.polarity_source) == (polarity, "compared")
    given = segment_image(image, default_bundle, SegmentParams(progress=False, polarity=polarity))
    assert given.scale.polarity_source == "given"
    np.testing.assert_array_equal(auto.labels, given.labels)
    np.testing.assert_array_equal(auto.probabilities, given.probabilities)
    assert len(auto.table) > 50


def test_a_small_tile_on_an_image_enlarged_for_the_network(default_bundle):
    """Noise taken as dark 6-px particles is enlarged x4 for the network: tiles of 64 px still work.

    A tile under twice the network's halo is raised to it, as tiled prediction raises it
    (``inference.bounded_tile`` failed with an IndexError before, 2026-12-04).
    """
    noise = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    seg = segment_image(noise, default_bundle, SegmentParams(polarity="dark", tile=64, crop_rows=0))
    whole = segment_image(noise, default_bundle, SegmentParams(polarity="dark", crop_rows=0))
    assert seg.scale.factor > 4 and seg.scale == whole.scale
    np.testing.assert_array_equal(seg.probabilities, whole.probabilities)  # tiled = untiled


def test_the_command_line_and_summary_say_the_polarity_was_compared(tmp_path, capsys):
    import pandas as pd

    from particleseg.cli import main
    from particleseg.simulate import simulate_sem_image

    sim = simulate_sem_image((256, 256), rng=4, particle_size=24, coverage=0.6, empty_fraction=0)
    tifffile.imwrite(tmp_path / "dense.tif", invert(sim.image).astype(np.uint8))
    assert main(["segment", str(tmp_path / "dense.tif"), "--out", str(tmp_path / "out")]) == 0
    assert "dark particles (estimated, both polarities compared by the network)" in capsys.readouterr().out
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert summary.loc[0, ["polarity", "polarity_source"]].tolist() == ["dark", "compared"]


def test_a_strong_polarity_score_is_not_checked(default_bundle, network_calls):
    """Well-separated particles: the score decides alone, one polarity goes through the network."""
    image = disks((192, 192), grid((192, 192), 14, 48), 14)
    assert autoscale.polarity_score(image) >= autoscale.POLARITY_CHECK_BELOW
    seg = segment_image(image, default_bundle, SegmentParams(progress=False))
    assert (seg.scale.polarity, seg.scale.polarity_source) == ("bright", "estimated")
    assert network_calls and {scale.polarity for scale in network_calls} == {"bright"}


def test_the_polarity_of_particles_already_found():
    image = disks((128, 128), grid((128, 128), 10, 32), 10)
    labels = np.zeros(image.shape, int)
    labels[image > 120] = 1
    assert autoscale.polarity_of_particles(labels, image) == "bright"
    assert autoscale.polarity_of_particles(labels, invert(image)) == "dark"
    # no particle, or nothing else: the gray values decide
    assert autoscale.polarity_of_particles(np.zeros_like(labels), invert(image)) == "dark"
    assert autoscale.polarity_of_particles(np.ones_like(labels), image) == "bright"


def test_the_network_evidence_outweighs_a_weak_score():
    """What the network found in each polarity decides against a weak score, not a strong one."""
    compact_dark = dict(bright=(0.70, 0.55), dark=(0.93, 0.30))
    assert autoscale.checked_polarity_score(0.4, **compact_dark) < 0
    assert autoscale.checked_polarity_score(9.0, **compact_dark) > 0
    assert autoscale.checked_polarity_score(-0.2, bright=(0.9, 0.3), dark=(0.9, 0.3)) == -0.2
    # nothing found in one polarity: solidity does not count, the image-filling region loses
    assert autoscale.checked_polarity_score(-0.3, bright=(0.0, 0.0), dark=(0.98, 0.9)) == pytest.approx(4.2)


@pytest.mark.slow
def test_particle_size_is_the_equivalent_rescale(default_bundle):
    image = tifffile.imread(SAMPLE)[:256, :256]
    size = 50.0
    a = segment_image(image, default_bundle, SegmentParams(crop_rows=0, particle_size=size))
    b = segment_image(image, default_bundle, SegmentParams(crop_rows=0, rescale=default_bundle.particle_size_px / size))
    assert a.scale.size_source == "given" and b.scale.size_source == "rescale"
    np.testing.assert_array_equal(a.labels, b.labels)


@pytest.mark.slow
def test_large_particles_are_shown_at_the_model_scale(default_bundle):
    """Disks 120 px across (five times the model's particles) are found whole."""
    shape, r = (512, 512), 60
    centres = [(100, 100), (100, 330), (320, 120), (350, 380)]
    img = disks(shape, centres, r, noise=6)
    seg = segment_image(img, default_bundle, SegmentParams(crop_rows=0, min_confidence=0))
    assert seg.scale.factor < 0.4 and seg.scale.particle_size > 80
    assert seg.table["kept"].sum() + (~seg.table["kept"]).sum() == 4
    areas = np.bincount(seg.labels.ravel())[1:]
    assert np.all(np.abs(areas / (np.pi * r * r) - 1) < 0.25)


def test_no_particles_is_a_note_and_an_empty_result(default_bundle):
    with pytest.warns(ParticlesegWarning, match="no particles found"):
        seg = segment_image(
            np.full((128, 128), 90, np.uint8) + np.eye(128, dtype=np.uint8), default_bundle, SegmentParams(crop_rows=0)
        )
    assert seg.labels.max() == 0 and len(seg.table) == 0


def test_detection_diameter_follows_the_particles_not_the_fragments():
    # four particles of 40 px and, as a network finds in a textured particle seen at the
    # wrong scale, sixty fragments of 6 px: the number median would say 6 px
    areas = np.array([np.pi * 20**2] * 4 + [np.pi * 3**2] * 60)
    d = autoscale.detection_diameter(areas)
    assert d == pytest.approx(40 / autoscale.GRANULOMETRY_TO_ECD)
    assert float(np.median(2 * np.sqrt(areas / np.pi))) == pytest.approx(6)
    assert autoscale.detection_diameter(np.zeros(3)) is None


def test_refine_scale_ignores_fragments(default_bundle):
    from particleseg.pipeline import ScaleChoice, refine_scale

    labels = np.zeros((400, 400), np.int32)
    yy, xx = np.mgrid[:400, :400]
    for i, (cy, cx) in enumerate([(100, 100), (100, 300), (300, 100), (300, 300)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 40**2] = i  # 80 px particles
    for j in range(40):  # specks of 2x2 px
        labels[10 + 9 * j : 12 + 9 * j, 195:197] = 100 + j
    scale = ScaleChoice("bright", "estimated", 1.0, 10.0, "estimated", "bright", auto_size=True)
    refined = refine_scale(scale, labels, default_bundle)
    assert refined is not None and refined.size_source == "detections"
    assert refined.particle_size == pytest.approx(autoscale.detection_diameter(np.bincount(labels.ravel())[1:]))
    assert 60 < refined.particle_size < 80 and refined.factor < 1


def _counts_of(diameter: float, n: int = 4) -> np.ndarray:
    """Label pixel counts of ``n`` particles whose typical diameter (detection_diameter) is ``diameter``."""
    area = np.pi * (diameter * autoscale.GRANULOMETRY_TO_ECD / 2) ** 2
    return np.array([10_000] + [round(area)] * n)


def test_the_scale_is_refined_pass_by_pass_and_the_most_consistent_pass_wins(default_bundle):
    from particleseg.pipeline import MAX_SCALE_PASSES, ScaleChoice, best_scale_pass, scale_consistency

    target = default_bundle.particle_size_px
    found = {1.0: 100.0, target / 100: 200.0, target / 200: 150.0, target / 150: 120.0}  # factor -> diameter
    runs = []

    def run(scale):
        runs.append(scale.factor)
        (diameter,) = [d for f, d in found.items() if f == pytest.approx(scale.factor, rel=1e-3)]
        return f"pass {len(runs)}", _counts_of(diameter)

    first = ScaleChoice("bright", "estimated", 1.0, 30.0, "estimated", auto_size=True)
    scale, result = best_scale_pass(first, "pass 0", _counts_of(100.0), run, default_bundle)
    # 100 px seen at 1 -> x0.25: 200 px seen at 50 -> x0.12: 150 px seen at 19 -> x0.17: 120 px seen at 20
    assert len(runs) == MAX_SCALE_PASSES - 1
    assert runs == pytest.approx([target / 100, target / 200, target / 150], rel=1e-3)
    assert result == "pass 3" and scale.factor == pytest.approx(target / 150, rel=1e-3)
    # its scale came from the 150 px of pass 2; the size reported is what pass 3 found (4 alike)
    assert scale.size_source == "detections"
    assert scale.particle_size == pytest.approx(120.0 * autoscale.GRANULOMETRY_TO_ECD, rel=1e-2)
    fits = [
        scale_consistency(ScaleChoice("bright", "", f, None, ""), _counts_of(d), default_bundle)
        for f, d in found.items()
    ]
    assert np.argmin(fits) == 3


def test_a_scale_tried_before_ends_the_passes_and_an_earlier_best_pass_is_run_again(default_bundle):
    from particleseg.pipeline import ScaleChoice, best_scale_pass

    runs = []

    def run(scale):  # at x0.25 the network finds specks of 20 px: back to x1, tried already
        runs.append(scale.factor)
        return "pass 1", _counts_of(20.0)

    first = ScaleChoice("bright", "estimated", 1.0, 30.0, "estimated", auto_size=True)
    scale, result = best_scale_pass(first, "pass 0", _counts_of(100.0), run, default_bundle)
    assert len(runs) == 1 and scale.factor == first.factor and result == "pass 0"
    assert scale.particle_size == pytest.approx(100.0 * autoscale.GRANULOMETRY_TO_ECD, rel=1e-2)  # pass 0's
    runs.clear()
    scale, result = best_scale_pass(first, "pass 0", _counts_of(100.0), run, default_bundle, keep=False)
    assert len(runs) == 1 and scale.factor == first.factor and result is None  # pass 1 overwrote it: the caller reruns


def test_when_no_resampled_pass_finds_anything_the_image_as_it_is_gets_a_pass(default_bundle):
    from particleseg.pipeline import ScaleChoice, best_scale_pass

    runs = []

    def run(scale):  # as it is, the network finds particles of 30 px: consistent, no further pass
        runs.append(scale.factor)
        return f"pass {len(runs)}", _counts_of(30.0) if scale.factor == 1 else np.array([10_000])

    first = ScaleChoice("bright", "estimated", 0.1, 250.0, "estimated", auto_size=True)
    scale, result = best_scale_pass(first, "pass 0", np.array([10_000]), run, default_bundle)
    assert runs == [1.0] and result == "pass 1" and scale.factor == 1.0
    assert scale.size_source == "detections" and 30 < scale.particle_size < 40
    # nothing as it is either: one extra pass, then the first pass and its estimate stand
    runs.clear()
    scale, result = best_scale_pass(
        first, "pass 0", np.array([10_000]), lambda s: run(s)[:1] + (np.array([9]),), default_bundle
    )
    assert runs == [1.0] and result == "pass 0" and scale == first
    # a later pass that finds nothing, after one that found particles: no pass as it is
    runs.clear()
    scale, result = best_scale_pass(first, "pass 0", _counts_of(50.0), run, default_bundle)
    assert len(runs) == 1 and runs[0] != 1.0 and result == "pass 0" and scale.factor == first.factor
    # a pass as it is that finds nothing is not repeated
    as_is = ScaleChoice("bright", "estimated", 1.0, 30.0, "estimated", auto_size=True)
    assert best_scale_pass(as_is, "only", np.array([10_000]), pytest.fail, default_bundle) == (as_is, "only")


def test_a_given_scale_is_never_refined(default_bundle):
    from particleseg.pipeline import ScaleChoice, best_scale_pass

    given = ScaleChoice("bright", "given", 0.5, 50.0, "given", auto_size=False)
    assert best_scale_pass(given, "only", _counts_of(300.0), pytest.fail, default_bundle) == (given, "only")


def test_a_bundle_without_a_training_size_segments_without_refinement(tiny_bundle):
    # the Fiji commands on a user's bundle (found by the Fiji tests: a TypeError on None)
    from particleseg.pipeline import ScaleChoice, best_scale_pass, scale_consistency

    assert not tiny_bundle.particle_size_px
    first = ScaleChoice("bright", "estimated", 1.0, 30.0, "estimated", auto_size=False)
    assert scale_consistency(first, _counts_of(30.0), tiny_bundle) == float("inf")
    # not refined (no other pass is run), but the size reported is that of the particles found
    counts = _counts_of(30.0)
    scale, result = best_scale_pass(first, "only", counts, pytest.fail, tiny_bundle)
    assert result == "only" and scale.factor == 1 and scale.size_source == "detections"
    assert scale.particle_size == pytest.approx(2 * np.sqrt(counts[1] / np.pi))
    seg = segment_image(disks((96, 96), grid((96, 96), 8, 30), 8), tiny_bundle, SegmentParams(crop_rows=0))
    assert seg.scale_factor == 1


def test_a_specialist_bundle_reports_the_size_of_the_particles_found(threshold_bundle):
    """A bundle trained at its users' scale reports the size of the particles it found.

    Such a bundle (no trained size range) is not resampled, and reports their median diameter as
    the default model does, not the classical estimate (a fine-tuned TiO2 bundle said
    ``typical size 34 px (estimated)``).
    """
    assert "particle_size_range_px" not in threshold_bundle.metadata["scale"]
    image = disks((256, 256), grid((256, 256), 14, 40), 14)  # disks 28 px across
    estimate = choose_scale(image, threshold_bundle, SegmentParams(crop_rows=0).resolved(threshold_bundle))
    assert estimate.size_source == "estimated" and not estimate.auto_size
    seg = segment_image(image, threshold_bundle, SegmentParams(crop_rows=0, progress=False))
    areas = np.bincount(seg.labels.ravel())[1:]
    assert len(areas) >= 16 and seg.scale_factor == 1
    assert seg.scale.size_source == "detections"
    assert seg.scale.particle_size == pytest.approx(2 * np.sqrt(np.median(areas[areas > 0]) / np.pi), rel=1e-6)
    assert seg.scale.particle_size == pytest.approx(28, rel=0.1)
    # a scale the user set stays as set
    rescaled = segment_image(image, threshold_bundle, SegmentParams(crop_rows=0, rescale=1.0, progress=False))
    assert rescaled.scale.size_source == "rescale"


def test_the_size_reported_is_that_of_the_particles_found(default_bundle):
    """The summary's size is the particles' (pipeline.measured_size), not the estimate that set the scale."""
    from particleseg.pipeline import ScaleChoice, measured_size

    image = disks((256, 256), grid((256, 256), 14, 40), 14)  # disks 28 px across, in the trained range
    seg = segment_image(image, default_bundle, SegmentParams(crop_rows=0, progress=False))
    estimate = choose_scale(image, default_bundle, SegmentParams(crop_rows=0).resolved(default_bundle))
    assert estimate.size_source == "estimated" and seg.scale.factor == estimate.factor == 1
    areas = np.bincount(seg.labels.ravel())[1:]
    assert len(areas) >= 16 and np.median(areas) == pytest.approx(np.pi * 14**2, rel=0.15)
    assert seg.scale.size_source == "detections"
    assert seg.scale.particle_size == pytest.approx(2 * np.sqrt(np.median(areas[areas > 0]) / np.pi), rel=1e-6)
    assert seg.scale.particle_size != estimate.particle_size
    # a size the user gave stays as given
    given = segment_image(image, default_bundle, SegmentParams(crop_rows=0, particle_size=28, progress=False))
    assert given.scale.size_source == "given" and given.scale.particle_size == 28
    assert measured_size(given.scale, np.bincount(given.labels.ravel())) == given.scale
    # nothing found: the estimate stays
    first = ScaleChoice("bright", "estimated", 1.0, 30.0, "estimated", auto_size=True)
    assert measured_size(first, np.array([5000])) == first
