"""U-Net border weights: the gaps between touching particles and small particles count more."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import draw_disks
from particleseg.errors import InputError
from particleseg.models import Head
from particleseg.train import make_loss, make_targets, separation_weights, train_segmentation

HEADS = (Head("foreground"), Head("distance"))


def two_touching_and_a_small_one():
    lab = np.zeros((40, 60), np.int32)
    lab[5:25, 5:20] = 1
    lab[5:25, 21:36] = 2  # one background column (x = 20) between 1 and 2
    lab[30:33, 50:53] = 3  # 9 px, far from both
    return lab


def test_gap_between_touching_particles_weighs_most_and_far_background_one():
    lab = two_touching_and_a_small_one()
    w = separation_weights(lab, w0=10, sigma=5, size_balance=1)
    gap = w[5:25, 20]
    # d1 = d2 = 1 on the line: 1 + 10 exp(-4 / 50)
    assert np.allclose(gap, 1 + 10 * np.exp(-4 / 50), atol=1e-5)
    assert w[0, 59] == 1 and w.max() == pytest.approx(gap.max())
    # the term falls off with the distance to the two particles
    assert 1 < w[2, 20] < gap.min()
    # particle pixels keep weight 1 without the size balance
    assert np.all(w[lab > 0] == 1)


def test_small_particles_weigh_more_up_to_the_cap():
    lab = two_touching_and_a_small_one()
    w = separation_weights(lab, w0=0, size_balance=3)
    # areas 300, 300, 9: median 300, sqrt(300 / 9) = 5.8, capped at 3
    assert np.all(w[lab == 3] == 3) and np.all(w[lab == 1] == 1)
    assert np.all(w[lab == 0] == 1)
    assert np.all(separation_weights(np.zeros((8, 8), int)) == 1)


def test_weights_ride_as_the_last_target_channel_and_weigh_the_loss():
    from keras import ops

    lab = two_touching_and_a_small_one()
    w = separation_weights(lab)
    plain = make_targets(lab, HEADS)
    weighted = make_targets(lab, HEADS, weights=w)
    assert weighted.shape == plain.shape[:2] + (3,)
    assert np.array_equal(weighted[..., :2], plain) and np.array_equal(weighted[..., 2], w)

    rng = np.random.default_rng(0)
    pred = rng.uniform(0.05, 0.95, plain.shape).astype(np.float32)
    ones = make_targets(lab, HEADS, weights=np.ones(lab.shape))

    def value(loss, target):
        return float(ops.convert_to_numpy(loss(target[None], pred[None])))

    # uniform weights: the unweighted loss
    assert value(make_loss(HEADS, 0.3, pixel_weights=True), ones) == pytest.approx(
        value(make_loss(HEADS, 0.3), plain), rel=1e-5
    )
    # an error on the gap between the touching particles costs more with the weights
    right = np.clip(plain, 0.05, 0.95)
    wrong = right.copy()
    wrong[5:25, 20, 0] = 0.95  # particle predicted where the gap is

    def extra(loss, target):
        return float(ops.convert_to_numpy(loss(target[None], wrong[None]) - loss(target[None], right[None])))

    assert extra(make_loss(HEADS, 0.3, pixel_weights=True), weighted) > 3 * extra(make_loss(HEADS, 0.3), plain) > 0


def test_training_with_separation_weights_records_them(tmp_path):
    images, labels = [], []
    for k in range(3):
        img, lab = draw_disks((64, 64), [(20, 20, 8), (20, 37, 8), (45, 40, 4)], seed=k)
        images.append(img)
        labels.append(lab)
    tiny = dict(arch="unet", depth=2, base_filters=4, tile=32, batch_size=4, validation_steps=1, progress=False)
    bundle = train_segmentation(
        images, labels, tmp_path / "b", **tiny, epochs=1, steps_per_epoch=2, separation_weight=10, jit_compile=False
    )
    meta = json.loads((bundle.path / "bundle.json").read_text())
    assert meta["training"]["config"]["separation_weight"] == 10
    # a new network trains without them unless asked
    plain = train_segmentation(images, labels, tmp_path / "d", **tiny, epochs=1, steps_per_epoch=1, jit_compile=False)
    assert plain.metadata["training"]["config"]["separation_weight"] == 0
    with pytest.raises(InputError, match="--separation-weight -1: must be 0"):
        train_segmentation(images, labels, tmp_path / "c", **tiny, epochs=1, separation_weight=-1)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--separation-weight", "-1", "must be at least 0, got -1"),
        ("--loader-processes", "-1", "expected a whole number of at least 0, got '-1'"),
        ("--loader-processes", "2.5", "expected a whole number of at least 0, got '2.5'"),
        ("--batch-size", "0", "expected a positive whole number, got '0'"),
    ],
)
def test_the_command_line_refuses_a_negative_weight_in_one_line(capsys, option, value, message):
    from particleseg.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["train", "--images", "i", "--masks", "m", "--out", "o", option, value])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"particleseg train: error: argument {option}: {message}"
