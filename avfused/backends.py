"""Which implementation of the hot ops runs: per call, from the tensors' device and what is installed.

Backends: ``torch`` (the pure-PyTorch reference in ``avfused.reference``, always there), ``triton``
(``avfused.ops.triton_impl``) and ``cuda`` (the C++/CUDA extension, ``avfused.ops.cuda_impl``,
whose CPU part is a fused path for CPU inference).

Choice: ``backend=`` on a module or model, else the ``AVFUSED_BACKEND`` environment variable, else
``auto``. A forced backend that cannot run raises BackendUnavailableError saying why and how to get
it. ``auto`` takes, in order, cuda then triton on a GPU, and cuda (its C++ CPU part) on the CPU for
inference, but the reference for training on the CPU (a module in train mode under autograd; see
_AUTO_ORDER_TRAINING); it falls back to the reference and says so once in the log. The Triton interpreter
(TRITON_INTERPRET=1) runs Triton on CPU tensors, but only when triton is forced: it is for tests.

An implementation module defines ``unavailable_reason(device) -> str | None`` and any of the op
functions of ``avfused.reference`` (same names, same signatures). An op a backend does not
implement runs on the reference, logged once.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType

import torch

from avfused import reference
from avfused.errors import BackendUnavailableError, UnknownBackendError

log = logging.getLogger("avfused")

BACKENDS = ("torch", "triton", "cuda")
ENV_VAR = "AVFUSED_BACKEND"
_MODULES = {"triton": "avfused.ops.triton_impl", "cuda": "avfused.ops.cuda_impl"}
_AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cuda",)}
# Training (autograd recording in a module's train mode): the C++ CPU path measured slower than the
# reference for a whole training step (benchmarks/results), so "auto" trains on the CPU with the reference.
_AUTO_ORDER_TRAINING = {"cuda": ("cuda", "triton"), "cpu": ()}
_logged: set[tuple] = set()


def _log_once(key: tuple, message: str, *args: object) -> None:
    if key not in _logged:
        _logged.add(key)
        log.info(message, *args)


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    """Import a backend's implementation module; (None, reason) when it cannot be imported."""
    if name == "torch":
        return reference, None
    module = sys.modules.get(_MODULES[name])
    if module is not None:  # already imported: no importlib call, so torch.compile can trace get_op
        return module, None
    try:
        return importlib.import_module(_MODULES[name]), None
    except ImportError as exc:  # a missing dependency or an unbuilt extension
        return None, f"{type(exc).__name__}: {exc}"


def unavailable_reason(name: str, device: torch.device | str | None = None) -> str | None:
    """None when backend ``name`` can run ops on ``device`` (the default device type when None), else why not."""
    check_name(name)
    module, reason = _load(name)
    if module is None:
        return reason
    if name == "torch":
        return None
    return module.unavailable_reason(torch.device(device) if device is not None else None)


def available_backends(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Every backend mapped to None when it runs here, or to the reason it does not.

    With no device: the GPU when one is visible, else the CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {name: unavailable_reason(name, device) for name in BACKENDS}


def check_name(name: str) -> str:
    if name not in BACKENDS and name != "auto":
        raise UnknownBackendError(f"unknown backend {name!r}; expected one of {('auto',) + BACKENDS}")
    return name


def requested_backend(argument: str | None = None) -> str:
    """The backend asked for: the argument when it is not 'auto'/None, else AVFUSED_BACKEND, else 'auto'."""
    if argument not in (None, "auto"):
        return check_name(argument)
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env:
        try:
            return check_name(env)
        except UnknownBackendError as exc:
            raise UnknownBackendError(f"{ENV_VAR}={env!r}: {exc}") from None
    return "auto"


def resolve_backend(argument: str | None, device: torch.device | str, training: bool = False) -> str:
    """The concrete backend for one call on ``device`` (``training``: a backward will follow)."""
    device = torch.device(device)
    wanted = requested_backend(argument)
    if wanted != "auto":
        reason = unavailable_reason(wanted, device)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {wanted!r} was forced but cannot run on {device.type}: {reason}. "
                f"{_how_to_get(wanted)} Or use backend='auto' / unset {ENV_VAR} to fall back to 'torch'."
            )
        return wanted
    order = _AUTO_ORDER_TRAINING if training else _AUTO_ORDER
    for name in order.get(device.type, ()):
        if unavailable_reason(name, device) is None:
            return name
    if training and _AUTO_ORDER.get(device.type):
        _log_once(
            ("training", device.type),
            "avfused: training on %s tensors uses the torch reference (the fused path there serves inference; "
            "backend='cuda' forces it)",
            device.type,
        )
        return "torch"
    _log_once(
        ("fallback", device.type), "avfused: no fused backend for %s tensors; using the torch reference", device.type
    )
    return "torch"


def _how_to_get(name: str) -> str:
    if name == "triton":
        return "Install triton (pip install 'avfused[triton]') and use CUDA tensors, or set TRITON_INTERPRET=1 for CPU."
    if name == "cuda":
        return "Build the extension: pip install --no-build-isolation -e . (needs a compiler; nvcc for the GPU part)."
    return ""


def get_op(op: str, argument: str | None, device: torch.device | str, training: bool = False) -> Callable:
    """The function computing reference op ``op`` with the backend resolved for ``device`` (and ``training``)."""
    name = resolve_backend(argument, device, training)
    module, _ = _load(name)
    fn = getattr(module, op, None)
    if fn is None:
        _log_once(("missing", name, op), "avfused: backend %r has no %s; using the torch reference", name, op)
        fn = getattr(reference, op)
    return fn


def module_op(op: str, module: torch.nn.Module, device: torch.device) -> Callable:
    """``get_op`` for a module with a ``backend`` attribute; training when it is in train mode under autograd."""
    return get_op(op, module.backend, device, module.training and torch.is_grad_enabled())
