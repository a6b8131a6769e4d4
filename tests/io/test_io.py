"""Reading images with calibration, writing ImageJ-compatible outputs, ROI sets."""

import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pytest
import tifffile

from particleseg.errors import InputError, OutputExistsError
from particleseg.io import (
    Calibration,
    canonical_unit,
    list_images,
    read_image,
    trace_outline,
    write_rois,
    write_tiff,
)


def test_units_are_canonicalised():
    assert canonical_unit("micron") == "µm"
    assert canonical_unit("um") == "µm"
    assert canonical_unit("\\u00B5m") == "µm"
    assert canonical_unit("pixel") == "px"
    assert Calibration(2.5, "um").nm_per_unit() == 1000
    with pytest.raises(ValueError, match="unknown length unit"):
        canonical_unit("furlong")


def test_tiff_roundtrip_keeps_calibration(tmp_path, rng):
    data = rng.integers(0, 4000, (40, 50)).astype(np.uint16)
    p = write_tiff(tmp_path / "a.tif", data, Calibration(7.5, "nm"))
    img, cal = read_image(p)
    assert img.dtype == np.uint16 and np.array_equal(img, data)
    assert cal.unit == "nm" and cal.pixel_size == pytest.approx(7.5, rel=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.float64, bool])
def test_large_images_are_written_in_strips_with_the_same_pixels(tmp_path, rng, monkeypatch, dtype):
    from particleseg.io import write as w

    data = rng.integers(0, 3000, (301, 77)).astype(dtype)
    whole = write_tiff(tmp_path / "whole.tif", data, Calibration(2.0, "nm"))
    monkeypatch.setattr(w, "WRITE_STRIPS_ABOVE", 100)
    monkeypatch.setattr(w, "WRITE_STRIP_ROWS", 64)
    # from a read-only memory map, as a large image's results come
    np.save(tmp_path / "data.npy", data)
    mapped = np.load(tmp_path / "data.npy", mmap_mode="r")
    strips = write_tiff(tmp_path / "strips.tif", mapped, Calibration(2.0, "nm"))
    a, b = tifffile.imread(whole), tifffile.imread(strips)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    with tifffile.TiffFile(strips) as tif:
        assert tif.pages[0].rowsperstrip == 64 and tif.imagej_metadata["unit"] == "nm"
    assert read_image(strips)[1] == read_image(whole)[1] == Calibration(2.0, "nm")
    assert np.array_equal(mapped, data)  # the pages it dropped are read again from the file


def test_release_pages_drops_a_read_only_map_from_the_resident_set(tmp_path):
    from particleseg.io.write import release_pages

    def resident_file_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))

    np.save(tmp_path / "big.npy", np.arange(16 << 20, dtype=np.int32).reshape(4096, 4096))
    mapped = np.load(tmp_path / "big.npy", mmap_mode="r")
    before = resident_file_kib()
    assert int(mapped[:, ::1024].sum()) > 0 and int(mapped.sum(dtype=np.int64)) > 0  # touch every page
    touched = resident_file_kib()
    release_pages(mapped, 0, 2048)
    half = resident_file_kib()
    release_pages(mapped)
    after = resident_file_kib()
    assert touched - before > 50_000  # 64 MiB read
    assert 20_000 < touched - half < 45_000 and after - before < 5_000
    assert int(mapped[4095, 4095]) == (16 << 20) - 1
    release_pages(np.zeros(10))  # not a map: nothing happens


def test_micron_calibration_is_written_as_imagej_understands(tmp_path, rng):
    p = write_tiff(tmp_path / "a.tif", rng.random((20, 20)).astype(np.float32), Calibration(0.25, "µm"))
    with tifffile.TiffFile(p) as tif:
        assert tif.imagej_metadata["unit"] == "micron"
    assert read_image(p)[1] == Calibration(0.25, "µm")


def test_zeiss_sem_pixel_size_is_read(tmp_path, rng):
    # The Zeiss CZ_SEM tag (34118) as the microscope writes it: a text block of NAME / value lines.
    text = "\r\n".join(
        ["", "AP_IMAGE_PIXEL_SIZE", "Image Pixel Size = 7.346 nm", "DP_DETECTOR_CHANNEL", "Signal A = InLens"]
    )
    p = tmp_path / "zeiss.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (30, 30)).astype(np.uint8), extratags=[(34118, "s", 0, text, True)])
    _, cal = read_image(p)
    assert cal == Calibration(7.346, "nm")


