"""Generalisation to other materials: the EMPS development set, per image, beside the baselines.

For every image of ``../shared/datasets/emps-dev`` (366 real SEM and TEM micrographs of many
materials with instance labels; read in place, never copied) this scores

* ``auto``: ``segment_image`` with its defaults and no hint (polarity and particle size
  estimated, :mod:`particleseg.autoscale`);
* ``oracle``: the same, told the true polarity and the true median particle diameter;
* ``as_is``: the behaviour before automatic scale and polarity (bright particles, no
  resampling);
* ``otsu`` and ``li``: a global threshold **with the true polarity**, then the
  distance-transform watershed (h = 1 px) and removal of particles under 15 px, the classic
  baseline of ``benchmarks/run.py``,

with foreground IoU, F1 at IoU 0.5 and instance IoU per true particle (every detected particle
counts, border particles included, because the labels include them), and records the
polarity and size estimates against the truth from the manifest. Images are split into two
fixed halves by a hash of their name: ``calibration`` (the half on which the two constants
of the estimators were looked at) and ``check``; figures are reported for each half and all.

Usage::

    python benchmarks/bench_emps.py --out benchmarks/emps.csv --report benchmarks/EMPS.md
    python benchmarks/bench_emps.py --limit 40          # a quick look at 40 images
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from particleseg.autoscale import median_diameter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import classic_labels  # noqa: E402 - the baseline of benchmarks/run.py, with the true polarity

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PARTICLESEG_EMPS", ROOT.parent / "shared" / "datasets" / "emps-dev"))
METHODS = ("auto", "oracle", "as_is", "otsu", "li")
METRICS = ("fg_iou", "f1", "inst_iou")


def half(stem: str) -> str:
    """Return the fixed half an image belongs to (``calibration`` or ``check``)."""
    return "calibration" if int(hashlib.sha1(stem.encode()).hexdigest(), 16) % 2 == 0 else "check"


def true_diameter(median_area_px: float) -> float:
    """Equivalent circular diameter of the manifest's median particle area (the package's size)."""
    return median_diameter([median_area_px])


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Score one labelling against the truth: foreground IoU, F1 at IoU 0.5, instance IoU per true particle."""
    from particleseg.metrics import foreground_iou, instance_iou, match_instances

    return {
        "fg_iou": foreground_iou(pred, truth),
        "f1": match_instances(truth, pred, 0.5)["f1"],
        "inst_iou": instance_iou(pred, truth, average="truth"),
    }


def share_within_25(estimate, truth) -> float:
    """Share of the images whose size estimate lies within ±25 % of the true diameter (in log ratio).

    Examples
    --------
    >>> share_within_25([10, 12, 7.9, float("nan")], [10, 10, 10, 10])  # 10 / 7.9 = 1.27: outside
    0.5
    """
    ratio = np.asarray(estimate, float) / np.asarray(truth, float)
    return float((np.abs(np.log(ratio)) <= np.log(1.25)).mean())


def missing(prog: str, data: Path = DATA) -> bool:
    """Say in one line, prefixed with ``prog``, when the EMPS set is not at ``data``; return whether it is missing."""
    if (data / "manifest.csv").is_file():
        return False
    print(f"{prog}: the EMPS development set is not at {data} (set PARTICLESEG_EMPS)", file=sys.stderr)
    return True


def emps_images(limit: int | None = None, data: Path = DATA, progress: bool = True):
    """Yield ``(manifest row, image, label image)`` for the EMPS images, read in place.

    All of them, or a fixed random sample of ``limit``; ``data`` is the folder of the set
    (``manifest.csv``, ``images/STEM.tif``, ``labels/STEM_labels.tif``).
    """
    import tifffile
    from tqdm.auto import tqdm

    manifest = pd.read_csv(data / "manifest.csv")
    if limit:
        manifest = manifest.sample(limit, random_state=0)
    for _, r in tqdm(list(manifest.iterrows()), desc="emps", disable=not progress):
        image = tifffile.imread(data / "images" / f"{r.stem}.tif")
        yield r, image, tifffile.imread(data / "labels" / f"{r.stem}_labels.tif")


