"""FIB-SEM phase segmentation: streaming stacks, context, resume, bad slices, fractions, training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from conftest import tiny_phase_bundle
from particleseg import fibsem
from particleseg.errors import InputError, OutputExistsError
from particleseg.fibsem import FibsemSettings, annotation_slices, simulate_stack

CLASSES = ["matrix", "pore", "inclusion"]
TINY = FibsemSettings(shape=(7, 48, 48))


@pytest.fixture(scope="module")
def sim():
    return simulate_stack(0, TINY)


@pytest.fixture(scope="module")
def phase_bundle(tmp_path_factory):
    """Make an untrained 2-level UNet taking 2 channels x 3 slices, softmax over 3 phases."""
    return tiny_phase_bundle(tmp_path_factory.mktemp("b"))


def _write_stacks(sim, folder, compress=False):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in range(sim.channels.shape[0]):
        p = folder / f"ch{c}.tif"
        tifffile.imwrite(p, sim.channels[c], compression="zlib" if compress else None, photometric="minisblack")
        paths.append(p)
    return paths


def _corrupt_page(path, z):
    """Overwrite the compressed data of page ``z`` with garbage (a damaged slice mid-stack)."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[z]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * count)


# ------------------------------------------------------------------------------------------
# stacks and context


def test_context_indices_mirror_and_window_check():
    assert fibsem.context_indices(0, 5, 2) == [2, 1, 0, 1, 2]
    assert fibsem.context_indices(4, 5, 1) == [3, 4, 3]
    assert fibsem.context_indices(2, 5, 0) == [2]
    with pytest.raises(
        InputError, match=r"context window of 7 slices .* larger than the stack \(5 slices\); use --context 2"
    ):
        fibsem.context_indices(0, 5, 3)
    assert fibsem.input_names(["a", "b"], 1) == ["a@z-1", "b@z-1", "a@z", "b@z", "a@z+1", "b@z+1"]


def test_sources_memmap_pages_folder_agree(tmp_path, sim):
    plain = _write_stacks(sim, tmp_path / "plain")
    packed = _write_stacks(sim, tmp_path / "packed", compress=True)
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(sim.labels.shape[0]):
        tifffile.imwrite(folder / f"s_{z}.tif", sim.channels[0, z])  # natural sort: s_10 after s_9
    a = fibsem.TiffStackSource(plain[0])
    b = fibsem.TiffStackSource(packed[0])
    c = fibsem.FolderSource(folder)
    assert a._mm is not None and b._mm is None  # memory-mapped vs page by page
    for z in (0, 3, 6):
        np.testing.assert_array_equal(a.read(z), sim.channels[0, z])
        np.testing.assert_array_equal(b.read(z), sim.channels[0, z])
        np.testing.assert_array_equal(c.read(z), sim.channels[0, z])
    a.close()
    b.close()
    # an ImageJ hyperstack holding both channels
    tifffile.imwrite(tmp_path / "hyper.tif", np.moveaxis(sim.channels, 0, 1), imagej=True, metadata={"axes": "ZCYX"})
    with fibsem.open_stack([tmp_path / "hyper.tif"]) as st:
        assert st.n_channels == 2 and st.n_slices == 7
        np.testing.assert_array_equal(st.read(4), sim.channels[:, 4])


def test_bad_stacks_are_reported(tmp_path, sim):
    folder = tmp_path / "slices"
    folder.mkdir()
    for z in range(4):
        tifffile.imwrite(folder / f"slice_{z:03d}.tif", sim.channels[0, z] if z != 2 else sim.channels[0, z, :40])
    with pytest.raises(InputError, match=r"slice_002\.tif: slice of shape \(40, 48\) differs from the first slice"):
        fibsem.FolderSource(folder)
    p = _write_stacks(sim, tmp_path / "s")
    tifffile.imwrite(tmp_path / "short.tif", sim.channels[1, :5], photometric="minisblack")
    with pytest.raises(InputError, match=r"short\.tif: has 5 slices but .*ch0\.tif has 7"):
        fibsem.open_stack([p[0], tmp_path / "short.tif"])
    with pytest.raises(InputError, match=r"nope\.tif: not found"):
        fibsem.open_stack([tmp_path / "nope.tif"])
    packed = _write_stacks(sim, tmp_path / "packed", compress=True)
    _corrupt_page(packed[0], 3)
    src = fibsem.TiffStackSource(packed[0])
    np.testing.assert_array_equal(src.read(2), sim.channels[0, 2])
    with pytest.raises(InputError, match=r"ch0\.tif: slice 3 cannot be read"):
        src.read(3)
    src.close()


