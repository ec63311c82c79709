"""``conv_mlp``: 1x1 expand -> depthwise 3x3 -> ReLU -> 1x1 project, the VPM's MLP.

    conv_mlp(x (N, C, H, W), w_in (E, C[, 1, 1]), b_in (E,), w_dw (E, 1, 3, 3), b_dw (E,),
             w_out (C, E[, 1, 1]), b_out (C,)) -> (N, C, H, W)

The same function as ``avfused.reference.conv_mlp``, in two backends, both on the op's flattened weights
(w_in (E, C), w_dw (E, 9), w_out (C, E)), neither writing the (N, E, H, W) expansion to memory:

* ``triton`` -- the op ``avfused_triton::conv_mlp``: the forward in one Triton kernel and the backward
  op ``avfused_triton::conv_mlp_backward`` in another (kernels/conv_mlp.py); the backward recomputes
  the hidden layer per pixel tile in registers and a small scratch, and its working memory (scratch and
  weight-gradient partials) stays within the size of the tensors the forward saves (x and the weights).
  fp16 / bf16 tensors (CUDA) are read as they are and computed with fp32 accumulation.
* ``ext`` -- the op ``avfused_ext::conv_mlp`` and its backward op ``avfused_ext::conv_mlp_backward``
  (csrc/conv_mlp/). CPU: fused per image in C++ (float32), a few expanded channels at a time; CUDA: one
  kernel per tile of every channel, the expanded channels in chunks in shared memory (float32, float16 and
  bfloat16 activations, float32 accumulation and weights; C <= EXT_CUDA_MAX_CHANNELS, any E; wider maps run
  the reference, logged once). The forward keeps only x for the backward, which recomputes the hidden
  layer the same way, so the (N, E, H, W) expansion never exists whole in either direction. The wrapper
  runs these ops in training too: on the CPU their forward + backward measured faster than the
  reference's autograd and than torch.compile of it at every stage shape of the small model.
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
OP = "conv_mlp"
EXT_DEVICES = ("cpu", "cuda")  # where the extension has kernels for this op
EXT_CUDA_MAX_CHANNELS = 256  # the CUDA kernels keep every channel of a tile in shared memory (wider: the reference)
TRITON_MAX_CHANNELS = 256  # the Triton kernel holds all channels of a pixel in registers


def check_inputs(backend: str, x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor,
                 b_out: Tensor) -> None:
    """The op's one validator for both backends: named errors before any kernel runs."""
    check_tensors(OP, backend, x=x, w_in=w_in, b_in=b_in, w_dw=w_dw, b_dw=b_dw, w_out=w_out, b_out=b_out)
    check_rank(OP, "x", x, 4, "(N, C, H, W)")
    check_non_empty(OP, "x", x, "(N, C, H, W)", "images")
    c = x.shape[1]
    e = w_in.shape[0] if w_in.dim() in (2, 4) else -1
    check_shape(OP, "w_in", w_in, [(e, c), (e, c, 1, 1)], "(E, C) or (E, C, 1, 1)")
    if e == 0:
        raise InputShapeError(f"{OP}: w_in has zero expanded channels, shape {tuple(w_in.shape)}")
    check_shape(OP, "w_out", w_out, [(c, e), (c, e, 1, 1)], "(C, E) or (C, E, 1, 1)")
    check_shape(OP, "w_dw", w_dw, (e, 1, 3, 3), "(E, 1, 3, 3)")
    for name, bias, size, layout in (("b_in", b_in, e, "(E,)"), ("b_dw", b_dw, e, "(E,)"), ("b_out", b_out, c, "(C,)")):
        check_shape(OP, name, bias, (size,), layout)


