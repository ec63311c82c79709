"""Triton ``conv_mlp``: 1x1 expand -> depthwise 3x3 -> ReLU -> 1x1 project, without the expanded tensor.

    conv_mlp(x (N, C, H, W), w_in (E, C[, 1, 1]), b_in (E,), w_dw (E, 1, 3, 3), b_dw (E,),
             w_out (C, E[, 1, 1]), b_out (C,)) -> (N, C, H, W)

The op ``avfused_triton::conv_mlp`` runs the forward in one Triton kernel (kernels/conv_mlp.py). Its
backward recomputes the hidden layer in chunks of expanded channels with torch convolutions, so at
most (N, chunk, H, W) of the (N, E, H, W) tensor exists at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avfused.errors import InputShapeError
from avfused.kernels.conv_mlp import launch_conv_mlp_forward
from avfused.ops.triton_checks import check_rank, check_shape, check_tensors, compute_copy

Tensor = torch.Tensor
OP = "conv_mlp"
# elements of one (N, chunk, H, W) hidden tensor in the backward: 4M floats = 16 MB
BACKWARD_CHUNK_ELEMENTS = 1 << 22


@torch.library.custom_op("avfused_triton::conv_mlp", mutates_args=())
def conv_mlp_op(
    x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor
) -> Tensor:
    """x (N, C, H, W), w_in (E, C), w_dw (E, 9), w_out (C, E), biases; float32 contiguous."""
    return launch_conv_mlp_forward(x, w_in, b_in, w_dw, b_dw, w_out, b_out)


@conv_mlp_op.register_fake
def _(x, w_in, b_in, w_dw, b_dw, w_out, b_out):
    return x.new_empty(x.shape)


@torch.library.custom_op("avfused_triton::conv_mlp_backward", mutates_args=())
def conv_mlp_backward(
    grad: Tensor, x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of conv_mlp_op for its seven inputs, in chunks of expanded channels."""
    images, channels, height, width = x.shape
    expanded = w_in.shape[0]
    chunk = max(1, BACKWARD_CHUNK_ELEMENTS // (images * height * width))
    dx = torch.zeros_like(x)
    d_w_in, d_b_in = w_in.new_empty(w_in.shape), b_in.new_empty(b_in.shape)
    d_w_dw, d_b_dw = w_dw.new_empty(w_dw.shape), b_dw.new_empty(b_dw.shape)
    d_w_out = w_out.new_empty(w_out.shape)
    for e0 in range(0, expanded, chunk):
        part = slice(e0, min(expanded, e0 + chunk))
        count = part.stop - part.start
        depthwise = w_dw[part].reshape(count, 1, 3, 3)
        hidden = F.conv2d(x, w_in[part, :, None, None], b_in[part])
        pre = F.conv2d(hidden, depthwise, b_dw[part], padding=1, groups=count)
        activated = pre.clamp_min(0)
        d_w_out[:, part] = torch.einsum("nchw,nehw->ce", grad, activated)
        d_pre = torch.einsum("ce,nchw->nehw", w_out[:, part], grad) * (pre > 0)
        d_b_dw[part] = d_pre.sum(dim=(0, 2, 3))
        d_w_dw[part] = torch.nn.grad.conv2d_weight(hidden, depthwise.shape, d_pre, padding=1, groups=count).reshape(
            count, 9
        )
        d_hidden = torch.nn.grad.conv2d_input(hidden.shape, depthwise, d_pre, padding=1, groups=count)
        d_b_in[part] = d_hidden.sum(dim=(0, 2, 3))
        d_w_in[part] = torch.einsum("nehw,nchw->ec", d_hidden, x)
        dx += torch.einsum("ec,nehw->nchw", w_in[part], d_hidden)
    d_b_out = grad.sum(dim=(0, 2, 3))
    # contiguous, as the fake implementation promises torch.compile
    return tuple(g.contiguous() for g in (dx, d_w_in, d_b_in, d_w_dw, d_b_dw, d_w_out, d_b_out))


@conv_mlp_backward.register_fake
def _(grad, x, w_in, b_in, w_dw, b_dw, w_out):
    return (
        x.new_empty(x.shape), w_in.new_empty(w_in.shape), b_in.new_empty(b_in.shape), w_dw.new_empty(w_dw.shape),
        b_dw.new_empty(b_dw.shape), w_out.new_empty(w_out.shape), grad.new_empty(grad.shape[1]),
    )  # fmt: skip


def _setup_context(ctx, inputs, output) -> None:
    x, w_in, b_in, w_dw, b_dw, w_out, _ = inputs
    ctx.save_for_backward(x, w_in, b_in, w_dw, b_dw, w_out)


def _backward(ctx, grad: Tensor):
    return conv_mlp_backward(grad.contiguous(), *ctx.saved_tensors)


conv_mlp_op.register_autograd(_backward, setup_context=_setup_context)


def conv_mlp(x: Tensor, w_in: Tensor, b_in: Tensor, w_dw: Tensor, b_dw: Tensor, w_out: Tensor, b_out: Tensor) -> Tensor:
    """Same as ``avfused.reference.conv_mlp``; returns x's dtype."""
    check_tensors(OP, x=x, w_in=w_in, b_in=b_in, w_dw=w_dw, b_dw=b_dw, w_out=w_out, b_out=b_out)
    check_rank(OP, "x", x, 4, "(N, C, H, W)")
    channels = x.shape[1]
    expanded = w_in.shape[0] if w_in.dim() in (2, 4) else -1
    if w_in.dim() == 4:
        check_shape(OP, "w_in", w_in, (expanded, channels, 1, 1), "(E, C, 1, 1)")
    else:
        check_shape(OP, "w_in", w_in, (expanded, channels), "(E, C)")
    if w_out.dim() == 4:
        check_shape(OP, "w_out", w_out, (channels, expanded, 1, 1), "(C, E, 1, 1)")
    else:
        check_shape(OP, "w_out", w_out, (channels, expanded), "(C, E)")
    check_shape(OP, "w_dw", w_dw, (expanded, 1, 3, 3), "(E, 1, 3, 3)")
    for name, bias, size in (("b_in", b_in, expanded), ("b_dw", b_dw, expanded), ("b_out", b_out, channels)):
        check_shape(OP, name, bias, (size,), f"({'E' if size == expanded else 'C'},)")
    if x.numel() == 0:
        raise InputShapeError(f"{OP}: x must be non-empty, got {tuple(x.shape)}")
    if channels > 256:
        raise InputShapeError(
            f"{OP}: the triton kernel holds all channels of a pixel in registers; C <= 256, got {channels}"
        )
    out = conv_mlp_op(
        compute_copy(x),
        compute_copy(w_in.reshape(expanded, channels)),
        compute_copy(b_in),
        compute_copy(w_dw.reshape(expanded, 9)),
        compute_copy(b_dw),
        compute_copy(w_out.reshape(channels, expanded)),
        compute_copy(b_out),
    )
    return out.to(x.dtype)
