"""Scores: ROC AUC and F1 at the best threshold."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score


def auc(labels, scores) -> float:
    """ROC AUC; NaN when only one class is present (AUC is undefined there)."""
    labels = np.asarray(labels)
    if labels.size == 0 or np.unique(labels).size < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def best_f1(labels, scores) -> tuple[float, float]:
    """(F1, threshold) at the threshold that maximises F1 on these rows.

    The threshold is fitted on the rows it is scored on, so report it as an in-sample figure
    (or pass out-of-fold predictions, whose labels no model saw).
    """
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1[:-1])) if thresholds.size else 0
    threshold = float(thresholds[i]) if thresholds.size else 0.5
    return float(f1_score(labels, np.asarray(scores) >= threshold)), threshold
