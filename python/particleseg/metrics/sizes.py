"""Size distributions: agreement of the particle sizes of a proposal with the ground truth.

Compares the :func:`particleseg.measure.measure_particles` tables of the two (mean, median,
Kolmogorov-Smirnov distance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..measure import measure_particles
from ..postprocess import remove_small

#: Columns of :func:`particleseg.measure.measure_particles` compared by the size-distribution agreement.
SIZE_COLUMNS = ("MinFeret", "Feret", "Area", "ECD")


def size_distribution_agreement(pred_table, truth_table, columns: Sequence[str] = SIZE_COLUMNS) -> dict:
    """Agreement of the particle size distributions of a proposal and the ground truth.

    For each column (minimum and maximum Feret diameter, area, equivalent circular diameter
    of :func:`particleseg.measure.measure_particles` tables): the signed relative error of the
    number-based mean and median, ``(pred - truth) / truth``, and the two-sample
    Kolmogorov-Smirnov distance (largest difference of the empirical distribution functions,
    :func:`scipy.stats.ks_2samp`). NaN when either table has no particles.

    Returns
    -------
    dict
        ``{col}_mean_relerr``, ``{col}_median_relerr``, ``{col}_ks`` for each column, and
        ``size_n_pred``, ``size_n_truth``.

    Examples
    --------
    >>> import pandas as pd
    >>> pred = pd.DataFrame({"Area": [10.0, 12.0]})
    >>> truth = pd.DataFrame({"Area": [10.0, 10.0]})
    >>> res = size_distribution_agreement(pred, truth, columns=("Area",))
    >>> res["Area_mean_relerr"], res["Area_ks"]
    (0.1, 0.5)
    """
    # imported here: scipy.stats takes about 1 s to import, and every user of the metrics would pay it
    from scipy.stats import ks_2samp

    out: dict = {"size_n_pred": int(len(pred_table)), "size_n_truth": int(len(truth_table))}
    for col in columns:
        p = np.asarray(pred_table[col], float) if len(pred_table) else np.zeros(0)
        t = np.asarray(truth_table[col], float) if len(truth_table) else np.zeros(0)
        if p.size == 0 or t.size == 0:
            out.update({f"{col}_mean_relerr": math.nan, f"{col}_median_relerr": math.nan, f"{col}_ks": math.nan})
            continue
        out[f"{col}_mean_relerr"] = float((p.mean() - t.mean()) / t.mean())
        out[f"{col}_median_relerr"] = float((np.median(p) - np.median(t)) / np.median(t))
        out[f"{col}_ks"] = float(ks_2samp(p, t).statistic)
    return out


_SIZE_MIN_AREA = 3


def _particle_table(labels_stack: np.ndarray, exclude_border: bool):
    # particles of 1-2 pixels are noise for a size distribution
    tables = [measure_particles(remove_small(s, _SIZE_MIN_AREA)) for s in labels_stack]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    if exclude_border and len(table):
        table = table[~table["touches_border"].astype(bool)]
    return table
