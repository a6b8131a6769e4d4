"""Fine-tuning, the default way to train: base model, schedule, best epoch, budget, resuming.

The base model chosen, the schedule (cosine learning rate, encoder frozen for a warm-up), the
best epoch chosen by the validation instance score, the time budget, resuming, and the bad
inputs refused before training starts.

Tiny networks on 64x64 disks (as tests/train/test_train.py), except one short run from the shipped
default model.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from test_train import disk_set

from conftest import draw_disks
from particleseg.cli import main
from particleseg.errors import InputError, ParticlesegWarning
from particleseg.io import write_tiff
from particleseg.models import Head, NetworkConfig, build_network
from particleseg.postprocess import particle_scores
from particleseg.train import (
    TrainConfig,
    TrainingItem,
    choose_min_score,
    choose_postprocess,
    epoch_score,
    fit,
    instance_score,
    learning_rate_schedule,
    min_area_choices,
    normalized_distance,
    set_encoder_trainable,
    train_segmentation,
    training_polarity,
    validation_scores,
)
from particleseg.train.loop import _read_log, _Replan, plan_epochs
from particleseg.train.scores import _Candidates, _filtered
from particleseg.train.segmentation import _choose_base

NET = NetworkConfig("unet", 1, (Head("foreground"), Head("distance")), depth=2, base_filters=4)


def _config(**kw):
    return TrainConfig(
        **{
            **dict(
                network=NET,
                tile=32,
                batch_size=4,
                epochs=4,
                steps_per_epoch=2,
                validation_steps=1,
                schedule="cosine",
                freeze_epochs=1,
                select="val_score",
                patience=0,
                seed=3,
                jit_compile=False,
            ),
            **kw,
        }
    )


def _score(images, labels):
    """Make the validation instance score of a model, as train_segmentation's epoch_score makes it."""
    items = [TrainingItem(f"v{i}", im, lab) for i, (im, lab) in enumerate(zip(images, labels))]
    return epoch_score(items, NET, {"threshold": 0.5, "seed_threshold": 0.5, "min_area": 5}, tile=64, overlap=8)


def _data(seed=0):
    images, labels, _ = disk_set(4, seed=seed)
    norm = [(im.astype(np.float32)[..., None] - 40) / 160 for im in images]
    return norm, labels


# --------------------------------------------------------------------------------------------
# the pieces


def test_base_model_choice():
    assert _choose_base("auto", {}, None, "auto") == "default"
    assert _choose_base("auto", {"arch": "unet"}, None, "auto") is None  # a network option: a new network
    assert _choose_base("auto", {}, ["bg", "a", "b"], "auto") is None  # multi-class masks
    assert _choose_base("none", {}, None, "auto") is None and _choose_base(None, {}, None, "auto") is None
    assert _choose_base("my/bundle", {}, None, "auto") == "my/bundle"
    with pytest.raises(InputError, match="--arch unet: network options apply to a new network.*--base-model none"):
        _choose_base("default", {"arch": "unet"}, None, "auto")


def test_polarity_of_the_training_images_comes_from_the_masks():
    images, labels, _ = disk_set(2, seed=3)
    items = [TrainingItem("a", im.astype(np.float32)[..., None], lab) for im, lab in zip(images, labels)]
    assert training_polarity(items) == "bright"
    items = [TrainingItem("a", 255 - im.astype(np.float32)[..., None], lab) for im, lab in zip(images, labels)]
    assert training_polarity(items) == "dark"


def test_cosine_schedule_runs_from_the_learning_rate_to_its_floor():
    lr = learning_rate_schedule(_config(epochs=11, learning_rate=1e-3, min_lr_factor=0.01))
    values = [lr(e) for e in range(11)]
    assert values[0] == pytest.approx(1e-3) and values[-1] == pytest.approx(1e-5)
    assert values[5] == pytest.approx(0.5 * (1e-3 + 1e-5))
    assert all(a > b for a, b in zip(values, values[1:]))
    with pytest.raises(InputError, match="warm: unknown learning-rate schedule"):
        learning_rate_schedule(_config(schedule="warm"))


def test_freezing_the_encoder_leaves_the_decoder_and_heads_trainable():
    for arch in ("unet", "multires-unet"):
        model = build_network(NetworkConfig(arch, 1, (Head("foreground"),), depth=2, base_filters=4))
        n_all = len(model.trainable_weights)
        changed = set_encoder_trainable(model, False)
        frozen = [layer.name for layer in model.layers if layer.weights and not layer.trainable]
        assert changed == len(frozen) > 0
        assert all(not n.startswith(("dec", "mres_dec", "up", "head")) for n in frozen)
        assert any(layer.trainable and layer.weights for layer in model.layers if layer.name.startswith("head"))
        assert 0 < len(model.trainable_weights) < n_all
        set_encoder_trainable(model, True)
        assert len(model.trainable_weights) == n_all


