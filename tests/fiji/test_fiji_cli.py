"""``particleseg fiji ...`` in subprocesses.

Headless batch runs over a folder with a real ImageJ 1.x, and the one-line errors for a missing
Java, a missing display and a Fiji that pyimagej cannot start (each needs its own process: one JVM
per process).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO as ROOT
from particleseg.io import Calibration, write_tiff
from particleseg.pipeline import AUGMENT_NOTE

IJ_JAR = os.environ.get("PARTICLESEG_IJ_JAR", "/usr/share/java/ij.jar")
EXAMPLES = ROOT / "fiji-scripts" / "Plugins" / "Particle Segmentation" / "Examples"

needs_imagej = pytest.mark.skipif(
    not (
        Path(IJ_JAR).is_file()
        and (os.environ.get("JAVA_HOME") or shutil.which("java"))
        and (os.environ.get("DISPLAY") or shutil.which("Xvfb"))
    ),
    reason="needs ImageJ 1.x (libij-java), Java and Xvfb",
)


def particleseg(*args, env=None, timeout=300):
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    for k, v in list(environ.items()):
        if v is None:
            del environ[k]
    return subprocess.run(
        [sys.executable, "-m", "particleseg", *map(str, args)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=timeout,
    )


def one_error_line(result) -> str:
    """Check that the process failed with exactly one error line, and no traceback."""
    assert result.returncode == 1, result.stderr
    lines = [s for s in result.stderr.splitlines() if s.strip()]
    errors = [s for s in lines if s.startswith("particleseg: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    return errors[0]


@pytest.fixture
def macro(tmp_path):
    m = tmp_path / "hello.ijm"
    m.write_text('print("hello");\n')
    return m


@pytest.mark.imagej
@needs_imagej
def test_run_macro_per_image_goes_on_past_a_bad_image(tmp_path, rng, tiny_bundle):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    yy, xx = np.mgrid[:80, :100]
    for i in range(3):
        img = (rng.random((80, 100)) * 80).astype(np.uint8)
        for cy, cx in rng.integers(15, 65, size=(4, 2)):
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 230
        write_tiff(src / f"sem_{i}.tif", img, Calibration(4.0, "nm"))
    write_tiff(src / "flat.tif", np.full((50, 50), 3, np.uint8))
    (src / "notes.txt").write_text("not an image")
    r = particleseg(
        "fiji",
        "run-macro",
        EXAMPLES / "Segment_This_Image.ijm",
        "--ij-jar",
        IJ_JAR,
        "--input",
        src,
        "--output",
        out,
        f"model={tiny_bundle.path}",
        "threshold=0.5",
        "crop_rows=0",
        "min_size=4",
        "augment=true",
    )
    assert r.returncode == 1, r.stderr  # one image failed
    summary = pd.read_csv(out / "run-macro-summary.csv")
    assert list(summary["file"]) == ["flat.tif", "sem_0.tif", "sem_1.tif", "sem_2.tif"]
    assert list(summary["status"]) == ["failed", "ok", "ok", "ok"]
    assert summary["error"].iloc[0].startswith("Segment Particles...: flat.tif: image is constant")
    for i in range(3):
        assert (out / f"sem_{i}_labels.tif").is_file() and (out / f"sem_{i}_particles.csv").is_file()
    assert "run-macro: Segment_This_Image.ijm: 3 of 4 image(s) ok, 1 failed" in r.stderr
    assert "4/4" in r.stderr  # the progress bar
    assert "Segment Particles: sem_2.tif:" in r.stdout  # ImageJ's Log, one line per image
    assert r.stdout.count(AUGMENT_NOTE) == 3  # and the average over orientations, for each image done


@pytest.mark.imagej
@needs_imagej
def test_run_macro_once_reports_a_macro_error_and_fails(tmp_path):
    m = tmp_path / "bad.ijm"
    m.write_text('newImage("x", "8-bit ramp", 64, 64, 1);\nrun("Segment Particles...", "treshold=0.5");\n')
    r = particleseg("fiji", "run-macro", m, "--ij-jar", IJ_JAR)
    assert r.returncode == 1
    assert 'run-macro: bad.ijm: failed (Segment Particles...: unknown option "treshold"' in r.stderr
    assert "(line 2)" in r.stderr and "Traceback" not in r.stderr


def test_java_not_found(macro, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    r = particleseg("fiji", "run-macro", macro, "--ij-jar", IJ_JAR, env={"JAVA_HOME": None, "PATH": str(empty)})
    assert one_error_line(r).startswith("particleseg: error: Java not found: no JAVA_HOME and no java on the PATH")
    r = particleseg("fiji", "run-macro", macro, env={"JAVA_HOME": str(tmp_path)})
    assert "JAVA_HOME does not contain bin/java" in one_error_line(r)


@pytest.mark.skipif(not (os.environ.get("JAVA_HOME") or shutil.which("java")), reason="Java not found")
def test_no_display(macro, tmp_path):
    from particleseg.fiji.environment import find_java

    java_home = str(find_java())
    empty = tmp_path / "bin"
    empty.mkdir()
    r = particleseg(
        "fiji",
        "run-macro",
        macro,
        "--ij-jar",
        IJ_JAR,
        env={"DISPLAY": None, "JAVA_HOME": java_home, "PATH": str(empty)},
    )
    assert one_error_line(r).startswith("particleseg: error: no display: DISPLAY is not set and Xvfb is not installed")


@pytest.mark.imagej
@needs_imagej
def test_unreachable_display(macro):
    r = particleseg("fiji", "run-macro", macro, "--ij-jar", IJ_JAR, env={"DISPLAY": ":4093"})
    line = one_error_line(r)
    assert line.startswith("particleseg: error: no display: Java cannot open the X display ':4093'")
    assert "java.awt" not in line


@pytest.mark.imagej
@needs_imagej
def test_fiji_that_pyimagej_cannot_start(macro, tmp_path):
    """The real pyimagej path with a local folder fails in one line.

    pyimagej puts its jars on the class path and starts Java; this folder has ImageJ 1.x but not
    ImageJ2, so starting fails, in one line.
    """
    # find_spec, not importorskip: importing imagej in a process whose JVM is already running
    # (the in-process ImageJ tests) fails; the command below runs in its own process anyway
    if importlib.util.find_spec("imagej") is None:
        pytest.skip("pyimagej is not installed")
    fiji = tmp_path / "Fiji.app"
    (fiji / "jars").mkdir(parents=True)
    (fiji / "plugins").mkdir()
    shutil.copy(IJ_JAR, fiji / "jars" / "ij-1.53t.jar")
    for name in ("imagej-legacy-0.0.jar", "imglib2-imglyb-0.0.jar"):
        with zipfile.ZipFile(fiji / "jars" / name, "w") as zf:
            zf.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
    r = particleseg("fiji", "run-macro", macro, "--fiji", fiji)
    line = one_error_line(r)
    assert f"cannot start Fiji through pyimagej from {fiji}" in line
    r = particleseg("fiji", "run-macro", macro, "--fiji", tmp_path / "Elsewhere.app")
    assert "Elsewhere.app: Fiji folder not found" in one_error_line(r)
    r = particleseg("fiji", "run-macro", macro, "--fiji", fiji, "--ij-jar", IJ_JAR)
    assert "either --fiji or --ij-jar" in one_error_line(r)


def test_install_and_missing_macro(tmp_path, macro):
    fiji = tmp_path / "Fiji.app"
    (fiji / "jars").mkdir(parents=True)
    r = particleseg("fiji", "install", "--fiji", fiji)
    assert r.returncode == 0, r.stderr
    assert (fiji / "scripts" / "Plugins" / "Particle Segmentation" / "Segment_Particles....py").is_file()
    assert "already up to date" in r.stdout
    r = particleseg("fiji", "run-macro", tmp_path / "missing.ijm", "--ij-jar", IJ_JAR)
    assert "missing.ijm: macro file not found" in one_error_line(r)
    r = particleseg("fiji", "run-macro", macro, "--input", tmp_path / "nowhere")
    assert "nowhere: input folder not found" in one_error_line(r)


@pytest.mark.imagej
@needs_imagej
def test_check_starts_imagej_and_lists_models(tiny_bundle):
    r = particleseg(
        "fiji", "check", "--ij-jar", IJ_JAR, "--start", env={"PARTICLESEG_MODELS": str(Path(tiny_bundle.path).parent)}
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   imagej" in r.stdout and "ok   started" in r.stdout
    # the test's folder comes first on the search path, then the repository's shipped bundles
    from particleseg.models import list_bundles

    names = ", ".join(sorted(list_bundles()))
    assert "tiny" not in names
    line = next(s for s in r.stdout.splitlines() if "Models:" in s)
    assert "Models: " in line and "installed: tiny" in line
    listed = line.split("installed: ", 1)[1].split(" (searched")[0].split(", ")
    assert listed[0] == "tiny" and sorted(listed[1:]) == sorted(list_bundles())


# A Python script that uses ImageJ and returns: Java's garbage collector runs through the whole
# exit (a macro calls System.gc() every 2 ms on its own Java thread), so every Java object that
# holds a Python object (the image's NumPy buffer, the bridge's listeners) is freed while Python
# finalizes, through JPype's reference queue thread. Before that thread was stopped at exit
# (environment._stop_reference_queue) this aborted every time after all the work was done
# ("FATAL: exception not rethrown", exit status -6); without the macro, in about half of the
# whole-suite runs of docs/fiji.md's Python example.
EXIT_SCRIPT = r"""
import sys
import numpy as np
from particleseg import fiji
ij = fiji.start(ij_jar=sys.argv[1])
imp = ij.show(np.zeros((64, 64), np.uint8), None, "blank")
import scyjava
scyjava.jimport("ij.macro.MacroRunner")('while (true) {call("java.lang.System.gc"); wait(2);}')
print("done")
"""


@pytest.mark.imagej
@needs_imagej
def test_a_script_exits_cleanly_while_java_collects_garbage(tmp_path):
    script = tmp_path / "exit.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(2):  # it aborted 4 of 4 times before the fix
        r = subprocess.run(
            [sys.executable, str(script), IJ_JAR],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            cwd=tmp_path,
        )
        assert r.returncode == 0 and r.stdout.strip().endswith("done"), r.stdout + r.stderr
        assert "FATAL" not in r.stderr, r.stderr


GUI_SCRIPT = r"""
import os, sys, time
os.environ.pop("DISPLAY", None)  # a private Xvfb plays the desktop
from particleseg import fiji
from particleseg.fiji.bridge import dialog_text
session = fiji.start(ij_jar=sys.argv[1], mode="gui")
import scyjava
J = scyjava.jimport
IJ, Menus, WM = J("ij.IJ"), J("ij.Menus"), J("ij.WindowManager")
ActionEvent, Window, Dialog = J("java.awt.event.ActionEvent"), J("java.awt.Window"), J("java.awt.Dialog")
plugins = Menus.getImageJMenu("Plugins")
sub = [plugins.getItem(i) for i in range(plugins.getItemCount()) if str(plugins.getItem(i).getLabel()) == "Particle Segmentation"][0]
items = [str(sub.getItem(i).getLabel()) for i in range(sub.getItemCount())]
print("ITEMS", "|".join(items))

