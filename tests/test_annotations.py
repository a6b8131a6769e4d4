"""Burned-in annotations (issue 13, item 4).

Scale bars, their labels and panel letters are found and ignored; particles, their bright SEM
rims and dark TEM particles are not.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from conftest import REPO
from particleseg.annotations import annotation_mask, fill_annotations
from particleseg.io import read_image
from particleseg.pipeline import SegmentParams, segment_image
from particleseg.preprocess import detect_data_bar

SAMPLE = REPO / "python" / "particleseg" / "data" / "sample_sem.tif"


def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def micrograph(polarity="bright", seed=0):
    """Make a 320x400 SEM-like image with annotations.

    It holds particles with bright rims (edge contrast), a scale bar with its length written
    above it, and a panel letter in the top-left corner.
    """
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 6, (320, 400)).astype(np.float32)
    yy, xx = np.mgrid[:320, :400]
    for cy, cx in [(80, 120), (90, 250), (170, 180), (200, 320), (150, 60)]:
        d = np.hypot(yy - cy, xx - cx)
        img[d < 22] = 150 + rng.normal(0, 8, (d < 22).sum())
        img[(d >= 18) & (d < 22)] = 255  # saturated rim
    if polarity == "dark":
        img = 255 - img
    ink = 255 if polarity == "bright" else 0
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    draw.rectangle([300, 288, 380, 297], fill=ink)  # scale bar
    draw.text((310, 262), "100 nm", fill=ink, font=font(18), stroke_width=1, stroke_fill=ink)
    draw.text((6, 4), "(a)", fill=ink, font=font(26), stroke_width=1, stroke_fill=ink)
    return np.asarray(pil).astype(np.float32)


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_scale_bar_label_and_panel_letter_are_found_not_the_particles(polarity):
    img = micrograph(polarity)
    mask = annotation_mask(img)
    assert mask[288:298, 300:381].mean() > 0.95  # the bar
    assert mask[262:286, 305:380].mean() > 0.2  # its label
    assert mask[0:36, 0:50].mean() > 0.1  # the panel letter
    yy, xx = np.mgrid[:320, :400]
    particles = np.zeros(img.shape, bool)
    for cy, cx in [(80, 120), (90, 250), (170, 180), (200, 320), (150, 60)]:
        particles |= np.hypot(yy - cy, xx - cx) < 23
    assert not (mask & particles).any()  # the saturated rims are not letters


@pytest.mark.parametrize("polarity", ["bright", "dark"])
@pytest.mark.parametrize("strip_rows", [5, 37, 100])
def test_annotations_found_in_strips_are_those_of_the_whole_image(monkeypatch, polarity, strip_rows):
    import importlib

    annotations = importlib.import_module("particleseg.annotations")
    img = micrograph(polarity, seed=3)
    for dtype in (np.float32, np.uint8):
        whole = annotation_mask(img.astype(dtype))  # 320 rows: one strip
        monkeypatch.setattr(annotations, "STRIP_ROWS", strip_rows)
        assert np.array_equal(annotation_mask(img.astype(dtype)), whole)
        monkeypatch.setattr(annotations, "STRIP_ROWS", 1024)
    assert whole[288:298, 300:381].all()  # the bar crosses strip borders


@pytest.mark.parametrize("strip_rows", [1, 4, 9, 64])
def test_components_in_strips_are_the_labels_of_the_whole_mask(rng, strip_rows):
    from scipy import ndimage as ndi

    from particleseg.annotations import _component, _components

    img = ndi.gaussian_filter(rng.random((60, 45)), 1.2).astype(np.float32)
    threshold = float(np.quantile(img, 0.8))
    lab, n = ndi.label(img >= threshold, structure=np.ones((3, 3)))
    expected = sorted(
        ((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), int((lab[sl] == k).sum()))
        for k, sl in enumerate(ndi.find_objects(lab), start=1)
    )
    found = _components(img, True, threshold, strip_rows)
    got = sorted(((sl[0].start, sl[0].stop, sl[1].start, sl[1].stop), count) for sl, count, _ in found)
    assert n > 5 and got == expected
    for sl, count, seed in found:  # each component recovered whole from its box and one pixel
        comp = _component(img, sl, seed, True, threshold)
        assert comp.sum() == count and np.array_equal(comp, lab[sl] == lab[seed])
    large = _components(img, True, threshold, strip_rows, min_count=12)  # specks dropped as they are found
    assert [c[:2] for c in large] == [c[:2] for c in found if c[1] >= 12] and 0 < len(large) < len(found)


def _whole_image_fill(image, mask):
    """Paint as fill_annotations did before windows: the normalized convolution of the whole image."""
    from scipy import ndimage as ndi

    img = np.asarray(image, np.float32)
    out, todo, weight = img.copy(), mask.copy(), (~mask).astype(np.float32)
    for sigma in (3, 8, 24, 64, 192):
        num = ndi.gaussian_filter(np.where(mask, 0, img), sigma)
        den = ndi.gaussian_filter(weight, sigma)
        ready = todo & (den > 1e-3)
        out[ready] = num[ready] / den[ready]
        todo &= ~ready
    if todo.any():
        out[todo] = float(np.median(img[~mask]))
    return out


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_fill_in_windows_gives_the_whole_image_convolution(rng, polarity):
    img = micrograph(polarity, seed=5).astype(np.uint8)
    mask = annotation_mask(img)
    assert mask.any()
    assert np.array_equal(fill_annotations(img, mask), _whole_image_fill(img, mask))
    # an annotation that needs the widest window, one at the edge, and one no width reaches
    noise = rng.normal(100, 5, (500, 640)).astype(np.float32)
    wide = np.zeros(noise.shape, bool)
    wide[100:180, 40:600] = True
    wide[490:, 300:320] = True
    nearly_all = np.ones(noise.shape, bool)
    nearly_all[:2] = False
    for m in (wide, nearly_all):
        assert np.array_equal(fill_annotations(noise, m), _whole_image_fill(noise, m))


def test_fill_annotations_paints_the_bar_with_its_surroundings():
    img = micrograph()
    mask = annotation_mask(img)
    filled = fill_annotations(img, mask)
    assert abs(float(filled[288:298, 300:381].mean()) - 60) < 10
    assert np.array_equal(filled[~mask], img[~mask])


def test_constant_and_annotation_free_images_give_an_empty_mask():
    assert not annotation_mask(np.full((64, 64), 7.0)).any()
    image, _ = read_image(SAMPLE)  # a raw SEM TIFF: bright particles, saturated edges, no annotation
    picture = image[: image.shape[0] - detect_data_bar(image)]
    assert not annotation_mask(picture).any()


def test_particles_on_the_annotations_are_not_measured():
    from particleseg.models import load_bundle

    img = micrograph()
    bundle = load_bundle("default")
    params = dict(crop_rows=0, particle_size=24, exclude_border=False, progress=False)
    seg = segment_image(img, bundle, SegmentParams(**params))
    plain = segment_image(img, bundle, SegmentParams(**params, annotations=False))
    # without the step the bar and the letters are measured as particles; with it, not the bar
    assert plain.kept_labels[288:298, 300:381].any()
    assert plain.table["kept"].sum() > seg.table["kept"].sum()
    assert not seg.kept_labels[288:298, 300:381].any()
    kept = seg.kept_labels
    assert all(kept[cy, cx] for cy, cx in [(80, 120), (90, 250), (170, 180), (200, 320), (150, 60)])


def test_an_image_of_only_a_scale_bar_gives_an_empty_result():
    from particleseg.models import load_bundle

    yy, xx = np.mgrid[:256, :320]
    img = (80 + 0.05 * xx + 0.03 * yy).astype(np.float32)  # a smooth, uneven background
    img[230:240, 200:300] = 255
    seg = segment_image(img, load_bundle("default"), SegmentParams(crop_rows=0, progress=False))
    assert not seg.table["kept"].any()
    # what the network makes of the painted-over bar is rejected as an annotation (and of the
    # shading, at the image's border, as border particles)
    on_bar = seg.labels[230:240, 200:300]
    for label in np.unique(on_bar[on_bar > 0]):
        assert seg.table.set_index("label").loc[label, "reject_reason"] in ("annotation", "border")
    # without the step the bar is measured (as particles)
    plain = segment_image(img, load_bundle("default"), SegmentParams(crop_rows=0, progress=False, annotations=False))
    assert plain.table["kept"].any()
