"""What each Fiji command does, once its parameters are known.

Each implementation takes a :class:`Context` (the active image, the open images, where to
report) and the parameter values (already read from a GenericDialog, a macro option string or
a SciJava script's ``#@`` parameters), calls the core pipeline on NumPy arrays, and publishes
the results (:mod:`particleseg.fiji.publish`). Problems are raised as
:class:`~particleseg.errors.ParticlesegError` with one line; the bridge shows them the ImageJ
way.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import metrics
from .. import postprocess as pp
from ..autoscale import polarity_of_particles
from ..errors import InputError, ParticlesegError
from ..io import Calibration, list_images
from ..measure import PARAMETER_COLUMNS, column_units, measure_particles
from ..models import list_bundles, load_bundle, model_search_path, resolve_bundle
from ..pipeline import AUGMENT_NOTE, batch_report, kept_first, segment_files, segment_image
from . import publish
from .convert import calibrate_from_file, from_imageplus
from .options import (
    NONE,
    check_value,
    parse_crop_rows,
    parse_range,
    parse_thresholds,
    segment_params,
    shape_ranges,
)

#: one entry per command run in this process (command, image, counts, seconds, error); the
#: headless batch runner summarises them
RECORDS: list[dict[str, Any]] = []
_RECORDS_LOCK = threading.Lock()


def record(**entry) -> None:
    with _RECORDS_LOCK:
        RECORDS.append(entry)


def _j(name: str):
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    return scyjava.jimport(name)


@dataclass
class Context:
    """Where a command runs: the active image and how to report."""

    command: str
    macro: bool = False
    imp: Any = None
    progress_hooks: list[Callable[[str, int, int], None]] = field(default_factory=list)

    @classmethod
    def current(cls, command: str, macro: bool = False, hooks=None) -> "Context":
        """Return a context for ``command`` on ImageJ's active image, reporting to ``hooks`` too."""
        imp = _j("ij.WindowManager").getCurrentImage()
        return cls(command, macro, imp, list(hooks or []))

    def require_image(self):
        """Return the active image; :class:`InputError` when no image is open."""
        if self.imp is None:
            raise InputError("no image open (open an image first, e.g. File > Open...)")
        return self.imp

    def image(self, title: str, role: str):
        """Return an open image by title (batch-mode images included)."""
        if title is None or str(title) in ("", NONE):
            raise InputError(f"no {role} image chosen")
        imp = _j("ij.WindowManager").getImage(str(title))
        if imp is None:
            open_titles = ", ".join(str(t) for t in (_j("ij.WindowManager").getImageTitles() or [])) or "none"
            raise InputError(f"{title}: no open image of that title for the {role} (open images: {open_titles})")
        return imp

    def optional_image(self, title: str, role: str):
        """Return the open image ``title``, or None when none (``none``) is chosen."""
        return None if title is None or str(title) in ("", NONE) else self.image(title, role)

    def log(self, message: str) -> None:
        """Write ``message`` to ImageJ's Log."""
        publish.log(message)

    def status(self, message: str) -> None:
        """Show ``message`` in ImageJ's status bar."""
        publish.status(message)

    def progress(self, done: int, total: int, what: str = "") -> None:
        """Show the progress in ImageJ's progress bar and tell the progress hooks."""
        publish.progress(done, total)
        for hook in self.progress_hooks:
            hook(what or self.command, done, total)


# ------------------------------------------------------------------------------------------
# model bundles (loaded once per process; the Keras model inside is loaded on first use)

_BUNDLES: dict[tuple, Any] = {}
_BUNDLES_LOCK = threading.Lock()


def get_bundle(name: str):
    """Load a model bundle by name or path, once per process (again when its bundle.json or zip changed)."""
    path = resolve_bundle(str(name).strip() or None)
    stamp_file = path if path.is_file() else path / "bundle.json"
    try:
        stamp = stamp_file.stat().st_mtime_ns
    except OSError:
        stamp = 0
    key = (str(path.resolve()), stamp)
    with _BUNDLES_LOCK:
        if key not in _BUNDLES:
            _BUNDLES[key] = load_bundle(path)
        return _BUNDLES[key]


# ------------------------------------------------------------------------------------------
# helpers


