"""Per-particle measurements as ImageJ makes them, and size-distribution summaries.

The measurements are in calibrated units.

:func:`measure_particles` gives, for each particle, the columns of ImageJ's Results table
(*Analyze > Measure* or *Analyze Particles*, with every measurement of *Set Measurements*
that applies to one particle) under ImageJ's names and with ImageJ's definitions, computed on
the particle's traced polygon ROI (the one written to ``_rois.zip`` and added to the ROI
Manager), so that ImageJ's Measure of that ROI gives the same numbers. The project adds
``label``, ``ECD`` and ``touches_border``.

Lengths are in the unit of the image's :class:`~particleseg.io.Calibration` (``px`` when the
image is not calibrated), areas in that unit squared, angles in degrees counter-clockwise from
the x axis as the image is displayed; ``FeretX`` and ``FeretY`` are in pixels, as in ImageJ.
:func:`with_units` puts the units into the column names for a CSV file (``Area [nm^2]``).

References
----------
.. [1] T. Ferreira, W. Rasband, "ImageJ User Guide", IJ 1.46r (2012), sec. 30.7 "Set
       Measurements"; https://imagej.net/ij/docs/guide/146-30.html
.. [2] ImageJ 1.53t source: ``ij.plugin.filter.Analyzer``, ``ij.process.ByteStatistics``,
       ``ij.process.EllipseFitter``, ``ij.gui.PolygonRoi.getTracedPerimeter``,
       ``ij.gui.Roi.getFeretValues``, ``ij.process.FloatPolygon.getConvexHull``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .io import Calibration, roi_region, trace_outline

#: ImageJ's Results columns, in ImageJ's order, that :func:`measure_particles` computes.
IMAGEJ_COLUMNS = (
    "Area",
    "Mean",
    "StdDev",
    "Min",
    "Max",
    "X",
    "Y",
    "XM",
    "YM",
    "Perim.",
    "BX",
    "BY",
    "Width",
    "Height",
    "Major",
    "Minor",
    "Angle",
    "Circ.",
    "Feret",
    "IntDen",
    "Median",
    "RawIntDen",
    "FeretX",
    "FeretY",
    "FeretAngle",
    "MinFeret",
    "AR",
    "Round",
    "Solidity",
)

#: All columns of :func:`measure_particles`: the particle's label, ImageJ's columns, the
#: equivalent circular diameter and whether the particle touches the image border.
COLUMNS = ("label",) + IMAGEJ_COLUMNS + ("ECD", "touches_border")

#: Size columns summarised by :func:`summarize`.
SIZE_COLUMNS = ("MinFeret", "Feret", "ECD", "Area")

#: The column that each name of the parameter vocabulary (shape ranges, ``histogram_of``)
#: refers to.
PARAMETER_COLUMNS = {
    "area": "Area",
    "ecd": "ECD",
    "feret_min": "MinFeret",
    "feret_max": "Feret",
    "circularity": "Circ.",
    "solidity": "Solidity",
    "aspect_ratio": "AR",
    "roundness": "Round",
    "perimeter": "Perim.",
}

_LENGTHS = ("X", "Y", "XM", "YM", "Perim.", "BX", "BY", "Width", "Height", "Major", "Minor", "Feret", "MinFeret", "ECD")
_ANGLES = ("Angle", "FeretAngle")
_PIXELS = ("FeretX", "FeretY")
_INTENSITY = ("Mean", "StdDev", "Min", "Max", "XM", "YM", "IntDen", "Median", "RawIntDen")


def column_units(unit: str) -> dict[str, str]:
    """Return the unit of each column of :func:`measure_particles` whose values have one.

    Examples
    --------
    >>> u = column_units("nm")
    >>> u["Area"], u["Feret"], u["FeretAngle"], u["FeretX"]
    ('nm^2', 'nm', 'deg', 'px')
    """
    out = {"Area": f"{unit}^2"}
    out.update({c: unit for c in _LENGTHS})
    out.update({c: "deg" for c in _ANGLES})
    out.update({c: "px" for c in _PIXELS})
    return out


def with_units(table: pd.DataFrame, unit: str) -> pd.DataFrame:
    """Copy of a measurement table whose column names carry their units, for a CSV header.

    Examples
    --------
    >>> t = pd.DataFrame({"label": [1], "Area": [4.0], "Feret": [2.5], "Circ.": [0.9]})
    >>> list(with_units(t, "µm").columns)
    ['label', 'Area [µm^2]', 'Feret [µm]', 'Circ.']
    """
    units = column_units(unit)
    return table.rename(columns={c: f"{c} [{units[c]}]" for c in table.columns if c in units})


def without_units(table: pd.DataFrame) -> pd.DataFrame:
    """Copy of a table read from a ``_particles.csv`` with the units taken out of the column names.

    This is the inverse of :func:`with_units`.

    Examples
    --------
    >>> t = pd.DataFrame({"label": [1], "Area [nm^2]": [4.0], "Circ.": [0.9]})
    >>> list(without_units(t).columns)
    ['label', 'Area', 'Circ.']
    """
    return table.rename(columns=lambda c: str(c).split(" [", 1)[0])


# --------------------------------------------------------------------------------------------
# geometry of a traced outline, as ImageJ computes it


def traced_perimeter(polygon: np.ndarray) -> float:
    """Perimeter of a traced outline in pixels, as ImageJ's ``Perim.`` of a traced ROI.

    The length along pixel edges, less ``2 - sqrt(2)`` for each corner that a diagonal step
    would cut: ImageJ counts a corner at every vertex whose incoming side is longer than one
    pixel, and at every other vertex of a run of one-pixel steps (a staircase).

    Parameters
    ----------
    polygon : (N, 2) int array of (x, y)
        Vertices of the traced outline (:func:`particleseg.io.trace_outline`), without
        collinear vertices; the count of corners depends on the starting vertex as in ImageJ.

    Returns
    -------
    float
        0 for fewer than 4 vertices, as ImageJ.

    Notes
    -----
    Written out because no library has this rule: :func:`skimage.measure.perimeter` weights
    the boundary pixels' neighbourhood configurations (up to 26 % off ImageJ's ``Perim.`` on
    SEM particles, and so 78 % off its ``Circ.``).

    Examples
    --------
    >>> traced_perimeter(np.array([[0, 0], [1, 0], [1, 1], [0, 1]]))  # one pixel: 4 - 2 (2 - sqrt 2)
    2.8284271247461903

    References
    ----------
    .. [1] ImageJ 1.53t, ``ij.gui.PolygonRoi.getTracedPerimeter``.
    """
    p = np.asarray(polygon, np.int64)
    if len(p) < 4:
        return 0.0
    incoming = np.abs(p - np.roll(p, 1, axis=0))  # side that ends at each vertex
    corners = 0
    corner = False
    for side in incoming.sum(1).tolist():  # a state machine: ImageJ's rule is sequential
        if side > 1 or not corner:
            corner = True
            corners += 1
        else:
            corner = False
    return float(incoming.sum() - corners * (2.0 - np.sqrt(2.0)))


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull vertices in ImageJ's order.

    ImageJ's order: no collinear vertices, starting at the topmost (then leftmost) vertex,
    counter-clockwise as displayed (y down).

    The order decides which of several equally long Feret diameters ImageJ reports.

    Examples
    --------
    >>> convex_hull(np.array([[0, 0], [2, 0], [2, 1], [1, 1], [0, 1], [1, 0]])).tolist()
    [[0.0, 0.0], [0.0, 1.0], [2.0, 1.0], [2.0, 0.0]]

    References
    ----------
    .. [1] ImageJ 1.53t, ``ij.process.FloatPolygon.getConvexHull`` (gift wrapping).
    """
    from scipy.spatial import ConvexHull

    pts = np.unique(np.asarray(points, float), axis=0)
    # qhull: counter-clockwise with y up, which is clockwise as displayed; reverse it
    hull = pts[ConvexHull(pts).vertices][::-1]
    start = np.lexsort((hull[:, 0], hull[:, 1]))[0]
    return np.roll(hull, -start, axis=0)


