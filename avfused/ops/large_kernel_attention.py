"""``large_kernel_attention``: p * (W1 @ dw7x7_dil3(dw5x5(p)) + b1), the VPM's gate.

    large_kernel_attention(p (N, C, H, W), w5 (C, 1, 5, 5), b5 (C,), w7 (C, 1, 7, 7), b7 (C,),
                           w1 (C, C[, 1, 1]), b1 (C,)) -> (N, C, H, W)

The same function as ``avfused.reference.large_kernel_attention``, in two backends, both on the op's
flattened weights (w5 (C, 25), w7 (C, 49), w1 (C, C)):

* ``triton`` -- the op ``avfused_triton::large_kernel_attention``: the forward in one Triton kernel
  per tile with its halo (kernels/large_kernel_attention.py; the dw5x5 context never reaches global
  memory); it keeps only p for the backward (the reference keeps four (N, C, H, W) tensors), and the
  backward op ``avfused_triton::large_kernel_attention_backward`` is one Triton kernel too, its working
  memory within the size of p and the weights. fp16 / bf16 tensors (CUDA) are read as they are and
  computed with fp32 accumulation.
* ``ext`` -- the op ``avfused_ext::large_kernel_attention`` and its backward op
  ``avfused_ext::large_kernel_attention_backward`` (csrc/large_kernel_attention/). CPU: fused per image in
  C++ (float32); CUDA: one kernel per tile of every channel, the tile and its halo staged in shared memory
  (float32, float16 and bfloat16 activations, float32 accumulation and weights; C <= EXT_CUDA_MAX_CHANNELS,
  wider maps run the reference, logged once). Neither writes the dw5x5 context to memory; the forward keeps
  only p for the backward, which recomputes the context per image (CPU) or tile (CUDA); the CUDA backward
  writes one float32 (N, C, H, W) workspace (the 1x1's input gradient), in chunks of images no larger than
  p. The wrapper runs these ops in training too: on the CPU their forward + backward measured faster than
  the reference's autograd and than torch.compile of it at every stage shape of the small model.
"""

from __future__ import annotations

import torch

from avfused.errors import InputShapeError
from avfused.ops._common import (
    EXT_HALF_ON_CUDA,
    EXT_REASONS,
    TRITON_DTYPES,
    check_non_empty,
    check_rank,
    check_shape,
    check_tensors,
    ext_activation_dtype,
    reference_on_gpu,
    register_autocast,
)

Tensor = torch.Tensor
OP = "large_kernel_attention"
EXT_DEVICES = ("cpu", "cuda")  # where the extension has kernels for this op
EXT_CUDA_MAX_CHANNELS = 512  # the CUDA kernels keep every channel of a tile in shared memory (wider: the reference)
TRITON_MAX_CHANNELS = 256  # the Triton kernel holds all channels of a pixel in registers


def check_inputs(backend: str, p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor,
                 b1: Tensor) -> None:
    """The op's one validator for both backends: named errors before any kernel runs."""
    check_tensors(OP, backend, p=p, w5=w5, b5=b5, w7=w7, b7=b7, w1=w1, b1=b1)
    check_rank(OP, "p", p, 4, "(N, C, H, W)")
    check_non_empty(OP, "p", p, "(N, C, H, W)", "images")
    c = p.shape[1]
    check_shape(OP, "w5", w5, (c, 1, 5, 5), "(C, 1, 5, 5)")
    check_shape(OP, "w7", w7, (c, 1, 7, 7), "(C, 1, 7, 7)")
    check_shape(OP, "w1", w1, [(c, c), (c, c, 1, 1)], "(C, C) or (C, C, 1, 1)")
    for name, bias in (("b5", b5), ("b7", b7), ("b1", b1)):
        check_shape(OP, name, bias, (c,), "(C,)")


