"""The Fiji bridge against a real ImageJ 1.x (Debian's ij.jar) under Xvfb, in this process.

One JVM for the whole session (JPype cannot restart one). Every test drives ImageJ through
real macro code, the way users and the recorder do, and compares what ImageJ shows (Results
table, ROI Manager, images, calibration) with the Python pipeline on the same pixels and
parameters, so the tests do not depend on what the (untrained) test network predicts.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from particleseg.io import Calibration, read_image, write_tiff

IJ_JAR = os.environ.get("PARTICLESEG_IJ_JAR", "/usr/share/java/ij.jar")

pytestmark = [
    pytest.mark.imagej,
    pytest.mark.skipif(
        not Path(IJ_JAR).is_file(), reason=f"ImageJ 1.x jar not found at {IJ_JAR} (apt-get install libij-java)"
    ),
    pytest.mark.skipif(not (os.environ.get("JAVA_HOME") or shutil.which("java")), reason="Java not found"),
    pytest.mark.skipif(
        not (os.environ.get("DISPLAY") or shutil.which("Xvfb")), reason="no DISPLAY and no Xvfb (apt-get install xvfb)"
    ),
]


@pytest.fixture(scope="session")
def ij():
    pytest.importorskip("jpype")
    pytest.importorskip("scyjava")
    from particleseg import fiji

    return fiji.start(ij_jar=IJ_JAR, mode="headless")


@pytest.fixture(autouse=True)
def _clean(ij):
    ij.close_all()
    yield
    ij.close_all()


def jclass(name):
    import scyjava

    return scyjava.jimport(name)


def macro_path(p: Path) -> str:
    return str(p).replace("\\", "/")


def blobs_image(rng, shape=(96, 128), n=7, radius=7):
    img = (rng.random(shape) * 60 + 40).astype(np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centers = [(10, 10)] + [tuple(rng.integers(radius + 4, np.array(shape) - radius - 4)) for _ in range(n - 1)]
    for cy, cx in centers:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 220
    return img


def thread_dump() -> str:
    """Return the open windows and the stacks of every Java and Python thread (for a hang's report)."""
    import sys
    import traceback

    lines = []
    try:
        Window = jclass("java.awt.Window")
        lines.append(
            "windows: "
            + "; ".join(
                f"{w.getClass().getName()} {getattr(w, 'getTitle', lambda: '')()!s} "
                f"showing={w.isShowing()} displayable={w.isDisplayable()}"
                for w in Window.getWindows()
            )
        )
        for thread, frames in dict(jclass("java.lang.Thread").getAllStackTraces()).items():
            lines.append(f"java thread {thread.getName()} {thread.getState()}")
            lines.extend(f"    at {f}" for f in list(frames)[:25])
    except Exception as exc:  # noqa: BLE001 - a report, best effort
        lines.append(f"(no Java thread dump: {exc})")
    for ident, frame in sys._current_frames().items():
        lines.append(f"python thread {ident}")
        lines.extend("    " + x.rstrip() for x in traceback.format_stack(frame)[-12:])
    return "\n".join(lines)


#: how long a GUI step may take before the test fails: a guard against hangs, not a timing check, so
#: long enough for a machine whose cores are taken by other work (a 60-s guard failed beside a training run)
HANG_SECONDS = 300


def run_with_deadline(fn, seconds=HANG_SECONDS):
    """Run fn in a thread; fail (instead of hanging the suite) if it does not return."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "ImageJ did not return: a dialog or a deadlock would hang a headless run\n" + thread_dump()
    if "error" in out:
        raise out["error"]
    return out.get("value")


# ------------------------------------------------------------------------------------------
# NumPy <-> ImagePlus


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_roundtrip_2d_keeps_values_type_and_calibration(ij, rng, dtype):
    from particleseg.fiji import from_imageplus, to_imageplus

    a = (rng.random((37, 53)) * (200 if dtype == np.uint8 else 60000)).astype(dtype)
    imp = to_imageplus(a, Calibration(0.25, "µm"), "rt")
    assert int(imp.getBitDepth()) == {np.uint8: 8, np.uint16: 16, np.float32: 32}[dtype]
    assert (int(imp.getWidth()), int(imp.getHeight())) == (53, 37)
    assert str(imp.getCalibration().getUnit()) == "µm" and float(imp.getCalibration().pixelWidth) == 0.25
    back, cal = from_imageplus(imp)
    assert back.dtype == dtype and np.array_equal(back, a)
    assert cal == Calibration(0.25, "µm")
    # pixel order as ImageJ sees it (x, y)
    assert float(imp.getProcessor().getPixelValue(7, 3)) == pytest.approx(float(a[3, 7]))


def test_roundtrip_stack_and_converted_types(ij, rng):
    from particleseg.fiji import from_imageplus, to_imageplus

    stack = (rng.random((3, 20, 30)) * 1000).astype(np.uint16)
    imp = to_imageplus(stack, Calibration(4.0, "nm"), "stack")
    assert int(imp.getStackSize()) == 3 and int(imp.getNSlices()) == 3
    back, cal = from_imageplus(imp)
    assert np.array_equal(back, stack) and cal == Calibration(4.0, "nm")
    with pytest.raises(Exception, match="stack of 3 slices"):
        from_imageplus(imp, allow_stack=False)
    # labels wider than 16 bits become 32-bit float; booleans 0/255; uncalibrated stays px
    big = np.arange(600, dtype=np.int32).reshape(20, 30) * 200
    b, cal = from_imageplus(to_imageplus(big))
    assert b.dtype == np.float32 and np.array_equal(b, big) and cal == Calibration()
    m, _ = from_imageplus(to_imageplus(big > 50000))
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}


def test_tiff_opened_by_imagej_equals_python_reader(ij, tmp_path, rng):
    from particleseg.fiji import from_imageplus

    a = (rng.random((40, 50)) * 4000).astype(np.uint16)
    write_tiff(tmp_path / "a.tif", a, Calibration(1.5, "nm"))
    ij.run_macro(f'setBatchMode(true); open("{macro_path(tmp_path / "a.tif")}");', end_batch_mode=False)
    arr, cal = from_imageplus(ij.image())
    ref, ref_cal = read_image(tmp_path / "a.tif")
    assert np.array_equal(arr, ref) and cal == ref_cal == Calibration(1.5, "nm")


def test_tiff_written_in_strips_opens_in_imagej_with_its_pixels(ij, tmp_path, rng, monkeypatch):
    from particleseg.fiji import from_imageplus
    from particleseg.io import write as w

    monkeypatch.setattr(w, "WRITE_STRIPS_ABOVE", 1000)
    monkeypatch.setattr(w, "WRITE_STRIP_ROWS", 16)
    labels = rng.integers(0, 70000, (100, 60)).astype(np.int32)  # beyond uint16: float32
    for data in (labels, labels > 35000, labels % 5000):
        write_tiff(tmp_path / "s.tif", data, Calibration(1.5, "nm"), overwrite=True)
        ij.run_macro(f'setBatchMode(true); open("{macro_path(tmp_path / "s.tif")}");', end_batch_mode=False)
        arr, cal = from_imageplus(ij.image())
        ref, ref_cal = read_image(tmp_path / "s.tif")
        assert np.array_equal(arr, ref) and cal == ref_cal == Calibration(1.5, "nm")
        assert np.array_equal(ref, data.astype(np.uint8) * 255 if data.dtype == bool else data)
        ij.run_macro("close();")


def test_rgb_is_refused_with_one_line(ij):
    from particleseg.fiji import from_imageplus

    ij.run_macro('setBatchMode(true); newImage("colour", "RGB ramp", 32, 32, 1);', end_batch_mode=False)
    with pytest.raises(Exception, match="colour: is an RGB image; convert it"):
        from_imageplus(ij.image())


# ------------------------------------------------------------------------------------------
# Segment Particles... against the Python pipeline


@pytest.fixture
def sem_image(tmp_path, rng):
    path = tmp_path / "sem one.tif"  # a space in the name, as real files have
    write_tiff(path, blobs_image(rng), Calibration(2.5, "nm"))
    return path


def threshold_with_particles(path, bundle) -> float:
    """Return a threshold at which the (untrained) test network gives some particles on this image."""
    from particleseg.pipeline import SegmentParams, predict_probabilities

    img, _ = read_image(path)
    fg = predict_probabilities(img, bundle, SegmentParams(crop_rows=0))[..., 0]
    return float(np.round(np.quantile(fg, 0.75), 4))


def test_segment_particles_macro_matches_python_pipeline(ij, sem_image, tiny_bundle):
    from particleseg.fiji import from_imageplus
    from particleseg.pipeline import SegmentParams, segment_image

    thr = threshold_with_particles(sem_image, tiny_bundle)
    options = (
        f"model=[{tiny_bundle.path}] threshold={thr} split seed_level=0.5 split_level=1 min_size=4 fill_holes "
        "exclude_border intensity_filter=none polarity=bright crop_rows=0 particle_size=0 "
        "probability labels mask clear add overlay histogram histogram_of=feret_min"
    )
    result = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(sem_image)}");
        run("Segment Particles...", "{options}");
        getPixelSize(unit, pw, ph);
        return "" + nResults + "|" + roiManager("count") + "|" + getTitle() + "|" + unit + "|" + pw;
    """,
        end_batch_mode=False,
    )
    n_results, n_rois, title, unit, pw = result.split("|")

    image, cal = read_image(sem_image)
    params = SegmentParams(
        threshold=thr,
        split=True,
        seed_level=0.5,
        split_level=1.0,
        min_size=4,
        fill_holes=True,
        exclude_border=True,
        crop_rows=0,
    )
    seg = segment_image(image, tiny_bundle, params, cal, name="sem one.tif")
    kept = seg.table[seg.table["kept"]]
    assert len(kept) > 0 and (~seg.table["kept"]).sum() > 0, "test image should give kept and rejected particles"

    # the input stays active, with its calibration
    assert title == "sem one.tif" and unit == "nm" and float(pw) == 2.5
    # Results table: one row per kept particle, calibrated, equal to the Python table
    assert int(n_results) == len(kept) and int(n_rois) == len(kept)
    res = ij.results()
    assert list(res["label"].astype(int)) == list(kept["label"])
    assert_same_columns(res, kept)
    assert res["Label"].iloc[0] == f"sem one.tif:particle-{kept['label'].iloc[0]}"
    # output images: same pixels as the Python result, same calibration as the input
    from particleseg.postprocess import labels_to_mask

    mask = labels_to_mask(seg.kept_labels) * 255  # touching particles separated by a line
    for suffix, expected in (("labels", seg.kept_labels), ("mask", mask), ("prob", seg.foreground)):
        imp = ij.image(f"sem one_{suffix}")
        assert imp is not None, suffix
        arr, ocal = from_imageplus(imp)
        assert ocal == Calibration(2.5, "nm"), suffix
        np.testing.assert_allclose(arr.astype(float), np.asarray(expected, float), atol=1e-6, err_msg=suffix)
    # histogram plot as an image (batch mode)
    assert any(t.endswith("histogram") for t in ij.image_titles())


