"""The strip path of large images (particleseg.strips).

The same particles, labels and measurements as the whole-image run, on small images cut into
tiny strips.
"""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from conftest import zip_members
from particleseg import pipeline as P
from particleseg import strips
from particleseg.models import load_bundle
from particleseg.simulate import simulate_micrograph, simulate_sem_image


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle(None)


@pytest.fixture(scope="module")
def sim_prob(default_bundle):
    """Return the default model's output on a simulated SEM image with agglomerated particles."""
    img = simulate_sem_image((320, 384), rng=5, particle_size=30, coverage=0.45, empty_fraction=0).image
    params = P.SegmentParams(progress=False).resolved(default_bundle)
    return P.predict_probabilities(img, default_bundle, params), params


def _store(prob):
    store = strips.RowFile(prob.shape, np.float32)
    store[:, :] = prob
    return store


def _labels(found):
    return found.store.read(0, found.store.shape[0])


def test_row_file_reads_what_was_written(tmp_path):
    store = strips.RowFile((7, 5, 2), np.float32, tmp_path)
    assert list(tmp_path.iterdir()) == []  # removed at once, freed on close
    ref = np.zeros((7, 5, 2), np.float32)
    block = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    store[2:5, 1:3] = block
    ref[2:5, 1:3] = block
    store.write(6, np.ones((1, 5, 2)))
    ref[6] = 1
    np.testing.assert_array_equal(store.read(0, 7), ref)
    np.testing.assert_array_equal(store.read(3, 99), ref[3:])
    np.testing.assert_array_equal(store.memmap(), ref)
    store.close()


