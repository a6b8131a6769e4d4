"""Documentation that cannot rot: every fenced code block of the documents is run.

Every fenced code block of README.md and docs/*.md is run, as written, on the sample image and
tiny data.

* ``bash``/``sh`` blocks run with ``bash -e`` (each command must succeed) in a working folder
  per document, with the virtual environment first on the PATH; ``python`` blocks run in a
  subprocess there; ``ijm`` blocks (ImageJ macros) run in the real ImageJ 1.x through
  ``particleseg fiji run-macro`` (a macro error is exit status 1). ``text`` blocks are output,
  diagrams and synopses; they are not run, but one marked ``output`` must equal what the block
  before it printed. A block without a language fails the test: every block says what it is.
* The blocks of one document share its working folder and run in the order of the document
  (a block that uses what an earlier one wrote gets it; selecting one block runs the earlier
  ones first).
* The user's files the documents name (``images/``, ``a.tif``, ``data/images``, ``/data/sem``,
  ``/path/to/Fiji.app``, ...) are made by the small, explicit fixtures below (``SETUP``,
  ``PLACEHOLDERS``), from the sample image and tiny simulated data.
* HTML comments right above a block change how it is run, visibly in the Markdown:
  ``<!-- doc-test: skip REASON -->`` (cannot run here: hours of training, licensed data),
  ``<!-- doc-test: drop "LINE START" REASON -->`` (leave out the lines that start so),
  ``<!-- doc-test: replace "OLD" "NEW" -->`` (a tiny-scale override; OLD must be in the block),
  ``<!-- doc-test: env KEY=VALUE -->``, ``<!-- doc-test: setup NAME -->`` (an ImageJ macro
  prelude from ``MACRO_SETUP``, e.g. the image the block works on), ``<!-- doc-test: creates
  PATH ... -->`` (files the block must have written) and ``<!-- doc-test: output -->``.

Selected with ``-m docs``; the documents whose blocks train networks (at a tiny scale) are also
marked ``slow``: ``-m "docs and not slow"`` is the quick part.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO as ROOT

SAMPLE = ROOT / "python" / "particleseg" / "data" / "sample_sem.tif"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
IJ_JAR = os.environ.get("PARTICLESEG_IJ_JAR", "/usr/share/java/ij.jar")
HAVE_IMAGEJ = bool(
    Path(IJ_JAR).is_file()
    and (os.environ.get("JAVA_HOME") or shutil.which("java"))
    and (os.environ.get("DISPLAY") or shutil.which("Xvfb"))
)

pytestmark = pytest.mark.docs

RUN = {"bash": "bash", "sh": "bash", "python": "python", "ijm": "ijm"}
NOT_RUN = {"text"}
BLOCK_TIMEOUT = 900

# Repository entries the blocks use by relative path, as when run from the repository root
# (linked, not copied; no block that is run writes into them).
LINKED = (
    "models",
    "python",
    "scripts",
    "fiji-scripts",
    "benchmarks",
    "run",
    "pyproject.toml",
    "constraints.txt",
    "environment.yml",
)

# Paths in the documents that stand for the user's folders.
PLACEHOLDERS = [
    (re.compile(r"/path/to/Fiji\.app|/path/Fiji\.app"), "{work}/Fiji.app"),
    (re.compile(r"(?<![\w.])/data/"), "{work}/data/"),
]


# --------------------------------------------------------------------------------------------
# the blocks


@dataclass
class Block:
    doc: Path
    index: int  # position among the document's blocks
    line: int  # line of the opening fence
    lang: str
    code: str
    markers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}:{self.lang or 'untagged'}"

    def marker(self, key: str) -> list[str]:
        return [rest for k, rest in self.markers if k == key]


FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")


def parse_blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        markers, j = [], i - 1
        while j >= 0 and MARKER.match(lines[j]):
            markers.insert(0, MARKER.match(lines[j]).groups())
            j -= 1
        body = []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{doc.name}:{start + 1}: code block never closed")
        blocks.append(Block(doc, len(blocks), start + 1, lang, "\n".join(body) + "\n", markers))
        i += 1
    return blocks


ALL_BLOCKS = [b for doc in DOCS for b in parse_blocks(doc)]


# --------------------------------------------------------------------------------------------
# the user's files the documents name


def _sem_crop(dst: Path, top: int = 256, left: int = 256, size: int = 512) -> Path:
    """Write a ``size``-pixel square of the sample image: a user's SEM image, four times faster to segment.

    The square keeps its data bar when it reaches the bottom, and the calibration.
    """
    from particleseg.io import read_image, write_tiff

    image, cal = read_image(SAMPLE)
    return write_tiff(dst, image[top : top + size, left : left + size], cal)


def _training_data(folder: Path, n: int = 4, size: int = 160) -> None:
    """Write ``folder/images/simI.tif`` and ``folder/masks/simI_labels.tif``.

    As docs/training.md says its smoke run was made (fewer and smaller images).
    """
    from particleseg.io import write_tiff
    from particleseg.simulate import simulate_sem_image

    for i in range(n):
        sim = simulate_sem_image((size, size), i, particle_size=20.0, coverage=0.3, empty_fraction=0.0)
        write_tiff(folder / "images" / f"sim{i}.tif", sim.image)
        write_tiff(folder / "masks" / f"sim{i}_labels.tif", sim.labels.astype(np.uint16))


def setup_readme(work: Path) -> None:
    from PIL import Image

    from particleseg.io import read_image, write_tiff

    image, cal = read_image(SAMPLE)
    _sem_crop(work / "images" / "sem_1.tif", 256, 0)  # a user's folder of SEM images
    _sem_crop(work / "images" / "sem_2.tif", 256, 512)
    write_tiff(work / "a.tif", image[:512, 256:768], cal)
    Image.fromarray(image[:512, :512]).save(work / "b.png")  # no metadata: --image-width gives the scale
    write_tiff(work / "stack.tif", np.stack([image[:384, :384], image[300:684, 400:784]]), cal)
    _training_data(work / "data")  # the fine-tuning example's images and masks


def setup_training(work: Path) -> None:
    import tifffile

    _training_data(work / "data")
    _sem_crop(work / "new-images" / "sem.tif")
    # the classifier example: images, masks and the expert's keep masks (every other particle)
    shutil.copytree(work / "data" / "images", work / "img")
    shutil.copytree(work / "data" / "masks", work / "masks")
    for f in sorted((work / "masks").glob("*.tif")):
        labels = tifffile.imread(f)
        keep = np.isin(labels, np.unique(labels)[2::2])
        (work / "keep_masks").mkdir(exist_ok=True)
        tifffile.imwrite(work / "keep_masks" / f.name, (keep * 255).astype(np.uint8))


def setup_fiji(work: Path) -> None:
    (work / "Fiji.app" / "scripts").mkdir(parents=True)
    for name, left in (("sem_1.tif", 0), ("sem_2.tif", 512)):
        _sem_crop(work / "data" / "sem" / name, 384, left, 384)


def setup_metrics(work: Path) -> None:
    """Make ``results/`` of `particleseg segment` (a probability map) and the manual masks.

    The masks are those the command names, ``../shared/datasets/tio2-sem/masks`` (drawn disks).
    """
    from scipy import ndimage as ndi

    from conftest import draw_disks
    from particleseg.io import write_tiff

    _, labels = draw_disks((160, 160), [(40, 40, 18), (40, 78, 18), (110, 100, 25)])
    truth = ((labels > 0) & (ndi.grey_erosion(labels, size=3) == ndi.grey_dilation(labels, size=3))) * 255
    prob = ndi.gaussian_filter((np.roll(labels, 2, axis=1) > 0).astype(np.float32), 2)
    write_tiff(work / "results" / "disks_prob.tif", prob.astype(np.float32))
    write_tiff(work.parent / "shared" / "datasets" / "tio2-sem" / "masks" / "disks_m.tif", truth.astype(np.uint8))


def setup_from_scratch(work: Path) -> None:
    """``micrographs/`` and ``outlines/`` as the from-scratch tests make them (``conftest.write_images``)."""
    from conftest import write_images, write_outlines

    write_images(work / "micrographs")
    write_outlines(work / "outlines", n=12)
    _sem_crop(work / "new-images" / "sem.tif")


SETUP = {
    "README.md": setup_readme,
    "training.md": setup_training,
    "fiji.md": setup_fiji,
    "metrics.md": setup_metrics,
    "from-scratch.md": setup_from_scratch,
}

# ImageJ macro preludes a block names with ``<!-- doc-test: setup NAME -->``.
MACRO_SETUP = {
    # the SEM image the block's commands work on
    "sem": 'open("{work}/sem.tif");\n',
    # ... and what Segment Particles... made of it, with the mask saved as sem_mask.tif
    "sem-segmented": (
        'open("{work}/sem.tif");\n'
        'run("Segment Particles...", "model=default probability labels mask");\n'
        'selectImage("sem_mask"); saveAs("Tiff", "{work}/sem_mask.tif");\n'
    ),
}


# --------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float = 0.0
    skipped: str = ""


class Workspace:
    """The working folder of one document and the outcomes of its blocks so far."""

    def __init__(self, doc: Path, root: Path):
        self.doc = doc
        self.work = root / "work"
        self.work.mkdir(parents=True)
        for name in LINKED:
            if (ROOT / name).exists():
                (self.work / name).symlink_to(ROOT / name)
        self._link_venv()
        _sem_crop(self.work / "sem.tif")
        if doc.name in SETUP:
            SETUP[doc.name](self.work)
        self.blocks = [b for b in ALL_BLOCKS if b.doc == doc]
        self.outcomes: dict[int, Outcome] = {}

    def _link_venv(self) -> None:
        """Make ``.venv``: the test's environment, entry by entry, with its own stamp.

        The stamp says that the declared dependencies are installed, so that ``./run demo``
        uses it as it is (``run`` compares the stamp with a hash of pyproject.toml and
        constraints.txt). Its
        ``bin/python`` refuses ``-m pip``: a block must never reinstall into the environment
        the tests run in (pip would rewrite its scripts to point into this temporary folder).
        """
        import hashlib

        venv, real = self.work / ".venv", VENV_BIN.parent
        venv.mkdir()
        for entry in real.iterdir():
            if entry.name not in (".particleseg-installed", "bin"):
                (venv / entry.name).symlink_to(entry)
        (venv / "bin").mkdir()
        for entry in VENV_BIN.iterdir():
            if entry.name != "python":
                (venv / "bin" / entry.name).symlink_to(entry)
        guard = venv / "bin" / "python"
        guard.write_text(
            '#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ]; then\n'
            '    echo "doc test: refusing to install into the environment the tests run in" >&2; exit 99\nfi\n'
            f'exec "{VENV_BIN / "python"}" "$@"\n'
        )
        guard.chmod(0o755)
        digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes())
        (venv / ".particleseg-installed").write_text(digest.hexdigest() + "\n")

    def env(self, block: Block) -> dict:
        env = {
            **os.environ,
            "PATH": f"{self.work / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(VENV_BIN.parent),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "MPLBACKEND": "Agg",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("PYTHONPATH", None)
        for rest in block.marker("env"):
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
        return env

    def code(self, block: Block) -> str:
        code = block.code
        for rest in block.marker("drop"):
            quoted = re.match(r'"([^"]+)"', rest)
            assert quoted, f'{block.id}: drop marker needs "LINE START" REASON: {rest!r}'
            prefix = quoted.group(1)
            kept = [line for line in code.splitlines() if not line.lstrip().startswith(prefix)]
            assert len(kept) < len(code.splitlines()), (
                f"{block.id}: drop marker {prefix!r}: no such line (stale marker)"
            )
            code = "\n".join(kept) + "\n"
        for rest in block.marker("replace"):
            args = shlex.split(rest)
            assert len(args) == 2, f'{block.id}: replace marker needs "OLD" "NEW": {rest!r}'
            assert args[0] in code, f"{block.id}: replace marker: {args[0]!r} is not in the block (stale marker)"
            code = code.replace(*args)
        for pattern, repl in PLACEHOLDERS:
            code = pattern.sub(repl.format(work=self.work).replace("\\", "\\\\"), code)
        if block.lang == "ijm":
            prelude = "".join(MACRO_SETUP[name.strip()].format(work=self.work) for name in block.marker("setup"))
            code = prelude + code
        return code

    def run(self, block: Block) -> Outcome:
        import time

        if block.index in self.outcomes:
            return self.outcomes[block.index]
        for earlier in self.blocks[: block.index]:  # blocks use what earlier ones wrote
            if earlier.lang in RUN and earlier.index not in self.outcomes:
                self.run(earlier)
        skip = block.marker("skip")
        if skip:
            self.outcomes[block.index] = Outcome(0, "", "", skipped=skip[0])
            return self.outcomes[block.index]
        code = self.code(block)
        scripts = self.work.parent / "blocks"
        scripts.mkdir(exist_ok=True)
        stem = f"{block.line:04d}"
        if RUN[block.lang] == "bash":
            path = scripts / f"{stem}.sh"
            path.write_text(code)
            cmd = ["bash", "-e", "-o", "pipefail", str(path)]
        elif RUN[block.lang] == "python":
            path = scripts / f"{stem}.py"
            path.write_text(code)
            cmd = [str(VENV_BIN / "python"), str(path)]
        else:
            path = scripts / f"{stem}.ijm"
            path.write_text(code)
            cmd = [str(VENV_BIN / "particleseg"), "fiji", "run-macro", str(path)]
        t0 = time.perf_counter()
        # its own process group: a block that runs past the timeout is ended with every process
        # it started (killing bash alone left its particleseg running on, orphaned)
        p = subprocess.Popen(
            cmd,
            cwd=self.work,
            env=self.env(block),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            stdout, stderr = p.communicate(timeout=BLOCK_TIMEOUT)
            outcome = Outcome(p.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            _kill_group(p)
            stdout, _ = p.communicate()
            outcome = Outcome(-1, stdout, f"timed out after {BLOCK_TIMEOUT} s")
        except BaseException:  # Ctrl-C (which no longer reaches the block) or pytest-timeout
            _kill_group(p)
            raise
        outcome.seconds = time.perf_counter() - t0
        self.outcomes[block.index] = outcome
        return outcome


def _kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory):
    spaces: dict[Path, Workspace] = {}

    def get(doc: Path) -> Workspace:
        if doc not in spaces:
            spaces[doc] = Workspace(doc, tmp_path_factory.mktemp(doc.stem))
        return spaces[doc]

    return get


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


# --------------------------------------------------------------------------------------------
# the tests


def test_the_documents_have_blocks_and_every_block_says_its_language():
    assert len(DOCS) >= 8 and len(ALL_BLOCKS) >= 30
    unknown = [b.id for b in ALL_BLOCKS if b.lang not in RUN and b.lang not in NOT_RUN]
    assert not unknown, f"blocks without a known language (bash, sh, python, ijm, text): {unknown}"
    known = {"skip", "drop", "replace", "env", "setup", "creates", "output"}
    bad = [(b.id, k) for b in ALL_BLOCKS for k, _ in b.markers if k not in known]
    assert not bad, f"unknown doc-test markers: {bad}"
    for b in ALL_BLOCKS:
        for name in b.marker("setup"):
            assert name.strip() in MACRO_SETUP, f"{b.id}: unknown setup {name!r}"
        if b.marker("skip"):
            assert len(b.marker("skip")[0]) > 10, f"{b.id}: a skip needs its reason"
        if b.marker("output"):
            assert b.lang == "text" and b.index > 0, f"{b.id}: output marks a text block after a block that prints"


RUNNABLE = [b for b in ALL_BLOCKS if b.lang in RUN]
# Documents with a block that trains a network (at tiny scale) are also marked slow: their
# blocks run one after the other, so each of them may train first.
TRAINS = re.compile(r"\btrain\b|train[-_]|Train Model")
SLOW_DOCS = {b.doc for b in RUNNABLE if not b.marker("skip") and TRAINS.search(b.code)}


@pytest.mark.timeout(2 * BLOCK_TIMEOUT)  # may run the earlier blocks of its document first
@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if b.doc in SLOW_DOCS else []) for b in RUNNABLE],
    ids=[b.id for b in RUNNABLE],
)
def test_block_runs_as_written(block, workspaces):
    if block.marker("skip"):
        pytest.skip(f"{block.id}: {block.marker('skip')[0]}")
    if block.lang == "ijm" or "particleseg fiji" in block.code or "from particleseg import fiji" in block.code:
        if not HAVE_IMAGEJ:
            pytest.skip("needs ImageJ 1.x (libij-java), Java and Xvfb")
    space = workspaces(block.doc)
    out = space.run(block)
    assert out.returncode == 0, (
        f"{block.id} failed (exit status {out.returncode}, {out.seconds:.0f} s) as written:\n{block.code}\n"
        f"--- run as:\n{space.code(block)}\n--- stdout:\n{_tail(out.stdout)}\n--- stderr:\n{_tail(out.stderr)}"
    )
    for rest in block.marker("creates"):
        for rel in shlex.split(rest):
            assert (space.work / rel).exists(), f"{block.id}: the block should have written {rel}"
    after = space.blocks[block.index + 1] if block.index + 1 < len(space.blocks) else None
    if after is not None and after.marker("output"):
        assert out.stdout.strip() == after.code.strip(), (
            f"{after.id}: the documented output differs from what {block.id} printed:\n{out.stdout}"
        )


def test_a_second_segment_into_the_same_folder_adds_to_its_summary(workspaces):
    """README's segmenting examples write three batches into one results/ folder.

    summary.csv lists every image of all three.
    """
    import pandas as pd

    block = next((b for b in RUNNABLE if b.doc.name == "README.md" and "particleseg segment images/" in b.code), None)
    if block is None:
        pytest.fail("README.md no longer segments images/ into results/: update this test")
    space = workspaces(block.doc)
    if space.run(block).returncode != 0:
        pytest.fail(f"{block.id} failed; see test_block_runs_as_written")
    summary = pd.read_csv(space.work / "results" / "summary.csv")
    assert sorted(summary["file"]) == ["a.tif", "b.png", "sem_1.tif", "sem_2.tif", "stack.tif"]
    assert (summary["status"] == "ok").all()


def test_a_later_batch_adds_replaces_or_keeps_summary_rows():
    """The rule README.md states for summary.csv.

    Rows of earlier batches stay, an image segmented again replaces its row, an image refused
    because its outputs exist keeps it.
    """
    import pandas as pd

    from particleseg.pipeline import merge_summary

    earlier = pd.DataFrame({"file": ["a.tif", "b.tif"], "status": ["ok", "ok"], "error": ["", ""], "count": [3, 4]})
    again = pd.DataFrame({"file": ["b.tif", "c.tif"], "status": ["ok", "ok"], "error": ["", ""], "count": [5, 6]})
    merged = merge_summary(earlier, again)
    assert merged["file"].tolist() == ["a.tif", "b.tif", "c.tif"] and merged["count"].tolist() == [3, 5, 6]
    refused = pd.DataFrame({"file": ["a.tif"], "status": ["failed"], "error": ["a_labels.tif: output exists"]})
    kept = merge_summary(earlier, refused, keep_earlier=["a.tif"])
    assert kept["status"].tolist() == ["ok", "ok"] and kept["count"].tolist() == [3, 4]
    broken = merge_summary(earlier, refused.assign(error="a.tif: cannot read"))
    assert broken.set_index("file").loc["a.tif", "status"] == "failed"
    assert merge_summary(None, again) is again
