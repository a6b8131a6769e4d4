"""The napari plugin (particleseg.napari).

Its npe2 manifest here, and the widget, reader and sample in a real headless napari in a child
process (tests/napari/napari_checks.py).

The child is a process of its own because TensorFlow, which other test files of this pytest worker
load (the Keras bundle fixtures), and Mesa's OpenGL, which napari's canvas loads, crash a process
that holds both (see napari_checks.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO as ROOT

pytest.importorskip("napari")
pytest.importorskip("npe2")


def test_manifest_declares_the_widget_reader_and_sample():
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("particleseg")
    c = manifest.contributions
    assert [w.display_name for w in c.widgets] == ["Segment particles"]
    assert c.widgets[0].command == "particleseg.segment"
    patterns = c.readers[0].filename_patterns
    assert {"*.dm3", "*.dm4", "*.emd", "*.mrc", "*.zarr"} <= set(patterns)
    assert [s.key for s in c.sample_data] == ["sample_sem"]
    # every command's python_name resolves
    for cmd in c.commands:
        module, attr = cmd.python_name.split(":")
        __import__(module)
        assert callable(getattr(sys.modules[module], attr)), cmd.python_name


@pytest.mark.skipif(
    not shutil.which("Xvfb"), reason="napari's canvas needs OpenGL, here from an Xvfb (apt-get install xvfb)"
)
def test_widget_reader_and_sample_in_headless_napari(tmp_path):
    """Run tests/napari/napari_checks.py in a headless napari of its own.

    The widget's fields and defaults, its labels against ``particleseg segment``'s, the threaded
    button, another bundle's defaults, the EM reader.
    """
    # without DISPLAY: the child starts an Xvfb of its own, whatever X server this worker's
    # earlier tests started (one, gone by then, failed every check: no OpenGL context)
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env.update({"QT_QPA_PLATFORM": "offscreen", "PYTHONDONTWRITEBYTECODE": "1"})
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "tests" / "napari" / "napari_checks.py"),
            "-n",
            "0",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:napari",
            "-W",
            "ignore::DeprecationWarning",
            "--basetemp",
            str(tmp_path / "basetemp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (r.stdout + r.stderr)[-6000:]
    assert r.returncode == 0, tail
    assert "5 passed" in r.stdout, tail


def test_keras_bundle_is_refused_in_one_line_where_tensorflow_would_crash_napari(monkeypatch):
    """A run needing TensorFlow where it would crash napari is refused in one line.

    In a napari whose Mesa OpenGL (LLVM) is loaded TensorFlow would crash it: one line instead,
    naming the ONNX export that avoids it; ONNX runs and loaded TensorFlow pass.
    """
    from types import SimpleNamespace

    from particleseg.errors import ParticlesegError
    from particleseg.napari import _widget
    from particleseg.pipeline import SegmentParams

    def fake(engine):
        return SimpleNamespace(
            label="mine", metadata={}, has_classifier=False, path=Path("."), engine=lambda requested: engine
        )

    params = SegmentParams()
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(_widget, "_llvm_loaded", lambda: True)
    with pytest.raises(ParticlesegError) as exc:
        _widget.check_keras_safe(fake("keras"), params)
    assert "\n" not in str(exc.value) and "particleseg models export mine --format onnx" in str(exc.value)
    _widget.check_keras_safe(fake("onnx"), params)
    monkeypatch.setattr(_widget, "_llvm_loaded", lambda: False)
    _widget.check_keras_safe(fake("keras"), params)
    monkeypatch.setitem(sys.modules, "tensorflow", SimpleNamespace())
    monkeypatch.setattr(_widget, "_llvm_loaded", lambda: True)
    _widget.check_keras_safe(fake("keras"), params)
