"""Batches on a Dask cluster (issue 16 item 6): the speed-up from one to two workers, and a plan.

    python benchmarks/bench_dask.py                # prints the figures (JSON), ~10 min on 2 busy cores
    python benchmarks/bench_dask.py --report       # and writes its section of REPORT.md

Folder: ``--images`` TiO2 SEM images (1024x768, read in place from
../shared/datasets/tio2-sem/images; simulated SEM images where they are absent) segmented with
the shipped default model by :func:`particleseg.distributed.segment_files` with
``scheduler="local:1"`` and ``"local:2"``, ``--rounds`` times each, interleaved. The wall time
is the whole call as a user sees it: starting the cluster, each worker loading the model, the
images, the writing. The two output folders are compared file by file.

FIB-SEM plan: the 156-slice stack of docs/fibsem.md (3868x4062, two detector channels) is not in
../shared/datasets, so ``--plan-slices`` slices of that size (smoothed noise; the network's time
does not depend on the content) are segmented by a phase network of the shape ``fibsem train``
makes by default (UNet, depth 3, 8 filters, context 1, 3 phases; untrained: the same
arithmetic), on a warm cluster of one and of two workers (the model loaded on a first slice that
is not timed). The plan for the stack: its 156 slices at the measured seconds per slice of each
cluster, the cluster's start-up added, and the peak memory of a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import REPORT, reproduce_command, run_record, write_section  # noqa: E402 - the benchmarks' shared helpers

ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "datasets" / "tio2-sem" / "images"
BEGIN, END = "<!-- bench_dask: begin -->", "<!-- bench_dask: end -->"
#: the stack of docs/fibsem.md
STACK_SLICES, STACK_SHAPE = 156, (3868, 4062)


def images(n: int, folder: Path) -> tuple[list[Path], str]:
    """``n`` TiO2 images (in place), or simulated 1024x768 SEM images written to ``folder``."""
    found = sorted(DATA.glob("*.tif"))[:n]
    if len(found) == n:
        return found, f"TiO2 SEM images from {DATA.relative_to(ROOT.parent)}"
    from particleseg.io import Calibration, write_tiff
    from particleseg.simulate import simulate_sem_image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = simulate_sem_image((768, 1024), i).image
        paths.append(write_tiff(folder / f"sim{i:02d}.tif", img, Calibration(2.0, "nm")))
    return paths, "simulated SEM images (the TiO2 images are absent)"


def compare(a: Path, b: Path) -> list[str]:
    """Return the files that differ between two output folders (TIFF pixels, zip members; times left out)."""
    import zipfile

    import numpy as np
    import pandas as pd
    import tifffile

    def content(p: Path):
        if p.suffix == ".tif":
            return tifffile.imread(p)
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf:
                return {n: zf.read(n) for n in zf.namelist()}
        if p.name.endswith(".done.json"):
            d = json.loads(p.read_text())
            d.pop("finished", None)
            d.get("row", {}).pop("seconds", None)
            return d
        if p.name in ("summary.csv", "slices.csv"):
            return pd.read_csv(p).drop(columns="seconds").to_json()
        return p.read_bytes()

    names = sorted(
        {q.relative_to(a).as_posix() for q in a.rglob("*") if q.is_file()}
        | {q.relative_to(b).as_posix() for q in b.rglob("*") if q.is_file()}
    )
    diff = []
    for n in names:
        if not (a / n).is_file() or not (b / n).is_file():
            diff.append(n)
            continue
        x, y = content(a / n), content(b / n)
        if not (np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y):
            diff.append(n)
    return diff


def cluster_start(workers: int) -> float:
    """Return the seconds to start a LocalCluster of ``workers`` and check its workers."""
    from particleseg.distributed import connect

    t0 = time.perf_counter()
    with connect(f"local:{workers}"):
        seconds = time.perf_counter() - t0
    return seconds


def folder(n_images: int, rounds: int, tmp: Path) -> dict:
    """Time a folder on one and on two workers, interleaved; compare their outputs."""
    from particleseg.distributed import segment_files
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, batch_report

    paths, source = images(n_images, tmp / "images")
    walls: dict[str, list[float]] = {"local:1": [], "local:2": []}
    loads = []
    for r in range(rounds):
        for scheduler in ("local:1", "local:2") if r % 2 == 0 else ("local:2", "local:1"):
            out = tmp / f"{scheduler.replace(':', '')}-{r}"
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            summary, failures = segment_files(
                paths, out, load_bundle("default"), SegmentParams(), progress=False, scheduler=scheduler
            )
            walls[scheduler].append(round(time.perf_counter() - t0, 2))
            loads.append((round(load0, 2), round(os.getloadavg()[0], 2)))
            if failures:
                raise SystemExit(f"{scheduler}: {failures[:2]}")
            print(f"folder {scheduler} round {r}: {walls[scheduler][-1]} s ({batch_report(summary)})", file=sys.stderr)
    differ = compare(tmp / "local1-0", tmp / "local2-0")
    ratios = [round(a / b, 3) for a, b in zip(walls["local:1"], walls["local:2"])]
    return {
        "images": n_images,
        "source": source,
        "rounds": rounds,
        "wall_s": walls,
        "speedup_1_to_2_workers": ratios,
        "load1_before_after": loads,
        "files_that_differ": differ,
        "cluster_start_s": {"local:1": round(cluster_start(1), 2), "local:2": round(cluster_start(2), 2)},
    }


def phase_bundle(folder: Path):
    """Make a phase bundle of the default ``fibsem train`` shape (untrained): 2 channels x 3 slices in."""
    import keras

    from particleseg import fibsem
    from particleseg.models import Head, NetworkConfig, build_network, save_bundle

    keras.utils.set_random_seed(0)
    cfg = fibsem.PhaseTrainConfig(context=1, depth=3, base_filters=8)
    net = NetworkConfig("unet", 6, (Head("classes", 3, "softmax"),), depth=3, base_filters=8)
    meta = fibsem.make_phase_metadata(
        "phases-bench", net, cfg, ["in-chamber", "in-lens"], ["matrix", "pore", "inclusion"]
    )
    return save_bundle(folder / "phases-bench", build_network(net), meta, zip_copy=False)


def full_size_stack(n: int, folder: Path) -> list[Path]:
    """Two channels of ``n`` slices of 3868x4062 (smoothed noise, uint8), one TIFF stack each."""
    import numpy as np
    import tifffile
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in range(2):
        path = folder / f"ch{c}.tif"
        stack = np.empty((n, *STACK_SHAPE), np.uint8)
        for z in range(n):
            small = ndi.gaussian_filter(rng.normal(0, 1, (STACK_SHAPE[0] // 8 + 1, STACK_SHAPE[1] // 8 + 1)), 3)
            big = ndi.zoom(small, 8, order=1)[: STACK_SHAPE[0], : STACK_SHAPE[1]]
            stack[z] = np.clip(128 + 40 * big / big.std() + rng.normal(0, 12, STACK_SHAPE), 0, 255)
        tifffile.imwrite(path, stack, photometric="minisblack")
        paths.append(path)
    return paths


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fibsem_plan(n_slices: int, tmp: Path) -> dict:
    """Time full-size slices on warm clusters of one and two workers; plan the 156-slice stack."""
    from particleseg import fibsem
    from particleseg.distributed import connect

    bundle = phase_bundle(tmp / "bundle")
    channels = full_size_stack(n_slices + 1, tmp / "stack")
    res: dict = {
        "slices_timed": n_slices,
        "slice_shape": list(STACK_SHAPE),
        "network": "UNet depth 3, 8 filters, 6 inputs",
    }
    for workers in (1, 2):
        with connect(f"local:{workers}") as client, fibsem.open_stack(channels) as stack:
            out = tmp / f"fib{workers}"
            # a first slice per worker, not timed: each worker loads the model (and opens the stack) there
            fibsem.segment_stack(
                stack,
                bundle,
                out / "warm",
                slices=list(range(workers)),
                progress=False,
                scheduler=client,
                assemble=False,
            )
            t0 = time.perf_counter()
            fibsem.segment_stack(
                stack,
                bundle,
                out / "timed",
                slices=list(range(1, n_slices + 1)),
                progress=False,
                scheduler=client,
                assemble=False,
            )
            wall = time.perf_counter() - t0
            rss = client.run(_peak_rss)
        res[f"local:{workers}"] = {
            "wall_s": round(wall, 2),
            "s_per_slice": round(wall / n_slices, 2),
            "worker_peak_rss_gib": round(max(rss.values()) / 2**30, 2),
        }
        print(f"fibsem local:{workers}: {wall:.1f} s for {n_slices} slices", file=sys.stderr)
    start = {w: cluster_start(w) for w in (1, 2)}
    res["cluster_start_s"] = {f"local:{w}": round(s, 2) for w, s in start.items()}
    res["speedup_1_to_2_workers"] = round(res["local:1"]["wall_s"] / res["local:2"]["wall_s"], 3)
    res["plan_156_slices_h"] = {
        f"local:{w}": round((STACK_SLICES * res[f"local:{w}"]["s_per_slice"] + start[w]) / 3600, 2) for w in (1, 2)
    }
    # a cluster of W workers of the same speed, each slice one task: 156 / W slices each
    per_slice_1 = res["local:1"]["s_per_slice"]
    res["plan_156_slices_h_for_w_workers_of_one_worker_speed"] = {
        str(w): round(STACK_SLICES * per_slice_1 / w / 3600, 2) for w in (4, 8, 16)
    }
    return res


def markdown(result: dict, command: str) -> str:
    """Return the report's Dask section."""
    f, p = result.get("folder"), result.get("fibsem")
    lines = [
        BEGIN,
        "## Dask",
        "",
        f"**Date** {result['date']}; **machine** {result['machine']}; load average "
        f"{result['load_before']} before, {result['load_after']} after "
        "(other jobs ran on the machine: the speed-ups below are what they left, not an idle machine's).",
        "",
    ]
    if f:
        w1, w2 = f["wall_s"]["local:1"], f["wall_s"]["local:2"]
        lines += [
            f"**Folder**: {f['images']} {f['source']}, default model, `distributed.segment_files` with "
            f'`scheduler="local:N"` (wall time of the whole call: cluster start, model loaded by each worker, '
            f"segmenting, writing), {f['rounds']} round(s), interleaved.",
            "",
            "| workers | wall (s), per round | cluster start alone (s) |",
            "| --- | --- | --- |",
            f"| 1 (`local:1`) | {', '.join(map(str, w1))} | {f['cluster_start_s']['local:1']} |",
            f"| 2 (`local:2`) | {', '.join(map(str, w2))} | {f['cluster_start_s']['local:2']} |",
            "",
            f"Speed-up from one to two workers, per round: **{', '.join(map(str, f['speedup_1_to_2_workers']))}**. "
            f"Load average (1 min) before/after each run: {f['load1_before_after']}. "
            + (
                "The outputs of one and two workers are identical file by file."
                if not f["files_that_differ"]
                else f"Files that differ: {f['files_that_differ']}"
            ),
            "",
        ]
    if p:
        lines += [
            f"**FIB-SEM plan** for the stack of docs/fibsem.md ({STACK_SLICES} slices of "
            f"{STACK_SHAPE[0]}x{STACK_SHAPE[1]}, two channels; not in ../shared/datasets, so {p['slices_timed']} "
            f"slices of that size were segmented, smoothed noise) with a phase network of `fibsem train`'s default "
            f"shape ({p['network']}, untrained: the same arithmetic), each slice one task, on a warm cluster "
            "(the model loaded on a first, untimed slice).",
            "",
            "| workers | s per slice (measured) | peak memory of a worker (GiB) | 156 slices, planned (h) |",
            "| --- | --- | --- | --- |",
        ]
        for w in (1, 2):
            r = p[f"local:{w}"]
            lines.append(
                f"| {w} | {r['s_per_slice']} | {r['worker_peak_rss_gib']} | {p['plan_156_slices_h'][f'local:{w}']} |"
            )
        more = p["plan_156_slices_h_for_w_workers_of_one_worker_speed"]
        lines += [
            "",
            f"Speed-up from one to two workers on the slices: **{p['speedup_1_to_2_workers']}**. The plan is "
            "156 x the measured seconds per slice plus the cluster's start-up ("
            + ", ".join(f"{k} {v} s" for k, v in p["cluster_start_s"].items())
            + "). On a cluster of workers each as fast as the one-worker run here (both cores, under this load), "
            "each slice one task: "
            + ", ".join(f"{w} workers {h} h" for w, h in more.items())
            + " (each worker needs the peak memory above; the client writes 16 MB of labels per slice).",
            "",
        ]
    lines += [
        "On one machine the workers share its cores: ONNX Runtime runs with the usable cores divided by the "
        f"workers on the machine ({result.get('cores', '?')} threads for one worker, half as many for two), so "
        "here a second worker adds only the overlap of reading, post-processing and writing with the network, "
        "and only when the cores are free. A speed-up needs more cores: the workers of other machines "
        "(`tcp://`), which a measurement on this one machine cannot show.",
        "",
        f"Reproduce: `{command}`",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=12, help="images in the folder (default 12)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each cluster size on the folder (default 1)")
    ap.add_argument("--plan-slices", type=int, default=4, help="full-size FIB-SEM slices timed (default 4)")
    ap.add_argument("--only", choices=("folder", "fibsem"), help="one part only")
    ap.add_argument("--report", action="store_true", help=f"write the section into {REPORT.name}")
    args = ap.parse_args(argv)
    result = {**run_record(), "cores": len(os.sched_getaffinity(0))}
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    try:
        if args.only in (None, "folder"):
            result["folder"] = folder(args.images, args.rounds, tmp)
            print(json.dumps(result["folder"], indent=1), flush=True)
        if args.only in (None, "fibsem"):
            result["fibsem"] = fibsem_plan(args.plan_slices, tmp)
            print(json.dumps(result["fibsem"], indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_after"] = round(os.getloadavg()[0], 2)
    if args.report:
        cmd = reproduce_command("bench_dask.py", ap, args, ("images", "rounds", "plan_slices"))
        write_section(markdown(result, cmd), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