def assert_same_columns(res: pd.DataFrame, ref: pd.DataFrame, at_least: int = 8) -> None:
    """Check that the numeric columns the Results table shares with a measurement table are equal."""
    shared = [c for c in ref.columns if c in res.columns and c != "label" and pd.api.types.is_numeric_dtype(ref[c])]
    assert len(shared) >= at_least, (list(res.columns), list(ref.columns))
    for col in shared:
        np.testing.assert_allclose(res[col].to_numpy(float), ref[col].to_numpy(float), rtol=1e-6, err_msg=col)


def test_overlay_marks_rejected_particles_red_and_roi_names(ij, sem_image, tiny_bundle):
    thr = threshold_with_particles(sem_image, tiny_bundle)
    ret = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(sem_image)}");
        run("Segment Particles...", "model=[{tiny_bundle.path}] threshold={thr} split min_size=4 exclude_border crop_rows=0 clear add overlay");
        roiManager("select", 0);
        getStatistics(area);
        return "" + roiManager("count") + "|" + Roi.getName + "|" + area;
    """,  # noqa: E501 - the macro as ImageJ runs it
        end_batch_mode=False,
    )
    n_rois, first_name, first_area = ret.split("|")
    imp = ij.image("sem one.tif")
    ov = imp.getOverlay()
    res = ij.results()
    assert ov is not None and int(ov.size()) > len(res)
    colors = [
        (int(ov.get(i).getStrokeColor().getRed()), int(ov.get(i).getStrokeColor().getGreen()))
        for i in range(int(ov.size()))
    ]
    n_red = sum(1 for r, g in colors if r > 200 and g < 100)
    n_green = sum(1 for r, g in colors if g > 200 and r < 100)
    assert n_green == len(res) and n_red == int(ov.size()) - len(res) > 0
    assert int(n_rois) == len(res)
    assert first_name == f"particle-{int(res['label'].iloc[0])}"
    # ImageJ's own measurement of the traced ROI equals the particle's calibrated area
    from particleseg.measure import PARAMETER_COLUMNS

    assert float(first_area) == pytest.approx(res[PARAMETER_COLUMNS["area"]].iloc[0])


def test_segment_folder_example_macro(ij, tmp_path, rng, tiny_bundle):
    src = tmp_path / "in"
    out = tmp_path / "out"
    src.mkdir()
    for i in range(2):
        write_tiff(src / f"img{i}.tif", blobs_image(rng), Calibration(3.0, "nm"))
    macro = REPO / "fiji-scripts" / "Plugins" / "Particle Segmentation" / "Examples" / "Segment_Folder.ijm"
    thr = threshold_with_particles(src / "img0.tif", tiny_bundle)
    ret = ij.run_macro_file(
        macro, f"input=[{src}] output=[{out}] model=[{tiny_bundle.path}] threshold={thr} min_size=4 crop_rows=0"
    )
    n_images, n_particles = map(int, ret.split())
    assert n_images == 2 and n_particles > 0
    total = 0
    for i in range(2):
        labels, cal = read_image(out / f"img{i}_labels.tif")
        assert cal.unit == "nm" and cal.pixel_size == pytest.approx(3.0, rel=1e-5)  # ImageJ's TIFF rationals
        n = len(np.setdiff1d(np.unique(labels), [0]))
        csv = out / f"img{i}_particles.csv"
        assert len(pd.read_csv(csv)) == n if n else csv.read_text() == ""
        assert (out / f"img{i}_rois.zip").is_file() == (n > 0)
        total += n
    assert total == n_particles


# ------------------------------------------------------------------------------------------
# the other commands


def test_split_touching_particles_macro(ij, tmp_path):
    from particleseg import postprocess as pp
    from particleseg.fiji import from_imageplus

    yy, xx = np.mgrid[:60, :90]
    mask = ((yy - 30) ** 2 + (xx - 30) ** 2 < 15**2) | ((yy - 30) ** 2 + (xx - 55) ** 2 < 15**2)
    write_tiff(tmp_path / "pair.tif", mask, Calibration(5.0, "nm"))
    n_rois = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(tmp_path / "pair.tif")}");
        run("Split Touching Particles...", "distance=none seed_level=0.5 split_level=1 min_size=0 mask add");
        return "" + roiManager("count");
    """,
        end_batch_mode=False,
    )
    labels, cal = from_imageplus(ij.image("pair_split"))
    expected = pp.relabel_sequential(pp.split_touching(mask, None, 0.5, 1.0))
    assert labels.max() == 2 and np.array_equal(labels, expected) and cal == Calibration(5.0, "nm")
    sep, _ = from_imageplus(ij.image("pair_split_mask"))
    assert pp.label_mask(sep > 0).max() == 2
    assert int(n_rois) == 2


