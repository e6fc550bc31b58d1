"""Evaluation metrics shared by the fine-tuning tasks.

Classification: accuracy, macro-F1 and Matthews correlation (MCC) from one confusion matrix.
Regression: Pearson and Spearman correlation (scipy). Every function takes plain sequences or
numpy arrays and returns Python floats, so results go straight into JSON.

Conventions for degenerate inputs (no data, a constant column) follow scikit-learn: F1 of a
class with no true and no predicted example is 0 and it still counts in the macro average of the
classes that occur; MCC and the correlations are 0.0 when undefined.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> np.ndarray:
    """(K, K) counts: rows are the true class, columns the predicted one."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    k = num_classes if num_classes is not None else int(max(t.max(initial=-1), p.max(initial=-1)) + 1)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.size == 0:
        return 0.0
    return float((t == p).mean())


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1)
    predicted = cm.sum(0)
    present = (support + predicted) > 0
    if not present.any():
        return 0.0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean())


def mcc(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> float:
    """Matthews correlation coefficient (multi-class form, Gorodkin 2004); 0.0 when undefined."""
    cm = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    n = cm.sum()
    if n == 0:
        return 0.0
    correct = np.trace(cm)
    t_sum, p_sum = cm.sum(1), cm.sum(0)
    cov_tp = correct * n - t_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    cov_pp = n * n - p_sum @ p_sum
    if cov_tt == 0 or cov_pp == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(pearsonr(a, b)[0])


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b)[0])


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int | None = None) -> dict:
    """accuracy, macro_f1 and mcc in one dict."""
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, num_classes),
        "mcc": mcc(y_true, y_pred, num_classes),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """pearson, spearman and mse in one dict."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    return {
        "pearson": pearson(t, p),
        "spearman": spearman(t, p),
        "mse": float(((t - p) ** 2).mean()) if t.size else 0.0,
    }