def polygon_area(polygon: np.ndarray) -> float:
    """Area of a simple polygon (shoelace formula).

    Examples
    --------
    >>> polygon_area(np.array([[0, 0], [3, 0], [3, 2], [0, 2]]))
    6.0
    """
    x, y = np.asarray(polygon, float).T
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def feret_values(hull: np.ndarray, pixel_size: float = 1.0) -> dict[str, float]:
    """Maximum and minimum caliper (Feret) diameters of a convex polygon.

    They are given as ImageJ's ``Feret``, ``FeretAngle``, ``MinFeret``, ``FeretX`` and
    ``FeretY``.

    Parameters
    ----------
    hull : (N, 2) array of (x, y)
        Convex hull in ImageJ's order (:func:`convex_hull`) of the pixel-corner outline.
    pixel_size : float
        Calibration (square pixels).

    Returns
    -------
    dict
        ``Feret`` (largest vertex distance) and ``MinFeret`` (narrowest strip: by rotating
        calipers [1]_, one side of it is flush with a hull edge) in calibrated units;
        ``FeretAngle`` in [0, 180) degrees counter-clockwise as displayed; ``FeretX``,
        ``FeretY``: the left end of the Feret diameter, in pixels. Of several equally long
        diameters, the first pair of hull vertices in ImageJ's order is taken.

    Notes
    -----
    :func:`skimage.measure.regionprops`' ``feret_diameter_max`` measures between points of
    the pixels' boundary rather than their corners and has no minimum, angle or end point, so
    these are computed here, with ImageJ's floating-point operations so that ties break alike.

    Examples
    --------
    >>> v = feret_values(convex_hull(np.array([[0, 0], [4, 0], [4, 3], [0, 3]])))
    >>> v["Feret"], v["MinFeret"], round(v["FeretAngle"], 3), (v["FeretX"], v["FeretY"])
    (5.0, 3.0, 143.13, (0.0, 0.0))

    References
    ----------
    .. [1] G. T. Toussaint, "Solving geometric problems with the rotating calipers",
           Proc. IEEE MELECON '83, A10.02 (1983).
    .. [2] ImageJ 1.53t, ``ij.gui.Roi.getFeretValues``.
    """
    s = float(pixel_size)
    h = np.asarray(hull, float)
    # calibrated squared distances, the same floating-point operations as ImageJ (ties!)
    dx = (h[:, None, 0] - h[None, :, 0]) * s
    dy = (h[:, None, 1] - h[None, :, 1]) * s
    d2 = np.triu(dx * dx + dy * dy, k=1)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)  # first maximum in (i, j) order
    if h[i, 0] > h[j, 0]:
        i, j = j, i
    angle = np.degrees(np.arctan2((h[i, 1] - h[j, 1]) * s, (h[j, 0] - h[i, 0]) * s))
    if angle < 0:
        angle += 180.0
    edges = h - np.roll(h, 1, axis=0)
    normals = np.stack([edges[:, 1], -edges[:, 0]], 1) / np.hypot(edges[:, 0], edges[:, 1])[:, None]
    dist = ((h[None, :, :] - h[:, None, :]) * normals[:, None, :]).sum(-1)  # vertex j from edge i
    widths = np.abs(dist).max(axis=1)
    return {
        "Feret": float(np.sqrt(d2[i, j] if i < j else d2[j, i])),
        "FeretAngle": float(angle),
        "MinFeret": float(widths.min() * s),
        "FeretX": float(h[i, 0]),
        "FeretY": float(h[i, 1]),
    }