def particles_label_image():
    lab = np.zeros((64, 96), np.int32)
    yy, xx = np.mgrid[:64, :96]
    for i, (cy, cx, r) in enumerate([(20, 20, 3), (20, 50, 7), (45, 30, 9), (45, 75, 5), (2, 90, 4)], start=1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    return lab


def test_measure_particles_macro_equals_measure_particles(ij, tmp_path):
    from particleseg.measure import PARAMETER_COLUMNS, measure_particles

    feret = PARAMETER_COLUMNS["feret_max"]
    lab = particles_label_image()
    gray = (lab * 30 + 20).astype(np.uint8)
    write_tiff(tmp_path / "lab.tif", lab.astype(np.uint16), Calibration(0.5, "µm"))
    write_tiff(tmp_path / "gray.tif", gray, Calibration(0.5, "µm"))
    ret = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(tmp_path / "gray.tif")}");
        open("{macro_path(tmp_path / "lab.tif")}");
        run("Measure Particles...", "intensity=gray.tif clear add histogram histogram_of=ecd");
        selectImage("lab.tif");
        getPixelSize(unit, pw, ph);
        return "" + nResults + "|" + getResult("{feret}", 2) + "|" + unit + "|" + roiManager("count");
    """,
        end_batch_mode=False,
    )
    ref = measure_particles(lab, gray, Calibration(0.5, "µm"))
    n, fmax, unit, n_rois = ret.split("|")
    assert (
        int(n) == len(ref) == 5
        and unit in ("µm", "microns")
        and float(fmax) == pytest.approx(ref[feret].iloc[2], rel=1e-4)
    )
    res = ij.results()
    assert_same_columns(res, ref)
    assert int(n_rois) == 5 and any(t.endswith("histogram") for t in ij.image_titles())


def test_filter_particles_macro(ij, tmp_path):
    from particleseg.fiji import from_imageplus

    lab = particles_label_image()
    write_tiff(tmp_path / "lab.tif", lab.astype(np.uint16), Calibration(1.0, "nm"))
    n_rois = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(tmp_path / "lab.tif")}");
        run("Filter Particles...", "intensity=none min_size=0 exclude_border area=40-Infinity clear add overlay");
        return "" + roiManager("count");
    """,
        end_batch_mode=False,
    )
    res = ij.results()
    # particle 1 is too small (area < 40), particle 5 touches the border
    # the kept particles are numbered 1..N, as their ROIs
    assert len(res) == 3 and list(res["label"].astype(int)) == [1, 2, 3]
    assert int(n_rois) == 3
    filtered, _ = from_imageplus(ij.image("lab_filtered"))
    assert set(np.unique(filtered)) == {0, 1, 2, 3}
    ov = ij.image("lab.tif").getOverlay()
    assert int(ov.size()) == 5
    with pytest.raises(Exception, match="intensity_filter=otsu needs an intensity image"):
        ij.run_macro('run("Filter Particles...", "intensity=none intensity_filter=otsu");')


def test_filter_particles_intensity_filter_takes_the_polarity_of_the_particles(ij, tmp_path):
    """Dense dark particles whose gray values alone say "bright": polarity=auto filters them as dark.

    The labels are the simulation's own particles; the intensity filter (Otsu) keeps a particle
    whose mean lies on the particles' side of the threshold, which auto takes from the particles
    against the rest of the image, as the polarity given would.
    """
    from particleseg import autoscale
    from particleseg.simulate import simulate_sem_image

    sim = simulate_sem_image((256, 256), rng=4, particle_size=24, coverage=0.6, empty_fraction=0)
    gray = (255 - sim.image).astype(np.uint8)  # dark particles
    assert autoscale.estimate_polarity(gray) == "bright"  # the gray values alone are wrong
    lab = sim.labels.astype(np.uint16)
    write_tiff(tmp_path / "dense.tif", gray, Calibration(1.0, "nm"))
    write_tiff(tmp_path / "lab.tif", lab, Calibration(1.0, "nm"))
    kept = {}
    for polarity in ("auto", "dark", "bright"):
        kept[polarity] = ij.run_macro(
            f"""
            setBatchMode(true);
            open("{macro_path(tmp_path / "dense.tif")}");
            open("{macro_path(tmp_path / "lab.tif")}");
            run("Filter Particles...", "intensity=dense.tif min_size=0 intensity_filter=otsu "
                + "polarity={polarity} clear");
            return "" + nResults;
        """,
            end_batch_mode=False,
        )
        ij.run_macro('close("*");')
    # (measured: 55 kept as dark of 98, 18 as bright; Otsu's threshold on this shaded, dense
    # field drops some dark particles too)
    assert int(kept["auto"]) == int(kept["dark"]) > 2 * int(kept["bright"])


