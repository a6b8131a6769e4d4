"""Shared fixtures. Tests that need the licensed TiO2 data skip with a clear reason without it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

#: The repository root (tests are laid out as the package is: tests/fiji, tests/train, ...).
REPO = Path(__file__).resolve().parents[1]


def xdist_scope(nodeid: str) -> str:
    """Return the unit of work of a pytest-xdist worker for the test ``nodeid``.

    A test file, so that module- and session-scoped fixtures (a trained network, a whole
    from-scratch run, the JVM with ImageJ) are made once; tests/test_docs.py per document (its
    blocks share one working folder and run in the document's order; its other tests go with
    README.md).
    """
    path, _, rest = nodeid.partition("::")
    if path.endswith("test_docs.py"):
        doc = re.match(r"test_block_runs_as_written\[([^:\]]+):", rest)
        return f"{path}::{doc.group(1) if doc else 'README.md'}"
    return path


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Schedule ``pytest -n 2 --dist loadfile`` (pytest-xdist): a file per worker at a time.

    The documents of test_docs.py are units of their own, handed out first: they are few long
    units, and one left for the end would keep the other worker idle. (``--dist loadgroup``
    cannot do this: xdist 3.8 renames the test ids for its groups, which pytest 9 ignores.)
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FilesAndDocuments(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    config.option.loadscopereorder = False  # the order of the collection (see below)
    return FilesAndDocuments(config, log)


# The files that start Java in the test process (ImageJ 1.x under Xvfb through JPype): the JVM,
# its AWT threads and the bridge's dialog guard stay until that process ends, so these files run
# last on their worker, and no other file shares a process with a running JVM.
JVM_IN_PROCESS = ("test_fiji_imagej.py", "test_imagej_measurements.py")


def collection_rank(item) -> int:
    """Order of a test in a pytest-xdist worker: the documents first, the in-process JVM last."""
    name = item.path.name
    return 0 if name == "test_docs.py" else 2 if name in JVM_IN_PROCESS else 1


def pytest_collection_modifyitems(config, items):
    if hasattr(config, "workerinput"):
        items.sort(key=collection_rank)  # stable: the files' own order within each rank


@pytest.fixture(scope="session")
def tio2_dir():
    from particleseg.datasets import tio2_root

    root = tio2_root()
    if not (root / "images").is_dir():
        pytest.skip(f"TiO2 data set not found at {root} (licensed data, read from ../shared; set PARTICLESEG_TIO2)")
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def network_calls(monkeypatch):
    """Return the list of the scales (``ScaleChoice``) of every network run of the pipeline, as they come."""
    from particleseg import pipeline

    calls = []
    network = pipeline._network_at_scale

    def counted(work, bundle, params, scale, predictor=None, out=None):
        calls.append(scale)
        return network(work, bundle, params, scale, predictor, out)

    monkeypatch.setattr(pipeline, "_network_at_scale", counted)
    return calls


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Return an untrained 2-level UNet bundle with foreground and distance heads (fast to run)."""
    import keras

    from particleseg.models import Head, NetworkConfig, build_network, make_metadata, save_bundle

    keras.utils.set_random_seed(0)
    cfg = NetworkConfig("unet", heads=(Head("foreground"), Head("distance")), depth=2, base_filters=4)
    meta = make_metadata("tiny", cfg, tile=64, overlap=8, description="untrained test network")
    return save_bundle(tmp_path_factory.mktemp("bundles") / "tiny", build_network(cfg), meta)


@pytest.fixture(scope="session")
def threshold_bundle(tmp_path_factory):
    """Return a bundle whose "network" has known weights.

    Foreground = sigmoid(20 (x - 0.5)) of the normalised image, distance =
    sigmoid(20 (erosion15x15(x) - 0.5)), high in the centres of bright blobs wider than 15
    pixels and low across narrow necks. The pipeline's behaviour on drawn disks is then
    predictable.
    """
    import keras

    from particleseg.models import Head, NetworkConfig, make_metadata, save_bundle

    inp = keras.Input((None, None, 1))
    fg = keras.layers.Conv2D(1, 1, activation="sigmoid", name="fg")(inp)
    # grey erosion as -maxpool(-x)
    neg = keras.layers.Rescaling(-1.0)(inp)
    eroded = keras.layers.Rescaling(-1.0)(keras.layers.MaxPooling2D(15, strides=1, padding="same")(neg))
    dist = keras.layers.Conv2D(1, 1, activation="sigmoid", name="dist")(eroded)
    model = keras.Model(inp, keras.layers.Concatenate()([fg, dist]))
    model.get_layer("fg").set_weights([np.full((1, 1, 1, 1), 20.0), np.array([-10.0])])
    model.get_layer("dist").set_weights([np.full((1, 1, 1, 1), 20.0), np.array([-10.0])])
    cfg = NetworkConfig("unet", heads=(Head("foreground"), Head("distance")), depth=1, base_filters=1)
    meta = make_metadata(
        "threshold",
        cfg,
        tile=128,
        overlap=16,
        particle_size_px=20.0,
        normalization={"method": "percentile", "low": 1.0, "high": 99.8, "clip": [-0.5, 1.5]},
        postprocess={"threshold": 0.5, "seed_threshold": 0.5, "min_area": 10},
        description="hand-made test network with known weights",
    )
    return save_bundle(tmp_path_factory.mktemp("bundles") / "threshold", model, meta)