def fit_ellipse(region: np.ndarray) -> tuple[float, float, float]:
    """Fit the ellipse with the same second moments and the same area as a region.

    The ellipse is given as ImageJ's ``Major``, ``Minor`` and ``Angle``.

    Parameters
    ----------
    region : (Y, X) bool array

    Returns
    -------
    major, minor : float
        Axis lengths in pixels; ``pi major minor / 4`` equals the pixel count.
    angle : float
        Angle of the major axis in [0, 180) degrees, counter-clockwise as displayed.

    Notes
    -----
    Each pixel counts as a uniform unit square (the ``1/12`` added to the second moments),
    the moments' ellipse of concentration is scaled to the region's area [1]_. Written out
    rather than taken from :func:`skimage.measure.regionprops` (whose axes are 4 standard
    deviations of the pixel centres, without the 1/12 and without the area scaling) so the
    numbers equal ImageJ's.

    Examples
    --------
    >>> major, minor, angle = fit_ellipse(np.ones((2, 8), bool))
    >>> round(major * minor * np.pi / 4, 9), angle
    (16.0, 0.0)

    References
    ----------
    .. [1] ImageJ 1.53t, ``ij.process.EllipseFitter`` (after R. W. Rodieck).
    """
    ys, xs = np.nonzero(region)
    n = float(len(xs))
    xs = xs - xs.min()  # ImageJ's coordinates relative to the ROI's bounding box
    ys = ys - ys.min()
    x1, y1 = xs.sum() / n, ys.sum() / n
    x2 = (float((xs * xs).sum()) + 0.08333333 * n) / n
    y2 = (float((ys * ys).sum()) + 0.08333333 * n) / n
    u20, u02, u11 = x2 - x1 * x1, y2 - y1 * y1, float((xs * ys).sum()) / n - x1 * y1
    m4 = max(4.0 * abs(u02 * u20 - u11 * u11), 0.000001)
    a11, a12, a22 = u02 / m4, u11 / m4, u20 / m4
    half_pi = 1.5707963267949
    tmp = a11 - a22 or 0.000001
    theta = 0.5 * np.arctan(2.0 * a12 / tmp)
    if theta < 0.0:
        theta += half_pi
    if a12 > 0.0:
        theta += half_pi
    elif a12 == 0.0:
        if a22 > a11:
            theta = 0.0
            a11, a22 = a22, a11
        elif a11 != a22:
            theta = half_pi
    z = a12 * np.cos(theta) / (np.sin(theta) or 0.000001)
    major = np.sqrt(1.0 / abs(a22 + z))
    minor = np.sqrt(1.0 / abs(a11 - z))
    scale = np.sqrt(n / (np.pi * major * minor))  # equal areas
    major, minor = sorted((major * scale * 2.0, minor * scale * 2.0), reverse=True)
    angle = 180.0 * theta / np.pi
    return float(major), float(minor), 0.0 if angle == 180.0 else float(angle)


