"""Start time and batch CPU use of ``particleseg segment`` (issue 16, items 5 and 4).

    python benchmarks/bench_startup_batch.py                 # prints the figures (JSON), ~5 min
    python benchmarks/bench_startup_batch.py --report        # and writes its section of REPORT.md

Start: the wall and CPU time of fresh processes, the minimum of ``--repeats`` runs each (on a
shared machine the minimum is the run least disturbed by others): the interpreter alone
(``python -c pass``), ``particleseg --help``, ``particleseg segment --help``, and ``particleseg
segment`` of one 1024x768 TiO2 SEM image with the shipped default model (``--jobs 1``), with the
heavy modules that run loaded.

Batch: ``--images`` TiO2 images (read in place from ../shared/datasets/tio2-sem/images)
segmented by ``particleseg segment`` one after another (``--jobs 1``) and with one worker
process per core (``--jobs 0``, the command line's default), interleaved, ``--rounds`` times.
CPU use is the CPU time of the whole process tree (the command, the forkserver and its
workers; read from /proc every 0.1 s with psutil) over the wall time; 200 % is two busy
cores. The outputs of the two are compared file by file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import REPORT, reproduce_command, run_record, write_section  # noqa: E402 - the benchmarks' shared helpers

ROOT = HERE.parent
DATA = ROOT.parent / "shared" / "datasets" / "tio2-sem" / "images"
BEGIN, END = "<!-- bench_startup_batch: begin -->", "<!-- bench_startup_batch: end -->"
HEAVY = ("numpy", "pandas", "scipy", "skimage", "matplotlib", "onnxruntime", "tensorflow", "keras")


def particleseg_command() -> list[str]:
    """Return the command that runs ``particleseg``: its script beside the interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("particleseg")
    return [str(script)] if script.exists() else [sys.executable, "-m", "particleseg"]


def _runnable_threads(pids) -> int:
    """Threads of ``pids`` in state R (running, or runnable and waiting for a core)."""
    n = 0
    for pid in pids:
        try:
            for task in os.scandir(f"/proc/{pid}/task"):
                with open(f"{task.path}/stat", "rb") as fh:
                    n += fh.read().rsplit(b")", 1)[1].split()[0] == b"R"
        except OSError:
            pass
    return n


def run_tree(cmd: list[str], cores: int, env: dict | None = None) -> dict:
    """Run ``cmd``; return its wall time, CPU time and mean runnable threads.

    The CPU time is that of it and all its descendants (psutil, every 0.05 s; a process that
    ended loses at most its last 0.05 s); the mean number of its threads that were runnable is
    capped at ``cores``: the cores it would keep busy on an idle machine, which other jobs on a
    shared one do not change.
    """
    import psutil

    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen: dict[int, float] = {}
    demand = []
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            tree = [proc]
        for p in tree:
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system  # cumulative: the last value counts
            except psutil.Error:
                pass
        demand.append(min(cores, _runnable_threads([p.pid for p in tree])))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out, err = proc.communicate()
    return {
        "wall": wall,
        "cpu": sum(seen.values()),
        "demand": sum(demand) / max(1, len(demand)),
        "rc": proc.returncode,
        "out": out.decode(),
        "err": err.decode(),
    }


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``cmd`` (CPU from the kernel's accounting of the child)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {run.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, run.stdout


def startup(repeats: int, image: Path) -> dict:
    """Time the start-up cases and ``particleseg segment`` of ``image``, ``repeats`` runs each, interleaved."""
    ps = particleseg_command()
    tmp = Path(tempfile.mkdtemp(prefix="bench-start-"))
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "particleseg --help": ps + ["--help"],
        "particleseg segment --help": ps + ["segment", "--help"],
    }
    res = {}
    try:
        for _ in range(repeats):  # interleaved
            for name, cmd in cases.items():
                res.setdefault(name, []).append(timed(cmd)[:2])
            out = tmp / f"o{len(res.get('segment', []))}"
            res.setdefault("segment", []).append(
                timed(ps + ["segment", str(image), "--out", str(out), "--quiet", "--jobs", "1"])[:2]
            )
        probe = (
            "import sys\nfrom particleseg.cli import main\n"
            f"rc = main(['segment', {str(image)!r}, '--out', {str(tmp / 'probe')!r}, '--quiet', '--jobs', '1'])\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
        )
        loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        name: {
            "wall_min": round(min(w for w, _ in v), 3),
            "cpu_min": round(min(c for _, c in v), 3),
            "walls": [round(w, 3) for w, _ in v],
        }
        for name, v in res.items()
    }
    summary["segment"]["heavy_modules_loaded"] = loaded.splitlines()[-1] if loaded else "?"
    summary["stages"] = stages(3, image)
    return summary