def draw_disks(shape, disks, background=40, foreground=200, noise=5, seed=0):
    """Draw a uint8 image of bright disks ``(cy, cx, r)`` on a noisy background; return it and the labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    img = rng.normal(background, noise, shape)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, r) in enumerate(disks, start=1):
        rr, cc = disk((cy, cx), r, shape=shape)
        img[rr, cc] = foreground + rng.normal(0, noise, len(rr))
        labels[rr, cc] = i
    return np.clip(img, 0, 255).astype(np.uint8), labels


# ------------------------------------------------------------------------------------------
# helpers shared by the batch, resume, fault and SIMS/FIB-SEM tests

#: disks (y, x, radius) of the small calibrated test images, four different fields
DISKS = [
    [(40, 40, 12), (40, 62, 12), (100, 100, 15)],
    [(50, 50, 14), (110, 60, 10)],
    [(80, 80, 20), (30, 120, 9)],
    [(60, 40, 11), (60, 110, 13), (120, 80, 12)],
]


def disk_images(folder, n: int = 4) -> list:
    """``n`` calibrated (5 nm/px) 160x160 TIFFs of bright disks, ``img0.tif``... in ``folder``."""
    from pathlib import Path

    from particleseg.io import Calibration, write_tiff

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img, _ = draw_disks((160, 160), DISKS[i % len(DISKS)], seed=i)
        paths.append(write_tiff(folder / f"img{i}.tif", img, Calibration(5.0, "nm")))
    return paths


def zip_members(path) -> dict:
    """Return the members of a zip file by name (ROI zips: compared without their write times)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def dead_pid() -> int:
    """Return the id of a process that has ended (for stale temporaries of a killed process)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tiny_sims_bundle(folder):
    """Save an untrained tiny FCN bundle with the SIMS metadata in ``folder`` and return it."""
    import keras

    from particleseg import sims
    from particleseg.models import Head, NetworkConfig, build_network, make_metadata, save_bundle

    keras.utils.set_random_seed(0)
    cfg = NetworkConfig("fcn", 1, (Head("foreground"),), depth=2, base_filters=4)
    meta = make_metadata(
        "sims-tiny",
        cfg,
        channels=["U total"],
        normalization={"method": "none"},
        tile=64,
        overlap=8,
        postprocess={**sims.DEFAULT_SIMS_POSTPROCESS, "threshold": 0.5, "h": 1.0},
    )
    meta["sims"] = {"input": dict(sims.DEFAULT_INPUT)}
    return save_bundle(folder / "sims-tiny", build_network(cfg), meta, zip_copy=False)


def tiny_phase_bundle(folder):
    """Save an untrained 2-level UNet taking 2 channels x 3 slices, softmax over 3 phases, in ``folder``; return it."""
    import keras

    from particleseg import fibsem
    from particleseg.models import Head, NetworkConfig, build_network, save_bundle

    keras.utils.set_random_seed(1)
    cfg = fibsem.PhaseTrainConfig(context=1, depth=2, base_filters=4)
    net = NetworkConfig("unet", 6, (Head("classes", 3, "softmax"),), depth=2, base_filters=4)
    meta = fibsem.make_phase_metadata(
        "phases-tiny", net, cfg, ["in-chamber", "in-lens"], ["matrix", "pore", "inclusion"]
    )
    return save_bundle(folder / "phases-tiny", build_network(net), meta, zip_copy=False)


def output_files(out) -> dict:
    """Return every file under the folder ``out`` (relative POSIX path -> content).

    Without what differs between two runs of the same batch: the times of zip members, a
    completion record's finishing time, the seconds taken (summary.csv, slices.csv).

    """
    import json
    import zipfile
    from pathlib import Path

    import pandas as pd
    import tifffile

    def content(path: Path):
        if path.suffix == ".tif":
            return tifffile.imread(path).tolist()
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as zf:
                return {name: zf.read(name) for name in zf.namelist()}
        if path.name.endswith(".done.json"):
            record = json.loads(path.read_text())
            record.pop("finished")
            return record
        if path.name in ("summary.csv", "slices.csv"):
            return pd.read_csv(path).drop(columns="seconds").to_json()  # (NaN == NaN)
        return path.read_bytes()

    out = Path(out)
    return {p.relative_to(out).as_posix(): content(p) for p in sorted(out.rglob("*")) if p.is_file()}


def write_outlines(folder: Path, n: int = 8, size: int = 32, seed: int = 0) -> Path:
    """Write ``n`` particle outlines centred on ``size`` x ``size`` canvases, as the workflow takes them."""
    import tifffile

    from particleseg.simulate import random_particle

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        m, _ = random_particle(rng, rng.uniform(10, 18))
        c = np.zeros((size, size), np.uint8)
        h, w = m.shape
        c[(size - h) // 2 : (size - h) // 2 + h, (size - w) // 2 : (size - w) // 2 + w] = m * 255
        tifffile.imwrite(folder / f"outline{i:02d}.tif", c)
    return folder


def write_images(folder: Path, n: int = 3, shape=(96, 96), dtype=np.uint8) -> Path:
    """Write ``n`` simulated SEM micrographs (TIFF) as the from-scratch workflow takes them."""
    import tifffile

    from particleseg.simulate import simulate_sem_image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = simulate_sem_image(shape, i, particle_size=14.0, coverage=0.3).image
        tifffile.imwrite(folder / f"image{i}.tif", img.astype(dtype))
    return folder
