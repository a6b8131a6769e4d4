"""Training on annotated images: data, architectures, masks, resuming, bundles, exports.

Reading and checking the data, every architecture, the loss on a learnable task, masks of each
kind, resuming, bundles through load_bundle and the pipeline, the particle classifier, exports
checked against Keras, and bad inputs.

Tiny networks (depth 2, a few filters) on 64x64 images. The tests that train are marked slow
(seconds each; the file takes 2-5 minutes on two shared CPU cores, most of it graph tracing).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from conftest import draw_disks
from particleseg import metrics, segment_image
from particleseg.cli import main
from particleseg.errors import BundleError, InputError, OutputExistsError
from particleseg.io import write_tiff
from particleseg.models import Head, NetworkConfig, load_bundle, zip_bundle
from particleseg.models.export import check_export, onnx_predictor
from particleseg.pipeline import SegmentParams
from particleseg.postprocess import labels_to_mask
from particleseg.train import (
    balanced_accuracy,
    choose_classifier_threshold,
    interpret_mask,
    train_segmentation,
)

CLASSIFIER = NetworkConfig("unet", 2, (Head("foreground"),), depth=2, base_filters=8)
TINY = dict(depth=2, base_filters=4, tile=32, batch_size=4, validation_steps=1, progress=False, jit_compile=False)


def disk_set(n=6, size=64, seed=0, dim=False):
    """Make ``n`` images of 3-4 separate disks on noise, their label images and keep masks.

    With ``dim``, half of the disks are dim (gray 120), and only the bright ones (220) are kept.
    """
    rng = np.random.default_rng(seed)
    images, labels, keeps = [], [], []
    for _ in range(n):
        disks = []
        while len(disks) < 4:
            cy, cx, r = (int(v) for v in (rng.integers(9, size - 9), rng.integers(9, size - 9), rng.integers(5, 8)))
            if all((cy - y) ** 2 + (cx - x) ** 2 > (r + s + 3) ** 2 for y, x, s in disks):
                disks.append((cy, cx, r))
        img, lab = draw_disks((size, size), disks, seed=int(rng.integers(1 << 30)))
        keep = lab.copy()
        if dim:
            for k in (2, 4):
                img[lab == k] = np.clip(img[lab == k].astype(int) - 100, 0, 255)
                keep[lab == k] = 0
        images.append(img)
        labels.append(lab)
        keeps.append((keep > 0).astype(np.uint8) * 255)
    return images, labels, keeps


def binary_with_lines(labels):
    return (labels_to_mask(labels, connectivity=1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train a UNet with a distance head and the particle classifier on bright and dim disks.

    All disks are annotated; only the bright ones are kept.
    """
    images, labels, keeps = disk_set(8, dim=True)
    out = tmp_path_factory.mktemp("trained") / "disks"
    epochs = []
    bundle = train_segmentation(
        images,
        [binary_with_lines(lab) for lab in labels],
        out,
        arch="unet",
        **{**TINY, "base_filters": 8, "progress": lambda done, total, logs: epochs.append((done, total, logs["loss"]))},
        epochs=8,
        steps_per_epoch=8,
        learning_rate=3e-3,
        keep_masks=keeps,
        classifier_epochs=10,
        classifier_learning_rate=1e-2,
        classifier_network=CLASSIFIER,
        name="disks",
        seed=1,
    )
    return bundle, epochs, (images, labels, keeps)


# --------------------------------------------------------------------------------------------
# training tiles


