"""Run every case with every variant that runs here, and turn the measurements into rows with ratios.

run_benchmarks(Settings) -> BenchResult(meta, variants {name: None | reason}, rows [Row], targets).
A variant that fails on a case (no backward, out of memory, a compile error) gets a "failed" row with
the error; one that cannot run on the device at all is listed in ``variants`` with its reason.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from avfused.bench import detection, hardware, timing, work
from avfused.bench.cases import (
    ALL_SUBJECTS,
    MODEL,
    MODES,
    SUBJECTS,
    Case,
    block_inputs,
    block_stage,
    block_step,
    model_step,
    op_inputs,
    op_step,
    plan_cases,
)
from avfused.bench.targets import TargetResult, evaluate_targets
from avfused.bench.variants import FUSED, VARIANTS, FallbackError, Implementations, variant_label, variant_status
from avfused.config import ModelConfig
from avfused.errors import BackendUnavailableError

MIB = 2**20


@dataclass
class Settings:
    config: ModelConfig
    config_name: str
    device: torch.device
    subjects: Sequence[str] = SUBJECTS
    modes: Sequence[str] = MODES
    batch_sizes: Sequence[int] = (1, 4)
    train_batch: int | None = None  # the training modes' batch (None: the largest of batch_sizes)
    amp: torch.dtype | None = None  # autocast dtype of the model cases (the ops get activations in it)
    variants: Sequence[str] = VARIANTS
    compile_skipped: str | None = None  # why torch.compile is not measured (None: it is)
    warmup: int = 2
    repeats: int = 20
    min_repeats: int = 3
    budget_s: float = 3.0
    quick: bool = False
    command: str = ""
    time_limit_s: float | None = None  # start no new measurement after this long; the rest is reported as skipped
    detect_presets: Sequence[str] = detection.PRESETS  # model presets of the detect case (when subjects has it)
    video_dir: Path | None = None  # where the detect case's video is kept (None: a temp dir; --quick: removed)
    detect_threads: int = 0  # torch threads of the detect case (0: as avfused detect picks them)


@dataclass
class Row:
    subject: str
    mode: str
    batch: int
    variant: str
    label: str
    status: str  # "ok", "failed", or "skipped" (a fused backend that lacks this op)
    reason: str = ""
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    spread: float | None = None
    repeats: int = 0
    first_call_s: float | None = None
    peak_mib: float | None = None
    flops_per_clip: float | None = None
    bytes_per_clip: float | None = None
    gflops_per_s: float | None = None
    gbytes_per_s: float | None = None
    roofline_pct: float | None = None
    vs_eager: float | None = None
    vs_compile: float | None = None
    mem_vs_eager: float | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return self.subject, self.mode, self.batch

    @property
    def ms_per_clip(self) -> float | None:
        return None if self.median_ms is None else self.median_ms / self.batch


@dataclass
class BenchResult:
    meta: dict
    variants: dict[str, str | None]
    rows: list[Row] = field(default_factory=list)
    targets: list[TargetResult] = field(default_factory=list)
    detection: list[detection.DetectionRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "meta": self.meta,
            "variants": self.variants,
            "rows": [asdict(row) for row in self.rows],
            "targets": [asdict(target) | {"verdict": target.verdict} for target in self.targets],
            "detection": [row.to_dict() for row in self.detection],
        }


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_dtype(settings: Settings) -> str:
    """'float32', or e.g. 'bfloat16 autocast'."""
    return "float32" if settings.amp is None else f"{str(settings.amp).replace('torch.', '')} autocast"


def describe_run(settings: Settings) -> dict:
    """Everything a reader needs to reproduce or compare the run: device, versions, config, settings."""
    device = settings.device
    peak = hardware.device_peak(device)
    memory_method = "cuda max_memory_allocated" if device.type == "cuda" else timing.resident_memory_method()
    return {
        "device": hardware.device_name(device),
        "device_type": device.type,
        "device_slug": hardware.device_slug(device),
        "cpu_cores": hardware.cpu_cores(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # busy machine: noisy CPU times
        "versions": hardware.versions(),
        "git_commit": hardware.git_commit(),
        "config_name": settings.config_name,
        "config": settings.config.to_dict(),
        "dtype": run_dtype(settings),
        "batch_sizes": list(settings.batch_sizes),
        "train_batch": settings.train_batch or max(settings.batch_sizes),
        "warmup": settings.warmup,
        "max_repeats": settings.repeats,
        "budget_s": settings.budget_s,
        "quick": settings.quick,
        "time_limit_s": settings.time_limit_s,
        "memory_method": memory_method,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "hardware_peak": asdict(peak) if peak else None,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": settings.command,
    }


class _WorkFigures:
    """Work per case, the model's FLOPs counted once (a forward of the reference under FlopCounterMode)."""

    def __init__(self, config: ModelConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self._model_flops: float | None = None
        self._block_flops: dict[int, float] = {}

    def __call__(self, case: Case) -> work.Work:
        stage = block_stage(case.subject)
        if stage is not None:
            if stage not in self._block_flops:
                self._block_flops[stage] = work.count_block_flops(self.config, stage, self.device)
            return work.block_work(self.config, stage, case.batch, self._block_flops[stage])
        if case.subject != MODEL:
            return work.op_work(case.subject, self.config, case.batch)
        if self._model_flops is None:
            self._model_flops = work.count_model_flops(self.config, self.device)
        return work.model_work(self.config, case.batch, self._model_flops)


def make_step(case: Case, variant: str, settings: Settings, implementations: Implementations) -> Callable:
    if case.subject == MODEL:
        model = implementations.model(variant, case.mode)
        return model_step(model, settings.config, case.batch, settings.device, case.mode, amp=settings.amp)
    stage = block_stage(case.subject)
    if stage is not None:
        inputs = block_inputs(settings.config, stage, case.batch, settings.device)
        return block_step(implementations.block(stage, variant), inputs, case.mode, amp=settings.amp)
    inputs = op_inputs(case.subject, settings.config, case.batch, settings.device)
    return op_step(implementations.op_function(case.subject, variant), inputs, case.mode, amp=settings.amp)


def _fill_work(row: Row, figures: work.Work, settings: Settings) -> None:
    flops, moved = figures.for_mode(row.mode)
    row.flops_per_clip, row.bytes_per_clip = flops, moved
    if not row.median_ms:
        return
    seconds = row.median_ms / 1e3
    row.gflops_per_s = flops * row.batch / seconds / 1e9
    row.gbytes_per_s = moved * row.batch / seconds / 1e9
    peak = hardware.device_peak(settings.device)
    if peak is not None:
        compute = peak.flops_for(settings.amp or torch.float32)
        bound_s = max(flops * row.batch / compute, moved * row.batch / peak.bandwidth)
        row.roofline_pct = 100.0 * bound_s / seconds


def _release(device: torch.device) -> None:
    gc.collect()
    gc.freeze()  # the survivors are long-lived (modules, compiled code): later collections skip them
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_case(case: Case, variant: str, settings: Settings, implementations: Implementations) -> Row:
    row = Row(case.subject, case.mode, case.batch, variant, variant_label(variant, settings.device), "ok")
    step = None
    try:
        step = make_step(case, variant, settings, implementations)
        result = timing.measure(
            step,
            settings.device,
            warmup=settings.warmup,
            repeats=settings.repeats,
            min_repeats=settings.min_repeats,
            budget_s=settings.budget_s,
        )
    except FallbackError as exc:
        row.status, row.reason = "skipped", str(exc)
        return row
    except (BackendUnavailableError, NotImplementedError) as exc:  # the backend says it cannot do this case
        row.status, row.reason = "skipped", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        return row
    except Exception as exc:  # a backend that cannot do this case is reported, not fatal to the run
        row.status, row.reason = "failed", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        return row
    finally:
        del step
        _release(settings.device)
    row.median_ms, row.repeats, row.first_call_s = result.median_ms, len(result.times_ms), result.first_call_s
    row.p20_ms, row.p80_ms, row.spread = result.quantile_ms(0.2), result.quantile_ms(0.8), result.spread
    row.peak_mib = None if result.peak_bytes is None else result.peak_bytes / MIB
    return row


def add_ratios(rows: Sequence[Row]) -> None:
    """vs_eager / vs_compile: how many times faster than that baseline on the same case; memory as a fraction."""
    baselines = {(row.key, row.variant): row for row in rows if row.status == "ok"}
    for row in rows:
        if row.status != "ok":
            continue
        eager, compiled = baselines.get((row.key, "eager")), baselines.get((row.key, "compile"))
        if eager is not None:
            row.vs_eager = eager.median_ms / row.median_ms
            if eager.peak_mib and row.peak_mib is not None:
                row.mem_vs_eager = row.peak_mib / eager.peak_mib
        if compiled is not None:
            row.vs_compile = compiled.median_ms / row.median_ms


def run_benchmarks(
    settings: Settings,
    log: Callable[[str], None] = _log_to_stderr,
    on_row: Callable[[BenchResult], None] | None = None,
) -> BenchResult:
    """Every case with every variant that runs; ``on_row`` sees the result after each measured row."""
    # Move everything alive now (torch, sympy, compilers) out of the collector's sight: the collections
    # between cases then take milliseconds instead of about half a second each. Undone at the end.
    gc.collect()
    gc.freeze()
    try:
        return _run(settings, log, on_row)
    finally:
        gc.unfreeze()


def _finish(result: BenchResult, settings: Settings, status: dict[str, str | None]) -> None:
    """Ratios and targets of the rows so far."""
    add_ratios(result.rows)
    fused_status = {variant_label(name, settings.device): status[name] for name in FUSED}
    result.targets = evaluate_targets(result.rows, settings.device.type, fused_status, run_dtype(settings))
    if detection.DETECT in settings.subjects:
        result.targets += detection.detection_targets(result.detection, settings.device.type, settings.quick)


def _run(settings: Settings, log: Callable[[str], None], on_row: Callable[[BenchResult], None] | None) -> BenchResult:
    status = variant_status(settings.device, settings.compile_skipped)
    for name in VARIANTS:
        if name not in settings.variants and status[name] is None:
            status[name] = "not selected (--backends)"
    result = BenchResult(describe_run(settings), status)
    runnable = [name for name in VARIANTS if status[name] is None]
    cases = plan_cases(
        [s for s in settings.subjects if s in ALL_SUBJECTS], settings.modes, settings.batch_sizes, settings.train_batch
    )
    cases.sort(key=lambda case: case.subject != MODEL)  # the model first: the targets need it if time runs out
    implementations = Implementations(settings.config, settings.device)
    figures = _WorkFigures(settings.config, settings.device)
    # torch.compile last: its first calls compile for minutes, so under a time limit it is what gets cut
    work_list = [(case, variant) for variant in runnable if variant == "compile" for case in cases]
    work_list = [(case, variant) for case in cases for variant in runnable if variant != "compile"] + work_list
    total = len(work_list)
    started = time.perf_counter()
    for done, (case, variant) in enumerate(work_list, start=1):
        if _detection_due(settings, result, case.subject != MODEL or variant == "compile"):
            _add_detection(result, settings, status, started, log, on_row)  # after the model: a target too
        if settings.time_limit_s is not None and time.perf_counter() - started > settings.time_limit_s:
            row = Row(*case.key, variant, variant_label(variant, settings.device), "skipped")
            row.reason = f"time limit of {settings.time_limit_s:g} s reached"
        else:
            row = measure_case(case, variant, settings, implementations)
        _fill_work(row, figures(case), settings)
        result.rows.append(row)
        shown = f"{row.median_ms:.3f} ms" if row.status == "ok" else f"{row.status}: {row.reason}"
        log(f"[{done}/{total}] {case.subject} {case.mode} batch {case.batch} {row.label}: {shown}")
        if on_row is not None:
            _finish(result, settings, status)
            on_row(result)
    if _detection_due(settings, result, True):
        _add_detection(result, settings, status, started, log, on_row)
    _finish(result, settings, status)
    return result


def _detection_due(settings: Settings, result: BenchResult, model_done: bool) -> bool:
    return model_done and detection.DETECT in settings.subjects and not result.detection


def _add_detection(result: BenchResult, settings: Settings, status, started: float, log, on_row) -> None:
    result.detection = _run_detection(settings, started, log)
    if on_row is not None:
        _finish(result, settings, status)
        on_row(result)


def _run_detection(settings: Settings, started: float, log: Callable[[str], None]) -> list[detection.DetectionRow]:
    """The end-to-end detect case: the detect presets on the 720p video (--quick: the tiny config and video)."""
    from avfused.detect import default_threads  # PyAV and OpenCV: only for this case

    if settings.quick:
        presets, video, runs = [(settings.config_name, settings.config)], detection.QUICK_VIDEO, 1
    else:
        presets = [(name, ModelConfig.preset(name)) for name in settings.detect_presets]
        video, runs = detection.FULL_VIDEO, detection.RUNS
    deadline = None if settings.time_limit_s is None else started + settings.time_limit_s
    with detection.torch_threads(settings.detect_threads or default_threads()):
        return _detection_rows(settings, presets, video, runs, deadline, log)


def _detection_rows(settings: Settings, presets, video, runs: int, deadline, log) -> list[detection.DetectionRow]:
    if settings.video_dir is None and settings.quick:  # a tiny video, made in a second: not worth keeping
        with tempfile.TemporaryDirectory(prefix="avfused-bench-") as folder:
            return detection.run_detection(presets, video, Path(folder), settings.device, log, deadline, runs)
    folder = detection.DEFAULT_VIDEO_DIR if settings.video_dir is None else Path(settings.video_dir)
    return detection.run_detection(presets, video, folder, settings.device, log, deadline, runs)