#: one image in one process, stage by stage, as segment_image and segment_file run it: CPU and wall seconds
STAGES_PROBE = r"""
import json, sys, time
T = [time.process_time(), time.perf_counter()]
out = {}
def t(name):
    c, w = time.process_time(), time.perf_counter()
    out[name] = [c - T[0], w - T[1]]
    T[0], T[1] = c, w
import particleseg.pipeline as P
from particleseg import autoscale as A, postprocess as pp
from particleseg.io import read_image, write_rois, write_tiff
from particleseg.measure import measure_particles
from particleseg.preprocess import detect_data_bar
t("imports (NumPy, pandas, SciPy, scikit-image, tifffile, ONNX Runtime, the pipeline)")
b = P.load_bundle(); b.predictor("onnx"); t("model bundle and ONNX Runtime session")
img, cal = read_image(sys.argv[1]); P.input_fingerprint(sys.argv[1]); t("reading, fingerprint")
params = P.SegmentParams(progress=False).resolved(b)
crop = detect_data_bar(img); work = img[: img.shape[0] - crop]; pol = A.estimate_polarity(work)
t("data bar, polarity estimate")
sc = P.choose_scale(work, b, P.SegmentParams(progress=False, polarity=pol).resolved(b)); t("particle-size estimate (granulometry)")
prob = P._network_at_scale(work, b, params, sc); t("network (ONNX Runtime)")
lab = P.particles_from_probabilities(prob, b.heads, params); t("particles (threshold, watershed, cleaning)")
tab = measure_particles(lab, work, cal); tab["kept"] = True; t("measurements")
png = P.overview_png(work, lab, tab, cal.unit, "x"); t("overview figure (matplotlib import included)")
d = sys.argv[2]
write_tiff(d + "/p.tif", prob[..., 0], cal, True); write_tiff(d + "/l.tif", lab, cal, True)
write_tiff(d + "/m.tif", pp.labels_to_mask(lab), cal, True); write_rois(d + "/r.zip", lab, overwrite=True)
t("mask, TIFFs, ROIs written")
print(json.dumps(out))
"""  # noqa: E501 - the probe's code, one stage a line


def stages(repeats: int, image: Path) -> dict:
    """Return the CPU and wall seconds of each stage of one image (:data:`STAGES_PROBE`).

    The least of ``repeats`` fresh processes.
    """
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        for _ in range(repeats):
            run = subprocess.run([sys.executable, "-c", STAGES_PROBE, str(image), tmp], capture_output=True, text=True)
            if run.returncode != 0:
                raise SystemExit(f"stage probe failed: {run.stderr[-2000:]}")
            runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    return {
        k: {"cpu": round(min(r[k][0] for r in runs), 3), "wall": round(min(r[k][1] for r in runs), 3)} for k in runs[0]
    }


def compare(a: Path, b: Path) -> list[str]:
    """Return the files that differ between two output folders.

    Zip members and TIFF pixels are compared; the seconds column of summary.csv and the
    finishing time of the records are left out.
    """
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
        if p.name == "summary.csv":
            return pd.read_csv(p).drop(columns="seconds").to_json()  # (NaN == NaN)
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
        same = np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
        if not same:
            diff.append(n)
    return diff