def image_calibration(imp, command: str, strict: bool = False) -> Calibration:
    """Return the calibration to measure ``imp`` in.

    ImageJ's, else the one in its file's microscope metadata (set on the image), else pixels;
    said in the Log when it is not ImageJ's. With ``strict`` unusable metadata is an error (the
    parameter ``strict``).
    """
    cal, note = calibrate_from_file(imp, strict)
    if note:
        publish.log(f"{command.rstrip('.')}: {note}")
    return cal


def _gray_2d(imp, role: str = "image") -> tuple[np.ndarray, Calibration]:
    return from_imageplus(imp, allow_stack=False)


def _labels_from_image(imp) -> tuple[np.ndarray, Calibration]:
    """Return a label image, from a mask or a label image.

    A mask has any two values (nonzero is particle, labelled as 4-connected components); a label
    image has integer values, 0 background.
    """
    arr, cal = _gray_2d(imp)
    name = str(imp.getTitle())
    values = np.unique(arr)
    if len(values) <= 2 and (values.min() == 0 or len(values) == 1):
        return pp.label_mask(arr > 0), cal
    if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        raise InputError(
            f"{name}: is neither a mask nor a label image (non-integer values); "
            "give a binary mask or a label image (0 = background)"
        )
    if arr.min() < 0:
        raise InputError(f"{name}: label image has negative values")
    return arr.astype(np.int32), cal


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise InputError(
            f"{name_b}: has shape {b.shape[::-1]} but {name_a} has {a.shape[::-1]} (width x height must match)"
        )


def _reject_summary(table: pd.DataFrame) -> str:
    if not len(table) or table["kept"].all():
        return ""
    reasons = (
        table.loc[~table["kept"], "reject_reason"].astype(str).str.replace(r"[<>].*", "", regex=True).value_counts()
    )
    return " (" + ", ".join(f"{k}: {v}" for k, v in reasons.items()) + ")"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _reselect(imp) -> None:
    """Make ``imp`` the active image again after new result images were shown."""
    try:
        _j("ij.IJ").selectWindow(int(imp.getID()))
    except Exception:  # noqa: BLE001 - closed meanwhile
        pass


def _publish_particles(
    ctx: Context,
    v: dict,
    imp,
    labels: np.ndarray,
    table: pd.DataFrame,
    cal: Calibration,
    row_label: str,
    overlay_imp=None,
) -> dict:
    """Results table, ROI Manager, overlay and histogram for a labelled, filtered particle set."""
    kept_ids = table.loc[table["kept"], "label"].to_numpy(int) if len(table) else np.zeros(0, int)
    rejected_ids = table.loc[~table["kept"], "label"].to_numpy(int) if len(table) else np.zeros(0, int)
    kept_table = table[table["kept"]].drop(columns=["kept", "reject_reason"], errors="ignore") if len(table) else table
    out = {"kept": int(len(kept_ids)), "rejected": int(len(rejected_ids))}
    out["results"] = publish.fill_results(kept_table, row_label, clear=bool(v.get("clear", True)))
    if v.get("add"):
        out["rois"] = publish.fill_roi_manager(labels, kept_ids.tolist(), clear=bool(v.get("clear", True)), imp=imp)
    if v.get("overlay"):
        publish.set_overlay(overlay_imp or imp, labels, kept_ids.tolist(), rejected_ids.tolist())
    if v.get("histogram"):
        col = PARAMETER_COLUMNS.get(v.get("histogram_of", "feret_min"), v.get("histogram_of"))
        values = kept_table[col].to_numpy(float) if len(kept_table) else np.zeros(0)
        unit = column_units(cal.unit).get(col, "").replace("^2", "²")
        publish.histogram_plot(values, col, unit, f"{publish.title_stem(row_label)} {col} histogram")
    return out


