"""Putting results where Fiji users look, through the ImageJ 1.x API (scyjava).

Image windows, the Results table, the ROI Manager, overlays, plots, the Log and the status bar.

These functions run inside a command, in the thread ImageJ called it from, so batch-mode macros
get hidden images and their own ROI Manager exactly as with built-in commands.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..io import Calibration, label_outlines
from .convert import set_calibration, to_imageplus

KEPT_RGB = (0, 230, 60)
REJECTED_RGB = (255, 40, 40)


def _j(name: str):
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    return scyjava.jimport(name)


def gui() -> bool:
    """Return whether an ImageJ window exists (tables and plots are shown, not printed)."""
    return _j("ij.IJ").getInstance() is not None


def log(message: str) -> None:
    """Write ``message`` to ImageJ's Log."""
    _j("ij.IJ").log(str(message))


def status(message: str) -> None:
    """Show ``message`` in ImageJ's status bar."""
    _j("ij.IJ").showStatus(str(message))


def progress(done: int, total: int) -> None:
    """Show ``done`` of ``total`` in ImageJ's progress bar."""
    _j("ij.IJ").showProgress(int(done), int(total))


# ------------------------------------------------------------------------------------------
# images


def image_title(stem: str, suffix: str) -> str:
    return f"{stem}_{suffix}"


