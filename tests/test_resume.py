"""Issue 15: batches that survive kill -9, full disks and unwritable folders, and say so in one line.

A rerun of the same ``particleseg segment`` command resumes: images whose complete outputs were
made from the same input with the same settings are not segmented again, an interrupted image is
redone, temporary files of the killed run are removed. Problems with the output folder are found
before any computing; OS errors while writing are one line naming the folder and the final file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import DISKS, draw_disks
from conftest import dead_pid as _dead_pid
from conftest import disk_images as _images
from conftest import zip_members as _zip_members
from particleseg.cli import main
from particleseg.errors import InputError, ParticlesegError
from particleseg.io import Calibration, stale_temporaries, write_tiff
from particleseg.pipeline import (
    OUTPUT_SUFFIXES,
    RECORD_DIR,
    batch_report,
    input_fingerprint,
    record_paths,
    segment_files,
)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in list(folder.glob(".*")) + list(folder.glob(f"{RECORD_DIR}/.*")) if p.is_file())


def _same_outputs(a: Path, b: Path, stems) -> None:
    for stem in stems:
        for suffix in ("_labels.tif", "_mask.tif", "_prob.tif"):
            np.testing.assert_array_equal(
                tifffile.imread(a / f"{stem}{suffix}"),
                tifffile.imread(b / f"{stem}{suffix}"),
                err_msg=f"{stem}{suffix}",
            )
        assert (a / f"{stem}_particles.csv").read_bytes() == (b / f"{stem}_particles.csv").read_bytes(), stem
        assert _zip_members(a / f"{stem}_rois.zip") == _zip_members(b / f"{stem}_rois.zip"), stem


def _cli(args, cwd=None, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-m", "particleseg", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout
    )


# ------------------------------------------------------------------------------------------
# item 1: kill -9 and rerun: tests/test_faults.py (kill -9 at random moments, several times)


def test_sigterm_rolls_back_the_current_image_and_writes_the_summary(tmp_path, threshold_bundle):
    """``kill`` (SIGTERM) is Ctrl-C.

    The image being written is removed, summary.csv lists the finished ones, exit status 130
    with one line; every image is then complete or absent.
    """
    import signal

    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 3)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "particleseg",
            "segment",
            str(src),
            "--out",
            str(out),
            "--model",
            str(threshold_bundle.path),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    writing = record_paths("img1.tif", out)[1]
    deadline = time.monotonic() + 300
    while not writing.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip() == (
        f"particleseg: interrupted; the images finished so far are in {out} with its "
        "summary.csv; run the same command again to go on"
    )
    done = _complete_or_absent(out, 3)
    assert "img0" in done
    summary, _ = segment_files([src], out, threshold_bundle, progress=False)
    assert batch_report(summary) == f"{len(done)} done earlier, {3 - len(done)} segmented, 0 failed"


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_kill_while_numpy_writes_a_tiff_is_an_interruption(tmp_path, threshold_bundle, monkeypatch, capsys, signum):
    """The moment of a failure CI saw: a signal NumPy turns into a TypeError is still Ctrl-C.

    tifffile writes image data with ``ndarray.tofile``, which asks ``isinstance(file, os.PathLike)``
    through Python code (``ABCMeta.__instancecheck__``). NumPy 2.4 replaces an interruption raised
    there with ``TypeError: expected str, bytes or os.PathLike object, not BufferedWriter``, which
    ended the batch with a traceback and status 1. Here the real signal comes at that moment.
    """
    import abc
    import io
    import signal

    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 3)
    real_check = abc.ABCMeta.__instancecheck__
    sent = []

    def check(cls, instance):
        if cls is os.PathLike and isinstance(instance, io.BufferedWriter) and not sent:
            writing = list((out / RECORD_DIR).glob("img1.writing.json"))
            if writing:
                sent.append(instance.name)
                os.kill(os.getpid(), getattr(signal, signum))
        return real_check(cls, instance)

    monkeypatch.setattr(abc.ABCMeta, "__instancecheck__", check)
    code = main(["segment", str(src), "--out", str(out), "--model", str(threshold_bundle.path), "--quiet"])
    monkeypatch.undo()
    assert sent and ".img1_" in sent[0], sent  # the signal came while img1's first TIFF was written
    assert code == 130, capsys.readouterr().err
    assert capsys.readouterr().err.strip() == (
        f"particleseg: interrupted; the images finished so far are in {out} with its "
        "summary.csv; run the same command again to go on"
    )
    assert _complete_or_absent(out, 3) == ["img0"]
    summary, _ = segment_files([src], out, threshold_bundle, progress=False)
    assert batch_report(summary) == "1 done earlier, 2 segmented, 0 failed"


def test_stop_on_signals_restores_the_handlers_and_leaves_other_errors_alone():
    import signal

    from particleseg import interrupts

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(ValueError, match="its own"):  # no signal came: an error is the item's own
        with interrupts.stop_on_signals():
            assert signal.getsignal(signal.SIGTERM) is not before[1] and not interrupts.requested()
            raise ValueError("its own")
    with pytest.raises(KeyboardInterrupt) as caught:  # after a signal: the interruption, caused by it
        with interrupts.stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)  # (the handler runs here)
            except KeyboardInterrupt:
                raise ValueError("what a library made of it") from None
    assert isinstance(caught.value.__cause__, ValueError)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not interrupts.requested()
    interrupts.check()  # outside a block: nothing to raise


def test_rerun_redoes_an_interrupted_image_and_removes_stale_temporaries(tmp_path, threshold_bundle):
    """The state kill -9 leaves, made by hand.

    Image 1 has its ``writing`` marker and part of its outputs, and temporary files of the dead
    process lie next to them.
    """
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 2)
    segment_files([src], out, threshold_bundle, progress=False)
    first = {p.name: p.read_bytes() for p in out.glob("img1_*")}
    done, writing = record_paths("img1.tif", out)
    done.rename(writing)  # interrupted while writing
    (out / "img1_overview.png").unlink()
    (out / "img1_labels.tif").write_bytes(b"half")  # a partial set, as an older version could leave
    pid = _dead_pid()
    stale = [f".img1_prob.tmp{pid}-abcdefgh.tif", f".summary.tmp{pid}-k2j4l5m6.csv"]
    for name in stale:
        (out / name).write_bytes(b"x")
    (out / RECORD_DIR / f".img1.done.tmp{pid}-zzzzzzzz.json").write_bytes(b"x")
    assert {p.name for p in stale_temporaries(out)} == set(stale)

    summary, failures = segment_files([src], out, threshold_bundle, progress=False)
    assert failures == [] and batch_report(summary) == "1 done earlier, 1 segmented, 0 failed"
    assert summary.attrs["done_files"] == ["img0.tif"]
    assert _temporaries(out) == [] and not writing.exists() and done.exists()
    assert {p.name: p.read_bytes() for p in out.glob("img1_*") if p.suffix in (".tif", ".csv")} == {
        k: v for k, v in first.items() if Path(k).suffix in (".tif", ".csv")
    }
    assert (out / "img1_overview.png").is_file()


def test_other_settings_or_a_changed_input_need_overwrite(tmp_path, threshold_bundle, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 2)
    base = ["segment", str(src), "--out", str(out), "--model", str(threshold_bundle.path), "--quiet"]
    assert main(base) == 0
    capsys.readouterr()
    # the same parameters given explicitly (the bundle's own threshold): still done
    assert main(base + ["--threshold", "0.5"]) == 0
    assert "2 done earlier, 0 segmented, 0 failed" in capsys.readouterr().out

    assert main(base + ["--threshold", "0.6"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"particleseg: error: {src / 'img0.tif'}: its outputs in {out} were made with other settings "
        "(threshold 0.5 -> 0.6); use --overwrite to replace them"
    )
    assert len(err) == 3 and err[-1] == "particleseg: 2 of 2 image(s) failed (errors above)"

    # a touched file with the same content is the same input; new content is not
    os.utime(src / "img0.tif", ns=(time.time_ns(), time.time_ns()))
    img, _ = draw_disks((160, 160), DISKS[3], seed=7)
    write_tiff(src / "img1.tif", img, Calibration(5.0, "nm"), overwrite=True)
    assert main(base) == 1
    io = capsys.readouterr()
    assert io.err.strip().splitlines() == [
        f"particleseg: error: {src / 'img1.tif'}: changed since its outputs in {out} were made; use --overwrite to "
        "replace them",
        "particleseg: 1 of 2 image(s) failed (errors above)",
    ]
    assert "1 done earlier, 0 segmented, 1 failed" in io.out
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["status"] == "ok").all() and len(summary) == 2  # the refused image keeps its row

    assert main(base + ["--overwrite"]) == 0
    assert "0 done earlier, 2 segmented, 0 failed" in capsys.readouterr().out
    assert pd.read_csv(out / "img1_particles.csv")["kept"].sum() == 3


def test_outputs_particleseg_did_not_make_are_never_replaced(tmp_path, threshold_bundle, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 1)
    out.mkdir()
    (out / "img0_particles.csv").write_text("mine\n")
    assert main(["segment", str(src), "--out", str(out), "--model", str(threshold_bundle.path), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"particleseg: error: {out / 'img0_particles.csv'}: output exists and particleseg has no record of making it; "
        "use --overwrite to replace it"
    )
    assert (out / "img0_particles.csv").read_text() == "mine\n" and not (out / "img0_labels.tif").exists()


def test_ctrl_c_rolls_back_the_image_being_written_and_writes_the_summary(tmp_path, threshold_bundle, monkeypatch):
    import particleseg.pipeline as pipeline

    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 3)
    real = pipeline.write_rois

    def interrupted_on_img1(path, *a, **k):
        if Path(path).name == "img1_rois.zip":
            raise KeyboardInterrupt
        return real(path, *a, **k)

    monkeypatch.setattr(pipeline, "write_rois", interrupted_on_img1)
    with pytest.raises(KeyboardInterrupt):
        segment_files([src], out, threshold_bundle, progress=False)
    assert sorted(p.name for p in out.glob("img1*")) == []  # nothing partial under a final name
    assert pd.read_csv(out / "summary.csv")["file"].tolist() == ["img0.tif"]
    assert not record_paths("img1.tif", out)[1].exists()
    monkeypatch.setattr(pipeline, "write_rois", real)
    summary, _ = segment_files([src], out, threshold_bundle, progress=False)
    assert batch_report(summary) == "1 done earlier, 2 segmented, 0 failed"
    assert pd.read_csv(out / "summary.csv")["file"].tolist() == ["img0.tif", "img1.tif", "img2.tif"]


def _complete_or_absent(out: Path, n: int) -> list[str]:
    """Check that every image's outputs are complete with their record, or absent.

    No marker is left; summary.csv lists exactly the complete ones. Returns their stems.
    """
    done = sorted(p.name.split(".")[0] for p in (out / RECORD_DIR).glob("*.done.json"))
    assert not list((out / RECORD_DIR).glob("*.writing.json")) and _temporaries(out) == []
    for i in range(n):
        have = sorted(p.name for p in out.glob(f"img{i}_*"))
        assert have == (sorted(f"img{i}{s}" for s in OUTPUT_SUFFIXES) if f"img{i}" in done else []), have
    assert [Path(f).stem for f in pd.read_csv(out / "summary.csv")["file"]] == done
    return done


@pytest.mark.parametrize("moment", ["marker written", "labels written", "record written"])
def test_ctrl_c_at_each_moment_of_writing_an_image_leaves_it_complete_or_absent(
    tmp_path, threshold_bundle, monkeypatch, moment
):
    import pathlib

    import particleseg.pipeline as pipeline

    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 2)
    real_json, real_tiff, real_unlink = pipeline._write_json, pipeline.write_tiff, pathlib.Path.unlink

    def json_then_interrupt(path, data):
        real_json(path, data)
        if path.name == "img1.writing.json" and moment == "marker written":
            raise KeyboardInterrupt

    def tiff_then_interrupt(path, *a, **k):
        real_tiff(path, *a, **k)
        if Path(path).name == "img1_labels.tif" and moment == "labels written":
            raise KeyboardInterrupt

    def unlink(self, *a, **k):  # the marker's removal, the last step after the record
        if (
            self.name == "img1.writing.json"
            and moment == "record written"
            and (out / RECORD_DIR / "img1.done.json").exists()
        ):
            monkeypatch.setattr(pathlib.Path, "unlink", real_unlink)
            raise KeyboardInterrupt
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(pipeline, "_write_json", json_then_interrupt)
    monkeypatch.setattr(pipeline, "write_tiff", tiff_then_interrupt)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        segment_files([src], out, threshold_bundle, progress=False)
    monkeypatch.undo()
    done = _complete_or_absent(out, 2)
    assert done == (["img0", "img1"] if moment == "record written" else ["img0"])
    summary, _ = segment_files([src], out, threshold_bundle, progress=False)
    assert batch_report(summary) == f"{len(done)} done earlier, {2 - len(done)} segmented, 0 failed"
    assert _complete_or_absent(out, 2) == ["img0", "img1"]


def test_a_folder_store_input_resumes_too(tmp_path, threshold_bundle):
    """An OME-Zarr store is a folder: its fingerprint covers its files."""
    from test_formats import _ome_zarr

    img, _ = draw_disks((160, 160), DISKS[0])
    store = _ome_zarr(tmp_path / "in" / "z.ome.zarr", img, (0.005, 0.005))
    out = tmp_path / "out"
    summary, failures = segment_files([tmp_path / "in"], out, threshold_bundle, progress=False)
    assert failures == [] and batch_report(summary) == "0 done earlier, 1 segmented, 0 failed"
    assert (out / "z.ome_labels.tif").is_file()
    record = json.loads(record_paths(store, out)[0].read_text())
    assert record["input"] == {"name": "z.ome.zarr", **input_fingerprint(store)}
    assert record["input"]["size"] == sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) > 0
    summary, _ = segment_files([tmp_path / "in"], out, threshold_bundle, progress=False)
    assert batch_report(summary) == "1 done earlier, 0 segmented, 0 failed"


# ------------------------------------------------------------------------------------------
# item 2: two inputs with the same stem


def test_inputs_with_the_same_stem_are_refused_before_any_work(tmp_path, threshold_bundle, capsys):
    img, _ = draw_disks((64, 64), [(30, 30, 8)])
    write_tiff(tmp_path / "a.tif", img)
    tifffile.imwrite(tmp_path / "x.tif", img)
    (tmp_path / "a.png").write_bytes(b"not even read")
    out = tmp_path / "out"
    rc = main(
        [
            "segment",
            str(tmp_path / "a.tif"),
            str(tmp_path / "a.png"),
            "--out",
            str(out),
            "--model",
            str(threshold_bundle.path),
            "--quiet",
            "--overwrite",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err == (
        f"particleseg: error: {tmp_path / 'a.tif'} and {tmp_path / 'a.png'}: the same name stem "
        "'a', so their outputs would have the same names (a_labels.tif, ...); rename one, or "
        "segment them into different --out folders"
    )
    assert not out.exists()
    # the same file named twice is one input
    assert (
        main(
            [
                "segment",
                str(tmp_path / "a.tif"),
                str(tmp_path / "a.tif"),
                "--out",
                str(out),
                "--model",
                str(threshold_bundle.path),
                "--quiet",
            ]
        )
        == 0
    )
    assert "0 done earlier, 1 segmented, 0 failed" in capsys.readouterr().out
    # a later batch into the same folder: a.png may not take a.tif's outputs
    write_tiff(tmp_path / "b" / "a.tif", img)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "b" / "a.png", img)
    assert (
        main(
            [
                "segment",
                str(tmp_path / "b" / "a.png"),
                "--out",
                str(out),
                "--model",
                str(threshold_bundle.path),
                "--quiet",
            ]
        )
        == 1
    )
    assert capsys.readouterr().err.strip() == (
        f"particleseg: error: {tmp_path / 'b' / 'a.png'}: {out} holds the outputs of a.tif (the same name stem 'a'); "
        "use another --out, or --overwrite to replace them"
    )


# ------------------------------------------------------------------------------------------
# item 3: the output folder checked first; OS errors as one line


def _no_computing(monkeypatch):
    import particleseg.pipeline as pipeline

    def fail(*a, **k):
        raise AssertionError("computed although the batch should have been refused first")

    monkeypatch.setattr(pipeline, "segment_image", fail)


def test_an_unusable_output_folder_is_one_line_before_any_work(tmp_path, threshold_bundle, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    _images(tmp_path / "in", 2)
    _no_computing(monkeypatch)
    (tmp_path / "file").write_text("x")
    model = ["--model", str(threshold_bundle.path), "--quiet"]
    for out, message in [
        (tmp_path / "file", f"{tmp_path / 'file'}: is a file, not a folder; give a folder for the outputs"),
        (tmp_path / "file" / "sub", f"{tmp_path / 'file' / 'sub'}: cannot create the folder (a file is in its path)"),
    ]:
        assert main(["segment", str(tmp_path / "in"), "--out", str(out), *model]) == 1
        assert capsys.readouterr().err.strip() == f"particleseg: error: {message}"

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 100_000, 100_000))
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *model]) == 1
    assert capsys.readouterr().err.strip() == (
        f"particleseg: error: {tmp_path / 'o'}: not enough free space (0.1 MB free, the outputs need at least 0.4 MB)"
    )

    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["segment", str(tmp_path / "in"), "--out", str(tmp_path / "o"), *model]) == 1
    assert (
        capsys.readouterr().err.strip() == f"particleseg: error: {tmp_path / 'o'}: not writable (read-only file system)"
    )


@pytest.mark.parametrize(
    "error, message",
    [
        (OSError("786432 requested and 102232 written"), "disk full writing img1_prob.tif"),
        (OSError(errno.ENOSPC, "No space left on device"), "disk full writing img1_prob.tif"),
        (PermissionError(errno.EACCES, "Permission denied"), "not writable"),
    ],
)
def test_os_errors_while_writing_are_one_line_and_leave_nothing_partial(
    tmp_path, threshold_bundle, capsys, monkeypatch, error, message
):
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 3)
    real = tifffile.imwrite

    def failing(path, *a, **k):
        if ".img1_prob." in str(path):
            real(path, *a, **k)  # the temporary file is there when the error comes
            raise error
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", failing)
    assert main(["segment", str(src), "--out", str(out), "--model", str(threshold_bundle.path), "--quiet"]) == 1
    io = capsys.readouterr()
    assert io.err.strip().splitlines() == [
        f"particleseg: error: {out}: {message}",
        "particleseg: error: stopped; 1 image(s) not started",
        "particleseg: 1 of 2 image(s) failed (errors above)",
    ]
    assert "1 done earlier" not in io.out and "0 done earlier, 1 segmented, 1 failed, 1 not started" in io.out
    assert not re.search(r"\.tmp\d+-", io.err) and "Traceback" not in io.err
    assert _temporaries(out) == [] and list(out.glob("img1*")) == [] and list(out.glob("img2*")) == []
    assert pd.read_csv(out / "summary.csv")["status"].tolist() == ["ok", "failed"]
    monkeypatch.setattr(tifffile, "imwrite", real)
    assert main(["segment", str(src), "--out", str(out), "--model", str(threshold_bundle.path), "--quiet"]) == 0
    assert "1 done earlier, 2 segmented, 0 failed" in capsys.readouterr().out


def _mount_tmpfs(path: Path, size: str, options: str = "") -> bool:
    path.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs", str(path)], capture_output=True, text=True
    )
    return run.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if os.geteuid() != 0 or not _mount_tmpfs(disk, "600k"):
        pytest.skip("needs root and mount -t tmpfs (a real small file system)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_and_a_read_only_folder(small_disk, tmp_path, threshold_bundle, capsys):
    """A 600 KB tmpfs.

    A 400x400 image's outputs need more than the free space: refused before any work. Two
    160x160 images pass the estimate (label, mask and probability images), but with their
    overviews only the first fits: the second fills the disk while writing.
    """
    src = tmp_path / "in"
    _images(src, 2)
    big = np.random.default_rng(0).integers(0, 255, (400, 400), np.uint8)
    big[100:200, 100:200] = 255
    write_tiff(tmp_path / "big.tif", big, Calibration(5.0, "nm"))
    model = ["--model", str(threshold_bundle.path), "--quiet"]
    assert main(["segment", str(tmp_path / "big.tif"), "--out", str(small_disk / "all"), *model]) == 1
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(
        rf"particleseg: error: {small_disk / 'all'}: not enough free space \(0\.\d MB free, "
        r"the outputs need at least 1\.1 MB\)",
        err,
    ), err

    rc = main(["segment", str(src), "--out", str(small_disk / "o"), *model])
    io = capsys.readouterr()
    err = io.err.strip().splitlines()
    assert (
        rc == 1
        and len(err) == 2
        and re.fullmatch(rf"particleseg: error: {small_disk / 'o'}: disk full writing img1_\w+\.\w+", err[0])
    ), err
    assert "1 segmented, 1 failed" in io.out
    assert sorted(p.name for p in (small_disk / "o").glob("img1*")) == [] and _temporaries(small_disk / "o") == []
    assert (small_disk / "o" / RECORD_DIR / "img0.done.json").is_file()

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for out in ("new", "o"):
        rc = main(["segment", str(src / "img0.tif"), "--out", str(small_disk / out), *model])
        assert rc == 1 and capsys.readouterr().err.strip() == (
            f"particleseg: error: {small_disk / out}: not writable (read-only file system)"
        )


# ------------------------------------------------------------------------------------------
# Fiji's Batch Segment Folder... is the same batch


def test_fiji_batch_segment_folder_resumes_through_the_same_batch(tmp_path, threshold_bundle, monkeypatch):
    """Without ImageJ: the command's Java calls replaced, its Log collected."""
    import particleseg.fiji.commands as cmds

    class IJ:
        @staticmethod
        def resetEscape():
            pass

        @staticmethod
        def escapePressed():
            return False

    log = []
    monkeypatch.setattr(cmds, "_j", lambda name: IJ)
    for name in ("log", "status", "progress", "show_table"):
        monkeypatch.setattr(
            cmds.publish, name, (lambda *a, **k: log.append(a[0])) if name == "log" else (lambda *a, **k: None)
        )
    src, out = tmp_path / "in", tmp_path / "out"
    _images(src, 2)
    values = {"input": str(src), "output": str(out), "model": str(threshold_bundle.path), "overview": False}
    segment_files([src / "img0.tif"], out, threshold_bundle, progress=False, write_overview=False)
    ctx = cmds.Context("Batch Segment Folder...")
    res = cmds.batch_segment_folder(ctx, dict(values))
    assert res == {"ok": 2, "failed": 0, "canceled": False, "done_earlier": 1}
    assert log[0].startswith("  img0.tif (done earlier): 3 particles")
    assert log[-1].startswith("Batch Segment Folder: 2 of 2 images segmented (1 done earlier, 1 segmented, 0 failed)")
    assert not (out / "img0_overview.png").exists()