# ------------------------------------------------------------------------------------------
# segmentation


def test_streaming_output_equals_in_memory(tmp_path, sim, phase_bundle):
    """Streamed slices give the labels computed from the whole stack in memory with plain NumPy.

    The slices are streamed from disk (memory-mapped and page by page), segmented and written one
    by one.
    """
    paths = _write_stacks(sim, tmp_path / "in", compress=True)
    with fibsem.open_stack(paths) as st:
        fr = fibsem.segment_stack(st, phase_bundle, tmp_path / "out", tile=48, progress=False)
    out = tifffile.imread(tmp_path / "out" / "phases.tif")
    # in memory: percentiles over all slices, mirrored context, one network call per slice
    vol = sim.channels.astype(np.float32)
    norm = [np.percentile(sim.channels[c], [1.0, 99.8]) for c in range(2)]
    # (the same float32 operations as the streaming code: an untrained network's classes are
    # nearly tied, so even a last-bit difference of the input would flip some pixels)
    x = np.stack(
        [
            np.clip((vol[c] - np.float32(lo)) * np.float32(1.0 / (hi - lo)), -0.5, 1.5)
            for c, (lo, hi) in enumerate(norm)
        ],
        -1,
    )  # Z Y X C
    model = phase_bundle.model
    n = vol.shape[1]  # (C, Z, Y, X)
    for z in range(n):
        idx = [abs(z - 1), z, z + 1 if z + 1 < n else 2 * (n - 1) - (z + 1)]
        inp = np.concatenate([x[i] for i in idx], -1)[None]
        expect = np.argmax(np.asarray(model.predict_on_batch(inp))[0], -1) + 1
        np.testing.assert_array_equal(out[z], expect, err_msg=f"slice {z}")
        np.testing.assert_array_equal(tifffile.imread(fibsem.slice_path(tmp_path / "out", z)), expect)
    # fractions: per slice and for the stack, from the labels
    stack_row = fr[fr["slice"] == "stack"].iloc[0]
    for i, name in enumerate(CLASSES):
        assert stack_row[name] == pytest.approx((out == i + 1).mean())
    assert (tmp_path / "out" / "volume_fractions.png").exists()


