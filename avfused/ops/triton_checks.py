"""Input checks shared by the Triton ops: clear avfused errors before any kernel launches.

The kernels compute in float32; they accept float32 everywhere and bfloat16 / float16 on CUDA
(the interpreter has no low-precision path worth testing), all tensors on one device.
"""

from __future__ import annotations

import os

import torch

from avfused.errors import InputDeviceError, InputDtypeError, InputRankError, InputShapeError

GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreter_enabled() -> bool:
    """True when Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def check_tensors(op: str, **tensors: torch.Tensor) -> torch.device:
    """All tensors on one device Triton can use, with a dtype the kernels take; returns the device."""
    devices = {name: t.device for name, t in tensors.items()}
    first_name, device = next(iter(devices.items()))
    for name, other in devices.items():
        if other != device:
            raise InputDeviceError(f"{op}: {name} is on {other} but {first_name} is on {device}; move them together")
    if device.type == "cpu" and not interpreter_enabled():
        raise InputDeviceError(
            f"{op}: the triton backend got CPU tensors; use CUDA tensors, or set TRITON_INTERPRET=1 "
            "before importing triton (tests only), or use backend='torch'"
        )
    if device.type not in ("cpu", "cuda"):
        raise InputDeviceError(f"{op}: the triton backend runs on CUDA tensors, got {device}")
    allowed = GPU_DTYPES if device.type == "cuda" else (torch.float32,)
    for name, t in tensors.items():
        if t.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            raise InputDtypeError(
                f"{op}: {name} has dtype {t.dtype}; the triton backend takes {names} on {device.type}"
            )
    return device


def check_rank(op: str, name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    if tensor.dim() != rank:
        raise InputRankError(f"{op}: {name} must be {layout} ({rank} dims), got shape {tuple(tensor.shape)}")


def check_shape(op: str, name: str, tensor: torch.Tensor, shape: tuple, layout: str) -> None:
    """Exact shape check; ``None`` in ``shape`` accepts any size there."""
    actual = tuple(tensor.shape)
    if len(actual) != len(shape) or any(
        want is not None and want != got for want, got in zip(shape, actual, strict=True)
    ):
        wanted = tuple("*" if s is None else s for s in shape)
        raise InputShapeError(f"{op}: {name} must be {layout} = {wanted}, got {actual}")


def compute_copy(tensor: torch.Tensor) -> torch.Tensor:
    """The float32 contiguous tensor the kernels read (differentiable; no copy when already so)."""
    return tensor.to(torch.float32).contiguous()