# ------------------------------------------------------------------------------------------
# item 4 (issue item 5): one calibration policy


def _fei(path: Path, width: str, height: str) -> Path:
    text = f"[User]\nDate=01/01/2020\n[Scan]\nPixelWidth={width}\nPixelHeight={height}\n"
    tifffile.imwrite(
        path, np.random.default_rng(0).integers(0, 255, (40, 40), np.uint8), extratags=[(34682, "s", 0, text, True)]
    )
    return path


def _tiff(path: Path, **kwargs) -> Path:
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (40, 40), np.uint8), **kwargs)
    return path


@pytest.mark.parametrize(
    "make, detail, source",
    [
        (
            lambda p: _tiff(p, imagej=True, resolution=(0, 1), metadata={"unit": "nm"}),
            "XResolution: resolution 0 pixels per unit",
            "ImageJ",
        ),
        (
            lambda p: _tiff(p, imagej=True, resolution=(1, 1), metadata={"unit": "furlong"}),
            "unit: unknown length unit 'furlong'",
            "ImageJ",
        ),
        (
            lambda p: _tiff(p, ome=True, metadata={"PhysicalSizeX": -1.0, "PhysicalSizeY": -1.0}),
            "PhysicalSizeX: pixel size -1 µm",
            "OME",
        ),
        (
            lambda p: _tiff(p, ome=True, metadata={"PhysicalSizeX": float("inf")}),
            "PhysicalSizeX: pixel size inf µm",
            "OME",
        ),
        (lambda p: _tiff(p, ome=True, metadata={"PhysicalSizeX": 0.0}), "PhysicalSizeX: pixel size 0 µm", "OME"),
        (lambda p: _fei(p, "-7.3e-09", "-7.3e-09"), "[Scan] PixelWidth: pixel size -7.3 nm", "FEI/Thermo Fisher SEM"),
        (lambda p: _fei(p, "nan", ""), "[Scan] PixelWidth: pixel size nan nm", "FEI/Thermo Fisher SEM"),
    ],
)
def test_invalid_calibration_metadata_is_one_note_and_pixels(tmp_path, make, detail, source):
    """Item 5: a note naming the file, the metadata and its tag; pixels.

    With ``strict`` (``--strict``) the same metadata is an error naming them.
    """
    from particleseg.errors import ParticlesegWarning
    from particleseg.io import read_calibration, read_image

    path = make(tmp_path / "x.tif")
    note = f"{path}: ignored the calibration in its {source} metadata ({detail}); measuring in pixels"
    with pytest.warns(ParticlesegWarning) as caught:
        _, cal = read_image(path)
    assert cal == Calibration() and [str(w.message) for w in caught] == [note]
    with pytest.warns(ParticlesegWarning, match=re.escape(note)):
        assert read_calibration(path) == (Calibration(), "")
    error = (
        f"{path}: invalid calibration in its {source} metadata ({detail}) (--strict); fix the metadata, or "
        "give --pixel-size or --image-width, or leave out --strict to measure it without that metadata"
    )
    for read in (read_image, read_calibration):
        with pytest.raises(InputError) as exc:
            read(path, strict=True)
        assert str(exc.value) == error


