"""Topology: simple points, warping a mask without changing its topology, the warping error.

The warping error of Jain et al. [2]_ restricted to splits and mergers, as Fiji's Trainable
Weka Segmentation computes it for the ISBI 2012 challenge [1]_; simple points after Bertrand
and Malandain [8]_. References as in the package docstring (:mod:`particleseg.metrics`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from .inputs import DEFAULT_THRESHOLDS, _check_thresholds, _Inputs, _levels, _prepare

#: Radius (pixels) of the window in which TWS decides whether removing a pixel splits a particle
#: (the publication's evaluation script used 20).
WARPING_RADIUS = 20

# mismatch classes of the warping error (the flags of TWS's WarpingError)
MERGE, SPLIT, HOLE_ADDITION, OBJECT_DELETION, OBJECT_ADDITION, HOLE_DELETION = 1, 2, 4, 8, 16, 32

MISMATCH_NAMES = {
    MERGE: "merge",
    SPLIT: "split",
    HOLE_ADDITION: "hole addition",
    OBJECT_DELETION: "object deletion",
    OBJECT_ADDITION: "object addition",
    HOLE_DELETION: "hole deletion",
}

_FOUR = ndi.generate_binary_structure(2, 1)

_EIGHT = np.ones((3, 3), bool)

# the 8 neighbours of a pixel, clockwise from the top-left; bit k of a neighbourhood code
_N8 = ((-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1))

_N4 = ((-1, 0), (0, 1), (1, 0), (0, -1))


def _topological_numbers(code: int) -> tuple[int, int]:
    """Topological numbers ``(T4, T8')`` of a 3x3 neighbourhood code.

    The 4-connected foreground components 4-adjacent to the centre, and the 8-connected
    background components, in the 8-neighbourhood.
    """
    patch = np.zeros((3, 3), bool)
    for k, (dy, dx) in enumerate(_N8):
        patch[1 + dy, 1 + dx] = bool(code >> k & 1)
    lab, _ = ndi.label(patch, _FOUR)
    t4 = len({lab[1 + dy, 1 + dx] for dy, dx in _N4 if patch[1 + dy, 1 + dx]})
    bg = ~patch
    bg[1, 1] = False
    return t4, int(ndi.label(bg, _EIGHT)[1])


@functools.lru_cache(maxsize=1)
def _t4_table() -> np.ndarray:
    return np.array([_topological_numbers(c)[0] for c in range(256)], np.int8)


@functools.lru_cache(maxsize=1)
def simple_point_table() -> np.ndarray:
    """Lookup table of 2D simple points for 4-connected foreground and 8-connected background.

    Entry ``code`` (bit k set when neighbour k of :data:`_N8` is foreground) is True when the
    centre pixel can be flipped without changing the topology: one 4-connected foreground
    component of the 8-neighbourhood is 4-adjacent to it and the background of the
    8-neighbourhood forms one 8-connected component (Bertrand & Malandain's topological
    numbers ``T4 = T8' = 1`` [8]_; TWS applies the same test through its 3D form).
    """
    return np.array([_topological_numbers(c) == (1, 1) for c in range(256)], bool)


def _codes(flat: np.ndarray, idx: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    code = np.zeros(idx.size, np.intp)
    for k in range(8):
        code |= flat[idx + offsets[k]].astype(np.intp) << k
    return code


def simple_points(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2D binary image that are simple points (:func:`simple_point_table`); outside is background."""
    m = np.pad(np.asarray(mask, bool), 1)
    code = np.zeros(np.asarray(mask).shape, np.intp)
    h, w = code.shape
    for k, (dy, dx) in enumerate(_N8):
        code |= m[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].astype(np.intp) << k
    return simple_point_table()[code]


def warp_mask(source: np.ndarray, target: np.ndarray, labels: np.ndarray | None = None):
    """Warp a 2D binary image towards a target by flipping only simple points.

    Repeatedly flips pixels where ``source`` and ``target`` disagree and that are simple
    points of the current image (:func:`simple_point_table`), until no disagreeing pixel is
    simple. The result has the topology of ``source``: no particle is split, merged, created or
    removed, and no hole appears or vanishes (the image outside counts as background) [2]_.

    Vectorised: the disagreeing pixels of one of the four 2x2 sub-lattices are tested and
    flipped together. Pixels of one sub-lattice are never 8-neighbours, so flipping them
    together equals flipping them one after the other, and each flip keeps the topology. A
    pixel that is not simple is tested again only after one of its neighbours flipped. TWS
    flips one pixel at a time, most confident proposal pixels first; warping is not unique, so
    the warped images can differ in where the remaining disagreements sit.

    Parameters
    ----------
    source, target : (Y, X) bool arrays
    labels : (Y, X) int array, optional
        Labels of the source's particles (0 on background); they are carried along (a pixel
        that turns foreground takes the label of its 4-neighbours).

    Returns
    -------
    warped : (Y, X) bool array
    warped_labels : (Y, X) int array, only when ``labels`` is given
    """
    src = np.pad(np.asarray(source, bool), 1)
    tgt = np.pad(np.asarray(target, bool), 1)
    if src.shape != tgt.shape:
        raise ValueError(f"shapes differ: {np.shape(source)} and {np.shape(target)}")
    h, w = src.shape
    s = src.ravel().copy()
    t = tgt.ravel()
    lab = None if labels is None else np.pad(np.asarray(labels), 1).ravel().copy()
    offsets = np.array([dy * w + dx for dy, dx in _N8])
    off4 = offsets[[1, 3, 5, 7]]
    lut = simple_point_table()

    def by_sublattice(idx: np.ndarray) -> list[np.ndarray]:
        sub = ((idx // w) & 1) * 2 + ((idx % w) & 1)
        return [idx[sub == f] for f in range(4)]

    first = np.flatnonzero(s != t)
    queued = np.zeros(s.size, bool)
    queued[first] = True
    last = np.zeros(s.size, np.intp)  # scratch for removing duplicates without sorting
    pending = by_sublattice(first)
    while any(p.size for p in pending):
        for f in range(4):
            cand = pending[f]
            if cand.size == 0:
                continue
            pending[f] = cand[:0]
            queued[cand] = False
            ok = cand[lut[_codes(s, cand, offsets)]]
            if ok.size == 0:
                continue
            s[ok] = t[ok]
            if lab is not None:
                lab[ok] = 0
                grown = ok[s[ok]]
                if grown.size:
                    lab[grown] = np.max(np.stack([lab[grown + o] for o in off4]), axis=0)
            # neighbours of flipped pixels may have become simple
            nb = (ok[:, None] + offsets[None, :]).ravel()
            nb = nb[(s[nb] != t[nb]) & ~queued[nb]]
            last[nb] = np.arange(nb.size)
            nb = nb[last[nb] == np.arange(nb.size)]
            queued[nb] = True
            for g, more in enumerate(by_sublattice(nb)):
                if more.size:
                    pending[g] = np.concatenate([pending[g], more])
    warped = s.reshape(h, w)[1:-1, 1:-1]
    if lab is None:
        return warped
    return warped, lab.reshape(h, w)[1:-1, 1:-1]


def classify_mismatches(
    warped: np.ndarray, target: np.ndarray, radius: int | None = WARPING_RADIUS
) -> tuple[np.ndarray, np.ndarray]:
    """Classify the pixels where a warped ground truth still disagrees with the proposal.

    The rules of TWS's ``classifyMismatches2d``, with the 4-connected particles of ``warped``
    and the 8-neighbourhood of a disagreeing pixel p (inside the image):

    * neighbours all background: object deletion (p foreground) or addition (p background);
    * neighbours all in one particle: hole addition (p foreground) or hole deletion;
    * background and one particle: p background -> hole addition; p foreground -> **split** if
      removing p leaves its neighbours in two or more particles within a window of
      ``2 radius + 1`` pixels around p (``radius=None``: the whole particle), else hole deletion;
    * two or more particles: **merge** (p background) or **split** (p foreground).

    Returns
    -------
    coords : (M, 2) int array
        (row, column) of each disagreeing pixel.
    classes : (M,) int array
        One of MERGE, SPLIT, HOLE_ADDITION, HOLE_DELETION, OBJECT_ADDITION, OBJECT_DELETION.
    """
    warped = np.asarray(warped, bool)
    target = np.asarray(target, bool)
    if radius is not None and radius < 1:
        radius = None
    comp = ndi.label(warped, _FOUR)[0]
    padded = np.pad(comp, 1, constant_values=-1)
    h, w = padded.shape
    flat = padded.ravel()
    mism = np.flatnonzero(np.pad(warped != target, 1))
    m = mism.size
    cls = np.zeros(m, np.int64)
    if m == 0:
        return np.zeros((0, 2), np.intp), cls
    offsets = np.array([dy * w + dx for dy, dx in _N8])
    nb = np.sort(flat[mism[:, None] + offsets[None, :]], axis=1)
    valid = nb >= 0
    first = np.ones((m, 1), bool)
    n_unique = (valid & np.concatenate([first, nb[:, 1:] != nb[:, :-1]], axis=1)).sum(1)
    has_zero = (nb == 0).any(1)
    fgp = flat[mism] > 0
    none_or_bg = (n_unique == 0) | ((n_unique == 1) & has_zero)
    one_obj = (n_unique == 1) & ~has_zero
    two = n_unique == 2
    many = n_unique >= 3
    cls[none_or_bg] = np.where(fgp[none_or_bg], OBJECT_DELETION, OBJECT_ADDITION)
    cls[one_obj] = np.where(fgp[one_obj], HOLE_ADDITION, HOLE_DELETION)
    cls[two] = np.where(fgp[two], HOLE_DELETION, HOLE_ADDITION)
    cls[many] = np.where(fgp[many], SPLIT, MERGE)
    coords = np.stack(np.divmod(mism, w), 1) - 1
    # foreground p next to background and one particle: a split if removing p disconnects its
    # neighbours. Only possible when they form two or more 4-components around p (T4 >= 2);
    # then decide within the window, as TWS does.
    check = np.flatnonzero(two & fgp)
    if check.size:
        fg_flat = flat > 0
        t4 = _t4_table()[_codes(fg_flat, mism[check], offsets)]
        check = check[t4 >= 2]
    boxes = ndi.find_objects(comp) if radius is None and check.size else None
    ny, nx = comp.shape
    for i in check:
        y, x = coords[i]
        k = comp[y, x]
        if radius is None:
            sy, sx = boxes[k - 1]
            y0, y1, x0, x1 = sy.start, sy.stop, sx.start, sx.stop
        else:
            y0, y1 = max(y - radius, 0), min(y + radius + 1, ny)
            x0, x1 = max(x - radius, 0), min(x + radius + 1, nx)
        win = comp[y0:y1, x0:x1] == k
        cy, cx = y - y0, x - x0
        win[cy, cx] = False
        wl = ndi.label(win, _FOUR)[0]
        around = wl[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2]
        if np.unique(around[around > 0]).size >= 2:
            cls[i] = SPLIT
    return coords, cls


def _warping_counts(truth_mask: np.ndarray, pred_mask: np.ndarray, radius) -> tuple[int, int]:
    warped = warp_mask(truth_mask, pred_mask)
    _, cls = classify_mismatches(warped, pred_mask, radius)
    return int((cls == SPLIT).sum()), int((cls == MERGE).sum())


def _warping_thresholds(inp: _Inputs, thresholds: Sequence[float]) -> tuple[float, ...]:
    """Thresholds of the warping sweep.

    As in the publication's script, none above the proposal's maximum minus 0.1, since an
    (almost) empty proposal only deletes objects, which are neither splits nor mergers, and
    would score perfectly.
    """
    if inp.pred_kind != "prob":
        return tuple(thresholds)
    top = float(inp.pred.max()) - 0.1 + 1e-9
    kept = tuple(t for t in thresholds if t <= top)
    return kept or (min(thresholds),)


def warping_error(
    pred: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    radius: int | None = WARPING_RADIUS,
    watershed: bool = False,
) -> dict:
    """Warping error restricted to splits and mergers (Jain et al. 2010; TWS ``getMinimumSplitsAndMergersErrorValue``).

    The ground-truth mask is warped towards the proposal ``pred > t`` by flipping only simple
    points (:func:`warp_mask`), which keeps its topology. The pixels where they still disagree
    are topological disagreements; those classified as splits or mergers
    (:func:`classify_mismatches`) are counted, and the error is their number divided by the
    number of pixels [2]_, [1]_. The minimum over the thresholds is reported; thresholds above
    the proposal's maximum minus 0.1 are skipped (see :func:`_warping_thresholds`).

    Returns
    -------
    dict
        ``error``, ``splits`` and ``mergers`` (pixel counts) and ``threshold`` (NaN for masks
        and label images).

    Examples
    --------
    A proposal that bridges two ground-truth particles with one pixel makes one merger:

    >>> import numpy as np
    >>> truth = np.zeros((5, 7), bool)
    >>> truth[1:4, 1:3] = truth[1:4, 4:6] = True
    >>> bridged = truth.copy()
    >>> bridged[2, 3] = True
    >>> res = warping_error(bridged, truth)
    >>> res["mergers"], res["splits"], res["error"] == 1 / truth.size
    (1, 0, True)
    """
    inp = _prepare(pred, truth)
    best = None
    npix = inp.truth_mask.size
    for t, _, mask in _levels(inp, _warping_thresholds(inp, _check_thresholds(thresholds)), watershed):
        splits = mergers = 0
        for tm, pm in zip(inp.truth_mask, mask):
            s, mg = _warping_counts(tm, pm, radius)
            splits, mergers = splits + s, mergers + mg
        err = (splits + mergers) / npix
        if best is None or err < best["error"]:
            best = {"error": err, "splits": splits, "mergers": mergers, "threshold": t}
    return best
