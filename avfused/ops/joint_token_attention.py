"""``joint_token_attention``: LayerNorm -> attention (q = k = v) -> Linear -> residual, flash-style.

    joint_token_attention(tokens (B, L, D), pos (L, D), ln_weight (D,), ln_bias (D,), lin_weight (D, D),
                          lin_bias (D,), eps=1e-5) -> (B, L, D)

The same function as ``avfused.reference.joint_token_attention``, in two backends:

* ``triton`` -- the op ``avfused_triton::joint_token_attention`` runs the whole forward in one Triton
  kernel (kernels/joint_token_attention.py) and also returns the attention output ``mixed``, its row
  log-sum-exp (B, L) and u = LayerNorm(tokens + pos) as its dots read it, which the backward needs. The
  backward op does the L x L part (dS, P recomputed from the log-sum-exp) in two Triton kernels and the
  O(L * D) parts (the Linear's and the LayerNorm's gradients) in torch, in fp32. Tokens: float32, and on
  CUDA also float16 / bfloat16, read and written in their dtype: the matrix products take fp16 / bf16
  operands (tensor cores) with fp32 accumulation, while LayerNorm, the softmax and the biases are fp32; the
  parameters (any of those dtypes) are read as fp32.
* ``ext`` -- the op ``avfused_ext::joint_token_attention`` of the C++/CUDA extension
  (csrc/joint_token_attention/): a fused forward on the CPU (D <= 128), whose backward is one ATen
  composite; on CUDA (D <= 64; wider tokens run the reference there, logged once) flash-style kernels for
  the forward and, in training (``avfused_ext::joint_token_attention_train``, which saves u, mixed and lse),
  for the attention part of the backward, the rest of which is shared with Triton
  (``backward_around_attention``). On CUDA, bf16 / fp16 tokens are read and written in their dtype.
"""

from __future__ import annotations

import torch

from avfused.errors import InputShapeError
from avfused.ops._common import (
    EXT_HALF_ON_CUDA,
    EXT_REASONS,
    TRITON_DTYPES,
    autograd_records,
    check_non_empty,
    check_rank,
    check_shape,
    check_tensors,
    float32_contiguous,
    reference_on_gpu,
    register_autocast,
)

Tensor = torch.Tensor
OP = "joint_token_attention"
EXT_DEVICES = ("cpu", "cuda")  # where the extension has kernels for this op
MAX_DIM = 128  # both backends hold a token's values in registers
EXT_CUDA_MAX_DIM = 64  # the CUDA kernel's width: wider tokens would spill its registers (the reference serves them)


def check_inputs(backend: str, tokens: Tensor, pos: Tensor, ln_weight: Tensor, ln_bias: Tensor, lin_weight: Tensor,
                 lin_bias: Tensor) -> None:
    """The op's one validator for both backends: named errors before any kernel runs."""
    check_tensors(OP, backend, tokens=tokens, pos=pos, ln_weight=ln_weight, ln_bias=ln_bias, lin_weight=lin_weight,
                  lin_bias=lin_bias)
    check_rank(OP, "tokens", tokens, 3, "(B, L, D)")
    check_non_empty(OP, "tokens", tokens, "(B, L, D)", "clips")
    _, length, dim = tokens.shape
    if dim > MAX_DIM:
        raise InputShapeError(f"{OP}: the kernels hold a token in registers; D <= {MAX_DIM}, got D = {dim}")
    check_shape(OP, "pos", pos, (length, dim), "(L, D)")
    for name, vector in (("ln_weight", ln_weight), ("ln_bias", ln_bias), ("lin_bias", lin_bias)):
        check_shape(OP, name, vector, (dim,), "(D,)")
    check_shape(OP, "lin_weight", lin_weight, (dim, dim), "(D, D)")


