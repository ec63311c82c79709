"""Detection on video files: fake probabilities of the clip, visual and audio heads, per sliding window and
aggregated over the file.

    detect_file(model, path, spec, hop) -> FileResult
        windows    [WindowScore(start, end, clip, visual, audio)], one per window of spec.seconds
                   (windows start every ``hop`` seconds; the last is aligned to the end of the file;
                   a file shorter than a window gives one padded window -- see avfused.data.decode)
        aggregate  {head: probability}: the mean over windows ("mean") or the largest ("max")
A file that cannot be read gives a FileResult with ``error`` set (the reason), not an exception.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from avfused.data.decode import ClipSpec, iter_windows
from avfused.errors import AvfusedError
from avfused.evaluate import HEADS, autocast

AGGREGATES = ("mean", "max")


@dataclass
class WindowScore:
    start: float
    end: float
    clip: float
    visual: float
    audio: float
    padded_seconds: float = 0.0


@dataclass
class FileResult:
    path: str
    windows: list[WindowScore] = field(default_factory=list)
    aggregate: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.ok:
            data.pop("error")
        return data


def _score_batch(model: torch.nn.Module, clips: list, device: torch.device, amp: bool) -> list[WindowScore]:
    video = torch.stack([c.video for c in clips]).to(device)
    audio = torch.stack([c.audio for c in clips]).to(device)
    with torch.no_grad(), autocast(device, amp):
        probabilities = model(video, audio).probabilities()
    values = {head: getattr(probabilities, head).float().cpu().tolist() for head in HEADS}
    return [
        WindowScore(c.start, c.start + c.seconds, values["clip"][i], values["visual"][i], values["audio"][i],
                    c.padded_seconds)
        for i, c in enumerate(clips)
    ]  # fmt: skip


def detect_file(
    model: torch.nn.Module,
    path: str | os.PathLike,
    spec: ClipSpec,
    hop: float | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    amp: bool = False,
    aggregate: str = "mean",
) -> FileResult:
    """Score every window of ``path`` (see the module docstring); reading errors land in ``error``."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    device = torch.device(device)
    model.eval()
    result = FileResult(str(path))
    pending = []
    try:
        for clip in iter_windows(path, spec, hop=hop):
            pending.append(clip)
            if len(pending) == batch_size:
                result.windows += _score_batch(model, pending, device, amp)
                pending = []
        if pending:
            result.windows += _score_batch(model, pending, device, amp)
    except (AvfusedError, OSError) as exc:
        result.error = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        result.windows = []
        return result
    if not result.windows:
        result.error = f"{path}: no window could be read"
        return result
    reduce = np.mean if aggregate == "mean" else np.max
    result.aggregate = {head: float(reduce([getattr(w, head) for w in result.windows])) for head in HEADS}
    return result