def run(limit: int | None = None, model: str | None = None, methods=METHODS, progress: bool = True) -> pd.DataFrame:
    """Segment the EMPS images (all, or a fixed sample of ``limit``) with each method; one row per image."""
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image

    bundle = load_bundle(model)
    predictor = _fast_predictor(bundle)
    rows = []
    for r, image, truth in emps_images(limit, progress=progress):
        truth = truth.astype(np.int64)
        pol = "bright" if r.polarity == "bright-on-dark" else "dark"
        d_true = true_diameter(r.median_area_px)
        row = {"stem": r.stem, "half": half(r.stem), "polarity": pol, "diameter": d_true, "n_true": int(r.n_particles)}
        for method in methods:
            t0 = time.perf_counter()
            if method in ("otsu", "li"):
                labels = classic_labels(image.astype(np.float32), method, polarity=pol)[1]
            else:
                params = {
                    # the defaults: a microscope's data bar found and left out as `segment` does
                    "auto": SegmentParams(),
                    "oracle": SegmentParams(polarity=pol, particle_size=d_true),
                    "as_is": SegmentParams(crop_rows=0, polarity="bright", rescale=1.0),
                }[method]
                seg = segment_image(image, bundle, params, name=r.stem, predictor=predictor)
                labels = seg.labels
                if method == "auto":
                    sc = seg.scale
                    row.update(
                        est_polarity=sc.polarity,
                        polarity_source=sc.polarity_source,  # "compared": checked by the network
                        est_diameter=sc.particle_size or np.nan,
                        size_source=sc.size_source,
                        scale_factor=sc.factor,
                        crop_rows=seg.crop_rows,
                    )
            for k, v in scores(labels, truth).items():
                row[f"{method}_{k}"] = v
            row[f"{method}_n"] = int(labels.max())
            row[f"{method}_s"] = time.perf_counter() - t0
        rows.append(row)
    return pd.DataFrame(rows)


def _fast_predictor(bundle):
    """ONNX Runtime when the bundle carries an ONNX export, else Keras."""
    exports = bundle.metadata.get("exports") or {}
    if "onnx" in exports and (bundle.path / exports["onnx"]["file"]).is_file():
        from particleseg.models.export import onnx_predictor

        return onnx_predictor(bundle.path / exports["onnx"]["file"])
    return None


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per method, for each half and all images; plus the estimates."""
    out = []
    for name, part in [("all", df), *df.groupby("half")]:
        row = {"images": name, "n": len(part)}
        for m in METHODS:
            for k in METRICS:
                if f"{m}_{k}" in part:
                    row[f"{m} {k}"] = part[f"{m}_{k}"].mean()
        if "est_diameter" in part:
            ratio = part["est_diameter"] / part["diameter"]
            row["size within 25 %"] = share_within_25(part["est_diameter"], part["diameter"])
            row["size median |log ratio|"] = float(np.nanmedian(np.abs(np.log(ratio))))
            row["polarity correct"] = float((part["est_polarity"] == part["polarity"]).mean())
            if "polarity_source" in part:
                row["polarity compared"] = float((part["polarity_source"] == "compared").mean())
        out.append(row)
    return pd.DataFrame(out)


def report(df: pd.DataFrame) -> list[str]:
    """Return the Markdown tables of :func:`summarize` (and the estimates, when present) as lines."""
    s = summarize(df).set_index("images")
    lines = [
        "| images | n | method | foreground IoU | F1 @ IoU 0.5 | instance IoU (per true particle) |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, row in s.iterrows():
        for m in METHODS:
            if f"{m} fg_iou" in row:
                lines.append(
                    f"| {name} | {int(row['n'])} | {m} | {row[f'{m} fg_iou']:.3f} | {row[f'{m} f1']:.3f} | "
                    f"{row[f'{m} inst_iou']:.3f} |"
                )
    if "est_diameter" in df:
        lines += [
            "",
            "| images | size estimate within ±25 % | median abs. log ratio | polarity correct |",
            "| --- | ---: | ---: | ---: |",
        ]
        compared = "polarity compared" in s
        if compared:  # the images whose polarity the network checked (pipeline.network_passes)
            lines[-2] += " polarity checked by the network |"
            lines[-1] += " ---: |"
        for name, row in s.iterrows():
            lines.append(
                f"| {name} | {row['size within 25 %']:.3f} | {row['size median |log ratio|']:.3f} | "
                f"{row['polarity correct']:.3f} |" + (f" {row['polarity compared']:.3f} |" if compared else "")
            )
        conf = pd.crosstab(df["polarity"], df["est_polarity"], rownames=["true"], colnames=["estimated"])
        lines += [
            "",
            "Polarity confusion (rows: true, columns: estimated):",
            "",
            "| true \\ estimated | " + " | ".join(conf.columns) + " |",
            "| --- | " + " | ".join("---:" for _ in conf.columns) + " |",
        ]
        lines += [f"| {i} | " + " | ".join(str(v) for v in conf.loc[i]) + " |" for i in conf.index]
    return lines


def main(argv=None) -> int:
    """Run the benchmark from the command line; print the report and write the CSV and Markdown asked for."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, help="a fixed random sample of this many images")
    ap.add_argument("--model", help="model bundle (default: the shipped default)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", help="per-image CSV")
    ap.add_argument("--report", help="Markdown summary")
    a = ap.parse_args(argv)
    if missing("bench_emps"):
        return 2
    t0 = time.perf_counter()
    df = run(a.limit, a.model, tuple(a.methods.split(",")))
    if a.out:
        df.to_csv(a.out, index=False)
    lines = report(df) + ["", f"{len(df)} images, {time.perf_counter() - t0:.0f} s."]
    print("\n".join(lines))
    if a.report:
        Path(a.report).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
