"""The implementations compared side by side, and which of them can run on a device.

Variants: ``eager`` (the torch reference), ``compile`` (the reference under torch.compile), and the fused
backends ``triton`` and ``cuda`` (on a CPU the cuda backend is its C++ path, labelled ``cpp``).
variant_status(device) -> {variant: None when it runs here, else the reason}, straight from
``avfused.backends.available_backends`` for the fused ones. The Triton interpreter (TRITON_INTERPRET=1)
is never benchmarked: it exists for tests.

Implementations(config, device) hands out the function of an op, a block or a model for a variant,
building each (and compiling it) once per run. A fused backend's inference on the CPU times the folded model
(avfused.inference.inference_model: what ``avfused detect`` and ``eval`` run there); every other case the
model as trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from avfused import backends, reference
from avfused.bench.cases import build_block, build_model
from avfused.config import ModelConfig
from avfused.errors import BackendUnavailableError
from avfused.inference import inference_model

VARIANTS = ("eager", "compile", "triton", "cuda")
FUSED = ("triton", "cuda")


def variant_label(variant: str, device: torch.device) -> str:
    """The name shown in tables: the cuda backend on a CPU is its C++ path, 'cpp'."""
    return "cpp" if variant == "cuda" and device.type == "cpu" else variant


def variant_status(device: torch.device, compile_skipped: str | None = None) -> dict[str, str | None]:
    """None for each variant that runs on ``device``; otherwise why it does not (or why it is skipped)."""
    fused = backends.available_backends(device)
    status: dict[str, str | None] = {"eager": None, "compile": compile_skipped}
    for name in FUSED:
        reason = fused[name]
        if name == "triton" and backends.interpreter_enabled():
            reason = "TRITON_INTERPRET=1: the Triton interpreter is for tests and is never benchmarked"
        status[name] = reason
    return status


def _reference_on_device(op: str, variant: str, device: torch.device) -> bool:
    """True where the cuda backend serves an op whose CUDA tensors run the reference (CPU-only kernels)."""
    if variant != "cuda" or device.type != "cuda":
        return False
    return not backends.implements("cuda", op, device.type)


class FallbackError(RuntimeError):
    """A fused backend lacks an op, so it would time the reference under the backend's name."""


class Implementations:
    """Op functions and models per variant, built once per run so compiled graphs are reused across cases."""

    def __init__(self, config: ModelConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self._functions: dict[tuple[str, str], Callable] = {}
        self._models: dict[str, torch.nn.Module] = {}

    def op_function(self, op: str, variant: str) -> Callable:
        key = (op, variant)
        if key not in self._functions:
            reference_fn = getattr(reference, op)
            if variant == "eager":
                fn = reference_fn
            elif variant == "compile":
                fn = torch.compile(reference_fn, dynamic=False)
            else:
                try:
                    fn = backends.get_op(op, variant, self.device)
                except BackendUnavailableError as exc:
                    raise FallbackError(f"backend {variant!r} does not implement {op} here: {exc}") from exc
                if fn is reference_fn or _reference_on_device(op, variant, self.device):
                    raise FallbackError(f"backend {variant!r} does not implement {op} (it would run the reference)")
            self._functions[key] = fn
        return self._functions[key]

    def model(self, variant: str, mode: str = "inference") -> torch.nn.Module:
        """The model ``variant`` runs in ``mode``: for a fused backend's inference, what auto's inference runs
        (the folded copy on the CPU); the baselines always run the reference model as it is."""
        folds = variant in FUSED and mode == "inference" and self.device.type == "cpu"
        key = (variant, folds)
        if key not in self._models:
            backend = variant if variant in FUSED else "torch"
            model = build_model(self.config, backend, self.device)
            if folds:
                model = inference_model(model.eval(), fold=True)
            self._models[key] = torch.compile(model, dynamic=False) if variant == "compile" else model
        return self._models[key]

    def block(self, stage: int, variant: str) -> torch.nn.Module:
        """The CAVL block of ``stage`` for ``variant`` (the baselines: the reference block; blocks are not folded)."""
        key = (f"block{stage}", variant)
        if key not in self._models:
            block = build_block(self.config, stage, variant if variant in FUSED else "torch", self.device)
            self._models[key] = torch.compile(block, dynamic=False) if variant == "compile" else block
        return self._models[key]
