"""The whole chain on images whose answer is known, its output files, and the command line."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage as ndi

from conftest import draw_disks
from particleseg import Calibration, SegmentParams, segment_image
from particleseg.cli import main
from particleseg.errors import BundleError, InputError
from particleseg.io import write_tiff
from particleseg.models import load_bundle
from particleseg.pipeline import output_paths, segment_file, segment_files

# two touching disks, one free disk, one cut by the right border
DISKS = [(60, 60, 14), (60, 86, 14), (140, 150, 18), (100, 195, 15)]


def test_touching_particles_are_split_and_measured(threshold_bundle):
    img, _ = draw_disks((200, 200), DISKS)
    seg = segment_image(img, threshold_bundle, calibration=Calibration(5.0, "nm"))
    t = seg.table
    assert len(t) == 4
    assert t.touches_border.sum() == 1
    assert t.kept.tolist().count(False) == 1
    assert set(t.loc[~t.kept, "reject_reason"]) == {"border"}
    # the free disk of radius 18: about 37 px across, 5 nm per pixel
    free = t.loc[(t.X - 150 * 5).abs() < 30]
    assert free.MinFeret.item() == pytest.approx(37 * 5, rel=0.06)
    assert free.Area.item() == pytest.approx(np.pi * 18**2 * 25, rel=0.08)
    # the kept label image holds exactly the kept particles, numbered 1..N; rejected ones after
    assert np.unique(seg.kept_labels).tolist() == [0, 1, 2, 3]
    assert t.label.tolist() == [1, 2, 3, 4] and t.kept.tolist() == [True, True, True, False]


def test_without_split_touching_particles_merge(threshold_bundle):
    img, _ = draw_disks((200, 200), DISKS)
    seg = segment_image(img, threshold_bundle, SegmentParams(split=False))
    assert len(seg.table) == 3


def test_data_bar_is_cropped_and_counts_as_border(threshold_bundle):
    img, _ = draw_disks((200, 200), [(50, 50, 12), (165, 100, 14)])
    img[170:] = 0
    img[175:180, 10:80] = 255  # text in the bar
    seg = segment_image(img, threshold_bundle)
    assert seg.crop_rows == 30
    assert seg.labels[170:].max() == 0 and seg.probabilities[170:].max() == 0
    t = seg.table
    low = t.loc[t.Y > 140]
    assert low.touches_border.item() and not low.kept.item()
    assert t.loc[t.Y < 100, "kept"].item()


def test_rescaling_maps_results_back(threshold_bundle):
    img, _ = draw_disks((160, 160), [(80, 80, 20)])
    plain = segment_image(img, threshold_bundle, SegmentParams(exclude_border=False))
    scaled = segment_image(img, threshold_bundle, SegmentParams(particle_size=40.0, exclude_border=False))
    assert scaled.scale_factor == pytest.approx(0.5)  # the model was trained on 20-px particles
    assert scaled.labels.shape == img.shape
    assert scaled.table.Area.item() == pytest.approx(plain.table.Area.item(), rel=0.05)


def test_filters_reject_with_reasons(threshold_bundle):
    img, _ = draw_disks((200, 200), [(50, 50, 8), (120, 120, 20)])
    seg = segment_image(img, threshold_bundle, SegmentParams(shape={"ecd": (20, None)}))
    t = seg.table.sort_values("Area")
    assert t.reject_reason.tolist() == ["ecd<20", ""]


def test_intensity_filter_rejects_a_faint_particle(threshold_bundle):
    # four bright particles (220) and a dim blob (80) on a background of 40: at a low
    # probability threshold all five are segmented; Otsu's threshold of the image falls
    # between background and bright particles, so the dim blob is rejected
    bright = [(40, 40, 20), (40, 160, 20), (160, 40, 20), (160, 160, 20)]
    img, _ = draw_disks((200, 200), bright + [(100, 100, 15)], background=40, foreground=220)
    from skimage.draw import disk

    rr, cc = disk((100, 100), 15)
    img[rr, cc] = np.clip(np.random.default_rng(1).normal(80, 5, len(rr)), 0, 255)
    seg = segment_image(img, threshold_bundle, SegmentParams(threshold=0.001, intensity_filter="otsu"))
    t = seg.table
    assert len(t) == 5
    centre = (t.X - 100).abs() + (t.Y - 100).abs() < 5
    assert t.loc[centre, "reject_reason"].item() == "intensity<otsu"
    assert (t.loc[~centre, "reject_reason"] == "").all()


def test_min_confidence_drops_a_half_believed_detection(threshold_bundle):
    # a dim disk (~110 on 40, normalised ~0.45-0.5) gets a foreground probability near the
    # threshold: segmented at a low threshold, dropped by the confidence filter; the bright
    # disks (probability ~1) stay
    bright = [(40, 40, 20), (160, 160, 20)]
    img, _ = draw_disks((200, 200), bright + [(100, 100, 15)], background=40, foreground=220)
    from skimage.draw import disk

    rr, cc = disk((100, 100), 15)
    img[rr, cc] = np.clip(np.random.default_rng(1).normal(120, 5, len(rr)), 0, 255)
    loose = segment_image(img, threshold_bundle, SegmentParams(threshold=0.05))
    strict = segment_image(img, threshold_bundle, SegmentParams(threshold=0.05, min_confidence=0.9))
    assert len(loose.table) == 3
    assert len(strict.table) == 2
    assert (strict.table.X - 100).abs().min() > 30
    assert strict.labels[100, 100] == 0


def test_constant_image_and_bad_crop_are_clear_errors(threshold_bundle):
    with pytest.raises(InputError, match="x.tif: image is constant"):
        segment_image(np.full((50, 50), 3, np.uint8), threshold_bundle, name="x.tif")
    img, _ = draw_disks((50, 50), [])
    with pytest.raises(InputError, match="cannot crop 45 rows"):
        segment_image(img, threshold_bundle, SegmentParams(crop_rows=45), name="x.tif")


def test_model_and_image_must_agree(tmp_path, threshold_bundle):
    with pytest.raises(BundleError, match="model not found"):
        load_bundle(tmp_path / "nothing-here")
    with pytest.raises(BundleError, match="expects 1"):
        threshold_bundle.check_channels(3, "rgbstack.tif")


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_segment_file_writes_every_output_with_calibration(tmp_path, threshold_bundle):
    import roifile

    img, _ = draw_disks((200, 200), DISKS)
    src = write_tiff(tmp_path / "in" / "sample.tif", img, Calibration(7.5, "nm"))
    before = _digest(src)
    row = segment_file(src, tmp_path / "out", threshold_bundle)
    assert _digest(src) == before  # input untouched
    paths = output_paths(src, tmp_path / "out")
    assert all(p.exists() for p in paths.values())
    with tifffile.TiffFile(paths["labels"]) as tif:
        labels = tif.asarray()
        assert tif.imagej_metadata["unit"] == "nm"
        num, den = tif.pages[0].tags["XResolution"].value
        assert den / num == pytest.approx(7.5)
    assert np.unique(labels).tolist() == [0, 1, 2, 3] and row["count"] == 3
    assert tifffile.imread(paths["prob"]).dtype == np.float32
    # the mask: 0/255 with a line between the touching particles, so labelling it (8-connected,
    # as ImageJ's Analyze Particles) gives the particles of the label image
    mask = tifffile.imread(paths["mask"])
    assert set(np.unique(mask)) == {0, 255}
    assert ndi.label(mask > 0, np.ones((3, 3)))[1] == 3 and ndi.label(labels > 0, np.ones((3, 3)))[1] == 2
    assert [r.name for r in roifile.roiread(paths["rois"])] == ["particle-1", "particle-2", "particle-3"]
    table = pd.read_csv(paths["particles"])
    assert {"Area [nm^2]", "MinFeret [nm]", "Perim. [nm]", "Circ.", "FeretAngle [deg]", "ECD [nm]"} <= set(
        table.columns
    )
    assert "unit" not in table.columns
    assert len(table) == 4 and table.kept.sum() == 3 and table.label.tolist() == [1, 2, 3, 4]
    assert row["unit"] == "nm" and row["area_unit"] == "nm^2"
    assert row["nano_by_median_MinFeret"] is False  # ~30 px * 7.5 nm > 100 nm


def test_stacks_are_segmented_slice_by_slice(tmp_path, threshold_bundle):
    a, _ = draw_disks((120, 120), [(60, 60, 15)], seed=1)
    b, _ = draw_disks((120, 120), [(40, 40, 10), (80, 80, 12)], seed=2)
    src = write_tiff(tmp_path / "stack.tif", np.stack([a, b]), Calibration(2.0, "nm"))
    row = segment_file(src, tmp_path / "out", threshold_bundle)
    assert row["slices"] == 2 and row["count"] == 3
    labels = tifffile.imread(tmp_path / "out" / "stack_labels.tif")
    assert labels.shape == (2, 120, 120)
    assert np.unique(labels).tolist() == [0, 1, 2, 3]  # unique across slices, 1..N
    table = pd.read_csv(tmp_path / "out" / "stack_particles.csv")
    assert table.slice.tolist() == [1, 2, 2] and table.label.tolist() == [1, 2, 3]


def test_batch_goes_on_after_a_bad_file(tmp_path, threshold_bundle):
    img, _ = draw_disks((100, 100), [(50, 50, 12)])
    write_tiff(tmp_path / "in" / "good.tif", img)
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 not really")
    summary, failures = segment_files([tmp_path / "in"], tmp_path / "out", threshold_bundle, progress=False)
    assert summary.status.tolist() == ["failed", "ok"]
    assert len(failures) == 1 and "broken.tif" in failures[0][1]
    saved = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert saved.status.tolist() == ["failed", "ok"] and "broken.tif" in saved.error[0]


def test_cli_segment_with_options(tmp_path, threshold_bundle, capsys):
    img, _ = draw_disks((200, 200), DISKS)
    write_tiff(tmp_path / "a.tif", img)
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(tmp_path / "a.tif"),
            "--model",
            str(threshold_bundle.path),
            "--out",
            str(out),
            "--image-width",
            "1000",
            "--quiet",
            "--ecd",
            "0:1000",
        ]
    )
    assert rc == 0
    t = pd.read_csv(out / "a_particles.csv")
    assert t["Width [nm]"].min() % 5 == 0  # 5 nm per pixel
    assert "3 particles" in capsys.readouterr().out
    # a second run must not overwrite silently
    rc = main(["segment", str(tmp_path / "a.tif"), "--model", str(threshold_bundle.path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (
        main(
            [
                "segment",
                str(tmp_path / "a.tif"),
                "--model",
                str(threshold_bundle.path),
                "--out",
                str(out),
                "--quiet",
                "--overwrite",
                "--pixel-size",
                "0.01",
                "--unit",
                "um",
            ]
        )
        == 0
    )
    assert "Area [µm^2]" in pd.read_csv(out / "a_particles.csv").columns


def test_cli_says_when_the_network_is_averaged_over_orientations(tmp_path, threshold_bundle, capsys):
    """``--augment`` adds one line per image; the bundle's default (off) adds none.

    The threshold bundle's "network" looks the same from every orientation, so the average
    finds the same 3 particles.
    """
    from particleseg.pipeline import AUGMENT_NOTE

    img, _ = draw_disks((200, 200), DISKS)
    write_tiff(tmp_path / "a.tif", img)
    base = ["segment", str(tmp_path / "a.tif"), "--model", str(threshold_bundle.path), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    out = capsys.readouterr().out
    assert "3 particles" in out and AUGMENT_NOTE not in out
    assert main([*base, "--out", str(tmp_path / "tta"), "--augment"]) == 0
    out = capsys.readouterr().out
    assert "3 particles" in out and out.count(AUGMENT_NOTE) == 1


def test_cli_reports_a_missing_model_in_one_line(tmp_path, capsys):
    img, _ = draw_disks((64, 64), [(30, 30, 8)])
    write_tiff(tmp_path / "a.tif", img)
    rc = main(["segment", str(tmp_path / "a.tif"), "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.startswith("particleseg: error:") and "missing: model not found" in err
    assert "\n" not in err


def test_cli_rejects_a_bad_range(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "x.tif", "--out", "o", "--area", "12"])
    assert "expected MIN-MAX" in capsys.readouterr().err
