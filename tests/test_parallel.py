"""Issue 16 item 4: a batch on every core.

With ``jobs`` > 1 worker processes prepare the images (network, particles, measurements,
overview) while the batch writes the finished ones in order; the outputs are those of one image
after another, file by file, and a bad file is still one line. (The resumable-batch semantics
under workers: tests/test_resume.py, whose command-line batches use the command line's default,
one worker per core.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import disk_images as _images
from conftest import draw_disks, output_files
from particleseg.cli import main
from particleseg.errors import InputError
from particleseg.io import Calibration, write_tiff
from particleseg.pipeline import RECORD_DIR, SegmentParams, batch_jobs, batch_report, segment_files, usable_cpus


def test_parallel_batch_writes_what_a_sequential_batch_writes(tmp_path, threshold_bundle):
    src = tmp_path / "in"
    _images(src, 4)
    (src / "broken.tif").write_bytes(b"not a TIFF")
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"out{jobs}"
        summary, failures = segment_files([src], out, threshold_bundle, SegmentParams(jobs=jobs), progress=False)
        assert batch_report(summary) == "0 done earlier, 4 segmented, 1 failed"
        assert [Path(f).name for f, _ in failures] == ["broken.tif"] and len(failures[0][1].splitlines()) == 1
        assert summary["file"].tolist() == ["broken.tif"] + [f"img{i}.tif" for i in range(4)]
        assert summary["seconds"].notna().all()
        runs[jobs] = (output_files(out), failures)
    assert runs[2][1] == [(f, msg.replace(str(tmp_path / "out2"), str(tmp_path / "out1"))) for f, msg in runs[1][1]]
    sequential, parallel = runs[1][0], runs[2][0]
    assert sorted(sequential) == sorted(parallel) and len(sequential) == 4 * 6 + 4 + 1
    for name in sequential:
        assert parallel[name] == sequential[name], name
    assert {f"{RECORD_DIR}/img{i}.done.json" for i in range(4)} <= set(parallel)


def test_images_above_the_strip_size_are_prepared_in_the_batch_process(tmp_path, threshold_bundle, monkeypatch):
    """Large images' results are memory maps of temporary files: not sent over from a worker."""
    from particleseg import pipeline, strips

    src = tmp_path / "in"
    _images(src, 4)
    small = src / "img1.tif"  # the others are made larger than the (lowered) strip size
    monkeypatch.setattr(strips, "MIN_PIXELS", int(np.prod(pipeline.read_image(small)[0].shape)))
    for f in sorted(src.glob("*.tif")):
        if f != small:
            image, cal = pipeline.read_image(f)
            write_tiff(f, np.pad(image, ((0, 8), (0, 0)), mode="reflect"), cal, overwrite=True)
    here = []
    prepare = pipeline.prepare_file
    monkeypatch.setattr(
        pipeline, "prepare_file", lambda path, *a, **k: here.append(Path(path).name) or prepare(path, *a, **k)
    )
    summary, _ = segment_files([src], tmp_path / "out2", threshold_bundle, SegmentParams(jobs=2), progress=False)
    assert sorted(here) == ["img0.tif", "img2.tif", "img3.tif"] and summary["status"].eq("ok").all()
    here.clear()
    segment_files([src], tmp_path / "out1", threshold_bundle, SegmentParams(jobs=1), progress=False)
    assert len(here) == 4
    sequential, parallel = output_files(tmp_path / "out1"), output_files(tmp_path / "out2")
    assert sorted(sequential) == sorted(parallel)
    for name in sequential:
        assert parallel[name] == sequential[name], name


