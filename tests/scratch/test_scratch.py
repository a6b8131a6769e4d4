"""The from-scratch workflow (shape GAN, mask simulation, CycleGAN, artifact filter, training).

Its pieces, a whole run at a tiny scale, resuming, and the messages for bad input.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

from conftest import write_images, write_outlines
from particleseg.errors import InputError, OutputExistsError
from particleseg.scratch import ScratchConfig, train_from_scratch
from particleseg.scratch.workflow import STAGE_DIRS

# --------------------------------------------------------------------------------------------
# synthetic inputs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("scratch-inputs")
    return write_images(root / "images"), write_outlines(root / "outlines")


@pytest.fixture(scope="module")
def tiny_run(inputs, tmp_path_factory):
    """One whole run at the tiny preset (about a minute on a CPU)."""
    images, outlines = inputs
    root = tmp_path_factory.mktemp("scratch-run")
    result = train_from_scratch(
        images, outlines, root / "bundle", work=root / "work", config=ScratchConfig.preset("tiny"), progress=False
    )
    return result, root


# --------------------------------------------------------------------------------------------
# stage 1: outlines and shapes


def test_outlines_are_centred_on_the_canvas(inputs):
    from particleseg.scratch.shapegan import augment_flips, load_outlines

    masks, files = load_outlines(inputs[1], size=32, min_count=4)
    assert masks.shape == (8, 32, 32) and masks.dtype == bool and len(files) == 8
    for m in masks:
        ys, xs = np.nonzero(m)
        assert abs((ys.min() + ys.max()) / 2 - 15.5) <= 1 and abs((xs.min() + xs.max()) / 2 - 15.5) <= 1
    assert augment_flips(masks).shape == (32, 32, 32)


def _one_outline(folder: Path, name: str, img: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name, img)
    return folder


@pytest.mark.parametrize(
    "case, expected",
    [
        ("two", "2 separate white regions"),
        ("gray", "gray values"),
        ("inverted", "white background"),
        ("large", "larger than"),
    ],
)
def test_bad_outlines_are_named_with_the_fix(tmp_path, case, expected):
    from particleseg.scratch.shapegan import load_outlines

    folder = write_outlines(tmp_path / "o", n=4)
    img = np.zeros((32, 32), np.uint8)
    if case == "two":
        img[2:8, 2:8] = img[20:28, 20:28] = 255
    elif case == "gray":
        img[5:20, 5:20] = 128
        img[8:12, 8:12] = 255
    elif case == "inverted":
        img[:] = 255
        img[10:20, 10:20] = 0
    elif case == "large":
        img = np.zeros((48, 48), np.uint8)
        img[2:46, 2:46] = 255
    _one_outline(folder, "bad.tif", img)
    with pytest.raises(InputError) as e:
        load_outlines(folder, size=32, min_count=4)
    msg = str(e.value)
    assert msg.startswith(str(folder / "bad.tif")) and expected in msg and "stage 1" in msg


def test_too_few_outlines(tmp_path):
    from particleseg.scratch.shapegan import load_outlines

    folder = write_outlines(tmp_path / "o", n=3)
    with pytest.raises(InputError, match=r"only 3 outline.*stage 1.*at least 10"):
        load_outlines(folder)


def test_clean_shape_keeps_one_solid_particle():
    from particleseg.scratch.shapegan import clean_shape

    m = np.zeros((32, 32), bool)
    m[5:20, 5:20] = True
    m[10:13, 10:13] = False  # a hole
    m[25:27, 25:27] = True  # a speck
    out = clean_shape(m)
    assert out[11, 11] and not out[25:27, 25:27].any()


def test_generator_and_critic_shapes():
    from particleseg.scratch.shapegan import build_critic, build_generator

    g, c = build_generator(32, 8, 4), build_critic(32, 4)
    z = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    x = keras.ops.convert_to_numpy(g(z))
    assert x.shape == (3, 32, 32, 1) and np.abs(x).max() <= 1
    assert keras.ops.convert_to_numpy(c(x)).shape == (3, 1)


def test_input_gradient_is_exact():
    from keras import ops

    from particleseg.scratch._backend import input_gradient

    x = ops.convert_to_tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    g = ops.convert_to_numpy(input_gradient(lambda v: ops.sum(v * v, axis=1), x))
    assert np.allclose(g, 2 * np.arange(6).reshape(2, 3))


def test_wgan_gp_steps_train_the_critic_only():
    from particleseg.scratch import _backend as B
    from particleseg.scratch.shapegan import _critic_loss, build_critic, build_generator

    keras.utils.set_random_seed(1)
    models = {"generator": build_generator(16, 4, 2), "critic": build_critic(16, 2)}
    gen_before = [keras.ops.convert_to_numpy(v) for v in models["generator"].trainable_variables]
    crit_before = [keras.ops.convert_to_numpy(v) for v in models["critic"].trainable_variables]
    step = B.Step(models, ["critic"], keras.optimizers.Adam(1e-3), _critic_loss(10.0), jit=False)
    rng = np.random.default_rng(0)
    m = step(
        {
            "real": rng.uniform(-1, 1, (4, 16, 16, 1)),
            "z": rng.normal(size=(4, 4)),
            "alpha": rng.uniform(size=(4, 1, 1, 1)),
        }
    )
    if B.backend() == "jax":
        step.state.sync()
    assert set(m) == {"critic_w", "gp"} and np.isfinite(list(m.values())).all()
    assert all(
        np.array_equal(a, keras.ops.convert_to_numpy(v))
        for a, v in zip(gen_before, models["generator"].trainable_variables)
    )
    assert any(
        not np.array_equal(a, keras.ops.convert_to_numpy(v))
        for a, v in zip(crit_before, models["critic"].trainable_variables)
    )


# --------------------------------------------------------------------------------------------
# stage 2: masks


def test_size_distributions(tmp_path):
    from particleseg.scratch.masks import size_sampler

    rng = np.random.default_rng(0)
    s = size_sampler("normal:1.0,0.1")(rng, 20000)
    assert abs(s.mean() - 1) < 0.01 and abs(s.std() - 0.1) < 0.01 and s.min() >= 0.7 and s.max() <= 1.3
    ln = size_sampler("lognormal:1.0,0.2")(rng, 20000)
    assert abs(np.median(ln) - 1) < 0.02 and ln.min() >= np.exp(-0.6) - 1e-9 and ln.max() <= np.exp(0.6) + 1e-9
    u = size_sampler("uniform:0.5,2")(rng, 1000)
    assert u.min() >= 0.5 and u.max() <= 2
    (tmp_path / "sizes.txt").write_text("0.8\n1.2\n")
    assert set(size_sampler(f"file:{tmp_path / 'sizes.txt'}")(rng, 100)) == {0.8, 1.2}
    assert set(size_sampler("values:0.9,1.1")(rng, 100)) == {0.9, 1.1}
    for bad in ("gamma:1,2", "normal:1", "normal:1,0.5", "values:a,b", "file:/does/not/exist"):
        with pytest.raises(InputError, match="stage 2"):
            size_sampler(bad)


def test_count_range_scales_with_the_canvas():
    from particleseg.scratch.masks import MaskConfig, canvas_margin, count_range

    assert count_range(MaskConfig(), 64) == (100, 150)
    assert canvas_margin(MaskConfig(), 64) in range(115, 120)
    lo, hi = count_range(MaskConfig(tile=256), 64)
    assert 55 < lo < 70 and 85 < hi < 100
    assert count_range(MaskConfig(tile=256, count=(5, 7)), 64) == (5, 7)


def test_simulated_mask_has_separated_touching_particles():
    from particleseg.postprocess import label_mask
    from particleseg.scratch.masks import MaskConfig, simulate_mask, target_mask

    yy, xx = np.mgrid[:32, :32]
    disk = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 10**2
    shapes = np.stack([disk] * 4)
    cfg = MaskConfig(tile=128, count=(30, 30), attach=0.5, max_overlap=0.3)
    lab = simulate_mask(shapes, cfg, np.random.default_rng(3))
    assert lab.shape == (128, 128) and lab.dtype == np.int32
    n = lab.max()
    assert 5 < n <= 30 and set(np.unique(lab)) == set(range(n + 1))
    target = target_mask(lab)
    # every particle is its own 4-connected component in the target (lines between touching ones)
    assert label_mask(target).max() >= n - 1
    assert target.sum() < (lab > 0).sum()  # the lines cost pixels


def test_perlin_placement_agglomerates_particles():
    from scipy import ndimage as ndi

    from particleseg.scratch.masks import MaskConfig, simulate_mask

    yy, xx = np.mgrid[:32, :32]
    shapes = np.stack([(yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 5**2] * 2)

    def dispersion(threshold):
        # variance / mean of the particle counts in 6x6 cells: about 1 for random placement
        # (a little below with the overlap bound), well above 1 for clustered particles
        out = []
        for seed in range(4):
            cfg = MaskConfig(tile=192, count=(60, 60), margin=0, perlin_threshold=threshold, perlin_cells=3)
            lab = simulate_mask(shapes, cfg, np.random.default_rng(seed))
            c = np.array(ndi.center_of_mass(lab > 0, lab, range(1, lab.max() + 1)))
            h = np.histogram2d(c[:, 0], c[:, 1], bins=6, range=[[0, 192], [0, 192]])[0]
            out.append(h.var() / h.mean())
        return float(np.mean(out))

    uniform, perlin = dispersion(0.0), dispersion(0.6)
    assert uniform < 1.2 and perlin > 1.5 * uniform


def test_simulated_masks_resume_identically(tmp_path):
    from particleseg.scratch.masks import MaskConfig, simulate_masks

    yy, xx = np.mgrid[:32, :32]
    shapes = np.stack([(yy - 15.5) ** 2 + (xx - 15.5) ** 2 < r**2 for r in (6, 8, 10)])
    cfg = MaskConfig(tile=64, count=(8, 12), margin=16)
    paths = simulate_masks(shapes, 4, cfg, tmp_path, progress=False)
    first = tifffile.imread(paths[2])
    paths[2].unlink()
    simulate_masks(shapes, 4, cfg, tmp_path, progress=False)
    assert np.array_equal(tifffile.imread(paths[2]), first)
    assert (tmp_path / "samples.png").is_file()
    assert json.loads((tmp_path / "summary.json").read_text())["masks"] == 4


def test_only_empty_masks_name_the_stage(tmp_path):
    from particleseg.scratch.masks import MaskConfig, simulate_masks

    shapes = np.ones((2, 32, 32), bool)
    with pytest.raises(InputError, match=r"all 3 simulated masks are empty \(stage 2.*--particles"):
        simulate_masks(shapes, 3, MaskConfig(tile=64, count=(0, 0), margin=16), tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# stages 3 and 4


def test_image_pool():
    from particleseg.scratch.cyclegan import ImagePool

    rng = np.random.default_rng(0)
    pool = ImagePool(2)
    a = np.zeros((2, 4, 4, 1))
    assert np.array_equal(pool.query(a, rng), a) and len(pool.images) == 2
    b = np.ones((50, 4, 4, 1))
    out = pool.query(b, rng)
    assert out.shape == b.shape and 0 < (out.reshape(50, -1).max(1) == 0).sum() <= 2  # old fakes come back
    assert np.array_equal(ImagePool(0).query(b, rng), b)


def test_cyclegan_networks_keep_the_size():
    from particleseg.scratch.cyclegan import build_discriminator, build_generator

    g = build_generator(4, 1)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 36, 44, 1)).astype(np.float32)
    y = keras.ops.convert_to_numpy(g(x))
    assert y.shape == x.shape and np.abs(y).max() <= 1
    d = keras.ops.convert_to_numpy(build_discriminator(4, 2)(x))
    assert d.shape[0] == 2 and d.shape[-1] == 1


def test_dark_polarity_inverts_the_mask_domain_and_prefers_dark_crops():
    from particleseg.scratch.cyclegan import mask_domain, real_crop

    target = np.zeros((8, 8), bool)
    target[2:5, 2:5] = True
    assert mask_domain(target, "bright")[3, 3] == 1 and mask_domain(target, "bright")[0, 0] == -1
    assert np.array_equal(mask_domain(target, "dark"), -mask_domain(target, "bright"))
    # left half bright, right half dark: 16-px crops from the dark side are preferred for dark particles
    image = np.full((16, 64), 0.8, np.float32)
    image[:, 32:] = -0.8
    rng = np.random.default_rng(0)
    dark = [real_crop([image], 16, rng, True, "dark").mean() for _ in range(40)]
    bright = [real_crop([image], 16, rng, True, "bright").mean() for _ in range(40)]
    assert np.mean(dark) < -0.5 and np.mean(bright) > 0.5


def test_artifact_filter_drops_faint_particles():
    from particleseg.scratch.filtering import filter_pair

    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:15], labels[20:30, 20:30], labels[5:15, 25:35] = 1, 2, 3
    image = np.full((40, 40), 20.0)
    image[labels == 1] = 200
    image[labels == 3] = 180
    image[labels == 2] = 25  # rendered hardly at all
    kept, dropped, thr = filter_pair(labels, image, "li")
    assert kept.max() == 2 and set(np.unique(dropped)) == {0, 2} and 25 < thr < 180
    kept, dropped, _ = filter_pair(labels, 255 - image, "otsu", polarity="dark")
    assert set(np.unique(dropped)) == {0, 2}
    kept, dropped, thr = filter_pair(labels, image, "none")
    assert kept.max() == 3 and not dropped.any() and np.isnan(thr)


def test_filter_removing_everything_names_polarity(tmp_path):
    from particleseg.scratch.filtering import filter_pairs

    lab = np.zeros((32, 32), np.uint16)
    lab[4:12, 4:12] = 1
    img = np.full((32, 32), 200, np.uint8)
    img[lab > 0] = 10  # particles dark in the fakes although the polarity says bright
    tifffile.imwrite(tmp_path / "l.tif", lab)
    tifffile.imwrite(tmp_path / "i.tif", img)
    with pytest.raises(InputError, match=r"removed all 1 particles.*stage 4.*--polarity \(try dark\)"):
        filter_pairs([tmp_path / "l.tif"], [tmp_path / "i.tif"], tmp_path / "f", "li", "bright", progress=False)


def test_filter_keeping_too_few_particles_stops_the_run(tmp_path):
    from particleseg.scratch.filtering import filter_pairs

    # four particles, three rendered darker than the background (an inverted CycleGAN)
    lab = np.zeros((40, 40), np.uint16)
    img = np.full((40, 40), 100, np.uint8)
    for k, (y, x) in enumerate([(2, 2), (2, 22), (22, 2), (22, 22)], start=1):
        lab[y : y + 12, x : x + 12] = k
        img[y : y + 12, x : x + 12] = 220 if k == 1 else 20
    tifffile.imwrite(tmp_path / "l.tif", lab)
    tifffile.imwrite(tmp_path / "i.tif", img)
    args = [tmp_path / "l.tif"], [tmp_path / "i.tif"]
    with pytest.raises(
        InputError, match=r"kept only 1 of 4 particles \(25.0 %, 0 pairs empty\).*stage 4.*--cyclegan-steps"
    ):
        filter_pairs(*args, tmp_path / "f1", "li", "bright", progress=False, min_kept=0.5)
    assert len(filter_pairs(*args, tmp_path / "f2", "li", "bright", progress=False, min_kept=0.2)) == 1


# --------------------------------------------------------------------------------------------
# the whole run


@pytest.mark.slow
def test_tiny_run_produces_every_stage_and_a_bundle_that_segments(tiny_run, inputs):
    from particleseg.pipeline import SegmentParams, predict_probabilities, segment_image

    result, root = tiny_run
    work = root / "work"
    cfg = ScratchConfig.preset("tiny")
    for stage in STAGE_DIRS.values():
        rec = json.loads((work / stage / "stage.json").read_text())
        assert rec["status"] == "done" and rec["seconds"] > 0
    shapes = np.load(work / "1_shapes" / "shapes.npz")["shapes"]
    assert shapes.dtype == bool and shapes.shape[1:] == (32, 32) and 16 <= len(shapes) <= cfg.shapes.bank_size
    labels = sorted((work / "2_masks" / "labels").glob("*.tif"))
    fakes = sorted((work / "3_cyclegan" / "fakes").glob("*.tif"))
    filtered = sorted((work / "4_filter" / "labels").glob("*.tif"))
    assert len(labels) == len(fakes) == len(filtered) == cfg.pairs
    lab, fake, filt = tifffile.imread(labels[0]), tifffile.imread(fakes[0]), tifffile.imread(filtered[0])
    assert lab.shape == fake.shape == filt.shape == (64, 64)
    assert fake.dtype == np.uint8 and lab.dtype == np.uint16
    assert filt.max() <= lab.max() and not np.any((filt > 0) & (lab == 0))  # the filter only removes
    for png in (
        "1_shapes/samples.png",
        "1_shapes/outlines.png",
        "2_masks/samples.png",
        "3_cyclegan/samples.png",
        "3_cyclegan/progress.png",
        "4_filter/samples.png",
        "5_segmentation/samples.png",
        "5_segmentation/train/loss.png",
    ):
        assert (work / png).stat().st_size > 100, png

    bundle = result.bundle
    assert bundle.path == root / "bundle"
    training = bundle.metadata["training"]
    assert training["workflow"] == "particleseg train-from-scratch"
    assert training["config"]["pairs"] == cfg.pairs and training["config"]["masks"]["tile"] == 64
    assert training["outlines"]["count"] == 8 and training["images"]["count"] == 3
    assert bundle.metadata["scale"]["particle_size_px"] > 5
    assert 0.3 <= bundle.postprocess["threshold"] <= 0.7  # chosen on the held-out fake pairs
    assert 0 <= bundle.metadata["metrics"]["fake_validation_instance_iou"] <= 1
    image = tifffile.imread(sorted(inputs[0].glob("*.tif"))[0])
    seg = segment_image(image, bundle)
    assert seg.labels.shape == image.shape and seg.labels.dtype == np.int32
    # the network responds to the image (an untrained or collapsed one gives a constant map)
    prob = predict_probabilities(image, bundle, SegmentParams(crop_rows=0, progress=False))[..., 0]
    assert prob.shape == image.shape and prob.std() > 1e-3


@pytest.mark.slow
def test_finished_stages_are_not_redone(tiny_run, inputs, tmp_path):
    result, root = tiny_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    before = {s: json.loads((work / d / "stage.json").read_text()) for s, d in STAGE_DIRS.items()}
    ckpt = (work / "1_shapes" / "checkpoint.npz").stat().st_mtime_ns
    again = train_from_scratch(
        *inputs, tmp_path / "bundle", work=work, config=ScratchConfig.preset("tiny"), progress=False
    )
    after = {s: json.loads((work / d / "stage.json").read_text()) for s, d in STAGE_DIRS.items()}
    assert before == after and (work / "1_shapes" / "checkpoint.npz").stat().st_mtime_ns == ckpt
    assert again.seconds == result.seconds
    with pytest.raises(OutputExistsError):
        train_from_scratch(*inputs, tmp_path / "bundle", work=work, config=ScratchConfig.preset("tiny"), progress=False)


@pytest.mark.slow
def test_interrupted_stage_resumes_from_its_checkpoint(inputs, tmp_path, monkeypatch):
    import csv

    from particleseg.scratch import _backend as B

    cfg = ScratchConfig.preset("tiny")
    calls = {"n": 0}
    original = B.Step.__call__

    def interrupting(self, batch):
        calls["n"] += 1
        if calls["n"] == 13 * (cfg.shapes.critic_steps + 1):  # during generator update 13
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(B.Step, "__call__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train_from_scratch(*inputs, tmp_path / "bundle", work=tmp_path / "work", config=cfg, progress=False)
    rec = json.loads((tmp_path / "work" / "1_shapes" / "stage.json").read_text())
    assert rec["status"] == "running"
    assert int(np.load(tmp_path / "work" / "1_shapes" / "checkpoint.npz")["extra/step"]) == 10

    def counting(self, batch):
        calls["n"] += 1
        return original(self, batch)

    monkeypatch.setattr(B.Step, "__call__", counting)
    calls["n"] = 0
    train_from_scratch(
        *inputs, tmp_path / "bundle", work=tmp_path / "work", config=cfg, progress=False, stop_after="shapes"
    )
    # shapes: 10 remaining generator updates with their critic updates
    assert calls["n"] == 10 * (cfg.shapes.critic_steps + 1)
    with open(tmp_path / "work" / "1_shapes" / "log.csv") as fh:
        steps = [int(r["step"]) for r in csv.DictReader(fh)]
    assert steps == list(range(1, cfg.shapes.steps + 1))
    assert json.loads((tmp_path / "work" / "1_shapes" / "stage.json").read_text())["status"] == "done"


@pytest.mark.slow
def test_changed_settings_are_refused_then_redone(tiny_run, inputs, tmp_path):
    import dataclasses

    _, root = tiny_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)
    cfg = ScratchConfig.preset("tiny")
    changed = dataclasses.replace(cfg, filter_method="otsu")
    with pytest.raises(
        InputError,
        match=r"4_filter: stage 4, artifact filter was run with other settings "
        r"\(changed: filter_method\).*--redo filter",
    ):
        train_from_scratch(*inputs, tmp_path / "bundle", work=work, config=changed, progress=False)
    mtime = (work / "3_cyclegan" / "checkpoint.npz").stat().st_mtime_ns
    train_from_scratch(*inputs, tmp_path / "bundle", work=work, config=changed, progress=False, redo="filter")
    assert json.loads((work / "4_filter" / "summary.json").read_text())["method"] == "otsu"
    assert (work / "3_cyclegan" / "checkpoint.npz").stat().st_mtime_ns == mtime  # earlier stages kept


# --------------------------------------------------------------------------------------------
# bad input and the command line


def test_images_of_mixed_sizes_or_depths_are_refused_before_any_work(inputs, tmp_path):
    images = write_images(tmp_path / "images", n=2)
    tifffile.imwrite(images / "other.tif", np.full((80, 96), 7, np.uint8) + np.eye(80, 96, dtype=np.uint8))
    with pytest.raises(InputError, match=r"other.tif: 96x80 pixels, uint8, but image0.tif is 96x96, uint8 \(stage 3"):
        train_from_scratch(images, inputs[1], tmp_path / "b", work=tmp_path / "w", config=ScratchConfig.preset("tiny"))
    (images / "other.tif").unlink()
    tifffile.imwrite(images / "deep.tif", (np.arange(96 * 96).reshape(96, 96) * 7).astype(np.uint16))
    with pytest.raises(
        InputError, match=r"image0.tif: 96x96 pixels, uint8, but deep.tif is 96x96, uint16 \(stage 3.*bit depth"
    ):
        train_from_scratch(images, inputs[1], tmp_path / "b", work=tmp_path / "w", config=ScratchConfig.preset("tiny"))
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_empty_masks_keep_the_finished_shape_stage(tiny_run, inputs, tmp_path):
    import dataclasses

    # a work folder whose shape GAN has finished (the tiny run's), nothing after it
    shutil.copytree(tiny_run[1] / "work" / STAGE_DIRS["shapes"], tmp_path / "w" / STAGE_DIRS["shapes"])
    ckpt = (tmp_path / "w" / "1_shapes" / "checkpoint.npz").stat().st_mtime_ns
    cfg = ScratchConfig.preset("tiny")
    bad = dataclasses.replace(cfg, masks=dataclasses.replace(cfg.masks, count=(0, 0)))
    with pytest.raises(InputError, match=r"2_masks: all 12 simulated masks are empty \(stage 2"):
        train_from_scratch(*inputs, tmp_path / "b", work=tmp_path / "w", config=bad, progress=False)
    assert json.loads((tmp_path / "w" / "1_shapes" / "stage.json").read_text())["status"] == "done"
    # the fix: the finished shape GAN is reused, the mask stage redone with the new count
    with pytest.raises(InputError, match="--redo masks"):
        train_from_scratch(*inputs, tmp_path / "b", work=tmp_path / "w", config=cfg, progress=False, stop_after="masks")
    train_from_scratch(
        *inputs, tmp_path / "b", work=tmp_path / "w", config=cfg, progress=False, stop_after="masks", redo="masks"
    )
    assert len(list((tmp_path / "w" / "2_masks" / "labels").glob("*.tif"))) == cfg.pairs
    assert (tmp_path / "w" / "1_shapes" / "checkpoint.npz").stat().st_mtime_ns == ckpt


def test_cli_prints_bad_input_as_one_line(inputs, tmp_path, capsys):
    from particleseg.cli import main

    outlines = write_outlines(tmp_path / "few", n=2)
    rc = main(
        [
            "train-from-scratch",
            "--images",
            str(inputs[0]),
            "--outlines",
            str(outlines),
            "--out",
            str(tmp_path / "b"),
            "--preset",
            "tiny",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "only 2 outline image(s)" in err[0] and "stage 1" in err[0]


def test_cli_options_reach_the_config():
    import argparse

    from particleseg.cli import build_parser
    from particleseg.cli.train_from_scratch import config_from_args

    args = build_parser().parse_args(
        [
            "train-from-scratch",
            "--images",
            "i",
            "--outlines",
            "o",
            "--out",
            "b",
            "--preset",
            "cpu",
            "--pairs",
            "50",
            "--particles",
            "20:30",
            "--size-distribution",
            "lognormal:1,0.2",
            "--polarity",
            "dark",
            "--filter-method",
            "otsu",
            "--min-kept-fraction",
            "0.1",
            "--cyclegan-steps",
            "7",
            "--architecture",
            "multires-unet",
            "--epochs",
            "3",
            "--seed",
            "4",
            "--rotate",
        ]
    )
    cfg = config_from_args(args)
    assert cfg.pairs == 50 and cfg.masks.count == (20, 30) and cfg.masks.size == "lognormal:1,0.2"
    assert cfg.polarity == "dark" and cfg.filter_method == "otsu" and cfg.cyclegan.steps == 7
    assert cfg.min_kept_fraction == 0.1 and cfg.cyclegan.identity_weight == 5.0
    assert cfg.segmentation.network.architecture == "multires-unet" and cfg.segmentation.epochs == 3
    assert cfg.shapes.seed == cfg.masks.seed == cfg.cyclegan.seed == cfg.segmentation.seed == 4 and cfg.masks.rotate
    # a network option asks for a new network: the cpu preset's base model is dropped
    assert cfg.base_model is None and cfg.translator == "renderer" and cfg.renderer.seed == 4
    base = ["train-from-scratch", "--images", "i", "--outlines", "o", "--out", "b", "--preset", "cpu"]
    cfg = config_from_args(build_parser().parse_args(base + ["--minutes", "7", "--translator", "cyclegan"]))
    assert cfg.base_model == "default" and cfg.segmentation_minutes == 7 and cfg.translator == "cyclegan"
    assert config_from_args(build_parser().parse_args(base + ["--base-model", "none"])).base_model is None
    with pytest.raises(InputError, match="--depth 3: network options apply to a new network, but --base-model default"):
        config_from_args(build_parser().parse_args(base + ["--base-model", "default", "--depth", "3"]))
    # the time budget is the fine-tune's: a new network is asked for with --epochs, not ignored
    with pytest.raises(
        InputError,
        match=r"^--minutes 30: the time budget is that of fine-tuning a base model, "
        r"but --base-model none asks for a new network",
    ):
        config_from_args(build_parser().parse_args(base + ["--base-model", "none", "--minutes", "30"]))
    with pytest.raises(InputError, match=r"^--minutes 30: .* but --depth 3 asks for a new network"):
        config_from_args(build_parser().parse_args(base + ["--depth", "3", "--minutes", "30"]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["train-from-scratch", "--images", "i", "--outlines", "o", "--out", "b", "--particles", "30:20"]
        )
    assert isinstance(args, argparse.Namespace)


@pytest.mark.slow
def test_cli_runs_the_tiny_preset(tiny_run, inputs, tmp_path, capsys):
    """The command line on the tiny run's work folder (its default place, BUNDLE.work).

    The GAN stages are reused, the artifact filter is redone with another method and the
    segmentation network trained again on its pairs.
    """
    from particleseg.cli import main

    work = tmp_path / "bundle.work"
    shutil.copytree(tiny_run[1] / "work", work)
    before = {s: (work / STAGE_DIRS[s] / "stage.json").read_text() for s in ("shapes", "masks", "cyclegan")}
    rc = main(
        [
            "train-from-scratch",
            "--images",
            str(inputs[0]),
            "--outlines",
            str(inputs[1]),
            "--out",
            str(tmp_path / "bundle"),
            "--preset",
            "tiny",
            "--quiet",
            "--filter-method",
            "none",
            "--redo",
            "filter",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "wrote" in out
    # the tiny preset translates with the CycleGAN: the stage times name it
    assert re.search(r"minutes per stage \{'shapes': [0-9.]+, 'masks': [0-9.]+, 'cyclegan': [0-9.]+, 'filter'", out)
    from particleseg.cli.train_from_scratch import stage_minutes

    seconds = {"shapes": 60.0, "masks": 30.0, "cyclegan": 78.0, "filter": 6.0, "segmentation": 3582.0}
    assert list(stage_minutes(seconds, "renderer")) == ["shapes", "masks", "renderer", "filter", "segmentation"]
    assert stage_minutes(seconds, "renderer")["renderer"] == 1.3 and "cyclegan" in stage_minutes(seconds, "cyclegan")
    assert (tmp_path / "bundle" / "bundle.json").is_file() and (work / "5_segmentation").is_dir()
    assert {s: (work / STAGE_DIRS[s] / "stage.json").read_text() for s in before} == before
    assert json.loads((work / "4_filter" / "summary.json").read_text())["method"] == "none"
    assert json.loads((work / "5_segmentation" / "stage.json").read_text())["status"] == "done"


# --------------------------------------------------------------------------------------------
# stage 3 without a GAN: the renderer fitted to the micrographs


def _disk_labels(n: int, shape=(96, 96), seed: int = 0) -> list[np.ndarray]:
    from particleseg.simulate import place_particles, random_particle

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        shapes = [random_particle(rng, rng.uniform(10, 16)) for _ in range(12)]
        labels, _ = place_particles(shape, shapes, rng)
        out.append(labels)
    return out


@pytest.mark.parametrize("polarity", ["bright", "dark"])
def test_rendered_fakes_show_the_masks_particles_with_the_polarity(polarity):
    from particleseg.scratch.renderer import PRIORS, render

    labels = _disk_labels(1)[0]
    style = "sem" if polarity == "bright" else "tem"
    settings = {k: (lo + hi) / 2 for k, (lo, hi) in PRIORS[style].items()}
    img = render(labels, settings, style, np.random.default_rng(0))
    assert img.shape == labels.shape and img.dtype == np.uint8
    inside, outside = np.median(img[labels > 0]), np.median(img[labels == 0])
    assert (inside > outside + 30) if polarity == "bright" else (inside < outside - 30)


def test_renderer_fit_finds_the_settings_of_rendered_micrographs():
    """Micrographs rendered with known settings.

    The fitted settings render images whose statistics are closer to them than the median prior
    draw, with the noise level found (blur trades off against noise and is not identified as
    tightly).
    """
    from particleseg.scratch.renderer import PRIORS, RendererConfig, fit_renderer, render

    truth = {k: lo + 0.2 * (hi - lo) for k, (lo, hi) in PRIORS["sem"].items()}
    truth.update(noise=0.15, blur=0.5)
    masks = _disk_labels(6, seed=1)
    reals = [render(m, truth, "sem", np.random.default_rng(i)) for i, m in enumerate(_disk_labels(6, seed=2))]
    fit = fit_renderer(masks, reals, "bright", RendererConfig(candidates=24, refine=8, keep=4), progress=False)
    assert fit["style"] == "sem" and len(fit["settings"]) == 4
    assert fit["distances"][0] < 0.5 * fit["median_distance_of_prior_draws"]
    best = fit["settings"][0]
    assert abs(best["noise"] - truth["noise"]) < 0.06


def test_rendered_fakes_resume_identically(tmp_path):
    from particleseg.scratch.renderer import PRIORS, render_fakes

    paths = []
    for i, lab in enumerate(_disk_labels(3)):
        paths.append(tmp_path / "labels" / f"{i:05d}.tif")
        paths[-1].parent.mkdir(exist_ok=True)
        tifffile.imwrite(paths[-1], lab.astype(np.uint16))
    fit = {
        "style": "sem",
        "settings": [
            {k: lo for k, (lo, hi) in PRIORS["sem"].items()},
            {k: hi for k, (lo, hi) in PRIORS["sem"].items()},
        ],
    }
    outs = render_fakes(fit, paths, tmp_path / "fakes", seed=3, progress=False)
    first = [o.read_bytes() for o in outs]
    outs[1].unlink()
    again = render_fakes(fit, paths, tmp_path / "fakes", seed=3, progress=False)
    assert [o.read_bytes() for o in again] == first


@pytest.mark.slow
def test_renderer_run_fine_tunes_the_base_model(inputs, tiny_bundle, tmp_path):
    """The cpu preset's route at a tiny scale.

    Stage 3 fits and runs the renderer, stage 5 fine-tunes a base bundle (its network, its
    weights to start from) on the fake pairs.

    """
    import dataclasses

    cfg = dataclasses.replace(ScratchConfig.preset("tiny"), translator="renderer", base_model=str(tiny_bundle.path))
    result = train_from_scratch(*inputs, tmp_path / "bundle", work=tmp_path / "work", config=cfg, progress=False)
    work = tmp_path / "work"
    fit = json.loads((work / "3_cyclegan" / "fit.json").read_text())
    assert fit["style"] == "sem" and len(fit["settings"]) == cfg.renderer.keep
    assert not (work / "3_cyclegan" / "g_ab.keras").exists()
    fakes = sorted((work / "3_cyclegan" / "fakes").glob("*.tif"))
    assert len(fakes) == cfg.pairs and tifffile.imread(fakes[0]).dtype == np.uint8
    stage3 = json.loads((work / "3_cyclegan" / "stage.json").read_text())
    assert stage3["params"]["translator"] == "renderer" and "cyclegan" not in stage3["params"]
    meta = result.bundle.metadata
    assert meta["network"] == tiny_bundle.metadata["network"]  # the base model's network, fine-tuned
    assert meta["training"]["workflow"] == "particleseg train-from-scratch"
    assert meta["training"]["base_model"] == str(tiny_bundle.path)
    assert meta["training"]["scratch_config"]["translator"] == "renderer"
    assert meta["training"]["outlines"]["count"] == 8
    w0, w1 = tiny_bundle.model.get_weights(), result.bundle.model.get_weights()
    assert len(w0) == len(w1) and any(not np.array_equal(a, b) for a, b in zip(w0, w1))
    assert (work / "5_segmentation" / "samples.png").stat().st_size > 100


# --------------------------------------------------------------------------------------------
# the real outlines and micrographs


@pytest.mark.tio2
def test_tio2_inputs_pass_the_checks(tio2_dir):
    from particleseg.scratch import load_inputs

    inp = load_inputs(tio2_dir / "images", tio2_dir / "outlines", ScratchConfig.preset("cpu"))
    assert inp.outlines.shape == (40, 64, 64) and inp.crop_rows == 56
    assert len(inp.images) == 32 and inp.images[0].shape == (712, 1024)