def _flat_weights(x: Tensor, w_in: Tensor, w_dw: Tensor, w_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    c, e = x.shape[1], w_in.shape[0]
    return w_in.reshape(e, c), w_dw.reshape(e, 9), w_out.reshape(c, e)


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::conv_mlp", mutates_args=())
def triton_forward(
    x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor
) -> Tensor:
    """x (N, C, H, W), w_in (E, C), w_dw (E, 9), w_out (C, E), biases; contiguous, float32 (or fp16 / bf16 on
    CUDA) -> (N, C, H, W) in x's dtype."""
    from avfused.kernels.conv_mlp import launch_forward

    return launch_forward(x, w_in, b_in, w_dw, b_dw, w_out, b_out)


@triton_forward.register_fake
def _(x, w_in, b_in, w_dw, b_dw, w_out, b_out):
    return x.new_empty(x.shape)


@torch.library.custom_op("avfused_triton::conv_mlp_backward", mutates_args=())
def triton_backward(
    grad: Tensor, x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of triton_forward for its seven inputs (d_b_out in grad's dtype), in one Triton kernel."""
    from avfused.kernels.conv_mlp import launch_backward

    return launch_backward(grad, x, w_in, b_in, w_dw, b_dw, w_out)


@triton_backward.register_fake
def _(grad, x, w_in, b_in, w_dw, b_dw, w_out):
    return (
        x.new_empty(x.shape), w_in.new_empty(w_in.shape), b_in.new_empty(b_in.shape), w_dw.new_empty(w_dw.shape),
        b_dw.new_empty(b_dw.shape), w_out.new_empty(w_out.shape), grad.new_empty(grad.shape[1]),
    )  # fmt: skip


def _triton_setup_context(ctx, inputs, output) -> None:
    x, w_in, b_in, w_dw, b_dw, w_out, _ = inputs
    ctx.save_for_backward(x, w_in, b_in, w_dw, b_dw, w_out)


def _triton_autograd(ctx, grad: Tensor):
    return triton_backward(grad.contiguous(), *ctx.saved_tensors)


triton_forward.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """The Triton backend of the op; returns x's dtype."""
    check_inputs("triton", x, w_in, b_in, w_dw, b_dw, w_out, b_out)
    if x.shape[1] > TRITON_MAX_CHANNELS:
        raise InputShapeError(
            f"{OP}: the triton kernel holds all channels of a pixel in registers; C <= {TRITON_MAX_CHANNELS}, "
            f"got {x.shape[1]}"
        )
    w_in, w_dw, w_out = _flat_weights(x, w_in, w_dw, w_out)
    return triton_forward(*(t.contiguous() for t in (x, w_in, b_in, w_dw, b_dw, w_out, b_out)))


# ---------------------------------------------------------------------------------------------
# ext: the C++/CUDA extension
# ---------------------------------------------------------------------------------------------
def ext(x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """The extension backend of the op; returns x's dtype (computed in float32)."""
    check_inputs("ext", x, w_in, b_in, w_dw, b_dw, w_out, b_out)
    cuda = x.device.type == "cuda"
    if cuda and x.shape[1] > EXT_CUDA_MAX_CHANNELS:
        return reference_on_gpu(OP)(x, w_in, b_in, w_dw, b_dw, w_out, b_out)
    w_in, w_dw, w_out = _flat_weights(x, w_in, w_dw, w_out)
    activations = ext_activation_dtype(x)
    weights = (t.float() for t in (w_in, b_in, w_dw, b_dw, w_out, b_out))
    out = torch.ops.avfused_ext.conv_mlp(x.to(activations), *weights)
    return out.to(x.dtype)


def _register_ext() -> None:
    """Fakes and autograd of the extension's ops (their schemas and kernels come from csrc/)."""

    @torch.library.register_fake("avfused_ext::conv_mlp")
    def _(x, w_in, b_in, w_dw, b_dw, w_out, b_out):
        return x.new_empty(x.shape)

    @torch.library.register_fake("avfused_ext::conv_mlp_backward")
    def _(grad, x, w_in, b_in, w_dw, b_dw, w_out):
        return (
            x.new_empty(x.shape), w_in.new_empty(w_in.shape), b_in.new_empty(b_in.shape), w_dw.new_empty(w_dw.shape),
            b_dw.new_empty(b_dw.shape), w_out.new_empty(w_out.shape), w_out.new_empty(w_out.shape[0]),
        )  # fmt: skip

    def setup_context(ctx, inputs, output):
        x, w_in, b_in, w_dw, b_dw, w_out, _ = inputs  # b_out's gradient is grad's sum: b_out is not needed
        ctx.save_for_backward(x, w_in, b_in, w_dw, b_dw, w_out)

    def backward(ctx, grad_out):
        return torch.ops.avfused_ext.conv_mlp_backward(grad_out, *ctx.saved_tensors)

    torch.library.register_autograd("avfused_ext::conv_mlp", backward, setup_context=setup_context)


register_autocast("avfused_triton::conv_mlp", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    _register_ext()
    register_autocast("avfused_ext::conv_mlp", (0,), EXT_HALF_ON_CUDA)
