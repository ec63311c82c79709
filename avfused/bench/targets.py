"""The performance targets (README, Benchmarks), checked against a run's rows; reported whether met or not.

evaluate_targets(rows, device_type, fused_status, dtype) -> [TargetResult]: one line per target that applies
to the run's device and dtype, and fused backend measured (a target with no fused row says "not measured"
and why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from avfused.bench.variants import FUSED

# metric keys of a Row: speed-ups are "times faster" (higher is better), memory a fraction of eager's,
# latency milliseconds per clip (lower is better).
SPEEDUP_EAGER, SPEEDUP_COMPILE, MEMORY_VS_EAGER, MS_PER_CLIP = "vs_eager", "vs_compile", "mem_vs_eager", "ms_per_clip"
AT_MOST = (MEMORY_VS_EAGER, MS_PER_CLIP)


@dataclass(frozen=True)
class Target:
    description: str
    device_type: str | None  # "cpu", "cuda", or None for both
    subject: str
    mode: str
    batch: str  # "smallest", "largest" or "each" batch size that the run measured
    metric: str
    threshold: float
    strict: bool = False  # "faster than" (>) rather than "at least" (>=)
    dtype: str | None = "float32"  # the run's dtype it applies to ("bfloat16 autocast", ...), None for any

    def needed(self) -> str:
        if self.metric == MEMORY_VS_EAGER:
            return f"<= {self.threshold:.2f} x eager"
        if self.metric == MS_PER_CLIP:
            return f"<= {self.threshold:g} ms per clip"
        sign = ">" if self.strict else ">="
        return f"{sign} {self.threshold:g}x"

    def met_by(self, value: float) -> bool:
        if self.metric in AT_MOST:
            return value <= self.threshold
        return value > self.threshold if self.strict else value >= self.threshold


TARGETS: tuple[Target, ...] = (
    # CPU (this project's 2-core box), small model, fp32
    Target("CPU inference, batch 1: fused >= 7x eager", "cpu", "model", "inference", "smallest", SPEEDUP_EAGER,
           7.0),
    Target("CPU inference, batch 1: fused >= 5x compile", "cpu", "model", "inference", "smallest", SPEEDUP_COMPILE,
           5.0),
    Target("CPU inference, batch 1: <= 40 ms per clip", "cpu", "model", "inference", "smallest", MS_PER_CLIP, 40.0),
    Target("CPU inference, largest batch: <= 35 ms per clip", "cpu", "model", "inference", "largest", MS_PER_CLIP,
           35.0),
    Target("CPU training step: fused >= 1.5x eager", "cpu", "model", "train_step", "largest", SPEEDUP_EAGER, 1.5),
    Target("CPU training step: fused >= 1.2x compile", "cpu", "model", "train_step", "largest", SPEEDUP_COMPILE, 1.2),
    Target(
        "training-step peak memory, fused front end <= 1/4 eager",
        None,
        "audio_frontend_stem",
        "train_step",
        "largest",
        MEMORY_VS_EAGER,
        1 / 4,
        dtype=None,
    ),
    # GPU (an H100 / H200), small model
    Target("GPU bf16 training step >= 3x eager", "cuda", "model", "train_step", "largest", SPEEDUP_EAGER, 3.0,
           dtype="bfloat16 autocast"),
    Target("GPU bf16 training step >= 1.5x compile", "cuda", "model", "train_step", "largest", SPEEDUP_COMPILE, 1.5,
           dtype="bfloat16 autocast"),
    Target("GPU inference, batch 1: <= 1 ms per clip", "cuda", "model", "inference", "smallest", MS_PER_CLIP, 1.0,
           dtype=None),
    Target("GPU training-step peak memory, whole model <= 1/4 eager", "cuda", "model", "train_step", "largest",
           MEMORY_VS_EAGER, 1 / 4, dtype=None),
    Target("GPU fp32 training step >= 2x eager", "cuda", "model", "train_step", "largest", SPEEDUP_EAGER, 2.0),
    Target("GPU fp32 inference >= 3x eager", "cuda", "model", "inference", "each", SPEEDUP_EAGER, 3.0),
)


@dataclass(frozen=True)
class TargetResult:
    description: str
    backend: str
    batch: int | None
    value: float | None
    needed: str
    met: bool | None  # None: not measured in this run
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def _batches(rows: Sequence, target: Target) -> list[int]:
    sizes = sorted({row.batch for row in rows if row.subject == target.subject and row.mode == target.mode})
    if not sizes:
        return []
    if target.batch == "smallest":
        return sizes[:1]
    if target.batch == "largest":
        return sizes[-1:]
    return sizes


def _missing_baseline(metric: str) -> str:
    baseline = "torch.compile" if metric == SPEEDUP_COMPILE else "eager"
    return f"no {baseline} measurement of this case in this run"


def evaluate_targets(
    rows: Sequence, device_type: str, fused_status: dict[str, str | None], dtype: str = "float32"
) -> list[TargetResult]:
    """Check each target that applies to ``device_type`` and ``dtype``; ``fused_status`` gives why a fused
    backend is absent."""
    results = []
    for target in TARGETS:
        if target.device_type not in (None, device_type) or target.dtype not in (None, dtype):
            continue
        batches = _batches(rows, target)
        found = False
        for batch in batches:
            for row in rows:
                if (row.subject, row.mode, row.batch) != (target.subject, target.mode, batch):
                    continue
                if row.variant not in FUSED:
                    continue
                found = True
                value = getattr(row, target.metric)
                met = None if value is None else target.met_by(value)
                note = "" if value is not None else (row.reason or _missing_baseline(target.metric))
                results.append(TargetResult(target.description, row.label, batch, value, target.needed(), met, note))
        if not found:
            absent = [f"{name}: {reason}" for name, reason in fused_status.items() if reason]
            note = "no fused backend ran this case" + (f" ({'; '.join(absent)})" if absent else "")
            if not batches:
                note = f"{target.subject} {target.mode} was not in this run"
            results.append(TargetResult(target.description, "-", None, None, target.needed(), None, note))
    return results