def _flat_weights(p: Tensor, w5: Tensor, w7: Tensor, w1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c = p.shape[1]
    return w5.reshape(c, 25), w7.reshape(c, 49), w1.reshape(c, c)


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::large_kernel_attention", mutates_args=())
def triton_forward(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """p (N, C, H, W), w5 (C, 25), w7 (C, 49), w1 (C, C), biases (C,); contiguous, float32 (or fp16 / bf16 on
    CUDA) -> (N, C, H, W) in p's dtype."""
    from avfused.kernels.large_kernel_attention import launch_forward

    return launch_forward(p, w5, b5, w7, b7, w1, b1)


@triton_forward.register_fake
def _(p, w5, b5, w7, b7, w1, b1):
    return p.new_empty(p.shape)


@torch.library.custom_op("avfused_triton::large_kernel_attention_backward", mutates_args=())
def triton_backward(
    grad: Tensor, p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for its seven inputs, in one Triton kernel."""
    from avfused.kernels.large_kernel_attention import launch_backward

    return launch_backward(grad, p, w5, b5, w7, b7, w1, b1)


@triton_backward.register_fake
def _(grad, p, w5, b5, w7, b7, w1, b1):
    return tuple(t.new_empty(t.shape) for t in (p, w5, b5, w7, b7, w1, b1))


def _save_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _triton_autograd(ctx, grad: Tensor):
    return triton_backward(grad.contiguous(), *ctx.saved_tensors)


triton_forward.register_autograd(_triton_autograd, setup_context=_save_inputs)


def triton(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """The Triton backend of the op; returns p's dtype."""
    check_inputs("triton", p, w5, b5, w7, b7, w1, b1)
    if p.shape[1] > TRITON_MAX_CHANNELS:
        raise InputShapeError(
            f"{OP}: the triton kernel holds all channels of a pixel in registers; C <= {TRITON_MAX_CHANNELS}, "
            f"got {p.shape[1]}"
        )
    w5, w7, w1 = _flat_weights(p, w5, w7, w1)
    return triton_forward(*(t.contiguous() for t in (p, w5, b5, w7, b7, w1, b1)))


# ---------------------------------------------------------------------------------------------
# ext: the C++/CUDA extension
# ---------------------------------------------------------------------------------------------
def ext(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """The extension backend of the op; returns p's dtype (computed in float32)."""
    check_inputs("ext", p, w5, b5, w7, b7, w1, b1)
    cuda = p.device.type == "cuda"
    if cuda and p.shape[1] > EXT_CUDA_MAX_CHANNELS:
        return reference_on_gpu(OP)(p, w5, b5, w7, b7, w1, b1)
    w5, w7, w1 = _flat_weights(p, w5, w7, w1)
    activations = ext_activation_dtype(p)
    weights = (t.float() for t in (w5, b5, w7, b7, w1, b1))
    out = torch.ops.avfused_ext.large_kernel_attention(p.to(activations), *weights)
    return out.to(p.dtype)


def _register_ext() -> None:
    """Fakes and autograd of the extension's ops (their schemas and kernels come from csrc/)."""

    @torch.library.register_fake("avfused_ext::large_kernel_attention")
    def _(p, w5, b5, w7, b7, w1, b1):
        return p.new_empty(p.shape)

    @torch.library.register_fake("avfused_ext::large_kernel_attention_backward")
    def _(grad, p, w5, b5, w7, b7, w1, b1):
        return tuple(t.new_empty(t.shape) for t in (p, w5, b5, w7, b7, w1, b1))

    def backward(ctx, grad_out):
        return torch.ops.avfused_ext.large_kernel_attention_backward(grad_out, *ctx.saved_tensors)

    torch.library.register_autograd("avfused_ext::large_kernel_attention", backward, setup_context=_save_inputs)


register_autocast("avfused_triton::large_kernel_attention", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    _register_ext()
    register_autocast("avfused_ext::large_kernel_attention", (0,), EXT_HALF_ON_CUDA)
