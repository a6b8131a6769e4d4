"""Comparison of detected SIMS particles with the truth of simulated fields.

Used to choose the two detection parameters (threshold and watershed level) on simulated
fields (:mod:`particleseg.sims.simulate`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics import iou_matrix
from .isotopes import REFERENCE, ratio_columns


def match_particles(labels: np.ndarray, truth_labels: np.ndarray, min_iou: float = 0.3) -> dict[int, int]:
    """Match detected particles to true ones, one-to-one, greedily by IoU (pairs above ``min_iou``).

    Returns
    -------
    dict
        Detected particle label -> true particle label.
    """
    if labels.max() == 0 or truth_labels.max() == 0:
        return {}
    iou, truth_ids, pred_ids = iou_matrix(truth_labels, labels, return_ids=True)
    pairs = sorted(((iou[i, j], truth_ids[i], pred_ids[j]) for i, j in zip(*np.nonzero(iou >= min_iou))), reverse=True)
    used_t, used_p, out = set(), set(), {}
    for _, t, p in pairs:
        if t not in used_t and p not in used_p:
            out[int(p)] = int(t)
            used_t.add(t)
            used_p.add(p)
    return out


def score_detection(
    particles: pd.DataFrame,
    truth: pd.DataFrame,
    matches: pd.DataFrame | None = None,
    isotope: str = "235U",
    min_counts: float = 0.0,
) -> dict:
    """How well a run recovers the truth of simulated fields.

    Parameters
    ----------
    particles : DataFrame
        Detected particles (:func:`measure_particle_isotopes` with a ``field`` column).
    truth : DataFrame
        True particles (``truth.csv`` of :func:`particleseg.sims.simulate.simulate_fields`).
    matches : DataFrame, optional
        Columns ``field``, ``particle``, ``truth_label`` pairing detections with true particles;
        gives the per-particle pulls.
    isotope : str
        The ratio ``isotope/238U`` whose distribution is compared.
    min_counts : float
        Particles whose true expected 238U counts are below this are left out of the truth.

    Returns
    -------
    dict with ``n_true``, ``n_detected``, ``count_error`` (relative), ``matched``, ``recall``,
    ``precision``, ``ratio_distance`` (1-Wasserstein distance between the log10 ratio
    distributions, each particle weighted by its 238U counts), ``ratio_distance_unweighted``,
    ``pull_median``, ``pull_iqr_sigma`` (robust spread of ``(R - R_true)/sigma_R`` of matched
    particles; 1 means the uncertainties are right) and ``score`` (``count_error + ratio_distance``,
    lower is better: the criterion of the parameter sweep).
    """
    from scipy.stats import wasserstein_distance  # SciPy's statistics: loaded only to score

    rc, ec = ratio_columns(isotope)
    tr = truth[truth[f"{REFERENCE}_expected"] >= min_counts] if min_counts else truth
    n_true, n_det = len(tr), len(particles)
    out = {"n_true": n_true, "n_detected": n_det, "count_error": abs(n_det - n_true) / max(n_true, 1)}
    det = particles[(particles[f"{REFERENCE}_net"] > 0) & particles[rc].gt(0)] if n_det else particles
    if len(det) and len(tr):
        a = np.log10(det[rc].to_numpy(float))
        b = np.log10(tr[rc].to_numpy(float))
        wa = det[f"{REFERENCE}_net"].to_numpy(float)
        wb = tr[f"{REFERENCE}_expected"].to_numpy(float)
        out["ratio_distance"] = float(wasserstein_distance(a, b, wa, wb))
        out["ratio_distance_unweighted"] = float(wasserstein_distance(a, b))
    else:
        out["ratio_distance"] = out["ratio_distance_unweighted"] = float("nan") if (n_det or n_true) else 0.0
    if matches is not None and len(matches):
        m = matches.merge(particles, on=["field", "particle"]).merge(
            truth.rename(columns={c: "true_" + c for c in truth.columns if c not in ("field", "label")}),
            left_on=["field", "truth_label"],
            right_on=["field", "label"],
        )
        pull = ((m[rc] - m["true_" + rc]) / m[ec]).to_numpy(float)
        pull = pull[np.isfinite(pull)]
        out["matched"] = len(m)
        out["recall"] = len(m) / max(n_true, 1)
        out["precision"] = len(m) / max(n_det, 1)
        if len(pull):
            q1, med, q3 = np.percentile(pull, [25, 50, 75])
            out["pull_median"] = float(med)
            out["pull_iqr_sigma"] = float((q3 - q1) / 1.349)
    d = out["ratio_distance"]
    out["score"] = out["count_error"] + (d if np.isfinite(d) else 1.0)
    return out
