"""The broader simulator (issue 13): shapes, TEM contrast, annotations."""

from __future__ import annotations

import numpy as np
import pytest

from particleseg.simulate import (
    SHAPES,
    STYLES,
    shaped_particle,
    simulate_micrograph,
    simulate_sem_image,
    simulate_training_pair,
)


@pytest.mark.parametrize("kind", SHAPES)
def test_shaped_particle_has_the_asked_diameter(kind):
    rng = np.random.default_rng(1)
    for d in (12.0, 40.0):
        mask, height = shaped_particle(rng, d, kind)
        ecd = 2 * np.sqrt(mask.sum() / np.pi)
        assert abs(ecd / d - 1) < 0.2, (kind, d, ecd)
        assert height.shape == mask.shape and np.all(height[~mask] == 0) and height[mask].max() > 0


def test_unknown_shape_and_style_are_refused():
    with pytest.raises(ValueError, match="unknown particle shape"):
        shaped_particle(np.random.default_rng(0), 10, "star")
    with pytest.raises(ValueError, match="unknown style"):
        simulate_micrograph((64, 64), 0, style="afm")


@pytest.mark.parametrize("style", STYLES)
def test_micrograph_particles_are_bright_and_labelled(style):
    for seed in range(4):
        sim = simulate_micrograph((192, 192), np.random.default_rng([3, seed]), (14, 30), style=style, annotations=0)
        assert sim.image.dtype == np.uint8 and sim.image.shape == sim.labels.shape
        if sim.labels.max() == 0:
            continue
        ids = np.unique(sim.labels)
        assert ids[0] == 0 and np.array_equal(ids, np.arange(len(ids)))  # 1..N
        inside = sim.image[sim.labels > 0].mean()
        outside = sim.image[sim.labels == 0].mean()
        assert inside > outside  # as the network sees every image


def test_annotations_are_background():
    """Pixels a scale bar, caption or panel letter changed belong to no particle."""
    changed_total = 0
    for seed in range(6):
        plain = simulate_micrograph((256, 256), np.random.default_rng([5, seed]), annotations=0.0)
        marked = simulate_micrograph((256, 256), np.random.default_rng([5, seed]), annotations=1.0)
        changed = plain.image != marked.image
        changed_total += changed.sum()
        assert not np.any(marked.labels[changed])
        assert not np.any((marked.labels > 0) & (plain.labels == 0))  # nothing new became a particle
    assert changed_total > 200


def test_background_outlines_are_background_and_change_nothing_else():
    """Faint particle-sized outlines (benchmarks/bench_ghost_outlines.py) brighten background pixels only."""
    changed_total = 0
    for seed in range(4):
        plain = simulate_sem_image((256, 256), np.random.default_rng([6, seed]), (20.0, 30.0), empty_fraction=0)
        lined = simulate_sem_image(
            (256, 256), np.random.default_rng([6, seed]), (20.0, 30.0), empty_fraction=0, outlines=0.3
        )
        np.testing.assert_array_equal(plain.labels, lined.labels)
        changed = plain.image != lined.image
        changed_total += changed.sum()
        assert not np.any(lined.labels[changed])  # the particles are as without
        assert np.all(lined.image[changed] >= plain.image[changed])
    assert changed_total > 500


def test_training_sets_with_and_without_outlines():
    """``mixed`` is the set it was (no outlines drawn); ``mixed-outlines`` differs in the SEM images only."""
    sem_changed = 0
    for i in (0, 1, 2, 3):
        mixed = simulate_training_pair(i, 0, (128, 128), (14.0, 30.0), "mixed")
        lined = simulate_training_pair(i, 0, (128, 128), (14.0, 30.0), "mixed-outlines")
        np.testing.assert_array_equal(mixed[1], lined[1])
        if i % 2:  # from simulate_micrograph: the same image
            np.testing.assert_array_equal(mixed[0], lined[0])
        else:
            sem = simulate_sem_image((128, 128), np.random.default_rng([0, i]), (14.0, 30.0))
            np.testing.assert_array_equal(mixed[0], sem.image)
            sem_changed += int(np.any(mixed[0] != lined[0]))
    assert sem_changed  # (an outline strength drawn near 0 may leave one image as it was)
    with pytest.raises(ValueError, match="simulator 'tem'"):
        simulate_training_pair(0, 0, (64, 64), simulator="tem")


def test_outlines_apart_stay_clear_of_the_particles():
    """``mixed-outlines-apart``: outlines touching a particle are left out; nothing else changes."""
    from scipy import ndimage as ndi

    near = {"mixed-outlines": 0, "mixed-outlines-apart": 0}
    for i in (0, 2, 4, 6):
        mixed = simulate_training_pair(i, 0, (128, 128), (14.0, 30.0), "mixed")
        gap = ndi.distance_transform_edt(mixed[1] == 0)
        for name in near:
            image, labels = simulate_training_pair(i, 0, (128, 128), (14.0, 30.0), name)
            np.testing.assert_array_equal(labels, mixed[1])
            near[name] += int(np.sum((image != mixed[0]) & (gap <= 1)))
    assert near["mixed-outlines"] > 0 and near["mixed-outlines-apart"] == 0


def test_same_seed_same_image():
    a = simulate_micrograph((96, 96), 11)
    b = simulate_micrograph((96, 96), 11)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_the_default_models_training_set_does_not_depend_on_its_worker_processes(tmp_path):
    """``scripts/train_default_model.py --workers``: the same images, in the same order, cached once."""
    import importlib.util

    from conftest import REPO
    from particleseg.simulate import simulate_training_pair

    spec = importlib.util.spec_from_file_location("tdm", REPO / "scripts" / "train_default_model.py")
    tdm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tdm)
    one = tdm.simulated_set(4, 5, tmp_path / "a", "mixed", workers=1)
    two = tdm.simulated_set(4, 5, tmp_path / "b", "mixed", workers=2)
    for a, b in zip(one, two):
        assert len(a) == len(b) == 4
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(one[0][0], one[0][1])  # two images, not one twice
    image, labels = simulate_training_pair(3, 5, tdm.SIM_SIZE, tdm.PARTICLE_SIZE_RANGE, "mixed")  # from its seed alone
    np.testing.assert_array_equal(image, two[0][3])
    np.testing.assert_array_equal(labels, two[1][3])
    cached = tdm.simulated_set(4, 5, tmp_path / "b", "mixed", workers=2)  # read back from the cache
    np.testing.assert_array_equal(cached[1][2], two[1][2])