def test_uncalibrated_tiff_gives_pixels(tmp_path, rng):
    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (30, 30)).astype(np.uint8))
    assert read_image(p)[1] == Calibration()


def test_rgb_png_is_converted_to_luminance(tmp_path):
    import imageio.v3 as iio

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200  # pure red
    rgb[5:10, 5:10] = 255
    iio.imwrite(tmp_path / "c.png", rgb)
    img, _ = read_image(tmp_path / "c.png")
    assert img.shape == (20, 30)
    assert img[0, 0] == pytest.approx(0.2125 * 200, abs=0.01)
    assert img[6, 6] == pytest.approx(255, abs=0.01)


def test_stack_is_read_as_zyx(tmp_path, rng):
    data = rng.integers(0, 255, (3, 20, 25)).astype(np.uint8)
    p = write_tiff(tmp_path / "s.tif", data, Calibration(1.0, "µm"))
    img, cal = read_image(p)
    assert img.shape == (3, 20, 25) and np.array_equal(img, data)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"II*\x00garbage"), "not a valid TIFF"),
        (lambda p: tifffile.imwrite(p, np.full((30, 30), 7, np.uint8)), "constant"),
        (lambda p: tifffile.imwrite(p, np.where(np.eye(30) > 0, np.nan, 1.0).astype(np.float32)), "NaN"),
        (lambda p: tifffile.imwrite(p, np.arange(8, dtype=np.uint8).reshape(2, 4)), "too small"),
    ],
)
def test_bad_files_give_one_line_naming_the_file(tmp_path, make, message):
    p = tmp_path / "bad.tif"
    make(p)
    with pytest.raises(InputError) as err:
        read_image(p)
    text = str(err.value)
    assert str(p) in text and message in text and "\n" not in text


def test_truncated_tiff_is_an_error(tmp_path, rng):
    p = tmp_path / "full.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (200, 300)).astype(np.uint8))
    data = p.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.tif: cannot read image"):
        read_image(tmp_path / "cut.tif")


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(tmp_path / "x.bmp")


def test_a_pipe_or_a_folder_named_as_an_image_is_one_line_and_never_opened(tmp_path):
    """A pipe (or a socket, a device) and a folder with an image's name: one line each, no wait.

    Opening a pipe nobody writes to blocks; the readers must not open it. A batch given both
    and an image segments the image and reports the two.
    """
    from particleseg.io import read_calibration
    from particleseg.io.read import image_pixels, read_array

    pipe, folder = tmp_path / "pipe.tif", tmp_path / "folder.tif"
    os.mkfifo(pipe)
    folder.mkdir()
    cases = [
        (lambda: read_image(pipe), "pipe.tif: not a regular file (a pipe, socket or device), expected an image file"),
        (
            lambda: read_array(pipe, "mask"),
            "pipe.tif: not a regular file (a pipe, socket or device), expected a mask file",
        ),
        (lambda: read_calibration(pipe), "pipe.tif: not a regular file"),
        (lambda: read_image(folder), "folder.tif: is a folder, expected an image file"),
    ]
    with ThreadPoolExecutor(1) as pool:
        for call, message in cases + [(lambda: image_pixels(pipe), None)]:
            future = pool.submit(call)
            try:
                error = future.exception(timeout=20)
            except FutureTimeout:
                open(pipe, "wb").close()  # let the blocked reader go, then fail
                pytest.fail(f"a reader opened the pipe and waited ({message})")
            if message is None:
                assert error is None and future.result() == 0  # the size is unknown, not read
            else:
                assert isinstance(error, InputError) and message in str(error), error
    from particleseg.simulate import simulate_sem_image

    tifffile.imwrite(tmp_path / "image.tif", simulate_sem_image((128, 128), rng=1, particle_size=20).image)
    run = subprocess.run(
        [sys.executable, "-m", "particleseg", "segment", str(tmp_path), "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    err = run.stderr.strip().splitlines()
    assert run.returncode == 1 and err == [
        f"particleseg: error: {folder}: is a folder, expected an image file",
        f"particleseg: error: {pipe}: not a regular file (a pipe, socket or device), expected an image file",
        "particleseg: 2 of 3 image(s) failed (errors above)",
    ], run.stderr
    assert (tmp_path / "out" / "image_labels.tif").exists()


def test_writers_refuse_to_overwrite(tmp_path):
    p = write_tiff(tmp_path / "a.tif", np.ones((4, 4), np.uint8))
    before = p.read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_tiff(p, np.zeros((4, 4), np.uint8))
    assert p.read_bytes() == before
    write_tiff(p, np.zeros((4, 4), np.uint8), overwrite=True)
    assert not np.any(tifffile.imread(p))
    assert [q.name for q in tmp_path.iterdir()] == ["a.tif"]  # no temporary files left


def test_label_images_are_written_as_16_bit(tmp_path):
    lab = np.zeros((10, 10), np.int32)
    lab[2:4, 2:4] = 300
    p = write_tiff(tmp_path / "l.tif", lab)
    assert tifffile.imread(p).dtype == np.uint16


def test_list_images_expands_folders(tmp_path):
    for name in ("b.tif", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images([tmp_path])] == ["a.png", "b.tif"]


def _polygon_area(poly):
    x, y = poly[:, 0].astype(float), poly[:, 1].astype(float)
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


@pytest.mark.parametrize("seed", range(5))
def test_traced_outline_encloses_exactly_the_pixels(seed):
    from skimage.draw import polygon as draw_polygon
    from skimage.measure import label

    rng = np.random.default_rng(seed)
    mask = np.zeros((40, 40), bool)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 9))
    r = rng.uniform(5, 15, 9)
    rr, cc = draw_polygon(20 + r * np.sin(ang), 20 + r * np.cos(ang), mask.shape)
    mask[rr, cc] = True
    mask = label(mask, connectivity=2) == 1
    poly = trace_outline(mask)
    assert _polygon_area(poly) == mask.sum()
    # every vertex is a pixel corner on the mask's boundary
    assert poly.min() >= 0 and poly[:, 0].max() <= 40 and poly[:, 1].max() <= 40