def test_resume_skips_finished_slices_and_overwrite_protection(tmp_path, sim, phase_bundle):
    """A rerun of the same run goes on (issue 15, item 1).

    Slices with their completion record are skipped, missing or interrupted ones redone, the
    result equals the first run's; other settings, another stack, or slices particleseg has no
    record of need ``overwrite``.
    """
    from particleseg.pipeline import RECORD_DIR

    paths = _write_stacks(sim, tmp_path / "in")
    calls = []
    predict = phase_bundle.predictor()

    def counting(batch):
        calls.append(len(batch))
        return predict(batch)

    out = tmp_path / "out"
    with fibsem.open_stack(paths) as st:
        fibsem.segment_stack(st, phase_bundle, out, tile=48, progress=False, predictor=counting)
        first = tifffile.imread(out / "phases.tif")
        assert len(calls) == 7
        calls.clear()
        fibsem.segment_stack(st, phase_bundle, out, tile=48, progress=False, predictor=counting)
        assert calls == []  # everything done earlier
        fibsem.slice_path(out, 2).unlink()  # an output lost
        (out / RECORD_DIR / "phases_z00005.done.json").rename(out / RECORD_DIR / "phases_z00005.writing.json")  # killed
        (out / RECORD_DIR / ".phases_z00004.done.tmp999999-abcdefgh.json").write_text("{")  # a kill's temporary
        (out / ".prob.tmp999999-abcdefgh.dat").write_bytes(b"0")
        fibsem.segment_stack(st, phase_bundle, out, tile=48, progress=False, predictor=counting, resume=True)
        assert len(calls) == 2  # only the two unfinished slices were predicted
        assert not list(out.glob(".*.tmp*")) and not list((out / RECORD_DIR).glob(".*"))
        status = pd.read_csv(out / "slices.csv")
        assert list(status["status"]) == ["resumed", "resumed", "ok", "resumed", "resumed", "ok", "resumed"]
        np.testing.assert_array_equal(tifffile.imread(out / "phases.tif"), first)
        with pytest.raises(
            OutputExistsError, match=r"other settings \(tile 48 -> 32, overlap 23 -> 15\).*\(and 6 more slice"
        ):
            fibsem.segment_stack(st, phase_bundle, out, tile=32, progress=False)
    # another stack into the same folder is refused before any work
    other = _write_stacks(simulate_stack(1, TINY), tmp_path / "other")
    with fibsem.open_stack(other) as st, pytest.raises(OutputExistsError, match="holds the outputs of"):
        fibsem.segment_stack(st, phase_bundle, out, tile=48, progress=False)
    # a changed stack too
    tifffile.imwrite(paths[0], sim.channels[0][::-1].copy(), photometric="minisblack")
    with fibsem.open_stack(paths) as st, pytest.raises(OutputExistsError, match="changed since"):
        fibsem.segment_stack(st, phase_bundle, out, tile=48, progress=False)
    # slices particleseg has no record of
    (tmp_path / "foreign" / "slices").mkdir(parents=True)
    tifffile.imwrite(fibsem.slice_path(tmp_path / "foreign", 0), first[0])
    with fibsem.open_stack(paths) as st, pytest.raises(OutputExistsError, match="no record of making it"):
        fibsem.segment_stack(st, phase_bundle, tmp_path / "foreign", tile=48, progress=False)
    # a resume with another stack shape is refused
    run = json.loads((out / "run.json").read_text())
    run["n_slices"] = 99
    (out / "run.json").write_text(json.dumps(run))
    with fibsem.open_stack(paths) as st, pytest.raises(OutputExistsError, match="from another run"):
        fibsem.segment_stack(st, phase_bundle, out, progress=False)


def test_ctrl_c_keeps_finished_slices_and_writes_the_reports(tmp_path, sim, phase_bundle, monkeypatch):
    """Ctrl-C while slice 3's labels are written: the slice is rolled back, the reports are written.

    No file, no record and no marker of slice 3 are left, the reports list slices 0-2, and the
    same call again gives an uninterrupted run's phases.tif.
    """
    from particleseg.pipeline import RECORD_DIR

    paths = _write_stacks(sim, tmp_path / "in")
    from particleseg.fibsem import segment  # where segment_stack looks up write_tiff

    written = []
    real = segment.write_tiff

    def write_tiff(path, *a, **k):
        if "phases_z" in str(path):
            written.append(path)
            if len(written) == 4:
                raise KeyboardInterrupt
        return real(path, *a, **k)

    with fibsem.open_stack(paths) as st:
        with monkeypatch.context() as m:
            m.setattr(segment, "write_tiff", write_tiff)
            with pytest.raises(KeyboardInterrupt):
                fibsem.segment_stack(st, phase_bundle, tmp_path / "out", tile=48, progress=False)
        assert sorted(p.name for p in (tmp_path / "out" / "slices").iterdir()) == [
            f"phases_z{z:05d}.tif" for z in range(3)
        ]
        assert sorted(p.name for p in (tmp_path / "out" / RECORD_DIR).iterdir()) == [
            f"phases_z{z:05d}.done.json" for z in range(3)
        ]
        assert pd.read_csv(tmp_path / "out" / "slices.csv")["slice"].tolist() == [0, 1, 2]
        assert not (tmp_path / "out" / "phases.tif").exists()
        fibsem.segment_stack(st, phase_bundle, tmp_path / "out", tile=48, progress=False)
        fibsem.segment_stack(st, phase_bundle, tmp_path / "ref", tile=48, progress=False)
    assert (tmp_path / "out" / "phases.tif").read_bytes() == (tmp_path / "ref" / "phases.tif").read_bytes()


