"""Detection metrics from per-video fake scores, in numpy (no scikit-learn needed).

Every function takes ``labels`` (N,) in {0 real, 1 fake} and ``scores`` (N,) where higher means
"more likely fake" (a fake probability). Metrics that need both classes return NaN when one is
missing, so a category holding only fakes still reports its accuracy.

    roc_curve(labels, scores)   -> (fpr, tpr, thresholds), each (K,), thresholds decreasing
    roc_auc(labels, scores)     -> area under the ROC curve (ties count one half)
    equal_error_rate(...)       -> the rate where false-positive = false-negative rate
    average_precision(...)      -> AP: sum over thresholds of (R_n - R_{n-1}) * P_n
    accuracy(..., threshold)    -> share of clips with (score >= threshold) == label
    summarize(labels, scores)   -> dict of all of them plus counts
    json_safe(value)            -> the value with NaN / inf (undefined metrics) as None, for standard JSON
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_THRESHOLD = 0.5


def _as_arrays(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have the same length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {sorted(set(y.tolist()))}")
    if not np.isfinite(s).all():
        raise ValueError("scores hold NaN or infinite values")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def roc_curve(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score used as a threshold (score >= t is fake).

    The first point is (0, 0) with threshold +inf, the last (1, 1).
    """
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y):
        raise ValueError("a ROC curve needs both real and fake clips")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # the last index of each run of equal scores: a threshold includes all ties at once
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    true_pos = np.cumsum(y)[last]
    false_pos = (last + 1) - true_pos
    tpr = np.r_[0.0, true_pos / y.sum()]
    fpr = np.r_[0.0, false_pos / (y.size - y.sum())]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(labels: object, scores: object) -> float:
    """Probability that a random fake scores above a random real (ties count one half); NaN with one class."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, s)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def equal_error_rate(labels: object, scores: object) -> float:
    """The error rate where the false-positive rate equals the false-negative rate (linear interpolation)."""
    y, s = _as_arrays(labels, scores)
    if not _both_classes(y):
        return math.nan
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1.0 - tpr
    gap = fnr - fpr  # decreasing from 1 to -1 along the curve
    i = int(np.nonzero(gap <= 0)[0][0])
    if i == 0 or gap[i] == 0:
        return float(fpr[i])
    # interpolate between points i-1 (gap > 0) and i (gap <= 0)
    w = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


def average_precision(labels: object, scores: object) -> float:
    """Area under the precision-recall curve as a step sum (the usual AP); NaN with no fake clip."""
    y, s = _as_arrays(labels, scores)
    if not y.size or y.sum() == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    true_pos = np.cumsum(y)[last]
    precision = true_pos / (last + 1)
    recall = true_pos / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def accuracy(labels: object, scores: object, threshold: float = DEFAULT_THRESHOLD) -> float:
    """Share of clips classified right when score >= threshold means fake; NaN when empty."""
    y, s = _as_arrays(labels, scores)
    if not y.size:
        return math.nan
    return float(np.mean((s >= threshold).astype(np.int64) == y))


def summarize(labels: object, scores: object, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """{'n', 'real', 'fake', 'acc', 'auc', 'eer', 'ap'} for one set of clips."""
    y, s = _as_arrays(labels, scores)
    return {
        "n": int(y.size),
        "real": int(y.size - y.sum()),
        "fake": int(y.sum()),
        "acc": accuracy(y, s, threshold),
        "auc": roc_auc(y, s),
        "eer": equal_error_rate(y, s),
        "ap": average_precision(y, s),
    }


def json_safe(value: object) -> object:
    """Floats that JSON cannot hold (NaN, inf: a metric undefined for a one-class group) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
