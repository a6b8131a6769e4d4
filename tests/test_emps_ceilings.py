"""scripts/emps_ceilings.py: the passes of a segmentation recorded, and the upper bounds drawn from them."""

import importlib.util

import numpy as np
import pandas as pd
import tifffile

from conftest import REPO


def _script():
    spec = importlib.util.spec_from_file_location("emps_ceilings", REPO / "scripts" / "emps_ceilings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _disks(n, radius, bright, seed):
    """Return a 256x256 micrograph of ``n`` separate disks (noisy) and its label image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    labels = np.zeros((256, 256), np.uint16)
    centres = [(cy, cx) for cy in range(40, 256 - 30, 60) for cx in range(40, 256 - 30, 60)][:n]
    for i, (cy, cx) in enumerate(centres, 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = i
    particle, background = (200.0, 40.0) if bright else (40.0, 200.0)
    image = np.where(labels > 0, particle, background) + rng.normal(0, 8, labels.shape)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def test_the_size_reported_is_one_of_the_recorded_passes_and_the_best_pass_is_no_farther(tmp_path, capsys):
    from particleseg import pipeline

    data = tmp_path / "emps"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    rows = []
    for stem, bright in (("disks-bright", True), ("disks-dark", False)):
        image, labels = _disks(12, 13, bright, seed=len(rows))
        tifffile.imwrite(data / "images" / f"{stem}.tif", image)
        tifffile.imwrite(data / "labels" / f"{stem}_labels.tif", labels)
        area = float(np.median(np.bincount(labels.ravel())[1:]))
        rows.append(
            {"stem": stem, "polarity": "bright-on-dark" if bright else "dark-on-bright", "median_area_px": area}
        )
        rows[-1]["n_particles"] = int(labels.max())
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)

    script = _script()
    script.DATA = data
    original = pipeline.scale_consistency
    assert script.main(["--out", str(tmp_path / "ceilings.csv")]) == 0
    assert pipeline.scale_consistency is original  # the wrapper is taken off again

    df = pd.read_csv(tmp_path / "ceilings.csv")
    assert list(df["stem"]) == ["disks-bright", "disks-dark"]
    assert (df["passes"] >= 1).all()
    # the pass chosen by the truth is at least as close as the pass segment chose (one of them)

    def error(col):
        return np.abs(np.log(df[col] / df["diameter"]))

    assert (error("best_pass") <= error("reported") + 1e-12).all()
    # twelve clean disks of 26 px, in either polarity: found, and their size reported
    assert (error("reported") < np.log(1.25)).all()
    assert (df["fg_iou_particles"] > 0.8).all()
    assert df.filter(like="fg_iou_t").to_numpy().min() > 0.5
    out = capsys.readouterr().out
    assert "best_pass within 25 %" in out and "2 images" in out


def test_recorded_passes_record_every_pass_and_restore_the_pipeline():
    from particleseg import pipeline
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image

    script = _script()
    image, _ = _disks(12, 13, True, seed=3)
    original = pipeline.scale_consistency
    with script.recorded_passes([]) as passes:
        seg = segment_image(image, load_bundle(None), SegmentParams())
    assert pipeline.scale_consistency is original
    assert passes and seg.scale.size_source == "detections"
    assert seg.scale.particle_size in passes


def test_without_the_data_one_line_names_where_it_was_looked_for(tmp_path, capsys):
    script = _script()
    script.DATA = tmp_path / "nowhere"
    assert script.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"emps_ceilings: the EMPS development set is not at {tmp_path / 'nowhere'} (set PARTICLESEG_EMPS)"]
