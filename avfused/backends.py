"""Which implementation of the hot ops runs: per call, from the tensors' device and what is installed.

Backends: ``torch`` (the pure-PyTorch reference in ``avfused.reference``, always there), ``triton``
(Triton kernels) and ``cuda`` (the C++/CUDA extension built from ``csrc/``; also called ``ext``: on CPU
tensors it runs its C++ half, a fused path for CPU inference, shown as ``cpp`` in the benchmarks).

Every fused op has one module, ``avfused.ops.<op>``, named as the reference function it implements,
whose ``triton`` and ``ext`` functions are the two fused backends (same signature as the reference);
its ``EXT_DEVICES`` says where the extension has kernels for it.

Choice, per call and per op: ``backend=`` on a module or model, else the ``AVFUSED_BACKEND``
environment variable, else ``auto``. A forced backend that cannot run on the device, or has no kernel
for the op there, raises BackendUnavailableError saying why and how to get it. ``auto`` sends each op to
the first backend that implements it on that device: cuda then triton on a GPU, cuda (its C++ CPU part)
on the CPU for inference; for training on the CPU (a module in train mode under autograd) the C++ path
only for the ops whose fused training step measured faster (_AUTO_ORDER_TRAINING_BY_OP); else the
reference. Each op's choice is logged once. The Triton interpreter
(TRITON_INTERPRET=1) runs Triton on CPU tensors, but only when triton is forced: it is for tests.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable

import torch

from avfused import _extension, reference
from avfused.errors import BackendUnavailableError, UnknownBackendError

log = logging.getLogger("avfused")

BACKENDS = ("torch", "triton", "cuda")
FUSED_OPS = ("audio_frontend_stem", "joint_token_attention", "large_kernel_attention", "conv_mlp")
# Ops that fuse a module's plain torch layers (the SAAVM's token building and scatter-back): a module runs
# them where its backend has them (optional_module_op) and its layers elsewhere.
LAYER_OPS = ("video_squeeze_stats", "video_squeeze_tokens", "video_expand_residual", "audio_squeeze_stats",
             "audio_squeeze_tokens", "audio_expand_residual")
ALIASES = {"ext": "cuda"}  # the extension's neutral name: its CPU half is C++, not CUDA
DESCRIPTIONS = {
    "torch": "the pure-PyTorch reference",
    "triton": "Triton kernels (CUDA tensors; CPU only under TRITON_INTERPRET=1, for tests)",
    "cuda": "the C++/CUDA extension, alias 'ext': its C++ half on CPU tensors ('cpp' in benchmarks), CUDA on GPUs",
}
ENV_VAR = "AVFUSED_BACKEND"
_OP_FUNCTION = {"triton": "triton", "cuda": "ext"}  # the backend's function in avfused.ops.<op>
_AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cuda",)}
# Training (autograd recording in a module's train mode) on the CPU: the C++ path for the ops whose forward +
# backward measured faster than the reference (avfused bench --ops ... --modes forward_backward, 2-core CPU,
# batch 4: front end 4.9x, large-kernel attention 10x, conv MLP 8.6x), the reference for the rest (the
# token attention's C++ backward recomputes through ATen: 0.9x; benchmarks/results/ops).
_AUTO_ORDER_TRAINING = {"cuda": ("cuda", "triton"), "cpu": ()}
# The SAAVM's squeeze and spread-back ops (LAYER_OPS) together: its forward + backward 1.5x (demo stage 0)
# and 2.8x (small model stage 0) its torch layers'.
_AUTO_ORDER_TRAINING_BY_OP = {
    "cpu": {op: ("cuda",) for op in ("audio_frontend_stem", "large_kernel_attention", "conv_mlp", *LAYER_OPS)},
}
_logged: set[tuple] = set()
# (backend, device type) -> reason, computed once: later calls (and torch.compile's tracing) read a dict
_reasons: dict[tuple[str, str], str | None] = {}
_prepared = False  # prepare() has run
_no_module: set[str] = set()  # ops found to have no module in avfused.ops


def log_once(key: tuple, message: str, *args: object) -> None:
    """Log ``message`` at INFO the first time ``key`` is seen (outside torch.compile's tracing, which cannot
    trace a logging call: the message comes with the first eager call)."""
    if torch.compiler.is_compiling():
        return
    if key not in _logged:
        _logged.add(key)
        log.info(message, *args)


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() not in ("", "0", "false", "no", "off")


def _triton_reason(device_type: str) -> str | None:
    try:
        import triton  # noqa: F401
    except ImportError as exc:  # the package works without triton; this backend just says why it is off
        return f"triton is not installed ({exc})"
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is visible"
    if device_type == "cpu":
        if interpreter_enabled():
            return _interpreter_reason()
        return "triton kernels need a CUDA device; CPU tensors run only under TRITON_INTERPRET=1 (tests)"
    return f"triton kernels do not run on {device_type} tensors"


def _interpreter_reason() -> str | None:
    """Triton 3.6's interpreter turns a loop bound such as ``range(0, C, BLOCK)`` into a Python int with
    int() of a 1-element array, which numpy 2.4 refuses (TypeError deep inside every kernel); 3.8's does not."""
    import numpy
    import triton
    from torch.torch_version import TorchVersion  # packaging's version order, compared with tuples

    if TorchVersion(triton.__version__) < (3, 8) and TorchVersion(numpy.__version__) >= (2, 4):
        return (
            f"triton {triton.__version__}'s interpreter cannot run avfused's kernels with numpy "
            f"{numpy.__version__} (it takes int() of 1-element arrays, which numpy >= 2.4 refuses): "
            "pip install 'numpy<2.4', or triton >= 3.8"
        )
    return None