@pytest.mark.parametrize("rows", [7, 16, 40, 1000])
def test_particles_in_strips_equal_whole_image(sim_prob, default_bundle, rows):
    prob, params = sim_prob
    whole = P.particles_from_probabilities(prob, default_bundle.heads, params)
    found = strips.particles_in_strips(_store(prob), default_bundle.heads, params, strip_rows=rows)
    labels = _labels(found)
    np.testing.assert_array_equal(labels, whole)
    assert found.n == whole.max() > 50
    np.testing.assert_array_equal(found.label_counts()[1:], np.bincount(whole.ravel())[1:])
    # particles cross strip borders, and some are taller than a strip of 7 or 16 rows
    tops, bottoms = found.top, found.bottom
    if rows < 100:
        assert ((tops // rows) != ((bottoms - 1) // rows)).sum() > 10
    if rows < 20:
        assert (bottoms - tops).max() > 2 * rows


@pytest.mark.parametrize("variant", ["no-split", "boundary", "no-fill-no-confidence", "seed-depth", "merge"])
def test_particles_in_strips_other_settings(sim_prob, default_bundle, variant):
    prob, params = sim_prob
    heads = default_bundle.heads
    if variant == "no-split":
        params = dataclasses.replace(params, split=False)
    elif variant == "boundary":  # a boundary head: seeds are foreground * (1 - boundary)
        prob = prob.copy()
        prob[..., 1] = 1 - prob[..., 1]
        heads = ["foreground", "boundary"]
    elif variant == "seed-depth":  # seeds are the peaks of the distance map
        params = dataclasses.replace(params, seed_level=0.05, seed_depth=0.1)
    elif variant == "merge":  # pieces with no gap between them merged: a particle keeps its first piece's number
        params = dataclasses.replace(params, seed_level=0.05, seed_depth=0.05, merge_level=0.9)
        unmerged = P.particles_from_probabilities(prob, heads, dataclasses.replace(params, merge_level=0.0))
        assert P.particles_from_probabilities(prob, heads, params).max() < unmerged.max() - 5
    else:
        params = dataclasses.replace(params, fill_holes=False, min_confidence=0.0, min_size=1)
    whole = P.particles_from_probabilities(prob, heads, params)
    found = strips.particles_in_strips(_store(prob), heads, params, strip_rows=11)
    np.testing.assert_array_equal(_labels(found), whole)
    assert whole.max() > 10


def test_region_taller_than_the_image_and_holes(default_bundle):
    """Check regions as tall as the image, holes, an island in a hole, the image's edges.

    One mask region as tall as the image makes a window of the whole image.
    """
    params = P.SegmentParams(min_size=1, min_confidence=0.0).resolved(default_bundle)
    h, w = 120, 90
    fg = np.zeros((h, w), np.float32)
    dist = np.zeros((h, w), np.float32)
    fg[:, 40:46] = 1  # a bar from top to bottom, three seeds on it
    for y in (10, 60, 110):
        dist[y - 2 : y + 3, 41:45] = 0.9
    fg[20:50, 5:35] = 1  # a ring with a hole and an island in the hole
    fg[28:42, 13:27] = 0
    fg[33:37, 18:22] = 1
    dist[22:25, 8:12] = 0.8
    fg[70:90, 60:80] = 1  # a square with a hole: filled
    fg[78:82, 68:72] = 0
    dist[72:75, 62:66] = 0.7
    dist[85:88, 74:78] = 0.7  # two seeds: split
    fg[0:6, 70:90] = 1  # at the image's edges
    fg[110:120, 0:8] = 1
    # continuous values (as a network's): no two pixels of equal value, so no tie in the
    # watershed's queue (see the strips module's docstring)
    dist += np.random.default_rng(0).uniform(0, 0.3, dist.shape).astype(np.float32) * fg
    prob = np.stack([fg, dist], -1)
    whole = P.particles_from_probabilities(prob, default_bundle.heads, params)
    for rows in (5, 13, 64):
        found = strips.particles_in_strips(_store(prob), default_bundle.heads, params, strip_rows=rows)
        np.testing.assert_array_equal(_labels(found), whole)
    assert whole.max() >= 8


def _compare(a, b):
    np.testing.assert_array_equal(np.asarray(a.probabilities), np.asarray(b.probabilities))
    np.testing.assert_array_equal(np.asarray(a.labels), np.asarray(b.labels))
    pd.testing.assert_frame_equal(a.table, b.table, check_exact=True)
    assert (a.crop_rows, a.scale_factor, a.scale) == (b.crop_rows, b.scale_factor, b.scale)


def _strip_run(monkeypatch, image, bundle, params, rows=24, **kw):
    monkeypatch.setattr(strips, "MIN_PIXELS", 0)
    monkeypatch.setattr(strips, "STRIP_ROWS", rows)
    seg = P.segment_image(image, bundle, params, **kw)
    monkeypatch.undo()
    return seg


def test_segment_image_in_strips_equals_whole_image(monkeypatch, default_bundle):
    sim = simulate_sem_image((288, 352), rng=11, particle_size=26, coverage=0.4, empty_fraction=0)
    params = P.SegmentParams(progress=False, intensity_filter="otsu", shape={"ecd": (8, None)})
    cal = P.Calibration(2.5, "nm")
    whole = P.segment_image(sim.image, default_bundle, params, cal)
    assert not isinstance(whole.labels, np.memmap)  # below MIN_PIXELS: the whole-image path
    seg = _strip_run(monkeypatch, sim.image, default_bundle, params, calibration=cal)
    assert isinstance(seg.labels, np.memmap)
    _compare(whole, seg)
    reasons = set(whole.table["reject_reason"])
    assert {"", "border"} <= reasons and whole.table["kept"].sum() > 50


def test_segment_image_in_strips_annotations_data_bar_dark(monkeypatch, default_bundle):
    """Check burned-in annotations, a data bar and dark particles.

    Annotated particles are rejected, the data bar's rows cropped, the image inverted for the
    network.
    """
    sim = simulate_micrograph((256, 320), rng=3, style="sem", annotations=1.0)
    image = 255 - sim.image  # dark particles
    image = np.concatenate([image, np.full((24, 320), 255, image.dtype)])
    image[-16:-8, 20:120] = 0  # text on the bar
    params = P.SegmentParams(progress=False)
    whole = P.segment_image(image, default_bundle, params)
    seg = _strip_run(monkeypatch, image, default_bundle, params, rows=17)
    _compare(whole, seg)
    assert whole.crop_rows > 0 and whole.scale.polarity == "dark" and len(whole.table) > 10


def test_polarity_compared_in_strips_as_on_the_whole_image(monkeypatch, default_bundle):
    """A weak polarity score: both polarities through the network, decided the same way in strips."""
    sim = simulate_sem_image((256, 256), rng=4, particle_size=24, coverage=0.6, empty_fraction=0)
    image = 255 - sim.image  # dark particles; the gray values alone say bright
    params = P.SegmentParams(progress=False)
    whole = P.segment_image(image, default_bundle, params)
    seg = _strip_run(monkeypatch, image, default_bundle, params, rows=40)
    _compare(whole, seg)
    assert (whole.scale.polarity, whole.scale.polarity_source) == ("dark", "compared")


def test_a_strong_polarity_in_strips_runs_the_network_as_on_the_whole_image(monkeypatch, default_bundle, network_calls):
    """No pass of the centre crop for a polarity the gray values settle: the same network runs as whole."""
    sim = simulate_sem_image((256, 256), rng=5, particle_size=22, coverage=0.35, empty_fraction=0)
    params = P.SegmentParams(progress=False)
    whole = P.segment_image(sim.image, default_bundle, params)
    assert whole.scale.polarity_source == "estimated"
    runs = [(c.polarity, c.factor) for c in network_calls]
    network_calls.clear()
    seg = _strip_run(monkeypatch, sim.image, default_bundle, params, rows=40)
    _compare(whole, seg)
    assert [(c.polarity, c.factor) for c in network_calls] == runs


def test_segment_file_in_strips_writes_the_same_files(monkeypatch, tmp_path, default_bundle):
    import tifffile

    from particleseg.io import Calibration, write_tiff

    sim = simulate_sem_image((256, 288), rng=21, particle_size=22, coverage=0.35, empty_fraction=0)
    path = write_tiff(tmp_path / "big.tif", sim.image, Calibration(4.0, "nm"))
    params = P.SegmentParams(progress=False)
    P.segment_file(path, tmp_path / "whole", default_bundle, params)
    monkeypatch.setattr(strips, "MIN_PIXELS", 0)
    monkeypatch.setattr(strips, "STRIP_ROWS", 32)
    P.segment_file(path, tmp_path / "strips", default_bundle, params)
    csv = (tmp_path / "whole" / "big_particles.csv").read_bytes()
    assert csv == (tmp_path / "strips" / "big_particles.csv").read_bytes()
    assert csv.count(b"\n") > 50
    assert zip_members(tmp_path / "whole" / "big_rois.zip") == zip_members(tmp_path / "strips" / "big_rois.zip")
    overview = (tmp_path / "whole" / "big_overview.png").read_bytes()
    assert overview == (tmp_path / "strips" / "big_overview.png").read_bytes()  # not sampled: 288 px
    for suffix in ("_labels.tif", "_mask.tif", "_prob.tif"):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "whole" / f"big{suffix}"), tifffile.imread(tmp_path / "strips" / f"big{suffix}")
        )