def _apply_filters(
    labels: np.ndarray, intensity: np.ndarray | None, cal: Calibration, v: dict, command: str
) -> pd.DataFrame:
    """Measure, then reject by border contact, intensity and shape (the order of the pipeline)."""
    table = measure_particles(labels, intensity, cal)
    table["kept"] = True
    table["reject_reason"] = ""
    if not len(table):
        return table

    def reject(rows, reason):
        sel = rows & table["kept"].to_numpy()
        table.loc[sel, "reject_reason"] = reason if isinstance(reason, str) else np.asarray(reason)[sel]
        table.loc[sel, "kept"] = False

    if v.get("exclude_border"):
        reject(table["touches_border"].to_numpy(bool), "border")
    method = v.get("intensity_filter", NONE)
    if method and method != NONE:
        if intensity is None:
            raise InputError(f"intensity_filter={method} needs an intensity image (choose one in 'Intensity image')")
        polarity = v.get("polarity") or "auto"
        if polarity == "auto":  # the particles are known: brighter or darker than the rest
            polarity = polarity_of_particles(labels, intensity)
        ids, keep, _thr = pp.intensity_filter(labels, intensity, method, polarity)
        order = pd.Series(keep, index=ids).reindex(table["label"].to_numpy()).to_numpy(bool)
        reject(~order, f"intensity<{method}" if polarity == "bright" else f"intensity>{method}")
    shape = shape_ranges(v, command)
    if shape:
        reasons = pp.shape_filter(table, shape)
        reject((reasons != "").to_numpy(), reasons.to_numpy())
    return table


# ------------------------------------------------------------------------------------------
# the commands


def segment_particles(ctx: Context, v: dict) -> dict:
    imp = ctx.require_image()
    title = str(imp.getTitle())
    image, cal = _gray_2d(imp)
    bundle = get_bundle(v["model"])
    params = segment_params(v, ctx.command)
    t0 = time.perf_counter()
    ctx.status(f"Segment Particles: {title} ({bundle.name})...")
    seg = segment_image(image, bundle, params, cal, name=title)
    stem = publish.title_stem(title)
    kept = seg.kept_labels
    if v.get("probability"):
        publish.show_array(seg.foreground, publish.image_title(stem, "prob"), cal, display_range=(0.0, 1.0))
    if v.get("labels"):
        publish.show_array(kept, publish.image_title(stem, "labels"), cal, lut="labels")
    if v.get("mask"):
        publish.show_array(pp.labels_to_mask(kept).astype(np.uint8) * 255, publish.image_title(stem, "mask"), cal)
    out = _publish_particles(ctx, v, imp, seg.labels, seg.table, cal, title)
    _reselect(imp)
    seconds = time.perf_counter() - t0
    med = ""
    if out["kept"]:
        m = float(np.median(seg.table.loc[seg.table["kept"], "MinFeret"]))
        med = f", median min Feret {m:.4g} {cal.unit}"
    crop = f", {seg.crop_rows} data-bar rows ignored" if seg.crop_rows else ""
    ctx.log(
        f"Segment Particles: {title}: {_n(out['kept'], 'particle')} kept, {out['rejected']} rejected"
        f"{_reject_summary(seg.table)}{med}{crop} [{bundle.name}, {seconds:.1f} s]"
    )
    if seg.scale is not None:
        ctx.log(f"  {seg.scale.describe()}")
    if seg.params.augment:
        ctx.log(f"  {AUGMENT_NOTE}")
    ctx.status(f"Segment Particles: {_n(out['kept'], 'particle')}")
    record(command=ctx.command, image=title, kept=out["kept"], rejected=out["rejected"], seconds=seconds, images=1)
    return out


def split_touching_particles(ctx: Context, v: dict) -> dict:
    imp = ctx.require_image()
    title = str(imp.getTitle())
    arr, cal = _gray_2d(imp)
    mask = arr > 0
    if not mask.any():
        raise InputError(f"{title}: has no foreground pixels (nonzero pixels are particles)")
    dist = None
    dimp = ctx.optional_image(v.get("distance"), "distance map")
    if dimp is not None:
        darr, _ = _gray_2d(dimp)
        _same_shape(arr, darr, title, str(dimp.getTitle()))
        dist = darr.astype(np.float32)
        top = float(dist.max())
        if top > 1:
            dist = dist / top
    before = int(pp.label_mask(mask).max())
    labels = pp.split_touching(
        mask, dist, float(v["seed_level"]), float(v["split_level"]), seed_depth=float(v["seed_depth"])
    )
    labels = pp.relabel_sequential(pp.remove_small(labels, int(v["min_size"])))
    stem = publish.title_stem(title)
    publish.show_array(labels, publish.image_title(stem, "split"), cal, lut="labels")
    if v.get("mask"):
        publish.show_array(
            pp.labels_to_mask(labels).astype(np.uint8) * 255, publish.image_title(stem, "split_mask"), cal
        )
    n = int(labels.max())
    if v.get("add"):
        publish.fill_roi_manager(labels, None, clear=True)
    ctx.log(f"Split Touching Particles: {title}: {before} regions -> {n} particles")
    record(command=ctx.command, image=title, kept=n, rejected=0, seconds=0.0)
    return {"before": before, "particles": n}