def test_the_best_epoch_is_the_one_with_the_best_validation_score(tmp_path):
    images, labels = _data()
    score = _score(images[3:], labels[3:])
    model, log = fit(
        images[:3], labels[:3], images[3:], labels[3:], _config(learning_rate=1e-2), tmp_path, verbose=0, score=score
    )
    assert [round(r["epoch"]) for r in log] == [0, 1, 2, 3] and all("val_score" in r for r in log)
    # the returned weights are those of the best-scoring epoch (not the last, not the lowest loss)
    assert score(model) == pytest.approx(max(r["val_score"] for r in log), abs=1e-9)
    # the cosine schedule from the first to the last epoch
    rates = [r["learning_rate"] for r in log]
    assert rates[0] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-4) and rates == sorted(rates, reverse=True)
    assert json.loads((tmp_path / "plan.json").read_text())["freeze_epochs"] == 1


def test_the_best_epoch_is_chosen_only_after_the_selection_starts(tmp_path):
    """``select_from=0.5`` of 4 epochs: epochs 0 and 1 are logged but never chosen.

    A score that falls from epoch to epoch would make epoch 0 the best; with the selection from
    the plan's second half the returned weights are epoch 2's, which a callback recorded.
    """
    import keras

    images, labels = _data(4)
    values = iter([0.9, 0.8, 0.5, 0.4])
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = [w.copy() for w in self.model.get_weights()]

    model, log = fit(
        images[:3],
        labels[:3],
        images[3:],
        labels[3:],
        _config(select_from=0.5),
        tmp_path,
        verbose=0,
        score=lambda m: next(values),
        callbacks=[Record()],
    )
    assert [r["val_score"] for r in log] == pytest.approx([0.9, 0.8, 0.5, 0.4])
    for a, b in zip(model.get_weights(), seen[2]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), seen[0]))


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(select_from=1.0), "--select-from 1: must be at least 0 and below 1"),
        (dict(select_from=-0.1), "--select-from -0.1: must be at least 0 and below 1"),
        (dict(separation_weight=-1.0), "--separation-weight -1: must be 0"),
        (dict(ema=1.0), "--ema 1: the momentum must be at least 0 \\(off\\) and below 1"),
        (dict(select="val_f1"), "val_f1: unknown selection metric"),
        (dict(schedule="linear"), "linear: unknown learning-rate schedule"),
    ],
)
def test_fit_refuses_settings_it_cannot_run_before_any_work(tmp_path, kw, message):
    """The loop itself checks its settings (direct callers of ``fit`` too), and writes nothing."""
    images, labels = _data(4)
    with pytest.raises(InputError, match=message):
        fit(images[:3], labels[:3], images[3:], labels[3:], _config(**kw), tmp_path / "w", score=lambda m: 0.0)
    assert not (tmp_path / "w").exists()


def test_under_a_time_budget_training_never_stops_early_and_chooses_from_the_second_half(tmp_path):
    images, labels, _ = disk_set(4, size=64, seed=9)
    net = dict(base_model="none", depth=2, base_filters=4, tile=32, batch_size=2, steps_per_epoch=2, validation_steps=1)
    with pytest.raises(InputError, match="--select-from 1: must be at least 0 and below 1"):
        train_segmentation(images, labels, tmp_path / "a", select_from=1, progress=False, **net)
    bundle = train_segmentation(
        images, labels, tmp_path / "b", minutes=1.1, select="val_score", progress=False, jit_compile=False, **net
    )
    cfg = bundle.metadata["training"]["config"]
    assert (cfg["patience"], cfg["select_from"]) == (0, 0.5)
    # without a budget: early stopping as before, any epoch may be chosen
    bundle = train_segmentation(images, labels, tmp_path / "c", epochs=2, progress=False, jit_compile=False, **net)
    cfg = bundle.metadata["training"]["config"]
    assert (cfg["patience"], cfg["select_from"]) == (15, 0.0)