def test_only_large_images_and_seeded_bundles_take_strips(default_bundle):
    params = P.SegmentParams().resolved(default_bundle)
    side = int(np.sqrt(strips.MIN_PIXELS))
    assert not strips.use_strips((side, side), default_bundle.heads, params)
    assert strips.use_strips((side + 1, side), default_bundle.heads, params)
    # the distance transform's watershed (no predicted seeds) stays whole: its ties are common
    assert not strips.use_strips((side + 1, side), ["foreground"], params)
    assert strips.use_strips((side + 1, side), ["foreground"], dataclasses.replace(params, split=False))
    # a particle classifier runs on the whole image
    assert not strips.use_strips((side + 1, side), default_bundle.heads, dataclasses.replace(params, min_score=0.5))


@pytest.mark.parametrize("rows", [5, 16, 64])
def test_kept_and_mask_equal_whole_image(rows):
    """Check kept labels and the mask with its background lines, strip by strip.

    On touching simulated particles (some thin, some tiny), the rejected ones numbered after
    the kept ones.
    """
    from particleseg import postprocess as pp

    labels = simulate_sem_image((200, 230), rng=7, particle_size=18, coverage=0.6, empty_fraction=0).labels
    labels = pp.relabel_sequential(labels)
    n_kept = int(labels.max()) * 2 // 3
    kept, mask = strips.kept_and_mask(labels, n_kept, strip_rows=rows)
    whole_kept = np.where(labels <= n_kept, labels, 0)
    np.testing.assert_array_equal(kept, whole_kept)
    np.testing.assert_array_equal(mask, pp.labels_to_mask(whole_kept))
    assert (whole_kept > 0).sum() > (mask > 0).sum() > 0  # lines between touching particles