def test_evaluate_segmentation_macro_equals_evaluate_pair(ij, tmp_path):
    from particleseg.metrics import evaluate_pair

    truth = particles_label_image()
    pred = truth.copy()
    pred[pred == 4] = 0  # one particle missed
    write_tiff(tmp_path / "truth.tif", truth.astype(np.uint16))
    write_tiff(tmp_path / "pred.tif", (pred > 0))
    ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(tmp_path / "truth.tif")}");
        open("{macro_path(tmp_path / "pred.tif")}");
        run("Evaluate Segmentation...", "prediction=pred.tif ground_truth=truth.tif thresholds=0.5 crop_rows=0 exclude_border");
    """,  # noqa: E501 - the macro as ImageJ runs it
        end_batch_mode=False,
    )
    table = ij.results("Evaluation")
    ref = evaluate_pair((pred > 0).astype(np.uint8) * 255, truth.astype(np.uint16), thresholds=(0.5,))
    assert len(table) == 1
    for key in ("f1_50", "tp", "fn", "iou_image", "ap", "rand_error"):
        assert table[key].iloc[0] == pytest.approx(ref[key], rel=1e-9), key
    assert ref["fn"] == 1


def test_batch_segment_folder_macro(ij, tmp_path, rng, tiny_bundle):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    write_tiff(src / "a.tif", blobs_image(rng), Calibration(2.0, "nm"))
    write_tiff(src / "flat.tif", np.full((40, 40), 9, np.uint8))
    ij.run_macro(
        f'run("Batch Segment Folder...", "input=[{src}] output=[{out}] model=[{tiny_bundle.path}] '
        f'threshold=0.5 split crop_rows=0 overview");'
    )
    summary = pd.read_csv(out / "summary.csv")
    assert dict(zip(summary["file"], summary["status"])) == {"a.tif": "ok", "flat.tif": "failed"}
    assert "constant" in summary.loc[summary["file"] == "flat.tif", "error"].iloc[0]
    for suffix in ("_labels.tif", "_mask.tif", "_prob.tif", "_rois.zip", "_particles.csv", "_overview.png"):
        assert (out / f"a{suffix}").is_file(), suffix
    assert len(ij.results("Batch Summary")) == 2


def test_models_lists_installed_bundles(ij, tiny_bundle, monkeypatch):
    monkeypatch.setenv("PARTICLESEG_MODELS", str(Path(tiny_bundle.path).parent))
    ij.run_macro('run("Models...");')
    table = ij.results("Models")
    row = table[table["name"] == "tiny"]
    assert len(row) == 1 and row["architecture"].iloc[0] == "unet" and row["heads"].iloc[0] == "foreground+distance"
    # and by name, in a macro
    ij.run_macro(
        'newImage("n", "8-bit ramp", 64, 64, 1); run("Segment Particles...", "model=tiny threshold=0.5 crop_rows=0");'
    )


@pytest.mark.slow
def test_train_model_trains_a_bundle_from_a_macro(ij, tmp_path, capfd):
    """Train Model... from a macro trains on the folders and writes a bundle that Segment Particles... uses.

    The macro waits (wait: block until done); the command calls particleseg.train.train_segmentation.
    """
    from conftest import draw_disks
    from particleseg.models import load_bundle

    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "tiny-trained"
    images.mkdir()
    masks.mkdir()
    for i in range(3):
        img, lab = draw_disks((64, 64), [(16 + 8 * i, 20, 7), (44, 40 - 4 * i, 8)], seed=i)
        write_tiff(images / f"im{i}.tif", img)
        write_tiff(masks / f"im{i}_mask.tif", ((lab > 0) * 255).astype(np.uint8))
    ij.run_macro(
        f'run("Train Model...", "images=[{macro_path(images)}] masks=[{macro_path(masks)}] '
        f'output=[{macro_path(out)}] name=tiny-trained base_model=none architecture=unet epochs=1 tile=32 wait");'
    )
    bundle = load_bundle(out)
    assert bundle.name == "tiny-trained" and bundle.network.architecture == "unet"
    assert bundle.metadata["training"]["epochs_run"] == 1 and bundle.metadata["training"]["config"]["tile"] == 32
    log = capfd.readouterr().out  # the Log window's lines (stdout in a headless ImageJ)
    assert "Train Model: epoch 1/1" in log and f"Train Model: wrote {out}" in log
    ij.run_macro(
        f'open("{macro_path(images / "im0.tif")}"); '
        f'run("Segment Particles...", "model=[{macro_path(out)}] crop_rows=0");'
    )
    # an existing bundle is refused with one line, before any training
    with pytest.raises(Exception, match="Train Model...: .*tiny-trained: output exists; use --overwrite"):
        ij.run_macro(
            f'run("Train Model...", "images=[{macro_path(images)}] masks=[{macro_path(masks)}] '
            f'output=[{macro_path(out)}] name=x base_model=none architecture=unet epochs=1 tile=32 wait");'
        )


# ------------------------------------------------------------------------------------------
# the recorder


def test_recorder_writes_the_macro_line_of_a_command(ij, sem_image, tiny_bundle):
    """The recorder gets every parameter of a successful call, and nothing of a failed call.

    An unchecked box whose default is on is recorded as key=false (a key left out takes its
    default, so the line repeats the run).
    """
    from particleseg.fiji import MacroError

    Recorder = jclass("ij.plugin.frame.Recorder")
    rec = Recorder(False)
    Recorder.recordInMacros = True
    try:
        ij.run_macro(f"""
            open("{macro_path(sem_image)}");
            run("Segment Particles...", "model=[{tiny_bundle.path}] threshold=0.45 split=false min_size=4 crop_rows=0 probability=false");
        """)  # noqa: E501 - the macro as ImageJ runs it
        n_first = len(ij.results())
        with pytest.raises(MacroError, match="threshold must be between 0 and 1"):
            ij.run_macro(
                f'newImage("x", "8-bit ramp", 64, 64, 1); '
                f'run("Segment Particles...", "model=[{tiny_bundle.path}] threshold=1.5");'
            )
        with pytest.raises(MacroError, match="image is constant"):
            ij.run_macro(
                f'newImage("flat", "8-bit black", 64, 64, 1); '
                f'run("Segment Particles...", "model=[{tiny_bundle.path}]");'
            )
        text = str(rec.getText())
    finally:
        Recorder.recordInMacros = False
        rec.close()
    from particleseg.fiji.options import SPECS, parse_macro_options

    lines = [line for line in text.splitlines() if "Segment Particles..." in line]
    assert len(lines) == 1 and lines[0].startswith(
        f'run("Segment Particles...", "model={tiny_bundle.path} threshold=0.45 split=false exclude_border '
    )
    recorded = parse_macro_options(lines[0][len('run("Segment Particles...", "') : -len('");')])
    # every parameter, in order (a box that is off by default and unchecked is left out, as ImageJ records it)
    assert list(recorded) == [
        f.key for f in SPECS["Segment Particles..."].parameters if not (f.kind == "bool" and f.default is False)
    ]
    assert {
        k: recorded[k]
        for k in (
            "seed_level",
            "split_level",
            "min_size",
            "min_confidence",
            "fill_holes",
            "area",
            "circularity",
            "crop_rows",
            "probability",
            "labels",
            "histogram_of",
        )
    } == {
        "seed_level": "0.5",
        "split_level": "1",
        "min_size": "4",
        "min_confidence": "0",
        "fill_holes": True,
        "area": "0-Infinity",
        "circularity": "0-1",
        "crop_rows": "0",
        "probability": "false",
        "labels": True,
        "histogram_of": "feret_min",
    }
    ij.close_all()
    ij.run_macro(f'open("{macro_path(sem_image)}");\n' + lines[0])
    assert len(ij.results()) == n_first


def test_menu_command_shows_dialog_records_and_runs(ij, tmp_path):
    """The GUI path: the user presses OK in the command's dialog, the recorder gets the line.

    The command runs on ImageJ's Executer thread and its GenericDialog opens (unfilled, no macro).
    """
    from particleseg.fiji import bridge

    imp = ij.to_imageplus(particles_label_image().astype(np.uint16), Calibration(1.0, "nm"), "lab.tif")
    Recorder = jclass("ij.plugin.frame.Recorder")
    rec = Recorder(False)
    try:
        with bridge.dialogs_allowed():
            jclass("ij.Executer")("Measure Particles...", imp)  # what a menu click does
            GenericDialog = jclass("ij.gui.GenericDialog")
            Window = jclass("java.awt.Window")
            deadline = time.time() + HANG_SECONDS
            gd = None
            while gd is None and time.time() < deadline:
                for w in Window.getWindows():
                    if isinstance(w, GenericDialog) and w.isVisible() and str(w.getTitle()) == "Measure Particles":
                        gd = w
                time.sleep(0.05)
            assert gd is not None, "the dialog did not open"
            ActionEvent = jclass("java.awt.event.ActionEvent")
            ok = gd.getButtons()[0]
            gd.actionPerformed(ActionEvent(ok, ActionEvent.ACTION_PERFORMED, "OK"))
            while time.time() < deadline and "Measure Particles" not in str(rec.getText()):
                time.sleep(0.05)
            while time.time() < deadline and len(ij.results()) < 5:
                time.sleep(0.05)
            text = str(rec.getText())
    finally:
        rec.close()
    assert 'run("Measure Particles...", "intensity=none clear histogram_of=feret_min");' in text
    assert len(ij.results()) == 5


# ------------------------------------------------------------------------------------------
# errors: one ImageJ message, no stack trace, no hang


def assert_clean(message: str) -> None:
    for bad in ("Traceback", "Exception", "\tat ", "java.lang.", "jpype"):
        assert bad not in message, message


@pytest.mark.parametrize(
    "setup, options, expected",
    [
        ('close("*");', "threshold=0.5", "Segment Particles...: no image open (open an image first"),
        (
            'newImage("rgb", "RGB ramp", 64, 64, 1);',
            "threshold=0.5",
            "Segment Particles...: rgb: is an RGB image; convert it",
        ),
        (
            'newImage("st", "8-bit ramp", 64, 64, 3);',
            "threshold=0.5",
            "Segment Particles...: st: is a stack of 3 slices",
        ),
        (
            'newImage("x", "8-bit ramp", 64, 64, 1);',
            "model=no-such-model threshold=0.5",
            "Segment Particles...: no-such-model: model not found",
        ),
        (
            'newImage("x", "8-bit ramp", 64, 64, 1);',
            "treshold=0.5",
            'Segment Particles...: unknown option "treshold" (valid options: model, threshold,',
        ),
        (
            'newImage("x", "8-bit ramp", 64, 64, 1);',
            "threshold=1.5",
            "Segment Particles...: threshold must be between 0 and 1, got 1.5",
        ),
        ('newImage("x", "8-bit ramp", 64, 64, 1);', "threshold=abc", "Numeric value expected in run() function"),
        ('newImage("x", "8-bit ramp", 64, 64, 1);', "threshold=0.5 area=big", "area: expected MIN-MAX such as 10-500"),
        ('newImage("x", "8-bit ramp", 64, 64, 1);', "threshold=0.5 split=maybe", 'option "split" is a check box'),
        ('newImage("x", "8-bit ramp", 64, 64, 1);', "threshold=0.5 crop_rows=-3", "crop_rows: must not be negative"),
    ],
)
def test_bad_input_gives_one_clear_macro_error(ij, tiny_bundle, setup, options, expected):
    from particleseg.fiji import MacroError

    if "model=" not in options:
        options = f"model=[{tiny_bundle.path}] {options}"
    with pytest.raises(MacroError) as info:
        run_with_deadline(lambda: ij.run_macro(f'{setup}\nrun("Segment Particles...", "{options}");'))
    message = str(info.value)
    assert expected in message
    assert message.endswith("(line 2)")
    assert_clean(message)


def test_error_in_a_command_aborts_the_macro_there(ij, tiny_bundle):
    from particleseg.fiji import MacroError

    System = jclass("java.lang.System")
    System.clearProperty("psg.after")
    with pytest.raises(MacroError, match=r"Segment Particles...: flat: image is constant .* \(line 2\)") as info:
        run_with_deadline(
            lambda: ij.run_macro(
                'newImage("flat", "8-bit black", 64, 64, 1);\n'
                f'run("Segment Particles...", "model=[{tiny_bundle.path}] threshold=0.5 crop_rows=0");\n'
                'call("java.lang.System.setProperty", "psg.after", "reached");'
            )
        )
    assert System.getProperty("psg.after") is None
    assert_clean(str(info.value))


def test_unexpected_failure_is_one_message_with_traceback_only_in_log(ij, monkeypatch):
    from particleseg.fiji import MacroError, commands

    def broken(ctx, values):
        return 1 / 0

    monkeypatch.setitem(commands.IMPLEMENTATIONS, "Models...", broken)
    with pytest.raises(MacroError) as info:
        run_with_deadline(lambda: ij.run_macro('run("Models...");'))
    message = str(info.value)
    assert "Models...: unexpected error, please report it: ZeroDivisionError: division by zero" in message
    assert "Traceback" not in message


def test_dialog_in_a_headless_run_is_closed_not_waited_for(ij):
    """A dialog that would wait for a click is closed at once in a headless session.

    Here a macro's own Dialog; the macro ends as canceled instead of hanging.
    """
    from particleseg.fiji import MacroError, bridge

    n = len(bridge.CLOSED_DIALOGS)
    with pytest.raises(MacroError, match="stopped at the dialog 'Question', which needs a user and was closed"):
        run_with_deadline(
            lambda: ij.run_macro(
                'Dialog.create("Question"); Dialog.addNumber("n", 1); Dialog.show(); return "answered";'
            ),
        )
    assert [t for t, _ in bridge.CLOSED_DIALOGS[n:]] == ["Question"]


def test_a_macro_whose_command_dialog_is_canceled_stops_there(ij):
    """Cancel in a command's dialog ends the macro with one message, as in ImageJ's macro runner.

    (The macro went on before, and a later line failed further from the cause: ``"sem_1_labels"
    not found``, after the dialog guard had closed a dialog still being built.)
    """
    from particleseg.fiji import MacroError, bridge

    System, ActionEvent = jclass("java.lang.System"), jclass("java.awt.event.ActionEvent")
    System.clearProperty("psg.after")
    outcome = {}

    def macro():
        try:
            outcome["returned"] = ij.run_macro(
                'newImage("ramp", "8-bit ramp", 64, 64, 1);\n'
                'run("Segment Particles...");\n'  # no options: the dialog asks
                'call("java.lang.System.setProperty", "psg.after", "reached");'
            )
        except MacroError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=macro, daemon=True)
    with bridge.dialogs_allowed():
        thread.start()
        dialog = _wait_for_dialog("Segment Particles")
        dialog.actionPerformed(ActionEvent(dialog.getButtons()[1], ActionEvent.ACTION_PERFORMED, "Cancel"))
    thread.join(HANG_SECONDS)
    assert not thread.is_alive()
    assert System.getProperty("psg.after") is None  # the line after the command did not run
    assert "Segment Particles...: its dialog was canceled; the macro stops here" in outcome.get("error", ""), outcome


def test_dialog_guard_survives_many_dialogs_in_a_row(ij):
    """Thirty macro errors in a row must each end their macro with the message.

    Closing a modal dialog races with the thread that shows it (the dialog can close before that
    thread waits on it, which left a macro blocked for good on a loaded CI machine).
    """
    from particleseg.fiji import MacroError, bridge

    n = len(bridge.CLOSED_DIALOGS)

    def errors():
        messages = []
        for i in range(30):
            try:
                ij.run_macro(f"a = {i};\nb = undefined + a;")
            except MacroError as exc:
                messages.append(str(exc))
        return messages

    messages = run_with_deadline(errors)
    assert len(messages) == 30
    assert messages == ["Undefined variable (line 2)"] * 30
    assert [t for t, _ in bridge.CLOSED_DIALOGS[n:]] == ["Macro Error"] * 30


# ------------------------------------------------------------------------------------------
# the SciJava scripts (Fiji's Python mode) run the same code


def test_scijava_script_runs_and_equals_the_dialog_route(ij, sem_image, tiny_bundle):
    from particleseg.fiji.options import SPECS
    from particleseg.fiji.scripting import parse_parameters

    thr = threshold_with_particles(sem_image, tiny_bundle)
    ij.run_macro(f'setBatchMode(true); open("{macro_path(sem_image)}");', end_batch_mode=False)
    imp = ij.image("sem one.tif")
    script = REPO / "fiji-scripts" / "Plugins" / "Particle Segmentation" / SPECS["Segment Particles..."].script_name
    text = script.read_text()
    spec = SPECS["Segment Particles..."]
    values = {f.key: f.default for f in spec.parameters}
    values.update(
        model=str(tiny_bundle.path),
        threshold=thr,
        min_size=4,
        crop_rows="0",
        probability=False,
        labels=False,
        mask=False,
        histogram=False,
        overlay=False,
    )
    names = [n for _, n in parse_parameters(text)]
    assert names == ["imp"] + list(values)
    namespace = {"imp": imp, **values, "__name__": "__main__"}
    exec(compile(text, str(script), "exec"), namespace)  # what Fiji's Python mode does
    by_script = ij.results()
    ij.run_macro(
        f'setBatchMode(true); selectImage("sem one.tif"); run("Segment Particles...", "model=[{tiny_bundle.path}] '
        f"threshold={thr} split=true seed_level=0.5 split_level=1 min_size=4 fill_holes=true exclude_border=true "
        'crop_rows=0 clear=true add=true");',
        end_batch_mode=False,
    )
    by_macro = ij.results()
    assert len(by_script) > 0
    pd.testing.assert_frame_equal(by_script, by_macro)


# ------------------------------------------------------------------------------------------
# the files microscopes write: calibration from the file, and every route gives one answer

SAMPLE_SEM = REPO / "python" / "particleseg" / "data" / "sample_sem.tif"
EXAMPLES = REPO / "fiji-scripts" / "Plugins" / "Particle Segmentation" / "Examples"


def _raw_zeiss_tiff() -> Path | None:
    """Return a raw Zeiss SEM TIFF of the TiO2 data set (unmodified, with its data bar), read in place."""
    from particleseg.datasets import tio2_root

    files = sorted((tio2_root() / "images").glob("*.tif")) if (tio2_root() / "images").is_dir() else []
    return files[0] if files else None


@pytest.fixture(scope="module")
def cli_labels(tmp_path_factory):
    """Run ``particleseg segment`` on the sample image and, with the TiO2 data set, a raw Zeiss TIFF.

    In a separate process, as a user runs it; returns {file name: (labels, calibration)}.
    """
    import subprocess
    import sys

    files = [SAMPLE_SEM] + ([_raw_zeiss_tiff()] if _raw_zeiss_tiff() else [])
    out = tmp_path_factory.mktemp("cli")
    proc = subprocess.run(
        [sys.executable, "-m", "particleseg", "segment", *map(str, files), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return {f.name: read_image(out / f"{f.stem}_labels.tif") for f in files}


def segment_by_menu_command(ij, path: Path):
    """Open an unmodified file in ImageJ and run the command as a macro does.

    With nothing but the model; returns the label image, its calibration, the Results count and the input's
    scale as ImageJ then reports it.
    """
    from particleseg.fiji import from_imageplus

    ret = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(path)}");
        run("Segment Particles...", "model=default");
        selectImage("{path.name}");
        getPixelSize(unit, pw, ph);
        return "" + nResults + "|" + unit + "|" + pw;
    """,
        end_batch_mode=False,
    )
    n, unit, pw = ret.split("|")
    labels, cal = from_imageplus(ij.image(f"{path.stem}_labels"))
    return labels, cal, int(n), unit, float(pw)


