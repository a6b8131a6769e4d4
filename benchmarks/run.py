#!/usr/bin/env python
"""Every benchmark figure of particleseg in one run on this machine, written to a Markdown report.

    python benchmarks/run.py                      # default run (about 20-25 min on 2 busy CPU cores)
    python benchmarks/run.py --quick              # tiny sizes, few repeats (about 2 min): checks the runner
    python benchmarks/run.py --full               # SIMS figures on 2500 fields (adds a few minutes)
    python benchmarks/run.py --only inference,memory --out REPORT-gpu.md
    python benchmarks/run.py --bundle scratch=runs/scratch-cpu/bundle --only accuracy

Sections (``--only``/``--skip`` take comma-separated names):

* ``inference``: megapixels per second of the model (``--model``, default: the shipped default
  model) on a simulated 1024x768 SEM image; tiled against untiled inference on the same
  2048x2048 image (ratio, repeats interleaved).
* ``memory``: peak memory and speed against image size (1024^2, 2048^2, 4096^2), each size in a
  fresh subprocess with memory-mapped input and output, with a fixed 256-pixel tile and with the
  bundle's default tiling (the 4096x4096 speed figure).
* ``postprocess``: seconds per 1024x768 image with about 150 particles for
  ``particles_from_probabilities`` and ``measure_particles``, and ``measure_particles`` against
  scikit-image's ``regionprops_table`` (ratio).
* ``evaluation``: seconds per 1024x712 pair for each metric (``bench_metrics.measure``).
* ``sims``: SIMS fields per second, batched against one field per call
  (``bench_sims_throughput.measure``).
* ``gpu``: the accelerator seen by the Keras backend, and the command for the GPU figures.
* ``accuracy``: the 32 TiO2 images (``../shared/datasets/tio2-sem``, read in place): Li and
  Otsu threshold + distance-transform watershed, the model and any ``--bundle NAME=PATH``, per
  split, and the columns of the publication's Table 1 with the published rows.

Timings are medians of several repeats; comparisons are ratios of timings taken in the same run,
interleaved. Progress goes to stderr; the report is rewritten after each section.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

SECTIONS = ("inference", "memory", "postprocess", "evaluation", "sims", "gpu", "accuracy")
TITLES = {
    "inference": "Inference speed",
    "memory": "Memory and speed against image size",
    "postprocess": "Post-processing and measurement",
    "evaluation": "Evaluation metrics",
    "sims": "SIMS batch throughput",
    "gpu": "GPU",
    "accuracy": "Accuracy on the TiO2 SEM images",
}

# The publication's Table 1 (Rühle et al., Sci. Rep. 11, 4942 (2021)), six validation images,
# thresholds 0.0-1.0 in steps of 0.1, best value, watershed before scoring; as listed in
# ../shared/datasets/tio2-sem/README.md.
PUBLISHED = [
    ("cycleGAN generator (simulated)", [0.7373, 0.6111, 0.7681, 0.9098, 0.0014, 0.9526, 0.8476, 0.3298]),
    ("MultiRes UNet (simulated)", [0.8108, 0.6544, 0.8546, 0.7979, 0.0010, 0.9556, 0.8474, 0.3379]),
    ("MultiRes UNet (TSEM masks)", [0.8782, 0.6714, 0.9286, 0.0537, 0.0081, 0.8638, 0.7169, 0.2059]),
    ("MultiRes UNet (manual masks)", [0.9070, 0.7947, 0.9473, 0.0418, 0.0039, 0.1986, 0.1986, 0.0512]),
]
PUBLISHED_LATER = (
    "later release, Keras 3, simulated data only (IoU image, IoU instance, Youden)",
    [0.8762, 0.5750, 0.9120],
)

SIM_SEED = 1  # simulate_sem_image((768, 1024), rng=1, particle_size=28, coverage=0.14): 156 particles


# ------------------------------------------------------------------------------------------
# helpers


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress line on stderr with the elapsed time."""
    el = time.perf_counter() - _T0
    print(f"[{int(el // 60):02d}:{el % 60:04.1f}] {msg}", file=sys.stderr, flush=True)


def median(values) -> float:
    """Return the median of ``values`` as a float."""
    return float(np.median(np.asarray(values, float)))


def fmt(x: float, digits: int = 3) -> str:
    """Format ``x`` with ``digits`` decimals; ``n/a`` for None or a non-finite float."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def mb(nbytes: float) -> str:
    """Format a number of bytes in MiB, no decimals."""
    return f"{nbytes / 2**20:.0f}"


@dataclass
class Config:
    """Sizes and repeats of one run mode."""

    mode: str
    repeat: int
    compare_repeat: int
    image_shape: tuple[int, int]
    particle_size: float
    coverage: float
    compare_shape: tuple[int, int]
    compare_tile: int
    memory_sizes: tuple[int, ...]
    memory_tile: int
    memory_default_size: int | None  # the bundle-default tiling run (the large-image speed figure)
    eval_repeat: int
    eval_shape: tuple[int, int] | None  # None: the TiO2 pair (1024x712)
    sims_fields: int
    sims_single: int
    sims_batch: int
    accuracy_split: str  # "all": the 32 images; "sample": the first training and the first validation image
    accuracy_table1: bool

    @classmethod
    def make(cls, quick: bool, full: bool, repeat: int | None) -> "Config":
        """Return the configuration of a mode (``--quick``, ``--full`` or default); ``repeat`` overrides."""
        if quick:
            c = cls(
                "quick",
                2,
                2,
                (192, 256),
                14.0,
                0.14,
                (512, 512),
                128,
                (256, 512),
                128,
                None,
                1,
                (178, 256),
                32,
                8,
                16,
                "sample",
                False,
            )
        else:
            c = cls(
                "full" if full else "default",
                5,
                3,
                (768, 1024),
                28.0,
                0.14,
                (2048, 2048),
                512,
                (1024, 2048, 4096),
                256,
                4096,
                3,
                None,
                2500 if full else 500,
                200,
                64,
                "all",
                True,
            )
        if repeat:
            c.repeat = c.compare_repeat = c.eval_repeat = repeat
        return c


@dataclass
class Context:
    """The command-line arguments, the mode's configuration and a cache shared by the sections."""

    args: argparse.Namespace
    cfg: Config
    cache: dict = field(default_factory=dict)

    @property
    def bundle(self):
        """The model bundle, loaded (network included) on first use; also caches its predictor."""
        if "bundle" not in self.cache:
            from particleseg.models import load_bundle

            log(f"loading model {self.args.model or 'default'}")
            b = load_bundle(self.args.model)
            b.model  # noqa: B018  (load the network now, not inside a timing)
            self.cache["bundle"] = b
            self.cache["predictor"] = b.predictor()
        return self.cache["bundle"]

    @property
    def predictor(self):
        """The predictor of :attr:`bundle`."""
        self.bundle  # noqa: B018
        return self.cache["predictor"]

    @property
    def sim(self):
        """The simulated SEM image of the speed figures (about 150 particles at 1024x768)."""
        if "sim" not in self.cache:
            from particleseg.simulate import simulate_sem_image

            c = self.cfg
            self.cache["sim"] = simulate_sem_image(
                c.image_shape, rng=SIM_SEED, particle_size=c.particle_size, coverage=c.coverage, empty_fraction=0.0
            )
        return self.cache["sim"]

    def probabilities(self) -> np.ndarray:
        """Return the model's probabilities for :attr:`sim`, computed once."""
        if "prob" not in self.cache:
            from particleseg.pipeline import SegmentParams, predict_probabilities

            self.cache["prob"] = predict_probabilities(
                self.sim.image, self.bundle, SegmentParams(progress=False), self.predictor
            )
        return self.cache["prob"]

    def reproduce(self, section: str, extra: str = "") -> str:
        """Return the line that says how to reproduce ``section`` (the command with its options)."""
        parts = ["python benchmarks/run.py"]
        if self.cfg.mode != "default":
            parts.append(f"--{self.cfg.mode}")
        parts.append(f"--only {section}")
        if self.args.model and section in ("inference", "memory", "postprocess", "accuracy"):
            parts.append(f"--model {shlex.quote(str(self.args.model))}")
        if self.args.repeat and section in ("inference", "postprocess", "evaluation"):
            parts.append(f"--repeat {self.args.repeat}")
        if extra:
            parts.append(extra)
        return "Reproduce: `" + " ".join(parts) + "`"


