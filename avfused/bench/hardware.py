"""What machine a benchmark ran on: a readable name, a file-name slug, versions, and known hardware peaks.

device_name(device) -> "NVIDIA H100 80GB HBM3" or "Intel(R) Xeon(R) Processor (2 cores)"
device_slug(device) -> "nvidia-h100-80gb-hbm3" / "cpu-intel-xeon-processor-2-cores" (results/<slug>.md)
device_peak(device) -> HardwarePeak (FLOP/s and bytes/s) for known GPUs, None elsewhere
versions()          -> {"python": ..., "torch": ..., "triton": ..., "cuda": ..., ...}
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class HardwarePeak:
    """Vendor peak figures: fp32 on CUDA cores, dense bf16/fp16 on tensor cores, memory bandwidth."""

    fp32_flops: float
    half_tensor_flops: float
    bandwidth: float  # bytes per second

    def flops_for(self, dtype: torch.dtype) -> float:
        return self.fp32_flops if dtype in (torch.float32, torch.float64) else self.half_tensor_flops


# Public datasheet figures (dense, no sparsity). First match on the device name wins, so the
# specific names come before the generic ones.
_KNOWN_PEAKS: tuple[tuple[str, HardwarePeak], ...] = (
    ("H200", HardwarePeak(67e12, 989e12, 4.8e12)),
    ("H100 PCIe", HardwarePeak(51e12, 756e12, 2.0e12)),
    ("H100 NVL", HardwarePeak(60e12, 835e12, 3.9e12)),
    ("H100", HardwarePeak(67e12, 989e12, 3.35e12)),
    ("A100-SXM4-80GB", HardwarePeak(19.5e12, 312e12, 2.039e12)),
    ("A100 80GB", HardwarePeak(19.5e12, 312e12, 1.935e12)),
    ("A100", HardwarePeak(19.5e12, 312e12, 1.555e12)),
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({cpu_cores()} cores)"


def device_slug(device: torch.device) -> str:
    """A file-name-safe name of the device, e.g. nvidia-h100-80gb-hbm3 or cpu-intel-xeon-processor-2-cores."""
    name = device_name(device)
    name = re.sub(r"\((r|tm)\)", "", name, flags=re.IGNORECASE)
    if device.type == "cpu":
        name = "cpu " + name
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def device_peak(device: torch.device) -> HardwarePeak | None:
    if device.type != "cuda":
        return None  # CPU peaks depend on clocks and vector units this module cannot know
    name = torch.cuda.get_device_name(device)
    for key, peak in _KNOWN_PEAKS:
        if key in name:
            return peak
    return None


def _module_version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except Exception:  # absent or broken: the report says so rather than failing
        return None


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when files changed), or None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str | None]:
    import avfused

    found = {
        "avfused": avfused.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _module_version("triton"),
        "cuda_runtime": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
    }
    return found