# ---------------------------------------------------------------------------------------------
# triton
# ---------------------------------------------------------------------------------------------
@torch.library.custom_op("avfused_triton::joint_token_attention", mutates_args=())
def triton_forward(
    tokens: Tensor, pos: Tensor, ln_w: Tensor, ln_b: Tensor, lin_w: Tensor, lin_b: Tensor, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Contiguous; tokens float32 (or fp16 / bf16 on CUDA), the rest float32 -> (out (B, L, D) in tokens'
    dtype, mixed (B, L, D) and lse (B, L) in float32, u (B, L, D) in the dots' operand dtype)."""
    from avfused.kernels.joint_token_attention import launch_forward

    return launch_forward(tokens, pos, ln_w, ln_b, lin_w, lin_b, eps)


@triton_forward.register_fake
def _(tokens, pos, ln_w, ln_b, lin_w, lin_b, eps):
    from avfused.kernels.joint_token_attention import operand_dtype

    mixed = tokens.new_empty(tokens.shape, dtype=torch.float32)
    u = tokens.new_empty(tokens.shape, dtype=operand_dtype(tokens.dtype, tokens.device))
    return tokens.new_empty(tokens.shape), mixed, tokens.new_empty(tokens.shape[:2], dtype=torch.float32), u


def _normalise(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(z - mean) * rstd over the last dim, and rstd (B, L, 1)."""
    mean = z.mean(dim=-1, keepdim=True)
    rstd = torch.rsqrt(z.var(dim=-1, unbiased=False, keepdim=True) + eps)
    return (z - mean) * rstd, rstd


def backward_around_attention(
    grad: Tensor,
    tokens: Tensor,
    pos: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    lin_w: Tensor,
    mixed: Tensor,
    eps: float,
    attention_backward,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The six input gradients from the output gradient: the Linear's, the LayerNorm's and the residual's
    in torch (O(L * D) work), the L x L attention part by ``attention_backward(u, d_mixed, delta) -> du``.

    Shared by both backends' training paths; all tensors float32, contiguous."""
    normed, rstd = _normalise(tokens + pos, eps)
    u = (normed * ln_w + ln_b).contiguous()
    d_lin_b = grad.sum(dim=(0, 1))
    d_lin_w = torch.einsum("ble,bld->ed", grad, mixed)
    d_mixed = (grad @ lin_w).contiguous()
    delta = (d_mixed * mixed).sum(dim=-1).contiguous()  # rowsum(dO * O) of the softmax backward
    du = attention_backward(u, d_mixed, delta)
    d_ln_w = (du * normed).sum(dim=(0, 1))
    d_ln_b = du.sum(dim=(0, 1))
    d_normed = du * ln_w
    d_z = rstd * (
        d_normed - d_normed.mean(dim=-1, keepdim=True) - normed * (d_normed * normed).mean(dim=-1, keepdim=True)
    )
    d_tokens = grad + d_z
    grads = (d_tokens, d_tokens.sum(dim=0), d_ln_w, d_ln_b, d_lin_w, d_lin_b)
    return tuple(g.contiguous() for g in grads)  # strides as the fakes promise


@torch.library.custom_op("avfused_triton::joint_token_attention_backward", mutates_args=())
def triton_backward(
    grad: Tensor,
    tokens: Tensor,
    pos: Tensor,
    ln_w: Tensor,
    ln_b: Tensor,
    lin_w: Tensor,
    mixed: Tensor,
    lse: Tensor,
    u: Tensor,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the first output of triton_forward with respect to its six tensor inputs (d_tokens in
    tokens' dtype, the rest float32)."""
    from avfused.kernels.joint_token_attention import launch_attention_backward

    def attention_backward(_u: Tensor, d_mixed: Tensor, _delta: Tensor) -> Tensor:
        # the forward's u, rounded as its scores were (so P fits lse), and a delta from d_mixed as rounded
        return launch_attention_backward(u, d_mixed, lse, mixed)

    d_tokens, *rest = backward_around_attention(grad.float(), tokens.float(), pos, ln_w, ln_b, lin_w, mixed, eps,
                                                attention_backward)
    return (d_tokens.to(tokens.dtype), *rest)


@triton_backward.register_fake
def _(grad, tokens, pos, ln_w, ln_b, lin_w, mixed, lse, u, eps):
    return (
        tokens.new_empty(tokens.shape),
        pos.new_empty(pos.shape),
        ln_w.new_empty(ln_w.shape),
        ln_b.new_empty(ln_b.shape),
        lin_w.new_empty(lin_w.shape),
        ln_b.new_empty(ln_b.shape),
    )


def _triton_setup_context(ctx, inputs, output) -> None:
    tokens, pos, ln_w, ln_b, lin_w, _, eps = inputs
    _, mixed, lse, u = output
    ctx.save_for_backward(tokens, pos, ln_w, ln_b, lin_w, mixed, lse, u)
    ctx.eps = eps
    ctx.mark_non_differentiable(mixed, lse, u)


def _triton_autograd(ctx, grad_out: Tensor, grad_mixed: Tensor | None, grad_lse: Tensor | None,
                     grad_u: Tensor | None):
    grads = triton_backward(grad_out.contiguous(), *ctx.saved_tensors, ctx.eps)
    return (*grads, None)


triton_forward.register_autograd(_triton_autograd, setup_context=_triton_setup_context)


def triton(
    tokens: Tensor,
    pos: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    lin_weight: Tensor,
    lin_bias: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """The Triton backend of the op; returns tokens' dtype (float32, or fp16 / bf16 on CUDA, computed as such)."""
    check_inputs("triton", tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias)
    params = (float32_contiguous(t) for t in (pos, ln_weight, ln_bias, lin_weight, lin_bias))  # tiny: (L, D), (D, D)
    out, _, _, _ = triton_forward(tokens.contiguous(), *params, float(eps))
    return out


# ---------------------------------------------------------------------------------------------
# ext: the C++/CUDA extension
# ---------------------------------------------------------------------------------------------
def ext(
    tokens: Tensor,
    pos: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    lin_weight: Tensor,
    lin_bias: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """The extension backend of the op; returns tokens' dtype (computed in float32; on CUDA bf16 / fp16
    tokens are read and written as they are)."""
    check_inputs("ext", tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias)
    params = tuple(t.float() for t in (pos, ln_weight, ln_bias, lin_weight, lin_bias))
    if tokens.device.type != "cuda":
        return torch.ops.avfused_ext.joint_token_attention(tokens.float(), *params, float(eps)).to(tokens.dtype)
    if tokens.shape[2] > EXT_CUDA_MAX_DIM:
        return reference_on_gpu(OP)(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps)
    dtype = tokens.dtype
    if dtype == torch.float64:
        tokens = tokens.float()
    if autograd_records(tokens, *params):
        out = torch.ops.avfused_ext.joint_token_attention_train(tokens, *params, float(eps))[0]
    else:
        out = torch.ops.avfused_ext.joint_token_attention(tokens, *params, float(eps))
    return out.to(dtype)


def _register_ext() -> None:
    """Fakes and autograd of the extension's ops (their schemas and kernels come from csrc/)."""

    @torch.library.register_fake("avfused_ext::joint_token_attention")
    def _(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps):
        return tokens.new_empty(tokens.shape)

    @torch.library.register_fake("avfused_ext::joint_token_attention_backward")
    def _(grad_out, tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps):
        return tuple(t.new_empty(t.shape) for t in (tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias))

    @torch.library.register_fake("avfused_ext::joint_token_attention_train")
    def _(tokens, pos, ln_weight, ln_bias, lin_weight, lin_bias, eps):
        batch, length, dim = tokens.shape
        floats = dict(dtype=torch.float32, device=tokens.device)
        return (tokens.new_empty(tokens.shape), torch.empty(batch, length, EXT_CUDA_MAX_DIM, **floats),
                torch.empty(batch, length, dim, **floats), torch.empty(batch, length, **floats))

    @torch.library.register_fake("avfused_ext::joint_token_attention_attend_backward")
    def _(u, d_mixed, lse, delta):
        return u.new_empty(u.shape)

    def setup_context(ctx, inputs, output):
        *tensors, eps = inputs
        ctx.save_for_backward(*tensors)
        ctx.eps = eps

    def backward(ctx, grad_out):
        grads = torch.ops.avfused_ext.joint_token_attention_backward(grad_out, *ctx.saved_tensors, ctx.eps)
        return (*grads, None)

    torch.library.register_autograd("avfused_ext::joint_token_attention", backward, setup_context=setup_context)

    def train_setup_context(ctx, inputs, output):
        tokens, pos, ln_weight, ln_bias, lin_weight, _, eps = inputs
        _, u, mixed, lse = output
        ctx.save_for_backward(tokens, pos, ln_weight, ln_bias, lin_weight, u, mixed, lse)
        ctx.eps = eps
        ctx.mark_non_differentiable(u, mixed, lse)

    def train_backward(ctx, grad_out, _grad_u, _grad_mixed, _grad_lse):
        tokens, pos, ln_weight, ln_bias, lin_weight, u, mixed, lse = ctx.saved_tensors
        dim = tokens.shape[2]

        def attention_backward(_u: Tensor, d_mixed: Tensor, delta: Tensor) -> Tensor:
            # the kernel reads the forward's padded u workspace; _u (recomputed) is the same values unpadded
            return torch.ops.avfused_ext.joint_token_attention_attend_backward(u, d_mixed, lse, delta)[..., :dim]

        grads = backward_around_attention(grad_out.float().contiguous(), tokens.float(), pos, ln_weight, ln_bias,
                                          lin_weight, mixed, ctx.eps, attention_backward)
        return (grads[0].to(tokens.dtype), *grads[1:], None)

    torch.library.register_autograd("avfused_ext::joint_token_attention_train", train_backward,
                                    setup_context=train_setup_context)


register_autocast("avfused_triton::joint_token_attention", (0,), TRITON_DTYPES)
if EXT_REASONS["cpu"] is None:
    _register_ext()
    register_autocast("avfused_ext::joint_token_attention", (0,), EXT_HALF_ON_CUDA)
    register_autocast("avfused_ext::joint_token_attention_train", (0,), EXT_HALF_ON_CUDA)