def test_the_tile_stream_is_endless_and_each_batch_follows_from_its_epoch_and_index():
    """Batch i of a fit is batch i % steps of the epoch numbered start + 1 + i // steps, from its seed alone."""
    from particleseg.train import Augmentation, make_tile_sequence
    from particleseg.train.tiles import WORKERS, tile_batch

    images = [np.random.default_rng(k).random((40 + 8 * k, 48)).astype(np.float32) for k in range(3)]
    targets = [im[..., None] * np.ones(2, np.float32) for im in images]
    steps = 3
    seq = make_tile_sequence(images, targets, 16, 4, steps, Augmentation(), seed=7)
    assert seq.num_batches is None and seq.workers == WORKERS > 1  # Keras' queue, one iterator per fit
    first = [seq[i] for i in range(2 * steps)]
    seq.epoch = 1  # a run resumed after its first epoch
    resumed = [seq[i] for i in range(steps)]
    for a, b in zip(first[steps:], resumed):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    x, y = first[steps + 2]  # the second epoch (numbered 2), batch 2: from its seed alone
    ex, ey = tile_batch(images, targets, 16, 4, Augmentation(), np.random.default_rng([7, 2, 2]))
    assert np.array_equal(x, ex) and np.array_equal(y, ey) and x.shape == (4, 16, 16) and y.shape == (4, 16, 16, 2)
    assert not np.array_equal(first[0][0], first[steps][0])  # another epoch, other tiles
    # validation: the same tiles every epoch, not augmented
    val = make_tile_sequence(images, targets, 16, 4, steps, Augmentation(), seed=8, shuffle=False)
    assert all(np.array_equal(val[i][0], val[i + steps][0]) for i in range(steps))
    vx, _ = tile_batch(images, targets, 16, 4, None, np.random.default_rng([8, 0, 1]))
    assert np.array_equal(val[1][0], vx)