def _extension_reason(device_type: str) -> str | None:
    if device_type == "cpu":
        return _extension.cpu_unavailable_reason()
    if device_type == "cuda":
        reason = _extension.cuda_unavailable_reason()
        if reason is None and not torch.cuda.is_available():
            reason = "the CUDA module is built but no CUDA device is visible"
        return reason
    return f"the C++/CUDA extension has no kernels for {device_type!r} tensors (only cpu and cuda)"


def unavailable_reason(name: str, device: torch.device | str | None = None) -> str | None:
    """None when backend ``name`` can run ops on ``device`` (the default device type when None), else why not."""
    name = check_name(name)
    device_type = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "torch":
        return None
    key = (name, device_type)
    if key not in _reasons:
        _reasons[key] = _triton_reason(device_type) if name == "triton" else _extension_reason(device_type)
    return _reasons[key]


def available_backends(device: torch.device | str | None = None) -> dict[str, str | None]:
    """Every backend mapped to None when it runs here, or to the reason it does not.

    With no device: the GPU when one is visible, else the CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {name: unavailable_reason(name, device) for name in BACKENDS}


def check_name(name: str) -> str:
    """The canonical backend name (``ext`` -> ``cuda``); UnknownBackendError for anything else."""
    name = ALIASES.get(name, name)
    if name not in BACKENDS and name != "auto":
        raise UnknownBackendError(f"unknown backend {name!r}; expected one of {('auto',) + BACKENDS + tuple(ALIASES)}")
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


def _forced(wanted: str, device: torch.device) -> str:
    reason = unavailable_reason(wanted, device)
    if reason is not None:
        raise BackendUnavailableError(
            f"backend {wanted!r} was forced but cannot run on {device.type}: {reason}. "
            f"{_how_to_get(wanted)} Or use backend='auto' / unset {ENV_VAR} to fall back to 'torch'."
        )
    return wanted


def resolve_backend(argument: str | None, device: torch.device | str, training: bool = False) -> str:
    """The backend ``auto`` (or the forced one) stands for on ``device``, whatever the op.

    ``resolve_op_backend`` is the per-op choice that calls use.
    """
    device = torch.device(device)
    wanted = requested_backend(argument)
    if wanted != "auto":
        return _forced(wanted, device)
    order = _AUTO_ORDER_TRAINING if training else _AUTO_ORDER
    for name in order.get(device.type, ()):
        if unavailable_reason(name, device) is None:
            return name
    if training and _AUTO_ORDER.get(device.type):
        fused = ", ".join(_AUTO_ORDER_TRAINING_BY_OP.get(device.type, {})) or "no op"
        log_once(
            ("training", device.type),
            "avfused: training on %s tensors uses the torch reference where the fused path measured slower "
            "(%s trains fused; backend='cuda' forces every op)",
            device.type,
            fused,
        )
        return "torch"
    log_once(
        ("fallback", device.type), "avfused: no fused backend for %s tensors; using the torch reference", device.type
    )
    return "torch"


def implements(name: str, op: str, device_type: str) -> bool:
    """True when backend ``name`` has a kernel for ``op`` on ``device_type`` tensors."""
    if name == "torch":
        return True
    module = op_module(op)
    if module is None:
        return False
    if name == "triton":
        return hasattr(module, "triton")
    return device_type in getattr(module, "EXT_DEVICES", ())


def _auto_choice(op: str, device: torch.device, training: bool) -> str | None:
    """auto's first backend that runs on ``device`` and implements ``op`` there; None when there is none."""
    order = (_AUTO_ORDER_TRAINING if training else _AUTO_ORDER).get(device.type, ())
    if training:
        order = _AUTO_ORDER_TRAINING_BY_OP.get(device.type, {}).get(op, order)
    for name in order:
        if unavailable_reason(name, device) is None and implements(name, op, device.type):
            return name
    return None


