"""Normalisation, data-bar detection, resampling and tiled inference."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from particleseg.inference import blend_window, even_tile_size, predict_tiled, tile_starts
from particleseg.preprocess import (
    detect_data_bar,
    input_normalizer,
    normalize_input,
    normalize_percentile,
    rescale,
    resize_to,
)


def test_percentile_normalisation_ignores_hot_pixels(rng):
    img = rng.normal(100, 10, (200, 200))
    img[0, :5] = 65535  # hot pixels
    img[1, :5] = -1000  # cold pixels
    out = normalize_percentile(img, 1, 99, clip=None)
    assert out.dtype == np.float32
    assert np.percentile(out, 1) == pytest.approx(0, abs=1e-3)
    assert np.percentile(out, 99) == pytest.approx(1, abs=1e-3)
    # min-max scaling would have squeezed the particles into a sliver of the range
    assert np.median(out) == pytest.approx(0.5, abs=0.05)
    assert normalize_percentile(img, 1, 99)[0, 0] == 1.5  # clipped


def test_bundle_normalisation_is_per_channel_or_none(rng):
    img = np.stack([rng.normal(100, 10, (40, 50)), rng.normal(5000, 800, (40, 50))], -1)
    norm = {"method": "percentile", "low": 1.0, "high": 99.0, "clip": None}
    out = normalize_input(img, norm)
    assert out.shape == img.shape and out.dtype == np.float32
    for c in range(2):  # each channel on its own percentiles, whatever its range
        assert np.allclose(out[..., c], normalize_percentile(img[..., c], 1.0, 99.0, None), atol=1e-5)
    assert normalize_input(img, {**norm, "clip": [0, 1]}).max() == 1.0
    assert np.array_equal(normalize_input(img, {"method": "none"}), img.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float64])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("flip", [False, True])
def test_strip_normaliser_gives_the_whole_image_values_bit_for_bit(rng, dtype, channels, flip):
    from particleseg.pipeline import invert

    scale = 255 if dtype == np.uint8 else 4000
    img = (rng.random((97, 61, channels)) * scale).astype(dtype)
    img[0, 0] = scale  # a hot pixel
    norm = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}
    source = invert(img) if flip else img
    whole = normalize_input(source, norm)
    prepare = input_normalizer(img, norm, invert=flip)
    for y0, y1 in [(0, 97), (0, 13), (40, 97), (96, 97)]:
        assert np.array_equal(prepare(img[y0:y1]), whole[y0:y1])
    # a constant image falls back to the full range, as normalize_input does
    flat = np.full((20, 30, channels), 7, dtype)
    assert np.array_equal(input_normalizer(flat, norm, invert=flip)(flat), normalize_input(flat, norm))
    none = {"method": "none"}
    assert np.array_equal(input_normalizer(img, none, invert=flip)(img), source.astype(np.float32))


def test_prepared_strips_give_the_prediction_of_the_normalised_image(rng):
    img = (rng.random((300, 260, 1)) * 255).astype(np.uint8)
    norm = {"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]}
    net = lambda b: ndi.uniform_filter(b, (1, 9, 9, 1)) * 2.0  # noqa: E731
    expected = predict_tiled(net, normalize_input(img, norm), tile=128, overlap=16, multiple_of=16)
    got = predict_tiled(net, img, tile=128, overlap=16, multiple_of=16, prepare=input_normalizer(img, norm))
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("factor", [0.3, 0.45, 0.8, 1.7])
@pytest.mark.parametrize("flip", [False, True])
def test_rescale_in_strips_is_rescale_bit_for_bit(rng, dtype, factor, flip, tmp_path):
    from particleseg.pipeline import invert
    from particleseg.preprocess import rescale_rows, rescaled_shape
    from particleseg.strips import RowFile

    img = (ndi.gaussian_filter(rng.random((131, 97)), 2) * 3000).astype(dtype)
    expected = rescale(invert(img) if flip else img, factor)
    assert expected.shape == rescaled_shape(img.shape, factor)
    for rows in (5, 64, 300):
        assert np.array_equal(rescale_rows(img, factor, invert=flip, strip_rows=rows), expected)
    store = RowFile(expected.shape, np.float32, tmp_path)  # into a row file, as the strips do
    rescale_rows(img, factor, out=store, invert=flip, strip_rows=16)
    assert np.array_equal(store.read(0, expected.shape[0]), expected)
    store.close()


def test_normalisation_of_an_almost_constant_image_is_finite():
    img = np.zeros((50, 50))
    img[0, 0] = 1
    assert np.isfinite(normalize_percentile(img)).all()


def _sem_like(rng, h=300, w=400, bar=0):
    img = np.clip(rng.normal(50, 8, (h, w)), 0, 255).astype(np.uint8)
    if bar:
        img[h - bar :] = 0
        img[h - bar + 5 : h - bar + 12, 10:120] = 255  # text
        img[h - bar + 20, 300:360] = 255  # scale bar
    return img


def test_data_bar_is_detected(rng):
    assert detect_data_bar(_sem_like(rng, bar=30)) == 30
    assert detect_data_bar(_sem_like(rng, bar=0)) == 0


def test_dark_region_at_the_bottom_that_continues_upwards_is_no_data_bar(rng):
    img = _sem_like(rng)
    img[150:] = 0  # a saturated black half, not a data bar
    assert detect_data_bar(img) == 0


def test_flat_background_with_particles_cut_by_the_bottom_edge_is_no_data_bar(rng):
    """Bright rods on a flat black background, fewer towards the bottom edge (as on 3 EMPS images).

    The bottom rows are mostly black, as a data bar's are, and the rows above are not; but no
    edge runs across the image where the black rows begin, so nothing is cropped. A bar drawn
    under the same picture still is.
    """
    h, w = 300, 400
    img = np.zeros((h, w), np.uint8)
    cols = rng.permutation(w)
    rods = np.clip(rng.normal(180, 20, w) + rng.normal(0, 3, (h, w)), 1, 255).astype(np.uint8)  # smooth along
    img[:, cols[: int(0.62 * w)]] = rods[:, cols[: int(0.62 * w)]]  # 38 % black above
    barred = img.copy()
    img[h - 40 :, cols[int(0.48 * w) :]] = 0  # 52 % black in the last 40 rows: rods end there
    assert all(np.mean(row == 0) > 0.5 for row in img[h - 40 :])
    assert detect_data_bar(img) == 0
    barred[h - 30 :] = 0
    barred[h - 25 : h - 18, 10:120] = 255  # text
    assert detect_data_bar(barred) == 30


def test_rescale_and_resize(rng):
    img = rng.random((40, 60)).astype(np.float32)
    small = rescale(img, 0.5)
    assert small.shape == (20, 30)
    back = resize_to(small[..., None], (40, 60))
    assert back.shape == (40, 60, 1)


@pytest.mark.parametrize("src, dst", [((70, 90, 2), (102, 130)), ((300, 200, 2), (97, 61)), ((50, 40), (50, 77))])
def test_resize_to_is_skimage_resize_in_any_strips_and_from_a_row_file(rng, src, dst):
    """Strip by strip, from an array or a row file: the values of skimage's resize, bit for bit."""
    from skimage.transform import resize

    from particleseg.strips import RowFile

    img = rng.random(src).astype(np.float32)
    want = resize(img, dst + src[2:], order=1, preserve_range=True, anti_aliasing=False, mode="reflect")
    whole = resize_to(img, dst, strip_rows=1 << 20)
    assert whole.dtype == np.float32 and np.array_equal(whole, want.astype(np.float32))
    for rows in (1, 7, 64):
        assert np.array_equal(resize_to(img, dst, strip_rows=rows), whole)
    store, out = RowFile(src, np.float32), RowFile(dst + src[2:], np.float32)
    store.write(0, img)
    resize_to(store, dst, out=out, strip_rows=16)
    assert np.array_equal(out.read(0, dst[0]), whole)
    with pytest.raises(ValueError, match="order 1"):
        resize_to(img, dst, order=3)