def test_batches_from_worker_processes_come_through_shared_memory_and_equal_the_threads():
    """A GPU's loader: each batch as its seed makes it in this process; the slots freed afterwards."""
    import gc
    from concurrent.futures import ThreadPoolExecutor

    from particleseg.train import Augmentation, make_tile_sequence
    from particleseg.train.tiles import tile_batch

    images = [np.random.default_rng(k).random((40 + 8 * k, 48)).astype(np.float32) for k in range(3)]
    targets = [im[..., None] * np.ones(3, np.float32) for im in images]
    seq = make_tile_sequence(images, targets, 16, 4, 5, Augmentation(), seed=7, processes=2)
    with ThreadPoolExecutor(seq.workers) as threads:  # as Keras' queue calls it
        batches = list(threads.map(seq.__getitem__, range(10)))
    for i, (x, y) in enumerate(batches):
        ex, ey = tile_batch(images, targets, 16, 4, Augmentation(), np.random.default_rng([7, 1 + i // 5, i % 5]))
        assert np.array_equal(x, ex) and np.array_equal(y, ey)
    memory = seq.shared.memory
    assert len(memory) == 2 * 2 * 2 and not any(m.closed for m in memory)  # images, targets; 2 slots a process
    del seq, threads
    gc.collect()
    assert all(m.closed for m in memory)


def test_zoom_shows_the_particles_larger_and_smaller_and_off_draws_the_earlier_tiles():
    """``zoom`` resamples image and target alike by factors within its range; 0 changes no tile."""
    from particleseg.train import Augmentation
    from particleseg.train.tiles import tile_batch

    yy, xx = np.mgrid[0:60, 0:80].astype(np.float32)
    images = [xx + 100 * yy]  # a plane: a tile's slope along x is the factor it was resampled by
    targets = [np.stack([xx, yy], -1)]
    still = Augmentation(flips=False, rot90=False, brightness=0, contrast=0, gamma=0, noise=0)
    # off: the tiles are cut where the draws of a run without the option put them
    rng = np.random.default_rng(3)
    x, y = tile_batch(images, targets, 16, 5, still, np.random.default_rng(3))
    for k in range(5):
        rng.choice(1, p=[1.0])
        y0, x0 = int(rng.integers(0, 60 - 16 + 1)), int(rng.integers(0, 80 - 16 + 1))
        assert np.array_equal(x[k], images[0][y0 : y0 + 16, x0 : x0 + 16])
        assert np.array_equal(y[k], targets[0][y0 : y0 + 16, x0 : x0 + 16])
    # on: each tile is the plane at one factor, image and target alike, within 1/1.5 .. 1.5
    x, y = tile_batch(images, targets, 16, 64, dataclasses.replace(still, zoom=0.5), np.random.default_rng(4))
    slopes = x[:, 8, 9] - x[:, 8, 8]
    assert np.allclose(x[:, 9, 8] - x[:, 8, 8], 100 * slopes, rtol=1e-4)  # the same factor along y
    assert np.allclose(y[..., 0] + 100 * y[..., 1], x, atol=1e-3)  # the target resampled as the image
    assert slopes.min() >= 1 / 1.5 - 0.05 and slopes.max() <= 1.5 + 0.05
    assert slopes.min() < 0.85 and slopes.max() > 1.15  # particles shown smaller and larger


# --------------------------------------------------------------------------------------------
# reading masks


def test_binary_mask_with_separating_lines_gives_one_label_per_particle():
    _, labels, _ = disk_set(1)
    touching = np.zeros((20, 20), np.uint8)
    touching[5:15, 2:9] = 255
    touching[5:15, 10:18] = 255  # one background column between two touching particles
    lab, classes = interpret_mask(touching, "auto", "m.tif")
    assert lab.max() == 2 and classes is None
    assert (lab[5:15, 2:9] == lab[5, 2]).all() and lab[5, 2] != lab[5, 10]


def test_label_image_passes_and_class_image_gives_classes():
    _, labels, _ = disk_set(1)
    lab, _ = interpret_mask(labels[0], "auto")
    assert np.array_equal(lab, labels[0])
    phases = np.zeros((16, 16), np.uint8)
    phases[:, 8:] = 2
    phases[2:6, 2:6] = 1
    lab, classes = interpret_mask(phases, "classes", n_classes=3)
    assert np.array_equal(classes, phases) and lab.max() == 2
    with pytest.raises(InputError, match="p.tif: class value 2 but only 2 classes"):
        interpret_mask(phases, "classes", "p.tif", n_classes=2)


@pytest.mark.parametrize(
    "mask, kind, message",
    [
        (np.array([[0, 0.5], [1, 1]] * 4), "auto", "fractional values"),
        (np.full((8, 8), 255, np.uint8), "auto", "every pixel as particle"),
        (np.arange(64).reshape(8, 8), "binary", "64 distinct values, not a binary mask"),
        (np.array([[3, 7]] * 8), "binary", "no 0 background"),
    ],
)
def test_bad_masks_are_named(mask, kind, message):
    with pytest.raises(InputError, match=f"^m.tif: .*{message}"):
        interpret_mask(mask, kind, "m.tif")


# --------------------------------------------------------------------------------------------
# training


@pytest.mark.slow
def test_loss_falls_and_the_bundle_segments_the_disks(trained):
    bundle, epochs, (images, labels, _) = trained
    assert [e[0] for e in epochs[:8]] == list(range(1, 9)) and epochs[0][1] == 8
    log = bundle.path / "training" / "log.csv"
    rows = log.read_text().splitlines()[1:]
    loss = [float(r.split(",")[2]) for r in rows]
    assert len(loss) == 8 and loss[-1] < 0.6 * loss[0]
    m = bundle.metadata["metrics"]["validation"]
    assert m["foreground_iou"] > 0.6 and m["validation_images"] == 2
    # on a training image, with the classifier off: every disk found
    seg = segment_image(images[0], bundle, SegmentParams(crop_rows=0, exclude_border=False, classifier_threshold=-1))
    assert metrics.instance_iou(seg.labels, labels[0]) > 0.6
    assert (bundle.path / "training" / "loss.png").is_file()


@pytest.mark.slow
def test_bundle_metadata_is_complete_and_round_trips(trained, tmp_path):
    bundle, _, (images, labels, _) = trained
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["network"]["architecture"] == "unet" and [h["kind"] for h in meta["network"]["heads"]] == [
        "foreground",
        "distance",
    ]
    sizes = [np.sqrt(4 * np.bincount(lab.ravel())[1:] / np.pi) for lab in labels]
    assert meta["scale"]["particle_size_px"] == pytest.approx(np.median(np.concatenate(sizes[:8])), rel=0.25)
    assert meta["classes"] == ["background", "particle"]
    assert "training images" in meta["training"]["data"] and meta["training"]["config"]["seed"] == 1
    assert set(meta["metrics"]["validation"]) >= {"foreground_iou", "instance_iou", "pixel_error"}
    assert 0 < meta["postprocess"]["threshold"] < 1 and meta["versions"]["keras"]
    zipped = zip_bundle(bundle.path, tmp_path / "disks.zip")
    again = load_bundle(zipped)
    p = SegmentParams(crop_rows=0, classifier_threshold=-1)
    assert np.array_equal(segment_image(images[1], again, p).labels, segment_image(images[1], bundle, p).labels)


@pytest.mark.slow
def test_classifier_rejects_the_particles_the_expert_did_not_keep(trained):
    bundle, _, (images, labels, keeps) = trained
    assert bundle.has_classifier and 0.05 <= bundle.metadata["classifier"]["threshold"] <= 0.95
    assert bundle.metadata["classifier"]["metrics"]["validation_particle_accuracy"] >= 0.75
    right = total = 0
    for img, _lab, keep in zip(images, labels, keeps):
        seg = segment_image(img, bundle, SegmentParams(crop_rows=0, exclude_border=False))
        t = seg.table
        assert "classifier_score" in t
        for _, row in t.iterrows():
            truth_kept = keep[seg.labels == row["label"]].mean() > 127
            right += (row["kept"] == truth_kept) and (row["kept"] or row["reject_reason"] == "classifier")
            total += 1
    assert total >= 24 and right / total >= 0.85
    # without the classifier nothing is rejected for it
    seg = segment_image(images[0], bundle, SegmentParams(crop_rows=0, exclude_border=False, classifier_threshold=-1))
    assert (seg.table["reject_reason"] != "classifier").all()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["multires-unet", "fcn", "unet"])
def test_each_architecture_trains_from_files_and_segments(arch, tmp_path):
    images, labels, _ = disk_set(3, seed=2)
    (tmp_path / "im").mkdir()
    (tmp_path / "m").mkdir()
    for i, (im, lab) in enumerate(zip(images, labels)):
        write_tiff(tmp_path / "im" / f"a{i}.tif", im)
        write_tiff(tmp_path / "m" / f"a{i}_labels.tif", lab.astype(np.uint16))  # label images
    head = {"multires-unet": "distance", "fcn": None, "unet": "boundary"}[arch]
    b = train_segmentation(
        tmp_path / "im", tmp_path / "m", tmp_path / "b", arch=arch, extra_head=head, **TINY, epochs=1, steps_per_epoch=2
    )
    assert b.network.architecture == arch and b.heads == ["foreground"] + ([head] if head else [])
    assert b.metadata["training"]["mask_kind"] == "auto" and len(b.metadata["training"]["validation_images"]) == 1
    seg = segment_image(images[0], b, SegmentParams(crop_rows=0))
    assert seg.labels.shape == (64, 64) and seg.probabilities.shape[-1] == len(b.heads)


@pytest.mark.slow
def test_multiclass_masks_train_a_classes_head(tmp_path):
    images, labels, _ = disk_set(3, seed=3)
    phases = [np.where(lab == 0, 0, np.where(lab % 2 == 0, 1, 2)).astype(np.uint8) for lab in labels]
    b = train_segmentation(
        images,
        phases,
        tmp_path / "b",
        arch="unet",
        class_names=["matrix", "a", "b"],
        extra_head=None,
        **TINY,
        epochs=1,
        steps_per_epoch=2,
    )
    assert b.heads == ["foreground", "classes"] and b.metadata["classes"] == ["matrix", "a", "b"]
    assert 0 <= b.metadata["metrics"]["validation"]["class_accuracy"] <= 1
    seg = segment_image(images[0], b, SegmentParams(crop_rows=0))
    assert seg.probabilities.shape[-1] == 4
    assert np.allclose(seg.probabilities[..., 1:].sum(-1), 1, atol=1e-4)  # softmax over the classes


@pytest.mark.slow
def test_interrupted_run_resumes_after_the_last_finished_epoch(tmp_path):
    images, labels, _ = disk_set(3, seed=4)
    seen = []

    def stop_after_two(done, total, logs):
        seen.append(done)
        if done == 2:
            raise KeyboardInterrupt

    kw = dict(
        arch="unet",
        extra_head=None,
        **{**TINY, "progress": stop_after_two},
        epochs=3,
        steps_per_epoch=2,
        workdir=tmp_path / "work",
        seed=5,
    )
    with pytest.raises(KeyboardInterrupt):
        train_segmentation(images, labels, tmp_path / "b", **kw)
    assert not (tmp_path / "b").exists()
    assert json.loads((tmp_path / "work" / "segmentation" / "state.json").read_text()) == {"epochs_done": 2}
    b = train_segmentation(images, labels, tmp_path / "b", **kw)
    assert seen == [1, 2, 3]  # the second run trained epoch 3 only
    assert b.metadata["training"]["epochs_run"] == 3
    # other settings in the same work folder are refused, not silently mixed
    (tmp_path / "work" / "segmentation" / "state.json").write_text('{"epochs_done": 1}')
    with pytest.raises(InputError, match="work.*other settings \\(config\\)"):
        train_segmentation(images, labels, tmp_path / "b2", **{**kw, "epochs": 4})


# --------------------------------------------------------------------------------------------
# exports


@pytest.mark.slow
def test_onnx_export_matches_keras_and_runs_the_pipeline(trained, tmp_path, capsys):
    bundle, _, (images, _, _) = trained
    copy = tmp_path / "disks"
    shutil.copytree(bundle.path, copy)
    assert main(["models", "export", str(copy), "--format", "onnx", "--overwrite"]) == 0  # training exported it already
    assert "onnx: " in capsys.readouterr().out
    b = load_bundle(copy)
    entry = b.metadata["exports"]["onnx"]
    assert entry["file"] == "export/model.onnx" and entry["max_abs_diff"] < 1e-4
    predict = onnx_predictor(copy / entry["file"])
    x = np.stack([np.asarray(images[2], np.float32)[..., None] / 255.0] * 2)
    assert check_export(b.model, predict, x) < 1e-4
    p = SegmentParams(crop_rows=0, classifier_threshold=-1)
    a = segment_image(images[2], b, SegmentParams(crop_rows=0, classifier_threshold=-1, engine="keras"))
    o = segment_image(images[2], b, p, predictor=predict)
    assert np.abs(a.probabilities - o.probabilities).max() < 1e-4 and np.array_equal(a.labels, o.labels)
    # a second export needs --overwrite; a wrong runtime is caught by the check
    assert main(["models", "export", str(copy), "--format", "onnx"]) == 1
    assert "export exists; use --overwrite" in capsys.readouterr().err
    with pytest.raises(BundleError, match="differs from Keras by up to"):
        check_export(b.model, lambda batch: predict(batch) + 1e-3, x)


# --------------------------------------------------------------------------------------------
# bad inputs: one line naming the file, before any training


@pytest.fixture
def folders(tmp_path):
    images, labels, _ = disk_set(3, seed=6)
    (tmp_path / "im").mkdir()
    (tmp_path / "m").mkdir()
    for i, (im, lab) in enumerate(zip(images, labels)):
        write_tiff(tmp_path / "im" / f"a{i}.tif", im)
        write_tiff(tmp_path / "m" / f"a{i}_mask.tif", binary_with_lines(lab))
    return tmp_path


def _train(folders, **kw):
    return train_segmentation(
        folders / "im", folders / "m", folders / "out", **{**TINY, "epochs": 1, "steps_per_epoch": 1, **kw}
    )


def test_missing_mask_names_the_image(folders):
    (folders / "m" / "a1_mask.tif").unlink()
    with pytest.raises(InputError, match=r"im/a1.tif: no mask for this image in .*/m \(expected a1.tif"):
        _train(folders)
    assert not (folders / "out.work").exists()


def test_size_mismatch_names_the_mask(folders):
    write_tiff(folders / "m" / "a2_mask.tif", np.zeros((60, 64), np.uint8), overwrite=True)
    with pytest.raises(InputError, match=r"m/a2_mask.tif: mask size 64x60 differs from its image .*a2.tif \(64x64\)"):
        _train(folders)


def test_unreadable_files_are_named(folders):
    (folders / "m" / "a0_mask.tif").write_bytes(b"not a tiff")
    with pytest.raises(InputError, match=r"m/a0_mask.tif: cannot read mask"):
        _train(folders)
    (folders / "im" / "a0.tif").write_bytes(b"II*\x00junk")
    with pytest.raises(InputError, match=r"im/a0.tif: cannot read image"):
        _train(folders)


def test_other_bad_inputs(folders, tmp_path):
    with pytest.raises(InputError, match="unknown architecture"):
        _train(folders, arch="resnet")
    with pytest.raises(InputError, match="smaller than the training tile 128"):
        _train(folders, tile=128)
    img, lab = draw_disks((64, 64), [(30, 30, 8)])
    with pytest.raises(InputError, match=r"too few images for a validation split \(1"):
        train_segmentation([img], [lab], tmp_path / "x", **TINY)
    with pytest.raises(InputError, match=r"2 images but 1 masks"):
        train_segmentation([img, img], [lab], tmp_path / "x", **TINY)
    for f in (folders / "m").iterdir():
        write_tiff(f, np.zeros((64, 64), np.uint8), overwrite=True)
    with pytest.raises(InputError, match="all 3 masks are empty"):
        _train(folders)
    (folders / "out").mkdir()
    with pytest.raises(OutputExistsError, match="out: output exists; use --overwrite"):
        _train(folders)
    # the command line prints one line, no traceback
    assert (
        main(["train", "--images", str(folders / "im"), "--masks", str(folders / "nope"), "--out", str(tmp_path / "o")])
        == 1
    )


@pytest.mark.slow
def test_train_command_writes_a_bundle_segment_uses(folders, capsys):
    rc = main(
        [
            "train",
            "--images",
            str(folders / "im"),
            "--masks",
            str(folders / "m"),
            "--out",
            str(folders / "b"),
            "--arch",
            "unet",
            "--depth",
            "2",
            "--base-filters",
            "4",
            "--tile",
            "32",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--steps",
            "2",
            "--quiet",
            "--zip",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "wrote" in out and "validation: foreground IoU" in out
    assert (folders / "b.zip").is_file() and (folders / "b" / "bundle.json").is_file()
    assert (
        main(
            [
                "segment",
                str(folders / "im" / "a0.tif"),
                "--out",
                str(folders / "seg"),
                "--model",
                str(folders / "b.zip"),
                "--crop-rows",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    assert (folders / "seg" / "a0_labels.tif").is_file()


def test_classifier_threshold_is_the_best_separation_of_the_validation_particles():
    kept = np.array([True, True, True, False])
    # keeping all: rate 1 for the kept, 0 for the discarded
    assert balanced_accuracy(np.ones(4, bool), kept) == pytest.approx(0.5)
    assert balanced_accuracy(np.array([True, True, False, False]), kept) == pytest.approx((2 / 3 + 1) / 2)
    # scores all above 0.5 but ranked right: the threshold goes between 0.80 and 0.90
    scores = np.array([0.95, 0.92, 0.91, 0.80])
    t = choose_classifier_threshold(scores, kept)
    assert 0.80 < t <= 0.91 and balanced_accuracy(scores >= t, kept) == 1.0
    # among equally good thresholds the one nearest 0.5; one class only: 0.5
    assert choose_classifier_threshold(np.array([0.9, 0.1]), np.array([True, False])) == 0.5
    assert choose_classifier_threshold(np.array([0.9, 0.8]), np.array([True, True])) == 0.5