# ------------------------------------------------------------------------------------------
# machine and versions


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total() -> str:
    """Return the total memory from /proc/meminfo in GiB, or ``unknown``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def git(*args: str) -> str:
    """Return the output of ``git`` with ``args`` in the repository, empty on any failure."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.rstrip()
    except Exception:  # noqa: BLE001
        return ""


def versions() -> list[tuple[str, str]]:
    """Return (name, version) of Python, the libraries, the Keras backend and particleseg (git commit)."""
    from importlib import metadata

    def ver(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    import keras

    backend = keras.backend.backend()
    try:
        framework_version = __import__(backend).__version__
    except Exception:  # noqa: BLE001
        framework_version = ver(backend)
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "python", "models", "benchmarks")
    if dirty:
        files = [ln[3:] for ln in dirty.splitlines() if ln.strip()]
        commit += f" (with uncommitted changes to {', '.join(files[:6])}{' ...' if len(files) > 6 else ''})"
    return [
        ("python", platform.python_version()),
        ("numpy", np.__version__),
        ("scipy", ver("scipy")),
        ("scikit-image", ver("scikit-image")),
        ("keras", keras.__version__),
        ("keras backend", f"{backend} {framework_version}"),
        ("particleseg", f"{ver('particleseg')}, git {commit}"),
    ]


