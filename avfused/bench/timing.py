"""Timing and peak memory of one benchmark step (a callable taking no arguments).

measure(step, device, ...) -> Measurement: the first call's time (compilation included), the time of
each timed repeat in ms, and the peak memory the step needs on top of what was allocated before it:
CUDA's allocator statistics (max_memory_allocated) on a GPU, the process's resident set (Linux
VmHWM, reset through /proc/self/clear_refs; a sampling thread elsewhere) on the CPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

GPU_MIN_REPEAT_S = 1e-3  # a timed repeat loops a GPU step until it lasts this long: launch jitter averages out


@dataclass
class Measurement:
    first_call_s: float
    times_ms: list[float] = field(default_factory=list)
    peak_bytes: int | None = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def quantile_ms(self, q: float) -> float:
        """Linear-interpolated quantile of the repeat times."""
        ordered = sorted(self.times_ms)
        position = q * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative width of the middle 60% of the repeats."""
        return (self.quantile_ms(0.8) - self.quantile_ms(0.2)) / self.median_ms


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_call_s(step: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def _gpu_repeat_ms(step: Callable[[], object], device: torch.device, inner: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    synchronize(device)
    start.record()
    for _ in range(inner):
        step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / inner


def measure(
    step: Callable[[], object],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 20,
    min_repeats: int = 3,
    budget_s: float = 5.0,
    memory: bool = True,
) -> Measurement:
    """Warm up (compiling, autotuning, allocating), time up to ``repeats`` calls within ``budget_s``, then peak memory.

    At least ``min_repeats`` calls are timed whatever the budget, so slow cases still get a spread.
    """
    result = Measurement(first_call_s=_timed_call_s(step, device))
    last_s = result.first_call_s
    for _ in range(max(warmup - 1, 0)):
        last_s = _timed_call_s(step, device)
    inner = max(1, min(100, math.ceil(GPU_MIN_REPEAT_S / max(last_s, 1e-6)))) if device.type == "cuda" else 1
    deadline = time.perf_counter() + budget_s
    while len(result.times_ms) < repeats and (len(result.times_ms) < min_repeats or time.perf_counter() < deadline):
        if device.type == "cuda":
            result.times_ms.append(_gpu_repeat_ms(step, device, inner))
        else:
            result.times_ms.append(1e3 * _timed_call_s(step, device))
    if memory:
        result.peak_bytes = peak_memory_bytes(step, device)
    return result


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------
def peak_memory_bytes(step: Callable[[], object], device: torch.device) -> int:
    """Peak memory of one call of ``step`` above what was in use just before it."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - before, 0)
    return _resident_peak_bytes(step)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _release_freed_heap() -> None:
    """Hand freed heap pages back to the OS (glibc), so the resident set before the call holds only live data."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: the baseline may include freed-but-cached pages, so the peak reads lower


@functools.lru_cache(maxsize=1)
def resident_memory_method() -> str:
    """How CPU peak memory is measured here: 'vmhwm' (exact, Linux) or 'sampled' (a 1 ms polling thread)."""
    try:
        _CLEAR_REFS.write_text("5")
        _status_kib("VmHWM")
        return "vmhwm"
    except (OSError, KeyError):
        return "sampled"


def _resident_peak_bytes(step: Callable[[], object]) -> int:
    _release_freed_heap()
    if resident_memory_method() == "vmhwm":
        before = _status_kib("VmRSS")
        _CLEAR_REFS.write_text("5")  # resets the high-water mark VmHWM to the current resident set
        step()
        return max(_status_kib("VmHWM") - before, 0) * 1024
    return _sampled_peak_bytes(step)


def _resident_bytes() -> int:
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ImportError, ValueError, IndexError):
        return 0


def _sampled_peak_bytes(step: Callable[[], object]) -> int:
    before = _resident_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            done.wait(1e-3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return max(max(peak[0], _resident_bytes()) - before, 0)
