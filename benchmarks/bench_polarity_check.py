"""The network's check of a weak polarity score, on the EMPS development set.

For every image of ``../shared/datasets/emps-dev`` this segments the image with each polarity
given (``segment_image``, defaults otherwise) and records the scores against the truth with the
evidence :func:`particleseg.autoscale.checked_polarity_score` uses: the particles' mean solidity
and the fraction of the image the network calls foreground, with the image's
:func:`particleseg.autoscale.polarity_score`. It then fits the weights of that evidence by a
logistic regression without intercept on the ``calibration`` half (``bench_emps.half``) and
reports, on both halves, how often the polarity comes out wrong with the score alone, with the
shipped weights and with the fitted ones, at the shipped
:data:`~particleseg.autoscale.POLARITY_CHECK_BELOW` and others.

This is how the shipped constants were chosen (2026-12-04: the fit gave 28 and 6, shipped 25
and 5). ``benchmarks/bench_emps.py`` then scores the pipeline as it runs.

Usage::

    python benchmarks/bench_polarity_check.py --out runs/emps/both_polarities.csv
    python benchmarks/bench_polarity_check.py --table runs/emps/both_polarities.csv   # refit only
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_emps import DATA, _fast_predictor, half, scores  # noqa: E402 - the EMPS benchmark's own helpers

POLARITIES = ("bright", "dark")


def run(limit: int | None = None, model: str | None = None) -> pd.DataFrame:
    """Segment each image in both polarities; one row per image with scores and evidence."""
    import tifffile
    from tqdm.auto import tqdm

    from particleseg.autoscale import particle_solidity, polarity_score
    from particleseg.models import load_bundle
    from particleseg.pipeline import SegmentParams, segment_image

    manifest = pd.read_csv(DATA / "manifest.csv")
    if limit:
        manifest = manifest.sample(limit, random_state=0)
    bundle = load_bundle(model)
    predictor = _fast_predictor(bundle)
    fg = bundle.heads.index("foreground")
    rows = []
    for r in tqdm(list(manifest.itertuples()), desc="both polarities"):
        image = tifffile.imread(DATA / "images" / f"{r.stem}.tif")
        truth = tifffile.imread(DATA / "labels" / f"{r.stem}_labels.tif").astype(np.int64)
        row = {
            "stem": r.stem,
            "half": half(r.stem),
            "polarity": "bright" if r.polarity == "bright-on-dark" else "dark",
        }
        for pol in POLARITIES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seg = segment_image(image, bundle, SegmentParams(polarity=pol), name=r.stem, predictor=predictor)
            rows_in = image.shape[0] - seg.crop_rows  # the picture, without the data bar
            labels = np.asarray(seg.labels)[:rows_in]
            if pol == "bright":
                row["score"] = polarity_score(image[:rows_in])
            for k, v in scores(np.asarray(seg.labels), truth).items():
                row[f"{pol}_{k}"] = v
            row[f"{pol}_solidity"] = particle_solidity(labels)
            row[f"{pol}_foreground"] = float(np.mean(np.asarray(seg.probabilities)[:rows_in, :, fg] > 0.5))
        rows.append(row)
    return pd.DataFrame(rows)


def evidence(df: pd.DataFrame) -> np.ndarray:
    """Return the checked score's three terms: the score, the solidity and foreground differences (bright - dark)."""
    return np.c_[
        df["score"],
        df["bright_solidity"] - df["dark_solidity"],
        df["bright_foreground"] - df["dark_foreground"],
    ]


def fit(df: pd.DataFrame) -> np.ndarray:
    """Fit the weights on the calibration half, scaled to the score's 1.

    A logistic regression without intercept: the problem is symmetric in the two polarities.
    """
    from scipy.optimize import minimize

    cal = (df["half"] == "calibration").to_numpy()
    x = evidence(df)[cal]
    y = (df["polarity"] == "bright").to_numpy(float)[cal]
    w = minimize(lambda w: np.sum(np.logaddexp(0, x @ w) - y * (x @ w)), np.zeros(3)).x
    return w / w[0]


def wrong(df: pd.DataFrame, weights, below: float) -> pd.Series:
    """Images whose polarity comes out wrong, per half, with the check below ``below``."""
    z = evidence(df) @ np.asarray(weights, float)
    score = df["score"].to_numpy()
    bright = np.where(np.abs(score) < below, z > 0, score > 0)
    return (
        pd.Series(bright != (df["polarity"] == "bright").to_numpy())
        .groupby(df["half"].to_numpy())
        .sum()
        .reindex(["calibration", "check"], fill_value=0)
    )


def report(df: pd.DataFrame) -> list[str]:
    """Markdown table: wrong polarities per half for the score alone, the shipped and the fitted weights."""
    from particleseg import autoscale

    shipped = (1.0, autoscale.CHECK_SOLIDITY_WEIGHT, -autoscale.CHECK_FOREGROUND_WEIGHT)
    fitted = fit(df)
    lines = [
        f"fitted weights (score 1): solidity {fitted[1]:.1f}, foreground {-fitted[2]:.1f}; "
        f"shipped {shipped[1]:g}, {-shipped[2]:g}",
        "",
        "| rule | checked below | images checked | wrong: calibration | wrong: check |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    score_only = wrong(df, (1, 0, 0), 0)
    lines.append(f"| score alone | | 0 | {score_only['calibration']} | {score_only['check']} |")
    for name, w in (("shipped weights", shipped), ("fitted weights", fitted)):
        for below in (1.0, autoscale.POLARITY_CHECK_BELOW, 2.0, np.inf):
            n = int((np.abs(df["score"]) < below).sum())
            miss = wrong(df, w, below)
            lines.append(f"| {name} | {below:g} | {n} | {miss['calibration']} | {miss['check']} |")
    return lines


def main(argv=None) -> int:
    """Run the command line; see the module notes."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the per-image table (CSV)")
    ap.add_argument("--table", type=Path, help="read a table written before instead of segmenting")
    ap.add_argument("--limit", type=int, help="a fixed sample of this many images")
    ap.add_argument("--model", help="bundle (default: the shipped default model)")
    args = ap.parse_args(argv)
    if not args.table and not (DATA / "manifest.csv").is_file():
        print(f"bench_polarity_check: the EMPS set is not at {DATA} (set PARTICLESEG_EMPS)", file=sys.stderr)
        return 2
    df = pd.read_csv(args.table) if args.table else run(args.limit, args.model)
    if args.out:
        df.to_csv(args.out, index=False)
    print("\n".join(report(df)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