def test_the_average_of_the_weights_is_validated_chosen_and_returned(tmp_path):
    """``ema``: after every batch average = m * average + (1 - m) * weights, from the start weights.

    The average, recomputed here from the weights after each batch, is what the score sees
    and what the run returns (its best epoch, the last here), while the run's checkpoint keeps
    the weights being trained; those are scored too, first, as ``val_score_trained``.
    """
    import keras

    images, labels = _data(2)
    start = [w.copy() for w in build_network(NET).get_weights()]
    m = np.float32(0.8)
    average = [w.copy() for w in start]
    scored, trained = [], {}

    class Record(keras.callbacks.Callback):  # after the run's callbacks: sees the trained weights
        def on_train_batch_end(self, batch, logs=None):
            for a, w in zip(average, self.model.get_weights()):
                a *= m
                a += (1 - m) * w

        def on_epoch_end(self, epoch, logs=None):
            trained[epoch] = self.model.get_weights()

    def score(model):
        scored.append(model.get_weights())
        return float(len(scored))  # each epoch better than the last

    model, log = fit(
        images[:3],
        labels[:3],
        images[3:],
        labels[3:],
        _config(ema=0.8, learning_rate=1e-2),
        tmp_path,
        verbose=0,
        score=score,
        initial_weights=start,
        callbacks=[Record()],
    )
    assert len(scored) == 8  # each epoch: the trained weights, then the average
    assert [(r["val_score_trained"], r["val_score"]) for r in log] == [(1, 2), (3, 4), (5, 6), (7, 8)]
    for a, s, b in zip(average, scored[-1], model.get_weights()):
        np.testing.assert_allclose(s, a, rtol=1e-6, atol=1e-7)  # the score saw the average
        np.testing.assert_array_equal(b, s)  # the run returns what was scored best
    for s, t in zip(scored[-2], trained[3]):
        np.testing.assert_array_equal(s, t)
    assert any(not np.allclose(s, t) for s, t in zip(scored[-1], trained[3]))  # not the trained weights
    saved = keras.saving.load_model(tmp_path / "checkpoint.keras", compile=False).get_weights()
    for a, b in zip(saved, trained[3]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resumed_fine_tuning_equals_the_uninterrupted_run(tmp_path, ema):
    """Interrupted after the frozen warm-up and again in the second phase.

    The resumed run ends with the uninterrupted run's weights and log (with the average of
    the weights too: it resumes from the one saved with the checkpoint).
    """
    import keras  # keras: only for the tests that build networks (lazy, docs/architecture.md)

    images, labels = _data(1)
    score = _score(images[3:], labels[3:])
    cfg = _config(ema=ema)
    start = [
        w.copy() for w in __import__("particleseg.models", fromlist=["build_network"]).build_network(NET).get_weights()
    ]
    whole, log_whole = fit(
        images[:3],
        labels[:3],
        images[3:],
        labels[3:],
        cfg,
        tmp_path / "a",
        verbose=0,
        score=score,
        initial_weights=start,
    )

    class Stop(keras.callbacks.Callback):
        def __init__(self, at):
            super().__init__()
            self.at = at

        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == self.at:
                raise KeyboardInterrupt

    for at in (1, 3):
        with pytest.raises(KeyboardInterrupt):
            fit(
                images[:3],
                labels[:3],
                images[3:],
                labels[3:],
                cfg,
                tmp_path / "b",
                verbose=0,
                score=score,
                initial_weights=start,
                callbacks=[Stop(at)],
            )
        assert json.loads((tmp_path / "b" / "state.json").read_text()) == {"epochs_done": at}
    resumed, log_resumed = fit(
        images[:3],
        labels[:3],
        images[3:],
        labels[3:],
        cfg,
        tmp_path / "b",
        verbose=0,
        score=score,
        initial_weights=start,
    )
    assert [r["epoch"] for r in log_resumed] == [r["epoch"] for r in log_whole]
    for a, b in zip(log_whole, log_resumed):
        assert a["val_score"] == pytest.approx(b["val_score"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_worker_processes_train_the_same_network_as_the_threads(tmp_path):
    """``loader_processes`` (a GPU's loader) makes the same targets and batches: the same run."""
    images, labels = _data(4)
    runs = {}
    for processes in (0, 2):
        cfg = _config(epochs=2, separation_weight=10.0, loader_processes=processes)
        start = build_network(NET).get_weights() if not runs else runs[0][2]
        model, log = fit(
            images[:3],
            labels[:3],
            images[3:],
            labels[3:],
            cfg,
            tmp_path / str(processes),
            verbose=0,
            score=lambda m: 0.0,
            initial_weights=start,
        )
        runs[processes] = (model.get_weights(), log, start)
    assert [r["loss"] for r in runs[2][1]] == pytest.approx([r["loss"] for r in runs[0][1]], rel=1e-5)
    for a, b in zip(runs[0][0], runs[2][0]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(runs[0][0], runs[0][2]))  # it trained
    with pytest.raises(InputError, match="--loader-processes -1: must be 0"):
        fit(images[:3], labels[:3], images[3:], labels[3:], _config(loader_processes=-1), tmp_path / "n")


def test_worker_processes_need_a_system_that_forks(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])  # as on Windows
    with pytest.raises(InputError, match="--loader-processes 2: needs a system that forks"):
        _config(loader_processes=2).check()
    _config(loader_processes=0).check()  # the threads need no fork


def test_a_time_budget_plans_the_epochs(tmp_path):
    images, labels = _data(2)
    cfg = _config(epochs=999, select="val_loss", freeze_epochs=-1)
    with pytest.warns(ParticlesegWarning, match="the time budget holds") as said:
        _, log = fit(images[:3], labels[:3], images[3:], labels[3:], cfg, tmp_path, verbose=0, minutes=0.25)
    plan = json.loads((tmp_path / "plan.json").read_text())
    # the user hears, when the plan is made, that the budget holds fewer epochs than the run's 999
    notes = [str(w.message) for w in said if w.category is ParticlesegWarning]
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"{tmp_path}: the time budget holds {plan['planned_epochs']} epochs of ")
    assert "fewer than the 999 the run is set for" in notes[0]
    assert plan["minutes"] == 0.25 and plan["first_epoch_seconds"] > 0 and plan["epoch_seconds"] > 0
    assert 2 <= plan["epochs"] < 999 and len(log) == plan["epochs"]
    # the warm-up is a tenth of the first plan, which a plan shortened on a busy machine, or grown
    # when the full epochs turn out faster than the first plan assumed, keeps
    first = plan["planned_epochs"]
    assert plan["freeze_epochs"] == min(first - 1, max(1, round(0.1 * first)))
    assert plan["seconds_done"] >= plan["first_epoch_seconds"]


# --------------------------------------------------------------------------------------------
# train_segmentation and the command line


def test_fine_tuning_the_default_model_records_its_recipe(tmp_path):
    images, labels, _ = disk_set(4, size=128, seed=7)
    dark = [255 - im for im in images]  # dark particles (TEM): the bright-particle base sees them inverted
    lines = []
    bundle = train_segmentation(
        dark,
        labels,
        tmp_path / "ft",
        tile=64,
        batch_size=2,
        epochs=2,
        steps_per_epoch=2,
        validation_steps=1,
        progress=lambda d, t, logs: lines.append(logs),
        jit_compile=False,
    )
    train = bundle.metadata["training"]
    assert train["base_model"].endswith("default")
    assert (train["image_polarity"], train["inverted"], bundle.metadata["input"]["polarity"]) == (
        "dark",
        True,
        "bright",
    )
    cfg = train["config"]
    assert (cfg["schedule"], cfg["select"], cfg["dice"], cfg["learning_rate"]) == ("cosine", "val_score", True, 5e-4)
    assert cfg["separation_weight"] == 10  # the U-Net border weights, on when fine-tuning
    assert bundle.network == __import__("particleseg.models", fromlist=["load_bundle"]).load_bundle("default").network
    assert all("val_score" in logs for logs in lines) and len(lines) == 2
    m = bundle.metadata["metrics"]["validation"]
    assert {"instance_iou", "instance_iou_pred", "f1_iou50", "score", "best_val_score"} <= set(m)
    # a specialist: no automatic resampling range copied from the generalist base
    assert not bundle.metadata["scale"].get("particle_size_range_px")


def test_a_budget_without_room_for_the_choice_after_training_is_refused(tmp_path, monkeypatch):
    """Two epochs fit, but not the post-processing choice after them: refused before training.

    The machine's cost is fixed here (an epoch 1 min, a validation score 0.1 min), so the
    arithmetic is the check's own: 2 x (1 + 0.1) + 20 x 0.1 = 4.2 min and a minute for the
    bundle, rounded up: at least 6 min.
    """
    from particleseg.train import segmentation

    monkeypatch.setattr(segmentation, "_estimate_minutes", lambda *a: (1.0, 0.1))
    images, labels, _ = disk_set(3, size=64, seed=8)
    too_short = r"--minutes 4 is too short: .*choice after training about 2\.0 min; give at least 6 min"
    with pytest.raises(InputError, match=too_short):
        train_segmentation(images, labels, tmp_path / "a", base_model="default", tile=32, minutes=4, progress=False)
    assert not (tmp_path / "a").exists()


def test_bad_fine_tuning_inputs_are_refused_before_training(tmp_path):
    images, labels, _ = disk_set(3, size=64, seed=8)
    two = [np.stack([im, im], -1) for im in images]  # (Y, X, C) two-channel images
    with pytest.raises(InputError, match="has 2 channel\\(s\\) but the base model default takes 1.*--base-model none"):
        train_segmentation(two, labels, tmp_path / "a", base_model="default", tile=32, progress=False)
    with pytest.raises(InputError, match="default: has no classes head.*--base-model none"):
        train_segmentation(
            images,
            [(lab > 0).astype(np.uint8) + (lab > 2) for lab in labels],
            tmp_path / "b",
            base_model="default",
            mask_kind="classes",
            class_names=["bg", "a", "b"],
            tile=32,
            progress=False,
        )
    with pytest.raises(InputError, match="--minutes 0.01 is too short: one epoch of 50 batches"):
        train_segmentation(images, labels, tmp_path / "c", tile=32, steps_per_epoch=50, minutes=0.01, progress=False)
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c"))
    # the command line: one line, exit 1, no training
    (tmp_path / "im").mkdir()
    (tmp_path / "m").mkdir()
    for i, (im, lab) in enumerate(zip(images, labels)):
        write_tiff(tmp_path / "im" / f"a{i}.tif", im)
        write_tiff(tmp_path / "m" / f"a{i}.tif", lab.astype(np.uint16))
    assert (
        main(
            [
                "train",
                "--images",
                str(tmp_path / "im"),
                "--masks",
                str(tmp_path / "m"),
                "--out",
                str(tmp_path / "o"),
                "--base-model",
                "default",
                "--arch",
                "unet",
                "--quiet",
            ]
        )
        == 1
    )
    assert not (tmp_path / "o").exists()


def test_validation_chooses_the_minimum_confidence_that_drops_a_faint_false_particle():
    """Validation chooses the minimum confidence that drops a faint false particle.

    Two disks the network is sure of (0.99 inside, 0.85 on a two-pixel rim, so a threshold of
    0.9 would shrink them) and a faint false blob (0.85): only a minimum confidence of 0.9 on a
    threshold below 0.85 gives both disks whole and no false particle.
    """
    yy, xx = np.mgrid[:96, :96]
    truth = np.zeros((96, 96), np.int32)
    fg = np.zeros((96, 96), np.float32)
    for k, (cy, cx) in enumerate([(30, 30), (60, 64)], 1):
        r = np.hypot(yy - cy, xx - cx)
        truth[r < 12] = k
        fg[r < 12] = 0.99
        fg[(r >= 10) & (r < 12)] = 0.85
    fg[(yy - 80) ** 2 + (xx - 15) ** 2 < 36] = 0.85  # the false blob
    prob = np.stack([fg, normalized_distance(truth)], -1)
    post, scores = validation_scores([prob], [truth], ["foreground", "distance"], min_area=5)
    assert post["min_confidence"] == 0.9 and post["threshold"] < 0.85
    assert scores["score"] == 1.0 and scores["particles_found"] == 2 == scores["particles_annotated"]
    # without the choice, the blob stays
    post0, scores0 = validation_scores([prob], [truth], ["foreground", "distance"], min_area=5, min_confidences=(0.0,))
    assert scores0["score"] < 1.0


def test_validation_chooses_the_smallest_area_that_drops_confident_fragments():
    """Validation chooses, among ``min_areas``, the smallest particle area that drops fragments.

    Two disks (about 450 pixels each, TiO2's size) and three confident specks of 21 pixels
    beside them, as a network leaves at particle borders: no threshold or confidence removes
    the specks, the smallest area of 30 does (45 would too; the smaller is kept). Without
    ``min_areas`` the area stays ``min_area``.
    """
    yy, xx = np.mgrid[:96, :96]
    truth = np.zeros((96, 96), np.int32)
    for k, (cy, cx) in enumerate([(30, 30), (60, 64)], 1):
        truth[np.hypot(yy - cy, xx - cx) < 12] = k
    fg = (truth > 0).astype(np.float32) * 0.99
    for cy, cx in [(80, 15), (10, 80), (85, 85)]:
        fg[np.hypot(yy - cy, xx - cx) < 2.6] = 0.99  # 21 pixels each
    prob = np.stack([fg, normalized_distance(truth)], -1)
    heads = ["foreground", "distance"]
    assert min_area_choices(24.0) == (15, 30, 45)
    post, scores = validation_scores([prob], [truth], heads, min_area=15, min_areas=min_area_choices(24.0))
    assert post["min_area"] == 30 and scores["score"] == 1.0 and scores["particles_found"] == 2
    post0, scores0 = validation_scores([prob], [truth], heads, min_area=15)
    assert post0["min_area"] == 15 and scores0["particles_found"] == 5 and scores0["instance_iou_pred"] < 0.5


def test_scores_of_removed_particles_are_those_of_the_filtered_image():
    """The grid scores every removal from one overlap table: the same numbers as the filtered image.

    Proposals with fragments, a false blob, a merge and specks; every smallest area and
    minimum confidence (everything removed, nothing removed), an empty truth and an empty
    proposal: the score from the table equals :func:`instance_score` of the image
    :func:`validation_scores` keeps, to the last bit, so the choices are the same.
    """
    rng = np.random.default_rng(5)
    truth = draw_disks((80, 96), [(20, 20, 9), (20, 50, 7), (55, 30, 11), (60, 70, 8), (40, 85, 4)])[1]
    pred = truth.copy()
    pred[(truth == 3) & (np.arange(96)[None, :] >= 30)] = 7  # a particle in two pieces
    pred[(truth == 1) | (truth == 2)] = 1  # two particles merged (they do not touch: one label)
    pred[70:74, 5:9] = 9  # a speck
    pred[2:14, 70:84] = 12  # a false blob
    pred[truth == 5] = 0  # a missed particle
    fg = np.clip(0.5 + 0.5 * rng.random(pred.shape), 0, 1).astype(np.float32)
    fg[pred == 12] = 0.55
    cases = [(truth, pred), (np.zeros_like(truth), pred), (truth, np.zeros_like(pred)), (truth * 0, pred * 0)]
    # the particles' own areas and confidences too: a removal at the limit is decided alike
    areas = (0, 10, 30, 80, 1000, *np.bincount(pred.ravel())[[9, 12]])
    confidences = (0.0, 0.5, 0.7, 0.8, 0.99, *particle_scores(pred, fg)[1][:3])
    for t, p in cases:
        cand = _Candidates(p, t, fg)
        for area in areas:
            for mc in confidences:
                assert cand.score(area, mc) == instance_score(_filtered(p, fg, area, mc), t), (area, mc)


def test_validation_merges_the_pieces_of_a_particle_the_network_saw_no_gap_in():
    """Validation chooses a merge level when the seeds cut a particle the foreground does not.

    An elongated particle whose predicted distance map has two peaks with nothing between them
    (as if it were two particles), the foreground probability 0.99 across; and two touching
    disks with the probability at 0.8 on the line between them. No seed level or depth keeps the
    long particle whole, a merge level above 0.8 does and keeps the disks apart. Without merge
    levels it stays in two pieces.
    """
    yy, xx = np.mgrid[:64, :112]
    truth = np.zeros((64, 112), np.int32)
    halves = np.zeros_like(truth)
    for k, cx in enumerate((18, 36), 1):
        disc = np.hypot(yy - 20, xx - cx) < 10
        truth[disc] = 1
        halves[disc & (halves == 0)] = k
    truth[np.hypot(yy - 44, xx - 70) < 11] = 2
    truth[(np.hypot(yy - 44, xx - 91) < 11) & (truth == 0)] = 3
    fg = (truth > 0).astype(np.float32) * 0.99
    fg[(truth == 2) & ((np.roll(truth, -1, 1) == 3) | (np.roll(truth, -1, 0) == 3) | (np.roll(truth, 1, 0) == 3))] = 0.8
    fg[(truth == 3) & ((np.roll(truth, 1, 1) == 2) | (np.roll(truth, -1, 0) == 2) | (np.roll(truth, 1, 0) == 2))] = 0.8
    dist = np.where(truth == 1, normalized_distance(halves), normalized_distance(truth))
    prob = np.stack([fg, dist], -1)
    heads = ["foreground", "distance"]
    post, scores = validation_scores([prob], [truth], heads, min_area=5, thresholds=(0.5,))
    assert post["merge_level"] >= 0.9 and scores["particles_found"] == 3 == scores["particles_annotated"]
    assert scores["score"] > 0.95
    post0, scores0 = validation_scores([prob], [truth], heads, min_area=5, thresholds=(0.5,), merge_levels=())
    assert post0["merge_level"] == 0 and scores0["particles_found"] == 4 and scores0["score"] < scores["score"]


def test_validation_chooses_seeds_from_peaks_for_a_small_particle_with_a_low_peak():
    """Validation chooses a seed depth when a small particle's distance peak is low.

    A large and a small disk touching; the network's distance map peaks at 1 in the large one
    and at only 0.3 in the small one (a network unsure of small particles). Every seed level of
    the first step (0.3 and up) leaves the small one without a seed, merged into the large one;
    the peaks of the second step separate them.
    """
    yy, xx = np.mgrid[:64, :96]
    truth = np.zeros((64, 96), np.int32)
    truth[np.hypot(yy - 32, xx - 30) < 16] = 1
    truth[(np.hypot(yy - 32, xx - 53) < 8) & (truth == 0)] = 2
    fg = (truth > 0).astype(np.float32) * 0.99
    dist = normalized_distance(truth)
    dist[truth == 2] *= 0.3
    prob = np.stack([fg, dist], -1)
    post, scores = validation_scores([prob], [truth], ["foreground", "distance"], min_area=5)
    assert post["seed_depth"] > 0 and post["seed_threshold"] < 0.3
    assert scores["particles_found"] == 2 == scores["particles_annotated"] and scores["score"] > 0.9
    post0, scores0 = validation_scores([prob], [truth], ["foreground", "distance"], min_area=5, seed_depths=())
    assert post0["seed_depth"] == 0 and scores0["particles_found"] == 1


def test_train_chooses_test_time_augmentation_when_it_scores_better_on_the_held_out_images():
    """A "network" that sees a ghost particle along its input's left side.

    Its particles are certain only to 0.65, its ghost to 0.7, so no threshold keeps the one
    without the other. Averaged over the 8 orientations, the ghost falls to 0.175 along each side
    and the first threshold (0.2) leaves the two particles alone: the augmentation is chosen.
    A network that sees every orientation alike ties, and the tie goes to the augmentation.
    """
    from skimage.measure import label

    _, truth = draw_disks((96, 96), [(40, 40, 12), (60, 70, 10)])
    image = (truth > 0).astype(np.float32)

    def ghost(batch):
        fg = 0.65 * batch[..., 0]
        fg[:, :, :6] += 0.7
        dist = np.stack([normalized_distance(label(b[..., 0] > 0)) for b in batch])
        return np.stack([fg, dist], -1)

    post, scores, probs = choose_postprocess(ghost, [image], [truth], ["foreground", "distance"], 96, 0, 16)
    assert post["augment"] is True
    assert scores["score_augmented"] == scores["score"] == 1.0 > scores["score_plain"]
    assert probs[0][6:-6, :6, 0].max() == pytest.approx(0.175)  # (0.35 in the corners, two sides)
    assert scores["particles_found"] == 2 == scores["particles_annotated"]

    def symmetric(batch):
        return np.stack([0.9 * batch[..., 0], 0.5 * batch[..., 0]], -1)

    post, scores, _ = choose_postprocess(symmetric, [image], [truth], ["foreground", "distance"], 96, 0, 16)
    assert post["augment"] is True and scores["score_plain"] == scores["score_augmented"]


def test_the_classifier_threshold_is_chosen_by_the_size_distribution_of_the_kept_particles():
    """The chosen classifier threshold keeps exactly the large disks the expert kept.

    Three large bright disks the expert kept and three small dim ones he did not; a
    "classifier" that scores a particle by its brightness: the chosen threshold keeps exactly
    the large disks (KS distance 0), where keeping every particle would not.
    """
    import keras  # keras: only for the tests that build networks (lazy, docs/architecture.md)

    yy, xx = np.mgrid[:128, :128]
    truth = np.zeros((128, 128), np.int32)
    image = np.zeros((128, 128), np.float32)
    for k, (cy, cx, r, v) in enumerate(
        [
            (25, 25, 11, 1.0),
            (25, 80, 10, 1.0),
            (80, 30, 12, 1.0),
            (85, 90, 5, 0.3),
            (105, 60, 4, 0.3),
            (55, 55, 5, 0.3),
        ],
        1,
    ):
        disk = np.hypot(yy - cy, xx - cx) < r
        truth[disk], image[disk] = k, v
    keep = np.where(image == 1.0, truth, 0)
    prob = np.stack([(truth > 0).astype(np.float32), normalized_distance(truth)], -1)
    inp = keras.Input((None, None, 2))
    brightness = keras.Model(inp, keras.layers.Lambda(lambda x: x[..., :1])(inp))
    net = NetworkConfig("unet", 1, (Head("foreground"), Head("distance")), depth=2, base_filters=4)
    item = TrainingItem("disks", image[..., None], truth, keep=keep)
    post = {"threshold": 0.5, "seed_threshold": 0.5, "min_area": 5, "min_confidence": 0.0}
    t, table = choose_min_score(brightness, net, [prob], [item], post, tile=128, classifier_multiple_of=1)
    assert 0.3 < t <= 1.0 and table["ks_and_kept"][f"{t:g}"] == [0.0, 3]
    assert table["ks_and_kept"]["0"][0] > 0 and table["ks_and_kept"]["0"][1] == 6 and table["expert_particles"] == 3


def test_a_slower_machine_shortens_the_plan(tmp_path):
    """The budget is kept when epochs get slower.

    After an epoch that took 20 s with 50 of 60 seconds used, no further epoch fits, so the plan
    ends there and training stops.
    """
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"epochs": 10, "freeze_epochs": 1, "minutes": 1.0, "seconds_done": 30.0}))
    cb = _Replan(plan)
    cb.set_model(build_network(NET))
    cb.model.stop_training = False
    cb.t = time.time() - 4.9  # a 5-second epoch: 35 of 60 s used, 5 more epochs fit
    cb.on_epoch_end(1)
    state = json.loads(plan.read_text())
    assert state["epochs"] == 7 and state["shortened"] and not cb.model.stop_training
    cb.t = time.time() - 20  # then a 20-second epoch: 55 s used, none fits
    cb.on_epoch_end(2)
    state = json.loads(plan.read_text())
    assert state["epochs"] == 3 and cb.model.stop_training and state["seconds_done"] == pytest.approx(55, abs=0.5)