def test_check_sample_image_by_macro_equals_the_command_line(ij, cli_labels, capfd):
    """The issue's check on the repository's sample (a vendor-style TIFF with a data bar).

    run("Segment Particles...", "model=default") gives >= 50 particles in nm and the label
    image of `particleseg segment`.
    """
    labels, cal, n, unit, pw = segment_by_menu_command(ij, SAMPLE_SEM)
    ref, ref_cal = cli_labels[SAMPLE_SEM.name]
    assert n >= 50 and n == len(np.setdiff1d(np.unique(labels), [0]))
    assert unit == "nm" and cal == ref_cal == Calibration(pw, "nm")
    np.testing.assert_array_equal(labels, ref)


def test_check_raw_zeiss_tiff_is_calibrated_from_its_metadata(ij, cli_labels, capfd):
    """A TIFF straight from a Zeiss SEM, without a scale in ImageJ, is measured in the file's.

    It opens in ImageJ without a scale (unit ' '); the command takes the file's Zeiss metadata, as
    the command line does, says so in the Log, and gives the command line's label image.
    """
    path = _raw_zeiss_tiff()
    if path is None:
        pytest.skip("TiO2 data set not found (licensed data, read from ../shared; set PARTICLESEG_TIO2)")
    ij.run_macro(f'setBatchMode(true); open("{macro_path(path)}");', end_batch_mode=False)
    assert str(ij.image().getCalibration().getUnit()).strip() == ""  # what ImageJ itself makes of the file
    ij.close_all()
    capfd.readouterr()
    labels, cal, n, unit, pw = segment_by_menu_command(ij, path)
    log = capfd.readouterr().out  # the Log (stdout in a headless ImageJ)
    ref, ref_cal = cli_labels[path.name]
    assert (
        f"Segment Particles: {path.name}: no scale in ImageJ; 7.344 nm per pixel from the file's Zeiss SEM metadata"
        in log
    )
    assert n >= 50 and unit == "nm" and pw == pytest.approx(7.344) and cal == ref_cal
    np.testing.assert_array_equal(labels, ref)


