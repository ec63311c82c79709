"""Set-up shared by the pytest-benchmark suites in benchmarks/ (the same cases and variants as ``avfused bench``).

Environment variables (the suites take no command-line options of their own):
    AVFUSED_BENCH_QUICK=1        tiny shapes, no torch.compile (CI: the suite runs but measures nothing real)
    AVFUSED_BENCH_PRESET=small   model config preset (small, large, demo)
    AVFUSED_BENCH_DEVICE=cpu     cpu or cuda (default: the GPU when present)
    AVFUSED_BENCH_BATCHES=1,4    inference batch sizes; training modes use the largest
    AVFUSED_BENCH_ROUNDS=5       timed rounds per benchmark

SuiteRunner(settings).step(case, variant) -> a step (synchronising on a GPU) or raises SuiteSkip(reason).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from avfused.bench import timing, work
from avfused.bench.cases import MODEL, Case, quick_config
from avfused.bench.runner import Settings, make_step
from avfused.bench.variants import FallbackError, Implementations, variant_status
from avfused.config import ModelConfig
from avfused.errors import BackendUnavailableError


class SuiteSkip(Exception):
    """This variant cannot run this case here; the message says why."""


def _env_batches(default: tuple[int, ...]) -> tuple[int, ...]:
    text = os.environ.get("AVFUSED_BENCH_BATCHES", "")
    return tuple(int(part) for part in text.split(",") if part.strip()) or default


def quick_mode() -> bool:
    return os.environ.get("AVFUSED_BENCH_QUICK", "") not in ("", "0")


def suite_rounds() -> int:
    return 2 if quick_mode() else int(os.environ.get("AVFUSED_BENCH_ROUNDS", "5"))


def suite_settings() -> Settings:
    wanted = os.environ.get("AVFUSED_BENCH_DEVICE", "")
    device = torch.device(wanted or ("cuda" if torch.cuda.is_available() else "cpu"))
    if quick_mode():
        return Settings(
            config=quick_config(),
            config_name="quick (tiny)",
            device=device,
            batch_sizes=_env_batches((1, 2)),
            compile_skipped="AVFUSED_BENCH_QUICK=1 skips torch.compile",
            quick=True,
        )
    preset = os.environ.get("AVFUSED_BENCH_PRESET", "small")
    default = (1, 32) if device.type == "cuda" else (1, 4)
    return Settings(
        config=ModelConfig.preset(preset), config_name=preset, device=device, batch_sizes=_env_batches(default)
    )


class SuiteRunner:
    """Builds steps for the suites, reusing compiled functions and models across benchmarks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = variant_status(settings.device, settings.compile_skipped)
        self.implementations = Implementations(settings.config, settings.device)
        self._model_flops: float | None = None

    def step(self, case: Case, variant: str) -> Callable[[], None]:
        reason = self.status[variant]
        if reason is not None:
            raise SuiteSkip(f"{variant}: {reason}")
        try:
            step = make_step(case, variant, self.settings, self.implementations)
        except (FallbackError, BackendUnavailableError, NotImplementedError) as exc:
            raise SuiteSkip(f"{variant}: {exc}") from exc
        device = self.settings.device

        def synchronised() -> None:
            step()
            timing.synchronize(device)

        return synchronised

    def work(self, case: Case) -> dict[str, float]:
        """FLOPs and minimum bytes per clip of the case, for pytest-benchmark's extra_info."""
        config = self.settings.config
        if case.subject == MODEL:
            if self._model_flops is None:
                self._model_flops = work.count_model_flops(config, self.settings.device)
            figures = work.model_work(config, case.batch, self._model_flops)
        else:
            figures = work.op_work(case.subject, config, case.batch)
        flops, moved = figures.for_mode(case.mode)
        return {"flops_per_clip": flops, "bytes_per_clip": moved, "batch": case.batch}