def test_the_command_line_batch_on_workers_shows_notes_and_errors_as_one_line_each(tmp_path, threshold_bundle, capsys):
    """Notes (warnings) given in a worker are printed by the batch, with their image.

    An image with outputs this run may not replace is one error line and the batch goes on; a
    rerun finds everything done.
    """
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 2)
    write_tiff(
        src / "empty.tif", np.full((160, 160), 40, np.uint8) + np.eye(160, dtype=np.uint8), Calibration(5.0, "nm")
    )
    out.mkdir()
    (out / "img1_mask.tif").write_bytes(b"someone else's")
    args = ["segment", str(src), "--out", str(out), "--model", str(threshold_bundle.path), "--quiet", "--jobs", "2"]
    assert main(args) == 1
    io = capsys.readouterr()
    err = io.err.strip().splitlines()
    assert [line for line in err if line.startswith("particleseg: error:")] == [
        f"particleseg: error: {out / 'img1_mask.tif'}: output exists and particleseg has no record of making it; "
        "use --overwrite to replace it"
    ]
    assert any(line.startswith(f"particleseg: note: {src / 'empty.tif'}: no particles found") for line in err), err
    assert err[-1] == "particleseg: 1 of 3 image(s) failed (errors above)"
    assert "0 done earlier, 2 segmented, 1 failed" in io.out
    assert (out / "img1_mask.tif").read_bytes() == b"someone else's"

    (out / "img1_mask.tif").unlink()
    assert main(args) == 0
    assert "2 done earlier, 1 segmented, 0 failed" in capsys.readouterr().out


def test_batch_jobs():
    assert batch_jobs(1, 10) == 1 and batch_jobs(4, 2) == 2 and batch_jobs(3, 0) == 1
    assert batch_jobs(0, 100) == batch_jobs(None, 100) == usable_cpus()
    assert batch_jobs(0, 1) == 1  # one image: no workers
    with pytest.raises(InputError, match="jobs: must be 0"):
        batch_jobs(-1, 3)


@pytest.mark.parametrize("radius", [12, 45])
def test_network_started_beside_the_size_estimate_gives_the_sequential_result(threshold_bundle, radius):
    """segment_image starts the network on the image while the particle size is being estimated.

    The network runs on the image as it is (ONNX Runtime); whether the estimate keeps it (small
    disks) or resamples the image (large ones, when the bundle records its training sizes),
    scale and output are those of choose_scale followed by the network.
    """
    import copy

    from particleseg.models import Bundle
    from particleseg.pipeline import _network_at_scale, choose_scale, scale_and_network

    meta = copy.deepcopy(threshold_bundle.metadata)
    meta["scale"]["particle_size_range_px"] = [15.0, 30.0]  # trained on 15-30 px: larger disks are resampled
    bundle = Bundle(threshold_bundle.path, meta, threshold_bundle.source)
    img, _ = draw_disks((256, 256), [(60, 60, radius), (170, 160, radius), (60, 190, radius)], seed=3)
    params = SegmentParams(progress=False).resolved(bundle)
    assert bundle.engine(params.engine) == "onnx"
    scale, prob = scale_and_network(img, bundle, params)
    expected = choose_scale(img, bundle, params)
    assert scale == expected and (scale.factor == 1) == (radius < 15), scale
    np.testing.assert_array_equal(prob, _network_at_scale(img, bundle, params, expected))


def _live_workers() -> list[int]:
    """List the processes forked by this process's forkserver (the batch workers) still alive."""

    def stat(pid):
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1])  # state, parent

    procs = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                procs[int(entry.name)] = stat(entry.name)
            except OSError:
                pass
    servers = set()
    for pid, (_, parent) in procs.items():
        if parent == os.getpid():
            try:
                if b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    servers.add(pid)
            except OSError:
                pass
    return [pid for pid, (state, parent) in procs.items() if parent in servers and state != "Z"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_batch_stopped_early_ends_its_workers(tmp_path, threshold_bundle):
    """Fiji's Esc (``stop``) after the first image.

    The images prepared ahead are dropped, the workers computing them are ended, and the batch
    reports them as not started.
    """
    src = tmp_path / "in"
    _images(src, 4)
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > 1

    summary, failures = segment_files(
        [src], tmp_path / "out", threshold_bundle, SegmentParams(jobs=2), progress=False, stop=stop
    )
    assert batch_report(summary) == "0 done earlier, 1 segmented, 0 failed, 3 not started" and failures == []
    assert sorted(p.name for p in (tmp_path / "out").glob("img*")) == sorted(
        f"img0{s}" for s in ("_labels.tif", "_mask.tif", "_prob.tif", "_rois.zip", "_particles.csv", "_overview.png")
    )
    assert _live_workers() == []
