"""All metrics of a pair (:func:`evaluate_pair`) and of folders of files (:func:`evaluate_files`).

Pairs proposal files with ground-truth files by name (:func:`pair_files`), reads them
(:func:`read_array`) and writes ``metrics.csv``, ``metrics.md`` and ``metrics_sweep.csv``, as
``particleseg evaluate`` does. References ([7]_) as in the package docstring
(:mod:`particleseg.metrics`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..errors import InputError, ParticlesegError
from ..io import check_outputs, list_images, write_atomic, write_csv
from ..io import read_array as _read_file
from .contingency import contingency
from .inputs import DEFAULT_THRESHOLDS, _check_thresholds, _levels, _prepare
from .instance import AP_THRESHOLDS, _ap_from_counts, _best_ious, _match_counts, _match_summary
from .isbi import _rand_f_from_sums, _rand_sums, _thinned_tables, _vi_score_of_tables
from .pixel import _iou_from_counts, _pixel_f_from_counts, _youden_from_counts, pixel_counts
from .sizes import _particle_table, size_distribution_agreement
from .topology import WARPING_RADIUS, _warping_counts, _warping_thresholds

#: Columns of the publication's Table 1 and the extra instance columns, as (key, heading).
TABLE1_COLUMNS = (
    ("iou_image", "IoU (image)"),
    ("iou_instance", "IoU (instance)"),
    ("youden", "Youden"),
    ("pixel_error", "pixel err"),
    ("warping_error", "warping err"),
    ("rand_error", "Rand err"),
    ("rand_error_thinned", "Rand err thinned"),
    ("vi_error_thinned", "VI/IT err thinned"),
    ("ap", "AP"),
    ("f1_50", "F1@0.5"),
)

#: Metrics of :func:`evaluate_pair` that are best when largest; the others are errors.
_SCORES = ("iou_image", "iou_instance", "iou_instance_truth", "youden", "ap", "f1_50")

_ERRORS = ("pixel_error", "warping_error", "rand_error", "rand_error_thinned", "vi_error_thinned")


@contextmanager
def _timer(timings: dict | None, key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if timings is not None:
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def evaluate_pair(
    pred: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    watershed: bool = False,
    crop_rows: int | None = None,
    pred_kind: str = "auto",
    truth_kind: str = "auto",
    warping_radius: int | None = WARPING_RADIUS,
    exclude_border: bool = True,
    name: str = "pred",
    truth_name: str = "truth",
    timings: dict | None = None,
    return_sweep: bool = False,
):
    """All metrics of one proposal against its ground truth, over a threshold sweep.

    Every metric is computed at every threshold (once for masks and label images) and its
    best value is reported with the threshold that gave it (``KEY_thr``), as the publication
    did [7]_: foreground IoU (:func:`foreground_iou`), instance IoU averaged over proposed
    particles (``iou_instance``, the publication's) and over ground-truth particles
    (``iou_instance_truth``, :func:`instance_iou`), Youden's index, pixel error, warping error
    (with ``warping_splits``/``warping_mergers``), Rand error, Rand error after thinning,
    information-theoretic error after thinning, average precision (``ap``) and F1 at IoU 0.5
    (``f1_50``). At the threshold with the best F1 it also reports the particle counts
    (``n_truth``, ``n_pred``, ``tp``, ``fp``, ``fn``, ``precision_50``, ``recall_50``) and
    the size-distribution agreement (:func:`size_distribution_agreement`).

    Parameters
    ----------
    pred, truth : (Y, X) or (Z, Y, X) arrays
        See the module notes and :func:`classify_input`.
    thresholds : sequence of float
        Probability thresholds (a pixel is foreground when its value is greater).
    watershed : bool
        Split touching particles of the thresholded proposal (and of a binary mask proposal)
        by the distance-transform watershed of :func:`particleseg.postprocess.split_touching`
        before scoring, as the publication did. Label images are used as they are.
    crop_rows : int, optional
        Rows at the bottom of both images to ignore (an SEM data bar).
    pred_kind, truth_kind : str
        ``auto``, ``prob``, ``mask`` or ``labels`` (:func:`classify_input`).
    warping_radius : int or None
        See :func:`classify_mismatches`.
    exclude_border : bool
        Leave particles that touch the image border out of the size distributions (both sides).
    name, truth_name : str
        Names for error messages.
    timings : dict, optional
        Filled with the seconds spent per metric group.
    return_sweep : bool
        Also return a DataFrame with every metric at every threshold.

    Returns
    -------
    dict (and a DataFrame with ``return_sweep``)

    Raises
    ------
    InputError
        One line naming the file: shape mismatch, NaNs, a non-binary mask, values outside
        [0, 1] for a probability map, a gray-value image given as labels.

    Examples
    --------
    A probability map scored against the mask it was made from: every metric is perfect at the
    first threshold of the sweep that separates the particles from the background.

    >>> import numpy as np
    >>> truth = np.zeros((16, 16), np.uint8)
    >>> truth[2:7, 2:7] = truth[9:14, 8:14] = 1
    >>> prob = np.where(truth > 0, 0.8, 0.1)
    >>> res = evaluate_pair(prob, truth)
    >>> res["iou_image"], res["iou_image_thr"], res["rand_error"], res["warping_error"], res["ap"]
    (1.0, 0.1, 0.0, 0.0, 1.0)
    >>> res["n_truth"], res["tp"]
    (2, 2)
    """
    with _timer(timings, "inputs"):
        thresholds = _check_thresholds(thresholds)
        inp = _prepare(pred, truth, pred_kind, truth_kind, crop_rows, name, truth_name)
        warp_th = set(_warping_thresholds(inp, thresholds))
    rows = []
    best_level = None
    levels = _levels(inp, thresholds, watershed)
    while True:
        with _timer(timings, "threshold + label" + (" + watershed" if watershed else "")):
            level = next(levels, None)
        if level is None:
            break
        t, labels, mask = level
        row: dict = {"threshold": t}
        with _timer(timings, "IoU (image), Youden, pixel error"):
            c = sum(pixel_counts(m, tm) for m, tm in zip(mask, inp.truth_mask))
            row.update(
                iou_image=_iou_from_counts(c), youden=_youden_from_counts(c), pixel_error=1 - _pixel_f_from_counts(c)
            )
        with _timer(timings, "contingency tables"):
            tables = [contingency(tl, pl) for tl, pl in zip(inp.truth_labels, labels)]
        with _timer(timings, "instance IoU, AP, F1"):
            best_t = np.concatenate([_best_ious(ct)[0] for ct in tables])
            best_p = np.concatenate([_best_ious(ct)[1] for ct in tables])
            n_t, n_p = best_t.size, best_p.size
            both_empty = n_t == 0 and n_p == 0
            row["iou_instance"] = float(best_p.mean()) if n_p else (1.0 if both_empty else 0.0)
            row["iou_instance_truth"] = float(best_t.mean()) if n_t else (1.0 if both_empty else 0.0)
            counts = sum(_match_counts(ct, AP_THRESHOLDS) for ct in tables)
            row["ap"] = _ap_from_counts(counts)
            m50 = _match_summary(*counts[0], 0.5)
            row.update(
                f1_50=m50["f1"],
                n_truth=n_t,
                n_pred=n_p,
                tp=m50["tp"],
                fp=m50["fp"],
                fn=m50["fn"],
                precision_50=m50["precision"],
                recall_50=m50["recall"],
            )
        with _timer(timings, "Rand error"):
            row["rand_error"] = 1 - _rand_f_from_sums(sum(_rand_sums(ct) for ct in tables))
        with _timer(timings, "border thinning"):
            thin, flat = _thinned_tables(inp.truth_labels, labels)
        with _timer(timings, "Rand error thinned"):
            row["rand_error_thinned"] = 1 - _rand_f_from_sums(sum(_rand_sums(ct) for ct in thin))
        with _timer(timings, "VI/IT error thinned"):
            row["vi_error_thinned"] = 1 - _vi_score_of_tables(thin, flat)
        row["warping_error"] = row["warping_splits"] = row["warping_mergers"] = math.nan
        if t in warp_th or math.isnan(t):
            with _timer(timings, "warping error"):
                splits = mergers = 0
                for tm, pm in zip(inp.truth_mask, mask):
                    s, mg = _warping_counts(tm, pm, warping_radius)
                    splits, mergers = splits + s, mergers + mg
                row.update(warping_error=(splits + mergers) / mask.size, warping_splits=splits, warping_mergers=mergers)
        rows.append(row)
        if best_level is None or row["f1_50"] > best_level[0]["f1_50"]:
            best_level = (row, labels)

    sweep = pd.DataFrame(rows)
    result: dict = {"kind": inp.pred_kind, "slices": int(inp.truth_labels.shape[0])}
    for key in _SCORES + _ERRORS:
        vals = sweep[key].to_numpy(float)
        if np.all(np.isnan(vals)):
            result[key], result[f"{key}_thr"] = math.nan, math.nan
            continue
        i = int(np.nanargmax(vals) if key in _SCORES else np.nanargmin(vals))
        result[key], result[f"{key}_thr"] = float(vals[i]), float(sweep["threshold"].iloc[i])
        if key == "warping_error":
            result["warping_splits"] = int(sweep["warping_splits"].iloc[i])
            result["warping_mergers"] = int(sweep["warping_mergers"].iloc[i])
    if "warping_splits" not in result:
        result["warping_splits"] = result["warping_mergers"] = math.nan
    row, labels = best_level
    for key in ("n_truth", "n_pred", "tp", "fp", "fn", "precision_50", "recall_50"):
        result[key] = row[key]
    with _timer(timings, "size distributions"):
        result.update(
            size_distribution_agreement(
                _particle_table(labels, exclude_border), _particle_table(inp.truth_labels, exclude_border)
            )
        )
    return (result, sweep) if return_sweep else result


#: Name endings of proposal files (stripped to pair them with ground truth), in order of preference.
PRED_SUFFIXES = ("_prob", "_labels", "_mask")

#: Name endings of ground-truth files stripped to pair them.
TRUTH_SUFFIXES = ("_m", "_mask", "_labels", "_gt")

#: Outputs of ``particleseg segment`` that are not proposals; skipped when a folder is given.
_NOT_PREDICTIONS = ("_overview",)

_KIND_OF_SUFFIX = {"_prob": "prob", "_labels": "labels", "_mask": "mask", "": "auto"}

OUTPUT_NAMES = ("metrics.csv", "metrics.md", "metrics_sweep.csv")


def _split_suffix(path: Path, suffixes: Sequence[str]) -> tuple[str, str]:
    stem = path.name.split(".")[0]
    for s in suffixes:
        if stem.endswith(s) and len(stem) > len(s):
            return stem[: -len(s)], s
    return stem, ""


def pair_files(pred_paths, truth_paths, pred_kind: str = "auto"):
    """Pair proposal files with ground-truth files by name.

    The rule: a proposal ``X_prob.tif``, ``X_labels.tif``, ``X_mask.tif`` or ``X.tif`` pairs
    with the ground truth ``X_m.tif``, ``X_mask.tif``, ``X_labels.tif``, ``X_gt.tif`` or
    ``X.tif`` (any image extension; the name ending is stripped to get the key ``X``). When
    several proposals share a key, the first in the order ``_prob``, ``_labels``, ``_mask``,
    plain is scored (with ``pred_kind`` other than ``auto``, files of that kind come first),
    and the others are noted. ``*_overview.png`` files of ``particleseg segment`` are skipped.

    Returns
    -------
    pairs : list of (pred_path, truth_path, kind, note)
    unmatched_pred : list of (pred_path, message)
    unmatched_truth : list of (truth_path, message)
    """
    preds = [p for p in list_images(pred_paths) if not _split_suffix(p, _NOT_PREDICTIONS)[1]]
    truths = list_images(truth_paths)
    by_truth: dict[str, list[Path]] = {}
    for t in truths:
        by_truth.setdefault(_split_suffix(t, TRUTH_SUFFIXES)[0], []).append(t)
    order = list(PRED_SUFFIXES) + [""]
    if pred_kind != "auto":
        first = {"prob": "_prob", "labels": "_labels", "mask": "_mask"}[pred_kind]
        order.remove(first)
        order.insert(0, first)
    by_pred: dict[str, list[tuple[int, Path, str]]] = {}
    for p in preds:
        key, suffix = _split_suffix(p, PRED_SUFFIXES)
        by_pred.setdefault(key, []).append((order.index(suffix), p, suffix))
    pairs, unmatched_pred = [], []
    for key in sorted(by_pred):
        cands = sorted(by_pred[key], key=lambda c: (c[0], str(c[1])))
        _, p, suffix = cands[0]
        note = ""
        if len(cands) > 1:
            note = f"also found {', '.join(c[1].name for c in cands[1:])}; scored {p.name}"
        found = by_truth.get(key, [])
        if not found:
            unmatched_pred.append(
                (
                    p,
                    f"{p}: no ground truth named {key}_m.tif, {key}.tif or similar "
                    f"(proposal names end in _prob, _labels, _mask or nothing)",
                )
            )
        elif len(found) > 1:
            unmatched_pred.append((p, f"{p}: several ground-truth files match: {', '.join(f.name for f in found)}"))
        else:
            kind = pred_kind if pred_kind != "auto" else _KIND_OF_SUFFIX[suffix]
            pairs.append((p, found[0], kind, note))
    unmatched_truth = [
        (t, f"{t}: no proposal named {k}_prob.tif, {k}_labels.tif, {k}.tif or similar")
        for k in sorted(set(by_truth) - set(by_pred))
        for t in by_truth[k]
    ]
    return pairs, unmatched_pred, unmatched_truth


def read_array(path: str | os.PathLike) -> np.ndarray:
    """Read a probability map, mask or label image.

    As :func:`particleseg.io.read_array`; an empty mask is a valid proposal.

    Raises
    ------
    InputError
        Missing or unreadable file, or a color image.
    """
    data = _read_file(path)
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4:
        raise InputError(f"{path}: is a color image; expected a probability map, mask or label image")
    return data


def _fmt(v) -> str:
    if v is None or isinstance(v, float) and math.isnan(v):
        return "–"
    return f"{v:.4f}" if isinstance(v, (float, np.floating)) else str(v)


def markdown_table(table, title: str | None = None, settings: str | None = None) -> str:
    """Format a Markdown table with the columns of the publication's Table 1 plus AP and F1 at IoU 0.5."""
    lines = []
    if title:
        lines += [f"# {title}", ""]
    if settings:
        lines += [settings, ""]
    lines.append("| image | " + " | ".join(h for _, h in TABLE1_COLUMNS) + " |")
    lines.append("| --- |" + " --- |" * len(TABLE1_COLUMNS))
    for _, row in table.iterrows():
        if row.get("status") not in ("ok", "mean"):
            continue
        name = f"**{row['file']}**" if row.get("status") == "mean" else str(row["file"])
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k, _ in TABLE1_COLUMNS) + " |")
    failed = table[table["status"] == "failed"] if "status" in table else table.iloc[0:0]
    if len(failed):
        lines += ["", "Not scored:", ""]
        lines += [f"- {m}" for m in failed["message"]]
    return "\n".join(lines) + "\n"


