"""Particle outlines as ImageJ traces them, and ROI sets for ImageJ's ROI Manager."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .write import write_atomic


def roi_region(mask: np.ndarray) -> np.ndarray:
    """Return the pixels inside the traced outline of a binary region (see :func:`trace_outline`).

    These are the pixels of its largest 8-connected component with the holes filled.

    This is the region ImageJ measures for the traced polygon ROI of the particle.

    Examples
    --------
    >>> m = np.array([[1, 1, 1, 0, 0],
    ...               [1, 0, 1, 0, 1],
    ...               [1, 1, 1, 0, 0]], bool)
    >>> roi_region(m).astype(int)
    array([[1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0],
           [1, 1, 1, 0, 0]])
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask, bool)
    lab, n = ndi.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        mask = lab == (np.argmax(sizes) + 1)
    return ndi.binary_fill_holes(mask)


def trace_outline(mask: np.ndarray) -> np.ndarray:
    """Outline of a binary region along pixel edges, as ImageJ's wand traces it.

    Returns the vertices (x, y) of the outer boundary of the largest 8-connected component,
    in pixel-corner coordinates, clockwise as displayed (y down), with collinear
    vertices removed. The polygon encloses the pixels of :func:`roi_region`.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros((0, 2), np.int32)
    mask = roi_region(mask)
    p = np.pad(mask, 1)
    # Directed boundary edges, clockwise as displayed, so the region lies to the right of each
    # step. Corner (x, y) is the top-left corner of pixel (y, x).
    y, x = np.nonzero(p[1:-1, 1:-1])
    y = y + 1
    x = x + 1
    nxt: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(a, b):
        for s, e in zip(zip(*a), zip(*b)):
            nxt.setdefault(s, []).append(e)

    up, down, left, right = ~p[y - 1, x], ~p[y + 1, x], ~p[y, x - 1], ~p[y, x + 1]
    add((x[up], y[up]), (x[up] + 1, y[up]))  # top edge, left to right
    add((x[down] + 1, y[down] + 1), (x[down], y[down] + 1))  # bottom edge, right to left
    add((x[left], y[left] + 1), (x[left], y[left]))  # left edge, bottom to top
    add((x[right] + 1, y[right]), (x[right] + 1, y[right] + 1))  # right edge, top to bottom
    # Start at the top-left-most corner, which lies on the outer boundary.
    start = min(nxt, key=lambda c: (c[1], c[0]))
    path = [start]
    prev_dir = (1, 0)
    cur = start
    while True:
        options = nxt[cur]
        if len(options) == 1:
            nb = options[0]
        else:
            # Two pixels touch only at this corner: take the turn that keeps them one region
            # (8-connectivity, as ImageJ's wand), which is the left turn as displayed.
            # cur and prev_dir bound as defaults (B023): turn is only called by the min() below,
            # within this iteration, so they have the same values as the closure would see.
            def turn(o, cur=cur, prev_dir=prev_dir):
                d = (o[0] - cur[0], o[1] - cur[1])
                return prev_dir[0] * d[1] - prev_dir[1] * d[0]

            nb = min(options, key=turn)
        options.remove(nb)
        prev_dir = (nb[0] - cur[0], nb[1] - cur[1])
        cur = nb
        if cur == start:
            break
        path.append(cur)
    pts = np.array(path, np.int32) - 1  # undo padding
    # Drop vertices in the middle of straight runs.
    prev = np.roll(pts, 1, axis=0)
    nxt_pts = np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt_pts[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (
        nxt_pts[:, 0] - pts[:, 0]
    )
    return pts[cross != 0]


def _object_slices(labels: np.ndarray, strip_rows: int = 1024) -> list:
    """``scipy.ndimage.find_objects(labels)`` of a 2D label image, a strip of rows at a time.

    The same slices; for a large label image (a memory map) only a strip is read at once and
    its pages are dropped afterwards (:func:`particleseg.io.write.release_pages`).
    """
    from scipy import ndimage as ndi

    from .write import WRITE_STRIPS_ABOVE, release_pages

    if labels.ndim != 2 or labels.size <= WRITE_STRIPS_ABOVE:
        return ndi.find_objects(labels)
    boxes: list = []
    for y0 in range(0, labels.shape[0], strip_rows):
        found = ndi.find_objects(np.asarray(labels[y0 : y0 + strip_rows]))
        release_pages(labels, y0, y0 + strip_rows)
        boxes.extend([None] * (len(found) - len(boxes)))
        for i, sl in enumerate(found):
            if sl is None:
                continue
            b = boxes[i]
            top = b[0].start if b is not None else sl[0].start + y0
            x0 = min(b[1].start, sl[1].start) if b is not None else sl[1].start
            x1 = max(b[1].stop, sl[1].stop) if b is not None else sl[1].stop
            boxes[i] = (slice(top, sl[0].stop + y0), slice(x0, x1))
    return boxes


def iter_label_outlines(labels: np.ndarray, ids: Iterable[int] | None = None):
    """Yield ``(label, outline)`` of each labelled particle, in label order (see :func:`label_outlines`).

    ``labels`` may be a read-only memory map of a large image: it is then read a strip, then a
    particle's box, at a time, and the pages read are dropped as it goes.
    """
    from .write import release_pages

    labels = np.asanyarray(labels)
    slices = _object_slices(labels)
    wanted = set(ids) if ids is not None else None
    for i, sl in enumerate(slices, start=1):
        if sl is None or (wanted is not None and i not in wanted):
            continue
        poly = trace_outline(np.asarray(labels[sl]) == i)
        yield i, poly + np.array([sl[1].start, sl[0].start], np.int32)
        if i % 2000 == 0:
            release_pages(labels)
    release_pages(labels)


def label_outlines(labels: np.ndarray, ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Pixel-edge outline (see :func:`trace_outline`) of each labelled particle."""
    return dict(iter_label_outlines(labels, ids))


def write_rois(
    path: str | os.PathLike,
    labels: np.ndarray,
    ids: Iterable[int] | None = None,
    overwrite: bool = False,
    slice_index: np.ndarray | None = None,
) -> Path:
    """Write the particles of a label image as an ImageJ ROI set (a ``.zip`` for the ROI Manager).

    Each particle becomes a traced polygon ROI named ``particle-<label>``. For a ``(Z, Y, X)``
    label stack, ROIs carry their slice position.
    """
    import zipfile

    import roifile

    labels = np.asanyarray(labels)  # a memory map stays one (the outlines read it by parts)
    stack = labels if labels.ndim == 3 else labels[None]

    def rois():
        for z, plane in enumerate(stack):
            for lab, poly in iter_label_outlines(plane, ids):
                roi = roifile.ImagejRoi.frompoints(poly, name=f"particle-{lab}")
                roi.roitype = roifile.ROI_TYPE.TRACED
                # vertices are pixel corners, so the bounds end at the largest vertex (roifile
                # assumes pixel indices and adds one)
                roi.right, roi.bottom = int(poly[:, 0].max()), int(poly[:, 1].max())
                if labels.ndim == 3:
                    roi.position = z + 1
                yield roi

    def write(tmp: Path) -> None:
        # roifile appends to an existing zip; write a fresh archive explicitly, a ROI as it is
        # traced (a large image's 177,000 ROIs held at once took 0.5 GiB)
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for i, roi in enumerate(rois()):
                zf.writestr(f"{i + 1:05d}-{roi.name}.roi", roi.tobytes())

    return write_atomic(path, write, overwrite)