def batch(n_images: int, rounds: int) -> dict:
    """Segment ``n_images`` TiO2 images with ``--jobs 1`` and ``--jobs 0``, ``rounds`` times each."""
    images = sorted(DATA.glob("*.tif"))[:n_images]
    if len(images) < n_images:
        raise SystemExit(f"{DATA}: needs {n_images} images, found {len(images)}")
    ps = particleseg_command()
    cores = len(os.sched_getaffinity(0))
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    res: dict[str, list] = {"jobs 1": [], "jobs 0": []}
    try:
        for r in range(rounds):
            for name in ("jobs 1", "jobs 0") if r % 2 == 0 else ("jobs 0", "jobs 1"):
                out = tmp / f"{name.replace(' ', '')}-{r}"
                load0 = os.getloadavg()[0]
                run = run_tree(
                    ps + ["segment", *map(str, images), "--out", str(out), "--quiet", "--jobs", name.split()[1]], cores
                )
                if run["rc"] != 0:
                    raise SystemExit(f"{name} failed: {run['err'][-2000:]}")
                res[name].append(
                    {
                        "wall": round(run["wall"], 2),
                        "cpu": round(run["cpu"], 2),
                        "cpu_use_percent": round(100 * run["cpu"] / run["wall"], 1),
                        "runnable_percent": round(100 * run["demand"], 1),
                        "load1_before": round(load0, 2),
                        "load1_after": round(os.getloadavg()[0], 2),
                    }
                )
        differ = compare(tmp / "jobs1-0", tmp / "jobs0-0")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    from statistics import median as med

    seq, par = res["jobs 1"], res["jobs 0"]
    return {
        "images": n_images,
        "image_size": "1024x768",
        "rounds": rounds,
        "runs": res,
        "cpu_use_percent": {
            "jobs 1": round(med([r["cpu_use_percent"] for r in seq]), 1),
            "jobs 0": round(med([r["cpu_use_percent"] for r in par]), 1),
        },
        "runnable_percent": {
            "jobs 1": round(med([r["runnable_percent"] for r in seq]), 1),
            "jobs 0": round(med([r["runnable_percent"] for r in par]), 1),
        },
        # each round's pair ran back to back (in alternating order), so the load changed least within it
        "wall_ratios_sequential_over_parallel": [round(a["wall"] / b["wall"], 3) for a, b in zip(seq, par)],
        "cpu_ratios_parallel_over_sequential": [round(b["cpu"] / a["cpu"], 3) for a, b in zip(seq, par)],
        "files_that_differ": differ,
    }