def evaluate_files(
    pred_paths,
    truth_paths,
    out_dir: str | os.PathLike,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    watershed: bool = False,
    crop_rows: int | None = None,
    pred_kind: str = "auto",
    truth_kind: str = "auto",
    warping_radius: int | None = WARPING_RADIUS,
    exclude_border: bool = True,
    overwrite: bool = False,
    progress: bool = True,
):
    """Score proposal files against ground-truth files and write the results.

    Files are paired by name (:func:`pair_files`). Writes into ``out_dir``:

    * ``metrics.csv``: one row per proposal (``status`` ok or failed, with a ``message``; ground
      truth without a proposal is listed with status ``no proposal``) and a ``mean`` row
      averaging the scored images;
    * ``metrics.md``: the Markdown table of :func:`markdown_table`;
    * ``metrics_sweep.csv``: every metric at every threshold, per image.

    A bad pair (unreadable file, shape mismatch, NaNs, non-binary mask, ...) is reported with
    a one-line message and the other pairs are still scored.

    Returns
    -------
    table : pandas.DataFrame
        The rows of ``metrics.csv``.
    failures : list of (file, message)
        Proposals that could not be scored.
    """
    out_dir = Path(out_dir)
    outputs = [out_dir / n for n in OUTPUT_NAMES]
    check_outputs(outputs, overwrite)  # fail before any work
    pairs, unmatched_pred, unmatched_truth = pair_files(pred_paths, truth_paths, pred_kind)
    if not pairs and not unmatched_pred:
        raise InputError(f"{', '.join(map(str, pred_paths))}: no proposal image files (TIFF, PNG, JPEG) found")
    rows, sweeps, failures = [], [], []
    for p, msg in unmatched_pred:
        failures.append((str(p), msg))
        rows.append({"file": p.name, "truth": "", "status": "failed", "message": msg})
    for p, t, kind, note in tqdm(pairs, desc="evaluate", unit="image", disable=not progress or len(pairs) < 2):
        try:
            res, sweep = evaluate_pair(
                read_array(p),
                read_array(t),
                thresholds,
                watershed,
                crop_rows,
                kind,
                truth_kind,
                warping_radius,
                exclude_border,
                name=str(p),
                truth_name=str(t),
                return_sweep=True,
            )
        except (ParticlesegError, OSError, ValueError) as exc:
            msg = str(exc) if str(p) in str(exc) or str(t) in str(exc) else f"{p}: {exc}"
            failures.append((str(p), msg))
            rows.append({"file": p.name, "truth": t.name, "status": "failed", "message": msg})
            continue
        rows.append({"file": p.name, "truth": t.name, "status": "ok", "message": note, **res})
        sweep.insert(0, "file", p.name)
        sweeps.append(sweep)
    for t, msg in unmatched_truth:
        rows.append({"file": "", "truth": t.name, "status": "no proposal", "message": msg})
    table = pd.DataFrame(rows)
    ok = table[table["status"] == "ok"]
    if len(ok):
        numeric = [
            c for c in ok.columns if c not in ("file", "truth", "status", "message", "kind") and not c.endswith("_thr")
        ]
        mean = {"file": "mean", "truth": "", "status": "mean", "message": f"mean of {len(ok)} image(s)"}
        mean.update({c: float(np.nanmean(ok[c].to_numpy(float))) if ok[c].notna().any() else math.nan for c in numeric})
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
    settings = (
        f"Threshold sweep of probability maps: {len(thresholds)} threshold(s) from {min(thresholds):g} to "
        f"{max(thresholds):g}, best value per metric (masks and label images are scored as they are); "
        f"watershed: {'yes' if watershed else 'no'}; cropped rows: {crop_rows or 0}. "
        "Errors (err) are best when 0, the other columns when 1. AP: mean of TP/(TP+FP+FN) over "
        "IoU 0.50-0.95; IoU (instance): mean over proposed particles of the best IoU."
    )
    write_csv(outputs[0], table, overwrite)
    write_atomic(
        outputs[1],
        lambda tmp: tmp.write_text(markdown_table(table, "Segmentation metrics", settings), encoding="utf-8"),
        overwrite,
    )
    sweep_table = pd.concat(sweeps, ignore_index=True) if sweeps else pd.DataFrame(columns=["file", "threshold"])
    write_csv(outputs[2], sweep_table, overwrite)
    return table, failures