def test_no_particles_in_strips(monkeypatch, default_bundle):
    image = np.random.default_rng(0).normal(100, 3, (160, 200)).astype(np.uint8)
    params = P.SegmentParams(progress=False, particle_size=25)
    with pytest.warns(P.ParticlesegWarning, match="no particles found"):
        whole = P.segment_image(image, default_bundle, params)
    with pytest.warns(P.ParticlesegWarning, match="no particles found"):
        seg = _strip_run(monkeypatch, image, default_bundle, params, rows=16)
    assert len(whole.table) == 0 and not np.asarray(seg.labels).any()
    _compare(whole, seg)


@pytest.mark.parametrize("dark", [False, True])
def test_resampled_network_input_in_strips(monkeypatch, default_bundle, dark):
    """Check particles larger than the model was trained on (bright, and dark: inverted too).

    The network sees the image shrunk, resampled strip by strip into a row file; its output, in
    another, is resampled back strip by strip and the scale is refined from the particles found
    (a second network run and search).
    """
    sim = simulate_sem_image((320, 320), rng=2, particle_size=70, coverage=0.35, empty_fraction=0)
    image = 255 - sim.image if dark else sim.image
    params = P.SegmentParams(progress=False)
    whole = P.segment_image(image, default_bundle, params)
    seg = _strip_run(monkeypatch, image, default_bundle, params, rows=20)
    _compare(whole, seg)
    assert whole.scale_factor < 0.8 and whole.scale.size_source == "detections" and len(whole.table) > 5
    assert whole.scale.polarity == ("dark" if dark else "bright")


def test_an_earlier_scale_pass_that_fits_best_is_run_again_in_strips(monkeypatch, default_bundle, network_calls):
    """The strips keep only the last pass: when an earlier pass fits best, it runs again, same result."""
    sim = simulate_sem_image((320, 320), rng=2, particle_size=70, coverage=0.35, empty_fraction=0)
    params = P.SegmentParams(progress=False, polarity="bright")  # the passes of one polarity only
    # the first (estimated) scale fits best, whatever the later passes find
    monkeypatch.setattr(P, "scale_consistency", lambda scale, counts, bundle: float(scale.size_source != "estimated"))
    whole = P.segment_image(sim.image, default_bundle, params)
    network_calls.clear()
    seg = _strip_run(monkeypatch, sim.image, default_bundle, params, rows=20)
    factors = [scale.factor for scale in network_calls]
    # the size reported is that of the particles the kept pass found (pipeline.measured_size)
    assert whole.scale.size_source == "detections" and seg.scale == whole.scale
    assert len(factors) >= 3 and factors[-1] == factors[0] != factors[1]  # refined, then the first again
    _compare(whole, seg)