def click(label):
    item = sub.getItem(items.index(label))
    IJ.getInstance().actionPerformed(ActionEvent(item, ActionEvent.ACTION_PERFORMED, label))

def wait(cond, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    return None

click("Models...")
print("MODELS_WINDOW", wait(lambda: WM.getWindow("Models")) is not None)
click("Segment Particles...")  # no image open: an ImageJ error dialog, not a trace
d = wait(lambda: next((w for w in Window.getWindows() if isinstance(w, Dialog) and w.isVisible()), None))
print("DIALOG", str(d.getTitle()), "|", dialog_text(d))
d.dispose()
sys.stdout.flush()
os._exit(0)
"""  # noqa: E501 - the script as it runs


@pytest.mark.imagej
@pytest.mark.skipif(
    not (Path(IJ_JAR).is_file() and shutil.which("Xvfb") and (os.environ.get("JAVA_HOME") or shutil.which("java"))),
    reason="needs ImageJ 1.x, Java and Xvfb",
)
def test_gui_menu_lists_the_commands_and_errors_are_dialogs(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-c", GUI_SCRIPT, IJ_JAR], capture_output=True, text=True, env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    out = dict(
        line.split(" ", 1)
        for line in r.stdout.splitlines()
        if line.split(" ", 1)[0] in ("ITEMS", "MODELS_WINDOW", "DIALOG")
    )
    from particleseg.fiji.options import COMMAND_NAMES

    assert out["ITEMS"].split("|") == list(COMMAND_NAMES)
    assert out["MODELS_WINDOW"] == "True"
    assert out["DIALOG"] == "Segment Particles | no image open (open an image first, e.g. File > Open...)"