def test_every_route_gives_the_same_labels(ij, cli_labels, tmp_path, capfd):
    """One raw image, four routes, one answer.

    The command line, the menu command run by a macro, the example batch macro (run as
    `particleseg fiji run-macro` runs it) and the Python API, each with the bundle's defaults.
    """
    from particleseg.fiji.batch import run_once
    from particleseg.models import load_bundle
    from particleseg.pipeline import segment_file

    path = _raw_zeiss_tiff() or SAMPLE_SEM
    ref, ref_cal = cli_labels[path.name]
    by_macro, *_ = segment_by_menu_command(ij, path)
    ij.close_all()
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    (folder / path.name).symlink_to(path.resolve())  # the file itself, read in place
    capfd.readouterr()
    summary = run_once(ij, EXAMPLES / "Batch_Segment_Folder.ijm", [f"input={folder}", f"output={out}", "model=default"])
    assert summary["status"] == "ok" and summary["images_segmented"] == 1, summary
    assert "1 of 1 images segmented" in capfd.readouterr().out
    by_batch, batch_cal = read_image(out / f"{path.stem}_labels.tif")
    row = segment_file(path, tmp_path / "api", load_bundle("default"))
    by_api, api_cal = read_image(tmp_path / "api" / f"{path.stem}_labels.tif")
    assert len(np.unique(ref)) > 50 and batch_cal == api_cal == ref_cal and row["count"] == len(np.unique(ref)) - 1
    for name, labels in (("menu command by macro", by_macro), ("batch macro", by_batch), ("Python API", by_api)):
        np.testing.assert_array_equal(labels, ref, err_msg=name)