def _labels_and_intensity(ctx: Context, v: dict):
    """Return the current label image and the optional intensity image, as arrays of one shape.

    The label image comes with its ImagePlus, title and calibration; the intensity image is the
    one chosen in the dialog.
    """
    imp = ctx.require_image()
    title = str(imp.getTitle())
    labels, cal = _labels_from_image(imp)
    iimp = ctx.optional_image(v.get("intensity"), "intensity")
    intensity = None
    if iimp is not None:
        intensity, _ = _gray_2d(iimp)
        _same_shape(labels, intensity, title, str(iimp.getTitle()))
    return imp, title, labels, cal, iimp, intensity


def filter_particles(ctx: Context, v: dict) -> dict:
    imp, title, labels, cal, iimp, intensity = _labels_and_intensity(ctx, v)
    if int(v.get("min_size", 0)) > 1:
        labels = pp.relabel_sequential(pp.remove_small(labels, int(v["min_size"])))
    table = _apply_filters(labels, intensity, cal, v, ctx.command)
    labels, table = kept_first(labels, table)  # kept particles 1..N, as their ROI names
    n_kept = int(table["kept"].sum()) if len(table) else 0
    filtered = np.where(labels <= n_kept, labels, 0).astype(np.int32)
    stem = publish.title_stem(title)
    publish.show_array(filtered, publish.image_title(stem, "filtered"), cal, lut="labels")
    out = _publish_particles(ctx, v, imp, labels, table, cal, title, overlay_imp=iimp or imp)
    _reselect(iimp or imp)
    ctx.log(f"Filter Particles: {title}: {out['kept']} kept, {out['rejected']} rejected{_reject_summary(table)}")
    record(command=ctx.command, image=title, kept=out["kept"], rejected=out["rejected"], seconds=0.0)
    return out


def measure_particles_command(ctx: Context, v: dict) -> dict:
    imp, title, labels, cal, iimp, intensity = _labels_and_intensity(ctx, v)
    table = measure_particles(labels, intensity, cal)
    table["kept"] = True
    out = _publish_particles(ctx, {**v, "overlay": False}, imp, labels, table, cal, title)
    ctx.log(f"Measure Particles: {title}: {len(table)} particles measured ({cal.unit})")
    record(command=ctx.command, image=title, kept=len(table), rejected=0, seconds=0.0)
    return out


def evaluate_segmentation(ctx: Context, v: dict) -> dict:
    pimp = ctx.image(v.get("prediction"), "prediction")
    timp = ctx.image(v.get("ground_truth"), "ground truth")
    pred, _ = from_imageplus(pimp, allow_stack=True)
    truth, _ = from_imageplus(timp, allow_stack=True)
    thresholds = parse_thresholds(v.get("thresholds", "0:1:0.1"))
    crop = int(v.get("crop_rows") or 0)
    ctx.status("Evaluate Segmentation...")
    res = metrics.evaluate_pair(
        pred,
        truth,
        thresholds=thresholds,
        watershed=bool(v.get("watershed")),
        crop_rows=crop or None,
        exclude_border=bool(v.get("exclude_border", True)),
        name=str(pimp.getTitle()),
        truth_name=str(timp.getTitle()),
    )
    row = {"prediction": str(pimp.getTitle()), "ground_truth": str(timp.getTitle())}
    row.update(
        {
            k: (float(x) if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) else x)
            for k, x in res.items()
        }
    )
    publish.show_table("Evaluation", pd.DataFrame([row]))
    keys = [k for k in ("iou_image", "iou_instance", "f1_50", "ap", "rand_error", "warping_error") if k in res]
    ctx.log(
        "Evaluate Segmentation: "
        + f"{row['prediction']} vs {row['ground_truth']}: "
        + ", ".join(f"{k} {res[k]:.4g}" for k in keys)
    )
    record(command=ctx.command, image=row["prediction"], kept=0, rejected=0, seconds=0.0)
    return res


