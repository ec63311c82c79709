"""Triton ``joint_token_attention``: LayerNorm -> attention (q = k = v) -> Linear -> residual, flash-style.

    joint_token_attention(tokens (B, L, D), pos (L, D), ln_w, ln_b (D,), lin_w (D, D), lin_b (D,)) -> (B, L, D)

The op ``avfused_triton::joint_attention`` runs the whole forward in one Triton kernel and also returns
the attention output ``mixed`` and its row log-sum-exp (B, L), which the backward needs. The backward
op does the L x L part (dS, P recomputed from the log-sum-exp) in two Triton kernels and the
O(L * D) parts (the Linear's and the LayerNorm's gradients) in torch.
"""

from __future__ import annotations

import torch

from avfused.errors import InputShapeError
from avfused.kernels.joint_token_attention import launch_attention_backward, launch_forward
from avfused.ops.triton_checks import check_rank, check_shape, check_tensors, compute_copy

Tensor = torch.Tensor
OP = "joint_token_attention"


@torch.library.custom_op("avfused_triton::joint_attention", mutates_args=())
def joint_attention(
    tokens: Tensor, pos: Tensor, ln_w: Tensor, ln_b: Tensor, lin_w: Tensor, lin_b: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """All float32 contiguous -> (out (B, L, D), mixed (B, L, D), lse (B, L))."""
    return launch_forward(tokens, pos, ln_w, ln_b, lin_w, lin_b, eps)


@joint_attention.register_fake
def _(tokens, pos, ln_w, ln_b, lin_w, lin_b, eps):
    return tokens.new_empty(tokens.shape), tokens.new_empty(tokens.shape), tokens.new_empty(tokens.shape[:2])


def _normalise(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(z - mean) * rstd over the last dim, and rstd (B, L, 1)."""
    mean = z.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt(z.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return (z - mean) * rstd, rstd


@torch.library.custom_op("avfused_triton::joint_attention_backward", mutates_args=())
def joint_attention_backward(
    grad: Tensor,
    tokens: Tensor,
    pos: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    lin_w: Tensor,
    mixed: Tensor,
    lse: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the first output of joint_attention with respect to its six tensor inputs."""
    normed, rstd = _normalise(tokens + pos, eps)
    u = (normed * ln_w + ln_b).contiguous()
    d_lin_b = grad.sum(dim=(0, 1))
    d_lin_w = torch.einsum("ble,bld->ed", grad, mixed)
    d_mixed = (grad @ lin_w).contiguous()
    delta = (d_mixed * mixed).sum(dim=-1).contiguous()  # rowsum(dO * O) of the softmax backward
    du = launch_attention_backward(u, d_mixed, lse, delta)
    d_ln_w = (du * normed).sum(dim=(0, 1))
    d_ln_b = du.sum(dim=(0, 1))
    d_normed = du * ln_w
    d_z = rstd * (
        d_normed - d_normed.mean(dim=-1, keepdim=True) - normed * (d_normed * normed).mean(dim=-1, keepdim=True)
    )
    d_tokens = grad + d_z
    grads = (d_tokens, d_tokens.sum(dim=0), d_ln_w, d_ln_b, d_lin_w, d_lin_b)
    return tuple(g.contiguous() for g in grads)  # strides as the fake promises


@joint_attention_backward.register_fake
def _(grad, tokens, pos, ln_w, ln_b, lin_w, mixed, lse, eps):
    return (
        tokens.new_empty(tokens.shape),
        pos.new_empty(pos.shape),
        ln_w.new_empty(ln_w.shape),
        ln_b.new_empty(ln_b.shape),
        lin_w.new_empty(lin_w.shape),
        ln_b.new_empty(ln_b.shape),
    )


def _setup_context(ctx, inputs, output) -> None:
    tokens, pos, ln_w, ln_b, lin_w, _, eps = inputs
    _, mixed, lse = output
    ctx.save_for_backward(tokens, pos, ln_w, ln_b, lin_w, mixed, lse)
    ctx.eps = eps
    ctx.mark_non_differentiable(mixed, lse)


def _backward(ctx, grad_out: Tensor, grad_mixed: Tensor | None, grad_lse: Tensor | None):
    tokens, pos, ln_w, ln_b, lin_w, mixed, lse = ctx.saved_tensors
    grads = joint_attention_backward(grad_out.contiguous(), tokens, pos, ln_w, ln_b, lin_w, mixed, lse, ctx.eps)
    return (*grads, None)


joint_attention.register_autograd(_backward, setup_context=_setup_context)


def joint_token_attention(
    tokens: Tensor,
    pos: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    lin_weight: Tensor,
    lin_bias: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """Same as ``avfused.reference.joint_token_attention``; returns tokens' dtype."""
    check_tensors(
        OP, tokens=tokens, pos=pos, ln_weight=ln_weight, ln_bias=ln_bias, lin_weight=lin_weight, lin_bias=lin_bias
    )
    check_rank(OP, "tokens", tokens, 3, "(B, L, D)")
    batch, length, dim = tokens.shape
    if batch == 0 or length == 0 or dim == 0:
        raise InputShapeError(f"{OP}: tokens must be non-empty (B, L, D), got {tuple(tokens.shape)}")
    if dim > 128:
        raise InputShapeError(f"{OP}: the triton kernel holds a token in registers; D <= 128, got D = {dim}")
    check_shape(OP, "pos", pos, (length, dim), "(L, D)")
    for name, vector in (("ln_weight", ln_weight), ("ln_bias", ln_bias), ("lin_bias", lin_bias)):
        check_shape(OP, name, vector, (dim,), "(D,)")
    check_shape(OP, "lin_weight", lin_weight, (dim, dim), "(D, D)")
    out, _, _ = joint_attention(
        compute_copy(tokens),
        compute_copy(pos),
        compute_copy(ln_weight),
        compute_copy(ln_bias),
        compute_copy(lin_weight),
        compute_copy(lin_bias),
        float(eps),
    )
    return out.to(tokens.dtype)