def test_the_work_after_training_is_kept_out_of_the_budget(tmp_path):
    """``reserve_scores`` times the median score call is kept for the caller's work after training.

    60 s, 35 used after a 5-second epoch: 5 more would fit; with score calls of 8, 2 and 2 s (the
    first builds the predictor) and 5 of them reserved, 10 s are kept and 3 fit.
    """
    plan = tmp_path / "plan.json"

    def after_a_5_second_epoch(*args, **kw) -> dict:
        plan.write_text(json.dumps({"epochs": 10, "freeze_epochs": 1, "minutes": 1.0, "seconds_done": 30.0}))
        cb = _Replan(plan, *args, **kw)
        cb.set_model(build_network(NET))
        cb.model.stop_training = False
        cb.t = time.time() - 4.95
        cb.on_epoch_end(1)
        return json.loads(plan.read_text())

    state = after_a_5_second_epoch([8.0, 2.0, 2.0], reserve_scores=5)
    assert state["reserved_seconds"] == 10.0 and state["epochs"] == 2 + 3
    # without score calls (the best epoch by the validation loss) the reserve is given in seconds
    state = after_a_5_second_epoch([], reserve_scores=5, reserve_seconds=10.0)
    assert state["reserved_seconds"] == 10.0 and state["epochs"] == 2 + 3


