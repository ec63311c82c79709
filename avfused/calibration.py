"""The decision threshold: chosen on the validation split in training, stored in the checkpoint, used by
``avfused detect`` and reported by ``avfused eval`` beside ACC at the fixed 0.5 (never tuned on the test set).

Rule (RULE): per head, the threshold that maximises the balanced accuracy -- the mean of the recall on real
and on fake videos -- of that head's scores against its own label on the validation videos (score >= t is
fake). Balanced accuracy, not plain accuracy, because the share of fakes differs between datasets and
between validation and use (FakeAVCeleb is mostly fakes): plain accuracy would move the threshold towards
calling the majority class, while balanced accuracy weighs a false alarm on a real video and a missed fake
equally, whatever their counts (it is the ROC point farthest above the diagonal, Youden's J). Among equally
good cut-points the one nearest 0.5 wins; the threshold sits midway between the lowest validation score
called fake and the highest called real, on no validation score itself.

    choose_threshold(labels, scores)     -> (threshold, balanced accuracy) on one head's validation scores
    calibrate(predictions, epoch, step)  -> the checkpoint's ``calibration`` entry (None without both classes)
    decision_threshold(checkpoint, head) -> Decision(threshold, source): the calibrated one, else 0.5
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from avfused import metrics

RULE = "max balanced accuracy on the validation split"


@dataclass(frozen=True)
class Decision:
    """The threshold to call a clip fake at (score >= threshold), and where it came from, in words."""

    threshold: float
    source: str
    calibrated: bool


def choose_threshold(labels: object, scores: object) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising balanced accuracy on ``labels`` (N,) 0/1 and ``scores`` (N,);
    ties go to the threshold nearest 0.5. Needs both classes (ValueError otherwise)."""
    fpr, tpr, cuts = metrics.roc_curve(labels, scores)  # cuts: +inf (nothing fake), then each distinct score
    balanced = (tpr + 1.0 - fpr) / 2.0
    # cut k calls fake every score >= cuts[k]; every threshold in (cuts[k + 1], cuts[k]] does the same
    scores_desc = cuts[1:]
    next_lower = np.r_[scores_desc[1:], scores_desc[-1]]  # the last cut (everything fake): its own score
    middle = np.maximum((scores_desc + next_lower) / 2.0, next_lower)
    middle = np.where(middle > next_lower, middle, scores_desc)  # adjacent floats: keep the lower one real
    thresholds = np.r_[np.nextafter(scores_desc[0], np.inf), middle]  # nothing fake: just above the top score
    best = np.flatnonzero(balanced >= balanced.max() - 1e-12)
    k = int(best[np.argmin(np.abs(thresholds[best] - metrics.DEFAULT_THRESHOLD))])
    return float(thresholds[k]), float(balanced[k])


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