def test_corrupted_slice_mid_stack_continue_and_stop(tmp_path, sim, phase_bundle, capsys):
    from particleseg.cli import main

    paths = _write_stacks(sim, tmp_path / "in", compress=True)
    _corrupt_page(paths[1], 3)
    # the command line: the bad slice is one line on stderr (issue 15, item 9), exit status 1
    assert (
        main(
            [
                "fibsem",
                "segment",
                *map(str, paths),
                "--model",
                str(phase_bundle.path),
                "--out",
                str(tmp_path / "cont"),
                "--tile",
                "48",
                "--quiet",
            ]
        )
        == 1
    )
    out, err = capsys.readouterr()
    assert "particleseg:" not in out and err.count("\n") == 2, (out, err)
    assert err.startswith(f"particleseg: slice 3: {paths[1]}: slice 3 cannot be read")
    assert err.splitlines()[1] == "particleseg: 1 slice(s) could not be read (listed in slices.csv): 3"
    fr = pd.read_csv(tmp_path / "cont" / "volume_fractions.csv")
    status = pd.read_csv(tmp_path / "cont" / "slices.csv").set_index("slice")
    assert status.loc[3, "status"] == "error" and "ch1.tif: slice 3 cannot be read" in status.loc[3, "message"]
    assert (
        status.loc[2, "status"] == "ok (context substituted)"
        and "context slice 3 unreadable" in status.loc[2, "message"]
    )
    assert (status["status"] != "error").sum() == 6
    assert 3 not in set(fr["slice"]) and (tifffile.imread(tmp_path / "cont" / "phases.tif")[3] == 0).all()
    # stop: finished slices are kept, the reports are written, resume finishes the rest
    with fibsem.open_stack(paths) as st:
        with pytest.raises(InputError, match=r"stopped at slice 3; 3 finished slice\(s\) kept"):
            fibsem.segment_stack(st, phase_bundle, tmp_path / "stop", tile=48, progress=False, on_error="stop")
    assert sorted(p.name for p in (tmp_path / "stop" / "slices").iterdir()) == [
        f"phases_z{z:05d}.tif" for z in range(3)
    ]
    assert len(pd.read_csv(tmp_path / "stop" / "volume_fractions.csv")) == 4  # 3 slices + stack
    # the stack mended in place: its finished slices were made from the damaged one, so --overwrite
    good = _write_stacks(sim, tmp_path / "in", compress=True)
    with fibsem.open_stack(good) as st:
        with pytest.raises(OutputExistsError, match="changed since"):
            fibsem.segment_stack(st, phase_bundle, tmp_path / "stop", tile=48, progress=False)
        fibsem.segment_stack(st, phase_bundle, tmp_path / "stop", tile=48, progress=False, overwrite=True)
    assert len(list((tmp_path / "stop" / "slices").iterdir())) == 7


def test_volume_fractions_of_a_known_stack(tmp_path, phase_bundle):
    """The fractions equal those of the known phases of a stack.

    The stack's channel 0 holds the phase (0, 1, 2 -> phases 1..3) and a stand-in network reads
    it off the centre slice.
    """
    rng = np.random.default_rng(3)
    truth = rng.integers(1, 4, (5, 32, 40)).astype(np.uint8)
    truth[2] = 1  # one slice all matrix
    ch0 = ((truth - 1) * 100).astype(np.uint8)
    ch1 = rng.integers(0, 255, truth.shape).astype(np.uint8)

    def oracle(batch):  # channels: z-1 (2), z (2), z+1 (2); centre channel 0 is index 2
        k = np.clip(np.round(batch[..., 2] * 2), 0, 2).astype(int)
        return np.eye(3, dtype=np.float32)[k]

    with fibsem.open_stack([ch0, ch1]) as st:
        fr = fibsem.segment_stack(st, phase_bundle, tmp_path / "o", tile=32, progress=False, predictor=oracle)
    fr = fr.set_index("slice")
    for z in range(5):
        for i, name in enumerate(CLASSES):
            assert fr.loc[z, name] == pytest.approx((truth[z] == i + 1).mean())
    assert fr.loc[2, "matrix"] == 1.0
    for i, name in enumerate(CLASSES):
        assert fr.loc["stack", name] == pytest.approx((truth == i + 1).mean())
    with (
        fibsem.open_stack([ch0]) as st,
        pytest.raises(InputError, match=r"1 channel\(s\) but model 'phases-tiny' expects 2"),
    ):
        fibsem.segment_stack(st, phase_bundle, tmp_path / "o2", progress=False)
    with fibsem.open_stack([ch0[:2], ch1[:2]]) as st, pytest.raises(InputError, match="larger than the stack"):
        fibsem.segment_stack(st, phase_bundle, tmp_path / "o3", progress=False)


