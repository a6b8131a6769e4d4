"""Per-particle measurements in calibrated units, and size-distribution summaries.

Lengths are in the unit of the image's :class:`~particleseg.io.Calibration` (``px`` when the
image is not calibrated), areas in that unit squared, angles in degrees counter-clockwise from
the x axis as the image is displayed (ImageJ's convention).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull

from .io import Calibration

SIZE_COLUMNS = ("feret_min", "feret_max", "ecd", "area")

COLUMNS = (
    "label", "area", "perimeter", "ecd", "feret_max", "feret_max_angle", "feret_min",
    "feret_min_angle", "aspect_ratio", "feret_ratio", "solidity", "circularity",
    "centroid_x", "centroid_y", "bbox_x", "bbox_y", "bbox_width", "bbox_height",
    "mean_intensity", "min_intensity", "max_intensity", "touches_border", "unit",
)


def feret_diameters(points: np.ndarray) -> tuple[float, float, float, float]:
    """Maximum and minimum Feret (caliper) diameters of a point set, exactly.

    Parameters
    ----------
    points : (N, 2) array of (x, y)
        For a particle, the corners of its pixels, so that a one-pixel particle is 1 wide
        (as ImageJ measures traced outlines).

    Returns
    -------
    feret_max, feret_max_angle, feret_min, feret_min_angle
        Diameters in the units of ``points``; angles in degrees in [0, 180),
        counter-clockwise from the x axis with y pointing down as displayed. The
        minimum-Feret angle is the direction in which the particle is narrowest.

    Notes
    -----
    Both extremes are attained on the convex hull. The maximum is the largest distance
    between two hull vertices. The minimum is found by rotating calipers: for a convex polygon
    the narrowest strip enclosing it has one side flush with a hull edge [1]_, so it is the
    smallest, over hull edges, of the largest vertex distance from the edge's line.

    References
    ----------
    .. [1] G. T. Toussaint, "Solving geometric problems with the rotating calipers",
           Proc. IEEE MELECON '83, A10.02 (1983).
    """
    pts = np.asarray(points, float)
    hull = pts[ConvexHull(pts).vertices]
    diff = hull[:, None, :] - hull[None, :, :]
    dist2 = (diff**2).sum(-1)
    i, j = np.unravel_index(np.argmax(dist2), dist2.shape)
    feret_max = float(np.sqrt(dist2[i, j]))
    dx, dy = hull[j] - hull[i]
    max_angle = _angle(dx, dy)

    edges = np.roll(hull, -1, axis=0) - hull
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    rel = hull[None, :, :] - hull[:, None, :]  # vertex k relative to edge start e
    heights = np.abs(edges[:, None, 0] * rel[..., 1] - edges[:, None, 1] * rel[..., 0]) / lengths[:, None]
    widths = heights.max(axis=1)
    e = int(np.argmin(widths))
    feret_min = float(widths[e])
    # narrowest direction: normal to the supporting edge
    min_angle = _angle(-edges[e, 1], edges[e, 0])
    return feret_max, max_angle, feret_min, min_angle


def _angle(dx: float, dy: float) -> float:
    # y grows downwards on screen: flip it for a counter-clockwise angle as displayed
    return float(np.degrees(np.arctan2(-dy, dx)) % 180.0)


def _pixel_corners(mask: np.ndarray) -> np.ndarray:
    """Corners (x, y) of the boundary pixels of a mask: enough for its convex hull."""
    inner = ndi.binary_erosion(mask)
    y, x = np.nonzero(mask & ~inner)
    c = np.concatenate([np.stack([x + dx, y + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    return np.unique(c, axis=0)


def measure_particles(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    calibration: Calibration | None = None,
    border: np.ndarray | None = None,
) -> pd.DataFrame:
    """Measure every particle of a 2D label image.

    Parameters
    ----------
    labels : (Y, X) int array
        0 is background, each positive value one particle.
    image : (Y, X) array, optional
        Gray values for the intensity columns (NaN when omitted).
    calibration : Calibration, optional
        Pixel size and unit; uncalibrated (``px``) by default.
    border : (Y, X) bool array, optional
        Pixels that count as the image border for ``touches_border`` (default: the outermost
        rows and columns). Lets a cropped data bar count as border.

    Returns
    -------
    pandas.DataFrame
        One row per particle with the columns of :data:`COLUMNS`: area, perimeter (as
        :func:`skimage.measure.perimeter`), equivalent circular diameter, exact maximum and
        minimum Feret diameters with angles, aspect ratio (major/minor axis of the fitted
        ellipse, as ImageJ's AR), Feret ratio (max/min), solidity, circularity
        (4 pi area / perimeter^2, capped at 1 as in ImageJ), centroid and bounding box,
        intensity statistics and the border flag.
    """
    from skimage.measure import regionprops

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    cal = calibration or Calibration()
    s = cal.pixel_size
    if border is None:
        border = np.zeros(labels.shape, bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
    border_labels = set(np.unique(labels[border]).tolist()) - {0}
    rows = []
    intensity = None if image is None else np.asarray(image, float)
    for rp in regionprops(labels.astype(np.int32), intensity_image=intensity):
        y0, x0, y1, x1 = rp.bbox
        local = rp.image
        fmax, fmax_a, fmin, fmin_a = feret_diameters(_pixel_corners(local))
        area_px = float(rp.area)
        # skimage gives 0 for one- and two-pixel particles: use their outer edge length instead
        perim_px = float(rp.perimeter) or 2.0 * (x1 - x0 + y1 - y0)
        major, minor = rp.axis_major_length, rp.axis_minor_length
        cy, cx = rp.centroid
        rows.append({
            "label": int(rp.label),
            "area": area_px * s * s,
            "perimeter": perim_px * s,
            "ecd": 2.0 * np.sqrt(area_px / np.pi) * s,
            "feret_max": fmax * s,
            "feret_max_angle": fmax_a,
            "feret_min": fmin * s,
            "feret_min_angle": fmin_a,
            "aspect_ratio": major / minor if minor > 0 else np.inf,
            "feret_ratio": fmax / fmin,
            "solidity": float(rp.solidity),
            "circularity": min(1.0, 4 * np.pi * area_px / perim_px**2),
            "centroid_x": (cx + 0.5) * s,
            "centroid_y": (cy + 0.5) * s,
            "bbox_x": x0 * s,
            "bbox_y": y0 * s,
            "bbox_width": (x1 - x0) * s,
            "bbox_height": (y1 - y0) * s,
            "mean_intensity": float(rp.intensity_mean) if intensity is not None else np.nan,
            "min_intensity": float(rp.intensity_min) if intensity is not None else np.nan,
            "max_intensity": float(rp.intensity_max) if intensity is not None else np.nan,
            "touches_border": rp.label in border_labels,
            "unit": cal.unit,
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summarize(table: pd.DataFrame, unit: str = "px", nm_per_unit: float | None = None) -> dict:
    """Summary statistics of the size distribution of the particles in ``table``.

    For each of :data:`SIZE_COLUMNS`: number-based mean, median, standard deviation and the
    10th, 25th, 75th and 90th percentiles. ``median_feret_min_nm`` and ``nano_by_median_feret``
    tell whether the number-based median of the minimum Feret diameter lies below 100 nm, the
    size criterion of the European Commission's definition of a nanomaterial (2022/C 229/01,
    which counts a material as nano when 50 % or more of its particles have an external
    dimension of 1-100 nm); both are empty for uncalibrated images.

    Only rows with ``kept`` True count when that column exists.
    """
    t = table[table["kept"]] if "kept" in table.columns else table
    out: dict = {"count": int(len(t)), "unit": unit}
    for col in SIZE_COLUMNS:
        v = t[col].to_numpy(float) if len(t) else np.array([])
        stats = {
            "mean": v.mean() if v.size else np.nan,
            "median": np.median(v) if v.size else np.nan,
            "std": v.std(ddof=1) if v.size > 1 else np.nan,
        }
        for q in (10, 25, 75, 90):
            stats[f"p{q}"] = np.percentile(v, q) if v.size else np.nan
        for k, val in stats.items():
            out[f"{col}_{k}"] = float(val)
    if nm_per_unit and len(t):
        med_nm = out["feret_min_median"] * nm_per_unit
        out["median_feret_min_nm"] = med_nm
        out["nano_by_median_feret"] = bool(med_nm < 100.0)
    else:
        out["median_feret_min_nm"] = np.nan
        out["nano_by_median_feret"] = None
    return out
