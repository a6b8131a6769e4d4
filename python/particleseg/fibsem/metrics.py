"""Agreement of predicted and annotated phases, per phase and over all (IoU, precision, recall, F1)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


def phase_metrics(pred: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> dict:
    """Per-phase agreement of predicted and annotated phases (``1..K``; truth ``0`` ignored).

    Returns
    -------
    dict with ``accuracy`` (fraction of annotated pixels labelled right), ``mean_iou``,
    ``mean_f1``, ``pixels``, ``confusion`` (K x K list, rows = truth) and ``per_class``: for each
    phase its ``iou``, ``precision``, ``recall``, ``f1`` (Dice) and ``support`` (annotated pixels).
    """
    k = len(classes)
    t = np.asarray(truth).ravel()
    p = np.asarray(pred).ravel()
    sel = (t > 0) & (t <= k)
    t, p = t[sel].astype(np.int64) - 1, np.clip(p[sel].astype(np.int64) - 1, -1, k - 1)
    valid = p >= 0
    conf = np.zeros((k, k), np.int64)
    np.add.at(conf, (t[valid], p[valid]), 1)
    per = {}
    for i, name in enumerate(classes):
        tp = conf[i, i]
        fp = conf[:, i].sum() - tp
        fn = conf[i].sum() - tp + int((~valid & (t == i)).sum())
        support = int((t == i).sum())
        per[name] = {
            "iou": float(tp / (tp + fp + fn)) if tp + fp + fn else float("nan"),
            "precision": float(tp / (tp + fp)) if tp + fp else float("nan"),
            "recall": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "f1": float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else float("nan"),
            "support": support,
        }
    present = [v for v in per.values() if v["support"] > 0]
    return {
        "accuracy": float(np.trace(conf) / max(len(t), 1)),
        "mean_iou": float(np.mean([v["iou"] for v in present])) if present else float("nan"),
        "mean_f1": float(np.mean([v["f1"] for v in present])) if present else float("nan"),
        "pixels": int(len(t)),
        "confusion": conf.tolist(),
        "per_class": per,
    }


def metrics_table(metrics: dict) -> pd.DataFrame:
    """Per-class metrics as a table (one row per phase, plus ``all``)."""
    rows = [{"phase": name, **vals} for name, vals in metrics["per_class"].items()]
    rows.append(
        {
            "phase": "all",
            "iou": metrics["mean_iou"],
            "f1": metrics["mean_f1"],
            "precision": np.nan,
            "recall": np.nan,
            "support": metrics["pixels"],
            "accuracy": metrics["accuracy"],
        }
    )
    return pd.DataFrame(rows)