def test_outline_keeps_diagonal_pixels_together():
    mask = np.zeros((5, 5), bool)
    mask[1, 1] = mask[2, 2] = True  # touch only at a corner: one 8-connected particle
    poly = trace_outline(mask)
    assert _polygon_area(poly) == 2


def test_rois_open_as_imagej_polygons(tmp_path):
    import roifile

    lab = np.zeros((30, 30), np.int32)
    lab[2:8, 3:10] = 1
    lab[15:25, 15:20] = 4
    p = write_rois(tmp_path / "r.zip", lab)
    with zipfile.ZipFile(p) as zf:
        assert len(zf.namelist()) == 2
    rois = roifile.roiread(p)
    assert [r.name for r in rois] == ["particle-1", "particle-4"]
    # areas of the polygons equal the pixel counts: ImageJ measures the same particles
    assert sorted(_polygon_area(r.coordinates()) for r in rois) == [42, 50]
    b = rois[0]
    assert (b.left, b.top, b.right, b.bottom) == (3, 2, 10, 8)


def test_rois_of_a_large_label_map_are_those_of_the_whole_array(tmp_path, rng, monkeypatch):
    import roifile
    from scipy import ndimage as ndi

    from particleseg.io import write as w

    lab, _ = ndi.label(ndi.gaussian_filter(rng.random((300, 200)), 3) > 0.52)
    whole = roifile.roiread(write_rois(tmp_path / "whole.zip", lab))
    monkeypatch.setattr(w, "WRITE_STRIPS_ABOVE", 1000)
    np.save(tmp_path / "lab.npy", lab.astype(np.int32))
    mapped = np.load(tmp_path / "lab.npy", mmap_mode="r")
    from particleseg.io.rois import _object_slices

    assert _object_slices(mapped, strip_rows=7) == ndi.find_objects(lab)
    parts = roifile.roiread(write_rois(tmp_path / "parts.zip", mapped))
    assert len(whole) > 10 and [r.name for r in parts] == [r.name for r in whole]
    assert all(np.array_equal(a.coordinates(), b.coordinates()) for a, b in zip(parts, whole))


# ------------------------------------------------------------------------------------------
# Fiji: the calibration policy of the command line (issue 15, item 5)


class _FakeCalibration:
    def __init__(self, unit="pixel", width=1.0, height=1.0):
        self.unit, self.pixelWidth, self.pixelHeight = unit, width, height

    def scaled(self):
        return self.pixelWidth != 1.0 or self.pixelHeight != 1.0 or self.unit not in ("pixel", "")

    def getUnit(self):
        return self.unit


class _FakeFileInfo:
    def __init__(self, path, width, height):
        self.directory, self.fileName = str(path.parent) + "/", path.name
        self.width, self.height = width, height


