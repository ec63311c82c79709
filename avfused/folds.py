"""k-fold results: the mean and spread of every metric over the folds.

    aggregate_folds(results)      -> {"folds": k, "overall": {head: {metric: {"mean", "std", "folds"}}},
                                      "category": {name: {head: ...}}, "method": {name: {head: ...}}}
    format_mean_std_table(agg)    -> a table like avfused.evaluate.format_table, cells "mean±std"

``results`` are avfused.evaluate.report dicts, one per fold (NaN or None where a metric is undefined); the
ACC at the calibrated thresholds (``acc_cal``) is aggregated too where folds report it.
A metric a fold lacks (one class in the group, or the group absent from the fold) is left out of that
mean, and "folds" counts the folds that had it. std is the sample standard deviation (ddof=1: the folds
are a sample of the possible splits); NaN with fewer than two folds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from avfused.evaluate import GROUP_WIDTH, METRIC_NAMES, table_groups


def _stats(values: Sequence[float | None]) -> dict:
    defined = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(defined)) if defined else math.nan,
        "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else math.nan,
        "folds": len(defined),
    }


def _metric_names(groups: Sequence[dict]) -> tuple[str, ...]:
    """METRIC_NAMES, with acc_cal after acc when any of ``groups`` ({head: metrics}) reports it."""
    calibrated = any("acc_cal" in metrics for group in groups for metrics in group.values())
    return ("acc", "acc_cal", *METRIC_NAMES[1:]) if calibrated else METRIC_NAMES


def _group(per_fold: Sequence[dict | None]) -> dict:
    """One group's {head: metrics} of every fold (None where a fold lacks the group) -> {head: {metric: stats}}."""
    present = [group for group in per_fold if group is not None]
    heads = list(dict.fromkeys(head for group in present for head in group))
    names = _metric_names(present)
    return {head: {m: _stats([g[head].get(m) for g in present if head in g]) for m in names} for head in heads}


def aggregate_folds(results: Sequence[dict]) -> dict:
    """Mean and std over the folds of each metric of each head, overall, per category and per method."""
    if not results:
        raise ValueError("no fold results to aggregate")
    out = {"folds": len(results), "overall": _group([r["overall"] for r in results])}
    for kind in ("category", "method"):
        names = dict.fromkeys(name for r in results for name in r[kind])
        out[kind] = {name: _group([r[kind].get(name) for r in results]) for name in names}
    return out


def _cell(stats: dict) -> str:
    if math.isnan(stats["mean"]):
        return f"{'-':^13s}"
    spread = "  -   " if math.isnan(stats["std"]) else f"{stats['std']:.4f}"
    return f"{stats['mean']:.4f}±{spread}"


def format_mean_std_table(aggregate: dict) -> str:
    """One row per (group, head): the number of folds, then ACC (ACC@cal) / AUC / EER / AP as mean±std."""
    names = _metric_names([aggregate["overall"]])
    metric_columns = " ".join(f"{m.upper().replace('_CAL', '@CAL'):^13s}" for m in names)
    header = f"{'group':<{GROUP_WIDTH}s} {'head':<7s} {'folds':>5s} {metric_columns}"
    lines = [header, "-" * len(header)]

    for group, per_head in table_groups(aggregate):
        for head, stats in per_head.items():
            folds = max(s["folds"] for s in stats.values())
            cells = " ".join(_cell(stats.get(m, _stats([]))) for m in names)
            lines.append(f"{group[:GROUP_WIDTH]:<{GROUP_WIDTH}s} {head:<7s} {folds:>5d} {cells}")
    return "\n".join(lines)
