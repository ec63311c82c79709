"""The ``triton`` backend (see avfused.backends): Triton implementations of the reference's hot ops.

Implemented, forward and backward, each a torch.library op in the ``avfused_triton`` namespace:
``audio_frontend_stem`` (avfused.ops.triton_audio_frontend), ``joint_token_attention``
(avfused.ops.triton_joint_attention), ``large_kernel_attention`` (avfused.ops.triton_large_kernel_attention)
and ``conv_mlp`` (avfused.ops.triton_conv_mlp). ``audio_frontend`` (the unfused (B, F, S) front end) is
not defined here, so the backend falls back to the reference for it.

Runs on CUDA tensors when triton imports and a GPU is visible; on CPU tensors only under Triton's
interpreter (TRITON_INTERPRET=1 set before triton is imported), which is for tests.
"""

from __future__ import annotations

import torch

from avfused.ops.triton_checks import interpreter_enabled

try:
    import triton  # noqa: F401

    _IMPORT_ERROR: str | None = None
except ImportError as exc:  # the package works without triton; this backend just says why it is off
    _IMPORT_ERROR = f"triton is not installed ({exc})"

if _IMPORT_ERROR is None:
    from avfused.ops.triton_audio_frontend import audio_frontend_stem
    from avfused.ops.triton_conv_mlp import conv_mlp
    from avfused.ops.triton_joint_attention import joint_token_attention
    from avfused.ops.triton_large_kernel_attention import large_kernel_attention

    __all__ = [
        "audio_frontend_stem",
        "conv_mlp",
        "joint_token_attention",
        "large_kernel_attention",
        "unavailable_reason",
    ]


def unavailable_reason(device: torch.device | None) -> str | None:
    """None when the Triton ops can run on ``device`` (CUDA, or CPU under the interpreter), else why not."""
    if _IMPORT_ERROR is not None:
        return _IMPORT_ERROR
    device_type = device.type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return None if torch.cuda.is_available() else "no CUDA device is visible"
    if device_type == "cpu":
        if interpreter_enabled():
            return None
        return "triton kernels need a CUDA device; CPU tensors run only under TRITON_INTERPRET=1 (tests)"
    return f"triton kernels do not run on {device_type} tensors"