def test_strict_on_the_command_line_fails_the_image_and_the_batch_goes_on(tmp_path, threshold_bundle, capsys):
    """``particleseg segment --strict``: the image with invalid metadata fails, the batch goes on.

    It fails with one line on stderr, the other image is segmented; without ``--strict`` both
    are, with a note.
    """
    img, _ = draw_disks((120, 120), [(60, 60, 15)])
    src = tmp_path / "in"
    src.mkdir()
    bad = src / "bad.tif"
    tifffile.imwrite(bad, img, ome=True, metadata={"PhysicalSizeX": 0.0})
    write_tiff(src / "good.tif", img, Calibration(5.0, "nm"))
    model = ["--model", str(threshold_bundle.path), "--quiet"]
    assert main(["segment", str(src), "--out", str(tmp_path / "s"), "--strict", *model]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == (
        f"particleseg: error: {bad}: invalid calibration in its OME metadata (PhysicalSizeX: pixel size "
        "0 µm) (--strict); fix the metadata, or give --pixel-size or --image-width, or leave out "
        "--strict to measure it without that metadata"
    )
    summary = pd.read_csv(tmp_path / "s" / "summary.csv").set_index("file")
    assert summary.loc["good.tif", "status"] == "ok" and summary.loc["bad.tif", "status"] == "failed"
    # without --strict: a note, and pixels; --strict does not change the results (same resume settings)
    assert main(["segment", str(src), "--out", str(tmp_path / "s"), *model]) == 0
    assert "particleseg: note: " in capsys.readouterr().err
    summary = pd.read_csv(tmp_path / "s" / "summary.csv").set_index("file")
    assert (summary["status"] == "ok").all() and summary.loc["good.tif", "pixel_size"] == 5.0


def test_non_square_pixels_are_an_error_unless_a_pixel_size_is_given(tmp_path, threshold_bundle, capsys):
    from particleseg.io import read_image

    img, _ = draw_disks((120, 120), [(60, 60, 15)])
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, img, imagej=True, resolution=(1 / 5.0, 1 / 7.5), metadata={"unit": "nm"})
    fei = _fei(tmp_path / "fei.tif", "7.3e-09", "9e-09")
    ome = _tiff(tmp_path / "ome.tif", ome=True, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25})
    for path, sizes in (
        (ij, "5 x 7.5 nm in its ImageJ"),
        (fei, "7.3 x 9 nm in its FEI/Thermo Fisher SEM"),
        (ome, "0.5 x 0.25 µm in its OME"),
    ):
        with pytest.raises(InputError) as exc:
            read_image(path)
        assert str(exc.value) == (
            f"{path}: pixels are not square ({sizes} metadata); give --pixel-size or "
            "--image-width to measure it with square pixels"
        )
    # nearly equal (rational resolutions) is square
    tifffile.imwrite(
        tmp_path / "near.tif", img, imagej=True, resolution=(1 / 5.0, 1 / 5.0000001), metadata={"unit": "nm"}
    )
    assert read_image(tmp_path / "near.tif")[1] == Calibration(5.0, "nm")

    model = ["--model", str(threshold_bundle.path), "--quiet"]
    assert main(["segment", str(ij), "--out", str(tmp_path / "o"), *model]) == 1
    assert capsys.readouterr().err.strip() == (
        f"particleseg: error: {ij}: pixels are not square (5 x 7.5 nm in its "
        "ImageJ metadata); give --pixel-size or --image-width to measure it "
        "with square pixels"
    )
    assert main(["segment", str(ij), "--out", str(tmp_path / "o"), "--pixel-size", "6", *model]) == 0
    assert capsys.readouterr().err.strip() == (
        f"particleseg: note: {ij}: pixels are not square (5 x 7.5 nm in its "
        "ImageJ metadata); measured with the pixel size given"
    )
    assert pd.read_csv(tmp_path / "o" / "summary.csv")["pixel_size"].tolist() == [6.0]


