"""avfused.metrics against scikit-learn on fresh random scores (ties included) and hand-made cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from avfused import metrics


def random_case(seed: int, n: int = 200, ties: bool = False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.random(n) + 0.5 * labels
    if ties:
        scores = np.round(scores, 1)  # many equal scores across both classes
    return labels, scores


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_ap_roc_match_sklearn(seed, ties):
    labels, scores = random_case(seed, ties=ties)
    assert metrics.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eer_is_where_false_positive_and_false_negative_rates_cross(seed):
    labels, scores = random_case(seed, n=400)
    eer = metrics.equal_error_rate(labels, scores)
    # brute force over thresholds: the crossing lies between the best FPR/FNR pairs around it
    thresholds = np.unique(scores)
    fpr = np.array([(scores[labels == 0] >= t).mean() for t in thresholds])
    fnr = np.array([(scores[labels == 1] < t).mean() for t in thresholds])
    i = np.argmin(np.abs(fpr - fnr))
    assert min(fpr[i], fnr[i]) - 1e-9 <= eer <= max(fpr[i], fnr[i]) + 1e-9 or abs(eer - (fpr[i] + fnr[i]) / 2) < 0.01


def test_hand_made_values():
    labels = [0, 0, 1, 1]
    assert metrics.roc_auc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.equal_error_rate(labels, [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.roc_auc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert metrics.equal_error_rate(labels, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert metrics.roc_auc(labels, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert metrics.accuracy(labels, [0.4, 0.6, 0.5, 0.7]) == 0.75  # 0.5 counts as fake
    assert metrics.average_precision([0, 1, 0, 1], [0.9, 0.8, 0.2, 0.1]) == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_one_class_gives_nan_but_accuracy():
    summary = metrics.summarize([1, 1, 1], [0.9, 0.2, 0.7])
    assert summary["acc"] == pytest.approx(2 / 3)
    assert math.isnan(summary["auc"]) and math.isnan(summary["eer"])
    assert summary["fake"] == 3 and summary["real"] == 0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same length"):
        metrics.roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])
