"""``video_stem``: the folded video stem, Conv2d(K x K, stride 2) + bias -> ReLU -> MaxPool(3, 2, 1), per image.

    video_stem(frames (N, I, H, W), weight (C, I, K, K), bias (C,), border (I,))
        -> (N, C, (Ho - 1) // 2 + 1, (Wo - 1) // 2 + 1),  Ho = (H - 1) // 2 + 1 (likewise Wo)

The same function as ``avfused.reference.video_stem``; the convolution's padding holds ``border[i]`` in
input channel i (the pixel mean, where the folded model takes raw pixels: avfused.inference). One backend:

* ``ext`` -- the op ``avfused_ext::video_stem``: a C++ CPU forward for inference (csrc/video_stem/) that
  never writes the (N, C, Ho, Wo) convolution output. As for conv_mlp, where autograd records the wrapper
  runs the reference, and CUDA tensors run the reference (logged once).
"""

from __future__ import annotations

import torch

from avfused.errors import InputShapeError
from avfused.ops._common import (
    EXT_REASONS,
    FLOAT32_ONLY,
    check_non_empty,
    check_rank,
    check_shape,
    check_tensors,
    forward_only_ext,
    register_autocast,
    register_forward_only_ext,
)

Tensor = torch.Tensor
OP = "video_stem"
EXT_DEVICES = ("cpu",)  # where the extension has kernels for this op (CUDA tensors run the reference)


def check_inputs(backend: str, frames: Tensor, weight: Tensor, bias: Tensor, border: Tensor) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, frames=frames, weight=weight, bias=bias, border=border)
    check_rank(OP, "frames", frames, 4, "(N, I, H, W)")
    check_non_empty(OP, "frames", frames, "(N, I, H, W)", "images")
    check_rank(OP, "weight", weight, 4, "(C, I, K, K)")
    channels, kernel = weight.shape[0], weight.shape[-1]
    check_shape(OP, "weight", weight, (channels, frames.shape[1], kernel, kernel), "(C, I, K, K)")
    if channels == 0 or kernel % 2 != 1:
        raise InputShapeError(f"{OP}: weight must have C > 0 channels and an odd kernel K, got {tuple(weight.shape)}")
    check_shape(OP, "bias", bias, (channels,), "(C,)")
    check_shape(OP, "border", border, (frames.shape[1],), "(I,)")


def ext(frames: Tensor, weight: Tensor, bias: Tensor, border: Tensor) -> Tensor:
    """The extension backend of the op; returns frames' dtype (computed in float32)."""
    check_inputs("ext", frames, weight, bias, border)
    return forward_only_ext(OP, (frames, weight, bias, border))


def _fake(frames, weight, bias, border):
    def pooled(size: int) -> int:
        return ((size - 1) // 2) // 2 + 1

    return frames.new_empty((frames.shape[0], weight.shape[0], pooled(frames.shape[2]), pooled(frames.shape[3])))


if EXT_REASONS["cpu"] is None:
    register_forward_only_ext(OP, _fake)
    register_autocast("avfused_ext::video_stem", (0,), FLOAT32_ONLY)