def _median(values: np.ndarray) -> float:
    # ImageJ: integer images from the histogram (the value where the count passes half),
    # float images the mean of the two middle values in single precision
    v = np.sort(values)
    if values.dtype.kind == "f":
        mid = len(v) // 2
        return float(v[mid] if len(v) % 2 else np.float32((np.float32(v[mid - 1]) + np.float32(v[mid])) / 2))
    return float(v[len(v) // 2])


def _intensity(values: np.ndarray, xs: np.ndarray, ys: np.ndarray, area: float, s: float) -> dict:
    v = np.asarray(values)
    vf = v.astype(float)
    n = len(vf)
    total, total2 = vf.sum(), (vf * vf).sum()
    var = (n * total2 - total * total) / n
    total_w = total if total != 0 else np.nan
    return {
        "Mean": total / n,
        "StdDev": float(np.sqrt(var / (n - 1))) if n > 1 and var > 0 else 0.0,
        "Min": float(vf.min()),
        "Max": float(vf.max()),
        "XM": float(((xs + 0.5) * vf).sum() / total_w * s),
        "YM": float(((ys + 0.5) * vf).sum() / total_w * s),
        "IntDen": area * total / n,
        "Median": _median(v),
        "RawIntDen": float(total),
    }


def measure_particle(
    region: np.ndarray,
    polygon: np.ndarray,
    offset: tuple[int, int] = (0, 0),
    image: np.ndarray | None = None,
    pixel_size: float = 1.0,
) -> dict:
    """ImageJ's measurements of one particle: its region and its traced outline.

    Parameters
    ----------
    region : (H, W) bool array
        The pixels inside the outline (:func:`particleseg.io.roi_region`), cut to the
        outline's bounding box.
    polygon : (N, 2) int array
        The traced outline (:func:`particleseg.io.trace_outline`), in image coordinates.
    offset : (x, y)
        Image coordinates of ``region[0, 0]``.
    image : (H, W) array, optional
        Gray values under ``region`` (intensity columns are NaN without it).
    pixel_size : float

    Returns
    -------
    dict
        The columns of :data:`IMAGEJ_COLUMNS` and ``ECD``.
    """
    s = float(pixel_size)
    ys, xs = np.nonzero(region)
    xs = xs + offset[0]
    ys = ys + offset[1]
    n = len(xs)
    area = n * s * s
    perim = traced_perimeter(polygon) * s
    major, minor, angle = fit_ellipse(region)
    hull = convex_hull(polygon)
    out = {"Area": area}
    if image is not None:
        out.update(_intensity(np.asarray(image)[region], xs, ys, area, s))
    else:
        out.update({c: np.nan for c in _INTENSITY})
    x0, y0 = polygon.min(axis=0)
    x1, y1 = polygon.max(axis=0)
    out.update(
        {
            "X": (xs.mean() + 0.5) * s,
            "Y": (ys.mean() + 0.5) * s,
            "Perim.": perim,
            "BX": x0 * s,
            "BY": y0 * s,
            "Width": (x1 - x0) * s,
            "Height": (y1 - y0) * s,
            "Major": major * s,
            "Minor": minor * s,
            "Angle": angle,
            "Circ.": min(1.0, 4.0 * np.pi * area / perim**2) if perim > 0 else 0.0,
        }
    )
    out.update(feret_values(hull, s))
    out.update(
        {
            "AR": major / minor,
            "Round": 4.0 * area / (np.pi * (major * s) ** 2),
            "Solidity": n / polygon_area(hull),
            "ECD": 2.0 * np.sqrt(area / np.pi),
        }
    )
    return out


def measure_particles(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    calibration: Calibration | None = None,
    border: np.ndarray | None = None,
    origin: tuple[int, int] = (0, 0),
    only: np.ndarray | None = None,
) -> pd.DataFrame:
    """Measure every particle of a 2D label image as ImageJ measures its traced ROI.

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
    origin : (row, column)
        Position of ``labels[0, 0]`` in the whole image, when ``labels`` is a strip of it
        (:mod:`particleseg.strips`): coordinates are those of the whole image.
    only : int array, optional
        Measure only these labels (each must lie whole inside ``labels``).

    Returns
    -------
    pandas.DataFrame
        One row per particle, ascending label, with the columns of :data:`COLUMNS`: ImageJ's
        ``Area``, ``Mean``, ``StdDev``, ``Min``, ``Max``, centroid ``X``, ``Y``, centre of mass
        ``XM``, ``YM``, ``Perim.``, bounding box ``BX``, ``BY``, ``Width``, ``Height``, fitted
        ellipse ``Major``, ``Minor``, ``Angle``, ``Circ.`` (4 pi area / perimeter², at most 1),
        ``Feret``, ``IntDen`` (area x mean), ``Median``, ``RawIntDen`` (sum of gray values),
        ``FeretX``, ``FeretY``, ``FeretAngle``, ``MinFeret``, ``AR`` (major / minor), ``Round``
        (4 area / (pi major²)), ``Solidity`` (area / convex hull area); and ``ECD``, the
        equivalent circular diameter, and ``touches_border``.

    Notes
    -----
    The intensity statistics, centroid, bounding box and area are plain NumPy over the
    particle's pixels; the shape columns follow ImageJ where scikit-image's ``regionprops``
    defines them differently (``Perim.``: :func:`traced_perimeter`; ``Major``, ``Minor``,
    ``Angle``: :func:`fit_ellipse`; Feret values: :func:`feret_values`; ``Solidity``: the
    pixel count over the area of the outline's convex hull polygon, where scikit-image counts the
    pixels of the convex hull image).

    A particle is measured as the region its traced outline encloses
    (:func:`particleseg.io.roi_region`): its largest 8-connected part with holes filled. For
    particles of one piece without holes (the pipeline's, with ``fill_holes``) that is the
    particle itself.

    Examples
    --------
    >>> lab = np.zeros((6, 8), int)
    >>> lab[1:4, 1:7] = 1
    >>> t = measure_particles(lab, calibration=Calibration(2.0, "nm"))
    >>> t[["Area", "Width", "Height", "Feret", "MinFeret", "Solidity"]].iloc[0].tolist()
    [72.0, 12.0, 6.0, 13.416407864998739, 6.0, 1.0]

    References
    ----------
    .. [1] T. Ferreira, W. Rasband, "ImageJ User Guide", IJ 1.46r (2012), sec. 30.7.
    """
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2D, got shape {labels.shape}")
    cal = calibration or Calibration()
    if border is None:
        border = np.zeros(labels.shape, bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
    border_labels = set(np.unique(labels[border]).tolist()) - {0}
    intensity = None if image is None else np.asarray(image)
    rows = []
    wanted = None if only is None else set(np.asarray(only).tolist())
    for lab, sl in enumerate(ndi.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if sl is None or wanted is not None and lab not in wanted:
            continue
        region = roi_region(labels[sl] == lab)
        rr, cc = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
        inner = (slice(rr[0], rr[-1] + 1), slice(cc[0], cc[-1] + 1))
        region = region[inner]
        x0, y0 = sl[1].start + cc[0], sl[0].start + rr[0]
        polygon = trace_outline(region) + np.array([x0 + origin[1], y0 + origin[0]])
        gray = None if intensity is None else intensity[y0 : y0 + region.shape[0], x0 : x0 + region.shape[1]]
        row = {"label": lab}
        row.update(measure_particle(region, polygon, (x0 + origin[1], y0 + origin[0]), gray, cal.pixel_size))
        row["touches_border"] = lab in border_labels
        rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summarize(table: pd.DataFrame, unit: str = "px", nm_per_unit: float | None = None) -> dict:
    """Summary statistics of the size distribution of the particles in ``table``.

    For each of :data:`SIZE_COLUMNS` (``MinFeret``, ``Feret``, ``ECD``, ``Area``):
    number-based mean, median, standard deviation and the 10th, 25th, 75th and 90th
    percentiles, as ``<column>_<statistic>`` (``MinFeret_median``). ``unit`` is the length
    unit, ``area_unit`` the unit of the ``Area_*`` values. ``MinFeret_median_nm`` and
    ``nano_by_median_MinFeret`` tell whether the number-based median of the minimum Feret
    diameter lies below 100 nm, the size criterion of the European Commission's definition of
    a nanomaterial (2022/C 229/01, which counts a material as nano when 50 % or more of its
    particles have an external dimension of 1-100 nm); both are empty for uncalibrated images.

    Only rows with ``kept`` True count when that column exists.

    Examples
    --------
    >>> t = pd.DataFrame({"MinFeret": [50.0, 80, 120], "Feret": [60.0, 90, 130],
    ...                   "ECD": [55.0, 85, 125], "Area": [1.0, 2, 3]})
    >>> s = summarize(t, "nm", 1.0)
    >>> s["count"], s["MinFeret_median"], s["area_unit"], s["nano_by_median_MinFeret"]
    (3, 80.0, 'nm^2', True)
    """
    t = table[table["kept"].astype(bool)] if "kept" in table.columns else table
    out: dict = {"count": int(len(t)), "unit": unit, "area_unit": f"{unit}^2"}
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
        med_nm = out["MinFeret_median"] * nm_per_unit
        out["MinFeret_median_nm"] = med_nm
        out["nano_by_median_MinFeret"] = bool(med_nm < 100.0)
    else:
        out["MinFeret_median_nm"] = np.nan
        out["nano_by_median_MinFeret"] = None
    return out