def resolve_op_backend(op: str, argument: str | None, device: torch.device | str, training: bool = False) -> str:
    """The backend that runs ``op`` on ``device``: the forced one, or auto's first that implements the op there."""
    device = torch.device(device)
    wanted = requested_backend(argument)
    if wanted != "auto":
        _forced(wanted, device)
        if not implements(wanted, op, device.type):
            raise BackendUnavailableError(
                f"backend {wanted!r} was forced but has no kernel for {op} on {device.type} tensors. "
                "Use backend='auto' to run each op on the first backend that has it there."
            )
        return wanted
    name = _auto_choice(op, device, training)
    if name is None:
        if resolve_backend("auto", device, training) != "torch":  # a fused backend runs here, but not this op
            log_once(("no kernel", op, device.type), "avfused: no fused kernel for %s on %s tensors; using the "
                     "torch reference", op, device.type)
        return "torch"
    log_once(("auto", op, device.type, training), "avfused: %s on %s tensors%s runs on %s", op, device.type,
             " (training)" if training else "", name)
    return name


def op_backends(device: torch.device | str, training: bool = False) -> dict[str, str]:
    """Each fused op (and each of LAYER_OPS) mapped to the backend ``auto`` runs it on, on ``device`` (inference,
    or ``training``)."""
    device = torch.device(device)
    return {op: _auto_choice(op, device, training) or "torch" for op in FUSED_OPS + LAYER_OPS}


def _how_to_get(name: str) -> str:
    if name == "triton":
        return "Install triton (pip install 'avfused[triton]') and use CUDA tensors, or set TRITON_INTERPRET=1 for CPU."
    if name == "cuda":
        return "Build the extension: pip install --no-build-isolation -e . (needs a compiler; nvcc for the GPU part)."
    return ""


def prepare() -> None:
    """Import every fused op's module and find out which backends run here, once, so that later calls (and
    torch.compile's tracing of them, which cannot follow an import) only read what is ready. The hot
    modules of avfused.nn call it when they are built."""
    global _prepared
    if _prepared:
        return
    for op in FUSED_OPS + LAYER_OPS:
        op_module(op)
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        for name in ("triton", "cuda"):
            unavailable_reason(name, device)
    _prepared = True


def op_module(op: str):
    """``avfused.ops.<op>``, the fused backends of one op, or None when the op has no fused backend."""
    name = f"avfused.ops.{op}"
    module = sys.modules.get(name)
    if module is not None or op in _no_module:  # known: no importlib call, so torch.compile can trace get_op
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # the module exists but something it imports does not
            raise
        _no_module.add(op)
        return None


def get_op(op: str, argument: str | None, device: torch.device | str, training: bool = False) -> Callable:
    """The function computing reference op ``op`` with the backend resolved for ``device`` (and ``training``)."""
    name = resolve_op_backend(op, argument, device, training)
    if name == "torch":
        return getattr(reference, op)
    return getattr(op_module(op), _OP_FUNCTION[name])


def optional_module_op(op: str, module: torch.nn.Module, device: torch.device) -> Callable | None:
    """The fused function of an op that fuses a module's plain torch layers (not one of FUSED_OPS): the one of
    the module's backend, forced or auto's choice, where that backend implements it on ``device``; else None,
    and the module runs its layers as they are (a forced backend lacking it is no error: nothing is lost)."""
    training = module.training and torch.is_grad_enabled()
    wanted = requested_backend(module.backend)
    if wanted == "auto":
        name = _auto_choice(op, torch.device(device), training)
    else:
        name = wanted if unavailable_reason(wanted, device) is None and implements(wanted, op, device.type) else None
    if name in (None, "torch"):
        return None
    return getattr(op_module(op), _OP_FUNCTION[name])


def module_op(op: str, module: torch.nn.Module, device: torch.device) -> Callable:
    """``get_op`` for a module with a ``backend`` attribute; training when it is in train mode under autograd."""
    return get_op(op, module.backend, device, module.training and torch.is_grad_enabled())