def batch_segment_folder(ctx: Context, v: dict) -> dict:
    """Segment every image of a folder, through the same batch as ``particleseg segment``.

    The batch (:func:`particleseg.pipeline.segment_files`) resumes an interrupted run (images done
    earlier with the same settings are not segmented again), checks the output folder before
    any work, and Esc cancels between images.
    """
    src, dst = str(v.get("input") or "").strip(), str(v.get("output") or "").strip()
    if not src:
        raise InputError("no input folder given")
    if not dst:
        raise InputError("no output folder given")
    if not Path(src).is_dir():
        raise InputError(f"{src}: input folder not found")
    files = list_images([src])
    if not files:
        raise InputError(f"{src}: no image files (TIFF, PNG, JPEG, DM3/DM4, EMD, MRC, OME-Zarr) in this folder")
    bundle = get_bundle(v["model"])
    params = segment_params(v, ctx.command)
    t_start = time.perf_counter()
    _j("ij.IJ").resetEscape()

    def on_item(i: int, total: int, f: Path, row: dict | None, state: str) -> None:
        if state == "start":
            ctx.status(f"Batch Segment Folder: {i + 1}/{total} {f.name}")
            ctx.progress(i, total, "Batch Segment Folder")
        elif state == "failed":
            ctx.log(f"  {f.name}: FAILED: {row['error']}")
        else:
            size = f", typical size {row['particle_size_px']:.0f} px" if row.get("particle_size_px") else ""
            earlier = " (done earlier)" if state == "done earlier" else ""
            ctx.log(f"  {f.name}{earlier}: {row.get('count')} particles ({row.get('polarity', '?')} particles{size})")

    summary, failures = segment_files(
        [src],
        dst,
        bundle,
        params,
        overwrite=bool(v.get("overwrite")),
        progress=False,
        write_overview=bool(v.get("overview", True)),
        on_item=on_item,
        stop=lambda: bool(_j("ij.IJ").escapePressed()),
    )
    canceled = summary.attrs.get("stopped") == "canceled"
    if canceled:
        ctx.log(f"Batch Segment Folder: canceled, {summary.attrs['not_started']} of {len(files)} images not started")
    elif summary.attrs.get("stopped"):
        ctx.log(
            f"Batch Segment Folder: stopped ({summary.attrs['stopped']}), "
            f"{summary.attrs['not_started']} images not started"
        )
    ctx.progress(1, 1, "Batch Segment Folder")
    shown = summary[
        [
            c
            for c in ("file", "status", "count", "MinFeret_median", "unit", "rejected", "seconds", "error")
            if c in summary
        ]
    ]
    publish.show_table("Batch Summary", shown.astype(object).where(shown.notna(), None))
    ok = int((summary["status"] == "ok").sum()) if len(summary) else 0
    total = time.perf_counter() - t_start
    ctx.log(
        f"Batch Segment Folder: {ok} of {len(files)} images segmented ({batch_report(summary)})"
        f"{' (canceled)' if canceled else ''}, {total:.1f} s; outputs and summary.csv in {dst}"
    )
    ctx.status(f"Batch Segment Folder: {ok}/{len(files)} done")
    record(
        command=ctx.command,
        image=src,
        kept=int(summary.get("count", pd.Series(dtype=float)).fillna(0).sum()) if len(summary) else 0,
        rejected=0,
        seconds=total,
        failed=len(failures),
        images=ok,
    )
    if failures and ok == 0:
        raise InputError(f"{src}: all {len(failures)} images failed; first: {failures[0][1]}")
    return {
        "ok": ok,
        "failed": len(failures),
        "canceled": canceled,
        "done_earlier": summary.attrs.get("done_earlier", 0),
    }


def training_function():
    """``particleseg.train.train_segmentation``, or a clear error while it does not exist."""
    try:
        from .. import train  # slow (scikit-image), needed by this command alone
    except ImportError:
        train = None
    fn = getattr(train, "train_segmentation", None) if train is not None else None
    if fn is None:
        raise ParticlesegError(
            "training is not available in this particleseg yet (particleseg.train.train_segmentation "
            "does not exist); nothing was started"
        )
    return fn


