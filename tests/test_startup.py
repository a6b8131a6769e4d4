"""Issue 16 item 5: a fast start.

``import particleseg``, ``particleseg --help`` and ``particleseg segment --help`` load none of
the heavy libraries (checked in a fresh interpreter
through ``sys.modules``, never by a timing: the times are in benchmarks/bench_startup_batch.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: what a start must not load: the array and table stack, image libraries, plotting, networks
HEAVY = (
    "numpy",
    "pandas",
    "scipy",
    "skimage",
    "tifffile",
    "matplotlib",
    "onnxruntime",
    "tensorflow",
    "keras",
    "torch",
    "jax",
)


def _loaded_after(code: str) -> dict:
    """Run ``code`` in a fresh interpreter.

    Return the heavy top-level packages it left in ``sys.modules`` and what it printed.
    """
    probe = (
        "import contextlib, io, json, sys\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"{''.join('        ' + line + chr(10) for line in code.splitlines())}"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "print(json.dumps({'heavy': heavy, 'out': out.getvalue()}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["segment", "--help"], ["--version"], ["train-from-scratch", "--help"]])
def test_help_loads_no_heavy_library(argv):
    res = _loaded_after(f"from particleseg.cli import main\nmain({argv!r})")
    # train-from-scratch's help lists its stages, which live beside NumPy code: only that one may load it
    allowed = {"numpy", "scipy"} if argv[0] == "train-from-scratch" else set()
    assert set(res["heavy"]) <= allowed, res["heavy"]
    assert "usage: particleseg" in res["out"] or res["out"].startswith("particleseg 0.")
    if argv[0] == "train-from-scratch":
        text = " ".join(res["out"].split())
        assert "--redo STAGE" in text and "(shapes, masks, cyclegan, filter, segmentation)" in text


def test_import_particleseg_is_light_and_its_names_load_on_first_use():
    res = _loaded_after("import particleseg\nprint(particleseg.__version__, 'segment_files' in dir(particleseg))")
    assert res["heavy"] == [] and res["out"].split() == ["0.1.0", "True"]

    res = _loaded_after(
        "import particleseg\nfrom particleseg.models import ARCHITECTURES\n"
        "print(particleseg.SegmentParams.__module__, particleseg.load_bundle.__module__, 'unet' in ARCHITECTURES)"
    )
    assert res["out"].split() == ["particleseg.pipeline", "particleseg.models.bundle", "True"]
    assert {"numpy", "pandas"} <= set(res["heavy"])
    assert not {"tensorflow", "keras", "onnxruntime", "matplotlib"} & set(res["heavy"]), res["heavy"]

    res = _loaded_after("import particleseg\ntry:\n    particleseg.nothing\nexcept AttributeError as e:\n    print(e)")
    assert res["out"].strip() == "module 'particleseg' has no attribute 'nothing'"

    # a submodule named like a __future__ feature is the submodule (it once was the feature)
    res = _loaded_after("from particleseg import annotations\nprint(annotations.__name__)")
    assert res["out"].strip() == "particleseg.annotations"


def test_star_import_and_the_models_package_give_every_public_name():
    import particleseg
    import particleseg.models as models

    namespace: dict = {}
    exec("from particleseg import *", namespace)
    assert set(particleseg.__all__) <= set(namespace)
    assert namespace["segment_files"] is __import__("particleseg.pipeline").pipeline.segment_files
    for name in models.__all__:
        assert getattr(models, name) is not None, name
    with pytest.raises(AttributeError):
        models.nothing  # noqa: B018
