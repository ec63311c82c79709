"""``large_kernel_attention_residual``: the folded VPM's attention branch with its residual.

    large_kernel_attention_residual(x (N, C, H, W), w_in (C, C[, 1, 1]), b_in (C,), w5 (C, 1, 5, 5), b5 (C,),
                                    w7 (C, 1, 7, 7), b7 (C,), w1 (C, C[, 1, 1]), b1 (C,), w_out (C, C[, 1, 1]))
        -> x + w_out @ large_kernel_attention(ReLU(w_in @ x + b_in), w5, b5, w7, b7, w1, b1)

The same function as ``avfused.reference.large_kernel_attention_residual``: what the inference-folded VPM
computes between its frame fusion and its conv MLP (the pre-norm folded into w_in, the layer scale into
w_out; avfused.inference). One backend:

* ``ext`` -- the op ``avfused_ext::large_kernel_attention_residual``: a C++ CPU forward for inference
  (csrc/large_kernel_attention_residual/), the large-kernel attention's per-image kernel with both 1x1
  convolutions and the residual inside it, so neither p nor the gated context reaches memory. As for
  video_stem, where autograd records the wrapper runs the reference, and CUDA tensors run the reference
  (logged once); the folded VPM calls it only where the extension's CPU half is its backend's choice.
"""

from __future__ import annotations

import torch

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
OP = "large_kernel_attention_residual"
EXT_DEVICES = ("cpu",)  # where the extension has kernels for this op (CUDA tensors run the reference)


def check_inputs(backend: str, x: Tensor, w_in: Tensor, b_in: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor,
                 w1: Tensor, b1: Tensor, w_out: Tensor) -> None:
    """The op's one validator: named errors before any kernel runs."""
    check_tensors(OP, backend, x=x, w_in=w_in, b_in=b_in, w5=w5, b5=b5, w7=w7, b7=b7, w1=w1, b1=b1, w_out=w_out)
    check_rank(OP, "x", x, 4, "(N, C, H, W)")
    check_non_empty(OP, "x", x, "(N, C, H, W)", "images")
    c = x.shape[1]
    for name, weight in (("w_in", w_in), ("w1", w1), ("w_out", w_out)):
        check_shape(OP, name, weight, [(c, c), (c, c, 1, 1)], "(C, C) or (C, C, 1, 1)")
    check_shape(OP, "w5", w5, [(c, 1, 5, 5), (c, 25)], "(C, 1, 5, 5) or (C, 25)")
    check_shape(OP, "w7", w7, [(c, 1, 7, 7), (c, 49)], "(C, 1, 7, 7) or (C, 49)")
    for name, bias in (("b_in", b_in), ("b5", b5), ("b7", b7), ("b1", b1)):
        check_shape(OP, name, bias, (c,), "(C,)")


def ext(x: Tensor, w_in: Tensor, b_in: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor,
        w_out: Tensor) -> Tensor:
    """The extension backend of the op; returns x's dtype (computed in float32)."""
    check_inputs("ext", x, w_in, b_in, w5, b5, w7, b7, w1, b1, w_out)
    return forward_only_ext(OP, (x, w_in, b_in, w5, b5, w7, b7, w1, b1, w_out))


def _fake(x, w_in, b_in, w5, b5, w7, b7, w1, b1, w_out):
    return torch.empty_like(x)


if EXT_REASONS["cpu"] is None:
    register_forward_only_ext(OP, _fake)
    register_autocast(f"avfused_ext::{OP}", (0,), FLOAT32_ONLY)