def train_model(ctx: Context, v: dict) -> dict:
    """Train a network (Train Model...) with :func:`particleseg.train.train_segmentation`.

    It trains on an images and a masks folder, with progress in the status bar and the Log; the
    bundle is written to ``output``.
    """
    train = training_function()
    for key, role in (("images", "images"), ("masks", "masks"), ("output", "output bundle")):
        if not str(v.get(key) or "").strip():
            raise InputError(f"no {role} folder chosen")
    base = str(v.get("base_model") or "").strip()
    epochs = int(v["epochs"])
    t0 = time.perf_counter()

    def report(done: int, total: int, logs: dict) -> None:
        loss = logs.get("loss")
        val, score = logs.get("val_loss"), logs.get("val_score")
        text = (
            f"Train Model: epoch {done}/{total}"
            + (f", loss {loss:.4f}" if loss is not None else "")
            + (f", validation loss {val:.4f}" if val is not None else "")
            + (f", validation instance score {score:.4f}" if score is not None else "")
        )
        ctx.status(text)
        ctx.log(text)
        ctx.progress(done, total, "Train Model")

    new_network = base.lower() in ("", NONE)
    minutes = float(v.get("minutes") or 0) or None
    plan = f"{minutes:g} min" if minutes else f"{epochs} epochs"
    what = f"new {v['architecture']} network" if new_network else f"fine-tuning {base}"
    ctx.log(f"Train Model: {v['images']} + {v['masks']} -> {v['output']} ({what}, {plan}, tile {v['tile']})")
    bundle = train(
        v["images"],
        v["masks"],
        v["output"],
        epochs=epochs,
        minutes=minutes,
        tile=int(v["tile"]),
        name=str(v.get("name") or "").strip() or None,
        base_model=None if new_network else base,
        progress=report,
        **({"arch": str(v["architecture"]).replace("_", "-")} if new_network else {}),
    )
    m = bundle.metadata["metrics"]["validation"]
    seconds = time.perf_counter() - t0
    ctx.log(
        f"Train Model: wrote {bundle.path} in {seconds:.0f} s; validation foreground IoU {m['foreground_iou']:.4f}, "
        f"instance IoU {m['instance_iou']:.4f}; use it with model=[{bundle.path}]"
    )
    ctx.status(f"Train Model: done ({bundle.path.name})")
    ctx.progress(1, 1, "Train Model")
    return {"bundle": str(bundle.path), "metrics": m}


def list_models(ctx: Context, v: dict) -> dict:
    rows = []
    for name, path in list_bundles().items():
        try:
            b = load_bundle(path)
            rows.append(
                {
                    "name": name,
                    "architecture": b.network.architecture,
                    "heads": "+".join(b.heads),
                    "tile": b.tile,
                    "description": str(b.metadata.get("description", ""))[:80],
                    "path": str(path),
                }
            )
        except ParticlesegError as exc:
            rows.append(
                {
                    "name": name,
                    "architecture": "",
                    "heads": "",
                    "tile": float("nan"),
                    "description": f"broken: {exc}",
                    "path": str(path),
                }
            )
    table = pd.DataFrame(rows, columns=["name", "architecture", "heads", "tile", "description", "path"])
    publish.show_table("Models", table)
    where = ", ".join(str(p) for p in model_search_path())
    if rows:
        ctx.log(f"Models: {len(rows)} installed: " + ", ".join(r["name"] for r in rows) + f" (searched {where})")
    else:
        ctx.log(f"Models: none installed (searched {where}; set PARTICLESEG_MODELS to add folders)")
    return {"models": [r["name"] for r in rows]}


IMPLEMENTATIONS: dict[str, Callable[[Context, dict], Any]] = {
    "Segment Particles...": segment_particles,
    "Split Touching Particles...": split_touching_particles,
    "Filter Particles...": filter_particles,
    "Measure Particles...": measure_particles_command,
    "Evaluate Segmentation...": evaluate_segmentation,
    "Batch Segment Folder...": batch_segment_folder,
    "Train Model...": train_model,
    "Models...": list_models,
}


def validate(spec, values: dict) -> dict:
    """Check every value before any work, so a bad macro fails at once with one message.

    Numbers must be in range, ranges and crop rows must parse, and the model must exist.
    """
    out = dict(values)
    for f in spec.fields:
        if f.kind == "message" or f.key not in out:
            continue
        out[f.key] = check_value(spec, f.key, out[f.key])
        if f.kind == "range":
            parse_range(out[f.key], f.key)
    if "crop_rows" in out and spec.field("crop_rows").kind == "string":
        parse_crop_rows(out["crop_rows"])
    if "thresholds" in out:
        parse_thresholds(out["thresholds"])
    if "model" in out:
        get_bundle(out["model"])
    return out


__all__ = ["Context", "IMPLEMENTATIONS", "RECORDS", "get_bundle", "validate"]