def test_an_epoch_counts_its_score_against_the_budget(tmp_path):
    """The validation score after each epoch (here 0.4 s) is part of the epoch's time in the plan."""
    images, labels = _data(2)
    cfg = _config(epochs=999, select="val_score", freeze_epochs=0)

    def slow_score(model):
        time.sleep(0.4)
        return 0.5

    _, log = fit(
        images[:3],
        labels[:3],
        images[3:],
        labels[3:],
        cfg,
        tmp_path,
        verbose=0,
        minutes=0.2,
        score=slow_score,
        reserve_scores=3,
    )
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert len(log) == plan["epochs"] >= 2
    assert plan["seconds_done"] >= 0.4 * len(log) and min(plan["recent_epoch_seconds"]) >= 0.4
    assert plan["reserved_seconds"] >= 1.2 - 0.05  # (rounded to 0.1 s)


def test_a_run_without_scores_keeps_its_reserve_in_seconds(tmp_path):
    """The caller's estimate of the work after training is kept out of the budget from the first plan on.

    With the best epoch chosen by the validation loss no score measures that work.
    """
    images, labels = _data(2)
    cfg = _config(epochs=999, select="val_loss", freeze_epochs=0)
    _, log = fit(
        images[:3], labels[:3], images[3:], labels[3:], cfg, tmp_path, verbose=0, minutes=0.2, reserve_seconds=4
    )
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["reserved_seconds"] == 4.0 and len(log) == plan["epochs"] >= 2
    # the first plan left the reserve out (checked on the recorded times, not the clock: a
    # loaded machine makes any epoch slower)
    first, pace = plan["first_epoch_seconds"], plan["epoch_seconds"]
    assert plan["planned_epochs"] == 1 + plan_epochs(12 - 4 - first, pace, minimum=1)