def test_a_worker_ended_while_it_hands_over_its_image_ends_the_pool(tmp_path, threshold_bundle, monkeypatch):
    """The batch is interrupted while a worker hands over a large prepared image.

    The worker is ended in the middle of it. The pool's manager thread must end, and no file may
    be left. Results once went through the pool's result pipe; a worker ended in the middle of
    one left a partial message, on which the manager thread, and the process's exit, waited for
    ever. That hung ``particleseg segment`` after "interrupted" (with Python 3.11 here, a worker
    terminated 1 s into sending a 200 MB result hung the manager thread in each of 5 tries).
    """
    import multiprocessing
    import types

    from particleseg import pipeline
    from particleseg.pipeline import _Workers

    def large(*args, **kwargs):
        return types.SimpleNamespace(labels=np.ones((8192, 4096), np.int32))  # 128 MiB

    monkeypatch.setattr(pipeline, "context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(pipeline, "prepare_file", large)
    image = tmp_path / "large.tif"
    image.write_bytes(b"")
    workers = _Workers(1, threshold_bundle, None, tmp_path / "out", False, {})
    try:
        workers.submit(0, image, False)
        manager = workers.pool._executor_manager_thread
        processes = list(workers.pool._processes.values())
        hand_over = workers.hand_overs[0]
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing target
        while not (hand_over.exists() and hand_over.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert hand_over.exists(), "the worker never began to hand over"
    finally:
        workers.close()  # as after Ctrl-C: the image is not done, so its worker is ended
    try:
        manager.join(60)
        assert not manager.is_alive()
        for proc in processes:
            proc.join(30)
            assert not proc.is_alive()
        assert not workers.hand_over_dir.exists() and not (tmp_path / "out").exists()
    finally:  # never leave a worker behind
        for proc in processes:
            proc.kill()


def test_a_batch_removes_the_temporary_folders_of_killed_batches_only(tmp_path):
    """A ``kill -9`` leaves the batch's temporary folder; the next batch removes it.

    Only folders whose process is gone: a running batch's folder (this process's) and other
    files are left alone.
    """
    from particleseg.pipeline import BATCH_FOLDER_PREFIX, remove_stale_batch_folders

    dead = tmp_path / f"{BATCH_FOLDER_PREFIX}{_dead_pid()}-abc"
    alive = tmp_path / f"{BATCH_FOLDER_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"{BATCH_FOLDER_PREFIX}old-style"
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "0.pickle").write_bytes(b"x" * 100)
    assert remove_stale_batch_folders(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()


def test_a_prepared_image_removed_from_the_temporary_folder_is_one_clear_failure(
    tmp_path, threshold_bundle, monkeypatch
):
    """A temporary-file cleaner removed a worker's prepared image before the batch read it."""
    import multiprocessing
    import types

    from particleseg import pipeline
    from particleseg.pipeline import _Workers

    monkeypatch.setattr(pipeline, "context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(pipeline, "prepare_file", lambda *a, **k: types.SimpleNamespace(seconds=0))
    image = tmp_path / "a.tif"
    image.write_bytes(b"")
    workers = _Workers(1, threshold_bundle, None, tmp_path / "out", False, {})
    try:
        assert workers.hand_over_dir.name.startswith(f"particleseg-batch-{os.getpid()}-")
        workers.submit(0, image, False)
        assert workers.futures[0].result(60) is None  # handed over in the file
        workers.hand_overs[0].unlink()
        with pytest.raises(ParticlesegError) as err:
            workers.result(0)
        assert str(err.value) == (
            f"its prepared result, {workers.hand_over_dir / '0.pickle'}, was removed from the temporary "
            "folder while the batch ran (a temporary-file cleaner?); run the batch again to segment it"
        )
    finally:
        workers.close()
    assert not workers.hand_over_dir.exists()


def test_an_interrupt_while_waiting_for_a_worker_ends_the_workers(tmp_path, threshold_bundle, monkeypatch):
    """Ctrl-C while the batch waits for the image a worker is preparing: the worker is ended.

    The worker's preparation blocks until it is ended (the workers are forked here, so they
    run the test's stand-in for ``prepare_file``, which never returns); the batch's wait is
    interrupted as Ctrl-C interrupts it. The workers and the pool's manager thread must be gone
    after ``close``, or the process would wait for them at exit.
    """
    import multiprocessing
    import signal
    import threading

    from particleseg import pipeline
    from particleseg.pipeline import _Workers

    def interrupt(signum, frame):
        raise KeyboardInterrupt  # what Ctrl-C (and SIGTERM in the CLI) raises

    def stuck(*args, **kwargs):
        time.sleep(3600)  # a worker blocked in reading (a slow or hung file system)

    monkeypatch.setattr(pipeline, "context", lambda: multiprocessing.get_context("fork"))
    monkeypatch.setattr(pipeline, "prepare_file", stuck)
    image = tmp_path / "stuck.tif"
    image.write_bytes(b"")
    workers = _Workers(2, threshold_bundle, None, tmp_path / "out", False, {})
    previous = signal.signal(signal.SIGUSR1, interrupt)
    # a real signal: it wakes the wait for the result, as Ctrl-C does
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        workers.submit(0, image, False)
        manager = workers.pool._executor_manager_thread
        processes = list(workers.pool._processes.values())
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            workers.result(0)
    finally:
        timer.cancel()  # never a signal after the test, whatever happened
        timer.join()
        signal.signal(signal.SIGUSR1, previous)
        workers.close()
    try:
        # the manager thread first: it joins the workers too, and a join that loses that race
        # to reap a worker finds no child (ECHILD), which multiprocessing reads as "alive"
        manager.join(30)  # a guard against a hang, not a timing target
        assert not manager.is_alive()
        for proc in processes:
            proc.join(30)
            assert not proc.is_alive()
    finally:  # a worker left blocked would hold the test process at exit: fail, never hang
        for proc in processes:
            proc.kill()
