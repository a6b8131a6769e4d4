"""The package as users install it (issue 17): a wheel, not the checkout, carries the shipped
models and segments the sample image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("particleseg-*.whl")
    return whl


def test_wheel_contains_the_shipped_bundles(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in ("default", "sims-fcn"):
        assert f"particleseg/bundles/{bundle}/bundle.json" in names
        assert f"particleseg/bundles/{bundle}/model.keras" in names
    assert "particleseg/data/sample_sem.tif" in names


@pytest.mark.slow
def test_installed_wheel_segments_the_sample(wheel, tmp_path):
    """Install the wheel (without the checkout on the path) and segment its own sample image."""
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "PARTICLESEG_MODELS": ""}
    code = (
        "import particleseg, sys; from particleseg.cli import main; "
        "from importlib.resources import files; "
        f"assert particleseg.__file__.startswith({str(target)!r}), particleseg.__file__; "
        "sample = str(files('particleseg') / 'data' / 'sample_sem.tif'); "
        "assert main(['models', 'list']) == 0; "
        "sys.exit(main(['segment', sample, '--out', 'out', '--quiet']))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"from package: {target}" in r.stdout
    count = re.search(r"sample_sem.tif: (\d+) particles", r.stdout)
    assert count and int(count.group(1)) >= 50, r.stdout
    assert (tmp_path / "out" / "sample_sem_labels.tif").is_file()