class _FakeImagePlus:
    """What calibrate_from_file asks of an ImagePlus.

    It stands for an image ImageJ opened without a scale (a microscope TIFF whose metadata only
    particleseg reads).
    """

    def __init__(self, path, shape, cal=None):
        self.path, self.shape, self.cal = path, shape, cal or _FakeCalibration()

    def getCalibration(self):
        return self.cal

    def getTitle(self):
        return self.path.name

    def getOriginalFileInfo(self):
        return _FakeFileInfo(self.path, self.shape[1], self.shape[0])

    def getWidth(self):
        return self.shape[1]

    def getHeight(self):
        return self.shape[0]


def test_fiji_non_square_pixels_in_the_file_are_an_error_not_pixels(tmp_path):
    """Non-square pixels in a file's microscope metadata are an error in Fiji, not pixels.

    A file whose microscope metadata has pixels that are not square was measured in pixels in Fiji;
    now it is an error, as on the command line, telling how to allow it (a square scale set in
    ImageJ); invalid metadata still falls back to pixels with a Log line.
    """
    from particleseg.fiji.convert import calibrate_from_file, get_calibration

    img = np.random.default_rng(0).integers(0, 255, (40, 40), np.uint8)
    path = tmp_path / "fei.tif"
    text = "[User]\nDate=01/01/2020\n[Scan]\nPixelWidth=7.3e-09\nPixelHeight=9e-09\n"
    tifffile.imwrite(path, img, extratags=[(34682, "s", 0, text, True)])
    with pytest.raises(InputError) as exc:
        calibrate_from_file(_FakeImagePlus(path, img.shape))
    assert str(exc.value) == (
        f"{path}: pixels are not square (7.3 x 9 nm in its FEI/Thermo Fisher SEM metadata); "
        "set a square scale in Image > Properties or Analyze > Set Scale to measure it"
    )
    # ImageJ's own scale, not square: an error too; square: used as it is
    with pytest.raises(InputError, match=r"pixels are not square \(5 x 7 nm\)"):
        get_calibration(_FakeImagePlus(path, img.shape, _FakeCalibration("nm", 5.0, 7.0)))
    assert calibrate_from_file(_FakeImagePlus(path, img.shape, _FakeCalibration("nm", 5.0, 5.0))) == (
        Calibration(5.0, "nm"),
        "",
    )
    # invalid metadata: pixels, said in the Log line
    bad = tmp_path / "bad.tif"
    tifffile.imwrite(bad, img, extratags=[(34682, "s", 0, text.replace("7.3e-09", "-1").replace("9e-09", "-1"), True)])
    with pytest.warns(Warning, match=r"\[Scan\] PixelWidth: pixel size -1e\+09 nm"):
        cal, note = calibrate_from_file(_FakeImagePlus(bad, img.shape))
    assert cal == Calibration() and "measuring in pixels" in note


def test_fiji_segment_and_evaluate_refuse_non_finite_pixels_naming_the_image(threshold_bundle):
    """Item 6 in Fiji: the Segment and Evaluate commands refuse non-finite pixels, naming the image.

    Segment Particles... passes the ImagePlus' pixels and title to segment_image, Evaluate
    Segmentation... to evaluate_pair; both refuse NaN/Inf naming it.
    """
    from particleseg.metrics import evaluate_pair
    from particleseg.pipeline import segment_image

    img = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    img[1, 1], img[2, 2], img[3, 3] = np.nan, np.inf, -np.inf
    with pytest.raises(InputError, match=r"^sem.tif: contains 3 NaN or infinite pixel values$"):
        segment_image(img, threshold_bundle, name="sem.tif")
    with pytest.raises(InputError, match=r"^proposal: contains 3 NaN or infinite pixel values$"):
        evaluate_pair(img, (np.nan_to_num(img) > 0.5).astype(np.uint8), name="proposal", truth_name="truth")


def test_an_interrupt_right_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    # Ctrl-C (or SIGTERM, which the command line turns into it) between mkstemp and the next
    # line: the KeyboardInterrupt goes on (no AttributeError from the clean-up, as a whole-suite
    # run once showed) and no temporary file is left beside the output
    from particleseg.io import write as write_module

    real_close = write_module.os.close

    def interrupted(fd):
        real_close(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(write_module.os, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_module.write_atomic(tmp_path / "out.txt", lambda p: p.write_text("x"))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
