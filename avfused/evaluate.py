"""Evaluation: fake scores of every clip, pooled per video, and the metrics of each head per group.

    predict(model, dataset)    -> Predictions: per clip the labels, category, method, path and the fake
                                  probability of the clip / visual / audio heads (arrays of length N),
                                  and "path: reason" of each clip the dataset could not read (skipped)
    predict_silence(dataset)   -> the silence baseline's Predictions (clip head only, see SILENCE_HALF_SECONDS)
    video_level(predictions)   -> the same with one row per video (the mean of its windows' scores)
    report(predictions)        -> {"overall": {head: metrics}, "category": {name: {head: metrics}},
                                  "method": {name: {head: metrics}}} (``heads``: which; a baseline has
                                  only a "clip" score)

Metrics (avfused.metrics): ACC at the fixed threshold 0.5 (never tuned on the test set), AUC, EER, AP, and
with ``calibrated`` thresholds (chosen on the validation split in training, avfused.calibration) ``acc_cal``,
the ACC at each head's calibrated threshold.
Each head is scored against its own label: the clip head against the clip label, the visual head against
the visual label, the audio head against the audio label (rows with an unknown label, -1, are left out).
A fake category or method is scored as its fakes together with all real videos, so AUC is defined for it;
the real group alone has only an accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avfused import metrics
from avfused.data.datasets import collate_clips
from avfused.errors import ConfigError, DeviceUnavailableError
from avfused.protocols import silence_scores

HEADS = ("clip", "visual", "audio")
LABEL_OF_HEAD = {"clip": "label", "visual": "visual_label", "audio": "audio_label"}
METRIC_NAMES = ("acc", "auc", "eer", "ap")
GROUP_WIDTH = 26  # the table's group column: "method faceswap-wav2lip" and the like in full


@dataclass
class Predictions:
    """Column arrays, one row per clip (or per video after video_level)."""

    path: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)
    method: list[str] = field(default_factory=list)
    label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    visual_label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    audio_label: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "path: reason" of each clip the dataset could not read

    def __len__(self) -> int:
        return len(self.path)

    def subset(self, rows: np.ndarray) -> Predictions:
        rows = np.asarray(rows, dtype=np.int64)
        return Predictions(
            [self.path[i] for i in rows],
            [self.category[i] for i in rows],
            [self.method[i] for i in rows],
            self.label[rows],
            self.visual_label[rows],
            self.audio_label[rows],
            {head: values[rows] for head, values in self.scores.items()},
        )

    @classmethod
    def concat(cls, parts: Sequence[Predictions]) -> Predictions:
        """The rows of ``parts`` one after the other (they have the same heads)."""
        return cls(
            [path for part in parts for path in part.path],
            [category for part in parts for category in part.category],
            [method for part in parts for method in part.method],
            np.concatenate([part.label for part in parts]),
            np.concatenate([part.visual_label for part in parts]),
            np.concatenate([part.audio_label for part in parts]),
            {head: np.concatenate([part.scores[head] for part in parts]) for head in parts[0].scores},
            [reason for part in parts for reason in part.skipped],
        )

    def to_rows(self) -> list[dict]:
        return [
            {
                "path": self.path[i],
                "category": self.category[i],
                "method": self.method[i],
                "label": int(self.label[i]),
                "visual_label": int(self.visual_label[i]),
                "audio_label": int(self.audio_label[i]),
                **{head: float(values[i]) for head, values in self.scores.items()},
            }
            for i in range(len(self))
        ]


def resolve_device(name: str) -> torch.device:
    """``name`` as a device; "auto" is the GPU when there is one, else the CPU. A name that is no device, or
    a GPU that is not here, raises DeviceUnavailableError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceUnavailableError(f"--device {name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceUnavailableError(f"--device {name} was asked for but {why}; use --device cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"--device {name}: there are {torch.cuda.device_count()} GPUs (cuda:0 ...)")
    return device


