"""Loading the compiled avfused_ext operators, and the reason when they cannot be loaded.

Two modules built by setup.py from csrc/: ``avfused._C_cpu`` (schemas, CPU kernels, device-generic
backward) and ``avfused._C_cuda`` (CUDA kernels; needs ``_C_cpu`` first). Nothing is imported until
asked, so the package works without them. The build record ``avfused/_build_info.json`` written by
setup.py says what was built and why anything was skipped; load failures quote it.
"""

from __future__ import annotations

import functools
import importlib
import json
from pathlib import Path

RECORD_PATH = Path(__file__).with_name("_build_info.json")
_BUILD_HINT = "build it with: pip install --no-build-isolation -e ."


def build_record() -> dict | None:
    """The record setup.py wrote at the last build, or None when there is none (never built)."""
    try:
        return json.loads(RECORD_PATH.read_text())
    except (OSError, ValueError):
        return None


def _recorded_reason(part: str) -> str:
    record = build_record()
    if record is None:
        return f"the C++ extension was never built here ({_BUILD_HINT})"
    entry = record.get(part, {})
    if entry.get("built"):
        return f"the {part} module was built (torch {record.get('torch', '?')}) but does not load"
    return f"the {part} module was not built: {entry.get('reason') or 'no reason recorded'}"


def _import(module: str, part: str) -> str | None:
    record = build_record()
    if record is not None and not record.get(part, {}).get("built"):
        # a module file left by an earlier build may register kernels for schemas that have changed since,
        # which aborts the process (a C++ error at load, not an ImportError): not built means not loaded
        return f"{_recorded_reason(part)}; {_BUILD_HINT}"
    try:
        importlib.import_module(module)
    except (ImportError, OSError) as exc:  # missing file, or built against another torch / CUDA
        return f"{_recorded_reason(part)} ({type(exc).__name__}: {exc}); {_BUILD_HINT}"
    return None


@functools.cache
def cpu_unavailable_reason() -> str | None:
    """None once ``avfused._C_cpu`` is loaded (the avfused_ext ops exist), else why not."""
    return _import("avfused._C_cpu", "cpu")


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """None once ``avfused._C_cuda`` is loaded (CUDA kernels registered), else why not."""
    reason = cpu_unavailable_reason()
    if reason is not None:
        return reason
    return _import("avfused._C_cuda", "cuda")