def title_stem(title: str) -> str:
    for ext in (".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if title.lower().endswith(ext):
            return title[: -len(ext)]
    return title


def show_array(
    array: np.ndarray,
    title: str,
    calibration: Calibration,
    lut: str | None = None,
    display_range: tuple[float, float] | None = None,
):
    """Show an array as a new image (hidden in batch-mode macros) and return the ImagePlus."""
    imp = to_imageplus(array, calibration, title)
    if lut == "labels":
        apply_label_lut(imp, int(np.max(array)) if np.size(array) else 0)
    elif display_range is not None:
        imp.setDisplayRange(float(display_range[0]), float(display_range[1]))
    imp.show()
    return imp


def apply_label_lut(imp, max_label: int) -> None:
    """Apply a fixed random LUT with black background, so neighbouring particles differ in colour."""
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    rng = np.random.default_rng(7)
    rgb = rng.integers(60, 256, size=(256, 3), dtype=np.int32)
    rgb[0] = 0
    as_bytes = [jpype.JArray(jpype.JByte)(rgb[:, c].astype(np.uint8).view(np.int8)) for c in range(3)]
    lut = _j("ij.process.LUT")(*as_bytes)
    imp.getProcessor().setLut(lut)
    top = max(max_label, 1)
    imp.setDisplayRange(0, 255 if top <= 255 else top)


# ------------------------------------------------------------------------------------------
# tables


def results_table():
    """Return the system Results table (the one macros read with nResults and getResult)."""
    RT = _j("ij.measure.ResultsTable")
    rt = RT.getResultsTable()
    if rt is None:
        rt = RT()
        rt.show("Results")
    return rt


def fill_results(table: pd.DataFrame, row_label: str, clear: bool = True, rt=None) -> int:
    """Append the rows of ``table`` (numeric and text columns) to the Results table.

    Each row gets the label ``row_label:particle-N``; booleans become 0/1. Returns the row
    count of the table after filling.
    """
    rt = rt or results_table()
    if clear:
        rt.reset()
    for _, row in table.iterrows():
        rt.incrementCounter()
        lab = int(row["label"]) if "label" in row else rt.size()
        rt.addLabel(f"{row_label}:particle-{lab}")
        for col, value in row.items():
            _add_value(rt, str(col), value)
    if gui():
        rt.show("Results")
    return int(rt.size())


def _add_value(rt, col: str, value) -> None:
    if isinstance(value, (bool, np.bool_)):
        rt.addValue(col, 1.0 if value else 0.0)
    elif isinstance(value, (int, float, np.integer, np.floating)):
        rt.addValue(col, float(value))
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        rt.addValue(col, float("nan"))
    else:
        rt.addValue(col, str(value))


def show_table(title: str, table: pd.DataFrame):
    """Show a DataFrame as a named ImageJ table (``Table.get(col, row, title)`` in macros).

    Without an ImageJ window (headless) the table is kept in a hidden text window so that
    macros can still read it, and nothing is printed.
    """
    RT = _j("ij.measure.ResultsTable")
    rt = RT()
    for _, row in table.iterrows():
        rt.incrementCounter()
        for col, value in row.items():
            _add_value(rt, str(col), value)
    if gui():
        rt.show(title)
        return rt
    TextWindow = _j("ij.text.TextWindow")
    old = _j("ij.WindowManager").getWindow(title)
    if old is not None:
        old.close(False) if hasattr(old, "close") else old.dispose()
    win = TextWindow(title, "", 500, 300)
    win.getTextPanel().setResultsTable(rt)
    win.setVisible(False)
    return rt


# ------------------------------------------------------------------------------------------
# ROIs and overlays


def particle_rois(labels: np.ndarray, ids=None, color=None, fill=None, position: int = 0) -> list:
    """Traced polygon ROIs (pixel edges, as the wand traces) named ``particle-N``."""
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    PolygonRoi = _j("ij.gui.PolygonRoi")
    Roi = _j("ij.gui.Roi")
    Color = _j("java.awt.Color")
    rois = []
    for lab, poly in label_outlines(labels, ids).items():
        xs = jpype.JArray(jpype.JInt)(poly[:, 0].astype(np.int32))
        ys = jpype.JArray(jpype.JInt)(poly[:, 1].astype(np.int32))
        roi = PolygonRoi(xs, ys, int(len(poly)), Roi.TRACED_ROI)
        roi.setName(f"particle-{lab}")
        if color is not None:
            roi.setStrokeColor(Color(*color))
        if fill is not None:
            roi.setFillColor(Color(*fill))
        if position:
            roi.setPosition(position)
        rois.append(roi)
    return rois


def roi_manager():
    """Return the ROI Manager macros see.

    The batch-mode one inside batch-mode macros, else the window (created if needed).
    """
    RM = _j("ij.plugin.frame.RoiManager")
    rm = RM.getInstance()
    if rm is None:
        rm = RM.getRoiManager()
    return rm


def fill_roi_manager(labels: np.ndarray, ids, clear: bool = True, imp=None) -> int:
    """Add the particles ``ids`` of ``labels`` (all when None) to the ROI Manager; return its count.

    ``clear`` resets the ROI Manager first; the ROIs are attached to ``imp`` when given.
    """
    rm = roi_manager()
    if clear:
        rm.reset()
    for roi in particle_rois(labels, ids):
        if imp is not None:
            roi.setImage(imp)
        rm.addRoi(roi)
    return int(rm.getCount())


def set_overlay(imp, labels: np.ndarray, kept_ids, rejected_ids) -> int:
    """Outline kept particles in green and rejected ones in red (tinted) on ``imp``."""
    Overlay = _j("ij.gui.Overlay")
    ov = Overlay()
    for roi in particle_rois(labels, kept_ids, color=KEPT_RGB):
        ov.add(roi)
    for roi in particle_rois(labels, rejected_ids, color=REJECTED_RGB, fill=REJECTED_RGB + (70,)):
        ov.add(roi)
    imp.setOverlay(ov)
    return int(ov.size())


# ------------------------------------------------------------------------------------------
# plots


def histogram_plot(values: np.ndarray, column: str, unit: str, title: str):
    """Show a bar histogram of ``values`` with the median marked, and return the Plot.

    It is shown as a plot window (an image in batch mode).
    """
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    Plot = _j("ij.gui.Plot")
    Color = _j("java.awt.Color")
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    xlabel = f"{column.replace('_', ' ')} ({unit})" if unit else column
    plot = Plot(title, xlabel, "number of particles")
    if values.size:
        bins = min(40, max(5, int(math.sqrt(values.size)) * 2))
        counts, edges = np.histogram(values, bins=bins)
        centers = 0.5 * (edges[:-1] + edges[1:])
        plot.setColor(Color(90, 90, 90))
        plot.add("bar", jpype.JArray(jpype.JDouble)(centers), jpype.JArray(jpype.JDouble)(counts.astype(float)))
        med = float(np.median(values))
        plot.setColor(Color.RED)
        plot.drawLine(med, 0.0, med, float(counts.max()))
        plot.addLabel(0.02, 0.08, f"n = {values.size}, median {med:.4g} {unit}")
        plot.setLimits(float(edges[0]), float(edges[-1]), 0.0, float(counts.max()) * 1.1)
    else:
        plot.addLabel(0.4, 0.5, "no particles")
    plot.show()
    return plot


def copy_calibration(imp_from, imp_to) -> None:
    imp_to.setCalibration(imp_from.getCalibration().copy())


__all__ = [
    "log",
    "status",
    "progress",
    "show_array",
    "fill_results",
    "show_table",
    "particle_rois",
    "roi_manager",
    "fill_roi_manager",
    "set_overlay",
    "histogram_plot",
    "set_calibration",
]