def test_one_slow_epoch_does_not_cut_the_plan_for_good(tmp_path):
    """The pace is the median of the recent epochs; the plan grows back, and past the first plan.

    A 60-second budget planned for 10 epochs after a 10-second first epoch (5 s each). A 20-second
    epoch (a recompilation, a passing job) shortens the plan at once only as far as the median
    pace says; fast epochs afterwards give the epochs back, and once three full epochs have
    measured the pace, more than the 10 first planned when they fit.
    """
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "epochs": 10,
                "planned_epochs": 10,
                "freeze_epochs": 1,
                "minutes": 1.0,
                "first_epoch_seconds": 10.0,
                "epoch_seconds": 5.0,
                "seconds_done": 10.0,
            }
        )
    )
    cb = _Replan(plan)
    cb.set_model(build_network(NET))
    cb.model.stop_training = False

    def epoch(i, seconds):
        cb.t = time.time() - seconds + 0.05
        cb.on_epoch_end(i)
        return json.loads(plan.read_text())

    state = epoch(1, 5)  # 15 s used, 9 more fit: the plan stays at its limit
    assert state["epochs"] == 10 and not state["shortened"]
    state = epoch(2, 20)  # 35 s used, median pace 12.5 s: 2 more fit
    assert state["epochs"] == 5 and state["shortened"]
    state = epoch(3, 3)  # 38 s used, median of 5, 20, 3: 5 s, 4 more fit
    assert state["epochs"] == 8 and state["recent_epoch_seconds"] == pytest.approx([5, 20, 3], abs=0.1)
    state = epoch(4, 1)  # 39 s used, median 4 s: 5 more fit
    assert state["epochs"] == 10 and not state["shortened"] and not cb.model.stop_training
    state = epoch(5, 1)  # 40 s used, median of 5, 20, 3, 1, 1: 3 s, 6 more fit, past the first plan
    assert state["epochs"] == 12 and state["grown"] and state["planned_epochs"] == 10