def check_threshold(threshold: float) -> float:
    """A decision threshold is a probability in [0, 1]; anything else is a ConfigError."""
    if not 0.0 <= threshold <= 1.0:  # NaN fails too
        raise ConfigError(f"--threshold {threshold} is not a probability; give a value in [0, 1]")
    return threshold


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on the device when ``amp``; a no-op context otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)


def _scored(
    dataset: Dataset,
    heads: Sequence[str],
    score_batch: Callable[[dict], dict[str, np.ndarray]],
    batch_size: int,
    workers: int,
    progress: bool,
) -> Predictions:
    """Predictions of every clip of ``dataset``: ``score_batch(batch)`` gives each head's (B,) scores."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_clips)
    out = Predictions()
    labels: dict[str, list] = {"label": [], "visual_label": [], "audio_label": []}
    scores: dict[str, list] = {head: [] for head in heads}
    for batch in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
        out.skipped += batch.get("skipped", [])
        if "video" not in batch:
            continue
        for head, values in score_batch(batch).items():
            scores[head].append(values)
        for key in labels:
            labels[key].append(batch[key].numpy())
        out.path += batch["path"]
        out.category += batch["category"]
        out.method += batch["method"]
    join = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    out.label, out.visual_label, out.audio_label = (join(labels[k], np.int64) for k in labels)
    out.scores = {head: join(scores[head], np.float64) for head in heads}
    return out


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: Dataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp: bool = False,
    workers: int = 0,
    progress: bool = True,
) -> Predictions:
    """Fake probabilities of every clip of ``dataset`` (items as avfused.data.datasets.ClipDataset's)."""
    device = torch.device(device)
    dtype = next(model.parameters()).dtype

    def score(batch: dict) -> dict[str, np.ndarray]:
        video, audio = batch["video"].to(device, dtype), batch["audio"].to(device, dtype)
        with autocast(device, amp):
            probabilities = model(video, audio).probabilities()
        return {head: getattr(probabilities, head).float().cpu().numpy() for head in HEADS}

    was_training = model.training
    model.eval()
    try:
        return _scored(dataset, HEADS, score, batch_size, workers, progress)
    finally:
        model.train(was_training)


# the silence baseline's probability: s / (s + SILENCE_HALF_SECONDS) for s seconds of leading silence, so
# the fixed threshold 0.5 means 0.1 s; a monotone map, so AUC, EER and AP are those of the seconds
SILENCE_HALF_SECONDS = 0.1


def predict_silence(
    dataset: Dataset, sample_rate: int, batch_size: int = 32, workers: int = 0, progress: bool = True
) -> Predictions:
    """The silence baseline: a clip's fake probability from its leading silence alone (a "clip" head only)."""

    def score(batch: dict) -> dict[str, np.ndarray]:
        seconds = silence_scores(batch["audio"], sample_rate)
        return {"clip": seconds / (seconds + SILENCE_HALF_SECONDS)}

    return _scored(dataset, ("clip",), score, batch_size, workers, progress)


def video_level(predictions: Predictions) -> Predictions:
    """One row per video path: the mean score of its clips; labels are the video's (any fake window)."""
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(predictions.path):
        groups.setdefault(path, []).append(i)
    if all(len(rows) == 1 for rows in groups.values()):
        return predictions
    first = np.array([rows[0] for rows in groups.values()])
    out = predictions.subset(first)
    out.skipped = list(predictions.skipped)
    for key in ("label", "visual_label", "audio_label"):
        values = getattr(predictions, key)
        setattr(out, key, np.array([values[rows].max() for rows in groups.values()], dtype=np.int64))
    out.scores = {h: np.array([v[rows].mean() for rows in groups.values()]) for h, v in predictions.scores.items()}
    return out


def _head_metrics(predictions: Predictions, head: str, threshold: float, calibrated: dict[str, float]) -> dict:
    labels = getattr(predictions, LABEL_OF_HEAD[head])
    known = labels >= 0
    result = metrics.summarize(labels[known], predictions.scores[head][known], threshold)
    if head in calibrated:
        result["acc_cal"] = metrics.accuracy(labels[known], predictions.scores[head][known], calibrated[head])
    return result


def _group_report(
    predictions: Predictions, key: str, threshold: float, heads: Sequence[str], calibrated: dict[str, float]
) -> dict:
    values = np.array(getattr(predictions, key), dtype=object)
    real = predictions.label == 0
    groups = {}
    for name in sorted(set(values[~real].tolist())):
        rows = np.nonzero(real | ((values == name) & ~real))[0]
        groups[name] = {head: _head_metrics(predictions.subset(rows), head, threshold, calibrated) for head in heads}
    if real.any():
        rows = np.nonzero(real)[0]
        groups["real"] = {head: _head_metrics(predictions.subset(rows), head, threshold, calibrated) for head in heads}
    return groups


def report(
    predictions: Predictions,
    threshold: float = metrics.DEFAULT_THRESHOLD,
    heads: Sequence[str] = HEADS,
    calibrated: dict[str, float] | None = None,
) -> dict:
    """Metrics of each head overall, per category and per method (see the module docstring); ``calibrated``:
    {head: threshold} chosen on the validation split, for ``acc_cal`` beside the fixed threshold's ACC."""
    calibrated = {head: t for head, t in (calibrated or {}).items() if head in heads}
    return {
        "threshold": threshold,
        "calibrated_thresholds": calibrated or None,
        "videos": len(predictions),
        "overall": {head: _head_metrics(predictions, head, threshold, calibrated) for head in heads},
        "category": _group_report(predictions, "category", threshold, heads, calibrated),
        "method": _group_report(predictions, "method", threshold, heads, calibrated),
    }


def _cell(value: float) -> str:
    return "   -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.4f}"


def table_groups(result: dict) -> list[tuple[str, dict]]:
    """The rows of a report's table in order: ("all", per-head), then each category, then each method
    (the real videos once, as a category)."""
    groups = [("all", result["overall"])]
    for kind in ("category", "method"):
        groups += [(f"{kind} {name}", per_head) for name, per_head in result[kind].items()
                   if not (kind == "method" and name == "real")]  # fmt: skip
    return groups


def format_table(result: dict, heads: Sequence[str] = HEADS) -> str:
    """A plain-text table: one row per (group, head), columns n / real / fake / ACC@t / AUC / EER / AP, and
    ACC@cal (ACC at the head's calibrated threshold) after ACC@t when the result has calibrated thresholds."""
    calibrated = bool(result.get("calibrated_thresholds"))
    names = ("acc", "acc_cal", "auc", "eer", "ap") if calibrated else METRIC_NAMES
    titles = {"acc": f"ACC@{result.get('threshold', metrics.DEFAULT_THRESHOLD):g}", "acc_cal": "ACC@cal"}
    metric_columns = " ".join(f"{titles.get(k, k.upper()):^7s}" for k in names)
    columns = f"{'head':<7s} {'n':>6s} {'real':>6s} {'fake':>6s}  {metric_columns}"
    lines = [f"{'group':<{GROUP_WIDTH}s} {columns}"]
    lines.append("-" * len(lines[0]))

    for group, per_head in table_groups(result):
        for head in heads:
            m = per_head[head]
            cells = " ".join(f"{_cell(m.get(k)):^7s}" for k in names)
            counts = f"{m['n']:>6d} {m['real']:>6d} {m['fake']:>6d}"
            lines.append(f"{group[:GROUP_WIDTH]:<{GROUP_WIDTH}s} {head:<7s} {counts}  {cells}")
    return "\n".join(lines)


def save_roc_plot(predictions: Predictions, path: str, title: str = "ROC") -> None:
    """A PNG with the ROC curve of each head (matplotlib, imported only here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 5))
    for head in predictions.scores:
        labels = getattr(predictions, LABEL_OF_HEAD[head])
        known = labels >= 0
        y, s = labels[known], predictions.scores[head][known]
        if not (0 < y.sum() < y.size):
            continue
        fpr, tpr, _ = metrics.roc_curve(y, s)
        axes.plot(fpr, tpr, label=f"{head} (AUC {metrics.roc_auc(y, s):.3f})")
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
