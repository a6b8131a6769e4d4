"""The Examples sections of the package's docstrings run as written (issue 18).

The metrics modules are checked in tests/metrics/test_metrics.py; every other module with examples is
listed here, so an example that no longer matches the code fails the suite.
"""

import doctest
import importlib

import pytest

MODULES = [
    "annotations",
    "autoscale",
    "distance",
    "errors",
    "inference",
    "interrupts",
    "io.rois",
    "measure",
    "models.receptive",
    "params",
    "pipeline",
    "postprocess",
    "preprocess",
    "scratch.renderer",
    "strips",
    "simulate",
    "fiji.options",
    "fiji.session",
    "train.loop",
    "train.scores",
    "train.targets",
]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run_as_written(module):
    mod = importlib.import_module(f"particleseg.{module}")
    res = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0, f"particleseg.{module} has no docstring examples"
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples of particleseg.{module} failed"


def test_every_module_with_examples_is_checked():
    """A module that gains an Examples section is added to MODULES (or to test_metrics)."""
    from pathlib import Path

    import particleseg

    root = Path(particleseg.__file__).parent
    with_examples = {
        ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if ">>> " in p.read_text(encoding="utf-8")
    }
    checked = set(MODULES) | {m for m in with_examples if m.startswith("metrics.")} | {"__init__"}
    assert with_examples - checked == set()
