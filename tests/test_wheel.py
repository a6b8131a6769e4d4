"""The package as users install it (issue 17).

A wheel, not the checkout, carries the shipped models and segments the sample image.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO as ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    (whl,) = out.glob("particleseg-*.whl")
    return whl


def test_wheel_contains_the_shipped_bundles(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for bundle in ("default", "sims-fcn"):
        assert f"particleseg/bundles/{bundle}/bundle.json" in names
        assert f"particleseg/bundles/{bundle}/model.keras" in names
    assert "particleseg/data/sample_sem.tif" in names
    assert "particleseg/bundles/default/export/model.onnx" in names
    assert "particleseg/napari/napari.yaml" in names


def _fresh_venv(path: Path) -> Path:
    """Create a new virtual environment whose only particleseg is the one pip installs into it.

    The dependencies come from this environment's site-packages through a .pth line (no
    download), without its .pth files, so the checkout's editable install is not seen.
    """
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=300)
    py = path / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return py


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_segments_the_sample(wheel, tmp_path):
    """Pip installs the wheel into a new virtual environment.

    Its console script, its package data, its napari entry point; its ``particleseg`` segments
    the wheel's own sample image with the wheel's default model.

    """
    py = _fresh_venv(tmp_path / "venv")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PARTICLESEG_MODELS")}
    code = (
        "import particleseg, sys; from importlib.metadata import entry_points; "
        "from importlib.resources import files; "
        "print(particleseg.__file__); print(files('particleseg') / 'data' / 'sample_sem.tif'); "
        "(ep,) = [e for e in entry_points(group='napari.manifest') if e.name == 'particleseg']; "
        "print(ep.value, (files('particleseg.napari') / 'napari.yaml').is_file())"
    )
    r = subprocess.run([str(py), "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    package_file, sample, manifest = r.stdout.splitlines()
    venv = str(tmp_path / "venv")
    assert package_file.startswith(venv) and sample.startswith(venv), r.stdout
    assert manifest == "particleseg.napari:napari.yaml True"
    exe = tmp_path / "venv" / "bin" / "particleseg"
    r = subprocess.run([str(exe), "models", "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "from package: " + venv in r.stdout, r.stdout + r.stderr
    r = subprocess.run(
        [str(exe), "segment", sample, "--out", "out", "--quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    count = re.search(r"sample_sem.tif: (\d+) particles", r.stdout)
    assert count and int(count.group(1)) >= 50, r.stdout
    assert (tmp_path / "out" / "sample_sem_labels.tif").is_file()
