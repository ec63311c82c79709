"""Detection on video files: fake probabilities of the clip, visual and audio heads, per sliding window and
aggregated over the file.

    detect_file(model, path, spec, hop) -> FileResult
        windows    [WindowScore(start, end, clip, visual, audio)], one per window of spec.seconds
                   (windows start every ``hop`` seconds; the last is aligned to the end of the file;
                   a file shorter than a window gives one padded window -- see avfused.data.decode)
        aggregate  {head: probability}: the mean over windows ("mean") or the largest ("max")
        timings    DetectTimings: wall, decoding, model and waiting seconds
    default_threads() -> int: torch threads for the model beside decoding (idle cores less one)
A file that cannot be read (an avfused DataError or an OSError; a symbolic link loop or a link to a missing
file is named as such) gives a FileResult with ``error`` set (the reason), not an exception; anything else
(a bad ``hop``, a backend that cannot run) raises, once, before or at the first file.

Decoding (one pass over the file by default, see avfused.data.windows) runs in a producer thread a bounded
number of windows ahead of the model, so the next windows decode while the model scores these (FFmpeg and
torch release the GIL); that thread runs its own torch work (audio resampling) on one thread. Batches grow
1, 2, 4 ... up to ``batch_size`` windows, so the model starts as soon as the first window is decoded.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from avfused.data.decode import ClipSpec, iter_windows
from avfused.errors import ConfigError, DataError
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
class DetectTimings:
    """Where a detect_file call's seconds went. Decoding runs beside the model, so decode_s and model_s
    overlap; wait_s is the time the model waited for decoded windows."""

    wall_s: float = 0.0
    decode_s: float = 0.0  # the producer thread's time making clips: decoding, conversion, crops, resampling
    model_s: float = 0.0  # forward passes
    wait_s: float = 0.0


@dataclass
class FileResult:
    path: str
    windows: list[WindowScore] = field(default_factory=list)
    aggregate: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    timings: DetectTimings = field(default_factory=DetectTimings)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def padded_seconds(self) -> float:
        """Window time past the end of the file, summed over the windows (a short file's one window)."""
        return float(sum(w.padded_seconds for w in self.windows))

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("timings")
        if self.ok:
            data.pop("error")
        return data


_END = object()  # the producer's last item


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(source: Iterator, out: queue.Queue, stop: threading.Event, timings: DetectTimings) -> None:
    """Put the items of ``source`` into ``out`` until it ends or ``stop`` is set (runs in its own thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # OpenMP keeps this per calling thread: the model's threads are left as they are
    item: object = _END
    try:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                item = next(source)
            except StopIteration:
                item = _END
            except BaseException as error:  # handed to the consumer, which raises it
                item = _Failed(error)
            timings.decode_s += time.perf_counter() - started
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is _END or isinstance(item, _Failed):
                return
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()  # a generator closes its file here, in the thread that opened it
        torch.set_num_threads(threads)


def _background(make_source: Callable[[], Iterator], depth: int, timings: DetectTimings) -> Iterator:
    """The items of ``make_source()``, produced in a thread at most ``depth`` items ahead of the caller."""
    out: queue.Queue = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()
    torch.get_num_threads()  # fixes this thread's torch thread count before the producer sets its own
    worker = threading.Thread(
        target=_produce, args=(make_source(), out, stop, timings), name="avfused-decode", daemon=True
    )
    worker.start()
    try:
        while True:
            started = time.perf_counter()
            item = out.get()
            timings.wait_s += time.perf_counter() - started
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        worker.join()


def check_hop(hop: float | None) -> None:
    """A hop is a positive, finite number of seconds (None: one window length)."""
    if hop is not None and not (math.isfinite(hop) and hop > 0):
        raise ConfigError(f"hop must be a positive number of seconds, got {hop}")


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


def default_threads() -> int:
    """Torch threads for detection when none are asked for: one per idle core less the one that decoding,
    beside the model, keeps busy (at least 1). More threads than cores stall torch's at every operator."""
    from avfused.training.threads import idle_cores

    return max(1, idle_cores() - 1)


def _timed_batch(model, clips: list, device: torch.device, amp: bool, timings: DetectTimings) -> list[WindowScore]:
    started = time.perf_counter()
    scores = _score_batch(model, clips, device, amp)
    timings.model_s += time.perf_counter() - started
    return scores


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
    decode: str = "stream",
) -> FileResult:
    """Score every window of ``path`` (see the module docstring); reading errors land in ``error``.
    ``progress``: a bar of the windows scored, shown when a file takes more than a second. ``decode``:
    "stream" (one pass over the file) or "seek" (each window read on its own), as in iter_windows."""
    if aggregate not in AGGREGATES:
        raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    check_hop(hop)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    device = torch.device(device)
    model.eval()
    result = FileResult(str(path))
    timings = result.timings
    started = time.perf_counter()
    pending = []
    size = 1  # batches grow 1, 2, 4 ... to batch_size: the model starts on the first window, not the eighth
    bar = tqdm(desc=os.path.basename(str(path)), unit="window", disable=not progress, leave=False, delay=1.0)
    try:
        windows = _background(lambda: iter_windows(path, spec, hop=hop, decode=decode), batch_size, timings)
        with contextlib.closing(windows):  # stops the producer whatever ends the loop
            for clip in windows:
                pending.append(clip)
                if len(pending) >= size:
                    result.windows += _timed_batch(model, pending, device, amp, timings)
                    bar.update(len(pending))
                    pending, size = [], min(2 * size, batch_size)
        if pending:
            result.windows += _timed_batch(model, pending, device, amp, timings)
            bar.update(len(pending))
    except (DataError, OSError) as exc:  # the file's fault; any other error is not, and is raised
        result.error = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        result.windows = []
        return result
    finally:
        bar.close()
        timings.wall_s = time.perf_counter() - started
    if not result.windows:
        result.error = f"{path}: no window could be read"
        return result
    reduce = np.mean if aggregate == "mean" else np.max
    result.aggregate = {head: float(reduce([getattr(w, head) for w in result.windows])) for head in HEADS}
    return result