def test_image_without_any_scale_is_measured_in_pixels_with_a_note(ij, tmp_path, tiny_bundle, capfd):
    """No scale in ImageJ and none in the file: pixels, and one line in the Log.

    An inch resolution, as TIFF writers put in, is no scale.
    """
    import tifffile

    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, blobs_image(np.random.default_rng(3)), resolution=(72, 72), resolutionunit="INCH")
    capfd.readouterr()
    ij.run_macro(
        f'setBatchMode(true); open("{macro_path(path)}"); '
        f'run("Segment Particles...", "model=[{tiny_bundle.path}] crop_rows=0");',
        end_batch_mode=False,
    )
    log = capfd.readouterr().out
    assert "Segment Particles: plain.tif: " in log and "no scale in the file's metadata; measuring in pixels" in log
    assert "plain.tif: 0 particles" in log or "particles kept" in log


def test_a_note_of_the_pipeline_is_the_command_lines_line_in_the_log(ij, tmp_path, tiny_bundle, capfd):
    """A note (here: no particles found) is one line in ImageJ's Log, the line the command line prints.

    Every time: the same image segmented twice says it twice. Notes had gone to the Python
    process's stderr, which a Fiji user never sees.
    """
    import tifffile

    from particleseg.cli import main

    path = tmp_path / "few.tif"
    tifffile.imwrite(path, blobs_image(np.random.default_rng(4)))
    options = f"model=[{tiny_bundle.path}] crop_rows=0 min_size=100000"  # no particle is that large
    capfd.readouterr()
    for _ in range(2):
        ij.run_macro(
            f'setBatchMode(true); open("{macro_path(path)}"); run("Segment Particles...", "{options}");',
            end_batch_mode=False,
        )
    log = capfd.readouterr().out
    notes = [line for line in log.splitlines() if line.startswith("particleseg: note: few.tif: no particles found")]
    assert len(notes) == 2 and notes[0] == notes[1]
    assert "Segment Particles: few.tif: 0 particles kept" in log

    args = ["segment", str(path), "--out", str(tmp_path / "cli"), "--model", str(tiny_bundle.path)]
    assert main(args + ["--crop-rows", "0", "--min-size", "100000"]) == 0
    # word for word, but for the image's name: its title in ImageJ, its path on the command line
    assert notes[0].replace("few.tif", str(path)) in capfd.readouterr().err.splitlines()


# ------------------------------------------------------------------------------------------
# the dialog fits a 1366x768 screen


def _wait_for_dialog(title: str, timeout: float = HANG_SECONDS):
    GenericDialog = jclass("ij.gui.GenericDialog")
    Window = jclass("java.awt.Window")
    deadline = time.time() + timeout
    while time.time() < deadline:
        for w in Window.getWindows():
            if isinstance(w, GenericDialog) and w.isVisible() and str(w.getTitle()) == title:
                time.sleep(0.3)  # packed and laid out
                return w
        time.sleep(0.05)
    raise AssertionError(f"the dialog {title!r} did not open")


