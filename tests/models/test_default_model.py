"""The shipped default model: bundle sanity, behaviour on simulated images, accuracy floor.

The accuracy floor is checked on the real TiO2 images (skipped when the licensed data is absent).
"""

import numpy as np
import pytest

from particleseg import SegmentParams, read_image, segment_image
from particleseg.datasets import evaluate_tio2, tio2_items
from particleseg.metrics import instance_iou
from particleseg.models import list_bundles, load_bundle
from particleseg.simulate import simulate_sem_image

SAMPLE = "python/particleseg/data/sample_sem.tif"


@pytest.fixture(scope="module")
def default_bundle():
    return load_bundle(None)


def test_default_bundle_is_installed_and_documented(default_bundle):
    assert "default" in list_bundles()
    meta = default_bundle.metadata
    assert meta["name"] == "default"
    assert "simulated" in meta["training"]["data"]
    assert {"foreground", "distance"} <= set(default_bundle.heads)
    assert meta["scale"]["particle_size_px"] > 0
    assert default_bundle.model.count_params() > 1000


def test_background_only_gives_no_particles(default_bundle):
    # a simulated field with no particle at all: noise, shading and debris only
    sim = simulate_sem_image((384, 384), np.random.default_rng(7), empty_fraction=1.0)
    assert sim.labels.max() == 0
    seg = segment_image(sim.image, default_bundle, SegmentParams(progress=False))
    assert len(seg.table) == 0


def test_simulated_particles_are_found_and_split(default_bundle):
    sim = simulate_sem_image((384, 384), np.random.default_rng(11), particle_size=26.0, coverage=0.3)
    seg = segment_image(sim.image, default_bundle, SegmentParams(progress=False))
    assert instance_iou(seg.labels, sim.labels, average="truth") > 0.6
    assert abs(seg.labels.max() - sim.labels.max()) <= 0.25 * sim.labels.max()


def test_sample_image_is_calibrated_and_segments(default_bundle):
    image, cal = read_image(SAMPLE)
    assert cal.unit == "nm" and cal.pixel_size == pytest.approx(7.35)
    seg = segment_image(image, default_bundle, SegmentParams(progress=False), cal)
    assert seg.crop_rows == 56  # the data bar of the sample is found
    kept = seg.table[seg.table.kept]
    assert len(kept) > 50
    # simulated particles of about 26 px median diameter at 7.35 nm/px
    assert 100 < kept.ECD.median() < 300


@pytest.mark.tio2
@pytest.mark.slow
def test_floor_on_real_tio2_images(default_bundle, tio2_dir):
    """Issue 2's floor on the 8 real validation images, which the network never saw in training.

    Foreground IoU >= 0.85 and mean instance IoU >= 0.55 (per manually outlined particle,
    best IoU with any segmented one). Two detection parameters of the bundle were chosen on
    the 24 training-split images, so the validation images are the held-out check. (The figures
    on all 32 images are the benchmark's, ``benchmarks/run.py --only accuracy``.)
    """
    val = evaluate_tio2(default_bundle, "validation", root=tio2_dir, progress=False)
    assert len(val) == 8 and set(val.image) == {i.stem for i in tio2_items(tio2_dir, "validation")}
    fg, inst = val.foreground_iou.mean(), val.instance_iou.mean()
    print(f"TiO2, 8 validation images: foreground IoU {fg:.4f}, instance IoU {inst:.4f}")
    assert fg >= 0.85
    assert inst >= 0.55
