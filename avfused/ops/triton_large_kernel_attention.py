"""Triton ``large_kernel_attention``: p * (W1 @ dw7x7_dil3(dw5x5(p)) + b1), forward in two kernels.

    large_kernel_attention(p (N, C, H, W), w5 (C, 1, 5, 5), b5, w7 (C, 1, 7, 7), b7,
                           w1 (C, C[, 1, 1]), b1) -> (N, C, H, W)

The op ``avfused_triton::large_kernel_attention`` keeps only p for the backward (the reference keeps
four (N, C, H, W) tensors); the backward op recomputes the two depthwise stages (the first with the
Triton kernel) and does the rest with torch convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avfused.errors import InputShapeError
from avfused.kernels.large_kernel_attention import launch_depthwise5, launch_lka_forward
from avfused.ops.triton_checks import check_rank, check_shape, check_tensors, compute_copy

Tensor = torch.Tensor
OP = "large_kernel_attention"


@torch.library.custom_op("avfused_triton::large_kernel_attention", mutates_args=())
def lka_op(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """p (N, C, H, W), w5 (C, 25), w7 (C, 49), w1 (C, C), biases (C,); float32 contiguous."""
    return launch_lka_forward(p, w5, b5, w7, b7, w1, b1)


@lka_op.register_fake
def _(p, w5, b5, w7, b7, w1, b1):
    return p.new_empty(p.shape)


@torch.library.custom_op("avfused_triton::large_kernel_attention_backward", mutates_args=())
def lka_backward(
    grad: Tensor, p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of lka_op for its seven inputs."""
    channels = p.shape[1]
    kernel5, kernel7 = w5.reshape(channels, 1, 5, 5), w7.reshape(channels, 1, 7, 7)
    ctx1 = launch_depthwise5(p, w5, b5)
    ctx2 = F.conv2d(ctx1, kernel7, b7, padding=9, dilation=3, groups=channels)
    gate = torch.einsum("cd,ndhw->nchw", w1, ctx2) + b1[:, None, None]
    dp = grad * gate
    d_gate = grad * p
    d_b1 = d_gate.sum(dim=(0, 2, 3))
    d_w1 = torch.einsum("nchw,ndhw->cd", d_gate, ctx2)
    d_ctx2 = torch.einsum("cd,nchw->ndhw", w1, d_gate)
    d_b7 = d_ctx2.sum(dim=(0, 2, 3))
    conv7 = dict(padding=9, dilation=3, groups=channels)
    d_w7 = torch.nn.grad.conv2d_weight(ctx1, kernel7.shape, d_ctx2, **conv7).reshape(channels, 49)
    d_ctx1 = torch.nn.grad.conv2d_input(ctx1.shape, kernel7, d_ctx2, **conv7)
    d_b5 = d_ctx1.sum(dim=(0, 2, 3))
    d_w5 = torch.nn.grad.conv2d_weight(p, kernel5.shape, d_ctx1, padding=2, groups=channels).reshape(channels, 25)
    dp = dp + torch.nn.grad.conv2d_input(p.shape, kernel5, d_ctx1, padding=2, groups=channels)
    # contiguous, as the fake implementation promises torch.compile
    return tuple(g.contiguous() for g in (dp, d_w5, d_b5, d_w7, d_b7, d_w1, d_b1))


@lka_backward.register_fake
def _(grad, p, w5, b5, w7, b7, w1, b1):
    return tuple(t.new_empty(t.shape) for t in (p, w5, b5, w7, b7, w1, b1))


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor):
    return lka_backward(grad.contiguous(), *ctx.saved_tensors)


lka_op.register_autograd(_backward, setup_context=_setup_context)


def large_kernel_attention(p: Tensor, w5: Tensor, b5: Tensor, w7: Tensor, b7: Tensor, w1: Tensor, b1: Tensor) -> Tensor:
    """Same as ``avfused.reference.large_kernel_attention``; returns p's dtype."""
    check_tensors(OP, p=p, w5=w5, b5=b5, w7=w7, b7=b7, w1=w1, b1=b1)
    check_rank(OP, "p", p, 4, "(N, C, H, W)")
    channels = p.shape[1]
    check_shape(OP, "w5", w5, (channels, 1, 5, 5), "(C, 1, 5, 5)")
    check_shape(OP, "w7", w7, (channels, 1, 7, 7), "(C, 1, 7, 7)")
    if w1.dim() == 4:
        check_shape(OP, "w1", w1, (channels, channels, 1, 1), "(C, C, 1, 1)")
    else:
        check_shape(OP, "w1", w1, (channels, channels), "(C, C)")
    for name, bias in (("b5", b5), ("b7", b7), ("b1", b1)):
        check_shape(OP, name, bias, (channels,), "(C,)")
    if p.numel() == 0:
        raise InputShapeError(f"{OP}: p must be non-empty, got {tuple(p.shape)}")
    if channels > 256:
        raise InputShapeError(
            f"{OP}: the triton kernel holds all channels of a pixel in registers; C <= 256, got {channels}"
        )
    out = lka_op(
        compute_copy(p),
        compute_copy(w5.reshape(channels, 25)),
        compute_copy(b5),
        compute_copy(w7.reshape(channels, 49)),
        compute_copy(b7),
        compute_copy(w1.reshape(channels, channels)),
        compute_copy(b1),
    )
    return out.to(p.dtype)