def accelerator() -> str | None:
    """Name of the accelerator the Keras backend computes on, or None for the CPU."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                return f"{details.get('device_name', gpus[0].name)} (TensorFlow)"
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return f"{torch.cuda.get_device_name(0)} (PyTorch)"
        elif backend == "jax":
            import jax

            devs = [d for d in jax.devices() if d.platform != "cpu"]
            if devs:
                return f"{devs[0].device_kind} (JAX)"
    except Exception:  # noqa: BLE001
        return None
    return None


def device_line() -> str:
    """Return the device the figures were computed on: the GPU, else the CPU model and usable cores."""
    acc = accelerator()
    if acc:
        return f"GPU: {acc}"
    return f"CPU: {cpu_model()}, {len(os.sched_getaffinity(0))} cores usable"


# ------------------------------------------------------------------------------------------
# sections


def section_inference(ctx: Context) -> tuple[list[str], dict]:
    """Measure inference speed and tiled against untiled inference; return the section's lines and figures."""
    from particleseg.inference import even_tile_size, predict_tiled, tile_starts
    from particleseg.pipeline import SegmentParams, predict_probabilities
    from particleseg.preprocess import normalize_input

    cfg = ctx.cfg
    bundle, predict = ctx.bundle, ctx.predictor
    img = ctx.sim.image
    h, w = img.shape
    mpx = h * w / 1e6
    params = SegmentParams(progress=False)
    log(f"inference: {w}x{h}, warm-up")
    predict_probabilities(img, bundle, params, predict)
    times = []
    for r in range(cfg.repeat):
        t0 = time.perf_counter()
        prob = predict_probabilities(img, bundle, params, predict)
        times.append(time.perf_counter() - t0)
        log(f"inference: {w}x{h} repeat {r + 1}/{cfg.repeat}: {times[-1]:.2f} s")
    ctx.cache["prob"] = prob
    t = median(times)
    head = {"mpx_s": mpx / t}

    # tiled against untiled on one larger image
    ch, cw = cfg.compare_shape
    big = np.tile(img, (int(np.ceil(ch / h)), int(np.ceil(cw / w))))[:ch, :cw]
    m = bundle.network.multiple_of
    # predict_tiled directly (SegmentParams(tile=None) means the bundle's tile, not untiled),
    # on the image normalised once as predict_probabilities does
    big_n = normalize_input(big[..., None], bundle.metadata["input"]["normalization"])
    variants = [
        ("untiled (one call on the padded image)", None),
        (f"tiled, bundle default (tile {bundle.tile}, overlap {bundle.overlap})", bundle.tile),
        (f"tiled, tile {cfg.compare_tile}, overlap {bundle.overlap}", cfg.compare_tile),
    ]

    def tiling_of(tile: int | None) -> tuple[str, float, int]:
        """Tiles as ``predict_tiled`` makes them, network megapixels, rows of the first strip."""
        if tile is None:
            th, tw = -(-ch // m) * m, -(-cw // m) * m
            return f"1 of {tw}x{th}", th * tw / 1e6, ch
        th, tw = even_tile_size(ch, tile, bundle.overlap, m), even_tile_size(cw, tile, bundle.overlap, m)
        ov = min(bundle.overlap, th // 2 - 1, tw // 2 - 1)
        n = len(tile_starts(max(ch, th), th, ov)) * len(tile_starts(max(cw, tw), tw, ov))
        return f"{n} of {tw}x{th}", n * th * tw / 1e6, th

    def run_variant(tile: int | None, rows: int | None = None) -> np.ndarray:
        return predict_tiled(
            predict,
            big_n[:rows] if rows else big_n,
            tile=tile,
            overlap=bundle.overlap,
            batch_size=4,
            multiple_of=m,
            progress=False,
        )

    log(f"inference: tiled vs untiled on {cw}x{ch}, warm-up (tiled: first strip of tiles only)")
    outs = {}
    for name, tile in variants:
        outs[name] = run_variant(tile, None if tile is None else tiling_of(tile)[2])
    ctimes: dict[str, list[float]] = {name: [] for name, _ in variants}
    for r in range(cfg.compare_repeat):
        for name, tile in variants:
            t0 = time.perf_counter()
            out = run_variant(tile)
            ctimes[name].append(time.perf_counter() - t0)
            if r == 0:
                outs[name] = out
        log(
            f"inference: tiled vs untiled repeat {r + 1}/{cfg.compare_repeat}: "
            + ", ".join(f"{v[-1]:.1f} s" for v in ctimes.values())
        )
    diffs = {name: float(np.abs(outs[name] - outs[variants[0][0]]).max()) for name, _ in variants}
    base_name = variants[0][0]
    base = ctimes[base_name]

    lines = [
        f"Device: {device_line()}. Model: "
        f"`{bundle.path.relative_to(ROOT) if bundle.path.is_relative_to(ROOT) else bundle.path}` "
        f"({bundle.metadata['network']['architecture']}, depth {bundle.network.depth}, "
        f"{bundle.network.base_filters} base filters, heads {', '.join(bundle.heads)}), Keras `predict_on_batch` "
        f"through `particleseg.pipeline.predict_probabilities` (percentile normalisation + `predict_tiled`), "
        f"batch size 4, after one warm-up call of the same shape.",
        "",
        f"Image: `simulate_sem_image({h, w}, rng={SIM_SEED}, particle_size={cfg.particle_size:g}, "
        f"coverage={cfg.coverage:g}, empty_fraction=0)` ({int(ctx.sim.labels.max())} particles), 8-bit.",
        "",
        "| image | tiling | repeats | median s | Mpx/s |",
        "| --- | --- | ---: | ---: | ---: |",
        f"| {w}x{h} | bundle default (tile {bundle.tile}: {even_tile_size(w, bundle.tile, bundle.overlap, m)}x"
        f"{even_tile_size(h, bundle.tile, bundle.overlap, m)}, one tile) | {cfg.repeat} | {t:.2f} | "
        f"**{mpx / t:.3f}** |",
        "",
        f"The {w}x{h} times of the repeats: {', '.join(f'{x:.2f}' for x in times)} s.",
        "",
        f"**Tiled against untiled** on the same {cw}x{ch} image (the {w}x{h} image repeated), repeats interleaved "
        f"(untiled, default tiling, tile {cfg.compare_tile}, then again), ratio of the medians; "
        "per-repeat ratios in brackets. "
        "All three call `particleseg.inference.predict_tiled(predict, image, tile=..., overlap="
        f"{bundle.overlap}, batch_size=4)` on the image normalised once; untiled is `tile=None`: one network call on "
        f"the whole image padded to a multiple of {m}. Warm-up: one call of each (tiled: the first strip of tiles). "
        "*Network pixels / image pixels*: what the network sees (tiles overlap) over the image's pixels. "
        "*Max abs difference*: largest difference of any output channel (probabilities) to the untiled output.",
        "",
        "| tiling | tiles | network pixels / image pixels | median s | Mpx/s | time / untiled "
        "| max abs difference to untiled |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, tile in variants:
        desc, net_mpx, _ = tiling_of(tile)
        tm = median(ctimes[name])
        ratios = [a / b for a, b in zip(ctimes[name], base)]
        ratio = tm / median(base)
        lines.append(
            f"| {name} | {desc} | {net_mpx / (ch * cw / 1e6):.3f} | {tm:.2f} | {ch * cw / 1e6 / tm:.3f} | "
            f"**{ratio:.3f}** ({', '.join(f'{x:.2f}' for x in ratios)}) | {diffs[name]:.3f} |"
        )
        if name != base_name:
            head.setdefault("tiling_ratios", []).append((name, ratio))
    lines += ["", ctx.reproduce("inference")]
    return lines, head


_MEMORY_CHILD = "--child-memory"


def child_memory(spec: dict) -> dict:
    """Run in a fresh process: inference of one size with memory-mapped input and output.

    Reports the resident set before the inference (after loading the model and writing the
    input), its peak (``ru_maxrss``, which counts the touched pages of the memory maps too) and
    the peak of the anonymous resident memory (``RssAnon``, sampled every 2 ms: the memory the
    process itself holds, without the file-backed pages of the maps, which the kernel may drop).
    """
    status_keys = ("VmRSS", "RssAnon")

    def status() -> dict:
        out = {}
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                k = line.split(":", 1)[0]
                if k in status_keys:
                    out[k] = int(line.split()[1]) * 1024
        except OSError:
            pass
        return out

    peak = {"RssAnon": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            a = status().get("RssAnon", 0)
            if a > peak["RssAnon"]:
                peak["RssAnon"] = a
            time.sleep(0.002)

    from particleseg.inference import even_tile_size, predict_tiled, tile_starts
    from particleseg.models import load_bundle
    from particleseg.preprocess import normalize_input
    from particleseg.simulate import simulate_sem_image

    size, work = int(spec["size"]), Path(spec["workdir"])
    work.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(spec["model"])
    predict = bundle.predictor()
    bundle.model  # noqa: B018
    tile = spec["tile"] or bundle.tile
    overlap, m, batch = bundle.overlap, bundle.network.multiple_of, spec["batch_size"]
    k = sum(hd.channels for hd in bundle.network.heads)

    # input: the simulated 1024x768 image repeated, normalised as the pipeline does, written to a
    # memory-mapped .npy row block by row block; reopened read-only so no page is resident yet
    base_shape = tuple(spec["base_shape"])
    sim = simulate_sem_image(
        base_shape, rng=SIM_SEED, particle_size=spec["particle_size"], coverage=spec["coverage"], empty_fraction=0.0
    )
    base = normalize_input(sim.image[..., None], bundle.metadata["input"]["normalization"])[..., 0]
    in_path, out_path = work / f"input-{size}.npy", work / f"output-{size}.npy"
    inp = np.lib.format.open_memmap(in_path, mode="w+", dtype=np.float32, shape=(size, size, 1))
    reps = -(-size // base.shape[1])
    for y0 in range(0, size, base.shape[0]):
        rows = min(base.shape[0], size - y0)
        inp[y0 : y0 + rows, :, 0] = np.tile(base[:rows], (1, reps))[:, :size]
    inp.flush()
    del inp
    inp = np.load(in_path, mmap_mode="r")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(size, size, k))

    th = even_tile_size(size, tile, overlap, m)
    ov = min(overlap, th // 2 - 1)
    n_tiles = len(tile_starts(size, th, ov)) ** 2
    before = status()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # warm-up on the first strip of tiles: the same tile and batch shapes as the full run
    predict_tiled(
        predict, inp[:th], tile=tile, overlap=overlap, batch_size=batch, multiple_of=m, out=out[:th], progress=False
    )
    t0 = time.perf_counter()
    predict_tiled(
        predict,
        inp,
        tile=tile,
        overlap=overlap,
        batch_size=batch,
        multiple_of=m,
        out=out,
        progress=spec.get("progress", True),
        desc=f"{size}x{size}, tile {th}",
    )
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del inp, out
    for p in (in_path, out_path):
        p.unlink(missing_ok=True)
    return {
        "size": size,
        "tile_max": tile,
        "tile": th,
        "overlap": ov,
        "tiles": n_tiles,
        "batch_size": batch,
        "seconds": seconds,
        "mpx_per_s": size * size / 1e6 / seconds,
        "rss_before": before.get("VmRSS", maxrss_before),
        "maxrss_before": maxrss_before,
        "peak_rss": after,
        "anon_before": before.get("RssAnon", 0),
        "peak_anon": peak["RssAnon"],
        "whole_arrays": size * size * (1 + k) * 4,
    }


def run_memory_child(ctx: Context, size: int, tile: int | None) -> dict:
    """Run :func:`child_memory` for one size and tile in a fresh subprocess; return its result."""
    spec = {
        "size": size,
        "tile": tile,
        "model": str(ctx.args.model) if ctx.args.model else None,
        "batch_size": 4,
        "workdir": str(ctx.args.workdir / "memory"),
        "base_shape": list(ctx.cfg.image_shape),
        "particle_size": ctx.cfg.particle_size,
        "coverage": ctx.cfg.coverage,
        "progress": True,
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), _MEMORY_CHILD, json.dumps(spec)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env={**os.environ})
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not results:
        raise RuntimeError(f"memory child for {size}x{size} failed (exit status {proc.returncode})")
    return json.loads(results[-1][7:])


def section_memory(ctx: Context) -> tuple[list[str], dict]:
    """Measure peak memory and speed against image size; return the section's lines and figures."""
    cfg = ctx.cfg
    runs = []
    for size in cfg.memory_sizes:
        log(f"memory: {size}x{size}, tile {cfg.memory_tile}, fresh subprocess")
        runs.append(("fixed", run_memory_child(ctx, size, cfg.memory_tile)))
        log(f"memory: {size}x{size}: {runs[-1][1]['seconds']:.1f} s")
    head = {}
    if cfg.memory_default_size:
        size = cfg.memory_default_size
        log(f"memory: {size}x{size}, bundle default tiling, fresh subprocess")
        runs.append(("default", run_memory_child(ctx, size, None)))
        d = runs[-1][1]
        log(f"memory: {size}x{size}: {d['seconds']:.1f} s")
        head.update(big_size=d["size"], big_mpx_s=d["mpx_per_s"], big_seconds=d["seconds"])
    head["fixed"] = [
        (r["size"], r["peak_anon"] - r["anon_before"], r["peak_rss"] - r["rss_before"]) for k, r in runs if k == "fixed"
    ]
    lines = [
        f"Device: {device_line()}. Each row runs in a fresh Python process "
        f"(`python benchmarks/run.py {_MEMORY_CHILD} SPEC`): load the model, write the normalised input "
        f"(the simulated {cfg.image_shape[1]}x{cfg.image_shape[0]} image repeated) to a memory-mapped `.npy`, "
        "reopen it read-only, then `particleseg.inference.predict_tiled` into a memory-mapped output "
        "(`out=numpy.lib.format.open_memmap(...)`), batch size 4, after a warm-up on the first strip of tiles. "
        "One timed run per size.",
        "",
        "- *RSS before*: resident set after loading TensorFlow and the model, before any inference.",
        "- *peak RSS growth*: `resource.getrusage(RUSAGE_SELF).ru_maxrss` after the inference minus the RSS before. "
        "It counts the pages of the memory-mapped input and output that were touched, which are file-backed "
        "(the kernel writes them out and drops them under memory pressure).",
        "- *peak anonymous growth*: peak of `RssAnon` (from `/proc/self/status`, sampled every 2 ms) minus its value "
        "before: the memory the process itself needs (network activations, tile batches, the strip buffer).",
        "- *whole-image arrays*: input and output as in-memory float32 arrays, what unstreamed inference would hold.",
        "",
        "| image | tiling | tiles | seconds | Mpx/s | RSS before MiB | peak RSS growth MiB "
        "| peak anonymous growth MiB | whole-image arrays MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, r in runs:
        tiling = (
            f"tile {r['tile']} (max {r['tile_max']}), overlap {r['overlap']}"
            if kind == "fixed"
            else f"bundle default: tile {r['tile']} (max {r['tile_max']}), overlap {r['overlap']}"
        )
        lines.append(
            f"| {r['size']}x{r['size']} | {tiling} | {r['tiles']} | {r['seconds']:.1f} | {r['mpx_per_s']:.3f} | "
            f"{mb(r['rss_before'])} | {mb(r['peak_rss'] - r['rss_before'])} | "
            f"**{mb(r['peak_anon'] - r['anon_before'])}** | {mb(r['whole_arrays'])} |"
        )
    fixed = [r for k, r in runs if k == "fixed"]
    if len(fixed) >= 2:
        a, b = fixed[0], fixed[-1]
        ga, gb = a["peak_anon"] - a["anon_before"], b["peak_anon"] - b["anon_before"]
        lines += [
            "",
            f"With the tile fixed, the image grows {b['size'] ** 2 / a['size'] ** 2:.0f}x in pixels "
            f"({a['size']}^2 to {b['size']}^2) and the peak anonymous memory {gb / max(ga, 1):.2f}x "
            f"({mb(ga)} to {mb(gb)} MiB); the whole-image arrays would grow "
            f"{b['whole_arrays'] / a['whole_arrays']:.0f}x. The working memory of `predict_tiled` is one "
            "strip of tiles (tile height x image width) plus one batch of tiles through the network, "
            "so it grows with the tile (and, through the strip buffer, with the image width), "
            "not with the image area.",
        ]
    lines += ["", ctx.reproduce("memory")]
    return lines, head


def section_postprocess(ctx: Context) -> tuple[list[str], dict]:
    """Time post-processing and measurement against ``regionprops_table``; return the lines and figures."""
    from skimage.measure import regionprops_table

    from particleseg.measure import measure_particles
    from particleseg.pipeline import SegmentParams, particles_from_probabilities

    cfg = ctx.cfg
    bundle = ctx.bundle
    prob = ctx.probabilities()
    image = ctx.sim.image
    h, w = image.shape
    params = SegmentParams().resolved(bundle)
    border = np.zeros(image.shape, bool)
    border[[0, -1], :] = True
    border[:, [0, -1]] = True
    props = (
        "label",
        "area",
        "perimeter",
        "equivalent_diameter_area",
        "feret_diameter_max",
        "solidity",
        "eccentricity",
        "axis_major_length",
        "axis_minor_length",
        "centroid",
        "bbox",
        "intensity_mean",
        "intensity_min",
        "intensity_max",
    )
    log("postprocess: warm-up")
    labels = particles_from_probabilities(prob, bundle.heads, params)
    measure_particles(labels, image, border=border)
    regionprops_table(labels, image, properties=props)
    t_pp, t_meas, t_skimage = [], [], []
    for r in range(cfg.repeat):
        t0 = time.perf_counter()
        labels = particles_from_probabilities(prob, bundle.heads, params)
        t1 = time.perf_counter()
        table = measure_particles(labels, image, border=border)
        t2 = time.perf_counter()
        sk = regionprops_table(labels, image, properties=props)
        t3 = time.perf_counter()
        t_pp.append(t1 - t0)
        t_meas.append(t2 - t1)
        t_skimage.append(t3 - t2)
        log(
            f"postprocess: repeat {r + 1}/{cfg.repeat}: {t1 - t0:.2f} + {t2 - t1:.2f} s, "
            f"regionprops_table {t3 - t2:.2f} s"
        )
    n = len(table)
    pp, meas, skt = median(t_pp), median(t_meas), median(t_skimage)

    def agree(ours: str, theirs: str) -> str:
        a, b = table[ours].to_numpy(float), np.asarray(sk[theirs], float)
        if not len(a):
            return "n/a"
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
        return f"{np.median(rel):.2g} / {rel.max():.2g}"

    ratio = meas / skt
    head = {"particles": n, "pp_s": pp, "meas_s": meas, "total_s": pp + meas, "ratio": ratio}
    lines = [
        f"Image: the simulated {w}x{h} image of the inference figures, {int(ctx.sim.labels.max())} "
        "simulated particles; "
        f"the model's probabilities (computed once, not timed) give **{n} particles**. Median of {cfg.repeat} repeats "
        "after a warm-up; the three calls of a repeat run one after the other (interleaved).",
        "",
        "| step | median s per image |",
        "| --- | ---: |",
        f"| `particles_from_probabilities` (threshold {params.threshold:g}, distance-head watershed, fill holes, "
        f"min area {params.min_area}, min confidence {params.min_confidence:g}) | {pp:.3f} |",
        "| `measure_particles` (ImageJ's columns on the traced ROI: area, intensities, centroids, perimeter, "
        f"bounding box, fitted ellipse, shape descriptors, exact Feret values; ECD, border flag) | {meas:.3f} |",
        f"| **post-processing + measurement** | **{pp + meas:.3f}** |",
        f"| scikit-image `regionprops_table` ({', '.join(props)}) | {skt:.3f} |",
        "",
        f"**`measure_particles` / `regionprops_table` = {ratio:.2f}** (per repeat: "
        f"{', '.join(f'{a / b:.2f}' for a, b in zip(t_meas, t_skimage))}). `measure_particles` traces each "
        "particle's outline and computes ImageJ's Measure columns on it (equal to ImageJ's own, "
        "tests/fiji/test_imagej_measurements.py), the exact Feret values by rotating calipers included, "
        "and builds a DataFrame.",
        "",
        "Agreement on the descriptors both compute (relative difference, median / max over the particles): "
        f"area {agree('Area', 'area')}, perimeter {agree('Perim.', 'perimeter')}, "
        f"ECD {agree('ECD', 'equivalent_diameter_area')}, solidity {agree('Solidity', 'solidity')}, "
        f"Feret max {agree('Feret', 'feret_diameter_max')} (the definitions differ: ImageJ's perimeter of the "
        "traced outline with corners cut, its solidity against the polygon hull, its Feret between pixel corners; "
        "scikit-image's on pixel centres and the pixel hull).",
        "",
        ctx.reproduce("postprocess"),
    ]
    return lines, head


def section_evaluation(ctx: Context) -> tuple[list[str], dict]:
    """Time each metric of ``evaluate_pair`` on one pair; return the section's lines and figures."""
    import bench_metrics

    from particleseg.datasets import tio2_root

    cfg = ctx.cfg
    if cfg.eval_shape is None and (tio2_root() / "images").is_dir():
        image, truth, stem = bench_metrics.load_pair(3)
        source = f"TiO2 image {stem} (the first validation image) cropped to 1024x712 with its manual mask"
    else:
        from particleseg.simulate import simulate_sem_image

        shape = cfg.eval_shape or (712, 1024)
        sim = simulate_sem_image(
            shape, rng=SIM_SEED, particle_size=cfg.particle_size, coverage=cfg.coverage, empty_fraction=0.0
        )
        image, truth = sim.image, sim.labels
        why = "--quick" if cfg.eval_shape else f"the TiO2 data are not at {tio2_root()}"
        source = f"a simulated {shape[1]}x{shape[0]} image with its exact labels ({why})"
    log(f"evaluation: {cfg.eval_repeat} repeats of 3 proposals")
    res = bench_metrics.measure(image, truth, cfg.eval_repeat)
    names = list(res)
    h, w = image.shape
    head = {"shape": f"{w}x{h}", "totals": {n: res[n]["total"] for n in names}}
    lines = [
        f"Pair: {source}. `particleseg.metrics.evaluate_pair` with per-step timings (`timings=`), three proposals "
        "(`bench_metrics.measure`): a stand-in probability map (logistic function of the smoothed image around its "
        "Li threshold) with the publication's 11 thresholds, the same with the watershed before scoring, and the "
        f"Li-threshold mask (one level). Median of {cfg.eval_repeat} repeats per step, seconds per {w}x{h} pair.",
        "",
        "| step | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]
    for k in bench_metrics.steps(res):
        label = f"**{k}**" if k == "total" else k
        lines.append(f"| {label} | " + " | ".join(f"{res[n].get(k, 0.0):.3f}" for n in names) + " |")
    lines += [
        "",
        ctx.reproduce("evaluation")
        + (
            " (or `python benchmarks/bench_metrics.py --repeat 3` for the TiO2 pair alone)"
            if cfg.eval_shape is None
            else ""
        ),
    ]
    return lines, head


def section_sims(ctx: Context) -> tuple[list[str], dict]:
    """Measure SIMS throughput, batched against one field per call; return the section's lines and figures."""
    import bench_sims_throughput

    cfg = ctx.cfg
    workdir = ctx.args.workdir / "sims"
    log(f"sims: {cfg.sims_fields} fields batched ({cfg.sims_batch} per call), {cfg.sims_single} one per call")
    r = bench_sims_throughput.measure(
        workdir=workdir, fields=cfg.sims_fields, single=cfg.sims_single, batch_size=cfg.sims_batch, progress=True
    )
    run_ratio = r["run_batched_fields_per_s"] / r["run_single_fields_per_s"]
    net_ratio = r["network_batched_fields_per_s"] / r["network_single_fields_per_s"]
    head = {
        "run_batched": r["run_batched_fields_per_s"],
        "run_single": r["run_single_fields_per_s"],
        "run_ratio": run_ratio,
        "net_ratio": net_ratio,
        "fields": r["fields"],
    }
    note = ""
    if cfg.mode == "default":
        note = (
            f" The default run uses {cfg.sims_fields} fields instead of 2500 to keep the run short (2500 take "
            "about 3 minutes batched on this machine); `--full` runs 2500."
        )
    lines = [
        f"Shipped `models/sims-fcn` on {r['fields']} simulated fields ({r['field_shape']}; "
        "`particleseg.sims.simulate_fields(seed=7)`, cached in "
        f"`{workdir.relative_to(ROOT) if workdir.is_relative_to(ROOT) else workdir}`), "
        f"with `bench_sims_throughput.measure(fields={cfg.sims_fields}, single={cfg.sims_single}, "
        f"batch_size={cfg.sims_batch})`: "
        f"the whole `sims.run_fields` (read TIFFs, network, threshold, watershed, counts, ratios, CSVs, plot) and the "
        f"network alone (`sims.predict_fields` on arrays in memory), {cfg.sims_batch} fields per network call "
        "against one; "
        f"the one-per-call rates are measured on the first {r['single_fields']} fields. One run each (a run is "
        f"many calls), after a warm-up.{note}",
        "",
        "| | batched fields/s | one per call fields/s | batched / single |",
        "| --- | ---: | ---: | ---: |",
        f"| whole run | {r['run_batched_fields_per_s']:.1f} | {r['run_single_fields_per_s']:.1f} | "
        f"**{run_ratio:.2f}** |",
        f"| network alone | {r['network_batched_fields_per_s']:.1f} | {r['network_single_fields_per_s']:.1f} | "
        f"**{net_ratio:.2f}** |",
        "",
        f"Particles found: {r['particles']}; batched run {r['run_batched_seconds']:.1f} s. Load average "
        f"{r['load_average_before']:.1f} before, {r['load_average_after']:.1f} after.",
        "",
        ctx.reproduce("sims")
        + (
            " (2500 fields: add `--full`, or `python benchmarks/bench_sims_throughput.py`)"
            if cfg.mode == "default"
            else ""
        ),
    ]
    return lines, head


def section_gpu(ctx: Context) -> tuple[list[str], dict]:
    """Report the accelerator the Keras backend sees and the command for the GPU figures."""
    import keras

    acc = accelerator()
    backend = keras.backend.backend()
    cmd = (
        "KERAS_BACKEND=torch python benchmarks/run.py --only inference,memory,postprocess "
        "--out benchmarks/REPORT-gpu.md"
    )
    if acc:
        lines = [
            f"This run computed on **{acc}** (Keras backend `{backend}`): the inference figures above are GPU "
            "figures. The memory section measures host memory only (not GPU memory)."
        ]
        head = {"gpu": acc}
    else:
        lines = [
            f"No GPU was visible to the Keras backend (`{backend}`) in this run: no GPU was lent to the machine "
            "that made this report, so there are no GPU figures here."
        ]
        head = {"gpu": None}
    lines += [
        "",
        "To measure the same inference figures on a GPU machine (Keras 3 runs the shipped `.keras` model on the "
        "TensorFlow, PyTorch or JAX backend; use whichever is installed there, e.g. `pip install torch` and the "
        "project with `pip install -e .`):",
        "",
        "```bash",
        cmd,
        "KERAS_BACKEND=jax python benchmarks/run.py --only inference,memory --out benchmarks/REPORT-gpu-jax.md",
        "```",
        "",
        "The report names the device it ran on (section header line *Device:*) and the backend with its version.",
    ]
    return lines, head


def classic_labels(
    image: np.ndarray, method: str, min_area: int = 15, polarity: str = "bright"
) -> tuple[np.ndarray, np.ndarray]:
    """Segment with the classic baseline: a global threshold and the distance-transform watershed.

    Global threshold (``li`` or ``otsu``) of the gray values (particles above it, or below it
    for ``polarity="dark"``), then the distance-transform watershed (h-maxima, h = 1 px) and
    removal of particles under ``min_area``.
    """
    from particleseg import postprocess as pp

    t = pp.threshold_value(image, method)
    mask = image > t if polarity == "bright" else image < t
    labels = pp.split_touching(mask, None, h=1.0)
    return mask, pp.relabel_sequential(pp.remove_small(labels, min_area))


def section_accuracy(ctx: Context) -> tuple[list[str], dict]:
    """Score the baselines and the models on the TiO2 images; return the section's lines and figures."""
    import bench_from_scratch_tio2 as bfs
    import pandas as pd
    import tifffile
    from tqdm.auto import tqdm

    from particleseg.datasets import TIO2_CROP_ROWS, evaluate_tio2, score_labels, tio2_items, tio2_root
    from particleseg.models import load_bundle
    from particleseg.postprocess import label_mask

    cfg = ctx.cfg
    root = tio2_root()
    if not (root / "images").is_dir():
        return [
            f"**Skipped:** the TiO2 data set is not at `{root}` (licensed CC BY-NC-ND 4.0, read in place from "
            "`../shared/datasets/tio2-sem` or `$PARTICLESEG_TIO2`, never copied into the repository)."
        ], {"skipped": True}

    all_items = tio2_items()
    val_stems = {it.stem for it in tio2_items(split="validation")}
    eval_root = None
    if cfg.accuracy_split == "all":
        items = all_items
    else:  # --quick: one training and one validation image, through symbolic links (nothing is copied)
        items = [all_items[0], all_items[3]]
        eval_root = Path(tempfile.mkdtemp(prefix="tio2-sample-"))
        for sub in ("images", "masks"):
            (eval_root / sub).mkdir()
        for it in items:
            (eval_root / "images" / it.image.name).symlink_to(it.image)
            (eval_root / "masks" / it.mask.name).symlink_to(it.mask)
    models = [("default model" if not ctx.args.model else f"model {ctx.args.model}", ctx.bundle)]
    for spec in ctx.args.bundle or []:
        name, _, path = spec.partition("=")
        models.append((name, load_bundle(path)))

    frames, table1_rows, seconds = {}, {}, {}
    # classic baselines
    for method in ("li", "otsu"):
        name = f"{method.capitalize()} threshold + watershed"
        t0 = time.perf_counter()
        rows, masks, truths = [], [], []
        for it in tqdm(items, desc=f"TiO2 {name}", leave=False):
            image = tifffile.imread(it.image)[:TIO2_CROP_ROWS]
            truth_mask = tifffile.imread(it.mask)[:TIO2_CROP_ROWS] > 0
            mask, labels = classic_labels(image, method)
            rows.append({"image": it.stem, **score_labels(labels, label_mask(truth_mask))})
            if it.stem in val_stems:
                masks.append(mask)
                truths.append(truth_mask)
        frames[name] = pd.DataFrame(rows)
        log(f"accuracy: {name}: {len(rows)} images scored")
        if cfg.accuracy_table1:
            log(f"accuracy: {name}: Table-1 columns on the {len(masks)} validation images")
            table1_rows[name] = bfs.table1_scores(masks, truths, pred_kind="mask")
        seconds[name] = time.perf_counter() - t0
    for name, bundle in models:
        t0 = time.perf_counter()
        log(f"accuracy: {name}: evaluate_tio2 on {len(items)} images")
        frames[name] = evaluate_tio2(bundle, "all", root=eval_root, progress=True)
        if cfg.accuracy_table1:
            log(f"accuracy: {name}: Table-1 columns on the validation images")
            table1_rows[name] = bfs.table1(bundle, "validation")
        seconds[name] = time.perf_counter() - t0
    if eval_root is not None:
        shutil.rmtree(eval_root)  # the symbolic links only

    splits = [
        ("train", lambda s: s not in val_stems),
        ("validation", lambda s: s in val_stems),
        ("all", lambda s: True),
    ]
    lines = [
        f"Data: `{root}` (Rühle et al. 2021, CC BY-NC-ND 4.0; read in place), {len(items)} images "
        f"({'all 32' if eval_root is None else 'with --quick only the first training and the first validation image'}), "  # noqa: E501
        "cropped to 1024x712 "
        "(the data bar removed). Fixed split (`particleseg.datasets.tio2_items`): sorted by name, every fourth image "
        "from the fourth is a validation image (8), the other 24 are training images. The default model was trained on "
        "simulated images only; its threshold and `min_confidence` were chosen on the training split, so its "
        "validation row is the held-out figure.",
        "",
        "Methods:",
        "",
        "- *Li / Otsu threshold + watershed*: global threshold of the gray values "
        "(`particleseg.postprocess.threshold_value`), distance-transform watershed with h-maxima seeds, h = 1 px "
        "(`postprocess.split_touching(mask, None, h=1.0)`), particles under 15 px removed.",
        "- *models*: `particleseg.datasets.evaluate_tio2(bundle, split)`, the pipeline as a user runs it "
        "(`segment_image` with the bundle's threshold, distance-head watershed and filters).",
        "",
        "**Pipeline scores**, means over the images (label images as segmented, before the border filter): "
        "foreground IoU; instance IoU averaged over the true particles (a missed particle counts 0) and over the "
        "segmented particles (the publication's convention); F1 of one-to-one matches at IoU 0.5. "
        "The baselines are scored with the same per-image scores as `evaluate_tio2` "
        "(`particleseg.datasets.score_labels`).",
        "",
        "| method | split | images | foreground IoU | instance IoU (truth-avg) | instance IoU (pred-avg) | F1@0.5 "
        "| particles found / true |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    head = {"rows": {}}
    for name, df in frames.items():
        for sname, sel in splits:
            d = df[df["image"].map(sel)]
            if not len(d):
                continue
            lines.append(
                f"| {name} | {sname} | {len(d)} | {d.foreground_iou.mean():.4f} | {d.instance_iou.mean():.4f} | "
                f"{d.instance_iou_pred.mean():.4f} | {d.f1_iou50.mean():.4f} | {d.n_pred.sum()} / {d.n_truth.sum()} |"
            )
            head["rows"][(name, sname)] = (
                d.foreground_iou.mean(),
                d.instance_iou.mean(),
                d.instance_iou_pred.mean(),
                d.f1_iou50.mean(),
            )
    lines += [
        "",
        "Seconds per method (all its images and its Table-1 scores): "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
        + ".",
    ]
    cols = bfs.TABLE1
    if cfg.accuracy_table1:
        lines += [
            "",
            "**The columns of the publication's Table 1** on the 8 validation images "
            "(`particleseg.metrics.evaluate_pair` on the stacked maps of the split, as "
            "`benchmarks/bench_from_scratch_tio2.py` scores them: models' foreground probability maps with "
            "thresholds 0.0 to 1.0 in steps of 0.1, best value reported; baselines' binary masks, one level; "
            "distance-transform watershed before scoring, warping radius 20). Computed on the validation split only: "
            "the warping and Rand metrics with the watershed at 11 thresholds take about 18 s per image and "
            "model here, so all 32 images for every method would add about 10 minutes per model. "
            "The published rows were scored on the publication's six validation images, not this split: "
            "compare them as orders of magnitude. Lower is better for the error columns.",
            "",
            "| method | source | " + " | ".join(h for _, h in cols) + " | AP | F1@0.5 |",
            "| --- | --- | " + " | ".join("---:" for _ in cols) + " | ---: | ---: |",
        ]
        for name, res in table1_rows.items():
            lines.append(
                f"| {name} | this run, 8 validation images | "
                + " | ".join(f"{res[k]:.4f}" for k, _ in cols)
                + f" | {res['ap']:.4f} | {res['f1_50']:.4f} |"
            )
            head["rows"][(name, "table1")] = res
        for name, vals in PUBLISHED:
            lines.append(
                f"| {name} | published (Rühle et al. 2021, Table 1) | "
                + " | ".join(f"{v:.4f}" for v in vals)
                + " | | |"
            )
        pl_name, pl_vals = PUBLISHED_LATER
        lines.append(
            f"| MultiRes UNet (simulated), {pl_name.split(' (')[0]} | published | "
            + " | ".join(f"{v:.4f}" for v in pl_vals)
            + " |"
            + " |" * (len(cols) - len(pl_vals) + 2)
        )
        lines += [
            "",
            "Best thresholds (models): "
            + "; ".join(
                f"{n}: IoU (image) at {r['iou_image_thr']}, IoU (instance) at {r['iou_instance_thr']}"
                for n, r in table1_rows.items()
                if isinstance(r.get("iou_image_thr"), float) and np.isfinite(r["iou_image_thr"])
            ),
        ]
    else:
        lines += ["", "The Table-1 columns are not computed with `--quick` (about 18 s per image and model)."]
    extra = " ".join(f"--bundle {shlex.quote(b)}" for b in (ctx.args.bundle or []))
    lines += [
        "",
        ctx.reproduce("accuracy", extra),
        "",
        "More models: `--bundle NAME=PATH` (repeatable) adds bundles to this section, e.g. one trained by "
        "`particleseg train` on the training split or by `particleseg train-from-scratch` (`runs/...`; not committed: "
        "no model trained on the TiO2 data is shipped). Each adds about 5 minutes.",
    ]
    return lines, head


RUNNERS = {
    "inference": section_inference,
    "memory": section_memory,
    "postprocess": section_postprocess,
    "evaluation": section_evaluation,
    "sims": section_sims,
    "gpu": section_gpu,
    "accuracy": section_accuracy,
}


# ------------------------------------------------------------------------------------------
# report


def summary_lines(heads: dict, cfg: Config) -> list[str]:
    """Return the summary table's lines from the sections' headline figures."""
    out = ["| figure | value | section |", "| --- | ---: | --- |"]
    if h := heads.get("inference"):
        w, hgt = cfg.image_shape[1], cfg.image_shape[0]
        out.append(f"| inference, {w}x{hgt} | {h['mpx_s']:.3f} Mpx/s | [inference](#inference-speed) |")
        for name, ratio in h.get("tiling_ratios", []):
            out.append(
                f"| time {name} / untiled, {cfg.compare_shape[1]}x{cfg.compare_shape[0]} | {ratio:.3f} | "
                "[inference](#inference-speed) |"
            )
    if h := heads.get("memory"):
        s = h.get("big_size")
        if s:
            out.append(
                f"| inference, {s}x{s}, bundle default tiling (1 run) | {h['big_mpx_s']:.3f} Mpx/s "
                f"({h['big_seconds']:.0f} s) | [memory](#memory-and-speed-against-image-size) |"
            )
        fixed = h["fixed"]
        out.append(
            "| peak anonymous memory growth, fixed tile, "
            + " / ".join(f"{sz}^2" for sz, _, _ in fixed)
            + " | "
            + " / ".join(f"{mb(a)}" for _, a, _ in fixed)
            + " MiB | [memory](#memory-and-speed-against-image-size) |"
        )
    if h := heads.get("postprocess"):
        out.append(
            f"| post-processing + measurement, {h['particles']} particles | {h['total_s']:.2f} s "
            f"({h['pp_s']:.2f} + {h['meas_s']:.2f}) | [post-processing](#post-processing-and-measurement) |"
        )
        out.append(
            f"| `measure_particles` / `regionprops_table` | {h['ratio']:.2f} | "
            "[post-processing](#post-processing-and-measurement) |"
        )
    if h := heads.get("evaluation"):
        for n, t in h["totals"].items():
            out.append(f"| evaluate_pair, {h['shape']}, {n} | {t:.2f} s | [evaluation](#evaluation-metrics) |")
    if h := heads.get("sims"):
        out.append(
            f"| SIMS whole run, batched / one field per call ({h['fields']} fields) | {h['run_batched']:.1f} / "
            f"{h['run_single']:.1f} fields/s = {h['run_ratio']:.2f} | [SIMS](#sims-batch-throughput) |"
        )
        out.append(
            f"| SIMS network alone, batched / one per call | {h['net_ratio']:.2f} | [SIMS](#sims-batch-throughput) |"
        )
    if "gpu" in heads:
        out.append(f"| GPU | {heads['gpu']['gpu'] or 'none lent to this run'} | [GPU](#gpu) |")
    if h := heads.get("accuracy"):
        if h.get("skipped"):
            out.append("| TiO2 accuracy | skipped (data absent) | [accuracy](#accuracy-on-the-tio2-sem-images) |")
        else:
            for (name, sname), v in h["rows"].items():
                if sname == "validation" and not isinstance(v, dict):
                    out.append(
                        f"| TiO2 validation (8), {name}: foreground IoU / instance IoU (truth-avg) / F1@0.5 | "
                        f"{v[0]:.3f} / {v[1]:.3f} / {v[3]:.3f} | [accuracy](#accuracy-on-the-tio2-sem-images) |"
                    )
    return out


def render(
    ctx: Context,
    started: _dt.datetime,
    machine: list[tuple[str, str]],
    vers: list[tuple[str, str]],
    done: dict[str, list[str]],
    heads: dict,
    selected: list[str],
    finished: bool,
    elapsed: float,
) -> str:
    """Return the whole Markdown report: header, machine, versions, summary and each section."""
    cfg = ctx.cfg
    argv = " ".join(shlex.quote(a) for a in ctx.args.argv)
    L = [
        "# particleseg benchmark report",
        "",
        f"- **Date**: {started.strftime('%Y-%m-%d %H:%M %Z').strip()}"
        + (f", {elapsed / 60:.1f} min" if finished else " (run in progress or interrupted)"),
        f"- **Command**: `python benchmarks/run.py{(' ' + argv) if argv else ''}` (mode: {cfg.mode})",
    ]
    L += [f"- **{k}**: {v}" for k, v in machine]
    L += ["", "| software | version |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in vers]
    L += [
        "",
        "Timings are wall-clock medians of repeats taken in this run (the repeats are listed where they matter); "
        "comparisons are ratios of timings taken in the same run, interleaved, so that the load of other "
        "jobs on this shared machine affects both sides alike. Absolute times vary with the load (see the load "
        "averages above); the ratios much less. No timing is asserted in the test suite; `tests/test_benchmarks.py` "
        "only checks that the runner works.",
        "",
        "## Summary",
        "",
    ]
    L += summary_lines(heads, cfg)
    for s in SECTIONS:
        L += ["", f"## {TITLES[s]}", ""]
        if s in done:
            L += done[s]
        elif s not in selected:
            L.append(f"Not run in this report (`--only`/`--skip`). Run it with `python benchmarks/run.py --only {s}`.")
        else:
            L.append("Not measured yet (the run was in progress or interrupted).")
    return "\n".join(L) + "\n"


def foreign_sections(text: str) -> str:
    """Return the part of a report that other benchmarks own, from its first such section on.

    Sections this runner does not write (``bench_startup_batch.py``, ``bench_dask.py``,
    ``bench_memory.py`` report into the same file, each replacing only its own section) start at
    a ``<!-- NAME: begin -->`` marker or at a ``## `` heading that is not one of this runner's.
    """
    own = {"Summary", *TITLES.values()}
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        marker = line.startswith("<!-- ") and line.rstrip().endswith(": begin -->")
        if marker or (line.startswith("## ") and line[3:].strip() not in own):
            return "".join(lines[i:])
    return ""


def write_report(path: Path, text: str) -> None:
    """Write this runner's report to ``path``, keeping the sections other benchmarks own there."""
    kept = foreign_sections(path.read_text()) if path.exists() else ""
    write_atomic(path, text + ("\n" + kept if kept else ""))


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def parse_sections(text: str | None) -> list[str]:
    """Return the section names of a comma-separated list; exit on an unknown one."""
    if not text:
        return []
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in SECTIONS]
    if bad:
        raise SystemExit(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and write the report after each; or be the memory child."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_MEMORY_CHILD]:
        print("RESULT " + json.dumps(child_memory(json.loads(argv[1]))), flush=True)
        return 0
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="sections: " + ", ".join(SECTIONS),
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (about 2 min)")
    mode.add_argument("--full", action="store_true", help="SIMS figures on 2500 fields")
    ap.add_argument("--out", type=Path, default=HERE / "REPORT.md", help="report file (default benchmarks/REPORT.md)")
    ap.add_argument("--only", help="comma-separated sections to run")
    ap.add_argument("--skip", help="comma-separated sections to leave out")
    ap.add_argument(
        "--model", help="bundle for the speed figures and the accuracy table (default: the shipped default model)"
    )
    ap.add_argument(
        "--bundle",
        action="append",
        metavar="NAME=PATH",
        help="another bundle for the accuracy table (repeatable), e.g. a model trained by "
        "'particleseg train' or 'particleseg train-from-scratch'",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        help="repeats of every timed measurement (default 5, 3 for the larger ones; 2/1 with --quick)",
    )
    ap.add_argument(
        "--workdir",
        type=Path,
        default=ROOT / "runs" / "bench",
        help="scratch folder (simulated SIMS fields, memory maps); default runs/bench",
    )
    args = ap.parse_args(argv)
    args.argv = argv
    for spec in args.bundle or []:
        if "=" not in spec or not spec.split("=", 1)[0] or not spec.split("=", 1)[1]:
            ap.error(f"--bundle {spec}: expected NAME=PATH")
    selected = parse_sections(args.only) or list(SECTIONS)
    selected = [s for s in selected if s not in parse_sections(args.skip)]
    cfg = Config.make(args.quick, args.full, args.repeat)
    ctx = Context(args, cfg)
    started = _dt.datetime.now().astimezone()
    t_start = time.perf_counter()

    log(f"benchmark run ({cfg.mode}): {', '.join(selected)} -> {args.out}")
    load0 = os.getloadavg()
    vers = versions()

    def machine(final: bool) -> list[tuple[str, str]]:
        rows = [
            (
                "Machine",
                f"{cpu_model()}, {os.cpu_count()} logical cores ({len(os.sched_getaffinity(0))} usable), "
                f"{memory_total()} memory, {platform.system()} {platform.release()}",
            ),
            ("Accelerator", accelerator() or "none (CPU only)"),
            (
                "Load average (1 min)",
                f"{load0[0]:.1f} at the start" + (f", {os.getloadavg()[0]:.1f} at the end" if final else ""),
            ),
        ]
        return rows

    done: dict[str, list[str]] = {}
    heads: dict = {}
    failed = []
    for s in selected:
        log(f"== {s}")
        t0 = time.perf_counter()
        try:
            lines, head = RUNNERS[s](ctx)
            heads[s] = head
            done[s] = lines + ["", f"*Section time: {time.perf_counter() - t0:.0f} s.*"]
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            failed.append(s)
            done[s] = [
                f"**Failed:** `{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}` "
                "(traceback on the run's stderr)."
            ]
        log(f"{s} done in {time.perf_counter() - t0:.0f} s")
        write_report(args.out, render(ctx, started, machine(False), vers, done, heads, selected, False, 0))
    elapsed = time.perf_counter() - t_start
    write_report(args.out, render(ctx, started, machine(True), vers, done, heads, selected, True, elapsed))
    log(f"wrote {args.out} ({elapsed / 60:.1f} min)" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