def test_large_slice_probabilities_through_memmap(tmp_path, sim, phase_bundle):
    """Over the memory limit the probability map goes to a temporary memmap.

    The labels are the same, and no temporary file is left behind.
    """
    x = np.random.default_rng(0).random((48, 48, 6)).astype(np.float32)
    predict = phase_bundle.predictor()
    a = fibsem.predict_slice(predict, x, tile=32, overlap=8, multiple_of=4)
    b = fibsem.predict_slice(
        predict, x, tile=32, overlap=8, multiple_of=4, memmap_dir=tmp_path, memory_limit=1000, n_outputs=3
    )
    np.testing.assert_array_equal(a, b)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# annotations, metrics, training


def test_phase_metrics_hand_computed():
    truth = np.array([[1, 1, 2, 2], [3, 3, 0, 0]])
    pred = np.array([[1, 2, 2, 2], [3, 1, 3, 1]])
    m = fibsem.phase_metrics(pred, truth, CLASSES)
    assert m["pixels"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["matrix"]["iou"] == pytest.approx(1 / 3)
    assert m["per_class"]["pore"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["pore"]["recall"] == 1
    assert m["per_class"]["inclusion"]["f1"] == pytest.approx(2 / 3)
    assert m["mean_iou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_read_annotations(tmp_path, sim):
    ann = np.zeros_like(sim.labels)
    ann[[1, 4]] = sim.labels[[1, 4]]
    tifffile.imwrite(tmp_path / "a.tif", ann, photometric="minisblack")
    got = fibsem.read_annotations(tmp_path / "a.tif", 7, (48, 48))
    assert sorted(got) == [1, 4]
    with pytest.raises(InputError, match=r"does not match the image stack \(9 slices"):
        fibsem.read_annotations(tmp_path / "a.tif", 9, (48, 48))
    with pytest.raises(InputError, match=r"slice\(s\) 2 are not annotated"):
        fibsem.read_annotations(tmp_path / "a.tif", 7, (48, 48), slices=[1, 2])
    d = tmp_path / "d"
    d.mkdir()
    tifffile.imwrite(d / "slice_0005.tif", sim.labels[5])
    assert sorted(fibsem.read_annotations(d, 7, (48, 48))) == [5]


def test_simulator_phases_and_channel_contrast(sim):
    lab, ch = sim.labels, sim.channels.astype(float)
    fr = [(lab == k).mean() for k in (1, 2, 3)]
    assert fr[0] > 0.4 and 0.1 < fr[1] < 0.4 and 0.05 < fr[2] < 0.3
    mean = lambda c, k: ch[c][lab == k].mean()  # noqa: E731
    # channel 0 separates pores, channel 1 inclusions; each confuses the other pair more
    assert mean(0, 1) - mean(0, 2) > 3 * abs(mean(0, 3) - mean(0, 1))
    assert mean(1, 3) - mean(1, 1) > 3 * abs(mean(1, 1) - mean(1, 2))
    # neighbouring slices share structure but not noise
    same = (lab[2] == lab[3]).mean()
    assert 0.7 < same < 1.0
    assert annotation_slices(32, 3) == [8, 16, 23]


@pytest.mark.slow
def test_train_from_annotated_slices_and_cli(tmp_path, capsys):
    """Training end to end from the command line (a couple of steps), then segmenting with it.

    The bundle has the context and phase names, and per-phase metrics on the independent slice.
    """
    from particleseg.cli import main

    assert (
        main(["fibsem", "simulate", "--out", str(tmp_path / "sim"), "--slices", "6", "--size", "48", "--annotate", "3"])
        == 0
    )
    chans = [str(tmp_path / "sim" / "ch0_in-chamber.tif"), str(tmp_path / "sim" / "ch1_in-lens.tif")]
    assert (
        main(
            [
                "fibsem",
                "train",
                *chans,
                "--labels",
                str(tmp_path / "sim" / "annotations.tif"),
                "--out",
                str(tmp_path / "b"),
                "--classes",
                "matrix,pore,inclusion",
                "--context",
                "1",
                "--depth",
                "2",
                "--filters",
                "4",
                "--tile",
                "32",
                "--epochs",
                "1",
                "--steps",
                "2",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "evaluation on independent slice(s) [4]" in out and "inclusion" in out
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert meta["fibsem"]["context"] == 1 and meta["classes"] == CLASSES
    assert meta["training"]["split"]["train"] == [1, 2] and set(
        meta["metrics"]["evaluation"]["all"]["per_class"]
    ) == set(CLASSES)
    assert (
        main(["fibsem", "segment", *chans, "--model", str(tmp_path / "b"), "--out", str(tmp_path / "seg"), "--quiet"])
        == 0
    )
    assert tifffile.imread(tmp_path / "seg" / "phases.tif").shape == (6, 48, 48)
    # a context window larger than the stack: one line, exit 1
    assert (
        main(
            [
                "fibsem",
                "train",
                *chans,
                "--labels",
                str(tmp_path / "sim" / "annotations.tif"),
                "--out",
                str(tmp_path / "b2"),
                "--context",
                "3",
            ]
        )
        == 1
    )
    assert "larger than the stack (6 slices)" in capsys.readouterr().err


def test_batchnorm_recalibration_makes_inference_match_training_statistics():
    import keras

    from particleseg.models import Head, NetworkConfig, build_network

    keras.utils.set_random_seed(0)
    model = build_network(NetworkConfig("unet", 2, (Head("classes", 3, "softmax"),), depth=2, base_filters=4))
    rng = np.random.default_rng(0)
    images = [(rng.normal(3.0, 2.0, (48, 48, 2))).astype(np.float32) for _ in range(3)]  # far from 0 mean, 1 variance
    x = np.stack([im[:32, :32] for im in images])
    before = np.abs(np.asarray(model(x, training=False)) - np.asarray(model(x, training=True))).max()
    fibsem.recalibrate_batchnorm(model, images, 32, n_tiles=64)
    after = np.abs(np.asarray(model(x, training=False)) - np.asarray(model(x, training=True))).max()
    assert after < 0.25 * before
    bn = next(
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert bn.momentum == pytest.approx(0.99)  # restored


def test_mrc_and_ome_zarr_volumes_segment_as_their_tiffs(tmp_path, sim, phase_bundle):
    """A stack in an electron-microscopy file gives the labels of the same stack as TIFF.

    The files (MRC written by mrcfile, OME-Zarr) are read by the one reader of particleseg.formats.
    """
    mrcfile = pytest.importorskip("mrcfile")
    tiffs = _write_stacks(sim, tmp_path / "tif")
    mrcs = []
    for c in range(sim.channels.shape[0]):
        p = tmp_path / f"ch{c}.mrc"
        with mrcfile.new(p) as m:
            m.set_data(sim.channels[c].astype(np.float32))
            m.voxel_size = 50.0
        mrcs.append(p)
    from test_formats import _ome_zarr  # NGFF metadata as written by the OME-Zarr writers

    zarrs = [
        _ome_zarr(tmp_path / f"ch{c}.ome.zarr", sim.channels[c], (50.0, 5.0, 5.0), unit="nanometer")
        for c in range(sim.channels.shape[0])
    ]
    outs = {}
    for name, paths in (("tif", tiffs), ("mrc", mrcs), ("zarr", zarrs)):
        with fibsem.open_stack(paths) as st:
            assert st.n_slices == sim.channels.shape[1]
            fibsem.segment_stack(st, phase_bundle, tmp_path / f"out-{name}", tile=48, progress=False)
        outs[name] = tifffile.imread(tmp_path / f"out-{name}" / "phases.tif")
    np.testing.assert_array_equal(outs["mrc"], outs["tif"])
    np.testing.assert_array_equal(outs["zarr"], outs["tif"])
    # a second run over the MRC files resumes from their records instead of refusing them
    with fibsem.open_stack(mrcs) as st:
        fibsem.segment_stack(st, phase_bundle, tmp_path / "out-mrc", tile=48, progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out-mrc" / "phases.tif"), outs["tif"])