def test_segment_dialog_fits_a_laptop_screen_and_has_every_parameter(ij, tmp_path, monkeypatch):
    """The menu path under Xvfb: a compact main dialog and an advanced one.

    The main dialog is compact, the advanced one opens from its check box, both fit a 1366x768
    screen, labels name the image's unit, every bundle parameter is in one of them, and a
    canceled dialog records nothing.
    """
    from particleseg.fiji import bridge
    from particleseg.fiji.bridge import dialog_text
    from particleseg.params import PARAMETERS

    monkeypatch.setattr(bridge, "_last_values", {})  # a first use: the default model's values
    imp = ij.to_imageplus(blobs_image(np.random.default_rng(1)), Calibration(7.35, "nm"), "sem.tif")
    Recorder = jclass("ij.plugin.frame.Recorder")
    ActionEvent = jclass("java.awt.event.ActionEvent")
    rec = Recorder(False)
    try:
        with bridge.dialogs_allowed():
            jclass("ij.Executer")("Segment Particles...", imp)  # what a menu click does
            main = _wait_for_dialog("Segment Particles")
            main_height, main_text = int(main.getHeight()), dialog_text(main)
            main.getCheckboxes().lastElement().setState(True)  # Advanced options (second dialog)
            main.actionPerformed(ActionEvent(main.getButtons()[0], ActionEvent.ACTION_PERFORMED, "OK"))
            adv = _wait_for_dialog("Segment Particles (advanced)")
            adv_height, adv_text = int(adv.getHeight()), dialog_text(adv)
            labels = [str(c.getText()) for c in _components(adv) if str(c.getClass().getName()) == "java.awt.Label"]
            boxes = [
                str(c.getLabel())
                for d in (main, adv)
                for c in _components(d)
                if str(c.getClass().getName()) == "java.awt.Checkbox"
            ]
            min_confidence = float(
                str(adv.getNumericFields()[5].getText())
            )  # seed level, seed depth, merge level, split level, min size
            adv.actionPerformed(ActionEvent(adv.getButtons()[1], ActionEvent.ACTION_PERFORMED, "Cancel"))
            time.sleep(0.5)
        text = str(rec.getText())
    finally:
        rec.close()
    print(f"Segment Particles dialog heights: main {main_height} px, advanced {adv_height} px")
    assert main_height <= 500 and adv_height <= 700, (main_height, adv_height)
    assert "Area (nm²)" in labels and "Feret min (nm)" in labels and not any("unit" in label for label in labels)
    shown = (main_text + " " + adv_text + " " + " ".join(labels + boxes)).lower().replace(" ", "_")
    for p in PARAMETERS:
        if p.fiji:
            assert p.name.split("_")[0] in shown, p.name
    assert "Min score (classifier)" in labels and "Min confidence" in labels
    from particleseg.models import load_bundle

    assert min_confidence == load_bundle("default").postprocess["min_confidence"]  # the bundle's value, all its digits
    assert "Segment Particles" not in text  # canceled: not recorded


def _components(container):
    out = []
    for c in container.getComponents():
        out.append(c)
        if isinstance(c, jclass("java.awt.Container")):
            out.extend(_components(c))
    return out


def test_imagej_version_is_the_one_the_docs_state(ij):
    """docs/fiji.md names the ImageJ it was checked against; the jar reports its own version."""
    version = str(jclass("ij.IJ").getVersion())
    docs = (REPO / "docs" / "fiji.md").read_text()
    assert f"ImageJ {version}" in docs, version


def test_every_command_dialog_fits_a_laptop_screen(ij, tmp_path, monkeypatch):
    """Each command's dialog, opened from the menu path under Xvfb and canceled, is at most 700 px high.

    That is a 1366x768 screen less its panel.
    """
    from particleseg.fiji import bridge
    from particleseg.fiji.options import SPECS

    monkeypatch.setattr(bridge, "_last_values", {})
    imp = ij.to_imageplus(particles_label_image().astype(np.uint16), Calibration(2.0, "µm"), "lab.tif")
    ActionEvent = jclass("java.awt.event.ActionEvent")
    heights = {}
    with bridge.dialogs_allowed():
        for name, spec in SPECS.items():
            if not spec.fields or name == "Train Model..." and not _training_available():
                continue
            jclass("ij.Executer")(name, imp)
            gd = _wait_for_dialog(name.rstrip("."))
            heights[name] = int(gd.getHeight())
            gd.actionPerformed(ActionEvent(gd.getButtons()[1], ActionEvent.ACTION_PERFORMED, "Cancel"))
            time.sleep(0.3)
    print("dialog heights:", heights)
    assert len(heights) >= 6 and max(heights.values()) <= 700, heights


def _training_available() -> bool:
    from particleseg.fiji import commands

    try:
        commands.training_function()
        return True
    except Exception:  # noqa: BLE001
        return False


def test_strict_makes_unusable_file_metadata_an_error_as_on_the_command_line(ij, tmp_path, tiny_bundle, capfd):
    """A pixel size of 0 in the file's OME metadata: a note and pixels, an error with strict.

    By default a note and pixels; with strict=true (the command line's --strict) an error naming
    the file and the tag.
    """
    import tifffile

    from particleseg.fiji import MacroError

    path = tmp_path / "zero.tif"
    tifffile.imwrite(path, blobs_image(np.random.default_rng(6)), ome=True, metadata={"PhysicalSizeX": 0.0})
    run = (
        f'setBatchMode(true); open("{macro_path(path)}"); run("Segment Particles...", "model=[{tiny_bundle.path}] '
        'crop_rows=0 probability=false mask=false histogram=false{}"); return "" + nResults;'
    )
    capfd.readouterr()
    ij.run_macro(run.format(""))
    ij.close_all()
    with pytest.raises(MacroError, match=r"zero.tif: .*PhysicalSizeX: pixel size 0 .*\(strict\)"):
        ij.run_macro(run.format(" strict"))


def test_ome_tiff_without_imagej_scale_takes_the_file_calibration(ij, tmp_path, tiny_bundle, capfd):
    """Any metadata read_image knows calibrates an image ImageJ opens without a scale.

    Here OME-XML; a unit that is no length, with nothing in the file, is one clear error.
    """
    import tifffile

    from particleseg.fiji import MacroError

    path = tmp_path / "ome.tif"
    tifffile.imwrite(
        path,
        blobs_image(np.random.default_rng(5)),
        ome=True,
        metadata={"PhysicalSizeX": 2.5, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 2.5, "PhysicalSizeYUnit": "nm"},
    )
    assert read_image(path)[1] == Calibration(2.5, "nm")
    capfd.readouterr()
    ret = ij.run_macro(
        f"""
        setBatchMode(true);
        open("{macro_path(path)}");
        getPixelSize(unit0, pw0, ph0);
        run("Segment Particles...", "model=[{tiny_bundle.path}] crop_rows=0 probability=false mask=false histogram=false");
        selectImage("ome.tif");
        getPixelSize(unit, pw, ph);
        return unit0 + "|" + unit + "|" + pw;
    """,  # noqa: E501 - the macro as ImageJ runs it
        end_batch_mode=False,
    )
    unit0, unit, pw = ret.split("|")
    assert unit0 in ("pixels", "pixel", " ", "") and unit == "nm" and float(pw) == 2.5
    log = capfd.readouterr().out  # the Log (stdout in a headless ImageJ)
    assert "Segment Particles: ome.tif: no scale in ImageJ; 2.5 nm per pixel from the file's OME metadata" in log
    with pytest.raises(MacroError, match="x: unit 'furlong' is not a length"):
        ij.run_macro(
            'newImage("x", "8-bit ramp", 64, 64, 1); run("Properties...", "unit=furlong pixel_width=2 pixel_height=2");'
            f'run("Segment Particles...", "model=[{tiny_bundle.path}] crop_rows=0");'
        )