def test_warm_up_epochs_do_not_grow_the_plan(tmp_path):
    """Epochs with the encoder frozen are cheaper than full ones: their pace grows no plan past the first."""
    plan = tmp_path / "plan.json"
    first = {"epochs": 10, "planned_epochs": 10, "freeze_epochs": 4, "minutes": 1.0, "seconds_done": 10.0}
    plan.write_text(json.dumps({**first, "first_epoch_seconds": 10.0, "epoch_seconds": 5.0}))
    cb = _Replan(plan)
    cb.set_model(build_network(NET))
    cb.model.stop_training = False
    for i in (1, 2, 3):  # frozen epochs of 1 s: 47 s left, 47 more would fit at their pace
        cb.t = time.time() - 0.95
        cb.on_epoch_end(i)
        state = json.loads(plan.read_text())
        assert state["epochs"] == 10 and not state["grown"]


def test_a_plan_grows_past_a_slow_first_epoch_and_resumes_grown(tmp_path):
    """A first epoch slowed by other work caps the run no more.

    The first score call sleeps 5 s (other work on the machine), so the first plan counts more
    than 5 s per epoch in a 90-s budget (at most 18 epochs, at least 4 even if the first epoch
    took a minute); the later epochs take a second or less even on a busy machine, so once
    three have measured the pace the plan grows past the first one. The same call trains past
    the first plan's last epoch (interrupted there), and a resumed run goes on with the grown
    plan (interrupted after one more epoch), where a plan capped at the first would have ended
    at once.
    """
    import keras  # keras: only for the tests that build networks (lazy, docs/architecture.md)

    images, labels = _data(2)
    cfg = _config(epochs=999, freeze_epochs=0)
    calls = []

    def score(model):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(5.0)
        return 0.5

    def plan() -> dict:
        return json.loads((tmp_path / "plan.json").read_text())

    class Stop(keras.callbacks.Callback):
        def __init__(self, when):
            super().__init__()
            self.when = when

        def on_epoch_end(self, epoch, logs=None):
            if (tmp_path / "plan.json").exists() and self.when(epoch + 1, plan()):
                raise KeyboardInterrupt

    args = (images[:3], labels[:3], images[3:], labels[3:], cfg, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        fit(*args, verbose=0, minutes=1.5, score=score, callbacks=[Stop(lambda done, p: done > p["planned_epochs"])])
    first = plan()["planned_epochs"]
    done = json.loads((tmp_path / "state.json").read_text())["epochs_done"]
    assert done == first + 1 and plan()["grown"] and plan()["epochs"] > done
    with pytest.raises(KeyboardInterrupt):
        fit(*args, verbose=0, minutes=1.5, score=score, callbacks=[Stop(lambda d, p: d > done)])
    assert json.loads((tmp_path / "state.json").read_text())["epochs_done"] == done + 1
    assert len(_read_log(tmp_path / "log.csv")) == done + 1
