"""Smoke test of the benchmark runner (benchmarks/run.py).

It runs and writes a report with every section. Benchmarks are not tests: nothing here looks at
a timing.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO

RUN = REPO / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def runner():
    spec = importlib.util.spec_from_file_location("benchmarks_run", RUN)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_quick_report_structure(runner, tiny_bundle, tmp_path):
    out = tmp_path / "REPORT.md"
    rc = runner.main(
        [
            "--quick",
            "--only",
            "inference,postprocess,evaluation,gpu",
            "--model",
            str(tiny_bundle.path),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = out.read_text()
    assert text.startswith("# particleseg benchmark report\n")
    for key in (
        "**Date**",
        "**Command**",
        "**Machine**",
        "**Accelerator**",
        "| python |",
        "| numpy |",
        "| keras |",
        "| keras backend |",
        "| particleseg |",
        "git ",
    ):
        assert key in text, key
    # every section has its heading; those run say how to reproduce them, the others how to run them
    for title in runner.TITLES.values():
        assert f"\n## {title}\n" in text
    for name in ("inference", "postprocess", "evaluation"):
        assert f"Reproduce: `python benchmarks/run.py --quick --only {name}" in text
    for name in ("memory", "sims", "accuracy"):
        assert f"Run it with `python benchmarks/run.py --only {name}`" in text
    assert "Mpx/s" in text and "/ untiled" in text
    assert "`measure_particles` / `regionprops_table`" in text
    assert "| **total** |" in text
    assert "KERAS_BACKEND=torch python benchmarks/run.py" in text
    assert "Failed" not in text and "in progress" not in text


def test_the_runner_keeps_the_sections_other_benchmarks_own(runner, tmp_path):
    """Replace the runner's own sections on a rerun, keep those other benchmarks own.

    bench_startup_batch, bench_dask and bench_memory report into the same file.
    """
    out = tmp_path / "REPORT.md"
    foreign = (
        "<!-- bench_startup_batch: begin -->\n## Start time and batch CPU use\n\nstart figures\n"
        "<!-- bench_startup_batch: end -->\n\n## Memory end to end\n\nmemory figures\n"
    )
    runner.write_report(out, "# particleseg benchmark report\n\n## Summary\n\nold\n")
    out.write_text(out.read_text() + "\n" + foreign)
    runner.write_report(out, "# particleseg benchmark report\n\n## Summary\n\nnew\n\n## GPU\n\nnone\n")
    text = out.read_text()
    assert "old" not in text and "new" in text and text.count("## Summary") == 1
    assert text.endswith(foreign) and text.count("start figures") == 1
    assert runner.foreign_sections("# r\n\n## Summary\n\n## GPU\n") == ""


def test_bad_arguments(runner, tmp_path):
    with pytest.raises(SystemExit):
        runner.main(["--only", "nonsense", "--out", str(tmp_path / "R.md")])
    with pytest.raises(SystemExit):
        runner.main(["--bundle", "nopath", "--out", str(tmp_path / "R.md")])
    assert not (tmp_path / "R.md").exists()
