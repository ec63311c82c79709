"""Detection on video files: fake probabilities of the clip, visual and audio heads, per sliding window and
aggregated over the file.

    detect_file(model, path, spec, hop) -> FileResult
        windows    [WindowScore(start, end, clip, visual, audio)], one per window of spec.seconds
                   (windows start every ``hop`` seconds; the last is aligned to the end of the file;
                   a file shorter than a window gives one padded window -- see avfused.data.decode)
        aggregate  {head: probability}: the mean over windows ("mean") or the largest ("max")
A file that cannot be read (an avfused DataError or an OSError; a symbolic link loop or a link to a missing
file is named as such) gives a FileResult with ``error`` set (the reason), not an exception; anything else
(a bad ``hop``, a backend that cannot run) raises, once, before or at the first file.
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from avfused.data.decode import ClipSpec, iter_windows
from avfused.errors import ConfigError, DataError, MediaDecodeError, MediaNotFoundError
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

    @property
    def padded_seconds(self) -> float:
        """Window time past the end of the file, summed over the windows (a short file's one window)."""
        return float(sum(w.padded_seconds for w in self.windows))

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.ok:
            data.pop("error")
        return data


def check_hop(hop: float | None) -> None:
    """A hop is a positive, finite number of seconds (None: one window length)."""
    if hop is not None and not (math.isfinite(hop) and hop > 0):
        raise ConfigError(f"hop must be a positive number of seconds, got {hop}")


def _check_link(path: str | os.PathLike) -> None:
    """A symbolic link loop or a link to nothing, named as such (not "no such file")."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MediaDecodeError(path, "is a symbolic link loop (too many levels of symbolic links)") from None
        if os.path.islink(path):
            raise MediaNotFoundError(path, f"is a symbolic link to {os.readlink(path)}, which does not exist") from None


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
    progress: bool = False,
) -> FileResult:
    """Score every window of ``path`` (see the module docstring); reading errors land in ``error``.
    ``progress``: a bar of the windows scored, shown when a file takes more than a second."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    check_hop(hop)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    model.eval()
    result = FileResult(str(path))
    pending = []
    bar = tqdm(desc=os.path.basename(str(path)), unit="window", disable=not progress, leave=False, delay=1.0)
    try:
        _check_link(path)
        for clip in iter_windows(path, spec, hop=hop):
            pending.append(clip)
            if len(pending) == batch_size:
                result.windows += _score_batch(model, pending, device, amp)
                bar.update(len(pending))
                pending = []
        if pending:
            result.windows += _score_batch(model, pending, device, amp)
            bar.update(len(pending))
    except (DataError, OSError) as exc:  # the file's fault; any other error is not, and is raised
        result.error = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        result.windows = []
        return result
    finally:
        bar.close()
    if not result.windows:
        result.error = f"{path}: no window could be read"
        return result
    reduce = np.mean if aggregate == "mean" else np.max
    result.aggregate = {head: float(reduce([getattr(w, head) for w in result.windows])) for head in HEADS}
    return result