def test_tile_layout_covers_and_is_even():
    for length, tile in [(1024, 256), (768, 512), (4096, 1024), (256, 256)]:
        t = even_tile_size(length, tile, 32, 16)
        starts = tile_starts(length, t, 32)
        assert t % 16 == 0 and t <= tile
        assert starts[0] == 0 and starts[-1] + t == length
        assert all(b - a <= t - 32 for a, b in zip(starts, starts[1:]))  # overlap at least 32
        # evenly spread: the only repeated work is the overlaps and the rounding to 16
        n = len(starts)
        assert n * t <= length + (n - 1) * 32 + 16 * n


def test_blend_window_is_smooth_and_positive():
    w = blend_window((64, 64), 16)
    assert w.min() > 0 and w.max() == 1 and w[32, 32] == 1
    assert w[0, 32] < 0.02


def _box(batch):
    # a local operator standing in for a network: 5x5 mean, per channel
    return np.stack([ndi.uniform_filter(x, (5, 5, 1), mode="reflect") for x in batch])


@pytest.mark.parametrize("shape", [(300, 410), (64, 64), (40, 500), (17, 23)])
def test_tiled_prediction_matches_whole_image(rng, shape):
    img = rng.random(shape + (2,)).astype(np.float32)
    whole = predict_tiled(_box, img, tile=None, multiple_of=16)
    tiled = predict_tiled(_box, img, tile=96, overlap=24, batch_size=3, multiple_of=16)
    assert tiled.shape == shape + (2,)
    inner = (slice(3, -3), slice(3, -3))  # away from the padding of the whole-image run
    assert np.abs(tiled[inner] - whole[inner]).max() < 0.02


def test_tiled_prediction_writes_into_a_memmap(tmp_path, rng):
    img = rng.random((200, 150)).astype(np.float32)
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.float32, shape=(200, 150, 1))
    res = predict_tiled(_box, img, tile=64, overlap=16, multiple_of=16, out=out)
    assert res is out
    ref = predict_tiled(_box, img, tile=64, overlap=16, multiple_of=16)
    assert np.allclose(np.load(tmp_path / "out.npy"), ref)


def test_prediction_of_wrong_shape_is_reported(rng):
    with pytest.raises(ValueError, match="prediction has shape"):
        predict_tiled(lambda b: b[:, ::2], rng.random((64, 64)).astype(np.float32), tile=64, multiple_of=16)