def markdown(result: dict, command: str) -> str:
    """Return the REPORT.md section for ``result``, between the section's markers."""
    s, b = result.get("startup"), result.get("batch")
    L = [
        BEGIN,
        "## Start time and batch CPU use",
        "",
        f"- **Date**: {result['date']}; **machine**: {result['machine']}; load average (1 min) "
        f"{result['load_before']} at the start, {result['load_after']} at the end (with this benchmark's own "
        f"processes; {'shared with other jobs' if result['shared'] else 'otherwise idle at the start'})",
        f"- **Command**: `{command}`"
        + (
            " (run with `nice -n 10` beside other jobs: wall times and CPU use "
            "show the share of the machine it got, not what it needs)"
            if result["shared"]
            else ""
        ),
        "",
    ]
    if s:
        L += [
            "**Start** (issue 16 item 5): fresh processes, interleaved, the minimum of "
            f"{len(s['python -c pass']['walls'])} runs each (CPU: user + system of the process).",
            "",
            "| command | wall s (min) | CPU s (min) | wall / interpreter start |",
            "| --- | ---: | ---: | ---: |",
        ]
        base = s["python -c pass"]["wall_min"]
        for name, label in (
            ("python -c pass", "`python -c pass` (the interpreter alone)"),
            ("particleseg --help", "`particleseg --help`"),
            ("particleseg segment --help", "`particleseg segment --help`"),
            ("segment", "`particleseg segment` one 1024x768 image, default model, `--jobs 1`"),
        ):
            v = s[name]
            L.append(f"| {label} | **{v['wall_min']:.3f}** | {v['cpu_min']:.3f} | {v['wall_min'] / base:.1f} |")
        L += [
            "",
            f"Modules loaded by that `segment` run (of {', '.join(HEAVY)}): {s['segment']['heavy_modules_loaded']}. "
            f"All runs (wall s): "
            + "; ".join(f"{k}: {', '.join(map(str, v['walls']))}" for k, v in s.items() if "walls" in v),
            "",
        ]
        st = s.get("stages")
        if st:
            total = sum(v["cpu"] for v in st.values())
            L += [
                "Where one image's time goes (the same image, its stages timed in one process, the least of 3 "
                "fresh processes; CPU time counts every thread, ONNX Runtime runs 2):",
                "",
                "| stage | CPU s | share | wall s |",
                "| --- | ---: | ---: | ---: |",
            ]
            L += [f"| {k} | {v['cpu']:.3f} | {100 * v['cpu'] / total:.0f} % | {v['wall']:.3f} |" for k, v in st.items()]
            L += [f"| all | {total:.3f} | 100 % | {sum(v['wall'] for v in st.values()):.3f} |", ""]
    if b:
        L += [
            f"**Batch CPU use** (issue 16 item 4): {b['images']} TiO2 SEM images of {b['image_size']} segmented "
            "by one `particleseg segment` command with the default model, one after another (`--jobs 1`) and on "
            "worker processes, one per core (`--jobs 0`, the command line's default), interleaved, "
            f"{b['rounds']} run(s) each. *CPU use*: CPU time of the process tree (command, forkserver, workers; "
            "psutil, every 0.05 s) / wall time, 200 % = both cores busy; on a shared machine it is bounded by "
            "what the other jobs leave. *Runnable*: the mean number of the tree's threads that were running or "
            "waiting for a core (state R in /proc, every 0.05 s), at most 2, in %: an estimate of the CPU use "
            "the batch would have on an idle machine (a runnable thread gets a core there), which the other "
            "jobs change much less.",
            "",
            "| run | wall s | CPU s | CPU use | runnable | load before / after |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
        ]
        for name, runs in b["runs"].items():
            for r in runs:
                L.append(
                    f"| `--{name}` | {r['wall']} | {r['cpu']} | {r['cpu_use_percent']} % | "
                    f"{r['runnable_percent']} % | {r['load1_before']} / {r['load1_after']} |"
                )
        L += [
            "",
            f"- medians with workers / one after another: CPU use **{b['cpu_use_percent']['jobs 0']} %** / "
            f"{b['cpu_use_percent']['jobs 1']} %, runnable **{b['runnable_percent']['jobs 0']} %** / "
            f"{b['runnable_percent']['jobs 1']} %",
            "- wall time one after another / with workers, per round: "
            f"**{', '.join(map(str, b['wall_ratios_sequential_over_parallel']))}**; "
            "CPU time with workers / one after another: "
            f"{', '.join(map(str, b['cpu_ratios_parallel_over_sequential']))}",
            f"- files that differ between the two output folders: {b['files_that_differ'] or 'none'} "
            "(TIFF pixels, zip members, CSV and PNG bytes, completion records without their time)",
            "",
        ]
    if s and b:
        st = s.get("stages") or {}
        big = sorted(st.items(), key=lambda kv: -kv[1]["cpu"])[:3]
        where = (
            "on this shared machine"
            if result["shared"]
            else f"on this machine with no other job at the start (1-min load {result['load_before']})"
        )
        one = (
            f"{s['segment']['wall_min']:.2f} s wall {where}"
            if not result["shared"]
            else "not measurable here (the wall times above are those of a shared machine)"
        )
        top = max(r["load1_before"] for runs in b["runs"].values() for r in runs)
        batch_where = (
            f"on this machine, shared with other jobs during the batch runs (1-min load up to {top}, of "
            "which this batch accounts for about 2)"
            if top > 2.5
            else "on this machine"
        )
        L += [
            "**Against the targets of issue 16** (on an idle 2-core machine): `--help` at most 0.3 s: "
            f"{s['particleseg --help']['wall_min']:.2f} s and `segment --help` "
            f"{s['particleseg segment --help']['wall_min']:.2f} s "
            f"{where}. One image through `segment` at most 2.5 s: {one}; it costs "
            f"{s['segment']['cpu_min']:.1f} CPU-s, the largest stages being "
            + ", ".join(f"{k} {v['cpu']:.2f} s" for k, v in big)
            + " (CPU). Batch CPU use at least 185 %: "
            f"{b['cpu_use_percent']['jobs 0']} % with workers {batch_where} (median; one after another "
            f"{b['cpu_use_percent']['jobs 1']} %); its runnable threads: {b['runnable_percent']['jobs 0']} % with "
            f"workers against {b['runnable_percent']['jobs 1']} % one image after another.",
            "",
        ]
    L += [f"Reproduce: `{command}`", END]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark from the command line; print the figures (JSON), with ``--report`` write the section."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="runs of each start-up case (default 7)")
    ap.add_argument(
        "--images", type=int, default=32, help="images in the batch (default 32: all TiO2 images, as issue 16 measured)"
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs of each batch mode (default 2)")
    ap.add_argument("--only", choices=("startup", "batch"), help="one part only")
    ap.add_argument("--report", action="store_true", help=f"write the section into {REPORT.name}")
    args = ap.parse_args(argv)
    result = run_record()
    t0 = time.perf_counter()
    if args.only in (None, "startup"):
        result["startup"] = startup(args.repeats, sorted(DATA.glob("*.tif"))[0])
        print(json.dumps(result["startup"], indent=1), flush=True)
    if args.only in (None, "batch"):
        result["batch"] = batch(args.images, args.rounds)
        print(json.dumps(result["batch"], indent=1), flush=True)
    result["load_after"] = round(os.getloadavg()[0], 2)
    result["shared"] = result["load_before"] > 0.5  # (the load at the end counts this benchmark's own processes)
    result["seconds"] = round(time.perf_counter() - t0)
    print(json.dumps({k: result[k] for k in ("date", "machine", "load_before", "load_after", "seconds")}))
    if args.report:
        cmd = reproduce_command("bench_startup_batch.py", ap, args, ("repeats", "images", "rounds"))
        write_section(markdown(result, cmd), BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
