"""The decision threshold: chosen on the validation split in training, stored in the checkpoint, used by
``avfused detect`` and reported by ``avfused eval`` beside ACC at the fixed 0.5 (never tuned on the test set).

Rule (RULE): per head, the threshold that maximises the smoothed balanced accuracy -- the mean of the recall on
real and on fake videos -- of that head's scores against its own label on the validation videos (score >= t is
fake). Balanced accuracy, not plain accuracy, because the share of fakes differs between datasets and between
validation and use (FakeAVCeleb is mostly fakes): plain accuracy would move the threshold towards calling the
majority class, while balanced accuracy weighs a false alarm on a real video and a missed fake equally,
whatever their counts (Youden's J). Smoothed, because the raw maximum over a hundred validation videos lands
where a few scores happen to fall and costs accuracy on new videos: each step 'score >= t' becomes a logistic
in logit space of Silverman's bandwidth (the classes' pooled robust spread times 0.9 n^-1/5). Simulated with
104 validation videos of two classes of normal logits (9 settings: class shares 0.3-0.8, spreads 1-3, optimum
at 0.5 or not), the test balanced accuracy of the smoothed rule beat the raw maximum's in all 9 (by 0.003 to
0.007), and where 0.5 was optimal it gave up 0.0015-0.003 to the fixed 0.5, the raw maximum 0.005-0.01. Ties
go to the threshold nearest 0.5.

    choose_threshold(labels, scores)     -> (threshold, balanced accuracy) on one head's validation scores
    calibrate(predictions, epoch, step)  -> the checkpoint's ``calibration`` entry (None without both classes)
    decision_threshold(checkpoint, head) -> Decision(threshold, source): the calibrated one, else 0.5
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from avfused import metrics

RULE = "max smoothed balanced accuracy on the validation split"


@dataclass(frozen=True)
class Decision:
    """The threshold to call a clip fake at (score >= threshold), and where it came from, in words."""

    threshold: float
    source: str
    calibrated: bool


def choose_threshold(labels: object, scores: object) -> tuple[float, float]:
    """(threshold, balanced accuracy at it) for ``labels`` (N,) 0/1 and ``scores`` (N,) in [0, 1]: the maximum of
    the smoothed balanced accuracy (module docstring); ties go to the threshold nearest 0.5. Needs both classes
    (ValueError otherwise)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("choose_threshold needs real and fake videos among the labels")
    if not np.isfinite(scores).all() or scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError("choose_threshold takes probabilities: scores must lie in [0, 1]")
    z = _logit(scores)
    width = _bandwidth(z[labels], z[~labels])
    grid = np.unique(np.r_[np.linspace(z.min() - width, z.max() + width, GRID_POINTS), 0.0])  # 0.0: logit(0.5)
    smoothed = np.concatenate([_smoothed_balanced_accuracy(z[labels], z[~labels], cuts, width)
                               for cuts in np.array_split(grid, max(1, grid.size * z.size // 4_000_000))])
    best = np.flatnonzero(smoothed >= smoothed.max() - 1e-12)
    threshold = float(_sigmoid(grid[best[np.argmin(np.abs(grid[best]))]]))
    fake = scores >= threshold
    return threshold, float((fake[labels].mean() + (~fake[~labels]).mean()) / 2.0)


GRID_POINTS = 1001  # candidate thresholds, evenly spaced in logit space over the scores' range


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1.0 - 1e-7)  # scores of exactly 0 or 1: a finite logit
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _bandwidth(fake: np.ndarray, real: np.ndarray) -> float:
    """Silverman's rule of thumb on the pooled within-class spread of the logits (robust: the smaller of the
    standard deviation and IQR / 1.34), floored so identical scores still get a smooth step."""
    spreads = []
    for z in (fake, real):
        q75, q25 = np.percentile(z, [75, 25])
        spreads.append(min(z.std(), (q75 - q25) / 1.34) if z.size > 1 else 0.0)
    spread = float(np.sqrt((fake.size * spreads[0] ** 2 + real.size * spreads[1] ** 2) / (fake.size + real.size)))
    return max(0.9 * spread * (fake.size + real.size) ** -0.2, 1e-3)


def _smoothed_balanced_accuracy(fake: np.ndarray, real: np.ndarray, cuts: np.ndarray, width: float) -> np.ndarray:
    """Balanced accuracy at each cut with the step 'score >= cut' replaced by a logistic of ``width``."""
    recall_fake = _sigmoid((fake[None, :] - cuts[:, None]) / width).mean(axis=1)
    recall_real = _sigmoid((cuts[:, None] - real[None, :]) / width).mean(axis=1)
    return (recall_fake + recall_real) / 2.0


def calibrate(predictions, epoch: int, step: int) -> dict | None:
    """The ``calibration`` entry of a checkpoint from per-video validation Predictions (avfused.evaluate):
    {"rule", "epoch", "step", "videos", "thresholds": {head: t}, "balanced_accuracy": {head: b}}. A head whose
    known labels hold one class only gets no threshold; None when no head has one."""
    from avfused.evaluate import LABEL_OF_HEAD

    thresholds, balanced = {}, {}
    for head, scores in predictions.scores.items():
        labels = getattr(predictions, LABEL_OF_HEAD[head])
        known = labels >= 0
        if 0 < int(labels[known].sum()) < int(known.sum()):
            thresholds[head], balanced[head] = choose_threshold(labels[known], scores[known])
    if not thresholds:
        return None
    return {
        "rule": RULE,
        "epoch": epoch,
        "step": step,
        "videos": len(predictions),
        "thresholds": thresholds,
        "balanced_accuracy": balanced,
    }


def decision_threshold(checkpoint: object, head: str = "clip") -> Decision:
    """The threshold for ``head`` stored in ``checkpoint`` (a path or a loaded avfused.checkpoint.Checkpoint),
    else the fixed 0.5 -- a checkpoint written before avfused stored one, or trained without a validation
    split holding both classes."""
    from avfused.checkpoint import load_checkpoint

    if isinstance(checkpoint, str | os.PathLike):
        checkpoint = load_checkpoint(checkpoint)
    calibration = checkpoint.calibration or {}
    threshold = (calibration.get("thresholds") or {}).get(head)
    if threshold is None:
        return Decision(
            metrics.DEFAULT_THRESHOLD,
            f"the fixed {metrics.DEFAULT_THRESHOLD}: the checkpoint holds no calibrated threshold (written before "
            "avfused stored one, or trained without a validation split holding real and fake videos)",
            False,
        )
    source = f"calibrated in training ({calibration.get('rule', RULE)}, epoch {calibration.get('epoch')})"
    return Decision(float(threshold), source, True)
