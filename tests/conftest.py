"""Shared fixtures. Tests that need the licensed TiO2 data skip with a clear reason without it."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


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


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """An untrained 2-level UNet bundle with foreground and distance heads (fast to run)."""
    import keras

    from particleseg.models import Head, NetworkConfig, build_network, make_metadata, save_bundle

    keras.utils.set_random_seed(0)
    cfg = NetworkConfig("unet", heads=(Head("foreground"), Head("distance")), depth=2, base_filters=4)
    meta = make_metadata("tiny", cfg, tile=64, overlap=8, description="untrained test network")
    return save_bundle(tmp_path_factory.mktemp("bundles") / "tiny", build_network(cfg), meta)
